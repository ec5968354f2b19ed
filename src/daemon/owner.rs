//! The one task that owns the allocation core. Connection tasks send it jobs over a
//! bounded channel; it drains every job waiting, applies them in order, writes the batch
//! to the store's journal once, syncs it, and answers them all (group commit; see
//! `apply`). Nothing is answered before the store holds it and everything before it; if
//! a commit fails, the batch fails and the core is rebuilt from what is durable. It also
//! logs the core's events, audits them, and pushes revocations to the holders' live
//! connections.

use crate::clock::Clock;
use crate::core::{Command, Core, Event, Outcome, Refusal, ReleaseReason, Timestamp};
use crate::discovery::{Offer, OfferedKey};
use crate::proto::{AuditHead, Push};
use crate::store::{audit, AuditEntry, BatchRecord, Store};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

/// Jobs taken per batch at most, so one flood cannot starve the timers.
const MAX_BATCH: usize = 1024;
const CHANNEL_DEPTH: usize = 4096;
/// In-memory renewals are made durable at least this often (well inside any key's
/// heartbeat interval, as the Restart rule asks).
const RENEWAL_PERSIST_MS: u64 = 1_000;
/// A due snapshot waits until durable work has paused this long (or it is overdue).
const SNAPSHOT_QUIET_MS: u64 = 250;
/// Refusals are audited as one line per server and reason per this interval.
const REFUSAL_AUDIT_MS: u64 = 60_000;
/// Seats in use are sampled this often for the usage-over-time chart.
pub const USAGE_SAMPLE_MS: u64 = 5 * 60_000;

type Reply = Box<dyn FnOnce(Option<String>) + Send>;
type Job = Box<dyn FnOnce(&mut Owner) -> Reply + Send>;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CallError {
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("the change was not saved, so it was not made: {0}")]
    NotPersisted(String),
}

/// Kept for callers that only care that the daemon is going away.
pub type ShuttingDown = CallError;

/// A live connection of an enrolled server.
#[derive(Debug)]
pub struct Session {
    pub conn: u64,
    pub push: mpsc::Sender<Push>,
    /// Cancelled when the server is forgotten: its connections close.
    pub close: CancellationToken,
}

/// What the task that owns the core holds.
pub struct Owner {
    core: Core,
    /// The instant of the batch being applied: every job of a batch sees the same one.
    pub now: Timestamp,
    sessions: HashMap<String, Vec<Session>>,
    store: Store,
    /// Commands applied in this batch that go into the log.
    pending: Vec<Command>,
    durable: bool,
    audit_head: AuditHead,
    refusals: BTreeMap<(String, String), u64>,
    refusals_since: Timestamp,
    renewals_persisted_at: Timestamp,
    /// The store failed and changes are refused until a commit succeeds again.
    pub degraded: Option<String>,
    /// The core may hold changes that were never committed: rebuild it before trusting it.
    needs_reload: bool,
    last_recovery_attempt: Timestamp,
    /// The OFFER discovery answers with, refreshed as seats change.
    offer: Option<watch::Sender<Offer>>,
    /// Sessions opened in the batch being applied: dropped again if its commit fails,
    /// since their connections were told the login failed.
    opened_in_batch: Vec<(String, u64)>,
    /// Watches the wall clock against its high-water mark (set once at start).
    guard: Option<super::clockguard::ClockGuard>,
    /// The daemon's time, which a vendor's reset token moves back to the wall clock.
    daemon_clock: Option<Arc<crate::clock::DaemonClock>>,
    metrics: Arc<super::metrics::Metrics>,
    /// When the job being run was handed to this task.
    job_submitted: std::time::Instant,
    /// When each heartbeat of this batch was handed over: observed once answered.
    heartbeats_in_batch: Vec<std::time::Instant>,
    next_usage_sample: Timestamp,
    /// The last batch that logged durable commands (`snapshot_wanted`).
    last_durable_work: Timestamp,
    slow_commits: SlowCommits,
}

/// A commit that takes longer than this is logged: the event loop answered nothing while
/// it synced.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(500);
/// Slow commits are logged at most once per this interval, with how many there were.
const SLOW_COMMIT_LOG_MS: u64 = 60_000;

/// Counts commits slower than `SLOW_COMMIT`, so a disk that is slow all the time makes
/// one warning a minute rather than one per batch.
#[derive(Debug, Default)]
struct SlowCommits {
    /// Slow commits since the last warning, and the slowest of them.
    count: u64,
    slowest: std::time::Duration,
    warned_at: Option<Timestamp>,
}

impl SlowCommits {
    /// A commit took `took`; at `now`, a warning is due for the slow ones counted (how
    /// many, and the slowest).
    fn observe(
        &mut self,
        took: std::time::Duration,
        now: Timestamp,
    ) -> Option<(u64, std::time::Duration)> {
        if took >= SLOW_COMMIT {
            self.count += 1;
            self.slowest = self.slowest.max(took);
        }
        let due = self.count > 0
            && self
                .warned_at
                .is_none_or(|at| now.since(at) >= SLOW_COMMIT_LOG_MS);
        if !due {
            return None;
        }
        self.warned_at = Some(now);
        let out = (self.count, self.slowest);
        (self.count, self.slowest) = (0, std::time::Duration::ZERO);
        Some(out)
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

fn server_of(c: &Command) -> Option<&str> {
    match c {
        Command::Checkout { server, .. }
        | Command::Release { server, .. }
        | Command::Heartbeat { server, .. }
        | Command::Sync { server, .. }
        | Command::Acknowledge { server, .. } => Some(server),
        _ => None,
    }
}

/// The refusals in an outcome: the whole command's, or each refused camera's.
fn refusals(out: &Outcome) -> impl Iterator<Item = &Refusal> {
    let cameras = match out {
        Outcome::Checkout(a) => a.outcomes.as_slice(),
        _ => &[],
    };
    out.refusal()
        .into_iter()
        .chain(cameras.iter().filter_map(|(_, o)| match o {
            crate::core::CameraOutcome::Refused(r) => Some(r),
            _ => None,
        }))
}

fn refusal_code(r: &Refusal) -> String {
    let s = format!("{r:?}");
    s.split([' ', '{', '(']).next().unwrap_or("").to_string()
}

impl Owner {
    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn audit_head(&self) -> AuditHead {
        self.audit_head
    }

    /// Applies a command to the core and notes it for the batch's log record. While the
    /// store fails, changes are refused unapplied; heartbeats and sessions go on in memory.
    pub fn execute(&mut self, command: Command) -> Outcome {
        self.execute_then(command, |_, _| ()).0
    }

    /// Executes `command`, and reads it with its outcome through `then` before it is
    /// kept in the log (a refused one never gets there): what a caller needs of it
    /// later is copied then, not before, in case it is not needed.
    pub fn execute_then<R>(
        &mut self,
        command: Command,
        then: impl FnOnce(&Command, &Outcome) -> R,
    ) -> (Outcome, R) {
        if let Some(reason) = &self.degraded {
            if command.must_be_durable() {
                let out = Outcome::Refused(Refusal::Unavailable {
                    reason: format!("the state store cannot be written ({reason})"),
                });
                let r = then(&command, &out);
                return (out, r);
            }
        }
        if matches!(command, Command::Heartbeat { .. }) {
            self.heartbeats_in_batch.push(self.job_submitted);
        }
        let logged = command.is_logged() && self.degraded.is_none();
        let durable = command.must_be_durable();
        let events_before = self.core.pending_events();
        // Applied where it is kept (in the log, if it goes there), not from a copy.
        let unlogged;
        let command = if logged {
            let at = self.pending.len();
            self.pending.push(command);
            &self.pending[at]
        } else {
            unlogged = command;
            &unlogged
        };
        let out = self.core.apply_ref(self.now, command);
        let server = match refusals(&out).next() {
            Some(_) => server_of(command).map(str::to_string),
            None => None,
        };
        let then = then(command, &out);
        if logged && matches!(out, Outcome::Refused(_)) {
            // A refused command changes nothing but the passage of time: log that alone
            // (if it did anything), so refusals cannot fill the disk or force syncs.
            self.pending.pop();
            if self.core.pending_events() > events_before {
                self.pending.push(Command::Advance);
            }
        } else {
            self.durable |= durable;
        }
        for r in refusals(&out) {
            let code = refusal_code(r);
            self.metrics.refused(&code);
            if let Some(server) = &server {
                *self.refusals.entry((server.clone(), code)).or_insert(0) += 1;
            }
        }
        (out, then)
    }

    /// Starts watching the wall clock against the high-water mark; `clock` is the one
    /// this task reads, which a reset token moves.
    pub(crate) fn watch_clock(
        &mut self,
        guard: super::clockguard::ClockGuard,
        clock: Arc<crate::clock::DaemonClock>,
    ) {
        self.guard = Some(guard);
        self.daemon_clock = Some(clock);
    }

    pub(crate) fn clock_guard(&self) -> Option<&super::clockguard::ClockGuard> {
        self.guard.as_ref()
    }

    /// What the wall clock says now.
    pub fn wall(&self) -> Timestamp {
        self.daemon_clock
            .as_ref()
            .map(|c| c.wall())
            .unwrap_or(self.now)
    }

    /// Looks at the wall clock; a change of its rollback state goes to the core.
    fn observe_clock(&mut self, wall: Timestamp) {
        let Some(guard) = self.guard.as_mut() else {
            return;
        };
        guard.observe(wall);
        let want = guard.rollback();
        // Compared with the core every batch, so a change refused while the store failed
        // is made once it works again.
        if self.core.clock_rollback() != want {
            self.execute(Command::ClockRollback { mark: want });
        }
    }

    /// Installs a vendor's reset token (already verified and checked against the guard):
    /// the mark is forgotten, the token spent, and the daemon's time set to the wall
    /// clock, so entries that expired only by the old reckoning count again.
    pub(crate) fn reset_clock(&mut self, token_id: &str) -> Result<Timestamp, String> {
        let (Some(guard), Some(clock)) = (self.guard.as_mut(), self.daemon_clock.as_ref()) else {
            return Err("this daemon does not watch its clock".into());
        };
        let wall = clock.wall();
        guard.reset(token_id, wall).map_err(|e| e.to_string())?;
        clock.rebase_to_wall();
        self.now = clock.now();
        self.store.lower_hwm(self.now);
        // The owner's own timers count from the new time, or renewals would wait until it
        // caught up with the old one before being persisted again.
        self.renewals_persisted_at = self.now;
        self.refusals_since = self.now;
        self.last_recovery_attempt = self.now;
        self.execute(Command::ClockRollback { mark: None });
        self.execute(Command::TimeRebased);
        Ok(self.now)
    }

    /// Registers a live connection for `server`: revocations are pushed to it.
    pub fn open_session(&mut self, server: &str, session: Session) {
        self.execute(Command::SessionOpened {
            server: server.to_string(),
        });
        self.opened_in_batch
            .push((server.to_string(), session.conn));
        self.sessions
            .entry(server.to_string())
            .or_default()
            .push(session);
    }

    pub fn close_session(&mut self, server: &str, conn: u64) {
        if let Some(v) = self.sessions.get_mut(server) {
            let before = v.len();
            v.retain(|s| s.conn != conn);
            let closed = v.len() < before;
            if v.is_empty() {
                self.sessions.remove(server);
            }
            if closed {
                self.execute(Command::SessionClosed {
                    server: server.to_string(),
                });
            }
        }
    }

    fn push(&mut self, server: &str, push: Push) {
        if let Some(v) = self.sessions.get(server) {
            for s in v {
                // A full queue means the connection is not reading; the revocation stays
                // pending in the core and goes out with the next heartbeat answer.
                let _ = s.push.try_send(push.clone());
            }
        }
    }
}

/// A cheap handle for connection tasks: submit jobs, wait for acknowledgements.
#[derive(Clone, Debug)]
pub struct CoreHandle {
    tx: mpsc::Sender<Job>,
    /// Notified after every batch in which a holder acknowledged a revocation.
    pub acks: Arc<Notify>,
    /// Counters for `/metrics`, kept by the owner task.
    pub metrics: Arc<super::metrics::Metrics>,
}

impl CoreHandle {
    /// Runs `f` in the owner task; the answer comes after the batch is committed.
    pub async fn call<R, F>(&self, f: F) -> Result<R, CallError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Owner) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let submitted = std::time::Instant::now();
        let job: Job = Box::new(move |owner: &mut Owner| {
            owner.job_submitted = submitted;
            let r = f(owner);
            Box::new(move |failure: Option<String>| {
                let _ = tx.send(match failure {
                    None => Ok(r),
                    Some(e) => Err(CallError::NotPersisted(e)),
                });
            })
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| CallError::ShuttingDown)?;
        rx.await.map_err(|_| CallError::ShuttingDown)?
    }

    /// Applies one command and returns its outcome once committed.
    pub async fn execute(&self, command: Command) -> Result<Outcome, CallError> {
        self.call(move |o| o.execute(command)).await
    }
}

/// Starts the owner task. It ends when `shutdown` fires and the jobs queued are done,
/// and hands back the core and the store (after a final snapshot).
pub fn spawn(
    core: Core,
    store: Store,
    clock: Arc<dyn Clock>,
    offer: Option<watch::Sender<Offer>>,
    shutdown: CancellationToken,
) -> (CoreHandle, tokio::task::JoinHandle<Core>) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let acks = Arc::new(Notify::new());
    let metrics = Arc::new(super::metrics::Metrics::default());
    let handle = CoreHandle {
        tx,
        acks: acks.clone(),
        metrics: metrics.clone(),
    };
    let now = clock.now();
    let owner = Owner {
        core,
        now,
        sessions: HashMap::new(),
        audit_head: store.head(),
        store,
        pending: Vec::new(),
        durable: false,
        refusals: BTreeMap::new(),
        refusals_since: now,
        renewals_persisted_at: now,
        degraded: None,
        needs_reload: false,
        last_recovery_attempt: now,
        offer,
        opened_in_batch: Vec::new(),
        guard: None,
        daemon_clock: None,
        metrics,
        job_submitted: std::time::Instant::now(),
        heartbeats_in_batch: Vec::new(),
        last_durable_work: Timestamp::default(),
        next_usage_sample: now,
        slow_commits: SlowCommits::default(),
    };
    let run = run(owner, rx, clock, acks, shutdown);
    // On a single-threaded runtime (netkeyd's, and the tests') the core runs beside the
    // connections, as one event loop: no request crosses a thread, and the loop sleeps in
    // a batch's sync as redis's does. On a multi-threaded runtime it keeps a thread of its
    // own, so its work and syncs never hold up a worker's queue.
    let task = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => tokio::spawn(run),
        _ => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => tokio::task::spawn_blocking(move || rt.block_on(run)),
            Err(e) => {
                tracing::warn!("the core runs beside the connections (no runtime of its own: {e})");
                tokio::spawn(run)
            }
        },
    };
    (handle, task)
}

/// Keeps the discovery OFFER in step with the network keys and their free seats.
fn refresh_offer(owner: &Owner) {
    let Some(tx) = &owner.offer else { return };
    let keys: Vec<OfferedKey> = owner
        .core
        .key_views(owner.now)
        .into_iter()
        // Local keys never leave the host; a key the daemon does not serve (a failed host
        // binding, a return under way) is not offered either.
        .filter(|k| k.kind == crate::key::KeyKind::Network && k.state == "active")
        .map(|k| OfferedKey {
            key_id: k.key_id,
            demo: k.demo,
            seats: k
                .seats
                .into_iter()
                .map(|s| (s.feature, s.free, s.total))
                .collect(),
        })
        .collect();
    tx.send_if_modified(|o| {
        let changed = o.keys != keys;
        if changed {
            o.keys = keys;
        }
        changed
    });
}

/// One line for systemd's STATUS=: keys and seat use, servers, the store's health.
pub fn status_line(owner: &Owner) -> String {
    let core = owner.core();
    let keys: Vec<String> = core
        .key_views(owner.now)
        .iter()
        .map(|k| {
            let seats: Vec<String> = k
                .seats
                .iter()
                .map(|s| format!("{} {}/{}", s.feature, s.in_use, s.total))
                .collect();
            format!(
                "{}{}: {}",
                k.key_id,
                if k.demo { " (DEMO)" } else { "" },
                seats.join(", ")
            )
        })
        .collect();
    // Counted, not viewed: this runs every 10 s in the task that owns the core.
    let counts = core.server_counts();
    let mut line = format!(
        "{}; {} video server{} ({} live)",
        if keys.is_empty() {
            "no keys".to_string()
        } else {
            keys.join("; ")
        },
        counts.servers,
        if counts.servers == 1 { "" } else { "s" },
        counts.live
    );
    if let Some(e) = &owner.degraded {
        line.push_str(&format!("; STATE STORE FAILING: {e}"));
    }
    if let Some(mark) = core.clock_rollback() {
        line.push_str(&format!(
            "; CLOCK ROLLBACK: behind the mark {mark}, new checkouts refused"
        ));
    }
    for k in core.key_views(owner.now) {
        if let Some(p) = &k.problem {
            line.push_str(&format!("; KEY {} NOT SERVED: {p}", k.key_id));
        }
        if let Some(e) = k.entries.iter().find(|e| e.state == "expiring") {
            line.push_str(&format!(
                "; key {} entry {} expires in {} days",
                k.key_id, e.order, e.days_left
            ));
        }
    }
    line
}

/// Pings systemd's watchdog from the task that owns the core, so a wedged core gets the
/// daemon restarted, and refreshes STATUS= now and then.
struct Systemd {
    watchdog: Option<std::time::Duration>,
    last_ping: std::time::Instant,
    last_status: std::time::Instant,
}

impl Systemd {
    fn new() -> Self {
        let now = std::time::Instant::now();
        Systemd {
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: now,
            last_status: now,
        }
    }

    fn tick(&mut self, owner: &Owner) {
        if let Some(interval) = self.watchdog {
            if self.last_ping.elapsed() >= interval / 3 {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                self.last_ping = std::time::Instant::now();
            }
        }
        if self.last_status.elapsed() >= std::time::Duration::from_secs(10) {
            let line = status_line(owner);
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
            self.last_status = std::time::Instant::now();
        }
    }
}

async fn run(
    mut owner: Owner,
    mut rx: mpsc::Receiver<Job>,
    clock: Arc<dyn Clock>,
    acks: Arc<Notify>,
    shutdown: CancellationToken,
) -> Core {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Job> = Vec::new();
    let mut redb_write: Option<RedbWriteTask> = None;
    let mut systemd = Systemd::new();
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                Some(j) => batch.push(j),
                None => break,
            },
            written = redb_written(&mut redb_write) => {
                redb_write = None;
                end_redb_write(&mut owner, written);
            }
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {
                // Answer what is queued, then stop.
                rx.close();
                while let Some(j) = rx.recv().await { batch.push(j); }
                apply(&mut owner, &mut batch, &clock, &acks);
                break;
            }
        }
        // Let every connection that is ready hand in its request first (one turn of the
        // event loop), so a batch carries all of them: taken as they came, batches
        // alternated between most of the clients and one straggler.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        apply(&mut owner, &mut batch, &clock, &acks);
        maintain(&mut owner, &mut redb_write);
        systemd.tick(&owner);
        refresh_offer(&owner);
    }
    if redb_write.is_some() {
        let written = redb_written(&mut redb_write).await;
        end_redb_write(&mut owner, written);
    }
    persist_renewals(&mut owner, true);
    if let Some(g) = owner.guard.as_mut() {
        g.persist();
    }
    // While the store fails, the core holds what was never logged nor audited (time
    // passing, or a batch that failed if it could not be rebuilt): the restart rebuilds
    // from the log instead. The checkpoint still zeroes the journal's failed frames.
    let stored = if owner.degraded.is_some() {
        owner.store.checkpoint()
    } else {
        owner.store.snapshot(&owner.core)
    };
    if let Err(e) = stored {
        tracing::warn!(
            "could not write a snapshot at shutdown (the log still holds everything): {e}"
        );
    }
    owner.core
}

/// A checkpoint or snapshot being written to redb on a blocking thread (`maintain` begins
/// it): the task, whether it is a snapshot, and when it began.
type RedbWriteTask = (
    tokio::task::JoinHandle<Result<(), crate::store::StoreError>>,
    bool,
    std::time::Instant,
);

/// What a write to redb did: its outcome, whether it was a snapshot, how long it took.
type RedbWritten = (
    Result<(), crate::store::StoreError>,
    bool,
    std::time::Duration,
);

/// The end of the write to redb under way (never, if there is none).
async fn redb_written(task: &mut Option<RedbWriteTask>) -> RedbWritten {
    match task {
        Some((handle, snapshot, began)) => {
            let written = match handle.await {
                Ok(r) => r,
                Err(e) => Err(crate::store::StoreError::Db(format!(
                    "the write to the store did not run: {e}"
                ))),
            };
            (written, *snapshot, began.elapsed())
        }
        None => std::future::pending().await,
    }
}

fn end_redb_write(owner: &mut Owner, (written, snapshot, took): RedbWritten) {
    let what = if snapshot { "snapshot" } else { "checkpoint" };
    match owner.store.end_write(written) {
        Ok(moved) => {
            tokio::task::spawn_blocking(move || drop(moved));
            tracing::debug!(took_ms = took.as_millis() as u64, "{what} written");
        }
        // The batches are durable in the journal already: a failure here only delays
        // moving them into redb, and is tried again.
        Err(e) => tracing::warn!(
            "{what} failed (the journal keeps every batch, and grows until one succeeds): {e}"
        ),
    }
}

/// A batch applied to the core and committed to the store: its answers, and what it
/// tells other connections.
struct Applied {
    replies: Vec<Reply>,
    events: Vec<Event>,
    /// When each of its heartbeats was handed over.
    heartbeats: Vec<std::time::Instant>,
    /// Sessions it opened: dropped again if it fails.
    opened: Vec<(String, u64)>,
}

/// Answers a batch that the store holds, and tells other connections what it changed.
fn answer(owner: &mut Owner, applied: Applied, acks: &Notify) {
    let acknowledged = dispatch_events(owner, applied.events);
    for reply in applied.replies {
        reply(None);
    }
    for submitted in applied.heartbeats {
        owner.metrics.heartbeat_latency(submitted.elapsed());
    }
    if acknowledged {
        acks.notify_waiters();
    }
}

/// A commit failed: nothing of the batch may be acknowledged. The store dropped it, and
/// the core is rebuilt from what is durable.
fn fail_batch(owner: &mut Owner, applied: Applied, reason: String) {
    tracing::error!(reason = %reason, "COMMIT FAILED: this batch's changes are refused; leases go on being renewed in memory");
    for (server, conn) in applied.opened {
        if let Some(v) = owner.sessions.get_mut(&server) {
            v.retain(|s| s.conn != conn);
            if v.is_empty() {
                owner.sessions.remove(&server);
            }
        }
    }
    owner.degraded = Some(reason.clone());
    owner.last_recovery_attempt = owner.now;
    match owner.store.reload() {
        Ok(core) => owner.core = core,
        Err(e) => {
            tracing::error!("cannot reload the state store yet: {e}");
            owner.needs_reload = true;
        }
    }
    for reply in applied.replies {
        reply(Some(reason.clone()));
    }
}

/// A due snapshot waits while durable work goes on, until the store says it is overdue: a
/// checkout storm is served without a snapshot's serializing and writing beside it (at a
/// million leases, a seventh of a second of the event loop and most of a second of a
/// blocking thread), and the snapshot follows the storm. A crash in the storm replays
/// at most half as much log again (`Store::snapshot_overdue`).
fn snapshot_wanted(owner: &Owner) -> bool {
    owner.store.wants_snapshot()
        && (owner.now.since(owner.last_durable_work) >= SNAPSHOT_QUIET_MS
            || owner.store.snapshot_overdue())
}

/// Usage samples, renewals, checkpoints and snapshots: run between batches.
/// Checkpoints and snapshots are written to redb on a blocking thread while batches go on
/// into the journal; a snapshot's core is serialized here (at a million leases, about a
/// seventh of a second of the event loop; the write takes most of a second).
fn maintain(owner: &mut Owner, redb_write: &mut Option<RedbWriteTask>) {
    sample_usage(owner);
    persist_renewals(owner, false);
    if owner.degraded.is_some() || redb_write.is_some() {
        return;
    }
    let begun = if snapshot_wanted(owner) {
        owner.store.begin_snapshot(&owner.core).map(Some)
    } else if owner.store.wants_checkpoint() {
        owner.store.begin_checkpoint()
    } else {
        Ok(None)
    };
    match begun {
        Ok(Some(write)) => {
            let snapshot = write.is_snapshot();
            let began = std::time::Instant::now();
            let task = tokio::task::spawn_blocking(move || write.write());
            *redb_write = Some((task, snapshot, began));
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(
            "could not begin moving the journal into the store (it keeps every batch, and grows until this succeeds): {e}"
        ),
    }
}

/// While the store fails, tries once a second to reopen it, rebuild the core from what is
/// durable, and write again.
fn try_recover(owner: &mut Owner) {
    if owner.degraded.is_none() || owner.now.since(owner.last_recovery_attempt) < 1_000 {
        return;
    }
    owner.last_recovery_attempt = owner.now;
    // Whatever happened in memory while the store failed (sessions, time) was not
    // logged: rebuild from what is durable, then re-open the live sessions once.
    owner.needs_reload = true;
    if owner.needs_reload {
        match owner.store.reload() {
            Ok(core) => {
                owner.core = core;
                owner.needs_reload = false;
            }
            Err(e) => {
                owner.degraded = Some(e.to_string());
                return;
            }
        }
    }
    let probe = AuditEntry {
        action: "store_recovered".into(),
        detail: format!(
            "writes failed: {}",
            owner.degraded.clone().unwrap_or_default()
        ),
        ..AuditEntry::default()
    };
    let record = BatchRecord {
        now: owner.now,
        commands: Vec::new(),
    };
    match owner.store.commit(&record, vec![probe], true) {
        Ok(head) => {
            owner.audit_head = head;
            let was = owner.degraded.take().unwrap_or_default();
            tracing::warn!("the state store accepts writes again (it failed: {was})");
            // The rebuilt core knows no live connection; tell it of the ones still open.
            let live: Vec<(String, usize)> = owner
                .sessions
                .iter()
                .map(|(k, v)| (k.clone(), v.len()))
                .collect();
            for (server, n) in live {
                for _ in 0..n {
                    owner.execute(Command::SessionOpened {
                        server: server.clone(),
                    });
                }
            }
        }
        Err(e) => owner.degraded = Some(e.to_string()),
    }
}

fn apply(owner: &mut Owner, batch: &mut Vec<Job>, clock: &Arc<dyn Clock>, acks: &Notify) {
    owner.now = clock.now().max(owner.now);
    try_recover(owner);
    owner.observe_clock(clock.wall());
    if owner.now >= owner.core.next_deadline() {
        owner.execute(Command::Advance);
    }
    owner.opened_in_batch.clear();
    let replies: Vec<Reply> = batch.drain(..).map(|job| job(owner)).collect();
    let events = owner.core.drain_events();
    let mut audit: Vec<AuditEntry> = events.iter().map(audit::entry_for).collect();
    if owner.now.since(owner.refusals_since) >= REFUSAL_AUDIT_MS && !owner.refusals.is_empty() {
        for ((server, code), n) in std::mem::take(&mut owner.refusals) {
            audit.push(AuditEntry {
                action: "refused".into(),
                server_id: Some(server),
                detail: format!("{code} x{n} since {}", owner.refusals_since),
                ..AuditEntry::default()
            });
        }
        owner.refusals_since = owner.now;
    }
    let commands = std::mem::take(&mut owner.pending);
    // Audit records are handed out as heads (heartbeats, exports): they must be durable,
    // or a power cut could make an honest log look rewritten.
    let durable = std::mem::replace(&mut owner.durable, false) || !audit.is_empty();
    if owner.degraded.is_some() {
        // Nothing is written while the store fails; what happened in memory (renewals,
        // sessions, time passing) is rebuilt from the store when it recovers.
        audit.clear();
    }
    let applied = Applied {
        replies,
        events,
        heartbeats: std::mem::take(&mut owner.heartbeats_in_batch),
        opened: std::mem::take(&mut owner.opened_in_batch),
    };
    if durable && !commands.is_empty() {
        owner.last_durable_work = owner.now;
    }
    if commands.is_empty() && audit.is_empty() {
        // Nothing to write; the (empty) vector is kept for the next batch, as below.
        owner.pending = commands;
        if applied.replies.is_empty() && applied.events.is_empty() {
            return;
        }
    } else {
        let record = BatchRecord {
            now: owner.now,
            commands,
        };
        // Synced here, on the event loop, as redis does with `appendfsync always`: the
        // loop sleeps in the sync, and every request that arrives meanwhile goes into the
        // next batch. A thread of its own for syncs, with the next batches applied while
        // one ran, made 40,900 durable checkouts a second against 46,600 this way, with
        // p99 4.1 ms against 3.1 ms (netkey-bench's quick fleet, four alternating pairs):
        // on two CPUs its wake-ups queued behind the event loop and the clients (58 µs
        // each, about three a sync, from /proc/PID/task/TID/schedstat). On a multi-threaded runtime the core has a thread of its own (`spawn`),
        // so connections are served meanwhile.
        let began = std::time::Instant::now();
        let committed = blocking(|| owner.store.commit(&record, audit, durable));
        if let Some((count, slowest)) = owner.slow_commits.observe(began.elapsed(), owner.now) {
            tracing::warn!(
                count,
                slowest_ms = slowest.as_millis() as u64,
                "a commit to the journal took up to {} ms ({count} since the last warning) and nothing was answered meanwhile: the disk under the state directory is slow, or a batch was very large (many leases expiring at once)",
                slowest.as_millis()
            );
        }
        // The next batch's commands go into the same vector: grown afresh for every batch,
        // it was 4 % of the daemon's samples during durable checkouts at full scale.
        owner.pending = record.commands;
        owner.pending.clear();
        match committed {
            Ok(head) => owner.audit_head = head,
            Err(e) => {
                fail_batch(owner, applied, e.to_string());
                return;
            }
        }
    }
    answer(owner, applied, acks);
}

/// Runs `f`, which may block in a sync. The core runs on a current-thread runtime of its
/// own (`spawn`), where that holds up nothing else; where it fell back to a worker of a
/// multi-threaded runtime, the worker's other tasks are handed on first.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => f(),
        _ => tokio::task::block_in_place(f),
    }
}

/// A usage sample is due, and redb can take it now (not while a checkpoint or snapshot is
/// written).
fn usage_sample_due(owner: &Owner) -> bool {
    owner.now >= owner.next_usage_sample && !owner.store.write_under_way()
}

/// Records the seats in use per key and feature every `USAGE_SAMPLE_MS` (the first at
/// start), for the usage chart.
fn sample_usage(owner: &mut Owner) {
    if owner.degraded.is_some() || !usage_sample_due(owner) {
        return;
    }
    let rows: Vec<crate::store::UsageRow> = owner
        .core
        .key_views(owner.now)
        .into_iter()
        .flat_map(|k| {
            k.seats.into_iter().map(move |s| crate::store::UsageRow {
                key_id: k.key_id.clone(),
                feature: s.feature,
                in_use: s.in_use,
                total: s.total,
            })
        })
        .collect();
    if rows.is_empty() {
        // No key yet (the demo key is installed just after the first batch).
        return;
    }
    owner.next_usage_sample = owner.now.plus(USAGE_SAMPLE_MS);
    let sample = crate::store::UsageSample {
        at: owner.now,
        rows,
    };
    if let Err(e) = owner.store.record_usage(&sample) {
        // The chart misses a point; the next commit finds out whether the store is sick.
        tracing::warn!("could not record a usage sample: {e}");
    }
}

/// Makes in-memory renewals durable, at most once per `RENEWAL_PERSIST_MS` unless forced.
fn persist_renewals(owner: &mut Owner, force: bool) {
    if owner.degraded.is_some() || !owner.core.has_unpersisted_renewals() {
        return;
    }
    if !force && owner.now.since(owner.renewals_persisted_at) < RENEWAL_PERSIST_MS {
        return;
    }
    let renewals = owner.core.pending_renewals();
    let command = Command::RenewalsPersisted { renewals };
    let record = BatchRecord {
        now: owner.now,
        commands: vec![command.clone()],
    };
    match owner.store.commit(&record, Vec::new(), true) {
        Ok(_) => {
            owner.core.apply(owner.now, command);
            owner.renewals_persisted_at = owner.now;
        }
        Err(e) => {
            // Renewals stay in memory; answers keep counting valid_for from the last
            // persisted renewal, so clients' deadlines shrink instead of outliving it.
            tracing::error!("cannot persist renewals: {e}");
            owner.degraded = Some(e.to_string());
            owner.renewals_persisted_at = owner.now;
            owner.last_recovery_attempt = owner.now;
            // The failed transaction may have closed the database: reopen before use.
            owner.needs_reload = true;
        }
    }
}

/// Logs every event and pushes revocations; returns whether a holder acknowledged.
fn dispatch_events(owner: &mut Owner, events: Vec<Event>) -> bool {
    let mut acknowledged = false;
    let expired = super::log::expired_servers(&events);
    for event in events {
        super::log::event(&event, &expired);
        count_event(&owner.metrics, &event);
        match event {
            Event::RevocationIssued {
                server,
                camera,
                epoch,
                ..
            } => {
                let rev = owner
                    .core
                    .server_revocations(&server)
                    .into_iter()
                    .find(|r| r.camera == camera && r.epoch == epoch);
                if let Some(rev) = rev {
                    owner.push(&server, Push::Revoke(rev));
                }
            }
            Event::Forgotten { server } => {
                for s in owner.sessions.remove(&server).unwrap_or_default() {
                    s.close.cancel();
                }
            }
            Event::Released {
                reason: ReleaseReason::Acknowledged,
                ..
            }
            | Event::RevokingEnded {
                acknowledged: true, ..
            } => acknowledged = true,
            _ => {}
        }
    }
    acknowledged
}

fn count_event(m: &super::metrics::Metrics, event: &Event) {
    use super::metrics::Metrics as M;
    match event {
        Event::Granted { .. } => M::bump(&m.grants),
        Event::Moved { .. } => M::bump(&m.moves),
        Event::Released { .. } => M::bump(&m.releases),
        Event::RevocationIssued { .. } => M::bump(&m.revocations),
        Event::ForcedOverlap { .. } => M::bump(&m.forced_overlaps),
        Event::ServerExpired { cameras, .. } if *cameras > 0 => M::bump(&m.reservations_ended),
        Event::EntryExpired { .. } => M::bump(&m.entries_expired),
        Event::CameraContested { .. } => M::bump(&m.contested),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::tests::{acknowledged, checkout, enrol, Power, T0};
    use std::collections::BTreeSet;

    #[test]
    fn slow_commits_are_counted_and_reported_at_most_once_a_minute() {
        let ms = std::time::Duration::from_millis;
        let at = Timestamp::from_millis;
        let mut slow = SlowCommits::default();
        assert_eq!(slow.observe(ms(499), at(0)), None, "under the bound");
        // The first slow one is reported at once.
        assert_eq!(slow.observe(ms(800), at(1_000)), Some((1, ms(800))));
        // Then they are counted, and the slowest kept, until a minute has passed.
        assert_eq!(slow.observe(ms(600), at(2_000)), None);
        assert_eq!(slow.observe(ms(3_000), at(30_000)), None);
        assert_eq!(slow.observe(ms(10), at(60_999)), None);
        assert_eq!(slow.observe(ms(10), at(61_000)), Some((2, ms(3_000))));
        // A minute with none: nothing to report, and the next slow one is reported at once.
        assert_eq!(slow.observe(ms(10), at(200_000)), None);
        assert_eq!(slow.observe(ms(500), at(200_001)), Some((1, ms(500))));
    }

    /// The owner task on a store whose disks a test can fail, and its clock.
    fn started(
        power: &Power,
    ) -> (
        CoreHandle,
        tokio::task::JoinHandle<Core>,
        Arc<ManualClock>,
        CancellationToken,
    ) {
        let (store, loaded) = power.open();
        let clock = ManualClock::new(T0);
        let shutdown = CancellationToken::new();
        let (handle, task) = spawn(loaded.core, store, clock.clone(), None, shutdown.clone());
        (handle, task, clock, shutdown)
    }

    async fn run(handle: &CoreHandle, commands: Vec<Command>) {
        for c in commands {
            let out = handle.execute(c).await.unwrap();
            assert!(!matches!(out, Outcome::Refused(_)), "{out:?}");
        }
    }

    /// The demo key installed and server A enrolled.
    fn demo_key_and_server_a() -> Vec<Command> {
        let mut setup = vec![Command::InstallKey {
            document: crate::key::demo_key(T0),
            demo: true,
        }];
        setup.extend(enrol("A", "11111111"));
        setup
    }

    /// Whether a snapshot is due, overdue, and whether a redb write is under way.
    async fn snapshot_state(handle: &CoreHandle) -> (bool, bool, bool) {
        handle
            .call(|o| {
                (
                    o.store.wants_snapshot(),
                    o.store.snapshot_overdue(),
                    o.store.write_under_way(),
                )
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_due_snapshot_waits_for_a_pause_in_durable_work_until_it_is_overdue() {
        let power = Power::default();
        let (handle, task, clock, shutdown) = started(&power);
        run(&handle, demo_key_and_server_a()).await;
        handle
            .call(|o| o.store.set_snapshot_every(10))
            .await
            .unwrap();
        // Durable checkouts, one batch each, with no time passing: the snapshot falls due
        // and waits.
        let mut n = 0;
        let checkout_next = |n: &mut usize| {
            *n += 1;
            checkout("A", &[&format!("c{n}")])
        };
        while !snapshot_state(&handle).await.0 {
            run(&handle, vec![checkout_next(&mut n)]).await;
            assert!(n < 10, "due after 10 records");
        }
        for _ in 0..3 {
            let (wanted, overdue, writing) = snapshot_state(&handle).await;
            assert!(
                wanted && !overdue && !writing,
                "{wanted} {overdue} {writing}"
            );
        }
        // A pause in durable work: it is taken.
        clock.advance(SNAPSHOT_QUIET_MS);
        let mut calls = 0;
        while snapshot_state(&handle).await.0 {
            calls += 1;
            assert!(calls < 100, "the snapshot was not taken after a pause");
            tokio::task::yield_now().await;
        }
        // Due again under unbroken durable work: it waits until overdue, then is taken
        // anyway.
        while !snapshot_state(&handle).await.0 {
            run(&handle, vec![checkout_next(&mut n)]).await;
        }
        let mut waited = 0;
        loop {
            let (wanted, overdue, _) = snapshot_state(&handle).await;
            if !wanted {
                break;
            }
            assert!(
                !overdue || waited < 100,
                "an overdue snapshot was not taken"
            );
            if !overdue {
                run(&handle, vec![checkout_next(&mut n)]).await;
            } else {
                waited += 1;
                tokio::task::yield_now().await;
            }
        }
        shutdown.cancel();
        task.await.unwrap();
    }

    /// What the clients of `every_answered_..._survives_a_power_cut` have seen: each set
    /// is filled before (sent) or after (answered) the call it names.
    #[derive(Clone, Default)]
    struct Seen {
        checked_out: BTreeMap<String, String>,
        release_sent: BTreeSet<String>,
        released: BTreeSet<String>,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_answered_checkout_and_release_survives_a_power_cut_while_many_are_in_flight() {
        // Many clients at once make batches of several requests under one sync, while
        // checkpoints and snapshots (made frequent here) run on blocking threads. The power is cut again and again while they run; each cut must hold
        // every checkout and release answered before it.
        const CLIENTS: usize = 12;
        const ROUNDS: usize = 60;
        const CUT_EVERY: usize = 6;
        let power = Power::default();
        let (handle, task, _clock, shutdown) = started(&power);
        let mut key = crate::key::demo_key(T0);
        key.entries[0].count = 10_000;
        let mut setup = vec![Command::InstallKey {
            document: key,
            demo: true,
        }];
        setup.extend(enrol("A", "11111111"));
        setup.extend(enrol("B", "22222222"));
        run(&handle, setup).await;
        handle
            .call(|o| {
                o.store.set_checkpoint_bytes(8 << 10);
                o.store.set_snapshot_every(30);
            })
            .await
            .unwrap();

        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let cuts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut clients = tokio::task::JoinSet::new();
        for client in 0..CLIENTS {
            let (handle, seen, cuts, power) =
                (handle.clone(), seen.clone(), cuts.clone(), power.clone());
            let server = if client % 2 == 0 { "A" } else { "B" };
            clients.spawn(async move {
                for round in 0..ROUNDS {
                    let camera = format!("k{client}-{round}");
                    let out = handle.execute(checkout(server, &[&camera])).await;
                    assert!(matches!(out, Ok(Outcome::Checkout(_))), "{out:?}");
                    seen.lock()
                        .unwrap()
                        .checked_out
                        .insert(camera.clone(), server.to_string());
                    // Every third camera goes back at once.
                    if round % 3 == 0 {
                        seen.lock().unwrap().release_sent.insert(camera.clone());
                        let out = handle
                            .execute(Command::Release {
                                server: server.into(),
                                cameras: vec![camera.clone()],
                            })
                            .await;
                        assert!(matches!(out, Ok(Outcome::Released(_))), "{out:?}");
                        seen.lock().unwrap().released.insert(camera);
                    }
                    // A cut while the other clients' requests are in flight, checked
                    // at once (each holds megabytes of disk). `seen` stays locked
                    // across it: what it lists as answered was answered before the
                    // cut, and a release it does not list as sent was not sent.
                    if round % CUT_EVERY == CUT_EVERY - 1 {
                        let (before, cut) = {
                            let s = seen.lock().unwrap();
                            (s.clone(), power.cut())
                        };
                        let n = cuts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        holds_what_was_answered(&before, &cut, n);
                    }
                }
            });
        }
        while let Some(done) = clients.join_next().await {
            done.unwrap();
        }
        // The last checkpoint or snapshot ends before they are counted.
        while snapshot_state(&handle).await.2 {
            tokio::task::yield_now().await;
        }
        let (checkpoints, snapshots) = handle
            .call(|o| (o.store.checkpoints_taken(), o.store.snapshots_taken()))
            .await
            .unwrap();
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(
            cuts.load(std::sync::atomic::Ordering::Relaxed),
            CLIENTS * ROUNDS / CUT_EVERY
        );
        assert!(
            checkpoints >= 3 && snapshots >= 1,
            "{checkpoints} checkpoints, {snapshots} snapshots"
        );
    }

    /// The store on the disks `cut` left holds every checkout and release `seen` lists
    /// as answered, except checkouts whose release was sent (it may or may not be in).
    fn holds_what_was_answered(seen: &Seen, cut: &Power, n: usize) {
        let (_, loaded) = cut.open();
        for (camera, server) in &seen.checked_out {
            let holder = loaded.core.holder("DEMO", camera);
            if seen.released.contains(camera) {
                assert_eq!(holder, None, "cut {n}: {camera} was released");
            } else if !seen.release_sent.contains(camera) {
                assert_eq!(
                    holder,
                    Some(server.as_str()),
                    "cut {n}: {camera} was checked out"
                );
            }
        }
    }

    #[tokio::test]
    async fn stopping_while_the_store_fails_writes_no_snapshot_of_what_only_memory_holds() {
        // While the store fails, the core goes on in memory (time passes, reservations
        // end) with nothing logged or audited; a restart must find what the store holds.
        let power = Power::default();
        let (handle, task, clock, shutdown) = started(&power);
        let mut setup = demo_key_and_server_a();
        setup.push(checkout("A", &["c1", "c2"]));
        run(&handle, setup).await;
        let durable = handle.call(|o| o.core().clone()).await.unwrap();

        power.fail_journal_syncs(true);
        let failed = handle.execute(checkout("A", &["c3"])).await;
        assert!(
            matches!(failed, Err(CallError::NotPersisted(_))),
            "{failed:?}"
        );
        // A's reservation ends (the demo key's grace is an hour) in memory only.
        clock.advance(3 * 3_600_000);
        let in_memory = handle.call(|o| o.core().clone()).await.unwrap();
        assert_ne!(
            acknowledged(&in_memory),
            acknowledged(&durable),
            "the reservation ended in memory"
        );
        assert!(handle.call(|o| o.degraded.is_some()).await.unwrap());

        // The disk comes back just as the daemon stops, before it recovers by itself.
        power.fail_journal_syncs(false);
        shutdown.cancel();
        task.await.unwrap();
        let (_, loaded) = power.open();
        assert_eq!(
            postcard::to_allocvec(&loaded.core).unwrap(),
            acknowledged(&durable),
            "the state the store held, not the one in memory"
        );
    }
}
