//! Property tests of the allocation core: PRODUCT.md's invariants 1 (never over-allocate),
//! 2 (one holder), 3 (one key per server), 5 (no stranded seats, via `check_invariants`)
//! and 6 (the client's deadline falls before the daemon's reservation ends).
//!
//! Six simulated video servers share two keys; key B has an overdraft (one seat for at
//! most an hour in 30 days), so invariant 1 is checked with it: over the allocation only
//! within the overdraft, and not at all once its allowance is spent. A random list of operations interleaves
//! what they and an administrator do: enrolments, checkouts (with fresh, current and stale
//! epochs), moves from live and silent holders, releases, heartbeats with right and wrong
//! digests, syncs, acknowledgements, frees, kicks, server moves, connections opening and
//! closing, partitions, renewals persisted late, reissues of key A in place (counts up or
//! down, an expired entry extended), pools created, filled, emptied and deleted by an
//! administrator (servers enrol into and move between them), and time passing (one of
//! key A's entries expires mid-run, so the allocations holding it shrink). Each simulated client keeps what a real one
//! would: the cameras it believes it holds, with their epochs, and its deadline (the send
//! instant of its last answer + `valid_for`). After every call into the core the
//! invariants are checked, both the core's own recount and against what the clients
//! believe; the allocations of a key's pools must also add up to the key's own total.

use super::test_support::{entry, T0};
use super::{
    digest, CameraId, CameraOutcome, CheckoutAnswer, CheckoutItem, Core, EnrolRequest, Event,
    Features, PoolId, Refusal, ReleaseReason, Revocation, SeatRequest, ServerId, Timestamp,
};
use crate::key::{KeyDocument, KeyId, KeyKind, Policy};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const SECOND: u64 = 1000;
const DAY: u64 = 86_400 * SECOND;
/// The instant each run starts.
/// 2 long + 3 expiring `camera`, 2 `lpr`, an `encoder-2ch` class, a revocation period.
const KA: &str = "KA";
/// 3 `camera`, no classes, no revocation period, a shorter grace, an overdraft of
/// `KB_OVERDRAFT_SEATS` seat for 1 hour per 30 days.
const KB: &str = "KB";
const KB_OVERDRAFT_SEATS: u64 = 1;
const HEARTBEAT_MS: u64 = 10 * SECOND;
const GRACE_A_SECS: u64 = 60;
const GRACE_B_SECS: u64 = 40;
const CLIENTS: usize = 6;
const CAMERAS: usize = 8;
const FEATURES: [&str; 2] = ["camera", "lpr"];
const ENCODER: &str = "encoder-2ch";
/// Operations per case; with the default 256 cases a normal run makes over 10^5 steps.
const OPS: std::ops::RangeInclusive<usize> = 400..=440;
const MIN_STEPS: u64 = 100_000;

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// Which epoch a checkout carries for a camera the client does not believe it holds
/// (for a camera it holds it always carries the epoch it holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EpochChoice {
    /// None: an ordinary checkout, or a move if another server holds it.
    Fresh,
    /// The last epoch the client knew for the camera: often stale.
    LastKnown,
    /// The daemon's current epoch (a client told `Moved { epoch }`).
    Current,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyHint {
    Bound,
    NoKey,
    /// The other key: must be refused with `BoundToOtherKey`.
    Other,
}

#[derive(Clone, Debug)]
struct ItemSpec {
    camera: usize,
    encoder: bool,
    lpr: bool,
    epoch: EpochChoice,
}

#[derive(Clone, Debug)]
enum Op {
    /// create_code + enrol, into a pool (picked at run time) of the client's own key or
    /// the other key's.
    Enrol {
        client: usize,
        other_key: bool,
        pool: usize,
    },
    Checkout {
        client: usize,
        items: Vec<ItemSpec>,
        hint: KeyHint,
    },
    /// Checks out a camera another server holds (picked among them at run time). A live
    /// holder is asked first; it acknowledges at once if `ack`; the daemon asks again with
    /// `after_wait` now if `finish`, else later (`FinishMove`).
    Move {
        client: usize,
        pick: usize,
        ack: bool,
        finish: bool,
    },
    FinishMove {
        pick: usize,
    },
    Release {
        client: usize,
        picks: Vec<usize>,
        stray: Option<usize>,
    },
    Heartbeat {
        client: usize,
        wrong_digest: bool,
        then_sync: bool,
    },
    Sync {
        client: usize,
    },
    Ack {
        client: usize,
    },
    /// Frees a held camera (picked at run time) or, with `any`, some (key B?, camera).
    Free {
        pick: usize,
        any: Option<(bool, usize)>,
        name_key: bool,
        force: bool,
    },
    Kick {
        client: usize,
        force: bool,
    },
    MoveServer {
        client: usize,
        other_key: bool,
        pool: usize,
    },
    /// An administrator creates a pool on key B or A with `count` seats of camera (or
    /// lpr) from `Default`, from one sales order (picked at run time) if `order`.
    PoolCreate {
        key_b: bool,
        lpr: bool,
        count: u32,
        order: Option<usize>,
    },
    /// Moves unused seats between two pools of a key (picked at run time).
    PoolMove {
        key_b: bool,
        from: usize,
        to: usize,
        lpr: bool,
        count: u32,
        order: Option<usize>,
    },
    PoolDelete {
        key_b: bool,
        pick: usize,
    },
    SessionOpen {
        client: usize,
    },
    /// The daemon notices the connection is gone (also for a partitioned client).
    SessionClose {
        client: usize,
    },
    /// The client stops reaching the daemon (and hearing pushes); the daemon notices the
    /// connection is gone now or only later (`SessionClose`).
    Partition {
        client: usize,
        notice_now: bool,
    },
    Heal {
        client: usize,
    },
    /// Whether the client heartbeats by itself every interval while time passes.
    Diligent {
        client: usize,
        on: bool,
    },
    /// The daemon persists the renewals of a batch it took `lag_ms` ago.
    Persist {
        lag_ms: u64,
    },
    /// Time passes: the daemon's timer runs `advance` at each deadline and persists
    /// renewals every heartbeat interval; diligent clients heartbeat.
    Advance {
        ms: u64,
    },
    /// The vendor reissues key A at the next revision, installed in place: the expiring
    /// entry now ends `extend_secs` from now (also after it expired), and the long camera
    /// entry gains or loses `delta` seats.
    Reissue {
        extend_secs: Option<u64>,
        delta: i8,
    },
}

fn item_spec() -> impl Strategy<Value = ItemSpec> {
    (
        0..CAMERAS,
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.2),
        prop_oneof![
            6 => Just(EpochChoice::Fresh),
            3 => Just(EpochChoice::LastKnown),
            1 => Just(EpochChoice::Current),
        ],
    )
        .prop_map(|(camera, encoder, lpr, epoch)| ItemSpec {
            camera,
            encoder,
            lpr,
            epoch,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let client = || 0..CLIENTS;
    prop_oneof![
        3 => (client(), prop::bool::weighted(0.4), any::<usize>())
            .prop_map(|(client, other_key, pool)| Op::Enrol { client, other_key, pool }),
        16 => (
            client(),
            prop::collection::vec(item_spec(), 1..4),
            prop_oneof![
                12 => Just(KeyHint::Bound),
                2 => Just(KeyHint::NoKey),
                1 => Just(KeyHint::Other),
            ],
        )
            .prop_map(|(client, items, hint)| Op::Checkout { client, items, hint }),
        10 => (client(), any::<usize>(), any::<bool>(), prop::bool::weighted(0.7))
            .prop_map(|(client, pick, ack, finish)| Op::Move { client, pick, ack, finish }),
        2 => any::<usize>().prop_map(|pick| Op::FinishMove { pick }),
        5 => (
            client(),
            prop::collection::vec(any::<usize>(), 0..3),
            prop::option::weighted(0.3, 0..CAMERAS),
        )
            .prop_map(|(client, picks, stray)| Op::Release { client, picks, stray }),
        8 => (client(), prop::bool::weighted(0.2), prop::bool::weighted(0.6)).prop_map(
            |(client, wrong_digest, then_sync)| Op::Heartbeat { client, wrong_digest, then_sync }
        ),
        3 => client().prop_map(|client| Op::Sync { client }),
        5 => client().prop_map(|client| Op::Ack { client }),
        5 => (
            any::<usize>(),
            prop::option::weighted(0.25, (any::<bool>(), 0..CAMERAS)),
            prop::bool::weighted(0.7),
            prop::bool::weighted(0.4),
        )
            .prop_map(|(pick, any, name_key, force)| Op::Free { pick, any, name_key, force }),
        1 => (prop::option::weighted(0.6, 30..600u64), -1i8..=1)
            .prop_map(|(extend_secs, delta)| Op::Reissue { extend_secs, delta }),
        1 => (client(), prop::bool::weighted(0.3))
            .prop_map(|(client, force)| Op::Kick { client, force }),
        2 => (client(), any::<bool>(), any::<usize>())
            .prop_map(|(client, other_key, pool)| Op::MoveServer { client, other_key, pool }),
        1 => (any::<bool>(), prop::bool::weighted(0.3), 0..4u32, prop::option::weighted(0.4, any::<usize>()))
            .prop_map(|(key_b, lpr, count, order)| Op::PoolCreate { key_b, lpr, count, order }),
        2 => (
            any::<bool>(),
            any::<usize>(),
            any::<usize>(),
            prop::bool::weighted(0.3),
            0..4u32,
            prop::option::weighted(0.3, any::<usize>()),
        )
            .prop_map(|(key_b, from, to, lpr, count, order)| Op::PoolMove {
                key_b, from, to, lpr, count, order
            }),
        1 => (any::<bool>(), any::<usize>())
            .prop_map(|(key_b, pick)| Op::PoolDelete { key_b, pick }),
        4 => client().prop_map(|client| Op::SessionOpen { client }),
        3 => client().prop_map(|client| Op::SessionClose { client }),
        2 => (client(), any::<bool>())
            .prop_map(|(client, notice_now)| Op::Partition { client, notice_now }),
        3 => client().prop_map(|client| Op::Heal { client }),
        2 => (client(), prop::bool::weighted(0.7))
            .prop_map(|(client, on)| Op::Diligent { client, on }),
        3 => prop_oneof![Just(0u64), 0..HEARTBEAT_MS].prop_map(|lag_ms| Op::Persist { lag_ms }),
        14 => prop_oneof![
            58 => 0..3_000u64,
            30 => 3_000..20_000u64,
            9 => 30_000..300_000u64,
            // Long enough for key B's overdraft allowance to run out.
            3 => 1_800_000..5_400_000u64,
        ]
        .prop_map(|ms| Op::Advance { ms }),
    ]
}

#[derive(Clone, Debug)]
struct Scenario {
    /// When key A's 3-camera entry expires, after T0.
    short_entry_secs: u64,
    /// Key A's revocation period (newly-added protection).
    revocation_period_secs: u64,
    ops: Vec<Op>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (60..900u64, 20..200u64, prop::collection::vec(op(), OPS)).prop_map(
        |(short_entry_secs, revocation_period_secs, ops)| Scenario {
            short_entry_secs,
            revocation_period_secs,
            ops,
        },
    )
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

fn key_a(short_entry_secs: u64, revocation_period_secs: u64) -> KeyDocument {
    let far = T0.plus(365 * DAY);
    KeyDocument {
        key_id: KA.into(),
        revision: 1,
        kind: KeyKind::Network,
        customer: "Property tests".into(),
        issued_at: T0,
        demo: false,
        entries: vec![
            entry("camera", 2, far, "SO-LONG"),
            entry("camera", 3, T0.plus(short_entry_secs * SECOND), "SO-SHORT"),
            entry("lpr", 2, far, "SO-LPR"),
        ],
        policy: Policy {
            heartbeat_interval_secs: HEARTBEAT_MS / SECOND,
            offline_grace_secs: GRACE_A_SECS,
            revocation_period_secs,
            classes: [(
                ENCODER.to_string(),
                [("camera".to_string(), 2)].into_iter().collect(),
            )]
            .into_iter()
            .collect(),
            ..Policy::default()
        },
        host: None,
    }
}

fn key_b() -> KeyDocument {
    KeyDocument {
        key_id: KB.into(),
        revision: 1,
        kind: KeyKind::Network,
        customer: "Property tests".into(),
        issued_at: T0,
        demo: false,
        entries: vec![entry("camera", 3, T0.plus(365 * DAY), "SO-B")],
        policy: Policy {
            heartbeat_interval_secs: HEARTBEAT_MS / SECOND,
            offline_grace_secs: GRACE_B_SECS,
            overdraft_seats: KB_OVERDRAFT_SEATS as u32,
            overdraft_hours: 1,
            ..Policy::default()
        },
        host: None,
    }
}

fn other(key: &str) -> KeyId {
    if key == KA {
        KB.into()
    } else {
        KA.into()
    }
}

fn cam(n: usize) -> CameraId {
    format!("cam-{n}")
}

/// An instant as an offset from T0, for messages.
fn at(t: Timestamp) -> String {
    if t == Timestamp::NEVER {
        return "never".into();
    }
    let ms = t.0 as i128 - T0.0 as i128;
    format!(
        "T0{}{}.{:03}s",
        if ms < 0 { "-" } else { "+" },
        ms.abs() / 1000,
        ms.abs() % 1000
    )
}

// ---------------------------------------------------------------------------------------
// What the daemon has, read through its public views
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Snapshot {
    /// (key, camera) -> (holder, epoch, features)
    held: BTreeMap<(KeyId, CameraId), (ServerId, u64, Features)>,
    /// (key, camera) -> [(old holder, epoch)] still counted
    revoking: BTreeMap<(KeyId, CameraId), Vec<(ServerId, u64)>>,
}

impl Snapshot {
    fn of(core: &Core, now: Timestamp) -> Self {
        let mut s = Snapshot::default();
        for v in core.camera_views(now) {
            let k = (v.key_id.clone(), v.camera_id.clone());
            if v.state == "held" {
                s.held.insert(k, (v.server_id, v.epoch, v.features));
            } else {
                s.revoking
                    .entry(k)
                    .or_default()
                    .push((v.server_id, v.epoch));
            }
        }
        s
    }

    fn holder(&self, key: &str, camera: &str) -> Option<&(ServerId, u64, Features)> {
        self.held.get(&(key.to_string(), camera.to_string()))
    }

    fn is_revoking(&self, key: &str, camera: &str, server: &str, epoch: u64) -> bool {
        self.revoking
            .get(&(key.to_string(), camera.to_string()))
            .is_some_and(|v| v.iter().any(|(s, e)| s == server && *e == epoch))
    }

    /// (camera -> epoch) held by `server` of `key`.
    fn held_by(&self, key: &str, server: &str) -> BTreeMap<CameraId, u64> {
        self.held
            .iter()
            .filter(|((k, _), (s, _, _))| k == key && s == server)
            .map(|((_, c), (_, e, _))| (c.clone(), *e))
            .collect()
    }

    fn busy(&self, server: &str) -> bool {
        self.held.values().any(|(s, _, _)| s == server)
            || self
                .revoking
                .values()
                .any(|v| v.iter().any(|(s, _)| s == server))
    }
}

// ---------------------------------------------------------------------------------------
// Simulated video servers
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Client {
    id: ServerId,
    /// The key it is bound to, as its state file says; None before enrolment or after the
    /// daemon answered `NotEnrolled`.
    key: Option<KeyId>,
    /// Cameras of `key` it believes it holds, with the epoch.
    held: BTreeMap<CameraId, u64>,
    /// The last epoch it knew for each camera (sent again later: often stale).
    last_epoch: BTreeMap<CameraId, u64>,
    /// Send instant of its last answered heartbeat/checkout/sync + `valid_for`.
    deadline: Timestamp,
    partitioned: bool,
    /// Whether the daemon counts an open connection for it.
    session: bool,
    diligent: bool,
    next_heartbeat: Timestamp,
    /// Revocations it has seen and not yet acknowledged.
    acks: BTreeSet<(CameraId, u64)>,
}

impl Client {
    fn new(i: usize) -> Self {
        Client {
            id: format!("srv-{i}"),
            key: None,
            held: BTreeMap::new(),
            last_epoch: BTreeMap::new(),
            deadline: Timestamp::ZERO,
            partitioned: false,
            session: false,
            diligent: i % 3 != 2,
            next_heartbeat: Timestamp::NEVER,
            acks: BTreeSet::new(),
        }
    }

    fn reachable(&self) -> bool {
        !self.partitioned && self.key.is_some()
    }

    fn drop_camera(&mut self, camera: &str) {
        if let Some(e) = self.held.remove(camera) {
            self.last_epoch.insert(camera.to_string(), e);
        }
    }

    /// A revocation seen in an answer or pushed: stop recording, acknowledge later.
    fn revoked(&mut self, camera: &str, epoch: u64) {
        if self.held.get(camera) == Some(&epoch) {
            self.drop_camera(camera);
        }
        self.acks.insert((camera.to_string(), epoch));
    }

    fn take_revocations(&mut self, revocations: &[Revocation]) {
        for r in revocations {
            self.revoked(&r.camera, r.epoch);
        }
    }

    /// Its binding is gone or changed: what it held of the old key is gone too.
    fn rebind(&mut self, key: Option<KeyId>) {
        self.key = key;
        self.held.clear();
        self.last_epoch.clear();
        self.acks.clear();
    }
}

/// Counts over every case, to show the run exercised what it claims to.
#[derive(Debug, Default)]
struct Coverage {
    steps: AtomicU64,
    overdraft_started: AtomicU64,
    overdraft_spent: AtomicU64,
    grants: AtomicU64,
    moves: AtomicU64,
    awaiting_holder: AtomicU64,
    held_by_silent: AtomicU64,
    moved_refusals: AtomicU64,
    bound_to_other_key: AtomicU64,
    newly_added: AtomicU64,
    forced_overlaps: AtomicU64,
    shrinks: AtomicU64,
    over_allocated: AtomicU64,
    revoking_expired: AtomicU64,
    revoking_acknowledged: AtomicU64,
    servers_expired: AtomicU64,
    forgotten: AtomicU64,
    sync_released: AtomicU64,
    no_seats: AtomicU64,
    pools_created: AtomicU64,
    seats_moved: AtomicU64,
    pools_deleted: AtomicU64,
    seats_in_use: AtomicU64,
    pool_in_use: AtomicU64,
    /// Simulated time over all cases, in seconds.
    simulated_secs: AtomicU64,
}

impl Coverage {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct Sim<'a> {
    core: Core,
    now: Timestamp,
    clients: Vec<Client>,
    revocation_period_ms: BTreeMap<KeyId, u64>,
    /// (server, key, camera, epoch) an administrator's --force made overlap.
    forced: BTreeSet<(ServerId, KeyId, CameraId, u64)>,
    first_granted: BTreeMap<(KeyId, CameraId), Timestamp>,
    /// The highest epoch granted for each camera.
    epochs: BTreeMap<(KeyId, CameraId), u64>,
    /// Moves answered `AwaitingHolder` and not yet asked again: (client, camera).
    pending_moves: Vec<(usize, CameraId)>,
    /// Counted seats per pool and feature at the last check.
    counted: BTreeMap<(PoolId, &'static str), u64>,
    next_persist: Timestamp,
    codes: u64,
    /// Pools made so far (their names are never reused).
    pools_made: u64,
    /// The last operations and events, for failure messages.
    trail: VecDeque<String>,
    coverage: &'a Coverage,
}

type Check = Result<(), String>;

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

impl<'a> Sim<'a> {
    fn new(s: &Scenario, coverage: &'a Coverage) -> Result<Self, String> {
        let mut sim = Sim {
            core: Core::new(),
            now: T0,
            clients: (0..CLIENTS).map(Client::new).collect(),
            revocation_period_ms: [
                (KA.to_string(), s.revocation_period_secs * SECOND),
                (KB.to_string(), 0),
            ]
            .into_iter()
            .collect(),
            forced: BTreeSet::new(),
            first_granted: BTreeMap::new(),
            epochs: BTreeMap::new(),
            pending_moves: Vec::new(),
            counted: BTreeMap::new(),
            next_persist: T0.plus(HEARTBEAT_MS),
            codes: 0,
            pools_made: 0,
            trail: VecDeque::new(),
            coverage,
        };
        let a = key_a(s.short_entry_secs, s.revocation_period_secs);
        sim.core
            .install_key(T0, a, false)
            .map_err(|e| format!("installing key A: {e}"))?;
        sim.core
            .install_key(T0, key_b(), false)
            .map_err(|e| format!("installing key B: {e}"))?;
        sim.done("install keys")?;
        for i in 0..CLIENTS {
            sim.enrol(i, false, 0)?;
            if i % 2 == 0 {
                sim.session_open(i)?;
            }
        }
        Ok(sim)
    }

    fn note(&mut self, line: String) {
        if self.trail.len() >= 60 {
            self.trail.pop_front();
        }
        self.trail.push_back(line);
    }

    fn client_index(&self, server: &str) -> Option<usize> {
        self.clients.iter().position(|c| c.id == server)
    }

    fn pool_of(&self, server: &str) -> Option<PoolId> {
        self.core.server_pool(server).cloned()
    }

    fn kicked(&self, server: &str) -> bool {
        self.core
            .server_views(self.now)
            .iter()
            .any(|v| v.server_id == server && v.state == "kicked")
    }

    fn newly_added(&self, key: &str, camera: &str) -> Option<Timestamp> {
        let period = self.revocation_period_ms.get(key).copied().unwrap_or(0);
        let first = self
            .first_granted
            .get(&(key.to_string(), camera.to_string()))?;
        let until = first.plus(period);
        (period > 0 && self.now < until).then_some(until)
    }

    /// After every call into the core: take its events (pushes reach live clients at
    /// once), then check every invariant.
    fn done(&mut self, what: &str) -> Check {
        let events = self.core.drain_events();
        let mut forced_release: Option<(KeyId, CameraId, ServerId, u64)> = None;
        for e in events {
            self.note(format!("  {} event {e:?}", at(self.now)));
            match e {
                Event::Granted {
                    key,
                    camera,
                    epoch,
                    server,
                    ..
                } => {
                    Coverage::bump(&self.coverage.grants);
                    let k = (key.clone(), camera.clone());
                    self.first_granted.entry(k.clone()).or_insert(self.now);
                    let prev = self.epochs.get(&k).copied().unwrap_or(0);
                    ensure(epoch == prev || epoch == prev + 1, || {
                        format!(
                            "after {what}: {key}/{camera} granted to {server} at epoch {epoch}, \
                             but the epoch was {prev}: it must grow by one on each new holder"
                        )
                    })?;
                    self.epochs.insert(k, epoch);
                }
                Event::RevocationIssued {
                    server,
                    key,
                    camera,
                    epoch,
                    ..
                } => {
                    if let Some(i) = self.client_index(&server) {
                        let c = &mut self.clients[i];
                        if c.session && !c.partitioned && c.key.as_deref() == Some(key.as_str()) {
                            c.revoked(&camera, epoch);
                        }
                    }
                }
                Event::Released {
                    key,
                    camera,
                    server,
                    epoch,
                    reason: ReleaseReason::Forced,
                } => forced_release = Some((key, camera, server, epoch)),
                Event::ForcedOverlap {
                    key,
                    camera,
                    server,
                } => {
                    Coverage::bump(&self.coverage.forced_overlaps);
                    let Some((k, c, s, epoch)) = forced_release.take() else {
                        return Err(format!(
                            "after {what}: ForcedOverlap for {key}/{camera} on {server} \
                             without a forced release before it"
                        ));
                    };
                    ensure(k == key && c == camera && s == server, || {
                        format!(
                            "after {what}: ForcedOverlap {key}/{camera} on {server} follows \
                             the forced release of {k}/{c} on {s}"
                        )
                    })?;
                    self.forced.insert((server, key, camera, epoch));
                }
                Event::Forgotten { server } => {
                    Coverage::bump(&self.coverage.forgotten);
                    // The daemon's record, sessions included, is gone; the client does not
                    // know until it is told NotEnrolled.
                    if let Some(i) = self.client_index(&server) {
                        self.clients[i].session = false;
                    }
                }
                Event::Moved { .. } => Coverage::bump(&self.coverage.moves),
                Event::AllocationShrunk { .. } => Coverage::bump(&self.coverage.shrinks),
                Event::OverdraftStarted { .. } => Coverage::bump(&self.coverage.overdraft_started),
                Event::OverdraftSpent { .. } => Coverage::bump(&self.coverage.overdraft_spent),
                Event::RevokingEnded { acknowledged, .. } => Coverage::bump(if acknowledged {
                    &self.coverage.revoking_acknowledged
                } else {
                    &self.coverage.revoking_expired
                }),
                Event::ServerExpired { cameras, .. } if cameras > 0 => {
                    Coverage::bump(&self.coverage.servers_expired)
                }
                _ => {}
            }
        }
        self.check(what)
    }

    fn check(&mut self, what: &str) -> Check {
        let now = self.now;
        for c in &mut self.clients {
            if c.deadline <= now && !c.held.is_empty() {
                let lapsed: Vec<CameraId> = c.held.keys().cloned().collect();
                for camera in lapsed {
                    c.drop_camera(&camera);
                }
            }
        }
        self.core
            .check_invariants(now)
            .map_err(|e| format!("after {what}: check_invariants: {e}"))?;
        let snap = Snapshot::of(&self.core, now);

        // Invariant 1: counted use (held + revoking) within the allocation plus the key's
        // overdraft while its allowance lasts; over that only after a shrink, and then it
        // must not grow. Held seats alone never exceed it: a shrink (or the allowance
        // running out) revokes the newest leases until they fit. The overdraft is one
        // counter per key, shared by its pools.
        let room_of = |key: &str| {
            if key == KB && !self.core.overdraft_spent(key, now) {
                KB_OVERDRAFT_SEATS
            } else {
                0
            }
        };
        let mut over_by_key: BTreeMap<String, u64> = BTreeMap::new();
        for pool in self.all_pools() {
            let room = room_of(&pool.key);
            let held_over = over_by_key.entry(pool.key.clone()).or_default();
            for f in FEATURES {
                let u = self.core.usage(&pool, f);
                let total = self.core.allocation(&pool, f, now);
                *held_over += u.held.saturating_sub(total);
                let before = self
                    .counted
                    .insert((pool.clone(), f), u.counted())
                    .unwrap_or(0);
                ensure(u.held <= total + room, || {
                    format!(
                        "after {what}: invariant 1: pool {pool} {f}: {} seats held exceed \
                         the allocation {total} and overdraft {room} ({} revoking)",
                        u.held, u.revoking
                    )
                })?;
                let total = total + room;
                ensure(u.counted() <= total || u.counted() <= before, || {
                    format!(
                        "after {what}: invariant 1: pool {pool} {f}: counted use grew from \
                         {before} to {} ({} held, {} revoking) while over the allocation {total}",
                        u.counted(),
                        u.held,
                        u.revoking
                    )
                })?;
            }
        }
        for (key, held_over) in over_by_key {
            let room = room_of(&key);
            ensure(held_over <= room, || {
                format!(
                    "after {what}: invariant 1: key {key} holds {held_over} seats over its \
                     allocation, with an overdraft of {room}"
                )
            })?;
        }

        // A key's pools are allocated exactly the key's own total: its unexpired entries.
        for key in [KA, KB] {
            let doc = self.core.key_document(key).ok_or("key missing")?;
            let pools = self.pools_of(key);
            for f in FEATURES {
                let alloc: u64 = pools.iter().map(|p| self.core.allocation(p, f, now)).sum();
                let total = doc.total(f, now);
                ensure(alloc == total, || {
                    format!(
                        "after {what}: the pools of key {key} ({pools:?}) are allocated {alloc} \
                         {f} but its revision {} grants {total} at {}",
                        doc.revision,
                        at(now)
                    )
                })?;
            }
        }

        // Invariant 3: a server's leases all come from its pool's key.
        for ((key, camera), (server, _, _)) in &snap.held {
            let pool = self.core.server_pool(server);
            ensure(pool.is_some_and(|p| p.key == *key), || {
                format!(
                    "after {what}: invariant 3: {key}/{camera} is held by {server}, bound to \
                     {pool:?}"
                )
            })?;
        }

        // A digest kept for heartbeats is the digest of what the server holds now.
        for (id, s) in &self.core.servers {
            if let Some(kept) = s.held.cached_digest() {
                ensure(kept == self.core.holdings_digest(id), || {
                    format!("after {what}: {id}'s kept holdings digest is stale")
                })?;
            }
        }

        // `status` counts what the views show.
        let views = self.core.server_views(now);
        let counted = crate::core::ServerCounts {
            servers: views.len() as u64,
            live: views.iter().filter(|v| v.state == "live").count() as u64,
            cameras: views.iter().map(|v| v.cameras).sum(),
        };
        ensure(self.core.server_counts() == counted, || {
            format!(
                "after {what}: server_counts {:?}, the views count {counted:?}",
                self.core.server_counts()
            )
        })?;

        // The simulation's idea of open connections matches the daemon's.
        for v in views {
            if v.state == "kicked" {
                continue;
            }
            if let Some(i) = self.client_index(&v.server_id) {
                let live = v.state == "live";
                ensure(live == self.clients[i].session, || {
                    format!(
                        "after {what}: the daemon shows {} as {}, the simulation counts {} open \
                         connection",
                        v.server_id,
                        v.state,
                        if self.clients[i].session { "an" } else { "no" }
                    )
                })?;
            }
        }

        // Invariants 2 and 6, against what the clients believe.
        for c in &self.clients {
            if c.deadline <= now || c.held.is_empty() {
                continue;
            }
            let Some(key) = &c.key else { continue };
            let mut unforced = false;
            for (camera, epoch) in &c.held {
                if self
                    .forced
                    .contains(&(c.id.clone(), key.clone(), camera.clone(), *epoch))
                {
                    continue;
                }
                unforced = true;
                let holder = snap.holder(key, camera);
                if holder.is_some_and(|(s, e, _)| *s == c.id && e == epoch) {
                    continue;
                }
                if snap.is_revoking(key, camera, &c.id, *epoch) {
                    continue;
                }
                return Err(format!(
                    "after {what}: invariant 2: {} believes it holds {key}/{camera} at epoch \
                     {epoch}, licensed until {} (now {}), but the daemon has it held by {:?} \
                     and counts as revoking only {:?}, and no --force freed it",
                    c.id,
                    at(c.deadline),
                    at(now),
                    holder.map(|(s, e, _)| (s, e)),
                    snap.revoking
                        .get(&(key.clone(), camera.clone()))
                        .cloned()
                        .unwrap_or_default()
                ));
            }
            if unforced {
                let end = self.core.reservation_end(&c.id);
                ensure(end.is_some_and(|end| c.deadline <= end), || {
                    format!(
                        "after {what}: invariant 6: {} believes it is licensed until {} for \
                         {:?}, after the daemon's reservation end {} (now {})",
                        c.id,
                        at(c.deadline),
                        c.held,
                        end.map(at).unwrap_or_else(|| "(server forgotten)".into()),
                        at(now)
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The client learns what it could: the admin moved it to another key's pool (it is
    /// then refused with BoundToOtherKey and re-reads its binding).
    fn sync_binding(&mut self, i: usize) {
        let Some(key) = self.clients[i].key.clone() else {
            return;
        };
        if let Some(pool) = self.pool_of(&self.clients[i].id) {
            if pool.key != key {
                self.note(format!(
                    "  {} learns it is bound to {}",
                    self.clients[i].id, pool.key
                ));
                self.clients[i].rebind(Some(pool.key));
            }
        }
    }

    /// The daemon answered NotEnrolled: it must really not know the server.
    fn not_enrolled(&mut self, i: usize, what: &str) -> Check {
        let id = self.clients[i].id.clone();
        ensure(self.pool_of(&id).is_none(), || {
            format!("{what}: {id} was told NotEnrolled but the daemon knows it")
        })?;
        self.clients[i].rebind(None);
        self.clients[i].session = false;
        Ok(())
    }

    // ---- operations ----

    fn apply(&mut self, op: &Op) -> Check {
        match op {
            Op::Enrol {
                client,
                other_key,
                pool,
            } => self.enrol(*client, *other_key, *pool),
            Op::Checkout {
                client,
                items,
                hint,
            } => self.checkout(*client, items, *hint),
            Op::Move {
                client,
                pick,
                ack,
                finish,
            } => self.move_camera(*client, *pick, *ack, *finish),
            Op::FinishMove { pick } => {
                if self.pending_moves.is_empty() {
                    return Ok(());
                }
                let (i, camera) = self.pending_moves.remove(pick % self.pending_moves.len());
                self.finish_move(i, &camera)
            }
            Op::Release {
                client,
                picks,
                stray,
            } => self.release(*client, picks, *stray),
            Op::Heartbeat {
                client,
                wrong_digest,
                then_sync,
            } => {
                if !self.clients[*client].reachable() {
                    return Ok(());
                }
                self.heartbeat(*client, *wrong_digest, *then_sync, false)
            }
            Op::Sync { client } => {
                if !self.clients[*client].reachable() {
                    return Ok(());
                }
                self.sync(*client)
            }
            Op::Ack { client } => self.ack_all(*client),
            Op::Free {
                pick,
                any,
                name_key,
                force,
            } => self.free(*pick, *any, *name_key, *force),
            Op::Kick { client, force } => self.kick(*client, *force),
            Op::MoveServer {
                client,
                other_key,
                pool,
            } => self.move_server(*client, *other_key, *pool),
            Op::PoolCreate {
                key_b,
                lpr,
                count,
                order,
            } => self.pool_create(*key_b, *lpr, *count, *order),
            Op::PoolMove {
                key_b,
                from,
                to,
                lpr,
                count,
                order,
            } => self.pool_move(*key_b, *from, *to, *lpr, *count, *order),
            Op::PoolDelete { key_b, pick } => self.pool_delete(*key_b, *pick),
            Op::SessionOpen { client } => self.session_open(*client),
            Op::SessionClose { client } => {
                if !self.clients[*client].session {
                    return Ok(());
                }
                self.session_close(*client)
            }
            Op::Partition { client, notice_now } => {
                self.clients[*client].partitioned = true;
                if *notice_now && self.clients[*client].session {
                    self.session_close(*client)?;
                }
                Ok(())
            }
            Op::Heal { client } => {
                let c = &mut self.clients[*client];
                c.partitioned = false;
                c.next_heartbeat = c.next_heartbeat.min(self.now.plus(HEARTBEAT_MS));
                Ok(())
            }
            Op::Diligent { client, on } => {
                let c = &mut self.clients[*client];
                c.diligent = *on;
                c.next_heartbeat = self.now.plus(HEARTBEAT_MS);
                Ok(())
            }
            Op::Persist { lag_ms } => {
                let upto = self.now.minus(*lag_ms);
                self.core.renewals_persisted(upto);
                self.done(&format!("renewals persisted up to {}", at(upto)))
            }
            Op::Advance { ms } => self.advance_to(self.now.plus(*ms)),
            Op::Reissue { extend_secs, delta } => self.reissue(*extend_secs, *delta),
        }
    }

    fn enrol(&mut self, i: usize, other_key: bool, pool_pick: usize) -> Check {
        if self.clients[i].partitioned {
            return Ok(());
        }
        self.sync_binding(i);
        let id = self.clients[i].id.clone();
        let home = self.clients[i]
            .key
            .clone()
            .unwrap_or_else(|| if i < 4 { KA } else { KB }.to_string());
        let target = if other_key { other(&home) } else { home };
        let pools = self.pools_of(&target);
        let pool = pools[pool_pick % pools.len()].clone();
        self.codes += 1;
        let code = format!("code-{}", self.codes);
        self.core
            .create_code(self.now, &pool, &code)
            .map_err(|e| format!("create_code for {pool}: {e}"))?;
        self.done("create_code")?;
        let mut existing = self.clients[i].key.is_some().then(|| id.clone());
        loop {
            let snap = Snapshot::of(&self.core, self.now);
            let before = self.pool_of(&id);
            let busy = snap.busy(&id);
            let what = format!("enrol {id} into {pool} (existing: {})", existing.is_some());
            let r = self.core.enrol(
                self.now,
                EnrolRequest {
                    code: code.clone(),
                    name: format!("Video server {i}"),
                    version: "1.0.0".into(),
                    server_id: id.clone(),
                    credential: vec![i as u8],
                    existing: existing.clone(),
                },
            );
            self.note(format!("{} {what} -> {r:?}", at(self.now)));
            let cross = before.as_ref().is_some_and(|p| p.key != target);
            match r {
                Ok(en) => {
                    ensure(!(existing.is_some() && cross && busy), || {
                        format!(
                            "{what}: a server holding cameras of {before:?} enrolled into \
                             another key's pool; expected BoundToOtherKey"
                        )
                    })?;
                    ensure(en.key == target && en.pool == pool, || {
                        format!("{what}: answered {en:?}")
                    })?;
                    ensure(self.pool_of(&id).as_ref() == Some(&pool), || {
                        format!("{what}: the daemon binds it to {:?}", self.pool_of(&id))
                    })?;
                    let c = &mut self.clients[i];
                    if c.key.as_deref() != Some(target.as_str()) {
                        c.rebind(Some(target.clone()));
                    }
                    if existing.is_none() {
                        c.session = false;
                        c.next_heartbeat = self.now.plus(HEARTBEAT_MS - 700 * i as u64);
                    }
                    return self.done(&what);
                }
                Err(Refusal::BoundToOtherKey { key }) => {
                    Coverage::bump(&self.coverage.bound_to_other_key);
                    ensure(
                        existing.is_some()
                            && cross
                            && busy
                            && before.as_ref().is_some_and(|p| p.key == key),
                        || {
                            format!(
                                "{what}: refused BoundToOtherKey {{ key: {key} }}, but it was \
                                 bound to {before:?} and holding anything: {busy}"
                            )
                        },
                    )?;
                    return self.done(&what);
                }
                Err(
                    Refusal::NoSeats { .. }
                    | Refusal::OverAllocated { .. }
                    | Refusal::OverdraftSpent { .. },
                ) if existing.is_some() && !cross => {
                    // Re-enrolling moves the server with its cameras, or nothing changes.
                    ensure(self.pool_of(&id) == before && busy, || {
                        format!(
                            "{what}: refused for want of seats, yet it holds nothing or moved \
                             (now {:?})",
                            self.pool_of(&id)
                        )
                    })?;
                    return self.done(&what);
                }
                Err(Refusal::UnknownServer { .. }) if existing.is_some() => {
                    // Kicked and forgotten: it enrols afresh with the same code.
                    ensure(before.is_none(), || {
                        format!("{what}: UnknownServer, but the daemon knows it")
                    })?;
                    self.clients[i].rebind(None);
                    existing = None;
                    self.done(&what)?;
                }
                Err(e) => return Err(format!("{what}: unexpected refusal {e:?}")),
            }
        }
    }

    fn build_items(&self, i: usize, key: &str, specs: &[ItemSpec]) -> Vec<CheckoutItem> {
        let c = &self.clients[i];
        let mut seen = BTreeSet::new();
        let mut items = Vec::new();
        for spec in specs {
            let camera = cam(spec.camera);
            if !seen.insert(camera.clone()) {
                continue;
            }
            let epoch = match c.held.get(&camera) {
                Some(e) => Some(*e),
                None => match spec.epoch {
                    EpochChoice::Fresh => None,
                    EpochChoice::LastKnown => c.last_epoch.get(&camera).copied(),
                    EpochChoice::Current => {
                        self.epochs.get(&(key.to_string(), camera.clone())).copied()
                    }
                },
            };
            items.push(CheckoutItem {
                camera,
                class: spec.encoder.then(|| ENCODER.to_string()),
                modules: if spec.lpr {
                    vec!["lpr".into()]
                } else {
                    Vec::new()
                },
                device_version: None,
                epoch,
            });
        }
        items
    }

    fn checkout(&mut self, i: usize, specs: &[ItemSpec], hint: KeyHint) -> Check {
        if !self.clients[i].reachable() {
            return Ok(());
        }
        self.sync_binding(i);
        let Some(key) = self.clients[i].key.clone() else {
            return Ok(());
        };
        let items = self.build_items(i, &key, specs);
        let asked = match hint {
            KeyHint::Bound => Some(key.clone()),
            KeyHint::NoKey => None,
            KeyHint::Other => Some(other(&key)),
        };
        self.checkout_items(i, &key, asked.as_deref(), &items, false)
    }

    /// One checkout call: checks each outcome against the state before, then the client
    /// takes the answer.
    fn checkout_items(
        &mut self,
        i: usize,
        key: &str,
        asked: Option<&str>,
        items: &[CheckoutItem],
        after_wait: bool,
    ) -> Check {
        let id = self.clients[i].id.clone();
        let before = Snapshot::of(&self.core, self.now);
        let kicked = self.kicked(&id);
        let epochs_before = self.epochs.clone();
        let what = format!(
            "checkout by {id} of {:?} asking key {asked:?} (after_wait {after_wait})",
            items
                .iter()
                .map(|it| format!(
                    "{}@{:?}{}{}",
                    it.camera,
                    it.epoch,
                    if it.class.is_some() { "+2ch" } else { "" },
                    if it.modules.is_empty() { "" } else { "+lpr" }
                ))
                .collect::<Vec<_>>()
        );
        let r = self.core.checkout(self.now, &id, asked, items, after_wait);
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        let answer = match r {
            Ok(a) => a,
            Err(Refusal::BoundToOtherKey { key: k }) => {
                Coverage::bump(&self.coverage.bound_to_other_key);
                ensure(asked.is_some_and(|a| a != key) && k == key, || {
                    format!("{what}: refused BoundToOtherKey {{ key: {k} }}; it is bound to {key}")
                })?;
                return self.done(&what);
            }
            Err(Refusal::NotEnrolled) => {
                self.not_enrolled(i, &what)?;
                return self.done(&what);
            }
            Err(e) => return Err(format!("{what}: unexpected refusal {e:?}")),
        };
        ensure(asked.unwrap_or(key) == key, || {
            format!("{what}: asking another key than its own was not refused")
        })?;
        self.verify_outcomes(
            &what,
            &id,
            key,
            items,
            &before,
            &epochs_before,
            kicked,
            after_wait,
            &answer,
        )?;
        let c = &mut self.clients[i];
        // (a CheckoutAnswer carries no revocations)
        for (camera, outcome) in &answer.outcomes {
            match outcome {
                CameraOutcome::Granted { epoch, .. } => {
                    c.held.insert(camera.clone(), *epoch);
                    c.last_epoch.insert(camera.clone(), *epoch);
                    // Re-claimed after a revocation it heard (a move that was withdrawn):
                    // it holds it again and must not acknowledge the old request.
                    c.acks.remove(&(camera.clone(), *epoch));
                }
                CameraOutcome::Refused(Refusal::Moved { epoch }) => {
                    c.drop_camera(camera);
                    c.last_epoch.insert(camera.clone(), *epoch);
                }
                _ => {}
            }
        }
        c.deadline = self.now.plus(answer.valid_for_ms);
        self.done(&what)
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_outcomes(
        &self,
        what: &str,
        id: &str,
        key: &str,
        items: &[CheckoutItem],
        before: &Snapshot,
        epochs_before: &BTreeMap<(KeyId, CameraId), u64>,
        kicked: bool,
        after_wait: bool,
        answer: &CheckoutAnswer,
    ) -> Check {
        let after = Snapshot::of(&self.core, self.now);
        let pool = self.pool_of(id).unwrap_or_else(|| PoolId::default_of(key));
        ensure(answer.outcomes.len() == items.len(), || {
            format!(
                "{what}: {} outcomes for {} cameras",
                answer.outcomes.len(),
                items.len()
            )
        })?;
        for (item, (camera, outcome)) in items.iter().zip(&answer.outcomes) {
            ensure(*camera == item.camera, || {
                format!(
                    "{what}: outcome for {camera} where {} was asked",
                    item.camera
                )
            })?;
            let was = before.holder(key, camera).cloned();
            let is = after.holder(key, camera).cloned();
            let epoch_before = epochs_before
                .get(&(key.to_string(), camera.clone()))
                .copied()
                .unwrap_or(0);
            let stale = item.epoch.is_some_and(|e| e < epoch_before);
            let unchanged = || {
                ensure(was == is, || {
                    format!(
                        "{what}: {camera} answered {outcome:?} but its lease changed from \
                         {was:?} to {is:?}"
                    )
                })
            };
            let holder_live = |s: &str| {
                self.client_index(s)
                    .is_some_and(|h| self.clients[h].session)
            };
            if stale {
                ensure(
                    *outcome
                        == CameraOutcome::Refused(Refusal::Moved {
                            epoch: epoch_before,
                        })
                        || kicked,
                    || {
                        format!(
                            "{what}: {camera} asked with stale epoch {:?} < {epoch_before} must \
                             be refused Moved {{ epoch: {epoch_before} }}; answered {outcome:?}",
                            item.epoch
                        )
                    },
                )?;
            }
            match outcome {
                CameraOutcome::Granted {
                    epoch,
                    renewed: true,
                    ..
                } => {
                    let ok = |h: &Option<(ServerId, u64, Features)>| {
                        h.as_ref().is_some_and(|(s, e, _)| s == id && e == epoch)
                    };
                    ensure(ok(&was) && ok(&is), || {
                        format!(
                            "{what}: {camera} renewed at epoch {epoch}, but the lease was \
                             {was:?} and is {is:?}"
                        )
                    })?;
                }
                CameraOutcome::Granted {
                    epoch,
                    renewed: false,
                    features,
                    ..
                } => {
                    ensure(
                        is.as_ref()
                            .is_some_and(|(s, e, f)| s == id && e == epoch && f == features),
                        || {
                            format!(
                                "{what}: {camera} granted at epoch {epoch} with {features:?}, but \
                                 the daemon has {is:?}"
                            )
                        },
                    )?;
                    let same_holder = was.as_ref().is_some_and(|(s, e, _)| s == id && e == epoch);
                    ensure(*epoch == epoch_before + 1 || same_holder, || {
                        format!(
                            "{what}: {camera} newly granted at epoch {epoch}; it was \
                             {epoch_before}"
                        )
                    })?;
                    if let Some((old, old_epoch, _)) = &was {
                        if old != id {
                            ensure(after_wait || !holder_live(old), || {
                                format!(
                                    "{what}: {camera} taken from live holder {old} without \
                                     asking it first"
                                )
                            })?;
                            ensure(after.is_revoking(key, camera, old, *old_epoch), || {
                                format!(
                                    "{what}: {camera} moved from {old} (epoch {old_epoch}), \
                                     whose lease is not counted as revoking: {:?}",
                                    after.revoking.get(&(key.to_string(), camera.clone()))
                                )
                            })?;
                        }
                    }
                }
                CameraOutcome::Refused(Refusal::Moved { epoch }) => {
                    Coverage::bump(&self.coverage.moved_refusals);
                    ensure(stale && *epoch == epoch_before, || {
                        format!(
                            "{what}: {camera} refused Moved {{ epoch: {epoch} }} for epoch {:?} \
                             (the daemon's was {epoch_before})",
                            item.epoch
                        )
                    })?;
                    unchanged()?;
                }
                CameraOutcome::Refused(Refusal::ServerKicked) => {
                    ensure(kicked, || format!("{what}: {camera} refused ServerKicked"))?;
                    unchanged()?;
                }
                CameraOutcome::Refused(Refusal::HeldBySilentServer { holder }) => {
                    Coverage::bump(&self.coverage.held_by_silent);
                    ensure(
                        was.as_ref().is_some_and(|(s, _, _)| {
                            s != id
                                && holder.contains(s.as_str())
                                && (after_wait || !holder_live(s))
                        }),
                        || {
                            format!(
                                "{what}: {camera} refused HeldBySilentServer {{ {holder} }}; \
                                 the lease was {was:?}"
                            )
                        },
                    )?;
                    unchanged()?;
                }
                CameraOutcome::Refused(
                    r @ (Refusal::NoSeats {
                        feature,
                        in_use,
                        total,
                    }
                    | Refusal::OverAllocated {
                        feature,
                        in_use,
                        total,
                    }),
                ) => {
                    if matches!(r, Refusal::OverAllocated { .. }) {
                        Coverage::bump(&self.coverage.over_allocated);
                        ensure(in_use > total, || {
                            format!("{what}: {camera} refused {r:?} with use within the total")
                        })?;
                    } else {
                        Coverage::bump(&self.coverage.no_seats);
                        // Over the total only on key B's overdraft, which is then full.
                        ensure(in_use <= total || key == KB, || {
                            format!("{what}: {camera} refused {r:?}: should be OverAllocated")
                        })?;
                    }
                    ensure(
                        *total == self.core.allocation(&pool, feature, self.now),
                        || {
                            format!(
                                "{what}: {camera} refused {r:?}, but the allocation is {}",
                                self.core.allocation(&pool, feature, self.now)
                            )
                        },
                    )?;
                    ensure(
                        was.as_ref().map_or(id, |(s, _, _)| s.as_str()) == id,
                        || {
                            format!(
                                "{what}: {camera} held by another server {was:?}: a seat \
                                 refusal must be HeldBySilentServer"
                            )
                        },
                    )?;
                    unchanged()?;
                }
                CameraOutcome::Refused(Refusal::OverdraftSpent { .. }) => {
                    ensure(key == KB && self.core.overdraft_spent(KB, self.now), || {
                        format!(
                            "{what}: {camera} refused {outcome:?}, but the allowance is not spent"
                        )
                    })?;
                    unchanged()?;
                }
                CameraOutcome::Refused(Refusal::UnknownClass { class }) => {
                    ensure(key == KB && class == ENCODER, || {
                        format!("{what}: {camera} refused UnknownClass {class} on key {key}")
                    })?;
                    unchanged()?;
                }
                CameraOutcome::Refused(r) => {
                    return Err(format!("{what}: {camera} refused unexpectedly: {r:?}"));
                }
                CameraOutcome::AwaitingHolder { holder } => {
                    Coverage::bump(&self.coverage.awaiting_holder);
                    ensure(
                        !after_wait
                            && was.as_ref().is_some_and(|(s, _, _)| {
                                s != id && holder.contains(s.as_str()) && holder_live(s)
                            }),
                        || {
                            format!(
                                "{what}: {camera} answered AwaitingHolder {{ {holder} }}; the \
                                 lease was {was:?}"
                            )
                        },
                    )?;
                    unchanged()?;
                }
            }
        }
        Ok(())
    }

    fn move_camera(&mut self, i: usize, pick: usize, ack: bool, finish: bool) -> Check {
        if !self.clients[i].reachable() {
            return Ok(());
        }
        self.sync_binding(i);
        let Some(key) = self.clients[i].key.clone() else {
            return Ok(());
        };
        let id = self.clients[i].id.clone();
        let snap = Snapshot::of(&self.core, self.now);
        let candidates: Vec<(CameraId, ServerId, u64)> = snap
            .held
            .iter()
            .filter(|((k, _), (s, _, _))| *k == key && *s != id)
            .map(|((_, c), (s, e, _))| (c.clone(), s.clone(), *e))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let (camera, holder, old_epoch) = candidates[pick % candidates.len()].clone();
        let item = CheckoutItem::camera(&camera);
        self.checkout_items(i, &key, Some(&key), std::slice::from_ref(&item), false)?;
        let asked_holder = self
            .core
            .server_revocations(&holder)
            .iter()
            .any(|r| r.camera == camera && r.epoch == old_epoch && r.provisional);
        let still_held = Snapshot::of(&self.core, self.now)
            .holder(&key, &camera)
            .is_some_and(|(s, e, _)| *s == holder && *e == old_epoch);
        if !(asked_holder && still_held) {
            return Ok(());
        }
        // The holder was asked (AwaitingHolder): if connected, it heard it at once.
        let h = self.client_index(&holder);
        if let Some(h) = h.filter(|h| {
            ack && self.clients[*h].session
                && !self.clients[*h].partitioned
                && self.clients[*h].acks.contains(&(camera.clone(), old_epoch))
                && self.clients[*h].held.get(&camera) != Some(&old_epoch)
        }) {
            let what = format!("{holder} acknowledges the move of {camera}@{old_epoch}");
            let r = self.core.acknowledge(self.now, &holder, &camera, old_epoch);
            self.note(format!("{} {what} -> {r:?}", at(self.now)));
            ensure(r == Ok(true), || {
                format!("{what}: answered {r:?}, expected Ok(true)")
            })?;
            self.clients[h].acks.remove(&(camera.clone(), old_epoch));
            self.done(&what)?;
        }
        if finish {
            self.finish_move(i, &camera)
        } else {
            self.pending_moves.push((i, camera));
            Ok(())
        }
    }

    /// The daemon asks again after waiting for the holder: `after_wait`.
    fn finish_move(&mut self, i: usize, camera: &str) -> Check {
        if !self.clients[i].reachable() {
            return Ok(());
        }
        self.sync_binding(i);
        let Some(key) = self.clients[i].key.clone() else {
            return Ok(());
        };
        let item = CheckoutItem::camera(camera);
        self.checkout_items(i, &key, Some(&key), std::slice::from_ref(&item), true)
    }

    fn release(&mut self, i: usize, picks: &[usize], stray: Option<usize>) -> Check {
        if !self.clients[i].reachable() {
            return Ok(());
        }
        self.sync_binding(i);
        let Some(key) = self.clients[i].key.clone() else {
            return Ok(());
        };
        let id = self.clients[i].id.clone();
        let believed: Vec<CameraId> = self.clients[i].held.keys().cloned().collect();
        let mut cameras: Vec<CameraId> = Vec::new();
        for p in picks {
            if !believed.is_empty() {
                cameras.push(believed[p % believed.len()].clone());
            }
        }
        cameras.extend(stray.map(cam));
        cameras.sort();
        cameras.dedup();
        if cameras.is_empty() {
            return Ok(());
        }
        let before = Snapshot::of(&self.core, self.now);
        let what = format!("release by {id} of {cameras:?}");
        let r = self.core.release(self.now, &id, &cameras);
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        let outs = match r {
            Ok(outs) => outs,
            Err(Refusal::NotEnrolled) => {
                self.not_enrolled(i, &what)?;
                return self.done(&what);
            }
            Err(e) => return Err(format!("{what}: unexpected refusal {e:?}")),
        };
        let after = Snapshot::of(&self.core, self.now);
        for (camera, res) in &outs {
            let held = before
                .holder(&key, camera)
                .is_some_and(|(s, _, _)| *s == id);
            let expected = if held { Ok(()) } else { Err(Refusal::NotHeld) };
            ensure(*res == expected, || {
                format!("{what}: {camera} answered {res:?}, expected {expected:?}")
            })?;
            ensure(
                after.holder(&key, camera).map(|(s, _, _)| s.as_str()) != Some(id.as_str()),
                || format!("{what}: {camera} is still held by {id}"),
            )?;
            self.clients[i].drop_camera(camera);
        }
        self.done(&what)
    }

    fn heartbeat(&mut self, i: usize, wrong: bool, then_sync: bool, ack_now: bool) -> Check {
        self.sync_binding(i);
        let Some(key) = self.clients[i].key.clone() else {
            return Ok(());
        };
        let id = self.clients[i].id.clone();
        let digest = if wrong {
            [0x5a; 32]
        } else {
            digest::holdings(self.clients[i].held.iter().map(|(c, e)| (c.as_str(), *e)))
        };
        let what = format!(
            "heartbeat by {id} claiming {:?}{}",
            self.clients[i].held,
            if wrong { " with a wrong digest" } else { "" }
        );
        let r = self.core.heartbeat(self.now, &id, &digest);
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        let a = match r {
            Ok(a) => a,
            Err(Refusal::NotEnrolled) => {
                self.not_enrolled(i, &what)?;
                return self.done(&what);
            }
            Err(e) => return Err(format!("{what}: unexpected refusal {e:?}")),
        };
        let daemon = Snapshot::of(&self.core, self.now).held_by(&key, &id);
        let differs = self.clients[i].held != daemon;
        ensure(a.sync_needed == (wrong || differs), || {
            format!(
                "{what}: sync_needed {} but the client claims {:?} and the daemon holds {daemon:?}",
                a.sync_needed, self.clients[i].held
            )
        })?;
        ensure(a.heartbeat_interval_ms == HEARTBEAT_MS, || {
            format!("{what}: heartbeat interval {}", a.heartbeat_interval_ms)
        })?;
        ensure(a.revocations == self.core.server_revocations(&id), || {
            format!("{what}: the answer's revocations differ from the server's pending ones")
        })?;
        let c = &mut self.clients[i];
        c.take_revocations(&a.revocations);
        c.deadline = self.now.plus(a.valid_for_ms);
        self.done(&what)?;
        if ack_now {
            self.ack_all(i)?;
        }
        if then_sync && a.sync_needed && self.clients[i].key.is_some() {
            self.sync(i)?;
        }
        Ok(())
    }

    fn sync(&mut self, i: usize) -> Check {
        self.sync_binding(i);
        let Some(key) = self.clients[i].key.clone() else {
            return Ok(());
        };
        let id = self.clients[i].id.clone();
        let claimed: Vec<(CameraId, u64)> = self.clients[i]
            .held
            .iter()
            .map(|(c, e)| (c.clone(), *e))
            .collect();
        let before = Snapshot::of(&self.core, self.now).held_by(&key, &id);
        let what = format!("sync by {id} claiming {claimed:?}");
        let r = self.core.sync(self.now, &id, &claimed);
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        let a = match r {
            Ok(a) => a,
            Err(Refusal::NotEnrolled) => {
                self.not_enrolled(i, &what)?;
                return self.done(&what);
            }
            Err(e) => return Err(format!("{what}: unexpected refusal {e:?}")),
        };
        let after = Snapshot::of(&self.core, self.now).held_by(&key, &id);
        let claimed_map: BTreeMap<CameraId, u64> = claimed.iter().cloned().collect();
        let expect_kept: BTreeMap<CameraId, u64> = claimed_map
            .iter()
            .filter(|(c, e)| before.get(*c) == Some(e))
            .map(|(c, e)| (c.clone(), *e))
            .collect();
        ensure(after == expect_kept, || {
            format!(
                "{what}: the daemon held {before:?} and now holds {after:?}; a sync only \
                 releases what is not claimed, so {expect_kept:?}"
            )
        })?;
        let mut expect_released: Vec<CameraId> = before
            .iter()
            .filter(|(c, e)| claimed_map.get(*c) != Some(e))
            .map(|(c, _)| c.clone())
            .collect();
        let mut released = a.released.clone();
        released.sort();
        expect_released.sort();
        ensure(released == expect_released, || {
            format!("{what}: released {released:?}, expected {expect_released:?}")
        })?;
        let mut not_held = a.not_held.clone();
        not_held.sort();
        let expect_not_held: Vec<CameraId> = claimed_map
            .keys()
            .filter(|c| !expect_kept.contains_key(*c))
            .cloned()
            .collect();
        ensure(not_held == expect_not_held, || {
            format!("{what}: not_held {not_held:?}, expected {expect_not_held:?}")
        })?;
        if !released.is_empty() {
            Coverage::bump(&self.coverage.sync_released);
        }
        let c = &mut self.clients[i];
        for camera in &a.not_held {
            c.drop_camera(camera);
        }
        c.take_revocations(&a.revocations);
        c.deadline = self.now.plus(a.valid_for_ms);
        self.done(&what)
    }

    fn ack_all(&mut self, i: usize) -> Check {
        if !self.clients[i].reachable() {
            return Ok(());
        }
        self.sync_binding(i);
        let Some(key) = self.clients[i].key.clone() else {
            return Ok(());
        };
        let id = self.clients[i].id.clone();
        let acks: Vec<(CameraId, u64)> = self.clients[i].acks.iter().cloned().collect();
        for (camera, epoch) in acks {
            let before = Snapshot::of(&self.core, self.now);
            let expected = before
                .holder(&key, &camera)
                .is_some_and(|(s, e, _)| *s == id && *e == epoch)
                || before.is_revoking(&key, &camera, &id, epoch);
            let what = format!("{id} acknowledges the revocation of {camera}@{epoch}");
            let r = self.core.acknowledge(self.now, &id, &camera, epoch);
            self.note(format!("{} {what} -> {r:?}", at(self.now)));
            match r {
                Ok(freed) => {
                    ensure(freed == expected, || {
                        format!("{what}: answered freed={freed}, expected {expected}")
                    })?;
                    let after = Snapshot::of(&self.core, self.now);
                    ensure(
                        !after.is_revoking(&key, &camera, &id, epoch)
                            && !after
                                .holder(&key, &camera)
                                .is_some_and(|(s, e, _)| *s == id && *e == epoch),
                        || format!("{what}: the seat did not come back"),
                    )?;
                    self.clients[i].acks.remove(&(camera, epoch));
                    self.done(&what)?;
                }
                Err(Refusal::NotEnrolled) => {
                    self.not_enrolled(i, &what)?;
                    return self.done(&what);
                }
                Err(e) => return Err(format!("{what}: unexpected refusal {e:?}")),
            }
        }
        Ok(())
    }

    fn free(
        &mut self,
        pick: usize,
        any: Option<(bool, usize)>,
        name_key: bool,
        force: bool,
    ) -> Check {
        let snap = Snapshot::of(&self.core, self.now);
        let (key, camera) = match any {
            Some((b, n)) => (if b { KB } else { KA }.to_string(), cam(n)),
            None => {
                let held: Vec<&(KeyId, CameraId)> = snap.held.keys().collect();
                if held.is_empty() {
                    return Ok(());
                }
                held[pick % held.len()].clone()
            }
        };
        let known = |k: &str| self.epochs.contains_key(&(k.to_string(), camera.clone()));
        let resolved: Result<KeyId, &str> = if name_key {
            if known(&key) {
                Ok(key.clone())
            } else {
                Err("unknown")
            }
        } else {
            match (known(KA), known(KB)) {
                (true, false) => Ok(KA.into()),
                (false, true) => Ok(KB.into()),
                (true, true) => Err("ambiguous"),
                (false, false) => Err("unknown"),
            }
        };
        let what = format!(
            "free {}{camera}{}",
            if name_key {
                format!("{key}/")
            } else {
                String::new()
            },
            if force { " --force" } else { "" }
        );
        let r = self
            .core
            .free(self.now, name_key.then_some(key.as_str()), &camera, force);
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        let after = Snapshot::of(&self.core, self.now);
        match (&resolved, &r) {
            (Err("unknown"), Err(Refusal::UnknownCamera { .. })) => {}
            (Err("ambiguous"), Err(Refusal::BadRequest { .. })) => {}
            (Ok(k), _) => {
                let lease = snap.holder(k, &camera).cloned();
                let newly = self.newly_added(k, &camera);
                match &r {
                    Ok(out) => {
                        let Some((holder, epoch, _)) = &lease else {
                            return Err(format!("{what}: freed {out:?}, but nothing held it"));
                        };
                        ensure(newly.is_none(), || {
                            format!(
                                "{what}: freed a newly added camera (protected until {}); \
                                 --force never overrides that",
                                newly.map(at).unwrap_or_default()
                            )
                        })?;
                        ensure(
                            out.key == *k
                                && out.holder == *holder
                                && out.epoch == *epoch
                                && out.forced == force,
                            || format!("{what}: answered {out:?}; the lease was {lease:?}"),
                        )?;
                        ensure(after.holder(k, &camera).is_none(), || {
                            format!("{what}: still held: {:?}", after.holder(k, &camera))
                        })?;
                        let revoking = after.is_revoking(k, &camera, holder, *epoch);
                        ensure(out.revoking == revoking && revoking != force, || {
                            format!(
                                "{what}: answered revoking={}, the daemon counts it {}; \
                                 expected {}",
                                out.revoking, revoking, !force
                            )
                        })?;
                    }
                    Err(Refusal::NewlyAdded { until }) => {
                        Coverage::bump(&self.coverage.newly_added);
                        ensure(lease.is_some() && newly == Some(*until), || {
                            format!(
                                "{what}: refused NewlyAdded until {}, but the camera was first \
                                 granted at {:?} and held by {lease:?}",
                                at(*until),
                                self.first_granted
                                    .get(&(k.clone(), camera.clone()))
                                    .map(|t| at(*t))
                            )
                        })?;
                        ensure(snap == after, || {
                            format!("{what}: a refusal changed the state")
                        })?;
                    }
                    Err(Refusal::NotHeld) => {
                        ensure(lease.is_none(), || {
                            format!("{what}: refused NotHeld, but {lease:?} holds it")
                        })?;
                    }
                    Err(e) => return Err(format!("{what}: unexpected refusal {e:?}")),
                }
            }
            _ => {
                return Err(format!(
                    "{what}: the camera is {resolved:?} to the simulation; answered {r:?}"
                ))
            }
        }
        self.done(&what)
    }

    fn kick(&mut self, i: usize, force: bool) -> Check {
        let id = self.clients[i].id.clone();
        let Some(pool) = self.pool_of(&id) else {
            let r = self.core.kick(self.now, &id, force);
            ensure(matches!(r, Err(Refusal::UnknownServer { .. })), || {
                format!("kick of unknown server {id}: answered {r:?}")
            })?;
            return self.done("kick of an unknown server");
        };
        let before = Snapshot::of(&self.core, self.now);
        let held = before.held_by(&pool.key, &id);
        let newly: BTreeSet<CameraId> = held
            .keys()
            .filter(|c| self.newly_added(&pool.key, c).is_some())
            .cloned()
            .collect();
        let what = format!("kick {id}{}", if force { " --force" } else { "" });
        let r = self.core.kick(self.now, &id, force);
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        let out = r.map_err(|e| format!("{what}: unexpected refusal {e:?}"))?;
        let after = Snapshot::of(&self.core, self.now);
        let kept: BTreeSet<CameraId> = out.kept_newly_added.iter().cloned().collect();
        ensure(kept == newly, || {
            format!("{what}: kept {kept:?}; the newly added cameras it held are {newly:?}")
        })?;
        let still: BTreeSet<CameraId> = after.held_by(&pool.key, &id).into_keys().collect();
        ensure(still == newly, || {
            format!("{what}: it still holds {still:?}; only {newly:?} are newly added")
        })?;
        let gone = self.pool_of(&id).is_none();
        ensure(out.forgotten == gone && gone != after.busy(&id), || {
            format!(
                "{what}: forgotten={} but the daemon {} it, and it holds or revokes something: {}",
                out.forgotten,
                if gone { "forgot" } else { "kept" },
                after.busy(&id)
            )
        })?;
        for (camera, epoch) in &held {
            if newly.contains(camera) {
                continue;
            }
            let revoking = after.is_revoking(&pool.key, camera, &id, *epoch);
            ensure(revoking != force, || {
                format!(
                    "{what}: {camera}@{epoch} revoking={revoking}; a kick{} should leave it {}",
                    if force { " --force" } else { "" },
                    if force {
                        "released"
                    } else {
                        "counted as revoking"
                    }
                )
            })?;
        }
        self.done(&what)
    }

    fn move_server(&mut self, i: usize, other_key: bool, pool_pick: usize) -> Check {
        let id = self.clients[i].id.clone();
        let Some(from) = self.pool_of(&id) else {
            return Ok(());
        };
        let pools = self.pools_of(&if other_key {
            other(&from.key)
        } else {
            from.key.clone()
        });
        let target = pools[pool_pick % pools.len()].clone();
        let snap = Snapshot::of(&self.core, self.now);
        let busy = snap.busy(&id);
        let cross = target.key != from.key;
        // What its held cameras need in the target pool, and whether that fits.
        let mut needed: BTreeMap<String, u64> = BTreeMap::new();
        for (_, _, features) in snap.held.values().filter(|(s, _, _)| *s == id) {
            for (f, n) in features {
                *needed.entry(f.clone()).or_insert(0) += u64::from(*n);
            }
        }
        let short = needed.iter().any(|(f, n)| {
            *n > 0
                && self.core.usage(&target, f).counted() + n
                    > self.core.allocation(&target, f, self.now)
        });
        // Key B's overdraft seat, while its allowance lasts, may cover what is short; the
        // invariant-1 check after every step holds the key to that one seat.
        let overdraft_may_cover = target.key == KB && !self.core.overdraft_spent(KB, self.now);
        let what = format!("server move {id} {from} -> {target}");
        let r = self.core.move_server(self.now, &id, &target);
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        match &r {
            Ok(()) => {
                ensure(!(cross && busy), || {
                    format!("{what}: moved to another key's pool while holding cameras")
                })?;
                ensure(
                    from == target || cross || !short || overdraft_may_cover,
                    || format!("{what}: moved although the pool lacks room for {needed:?}"),
                )?;
                ensure(self.pool_of(&id).as_ref() == Some(&target), || {
                    format!("{what}: the server is in {:?}", self.pool_of(&id))
                })?;
                let after = Snapshot::of(&self.core, self.now);
                ensure(
                    cross || after.held_by(&target.key, &id) == snap.held_by(&from.key, &id),
                    || format!("{what}: its cameras did not move with it"),
                )?;
            }
            Err(Refusal::BoundToOtherKey { key }) => {
                Coverage::bump(&self.coverage.bound_to_other_key);
                ensure(cross && busy && *key == from.key, || {
                    format!("{what}: refused BoundToOtherKey {{ key: {key} }} (busy: {busy})")
                })?;
            }
            Err(
                Refusal::NoSeats { .. }
                | Refusal::OverAllocated { .. }
                | Refusal::OverdraftSpent { .. },
            ) => {
                ensure(!cross && short, || {
                    format!("{what}: refused {r:?} though {needed:?} fits")
                })?;
                ensure(self.pool_of(&id).as_ref() == Some(&from), || {
                    format!(
                        "{what}: refused, yet the server is in {:?}",
                        self.pool_of(&id)
                    )
                })?;
            }
            Err(e) => return Err(format!("{what}: unexpected refusal {e:?}")),
        }
        self.done(&what)
    }

    fn pools_of(&self, key: &str) -> Vec<PoolId> {
        self.all_pools()
            .into_iter()
            .filter(|p| p.key == key)
            .collect()
    }

    fn all_pools(&self) -> Vec<PoolId> {
        self.core
            .pool_views(self.now)
            .into_iter()
            .map(|v| PoolId::new(&v.key_id, &v.name))
            .collect()
    }

    /// A seat request for `key`: camera or lpr (key B has no lpr: asking it is refused),
    /// from one of the key's sales orders if `order` picks one.
    fn seat_request(&self, key: &str, lpr: bool, count: u32, order: Option<usize>) -> SeatRequest {
        let feature = if lpr { "lpr" } else { "camera" };
        let order = order.and_then(|o| {
            let doc = self.core.key_document(key)?;
            let orders: Vec<&String> = doc
                .entries
                .iter()
                .filter(|e| e.feature == feature)
                .map(|e| &e.order)
                .collect();
            (!orders.is_empty()).then(|| orders[o % orders.len()].clone())
        });
        SeatRequest {
            feature: feature.into(),
            count,
            order,
        }
    }

    /// What moving `req` out of `from` must answer: Ok, or the refusal's kind.
    fn expect_move(&self, from: &PoolId, req: &SeatRequest) -> Result<(), &'static str> {
        if req.count == 0 {
            return Ok(());
        }
        let doc = self.core.key_document(&from.key).ok_or("no key")?;
        if !doc.entries.iter().any(|e| e.feature == req.feature) {
            return Err("BadRequest");
        }
        let view = self
            .core
            .pool_views(self.now)
            .into_iter()
            .find(|v| v.pool == from.to_string())
            .ok_or("no pool")?;
        let available: u64 = view
            .entries
            .iter()
            .filter(|e| {
                e.feature == req.feature
                    && !e.expired
                    && req.order.as_ref().is_none_or(|o| e.order == *o)
            })
            .map(|e| u64::from(e.seats))
            .sum();
        if u64::from(req.count) > available {
            return Err("BadRequest");
        }
        let unused = self
            .core
            .allocation(from, &req.feature, self.now)
            .saturating_sub(self.core.usage(from, &req.feature).counted());
        if u64::from(req.count) > unused {
            return Err("SeatsInUse");
        }
        Ok(())
    }

    /// Checks a pool command's answer against `expected`: seats moved exactly as asked,
    /// or a refusal that changed nothing.
    #[allow(clippy::too_many_arguments)]
    fn check_seat_move(
        &self,
        what: &str,
        from: &PoolId,
        to: &PoolId,
        req: &SeatRequest,
        expected: Result<(), &'static str>,
        before: &[crate::core::PoolView],
        r: &Result<crate::core::PoolChange, Refusal>,
    ) -> Check {
        let f = req.feature.as_str();
        let alloc_before = |p: &PoolId| -> u64 {
            before
                .iter()
                .find(|v| v.pool == p.to_string())
                .and_then(|v| v.seats.iter().find(|s| s.feature == f))
                .map(|s| s.total)
                .unwrap_or(0)
        };
        match (expected, r) {
            (Ok(()), Ok(change)) => {
                let moved: u32 = change.moved.iter().map(|m| m.count).sum();
                ensure(moved == req.count, || {
                    format!(
                        "{what}: moved {moved} seats, {} asked: {change:?}",
                        req.count
                    )
                })?;
                ensure(
                    change
                        .moved
                        .iter()
                        .all(|m| req.order.as_ref().is_none_or(|o| m.order == *o)),
                    || format!("{what}: seats came from other sales orders: {change:?}"),
                )?;
                let n = u64::from(req.count);
                let (fa, ta) = (
                    self.core.allocation(from, f, self.now),
                    self.core.allocation(to, f, self.now),
                );
                ensure(
                    fa + n == alloc_before(from) && ta == alloc_before(to) + n,
                    || {
                        format!(
                            "{what}: allocations {from} {} -> {fa}, {to} {} -> {ta}",
                            alloc_before(from),
                            alloc_before(to)
                        )
                    },
                )?;
            }
            (
                Err("SeatsInUse"),
                Err(Refusal::SeatsInUse {
                    asked,
                    in_use,
                    total,
                    ..
                }),
            ) => {
                Coverage::bump(&self.coverage.seats_in_use);
                ensure(
                    *asked == u64::from(req.count)
                        && *in_use == self.core.usage(from, f).counted()
                        && *total == self.core.allocation(from, f, self.now)
                        && asked + in_use > *total,
                    || format!("{what}: refused with wrong numbers {r:?}"),
                )?;
            }
            (Err("BadRequest"), Err(Refusal::BadRequest { .. })) => {}
            (expected, r) => {
                return Err(format!("{what}: expected {expected:?}, answered {r:?}"));
            }
        }
        if r.is_err() {
            ensure(self.core.pool_views(self.now) == before, || {
                format!("{what}: a refusal changed the pools")
            })?;
        }
        Ok(())
    }

    fn pool_create(&mut self, key_b: bool, lpr: bool, count: u32, order: Option<usize>) -> Check {
        let key = if key_b { KB } else { KA };
        self.pools_made += 1;
        let pool = PoolId::new(key, &format!("P{}", self.pools_made));
        let from = PoolId::default_of(key);
        let req = self.seat_request(key, lpr, count, order);
        let expected = self.expect_move(&from, &req);
        let before = self.core.pool_views(self.now);
        let what = format!("pool create {pool} {req}");
        let r = self
            .core
            .create_pool(self.now, &pool, std::slice::from_ref(&req));
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        if r.is_ok() {
            Coverage::bump(&self.coverage.pools_created);
        }
        self.check_seat_move(&what, &from, &pool, &req, expected, &before, &r)?;
        ensure(r.is_ok() == self.pools_of(key).contains(&pool), || {
            format!("{what}: answered {r:?}; the pool exists: {}", r.is_err())
        })?;
        self.done(&what)
    }

    #[allow(clippy::too_many_arguments)]
    fn pool_move(
        &mut self,
        key_b: bool,
        from: usize,
        to: usize,
        lpr: bool,
        count: u32,
        order: Option<usize>,
    ) -> Check {
        let key = if key_b { KB } else { KA };
        let pools = self.pools_of(key);
        let (from, to) = (
            pools[from % pools.len()].clone(),
            pools[to % pools.len()].clone(),
        );
        let req = self.seat_request(key, lpr, count, order);
        let expected = if from == to {
            Err("BadRequest")
        } else {
            self.expect_move(&from, &req)
        };
        let before = self.core.pool_views(self.now);
        let what = format!("pool move {from} {to} {req}");
        let r = self
            .core
            .move_seats(self.now, &from, &to, std::slice::from_ref(&req));
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        if r.as_ref().is_ok_and(|c| !c.moved.is_empty()) {
            Coverage::bump(&self.coverage.seats_moved);
        }
        self.check_seat_move(&what, &from, &to, &req, expected, &before, &r)?;
        self.done(&what)
    }

    fn pool_delete(&mut self, key_b: bool, pick: usize) -> Check {
        let key = if key_b { KB } else { KA };
        let pools = self.pools_of(key);
        let pool = pools[pick % pools.len()].clone();
        let default = PoolId::default_of(key);
        let servers = self
            .core
            .server_views(self.now)
            .iter()
            .filter(|v| v.pool == pool.to_string())
            .count() as u64;
        let counted: u64 = FEATURES
            .iter()
            .map(|f| self.core.usage(&pool, f).counted())
            .sum();
        let revoking_now: u64 = FEATURES
            .iter()
            .map(|f| self.core.usage(&pool, f).revoking)
            .sum();
        let before: Vec<(u64, u64)> = FEATURES
            .iter()
            .map(|f| {
                (
                    self.core.allocation(&pool, f, self.now),
                    self.core.allocation(&default, f, self.now),
                )
            })
            .collect();
        let views = self.core.pool_views(self.now);
        let what = format!("pool delete {pool}");
        let r = self.core.delete_pool(self.now, &pool);
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        match &r {
            Ok(_) => {
                Coverage::bump(&self.coverage.pools_deleted);
                ensure(pool != default && servers == 0 && counted == 0, || {
                    format!("{what}: deleted with {servers} servers and {counted} seats counted")
                })?;
                for (f, (p, d)) in FEATURES.iter().zip(before) {
                    let now_d = self.core.allocation(&default, f, self.now);
                    ensure(now_d == d + p, || {
                        format!("{what}: Default holds {now_d} {f}; it held {d} and got {p}")
                    })?;
                }
                ensure(!self.pools_of(key).contains(&pool), || {
                    format!("{what}: the pool is still there")
                })?;
            }
            Err(Refusal::PoolInUse {
                servers: s,
                revoking,
                ..
            }) => {
                Coverage::bump(&self.coverage.pool_in_use);
                ensure(
                    *s == servers && *revoking == revoking_now && (servers > 0 || counted > 0),
                    || {
                        format!(
                            "{what}: refused {r:?}; it has {servers} servers, {counted} counted"
                        )
                    },
                )?;
            }
            Err(Refusal::BadRequest { .. }) if pool == default => {}
            Err(e) => return Err(format!("{what}: unexpected refusal {e:?}")),
        }
        if r.is_err() {
            ensure(self.core.pool_views(self.now) == views, || {
                format!("{what}: a refusal changed the pools")
            })?;
        }
        self.done(&what)
    }

    fn reissue(&mut self, extend_secs: Option<u64>, delta: i8) -> Check {
        let mut doc = self
            .core
            .key_document(KA)
            .cloned()
            .ok_or("key A is not installed")?;
        doc.revision += 1;
        if let Some(secs) = extend_secs {
            doc.entries[1].not_after = self.now.plus(secs * SECOND);
        }
        doc.entries[0].count =
            (i64::from(doc.entries[0].count) + i64::from(delta)).clamp(1, 4) as u32;
        let what = format!(
            "reissue of {KA} at revision {}: entries {:?}",
            doc.revision,
            doc.entries
                .iter()
                .map(|e| format!("{} {} until {}", e.count, e.feature, at(e.not_after)))
                .collect::<Vec<_>>()
        );
        let r = self.core.install_key(self.now, doc, false);
        self.note(format!("{} {what} -> {r:?}", at(self.now)));
        r.map_err(|e| format!("{what}: refused {e:?}"))?;
        self.done(&what)
    }

    fn session_open(&mut self, i: usize) -> Check {
        let c = &self.clients[i];
        if c.partitioned || c.session || c.key.is_none() || self.pool_of(&c.id).is_none() {
            return Ok(());
        }
        let id = c.id.clone();
        self.core.session_opened(self.now, &id);
        self.clients[i].session = true;
        self.note(format!("{} {id} connects", at(self.now)));
        self.done(&format!("session opened by {id}"))
    }

    fn session_close(&mut self, i: usize) -> Check {
        let id = self.clients[i].id.clone();
        self.core.session_closed(self.now, &id);
        self.clients[i].session = false;
        self.note(format!("{} {id} disconnects", at(self.now)));
        self.done(&format!("session closed by {id}"))
    }

    /// Time passes to `target`: the daemon's timer fires at each deadline, renewals are
    /// persisted every heartbeat interval, diligent clients heartbeat (and acknowledge,
    /// and sync when told), and clients whose deadline passes stop.
    fn advance_to(&mut self, target: Timestamp) -> Check {
        while self.now < target {
            let now = self.now;
            let mut next = target.min(self.next_persist.max(now.plus(1)));
            let due = self.core.next_deadline();
            if due > now {
                next = next.min(due);
            }
            for c in &self.clients {
                if c.diligent && c.reachable() && c.next_heartbeat > now {
                    next = next.min(c.next_heartbeat);
                }
                if c.deadline > now && !c.held.is_empty() {
                    next = next.min(c.deadline);
                }
            }
            self.now = next;
            if self.next_persist <= self.now {
                self.core.renewals_persisted(self.now);
                self.next_persist = self.now.plus(HEARTBEAT_MS);
            }
            self.core.advance(self.now);
            self.done("time passing")?;
            for i in 0..self.clients.len() {
                let c = &self.clients[i];
                if c.diligent && c.reachable() && c.next_heartbeat <= self.now {
                    self.clients[i].next_heartbeat = self.now.plus(HEARTBEAT_MS);
                    self.heartbeat(i, false, true, true)?;
                }
            }
        }
        Ok(())
    }
}

fn run_scenario(s: &Scenario, coverage: &Coverage) -> Result<(), String> {
    let mut sim = Sim::new(s, coverage)?;
    for (n, op) in s.ops.iter().enumerate() {
        sim.note(format!("{} step {n}: {op:?}", at(sim.now)));
        if let Err(e) = sim.apply(op) {
            let trail: Vec<String> = sim.trail.iter().cloned().collect();
            return Err(format!(
                "step {n} ({op:?}) at {}: {e}\n--- recent operations and events ---\n{}",
                at(sim.now),
                trail.join("\n")
            ));
        }
        Coverage::bump(&coverage.steps);
    }
    coverage
        .simulated_secs
        .fetch_add(sim.now.since(T0) / SECOND, Ordering::Relaxed);
    Ok(())
}

fn config() -> (Config, bool) {
    let from_env = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    let config = Config {
        cases: from_env.unwrap_or(256),
        // A failure prints its minimal case; no regression files in the source tree.
        failure_persistence: None,
        ..Config::default()
    };
    (config, from_env.is_none())
}

#[test]
fn random_interleavings_keep_the_invariants() {
    let (config, default_cases) = config();
    let cases = config.cases;
    let coverage = Coverage::default();
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&scenario(), |s| {
        run_scenario(&s, &coverage).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let steps = coverage.steps.load(Ordering::Relaxed);
    eprintln!(
        "core::prop_tests: {cases} cases, {steps} steps in {:.1?}; {coverage:?}",
        started.elapsed()
    );
    if default_cases {
        assert!(
            steps >= MIN_STEPS,
            "only {steps} steps ran; a normal run makes at least {MIN_STEPS}"
        );
        let c = &coverage;
        for (name, n) in [
            ("grants", &c.grants),
            ("moves", &c.moves),
            ("AwaitingHolder answers", &c.awaiting_holder),
            ("HeldBySilentServer refusals", &c.held_by_silent),
            ("Moved refusals", &c.moved_refusals),
            ("BoundToOtherKey refusals", &c.bound_to_other_key),
            ("NewlyAdded refusals", &c.newly_added),
            ("forced overlaps", &c.forced_overlaps),
            ("allocation shrinks", &c.shrinks),
            ("OverAllocated refusals", &c.over_allocated),
            ("NoSeats refusals", &c.no_seats),
            ("revoking leases ended by time", &c.revoking_expired),
            ("revoking leases acknowledged", &c.revoking_acknowledged),
            ("silent servers expired", &c.servers_expired),
            ("servers forgotten", &c.forgotten),
            ("sync releases", &c.sync_released),
            ("pools created", &c.pools_created),
            ("seats moved between pools", &c.seats_moved),
            ("pools deleted", &c.pools_deleted),
            ("SeatsInUse refusals", &c.seats_in_use),
            ("PoolInUse refusals", &c.pool_in_use),
            ("overdraft use", &c.overdraft_started),
            ("spent overdraft allowances", &c.overdraft_spent),
        ] {
            assert!(
                n.load(Ordering::Relaxed) > 0,
                "the random runs never exercised {name}: the generator needs fixing ({coverage:?})"
            );
        }
    }
}

/// Regression: a checkout answer carries `valid_for` but no revocations. A holder whose
/// camera moved away while it was silent, and whose first call after reconnecting is a
/// checkout, extended its deadline past the end of its `revoking` lease without hearing
/// of the move; when that lease stopped counting, two servers recorded the camera and
/// only one seat was counted (invariants 2 and 6).
#[test]
fn checkout_answer_outlived_an_unheard_revocation() {
    let mut core = Core::new();
    core.install_key(T0, key_b(), false).expect("install key B");
    let pool = PoolId::default_of(KB);
    for (n, id) in ["old", "new"].into_iter().enumerate() {
        let code = format!("code-{n}");
        core.create_code(T0, &pool, &code).expect("code");
        core.enrol(
            T0,
            EnrolRequest {
                code,
                name: id.into(),
                version: "1.0.0".into(),
                server_id: id.into(),
                credential: vec![],
                existing: None,
            },
        )
        .expect("enrol");
    }
    let granted = |a: &CheckoutAnswer| {
        matches!(
            a.outcomes[0].1,
            CameraOutcome::Granted { renewed: false, .. }
        )
    };
    let a = core
        .checkout(T0, "old", Some(KB), &[CheckoutItem::camera("cam-0")], false)
        .expect("checkout");
    assert!(granted(&a), "first checkout: {a:?}");
    // "old" goes silent; 30 s later "new" takes the camera: old's lease is revoking.
    let t1 = T0.plus(30 * SECOND);
    let a = core
        .checkout(t1, "new", Some(KB), &[CheckoutItem::camera("cam-0")], false)
        .expect("move");
    assert!(granted(&a), "move from a silent holder: {a:?}");
    let until = core
        .camera_views(t1)
        .into_iter()
        .find(|v| v.server_id == "old" && v.state == "revoking")
        .and_then(|v| v.revoking_until)
        .expect("the old holder's lease is counted as revoking");
    // "old" reconnects and checks out another camera before any heartbeat.
    let t2 = T0.plus(35 * SECOND);
    let a = core
        .checkout(t2, "old", Some(KB), &[CheckoutItem::camera("cam-1")], false)
        .expect("checkout after reconnecting");
    assert!(granted(&a), "checkout after reconnecting: {a:?}");
    // The answer says nothing of cam-0, so the client keeps recording it until its new
    // deadline; that deadline must not outlast the seat the daemon still counts for it.
    let deadline = t2.plus(a.valid_for_ms);
    assert!(
        deadline <= until,
        "the old holder, never told cam-0 moved, believes it is licensed until {} but its \
         revoking lease stops counting at {}",
        at(deadline),
        at(until)
    );
    assert!(
        deadline <= core.reservation_end("old").expect("old is enrolled"),
        "invariant 6: deadline after the reservation end"
    );
}

/// Regression: a checkout with a stale epoch was answered by the item's other faults
/// first (here `UnknownClass`), so the client was not told `Moved`, which is what makes
/// it stop recording. PRODUCT.md: a lower epoch than the daemon's gets `Moved`.
#[test]
fn stale_epoch_with_an_unknown_class_was_not_told_moved() {
    let mut core = Core::new();
    core.install_key(T0, key_b(), false).expect("install key B");
    let pool = PoolId::default_of(KB);
    for (n, id) in ["old", "new"].into_iter().enumerate() {
        let code = format!("code-{n}");
        core.create_code(T0, &pool, &code).expect("code");
        core.enrol(
            T0,
            EnrolRequest {
                code,
                name: id.into(),
                version: "1.0.0".into(),
                server_id: id.into(),
                credential: vec![],
                existing: None,
            },
        )
        .expect("enrol");
    }
    core.checkout(T0, "old", Some(KB), &[CheckoutItem::camera("cam-0")], false)
        .expect("checkout");
    let t1 = T0.plus(30 * SECOND);
    let a = core
        .checkout(t1, "new", Some(KB), &[CheckoutItem::camera("cam-0")], false)
        .expect("move");
    assert!(
        matches!(a.outcomes[0].1, CameraOutcome::Granted { epoch: 2, .. }),
        "move from a silent holder: {a:?}"
    );
    let stale = CheckoutItem {
        class: Some(ENCODER.into()),
        epoch: Some(1),
        ..CheckoutItem::camera("cam-0")
    };
    let a = core
        .checkout(t1, "old", Some(KB), &[stale], false)
        .expect("checkout with a stale epoch");
    assert_eq!(
        a.outcomes[0].1,
        CameraOutcome::Refused(Refusal::Moved { epoch: 2 }),
        "epoch 1 is stale (the camera is at 2 on another server)"
    );
}

/// Two servers of key B with one camera each, for the reissue regressions.
/// Key B without its overdraft: the regressions below are about shrinking alone.
fn key_b_plain() -> KeyDocument {
    let mut doc = key_b();
    doc.policy.overdraft_seats = 0;
    doc.policy.overdraft_hours = 0;
    doc
}

fn key_b_with_two_holders() -> Core {
    let mut core = Core::new();
    core.install_key(T0, key_b_plain(), false)
        .expect("install key B");
    let pool = PoolId::default_of(KB);
    for (n, id) in ["s1", "s2"].into_iter().enumerate() {
        let code = format!("code-{n}");
        core.create_code(T0, &pool, &code).expect("code");
        core.enrol(
            T0,
            EnrolRequest {
                code,
                name: id.into(),
                version: "1.0.0".into(),
                server_id: id.into(),
                credential: vec![],
                existing: None,
            },
        )
        .expect("enrol");
        let camera = format!("cam-{n}");
        let a = core
            .checkout(T0, id, Some(KB), &[CheckoutItem::camera(&camera)], false)
            .expect("checkout");
        assert!(
            matches!(a.outcomes[0].1, CameraOutcome::Granted { .. }),
            "{a:?}"
        );
    }
    core
}

/// Regression: a higher revision that lowers an entry's count added nothing and took
/// nothing back, so the pool went on serving the old count, more than the signed key
/// grants (invariants 1 and 8).
#[test]
fn reissue_with_fewer_seats_kept_serving_the_old_count() {
    let mut core = key_b_with_two_holders();
    let pool = PoolId::default_of(KB);
    let mut doc = key_b_plain();
    doc.revision = 2;
    doc.entries[0].count = 1;
    let t1 = T0.plus(SECOND);
    core.install_key(t1, doc, false)
        .expect("install revision 2");
    assert_eq!(
        core.allocation(&pool, "camera", t1),
        1,
        "revision 2 grants 1 camera"
    );
    let u = core.usage(&pool, "camera");
    assert!(
        u.held <= 1,
        "2 cameras still held with 1 seat: the newest must be revoked ({u:?})"
    );
    assert_eq!(
        u.counted(),
        2,
        "the revoked lease stays counted until acknowledged"
    );
    core.check_invariants(t1).expect("invariants");
    let a = core
        .checkout(t1, "s1", Some(KB), &[CheckoutItem::camera("cam-9")], false)
        .expect("checkout");
    assert!(
        matches!(
            a.outcomes[0].1,
            CameraOutcome::Refused(Refusal::OverAllocated { .. })
        ),
        "nothing is granted while over the allocation: {a:?}"
    );
}

/// Regression: an entry that had expired stayed in `expired_entries` when a higher
/// revision extended it, so it counted again but, at its new end, expired without
/// shrinking: more seats held than allocated, and none revoked (invariant 1).
#[test]
fn extended_entry_that_had_expired_never_shrank_again() {
    let mut core = Core::new();
    let short = |not_after: Timestamp| {
        let mut doc = key_b_plain();
        doc.entries.push(entry("camera", 2, not_after, "SO-SHORT"));
        doc
    };
    core.install_key(T0, short(T0.plus(60 * SECOND)), false)
        .expect("install revision 1");
    let pool = PoolId::default_of(KB);
    // The short entry expires unused; revision 2 extends it to T0+200s.
    let t1 = T0.plus(100 * SECOND);
    core.advance(t1);
    assert_eq!(core.allocation(&pool, "camera", t1), 3);
    let mut doc = short(T0.plus(200 * SECOND));
    doc.revision = 2;
    core.install_key(t1, doc, false)
        .expect("install revision 2");
    assert_eq!(core.allocation(&pool, "camera", t1), 5);
    // Five servers take all five seats and stay alive.
    for n in 0..5 {
        let (id, code) = (format!("s{n}"), format!("code-{n}"));
        core.create_code(t1, &pool, &code).expect("code");
        core.enrol(
            t1,
            EnrolRequest {
                code,
                name: id.clone(),
                version: "1.0.0".into(),
                server_id: id.clone(),
                credential: vec![],
                existing: None,
            },
        )
        .expect("enrol");
        core.checkout(t1, &id, Some(KB), &[CheckoutItem::camera(&cam(n))], false)
            .expect("checkout");
    }
    assert_eq!(core.usage(&pool, "camera").held, 5);
    // They heartbeat past the new end, so only the expiry can take seats back.
    for t in [130, 170] {
        let t = T0.plus(t * SECOND);
        for n in 0..5 {
            core.heartbeat(t, &format!("s{n}"), &[0; 32])
                .expect("heartbeat");
        }
        core.renewals_persisted(t);
    }
    let just_before = T0.plus(199 * SECOND);
    core.advance(just_before);
    assert_eq!(
        core.usage(&pool, "camera").held,
        5,
        "the premise: all five still held just before the extended entry's end"
    );
    let t2 = T0.plus(201 * SECOND);
    core.advance(t2);
    assert_eq!(core.allocation(&pool, "camera", t2), 3);
    let u = core.usage(&pool, "camera");
    assert!(
        u.held <= 3,
        "the extended entry expired again: 5 cameras held on 3 seats and none revoked ({u:?})"
    );
    core.check_invariants(t2).expect("invariants");
}
