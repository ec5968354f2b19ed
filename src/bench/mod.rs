//! `netkey-bench`: drives thousands of simulated video servers against a real `netkeyd`
//! and measures it phase by phase (enrol, checkout storm, heartbeats, move churn, status
//! queries, restart, reconnect, release). The yardstick, `redis-benchmark` against a TLS
//! redis with the same client and request counts, runs right after each like-for-like
//! phase it is compared with.
//!
//! Timings here are measurements, never pass/fail: the tests only check that a tiny run
//! completes without errors and reports every phase.

pub mod daemon;
pub mod fleet;
pub mod redis;
pub mod report;

use crate::core::Timestamp;
use daemon::{Admin, NetkeydProcess};
use fleet::{Fleet, Identity, PhasePlan};
use report::{Comparison, Memory, PhaseResult, Report, Restart};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one run does. The presets fill it in; every figure can be overridden.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub preset: String,
    /// Simulated video servers, each with one persistent licence connection.
    pub servers: usize,
    /// Cameras per server: the checkout storm grants servers x cameras leases.
    pub cameras: usize,
    /// Requests in flight at once (redis-benchmark's `-c`): the drivers.
    pub clients: usize,
    pub heartbeats: usize,
    /// Durable checkouts of new cameras on `clients` connections, compared with redis's
    /// SET with `appendfsync always` (the storm, spread over every server, is reported
    /// beside it).
    pub checkouts: usize,
    pub moves: usize,
    pub status_queries: usize,
    /// The `netkeyd` binary to start (the one beside `netkey-bench` by default).
    pub netkeyd: PathBuf,
    /// Target an already running daemon instead of starting one.
    pub daemon: Option<SocketAddr>,
    pub admin_socket: Option<PathBuf>,
    /// The running daemon's pid, for its memory figures.
    pub daemon_pid: Option<u32>,
    pub redis: bool,
    /// Each like-for-like phase (and its redis run) is made this many times, netkey and
    /// redis taking turns, so drift in the machine's speed falls on both alike.
    pub rounds: usize,
}

impl BenchConfig {
    /// Seconds, for development.
    pub fn quick(netkeyd: PathBuf) -> BenchConfig {
        BenchConfig {
            preset: "quick".into(),
            servers: 200,
            cameras: 10,
            clients: 50,
            heartbeats: 50_000,
            checkouts: 10_000,
            moves: 1_000,
            status_queries: 200,
            netkeyd,
            daemon: None,
            admin_socket: None,
            daemon_pid: None,
            redis: true,
            rounds: 1,
        }
    }

    /// The issue's scale: 10,000 servers x 100 cameras = 1,000,000 leases.
    pub fn full(netkeyd: PathBuf) -> BenchConfig {
        BenchConfig {
            preset: "full".into(),
            servers: 10_000,
            cameras: 100,
            heartbeats: 1_000_000,
            checkouts: 200_000,
            moves: 100_000,
            status_queries: 500,
            rounds: 3,
            ..BenchConfig::quick(netkeyd)
        }
    }

    /// Leases after the storm.
    pub fn leases(&self) -> usize {
        self.servers * self.cameras
    }

    /// Leases after the storm and the like-for-like checkouts (which need as many
    /// servers as there are connections to make them on).
    pub fn all_leases(&self) -> usize {
        self.leases() + self.checkouts
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("netkeyd: {0}")]
    Daemon(String),
    #[error("admin socket: {0}")]
    Admin(String),
    #[error("{0}")]
    Setup(String),
    #[error("redis yardstick: {0}")]
    Redis(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}

/// Raises the soft limit on open files as far as allowed: each simulated server holds a
/// socket here and one in the daemon (a started `netkeyd` inherits the limit). Returns
/// the limit in force.
pub fn raise_open_files() -> Result<u64, BenchError> {
    rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| BenchError::Setup(format!("cannot raise RLIMIT_NOFILE: {e}")))
}

/// Runs every phase against netkeyd, redis beside the like-for-like ones, and returns the
/// report.
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    let open_files = raise_open_files()?;
    // Two sockets per server on this machine (ours and the daemon's when it runs here),
    // plus files: the daemon's limit is the same as ours.
    if (config.servers as u64) + 256 > open_files {
        return Err(BenchError::Setup(format!(
            "{} servers need more open files than RLIMIT_NOFILE allows ({open_files}); raise the hard limit (ulimit -Hn)",
            config.servers
        )));
    }
    if config.servers == 0 || config.cameras == 0 || config.clients == 0 {
        return Err(BenchError::Setup(
            "servers, cameras and clients must each be at least 1".into(),
        ));
    }
    let started = Instant::now();
    let mut report = Report::new(&config, fleet::TRANSPORT);
    let tmp = tempfile::Builder::new()
        .prefix("netkey-bench-")
        .tempdir()
        .map_err(BenchError::io("cannot make a temporary directory"))?;
    let mut own = match config.daemon {
        Some(_) => None,
        None => {
            let state = tmp.path().join("state");
            daemon::seed_state(&state, config.all_leases())?;
            let p = NetkeydProcess::spawn(
                &config.netkeyd,
                &state,
                &tmp.path().join("admin.sock"),
                None,
                &tmp.path().join("netkeyd.log"),
            )
            .await?;
            Some(p)
        }
    };
    let (addr, admin_path, pid) = match &own {
        Some(p) => (p.addr, p.admin.clone(), Some(p.pid())),
        None => (
            config
                .daemon
                .ok_or_else(|| BenchError::Setup("no daemon".into()))?,
            config.admin_socket.clone().ok_or_else(|| {
                BenchError::Setup(
                    "--daemon needs --admin-socket (for enrolment codes and status)".into(),
                )
            })?,
            config.daemon_pid,
        ),
    };
    // The yardstick runs beside the phases it is compared with (`redis::Running`).
    let redis = match config.redis {
        false => None,
        true => match redis::Yardstick::find() {
            Some(y) => Some(y.start(tmp.path(), config.clients).await?),
            None => {
                report.note(
                    "redis yardstick skipped: redis-server or redis-benchmark not found (apt-get install redis-server redis-tools)",
                );
                None
            }
        },
    };
    let mut redis_runs = Vec::new();
    let mut memory = Memory {
        pid,
        ..Memory::default()
    };
    memory.baseline_kib = pid.and_then(daemon::rss_kib);

    // Enrolment: one code per server from the admin socket, then one session each.
    let codes = daemon::issue_codes(&admin_path, config.servers, config.clients.min(16)).await?;
    let identities = (0..config.servers)
        .map(|i| Identity::new(i, codes.get(i).cloned()))
        .collect::<Result<Vec<Identity>, _>>()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let (mut fleet, enrol) = Fleet::connect(addr, identities, config.clients).await;
    report.push(enrol);
    if fleet.connected() < config.servers {
        report.fail(format!(
            "only {} of {} servers connected; later phases run with those",
            fleet.connected(),
            config.servers
        ));
    }
    memory.connected_kib = pid.and_then(daemon::rss_kib);

    let storm = measured(
        pid,
        fleet.run_phase(
            "checkout_storm",
            config.clients,
            &PhasePlan::storm(&fleet, config.cameras),
        ),
    )
    .await;
    report.push(storm);
    // Memory per lease as it stays, not while a snapshot is written (the peak shows that).
    settle(&admin_path).await?;
    memory.leased_kib = pid.and_then(daemon::rss_kib);

    let heartbeats = measured(
        pid,
        fleet.run_phase(
            "heartbeats",
            config.clients,
            &PhasePlan::heartbeats(&fleet, config.heartbeats),
        ),
    )
    .await;
    report.push(heartbeats);

    // Like for like with redis-benchmark: as many connections as its clients, one
    // request in flight on each, while the daemon holds every lease and connection; each
    // round followed at once by redis doing the same over TLS. Durable checkouts come
    // first, so redis's SETs leave the keys its GETs read.
    let checkouts = LikeForLike {
        name: "checkouts_like_redis",
        test: "SET",
        clients: config.clients,
        rounds: config.rounds,
        plan: PhasePlan::checkouts_like_redis(
            &fleet,
            config.clients,
            config.cameras,
            config.checkouts,
        ),
        admin: &admin_path,
    };
    let checkouts_made = checkouts
        .run(&fleet, pid, redis.as_ref(), &mut report, &mut redis_runs)
        .await?;
    let expected_leases = config.leases() + checkouts_made;
    let heartbeats = LikeForLike {
        name: "heartbeats_like_redis",
        test: "GET",
        clients: config.clients,
        rounds: config.rounds,
        plan: PhasePlan::heartbeats_like_redis(&fleet, config.clients, config.heartbeats),
        admin: &admin_path,
    };
    let heartbeats_made = heartbeats
        .run(&fleet, pid, redis.as_ref(), &mut report, &mut redis_runs)
        .await?;

    let moves = measured(
        pid,
        fleet.run_phase(
            "move_churn",
            config.clients,
            &PhasePlan::moves(&fleet, config.cameras, config.moves),
        ),
    )
    .await;
    report.push(moves);

    report.push(status_phase(&admin_path, config.clients, config.status_queries).await);
    let leases = in_use(&admin_path).await?;
    if leases != expected_leases as u64 {
        report.fail(format!(
            "the daemon counts {leases} cameras in use after the storm, the checkouts and the moves, expected {expected_leases}"
        ));
    }
    settle(&admin_path).await?;
    memory.live_kib = pid.and_then(daemon::rss_kib);
    memory.peak_kib = pid.and_then(daemon::hwm_kib);

    // Restart at the final lease count, connections open: first after a crash (SIGKILL),
    // then as an upgrade would (SIGTERM).
    if let Some(p) = own.as_mut() {
        fleet.expect_disconnect();
        let crash = p.crash_restart(addr).await?;
        let restart = p.restart(addr).await?;
        memory.restarted_kib = Some(restart.rss_kib);
        report.restart = Some(Restart {
            leases,
            crash_ready_ms: Some(crash.as_secs_f64() * 1e3),
            ..restart.figures
        });
        memory.pid = Some(p.pid());
        let states = fleet.close().await;
        let (again, reconnect) = Fleet::reconnect(addr, states, config.clients).await;
        fleet = again;
        report.push(reconnect);
    } else {
        report.note("restart not measured: the daemon was started elsewhere (--daemon)");
    }

    // The daemon was restarted above: its CPU is read from the new process.
    let pid = own.as_ref().map(|p| p.pid()).or(pid);
    let release_plan = PhasePlan::release(&fleet).await;
    let release = measured(
        pid,
        fleet.run_phase("release", config.clients, &release_plan),
    )
    .await;
    report.push(release);
    let left = in_use(&admin_path).await?;
    if left != 0 {
        report.fail(format!(
            "{left} cameras still in use after the release phase"
        ));
    }
    fleet.close().await;
    memory.finish(config.servers, config.leases(), expected_leases);
    report.memory = memory;
    if let Some(p) = own.take() {
        p.stop().await;
    }

    if let Some(r) = redis {
        // Plain TCP, for reference only: SET first, as over TLS.
        for (test, n) in [("SET", checkouts_made), ("GET", heartbeats_made)] {
            if n > 0 {
                redis_runs.push(r.run(test, false, n).await?);
            }
        }
        drop(r);
        report.comparisons = Comparison::build(&report, &redis_runs);
        report.redis = redis_runs;
    }
    report.load_average.1 = report::load_average();
    report.total_seconds = started.elapsed().as_secs_f64();
    report.finished_at = Timestamp::from_system_time(std::time::SystemTime::now());
    Ok(report)
}

/// A phase compared with redis, run in rounds: each round is the whole plan and
/// redis-benchmark with as many requests (`test` over TLS, SET with `appendfsync
/// always`), netkey first in odd rounds and redis first in even ones, so a steady drift in
/// the machine's speed does not always favour the same side. Before each round the daemon
/// finishes any checkpoint or snapshot under way (it would take CPU from whichever side
/// runs), and from the second round on the cameras the round before checked out are
/// released first, untimed, so every round starts from the same leases and the last
/// leaves them as one round would. The report gets each round, and the phase and redis's
/// run with every round's requests.
struct LikeForLike<'a> {
    name: &'static str,
    test: &'static str,
    clients: usize,
    rounds: usize,
    plan: PhasePlan,
    admin: &'a std::path::Path,
}

impl LikeForLike<'_> {
    /// Runs every round; returns the requests one round makes.
    async fn run(
        self,
        fleet: &Fleet,
        pid: Option<u32>,
        redis: Option<&redis::Running>,
        report: &mut Report,
        redis_runs: &mut Vec<report::RedisRun>,
    ) -> Result<usize, BenchError> {
        if self.plan.is_empty() {
            report.push(fleet.run_phase(self.name, self.clients, &self.plan).await);
            return Ok(0);
        }
        let rounds = self.rounds.max(1);
        let undo = self.plan.undoing_checkouts();
        let leases_before = in_use(self.admin).await?;
        let mut all = report::Recorder::new();
        let (mut wall, mut drivers, mut cpu) = (Duration::ZERO, 1, Some(0.0));
        let mut theirs = Vec::new();
        for k in 1..=rounds {
            if k > 1 && !undo.is_empty() {
                let undone = fleet.run_phase(self.name, self.clients, &undo).await;
                let leases = in_use(self.admin).await?;
                if undone.errors > 0 || leases != leases_before {
                    report.fail(format!(
                        "{} stopped after {} of {rounds} rounds: releasing the round's cameras left {leases} in use where {leases_before} were before it ({} errors: {})",
                        self.name,
                        k - 1,
                        undone.errors,
                        undone.error_samples.join("; ")
                    ));
                    break;
                }
            }
            settle(self.admin).await?;
            let redis_first = k % 2 == 0;
            let mut yardstick = match redis_first {
                true => self.yardstick(redis).await?,
                false => None,
            };
            let ((rec, d, took), used) =
                daemon::with_cpu(pid, fleet.run_recorded(self.clients, &self.plan)).await;
            if !redis_first {
                yardstick = self.yardstick(redis).await?;
            }
            drivers = d;
            wall += took;
            cpu = cpu.zip(used).map(|(sum, c)| sum + c);
            all.merge(&rec);
            let mut ours = rec.finish(self.name, d, took);
            ours.server_cpu_us_per_op = daemon::cpu_per_op(used, ours.ops);
            let round = report::Round {
                phase: self.name.to_string(),
                round: k,
                netkey: ours,
                redis: yardstick.clone(),
            };
            if rounds > 1 {
                eprintln!(
                    "netkey-bench: {} round {k} of {rounds}: {:.0}/s{}",
                    self.name,
                    round.netkey.ops_per_sec,
                    round
                        .ratio()
                        .map_or(String::new(), |x| format!(", {x:.2} of redis's"))
                );
            }
            theirs.extend(yardstick);
            report.rounds.push(round);
        }
        let mut phase = all.finish(self.name, drivers, wall);
        phase.server_cpu_us_per_op = daemon::cpu_per_op(cpu, phase.ops);
        report.push(phase);
        redis_runs.extend(report::RedisRun::combine(&theirs));
        Ok(self.plan.len())
    }

    /// redis-benchmark's run for one round (none without the yardstick).
    async fn yardstick(
        &self,
        redis: Option<&redis::Running>,
    ) -> Result<Option<report::RedisRun>, BenchError> {
        match redis {
            Some(r) => r.run(self.test, true, self.plan.len()).await.map(Some),
            None => Ok(None),
        }
    }
}

/// Runs a phase and notes the daemon's CPU time per request during it.
async fn measured(
    pid: Option<u32>,
    phase: impl std::future::Future<Output = PhaseResult>,
) -> PhaseResult {
    let (mut result, used) = daemon::with_cpu(pid, phase).await;
    result.server_cpu_us_per_op = daemon::cpu_per_op(used, result.ops);
    result
}

/// Status queries over the admin socket, one connection per client.
async fn status_phase(admin: &std::path::Path, clients: usize, queries: usize) -> PhaseResult {
    let clients = clients.clamp(1, queries.max(1));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (admin, next) = (admin.to_path_buf(), next.clone());
        tasks.spawn(async move {
            let mut rec = report::Recorder::new();
            let mut conn = match Admin::connect(&admin).await {
                Ok(c) => c,
                Err(e) => {
                    rec.error(e.to_string());
                    return rec;
                }
            };
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < queries {
                let t = Instant::now();
                match conn.call(&crate::proto::admin::AdminRequest::Status).await {
                    Ok(_) => rec.record(t.elapsed()),
                    Err(e) => rec.error(e.to_string()),
                }
            }
            rec
        });
    }
    let mut all = report::Recorder::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(rec) => all.merge(&rec),
            Err(e) => all.error(format!("a status client failed: {e}")),
        }
    }
    all.finish("status", clients, started.elapsed())
}

/// Camera seats in use on the daemon's keys.
/// Waits (up to 30 s) until the daemon is writing no checkpoint or snapshot.
async fn settle(admin: &std::path::Path) -> Result<(), BenchError> {
    let mut conn = Admin::connect(admin).await?;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < until {
        let status = conn
            .call(&crate::proto::admin::AdminRequest::Status)
            .await?;
        if !status["store_writing"].as_bool().unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn in_use(admin: &std::path::Path) -> Result<u64, BenchError> {
    let mut conn = Admin::connect(admin).await?;
    let status = conn
        .call(&crate::proto::admin::AdminRequest::Status)
        .await?;
    Ok(status["cameras"].as_u64().unwrap_or(0))
}

/// A pause long enough for the kernel to hand out what was asked, used only while
/// polling for a process to start or stop.
pub(crate) const POLL: Duration = Duration::from_millis(5);

/// The id of camera `camera` of server `server`.
pub fn camera_id(server: usize, camera: usize) -> String {
    // MAC-shaped ids, as real cameras are named: 17 bytes each.
    let n = (server as u64) << 16 | camera as u64;
    let b = n.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[3], b[4], b[5], b[6], b[7]
    )
}

/// Draws `report` (the JSON file) to `png` with the plot script (python3 and matplotlib).
pub fn plot(report: &std::path::Path, png: &std::path::Path) -> Result<(), BenchError> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .arg("-")
        .arg(report)
        .arg(png)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(BenchError::io("cannot run python3 for --plot"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(include_str!("plot.py").as_bytes())
            .map_err(BenchError::io("cannot hand the plot script to python3"))?;
    }
    let status = child.wait().map_err(BenchError::io("python3 for --plot"))?;
    if !status.success() {
        return Err(BenchError::Setup(format!(
            "the plot script failed ({status}); it needs matplotlib (pip install matplotlib)"
        )));
    }
    Ok(())
}
