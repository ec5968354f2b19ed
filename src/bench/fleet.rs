//! The simulated video servers. Each one is a task that owns one licence connection
//! from its own loopback source address (127.0.0.x, so per-source limits do not bite),
//! acknowledges revocations pushed to it at once (a move waits for the holder's
//! acknowledgement), and runs the requests that the phase drivers hand it. A driver has
//! one request in flight at a time, so `clients` drivers are `clients` requests in flight,
//! like `redis-benchmark -c`.

use super::report::{PhaseResult, Recorder};
use crate::client::{ClientError, Connection};
use crate::core::{CameraOutcome, CheckoutItem, Revocation};
use crate::proto::{Push, Request, Response, ServerFrame};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// What the licence connections of this build are; every figure is labelled with it.
pub const TRANSPORT: &str = "TLS 1.3, mutual authentication with Ed25519 identities";

/// Loopback source addresses in use: 127.0.0.1 to 127.0.0.250 (the daemon takes at
/// most 64 connections per source by default: 250 sources carry 16,000 servers).
const SOURCES: usize = 250;

/// Who a simulated server is: its name, source address and key pair (its TLS client
/// certificate), its enrolment code until it enrols, then its server id.
#[derive(Clone)]
pub struct Identity {
    pub index: usize,
    pub name: String,
    pub source: IpAddr,
    pub code: Option<String>,
    pub server_id: Option<String>,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn new(index: usize, code: Option<String>) -> Result<Identity, ClientError> {
        let key = crate::identity::Identity::generate();
        let tls = crate::tls::licence_client_config(&key)
            .map_err(|e| ClientError::Protocol(format!("TLS set-up: {e}")))?;
        Ok(Identity {
            index,
            name: format!("bench-vs-{index:05}"),
            source: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % SOURCES) as u8)),
            code,
            server_id: None,
            tls,
        })
    }

    /// An identity that only says Hello: to see whether a daemon answers.
    pub fn probe() -> Result<Identity, ClientError> {
        Identity::new(0, None)
    }
}

/// Every licence connection of the benchmark is made here: TCP from the identity's
/// source address, TLS with its key pair as client certificate, Hello, then Enrol with
/// its code or Login with its server id (with neither, Hello only). A change of
/// transport or of credentials changes this one function. Unlike `netkey::client`, it
/// does not check the daemon's keys against a vendor: that happens once per connection,
/// outside every figure but enrol and reconnect.
pub async fn open_session(
    daemon: SocketAddr,
    who: &mut Identity,
) -> Result<Connection, ClientError> {
    let mut conn =
        Connection::connect_from(&daemon.to_string(), Some(who.source), &who.tls).await?;
    let request = match (&who.server_id, &who.code) {
        (Some(server_id), _) => Request::Login {
            server_id: server_id.clone(),
        },
        (None, Some(code)) => Request::Enrol {
            code: code.clone(),
            name: who.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        (None, None) => return Ok(conn),
    };
    match conn.request(request).await? {
        Response::Enrolled { binding } => {
            who.server_id = Some(binding.server_id);
            who.code = None;
            Ok(conn)
        }
        Response::LoggedIn { .. } => Ok(conn),
        Response::Refused(r) => Err(ClientError::Refused(r)),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer to enrolment or login: {other:?}"
        ))),
    }
}

/// One request a driver hands a server.
#[derive(Clone, Debug)]
pub enum Op {
    /// A checkout of one camera: a grant, or a move when another live server holds it.
    Checkout(String),
    Release(String),
    Heartbeat,
}

enum Msg {
    Run(Op, oneshot::Sender<Result<Duration, String>>),
    /// Every op of a driver that has this one server: each request is sent as the answer
    /// to the one before is read, as a redis-benchmark connection does, not after a
    /// round trip through the driver's task (two more turns of the event loop each).
    RunAll(Ops, oneshot::Sender<Recorder>),
    Held(oneshot::Sender<Vec<String>>),
}

/// What a server knows of itself between connections.
#[derive(Clone, Debug)]
pub struct ServerState {
    pub identity: Identity,
    /// The cameras it holds, with their epochs.
    pub held: BTreeMap<String, u64>,
}

/// Errors that happen outside a driver's request (acknowledgements, lost connections):
/// each phase takes those that arrived during it.
#[derive(Debug, Default)]
struct Shared {
    errors: Mutex<Vec<String>>,
    /// A restart is under way: a closed connection is expected, not an error.
    disconnect_expected: AtomicBool,
}

impl Shared {
    fn error(&self, e: String) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct Sim {
    conn: Option<Connection>,
    state: ServerState,
    digest: Option<[u8; 32]>,
    /// Revocations listed in heartbeat answers, acknowledged after the answer.
    listed: Vec<Revocation>,
    shared: Arc<Shared>,
}

impl Sim {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> ServerState {
        loop {
            // While connected, pushes from the daemon are read between requests too.
            let msg = match self.conn.as_mut() {
                None => rx.recv().await,
                Some(conn) => tokio::select! {
                    msg = rx.recv() => msg,
                    frame = conn.read_frame() => {
                        match frame {
                            Ok(ServerFrame::Push(Push::Revoke(rev))) => {
                                self.acknowledge(rev).await;
                                self.settle().await;
                            }
                            Ok(other) => self.shared.error(format!(
                                "{}: unexpected frame between requests: {other:?}",
                                self.state.identity.name
                            )),
                            Err(e) => self.lost(e),
                        }
                        continue;
                    }
                },
            };
            match msg {
                None => break,
                Some(Msg::Run(_, reply)) if self.conn.is_none() => {
                    let _ = reply.send(Err("the connection is lost".into()));
                }
                Some(Msg::Run(op, reply)) => {
                    let r = self.handle(op).await;
                    let _ = reply.send(r);
                    self.settle().await;
                }
                Some(Msg::RunAll(ops, reply)) => {
                    let _ = reply.send(self.run_all(&ops).await);
                }
                Some(Msg::Held(reply)) => {
                    let _ = reply.send(self.state.held.keys().cloned().collect());
                }
            }
        }
        self.state
    }

    /// Runs every op in turn (each fails at once once the connection is lost).
    async fn run_all(&mut self, ops: &Ops) -> Recorder {
        let mut rec = Recorder::new();
        for i in 0..ops.len() {
            match self.handle(ops.op(i)).await {
                Ok(took) => rec.record(took),
                Err(e) => rec.error(e),
            }
            self.settle().await;
        }
        rec
    }

    fn lost(&mut self, e: ClientError) {
        self.conn = None;
        if !self.shared.disconnect_expected.load(Ordering::Relaxed) {
            self.shared.error(format!(
                "{}: connection lost: {e}",
                self.state.identity.name
            ));
        }
    }

    fn digest(&mut self) -> [u8; 32] {
        *self.digest.get_or_insert_with(|| {
            crate::core::digest::holdings(self.state.held.iter().map(|(c, e)| (c.as_str(), *e)))
        })
    }

    /// Sends one request and waits for its answer; the latency is the round trip.
    async fn request(&mut self, request: Request) -> Result<(Response, Duration), String> {
        let conn = self.conn.as_mut().ok_or("the connection is lost")?;
        let t = Instant::now();
        match conn.request(request).await {
            Ok(r) => Ok((r, t.elapsed())),
            Err(e) => {
                let msg = e.to_string();
                if matches!(e, ClientError::Io(_)) {
                    self.lost(e);
                }
                Err(msg)
            }
        }
    }

    async fn handle(&mut self, op: Op) -> Result<Duration, String> {
        match op {
            Op::Heartbeat => {
                let digest = self.digest();
                let sent_at =
                    crate::core::Timestamp::from_system_time(std::time::SystemTime::now());
                match self.request(Request::Heartbeat { digest, sent_at }).await? {
                    (Response::Heartbeat { answer, .. }, t) => {
                        self.listed.extend(answer.revocations);
                        if answer.sync_needed {
                            return Err(
                                "heartbeat: the daemon's digest of our cameras differs".into()
                            );
                        }
                        Ok(t)
                    }
                    (other, _) => Err(format!("heartbeat: {other:?}")),
                }
            }
            Op::Checkout(camera) => {
                let items = vec![CheckoutItem::camera(&camera)];
                match self.request(Request::Checkout { key: None, items }).await? {
                    (Response::Checkout(answer), t) => match answer.outcomes.into_iter().next() {
                        Some((c, CameraOutcome::Granted { epoch, .. })) => {
                            self.state.held.insert(c, epoch);
                            self.digest = None;
                            Ok(t)
                        }
                        other => Err(format!("checkout of {camera}: {other:?}")),
                    },
                    (other, _) => Err(format!("checkout of {camera}: {other:?}")),
                }
            }
            Op::Release(camera) => {
                let cameras = vec![camera.clone()];
                match self.request(Request::Release { cameras }).await? {
                    (Response::Released(out), t) => match out.first() {
                        Some((_, None)) => {
                            self.state.held.remove(&camera);
                            self.digest = None;
                            Ok(t)
                        }
                        other => Err(format!("release of {camera}: {other:?}")),
                    },
                    (other, _) => Err(format!("release of {camera}: {other:?}")),
                }
            }
        }
    }

    /// Stops "recording" a revoked camera, then acknowledges, as `netkey::client` does.
    async fn acknowledge(&mut self, rev: Revocation) {
        if self.state.held.get(&rev.camera) == Some(&rev.epoch) {
            self.state.held.remove(&rev.camera);
            self.digest = None;
        }
        let ack = Request::Acknowledge {
            camera: rev.camera.clone(),
            epoch: rev.epoch,
        };
        match self.request(ack).await {
            Ok((Response::Acknowledged { .. }, _)) => {}
            Ok((other, _)) => self.shared.error(format!(
                "{}: acknowledging {}: {other:?}",
                self.state.identity.name, rev.camera
            )),
            Err(e) => self.shared.error(format!(
                "{}: acknowledging {}: {e}",
                self.state.identity.name, rev.camera
            )),
        }
    }

    /// Acknowledges every revocation that arrived while waiting for an answer.
    async fn settle(&mut self) {
        loop {
            let mut todo = std::mem::take(&mut self.listed);
            if let Some(conn) = self.conn.as_mut() {
                todo.extend(conn.take_pushes().into_iter().map(|Push::Revoke(r)| r));
            }
            if todo.is_empty() {
                return;
            }
            for rev in todo {
                self.acknowledge(rev).await;
            }
        }
    }
}

/// The simulated servers, by index; `None` where a server could not connect.
#[derive(Debug)]
pub struct Fleet {
    servers: Vec<Option<mpsc::Sender<Msg>>>,
    tasks: Vec<Option<tokio::task::JoinHandle<ServerState>>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Run(op, _) => write!(f, "Run({op:?})"),
            Msg::RunAll(ops, _) => write!(f, "RunAll({ops:?})"),
            Msg::Held(_) => write!(f, "Held"),
        }
    }
}

impl Fleet {
    /// Enrols every identity (or logs it in, if it has a server id) with `clients`
    /// sessions being opened at once; the phase result is named after what it did.
    async fn open(
        name: &str,
        daemon: SocketAddr,
        states: Vec<ServerState>,
        clients: usize,
    ) -> (Fleet, PhaseResult) {
        let shared = Arc::new(Shared::default());
        let n = states.len();
        let limit = Arc::new(Semaphore::new(clients.max(1)));
        let started = Instant::now();
        let mut opening = tokio::task::JoinSet::new();
        for mut state in states {
            let limit = limit.clone();
            opening.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let t = Instant::now();
                let r = open_session(daemon, &mut state.identity).await;
                (state, r, t.elapsed())
            });
        }
        let mut rec = Recorder::new();
        let mut servers: Vec<Option<mpsc::Sender<Msg>>> = (0..n).map(|_| None).collect();
        let mut tasks: Vec<Option<tokio::task::JoinHandle<ServerState>>> =
            (0..n).map(|_| None).collect();
        while let Some(joined) = opening.join_next().await {
            let (state, result, took) = match joined {
                Ok(x) => x,
                Err(e) => {
                    rec.error(format!("a connecting task failed: {e}"));
                    continue;
                }
            };
            let index = state.identity.index;
            match result {
                Ok(conn) => {
                    rec.record(took);
                    let (tx, rx) = mpsc::channel(4);
                    let sim = Sim {
                        conn: Some(conn),
                        state,
                        digest: None,
                        listed: Vec::new(),
                        shared: shared.clone(),
                    };
                    servers[index] = Some(tx);
                    tasks[index] = Some(tokio::spawn(sim.run(rx)));
                }
                Err(e) => rec.error(format!("{}: {e}", state.identity.name)),
            }
        }
        let result = rec.finish(name, clients.min(n), started.elapsed());
        (
            Fleet {
                servers,
                tasks,
                shared,
            },
            result,
        )
    }

    /// Enrols every identity: the "enrol" phase.
    pub async fn connect(
        daemon: SocketAddr,
        identities: Vec<Identity>,
        clients: usize,
    ) -> (Fleet, PhaseResult) {
        let states = identities
            .into_iter()
            .map(|identity| ServerState {
                identity,
                held: BTreeMap::new(),
            })
            .collect();
        Self::open("enrol", daemon, states, clients).await
    }

    /// Logs every server in again (after a restart): the "reconnect" phase.
    pub async fn reconnect(
        daemon: SocketAddr,
        states: Vec<ServerState>,
        clients: usize,
    ) -> (Fleet, PhaseResult) {
        Self::open("reconnect", daemon, states, clients).await
    }

    pub fn connected(&self) -> usize {
        self.servers.iter().filter(|s| s.is_some()).count()
    }

    /// Indices of the servers that are connected.
    fn live(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&i| self.servers[i].is_some())
            .collect()
    }

    /// The daemon is about to go away: lost connections are not errors.
    pub fn expect_disconnect(&self) {
        self.shared
            .disconnect_expected
            .store(true, Ordering::Relaxed);
    }

    /// Ends every server task and returns what each knows of itself.
    pub async fn close(self) -> Vec<ServerState> {
        drop(self.servers);
        let mut out = Vec::new();
        for t in self.tasks.into_iter().flatten() {
            if let Ok(state) = t.await {
                out.push(state);
            }
        }
        out
    }

    /// The cameras each server holds now.
    async fn holdings(&self) -> Vec<(usize, Vec<String>)> {
        let mut out = Vec::new();
        for (i, tx) in self.servers.iter().enumerate() {
            let Some(tx) = tx else { continue };
            let (reply, rx) = oneshot::channel();
            if tx.send(Msg::Held(reply)).await.is_ok() {
                if let Ok(held) = rx.await {
                    out.push((i, held));
                }
            }
        }
        out
    }

    /// Runs a phase: `clients` drivers, each with one request in flight, walk the plan.
    pub async fn run_phase(&self, name: &str, clients: usize, plan: &PhasePlan) -> PhaseResult {
        let (rec, drivers, elapsed) = self.run_recorded(clients, plan).await;
        rec.finish(name, drivers, elapsed)
    }

    /// `run_phase`, before its figures are drawn: what each request took, how many
    /// drivers ran, and the wall time (rounds of a phase are merged from these).
    pub async fn run_recorded(
        &self,
        clients: usize,
        plan: &PhasePlan,
    ) -> (Recorder, usize, std::time::Duration) {
        let drivers = clients.clamp(1, plan.entries.len().max(1));
        let mut lanes: Vec<Vec<(mpsc::Sender<Msg>, Ops)>> =
            (0..drivers).map(|_| Vec::new()).collect();
        for (k, (server, ops)) in plan.entries.iter().enumerate() {
            if let Some(Some(tx)) = self.servers.get(*server) {
                lanes[k % drivers].push((tx.clone(), ops.clone()));
            }
        }
        let _ = self.shared.take();
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for lane in lanes {
            set.spawn(drive(lane));
        }
        let mut rec = Recorder::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(lane) => rec.merge(&lane),
                Err(e) => rec.error(format!("a driver failed: {e}")),
            }
        }
        let elapsed = started.elapsed();
        for e in self.shared.take() {
            rec.error(e);
        }
        (rec, drivers, elapsed)
    }
}

/// One driver: round-robin over its servers, the next op of each, one at a time.
async fn drive(lane: Vec<(mpsc::Sender<Msg>, Ops)>) -> Recorder {
    if let [(tx, ops)] = lane.as_slice() {
        let (reply, rx) = oneshot::channel();
        let sent = tx.send(Msg::RunAll(ops.clone(), reply)).await.is_ok();
        if let (true, Ok(rec)) = (sent, rx.await) {
            return rec;
        }
        let mut rec = Recorder::new();
        rec.error("a server task ended".into());
        return rec;
    }
    let mut rec = Recorder::new();
    let rounds = lane.iter().map(|(_, ops)| ops.len()).max().unwrap_or(0);
    for round in 0..rounds {
        for (tx, ops) in &lane {
            if round >= ops.len() {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            if tx.send(Msg::Run(ops.op(round), reply)).await.is_err() {
                rec.error("a server task ended".into());
                continue;
            }
            match rx.await {
                Ok(Ok(took)) => rec.record(took),
                Ok(Err(e)) => rec.error(e),
                Err(_) => rec.error("a server task ended".into()),
            }
        }
    }
    rec
}

/// The requests one server makes in a phase, made lazily (a million of them would
/// otherwise be a million strings up front).
#[derive(Clone, Debug)]
pub enum Ops {
    /// `count` cameras of server `owner` from its camera `first` on, checked out one per
    /// request.
    Checkout {
        owner: usize,
        first: usize,
        count: usize,
    },
    Heartbeat {
        count: usize,
    },
    Release(Arc<Vec<String>>),
}

impl Ops {
    fn len(&self) -> usize {
        match self {
            Ops::Checkout { count, .. } | Ops::Heartbeat { count } => *count,
            Ops::Release(cams) => cams.len(),
        }
    }
    fn op(&self, i: usize) -> Op {
        match self {
            Ops::Checkout { owner, first, .. } => Op::Checkout(super::camera_id(*owner, first + i)),
            Ops::Heartbeat { .. } => Op::Heartbeat,
            Ops::Release(cams) => Op::Release(cams[i].clone()),
        }
    }
}

/// What each server does in a phase.
#[derive(Clone, Debug, Default)]
pub struct PhasePlan {
    entries: Vec<(usize, Ops)>,
}

impl PhasePlan {
    /// Every camera of every server, one checkout each.
    pub fn storm(fleet: &Fleet, cameras: usize) -> PhasePlan {
        PhasePlan {
            entries: fleet
                .live()
                .into_iter()
                .map(|s| {
                    (
                        s,
                        Ops::Checkout {
                            owner: s,
                            first: 0,
                            count: cameras,
                        },
                    )
                })
                .collect(),
        }
    }

    /// `total` heartbeats spread evenly over the servers.
    pub fn heartbeats(fleet: &Fleet, total: usize) -> PhasePlan {
        Self::heartbeats_on(fleet.live(), total)
    }

    /// `total` heartbeats from the first `connections` servers only: with as many drivers
    /// as connections, each connection carries one request in flight, as each of
    /// redis-benchmark's connections does.
    pub fn heartbeats_like_redis(fleet: &Fleet, connections: usize, total: usize) -> PhasePlan {
        let mut live = fleet.live();
        live.truncate(connections);
        Self::heartbeats_on(live, total)
    }

    fn heartbeats_on(servers: Vec<usize>, total: usize) -> PhasePlan {
        let n = servers.len().max(1);
        PhasePlan {
            entries: servers
                .into_iter()
                .enumerate()
                .map(|(k, s)| {
                    (
                        s,
                        Ops::Heartbeat {
                            count: spread(total, n, k),
                        },
                    )
                })
                .collect(),
        }
    }

    /// `total` checkouts of new cameras (numbered from `first` on, past the storm's) by
    /// the first `connections` servers, one connection per driver as for heartbeats.
    pub fn checkouts_like_redis(
        fleet: &Fleet,
        connections: usize,
        first: usize,
        total: usize,
    ) -> PhasePlan {
        let mut live = fleet.live();
        live.truncate(connections);
        let n = live.len().max(1);
        PhasePlan {
            entries: live
                .into_iter()
                .enumerate()
                .map(|(k, s)| {
                    let count = spread(total, n, k);
                    (
                        s,
                        Ops::Checkout {
                            owner: s,
                            first,
                            count,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Up to `total` moves: the first half of the servers take cameras from their
    /// partners in the second half, which are only holders in this phase. (A server
    /// waiting for the answer to its own move cannot acknowledge a revocation meanwhile:
    /// the daemon reads its next frame only after answering. So no server is both.)
    pub fn moves(fleet: &Fleet, cameras: usize, total: usize) -> PhasePlan {
        let live = fleet.live();
        let pairs = live.len() / 2;
        let total = total.min(pairs * cameras);
        PhasePlan {
            entries: (0..pairs)
                .map(|k| {
                    let count =
                        (total / pairs.max(1) + usize::from(k < total % pairs.max(1))).min(cameras);
                    (
                        live[k],
                        Ops::Checkout {
                            owner: live[k + pairs],
                            first: 0,
                            count,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Every camera each server holds, one release each.
    pub async fn release(fleet: &Fleet) -> PhasePlan {
        PhasePlan {
            entries: fleet
                .holdings()
                .await
                .into_iter()
                .map(|(s, held)| (s, Ops::Release(Arc::new(held))))
                .collect(),
        }
    }

    /// Releases every camera the plan checks out, each by the server that checked it
    /// out (heartbeats and releases in the plan are left out).
    pub fn undoing_checkouts(&self) -> PhasePlan {
        PhasePlan {
            entries: self
                .entries
                .iter()
                .filter_map(|(s, ops)| match ops {
                    Ops::Checkout {
                        owner,
                        first,
                        count,
                    } => Some((
                        *s,
                        Ops::Release(Arc::new(
                            (*first..first + count)
                                .map(|c| super::camera_id(*owner, c))
                                .collect(),
                        )),
                    )),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Requests the plan makes.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|(_, ops)| ops.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Part `k` of `total` split as evenly as possible into `n` parts.
fn spread(total: usize, n: usize, k: usize) -> usize {
    total / n + usize::from(k < total % n)
}
