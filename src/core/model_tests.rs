//! Model-based test of the allocation core: random operations run against the core and
//! against a deliberately naive reference model (a list of leases and seat arithmetic
//! recomputed from it each time, no counters), and after every step the two must agree
//! on every answer, every camera's holder and epoch, every `revoking` lease, every
//! server's pending revocations and reservation, and every feature's seats in use.
//!
//! The subset the model expresses: one key (5 `camera`, 2 `lpr`, a revocation period),
//! one pool, no shrink, no live connections (so a move from another holder is a move from
//! a silent one, with or without `after_wait`), renewals persisted after every command.
//! Operations: enrol, checkout (with fresh, current, stale and future epochs, and the
//! `lpr` module added or dropped), release, move, heartbeat (right or wrong digest),
//! acknowledge, free --force, and time passing with silent servers expiring.

use super::test_support::T0;
use super::{
    digest, CameraOutcome, CheckoutAnswer, CheckoutItem, Core, EnrolRequest, Enrolment, Features,
    FreeOutcome, HeartbeatAnswer, PoolId, Refusal, Revocation, RevocationReason, Timestamp,
};
use crate::key::{Entry, KeyDocument, KeyKind, Policy};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

const KEY: &str = "MK";
const CAMERA_SEATS: u64 = 5;
const LPR_SEATS: u64 = 2;
const HEARTBEAT_MS: u64 = 10_000;
const GRACE_MS: u64 = 60_000;
const REVOCATION_PERIOD_MS: u64 = 30_000;
const SERVERS: usize = 5;
const CAMERAS: usize = 7;

fn pool() -> PoolId {
    PoolId::default_of(KEY)
}

fn key() -> KeyDocument {
    let entry = |feature: &str, count: u64| Entry {
        feature: feature.into(),
        count: count as u32,
        not_after: T0.plus(365 * 86_400_000),
        order: format!("SO-{feature}"),
    };
    KeyDocument {
        key_id: KEY.into(),
        revision: 1,
        kind: KeyKind::Network,
        customer: "Model tests".into(),
        issued_at: T0,
        demo: false,
        entries: vec![entry("camera", CAMERA_SEATS), entry("lpr", LPR_SEATS)],
        policy: Policy {
            heartbeat_interval_secs: HEARTBEAT_MS / 1000,
            offline_grace_secs: GRACE_MS / 1000,
            revocation_period_secs: REVOCATION_PERIOD_MS / 1000,
            ..Policy::default()
        },
        host: None,
    }
}

fn server_id(n: usize) -> String {
    format!("m-{n}")
}

fn server_name(id: &str) -> String {
    format!("Server {id}")
}

fn cam(n: usize) -> String {
    format!("cam-{n}")
}

// ---------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ModelLease {
    camera: String,
    server: String,
    epoch: u64,
    features: Features,
    /// None: held. Some(t): revoked, still counted until t.
    revoking_until: Option<Timestamp>,
}

#[derive(Clone, Debug, Default)]
struct ModelServer {
    /// Its last renewal; the harness persists after every command, so this is durable.
    renewed: Timestamp,
    /// (camera, epoch) -> (reason, issued at), until acknowledged.
    revocations: BTreeMap<(String, u64), (RevocationReason, Timestamp)>,
}

/// Everything as a plain list of leases; seats are summed from it on every question.
#[derive(Clone, Debug, Default)]
struct Model {
    now: Timestamp,
    leases: Vec<ModelLease>,
    /// Epoch per camera: +1 on every grant to a new holder; never reset.
    epochs: BTreeMap<String, u64>,
    first_granted: BTreeMap<String, Timestamp>,
    servers: BTreeMap<String, ModelServer>,
    /// What happened, for the tally.
    moves: u64,
    expired: u64,
    forced: u64,
    refused: u64,
}

impl Model {
    fn seats(feature: &str) -> u64 {
        match feature {
            "camera" => CAMERA_SEATS,
            "lpr" => LPR_SEATS,
            _ => 0,
        }
    }

    fn in_use(&self, feature: &str) -> u64 {
        self.leases
            .iter()
            .map(|l| u64::from(l.features.get(feature).copied().unwrap_or(0)))
            .sum()
    }

    fn held(&self, camera: &str) -> Option<usize> {
        self.leases
            .iter()
            .position(|l| l.camera == camera && l.revoking_until.is_none())
    }

    fn reservation_end(&self, server: &str) -> Timestamp {
        self.servers[server].renewed.plus(GRACE_MS + HEARTBEAT_MS)
    }

    fn fits(&self, features: &Features) -> Result<(), Refusal> {
        for (feature, n) in features {
            let (in_use, total) = (self.in_use(feature), Self::seats(feature));
            if in_use > total {
                return Err(Refusal::OverAllocated {
                    feature: feature.clone(),
                    in_use,
                    total,
                });
            }
            if in_use + u64::from(*n) > total {
                return Err(Refusal::NoSeats {
                    feature: feature.clone(),
                    in_use,
                    total,
                });
            }
        }
        Ok(())
    }

    /// Time passes: revoking leases past their end stop counting (and their revocation is
    /// dropped: the holder's own deadline passed too); silent servers' leases end.
    fn expire(&mut self, now: Timestamp) {
        self.now = now;
        let mut ended = Vec::new();
        let ends: BTreeMap<String, Timestamp> = self
            .servers
            .keys()
            .map(|s| (s.clone(), self.reservation_end(s)))
            .collect();
        let before = self.leases.len();
        self.leases.retain(|l| match l.revoking_until {
            Some(until) if until <= now => {
                ended.push((l.server.clone(), l.camera.clone(), l.epoch));
                false
            }
            Some(_) => true,
            None => ends[&l.server] > now,
        });
        self.expired += (before - self.leases.len()) as u64;
        for (server, camera, epoch) in ended {
            if let Some(s) = self.servers.get_mut(&server) {
                s.revocations.remove(&(camera, epoch));
            }
        }
    }

    fn enrol(&mut self, server: &str) {
        self.servers
            .entry(server.to_string())
            .or_insert_with(|| ModelServer {
                renewed: self.now,
                revocations: BTreeMap::new(),
            });
    }

    fn renew(&mut self, server: &str) {
        if let Some(s) = self.servers.get_mut(server) {
            s.renewed = self.now;
        }
    }

    fn valid_for(&self, server: &str) -> u64 {
        let mut end = self.servers[server].renewed.plus(GRACE_MS);
        // A checkout answer carries no revocations: it never outlasts a revoking lease.
        for l in &self.leases {
            if let (true, Some(until)) = (l.server == server, l.revoking_until) {
                end = end.min(until);
            }
        }
        end.since(self.now)
    }

    fn checkout(&mut self, server: &str, items: &[CheckoutItem]) -> CheckoutAnswer {
        let mut outcomes = Vec::new();
        let mut durable = false;
        for item in items {
            let outcome = self.checkout_one(server, item);
            self.refused += u64::from(matches!(outcome, CameraOutcome::Refused(_)));
            durable |= matches!(outcome, CameraOutcome::Granted { renewed: false, .. });
            outcomes.push((item.camera.clone(), outcome));
        }
        if durable {
            self.renew(server);
        }
        let answer = CheckoutAnswer {
            outcomes,
            valid_for_ms: self.valid_for(server),
        };
        self.renew(server);
        answer
    }

    fn checkout_one(&mut self, server: &str, item: &CheckoutItem) -> CameraOutcome {
        let camera = &item.camera;
        let mut features: Features = [("camera".to_string(), 1)].into_iter().collect();
        for m in &item.modules {
            *features.entry(m.clone()).or_insert(0) += 1;
        }
        let epoch = self.epochs.get(camera).copied().unwrap_or(0);
        if item.epoch.is_some_and(|e| e < epoch) {
            return CameraOutcome::Refused(Refusal::Moved { epoch });
        }
        match self.held(camera) {
            Some(i) if self.leases[i].server == server => {
                let lease = self.leases[i].clone();
                if lease.features == features {
                    return CameraOutcome::Granted {
                        epoch: lease.epoch,
                        features,
                        legacy: false,
                        renewed: true,
                    };
                }
                // Other features for the same camera: all or nothing, same epoch.
                self.leases.remove(i);
                if let Err(r) = self.fits(&features) {
                    self.leases.push(lease);
                    return CameraOutcome::Refused(r);
                }
                self.leases.push(ModelLease {
                    features: features.clone(),
                    ..lease.clone()
                });
                CameraOutcome::Granted {
                    epoch: lease.epoch,
                    features,
                    legacy: false,
                    renewed: false,
                }
            }
            None => match self.fits(&features) {
                Ok(()) => self.grant(server, camera, features),
                Err(r) => CameraOutcome::Refused(r),
            },
            Some(i) => {
                // A silent holder: its lease stays counted as revoking, so a seat must be
                // spare for both.
                if self.fits(&features).is_err() {
                    return CameraOutcome::Refused(Refusal::HeldBySilentServer {
                        holder: format!(
                            "{} ({})",
                            server_name(&self.leases[i].server),
                            self.leases[i].server
                        ),
                    });
                }
                self.moves += 1;
                let old = self.leases[i].clone();
                let until = self.reservation_end(&old.server);
                if until > self.now {
                    self.leases[i].revoking_until = Some(until);
                    if let Some(s) = self.servers.get_mut(&old.server) {
                        s.revocations.insert(
                            (camera.clone(), old.epoch),
                            (RevocationReason::Moved, self.now),
                        );
                    }
                } else {
                    self.leases.remove(i);
                }
                self.grant(server, camera, features)
            }
        }
    }

    fn grant(&mut self, server: &str, camera: &str, features: Features) -> CameraOutcome {
        let epoch = self.epochs.get(camera).copied().unwrap_or(0) + 1;
        self.epochs.insert(camera.to_string(), epoch);
        self.first_granted
            .entry(camera.to_string())
            .or_insert(self.now);
        self.leases.push(ModelLease {
            camera: camera.to_string(),
            server: server.to_string(),
            epoch,
            features: features.clone(),
            revoking_until: None,
        });
        CameraOutcome::Granted {
            epoch,
            features,
            legacy: false,
            renewed: false,
        }
    }

    fn release(&mut self, server: &str, cameras: &[String]) -> Vec<(String, Result<(), Refusal>)> {
        let out = cameras
            .iter()
            .map(|c| match self.held(c) {
                Some(i) if self.leases[i].server == server => {
                    self.leases.remove(i);
                    (c.clone(), Ok(()))
                }
                _ => (c.clone(), Err(Refusal::NotHeld)),
            })
            .collect();
        self.renew(server);
        out
    }

    fn holdings_digest(&self, server: &str) -> [u8; 32] {
        digest::holdings(
            self.leases
                .iter()
                .filter(|l| l.server == server && l.revoking_until.is_none())
                .map(|l| (l.camera.as_str(), l.epoch)),
        )
    }

    fn revocations(&self, server: &str) -> Vec<Revocation> {
        self.servers[server]
            .revocations
            .iter()
            .map(|((camera, epoch), (reason, issued_at))| Revocation {
                camera: camera.clone(),
                epoch: *epoch,
                reason: *reason,
                issued_at: *issued_at,
                provisional: false,
            })
            .collect()
    }

    fn heartbeat(&mut self, server: &str, client_digest: &[u8; 32]) -> HeartbeatAnswer {
        let answer = HeartbeatAnswer {
            valid_for_ms: self.servers[server].renewed.plus(GRACE_MS).since(self.now),
            heartbeat_interval_ms: HEARTBEAT_MS,
            sync_needed: self.holdings_digest(server) != *client_digest,
            revocations: self.revocations(server),
            // The model's key ends a year out: nothing is warned about.
            expiring: Vec::new(),
        };
        self.renew(server);
        answer
    }

    fn acknowledge(&mut self, server: &str, camera: &str, epoch: u64) -> bool {
        if let Some(s) = self.servers.get_mut(server) {
            s.revocations.remove(&(camera.to_string(), epoch));
        }
        let before = self.leases.len();
        self.leases
            .retain(|l| !(l.server == server && l.camera == camera && l.epoch == epoch));
        self.renew(server);
        self.leases.len() < before
    }

    fn free_force(&mut self, camera: &str) -> Result<FreeOutcome, Refusal> {
        if !self.epochs.contains_key(camera) {
            return Err(Refusal::UnknownCamera {
                camera: format!("{KEY}/{camera}"),
            });
        }
        let i = self.held(camera).ok_or(Refusal::NotHeld)?;
        let until = self.first_granted[camera].plus(REVOCATION_PERIOD_MS);
        if self.now < until {
            return Err(Refusal::NewlyAdded { until });
        }
        let lease = self.leases.remove(i);
        self.forced += 1;
        if let Some(s) = self.servers.get_mut(&lease.server) {
            s.revocations.insert(
                (camera.to_string(), lease.epoch),
                (RevocationReason::Freed, self.now),
            );
        }
        Ok(FreeOutcome {
            key: KEY.into(),
            camera: camera.to_string(),
            holder: lease.server,
            epoch: lease.epoch,
            revoking: false,
            forced: true,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum EpochChoice {
    None,
    /// The camera's current epoch.
    Current,
    /// One below the current epoch.
    Stale,
    /// One above (the daemon treats it as not stale).
    Future,
}

#[derive(Clone, Debug)]
enum Op {
    Enrol {
        server: usize,
    },
    Checkout {
        server: usize,
        items: Vec<(usize, bool, EpochChoice)>,
    },
    Release {
        server: usize,
        cameras: Vec<usize>,
    },
    /// Checks out a camera another server holds (picked at run time).
    Move {
        server: usize,
        pick: usize,
        after_wait: bool,
    },
    Heartbeat {
        server: usize,
        wrong_digest: bool,
    },
    /// Acknowledges one of its pending revocations, or some (camera, epoch) it was not
    /// asked about.
    Ack {
        server: usize,
        pick: usize,
        stray: Option<(usize, u64)>,
    },
    FreeForce {
        pick: usize,
        camera: Option<usize>,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let server = || 0..SERVERS;
    let epoch = prop_oneof![
        6 => Just(EpochChoice::None),
        3 => Just(EpochChoice::Current),
        2 => Just(EpochChoice::Stale),
        1 => Just(EpochChoice::Future),
    ];
    prop_oneof![
        3 => server().prop_map(|server| Op::Enrol { server }),
        25 => (
            server(),
            prop::collection::vec((0..CAMERAS, prop::bool::weighted(0.3), epoch), 1..4)
        )
            .prop_map(|(server, items)| Op::Checkout { server, items }),
        8 => (server(), prop::collection::vec(0..CAMERAS, 1..3))
            .prop_map(|(server, cameras)| Op::Release { server, cameras }),
        10 => (server(), any::<usize>(), any::<bool>())
            .prop_map(|(server, pick, after_wait)| Op::Move { server, pick, after_wait }),
        12 => (server(), prop::bool::weighted(0.2))
            .prop_map(|(server, wrong_digest)| Op::Heartbeat { server, wrong_digest }),
        8 => (
            server(),
            any::<usize>(),
            prop::option::weighted(0.2, (0..CAMERAS, 0..6u64))
        )
            .prop_map(|(server, pick, stray)| Op::Ack { server, pick, stray }),
        6 => (any::<usize>(), prop::option::weighted(0.3, 0..CAMERAS))
            .prop_map(|(pick, camera)| Op::FreeForce { pick, camera }),
        15 => prop_oneof![
            6 => 0..3_000u64,
            3 => 3_000..20_000u64,
            1 => 30_000..120_000u64,
        ]
        .prop_map(|ms| Op::Advance { ms }),
    ]
}

// ---------------------------------------------------------------------------------------
// The harness: one operation to both, then compare
// ---------------------------------------------------------------------------------------

struct Harness {
    core: Core,
    model: Model,
    now: Timestamp,
    codes: u64,
}

fn agree<T: PartialEq + std::fmt::Debug>(what: &str, daemon: &T, model: &T) -> Result<(), String> {
    if daemon == model {
        Ok(())
    } else {
        Err(format!(
            "{what}: the daemon and the model diverge\n  daemon: {daemon:?}\n  model:  {model:?}"
        ))
    }
}

impl Harness {
    fn new() -> Result<Self, String> {
        let mut core = Core::new();
        core.install_key(T0, key(), false)
            .map_err(|e| format!("installing the key: {e}"))?;
        core.drain_events();
        Ok(Harness {
            core,
            model: Model {
                now: T0,
                ..Model::default()
            },
            now: T0,
            codes: 0,
        })
    }

    /// What a server's command leaves behind: the daemon persists renewals at once.
    fn persisted(&mut self) {
        self.core.renewals_persisted(self.now);
        self.core.drain_events();
    }

    fn enrolled(&self, n: usize) -> bool {
        self.model.servers.contains_key(&server_id(n))
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        self.model.expire(self.now);
        match op {
            Op::Enrol { server } => {
                let id = server_id(*server);
                self.codes += 1;
                let code = format!("code-{}", self.codes);
                self.core
                    .create_code(self.now, &pool(), &code)
                    .map_err(|e| format!("create_code: {e}"))?;
                let existing = self.enrolled(*server).then(|| id.clone());
                let r = self.core.enrol(
                    self.now,
                    EnrolRequest {
                        code,
                        name: server_name(&id),
                        version: "1.0.0".into(),
                        server_id: id.clone(),
                        credential: vec![],
                        existing,
                    },
                );
                self.model.enrol(&id);
                let want = Enrolment {
                    server_id: id.clone(),
                    pool: pool(),
                    key: KEY.into(),
                    demo: false,
                    heartbeat_interval_ms: HEARTBEAT_MS,
                    offline_grace_ms: GRACE_MS,
                };
                agree(&format!("enrol {id}"), &r, &Ok(want))?;
            }
            Op::Checkout { server, items } => {
                if !self.enrolled(*server) {
                    return self.not_enrolled(*server);
                }
                let id = server_id(*server);
                let mut seen = BTreeSet::new();
                let batch: Vec<CheckoutItem> = items
                    .iter()
                    .filter(|(c, _, _)| seen.insert(*c))
                    .map(|(c, lpr, choice)| {
                        let camera = cam(*c);
                        let current = self.model.epochs.get(&camera).copied().unwrap_or(0);
                        CheckoutItem {
                            epoch: match choice {
                                EpochChoice::None => None,
                                EpochChoice::Current => Some(current),
                                EpochChoice::Stale => Some(current.saturating_sub(1)),
                                EpochChoice::Future => Some(current + 1),
                            },
                            modules: if *lpr { vec!["lpr".into()] } else { vec![] },
                            ..CheckoutItem::camera(&camera)
                        }
                    })
                    .collect();
                self.checkout(&id, &batch, false)?;
            }
            Op::Release { server, cameras } => {
                if !self.enrolled(*server) {
                    return self.not_enrolled(*server);
                }
                let id = server_id(*server);
                let mut cameras: Vec<String> = cameras.iter().map(|c| cam(*c)).collect();
                cameras.sort();
                cameras.dedup();
                let r = self.core.release(self.now, &id, &cameras);
                self.persisted();
                let want = self.model.release(&id, &cameras);
                agree(&format!("release {cameras:?} by {id}"), &r, &Ok(want))?;
            }
            Op::Move {
                server,
                pick,
                after_wait,
            } => {
                if !self.enrolled(*server) {
                    return self.not_enrolled(*server);
                }
                let id = server_id(*server);
                let others: Vec<&ModelLease> = self
                    .model
                    .leases
                    .iter()
                    .filter(|l| l.revoking_until.is_none() && l.server != id)
                    .collect();
                if others.is_empty() {
                    return Ok(());
                }
                let camera = others[pick % others.len()].camera.clone();
                self.checkout(&id, &[CheckoutItem::camera(&camera)], *after_wait)?;
            }
            Op::Heartbeat {
                server,
                wrong_digest,
            } => {
                if !self.enrolled(*server) {
                    return self.not_enrolled(*server);
                }
                let id = server_id(*server);
                let digest = if *wrong_digest {
                    [0xa5; 32]
                } else {
                    self.model.holdings_digest(&id)
                };
                let r = self.core.heartbeat(self.now, &id, &digest);
                self.persisted();
                let want = self.model.heartbeat(&id, &digest);
                agree(&format!("heartbeat by {id}"), &r, &Ok(want.clone()))?;
                if want.sync_needed != *wrong_digest {
                    return Err(format!(
                        "heartbeat by {id}: sync_needed is {} with {} digest",
                        want.sync_needed,
                        if *wrong_digest {
                            "a wrong"
                        } else {
                            "the right"
                        }
                    ));
                }
            }
            Op::Ack {
                server,
                pick,
                stray,
            } => {
                if !self.enrolled(*server) {
                    return self.not_enrolled(*server);
                }
                let id = server_id(*server);
                let pending: Vec<(String, u64)> = self.model.servers[&id]
                    .revocations
                    .keys()
                    .cloned()
                    .collect();
                let (camera, epoch) = match (stray, pending.is_empty()) {
                    (Some((c, e)), _) => (cam(*c), *e),
                    (None, false) => pending[pick % pending.len()].clone(),
                    (None, true) => return Ok(()),
                };
                let r = self.core.acknowledge(self.now, &id, &camera, epoch);
                self.persisted();
                let want = self.model.acknowledge(&id, &camera, epoch);
                agree(
                    &format!("{id} acknowledges {camera}@{epoch}"),
                    &r,
                    &Ok(want),
                )?;
            }
            Op::FreeForce { pick, camera } => {
                let camera = match camera {
                    Some(c) => cam(*c),
                    None => {
                        let held: Vec<&ModelLease> = self
                            .model
                            .leases
                            .iter()
                            .filter(|l| l.revoking_until.is_none())
                            .collect();
                        if held.is_empty() {
                            return Ok(());
                        }
                        held[pick % held.len()].camera.clone()
                    }
                };
                let r = self.core.free(self.now, Some(KEY), &camera, true);
                self.core.drain_events();
                let want = self.model.free_force(&camera);
                agree(&format!("free {KEY}/{camera} --force"), &r, &want)?;
            }
            Op::Advance { ms } => {
                self.now = self.now.plus(*ms);
                self.model.expire(self.now);
                self.core.advance(self.now);
                self.core.drain_events();
            }
        }
        Ok(())
    }

    fn checkout(
        &mut self,
        id: &str,
        batch: &[CheckoutItem],
        after_wait: bool,
    ) -> Result<(), String> {
        let r = self
            .core
            .checkout(self.now, id, Some(KEY), batch, after_wait);
        self.persisted();
        let want = self.model.checkout(id, batch);
        agree(
            &format!(
                "checkout by {id} of {:?} (after_wait {after_wait})",
                batch
                    .iter()
                    .map(|i| format!(
                        "{}@{:?}{}",
                        i.camera,
                        i.epoch,
                        if i.modules.is_empty() { "" } else { "+lpr" }
                    ))
                    .collect::<Vec<_>>()
            ),
            &r,
            &Ok(want),
        )
    }

    /// Before its enrolment a server is refused everywhere, and nothing changes.
    fn not_enrolled(&mut self, n: usize) -> Result<(), String> {
        let id = server_id(n);
        let r = self.core.heartbeat(self.now, &id, &[0; 32]);
        agree(
            &format!("heartbeat by {id}, not enrolled"),
            &r.map(|_| ()),
            &Err(Refusal::NotEnrolled),
        )
    }

    /// After every step: the whole visible state must match the model's.
    fn compare(&self) -> Result<(), String> {
        let now = self.now;
        self.core
            .check_invariants(now)
            .map_err(|e| format!("check_invariants: {e}"))?;
        let views = self.core.camera_views(now);
        for n in 0..CAMERAS {
            let camera = cam(n);
            let daemon_held: Option<(String, u64, Features)> = views
                .iter()
                .find(|v| v.camera_id == camera && v.state == "held")
                .map(|v| (v.server_id.clone(), v.epoch, v.features.clone()));
            let model_held = self
                .model
                .held(&camera)
                .map(|i| &self.model.leases[i])
                .map(|l| (l.server.clone(), l.epoch, l.features.clone()));
            agree(
                &format!("{camera}: holder, epoch and features"),
                &daemon_held,
                &model_held,
            )?;
            let mut daemon_revoking: Vec<(String, u64, Option<Timestamp>)> = views
                .iter()
                .filter(|v| v.camera_id == camera && v.state == "revoking")
                .map(|v| (v.server_id.clone(), v.epoch, v.revoking_until))
                .collect();
            let mut model_revoking: Vec<(String, u64, Option<Timestamp>)> = self
                .model
                .leases
                .iter()
                .filter(|l| l.camera == camera && l.revoking_until.is_some())
                .map(|l| (l.server.clone(), l.epoch, l.revoking_until))
                .collect();
            daemon_revoking.sort();
            model_revoking.sort();
            agree(
                &format!("{camera}: revoking leases (server, epoch, until)"),
                &daemon_revoking,
                &model_revoking,
            )?;
        }
        let seats = self
            .core
            .pool_views(now)
            .into_iter()
            .find(|p| p.pool == pool().to_string())
            .map(|p| p.seats)
            .unwrap_or_default();
        for feature in ["camera", "lpr"] {
            let u = self.core.usage(&pool(), feature);
            let model_revoking: u64 = self
                .model
                .leases
                .iter()
                .filter(|l| l.revoking_until.is_some())
                .map(|l| u64::from(l.features.get(feature).copied().unwrap_or(0)))
                .sum();
            let model_in_use = self.model.in_use(feature);
            agree(
                &format!("{feature}: seats (held, revoking)"),
                &(u.held, u.revoking),
                &(model_in_use - model_revoking, model_revoking),
            )?;
            let listed = seats
                .iter()
                .find(|s| s.feature == feature)
                .map(|s| (s.in_use, s.total));
            agree(
                &format!("{feature}: pool listing (in_use, total)"),
                &listed,
                &Some((model_in_use, Model::seats(feature))),
            )?;
            if model_in_use > Model::seats(feature) {
                return Err(format!(
                    "invariant 1: the model itself counts {model_in_use} {feature} seats of {}",
                    Model::seats(feature)
                ));
            }
        }
        for id in self.model.servers.keys() {
            agree(
                &format!("{id}: reservation end"),
                &self.core.reservation_end(id),
                &Some(self.model.reservation_end(id)),
            )?;
            agree(
                &format!("{id}: pending revocations"),
                &self.core.server_revocations(id),
                &self.model.revocations(id),
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Tally {
    steps: AtomicU64,
    grants: AtomicU64,
    moves: AtomicU64,
    refusals: AtomicU64,
    expiries: AtomicU64,
    forced: AtomicU64,
}

impl Tally {
    fn add(&self, model: &Model) {
        let add = |c: &AtomicU64, n: u64| c.fetch_add(n, Ordering::Relaxed);
        add(&self.grants, model.epochs.values().sum());
        add(&self.moves, model.moves);
        add(&self.refusals, model.refused);
        add(&self.expiries, model.expired);
        add(&self.forced, model.forced);
    }
}

fn run(ops: &[Op], tally: &Tally) -> Result<(), String> {
    let mut h = Harness::new()?;
    let mut trail: VecDeque<String> = VecDeque::new();
    for (n, op) in ops.iter().enumerate() {
        if trail.len() >= 40 {
            trail.pop_front();
        }
        trail.push_back(format!("T0+{}ms step {n}: {op:?}", h.now.since(T0)));
        let result = h.apply(op).and_then(|()| h.compare());
        if let Err(e) = result {
            return Err(format!(
                "step {n} ({op:?}) at T0+{}ms: {e}\n--- recent steps ---\n{}",
                h.now.since(T0),
                trail.iter().cloned().collect::<Vec<_>>().join("\n")
            ));
        }
        tally.steps.fetch_add(1, Ordering::Relaxed);
    }
    tally.add(&h.model);
    Ok(())
}

#[test]
fn core_agrees_with_a_naive_model() {
    let from_env: Option<u32> = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    let config = Config {
        cases: from_env.unwrap_or(512),
        failure_persistence: None,
        ..Config::default()
    };
    let tally = Tally::default();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 300..=350), |ops| {
        run(&ops, &tally).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("core::model_tests: {tally:?}");
    if from_env.is_none() {
        for (name, n) in [
            ("steps", &tally.steps),
            ("grants", &tally.grants),
            ("refusals", &tally.refusals),
            ("moves from silent holders", &tally.moves),
            (
                "silent servers' or revoking leases expiring",
                &tally.expiries,
            ),
            ("forced frees", &tally.forced),
        ] {
            assert!(
                n.load(Ordering::Relaxed) > 0,
                "the model test never exercised {name}: {tally:?}"
            );
        }
    }
}
