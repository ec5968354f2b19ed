//! The daemon under test: a real `netkeyd --demo` process on a temporary state directory
//! (killed when dropped), its admin socket, and its memory as /proc tells it.

use super::fleet::{open_session, Identity};
use super::report::Restart;
use super::{BenchError, POLL};
use crate::core::{Command, Core, Timestamp};
use crate::key::{demo_key, Entry};
use crate::proto::admin::{AdminReply, AdminRequest};
use crate::store::{audit, BatchRecord, Store};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Loading a million leases takes a while on a slow disk; a start that takes longer
/// than this is reported as a failure.
const START_TIMEOUT: Duration = Duration::from_secs(300);
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes the DEMO key with enough camera seats for `leases` into a fresh state
/// directory, as the daemon would have committed it. `netkeyd --demo` installs its own
/// 16-seat DEMO key only where none is installed, so it serves this one. (Demo keys are
/// signed with a public constant: anyone can make one this size.)
pub fn seed_state(state: &Path, leases: usize) -> Result<(), BenchError> {
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let mut key = demo_key(now);
    let seats = u32::try_from(leases.max(16))
        .map_err(|_| BenchError::Setup(format!("{leases} leases do not fit in one key entry")))?;
    let not_after = key
        .entries
        .first()
        .map_or(now.plus(366 * crate::core::time::DAY), |e| e.not_after);
    key.entries.retain(|e| e.feature != "camera");
    key.entries.insert(
        0,
        Entry {
            feature: "camera".into(),
            count: seats,
            not_after,
            order: "BENCH".into(),
        },
    );
    let command = Command::InstallKey {
        document: key,
        demo: true,
    };
    let mut core = Core::new();
    core.apply(now, command.clone());
    let entries = core.drain_events().iter().map(audit::entry_for).collect();
    let (mut store, _) = Store::open(state).map_err(|e| BenchError::Setup(e.to_string()))?;
    store
        .commit(
            &BatchRecord {
                now,
                commands: vec![command],
            },
            entries,
            true,
        )
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok(())
}

/// A running `netkeyd`, killed if still running when dropped.
#[derive(Debug)]
pub struct NetkeydProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: PathBuf,
    netkeyd: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl NetkeydProcess {
    /// Starts `netkeyd --demo --no-broadcast` and waits until it says where it listens
    /// (on `listen`, or a free loopback port).
    pub async fn spawn(
        netkeyd: &Path,
        state: &Path,
        admin: &Path,
        listen: Option<SocketAddr>,
        log: &Path,
    ) -> Result<NetkeydProcess, BenchError> {
        let from = std::fs::metadata(log).map_or(0, |m| m.len());
        let child = launch(netkeyd, state, admin, listen, log)?;
        let mut p = NetkeydProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: admin.to_path_buf(),
            netkeyd: netkeyd.to_path_buf(),
            state: state.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = read_from(log, from);
            // "netkeyd DEMO mode: listening on 127.0.0.1:PORT, daemon id ..."
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.split("DEMO mode: listening on ").nth(1))
                .and_then(|rest| rest.split(',').next())
                .and_then(|a| a.trim().parse().ok())
            {
                p.addr = addr;
                return Ok(p);
            }
            p.check_running()?;
            if Instant::now() > deadline {
                return Err(BenchError::Daemon(format!(
                    "did not say where it listens within {START_TIMEOUT:?}; its log: {}",
                    p.log.display()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_running(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Daemon(format!(
                "exited ({status}): {}",
                tail(&self.log)
            ))),
            Err(e) => Err(BenchError::Daemon(format!("cannot watch the process: {e}"))),
        }
    }

    /// SIGTERM, then waits for the process to exit; returns how long that took.
    async fn terminate(&mut self) -> Result<Duration, BenchError> {
        let t = Instant::now();
        // kill(1), as the tests do: the crate forbids the unsafe a direct call needs.
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|e| BenchError::Daemon(format!("cannot run kill -TERM: {e}")))?;
        if !sent.success() {
            return Err(BenchError::Daemon(format!("kill -TERM failed ({sent})")));
        }
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(t.elapsed()),
                Ok(None) if t.elapsed() > STOP_TIMEOUT => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(BenchError::Daemon(format!(
                        "did not stop within {STOP_TIMEOUT:?} of SIGTERM"
                    )));
                }
                Ok(None) => tokio::time::sleep(POLL).await,
                Err(e) => return Err(BenchError::Daemon(format!("cannot watch the process: {e}"))),
            }
        }
    }

    /// SIGTERM, then a new process on the same state directory and address; measures
    /// the stop, the start until a Hello is answered, and the memory once ready.
    pub async fn restart(&mut self, addr: SocketAddr) -> Result<Restarted, BenchError> {
        let shutdown = self.terminate().await?;
        let ready = self.start_again(addr).await?;
        Ok(Restarted {
            figures: Restart {
                leases: 0,
                shutdown_ms: shutdown.as_secs_f64() * 1e3,
                ready_ms: ready.as_secs_f64() * 1e3,
                crash_ready_ms: None,
            },
            rss_kib: rss_kib(self.pid()).unwrap_or(0),
        })
    }

    /// SIGKILL, as a crash or a power cut would stop it, then a new process on the same
    /// state directory and address; returns how long the start took until a Hello was
    /// answered. No snapshot is written on the way out: the start replays the log since
    /// the last one.
    pub async fn crash_restart(&mut self, addr: SocketAddr) -> Result<Duration, BenchError> {
        self.child
            .kill()
            .map_err(|e| BenchError::Daemon(format!("cannot kill the daemon: {e}")))?;
        self.child
            .wait()
            .map_err(|e| BenchError::Daemon(format!("cannot watch the process: {e}")))?;
        self.start_again(addr).await
    }

    /// Starts a new process on the same state directory and address, and waits until it
    /// answers a Hello; returns how long that took.
    async fn start_again(&mut self, addr: SocketAddr) -> Result<Duration, BenchError> {
        let t = Instant::now();
        self.child = launch(
            &self.netkeyd,
            &self.state,
            &self.admin,
            Some(addr),
            &self.log,
        )?;
        let deadline = t + START_TIMEOUT;
        let probe = Identity::probe().map_err(|e| BenchError::Setup(e.to_string()))?;
        loop {
            if open_session(addr, &mut probe.clone()).await.is_ok() {
                break;
            }
            self.check_running()?;
            if Instant::now() > deadline {
                return Err(BenchError::Daemon(format!(
                    "did not answer within {START_TIMEOUT:?} of a restart"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(t.elapsed())
    }

    /// Stops the daemon cleanly (SIGTERM), killing it if it does not stop.
    pub async fn stop(mut self) {
        let _ = self.terminate().await;
    }
}

impl Drop for NetkeydProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a restart measured.
#[derive(Debug)]
pub struct Restarted {
    pub figures: Restart,
    pub rss_kib: u64,
}

fn launch(
    netkeyd: &Path,
    state: &Path,
    admin: &Path,
    listen: Option<SocketAddr>,
    log: &Path,
) -> Result<Child, BenchError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(BenchError::io(format!("cannot open {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(BenchError::io(format!("cannot open {}", log.display())))?;
    let listen = listen.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
    std::process::Command::new(netkeyd)
        .args(["--demo", "--no-broadcast", "--log-level", "warn"])
        .args(["--listen", &listen, "--discovery", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(state)
        .arg("--admin-socket")
        .arg(admin)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(BenchError::io(format!(
            "cannot start {}",
            netkeyd.display()
        )))
}

fn read_from(path: &Path, from: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned()
}

fn tail(path: &Path) -> String {
    let text = read_from(path, 0);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// A field of /proc/PID/status in KiB ("VmRSS:   12345 kB").
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// CPU time the process has used, user and system, over all its threads (fields 14 and
/// 15 of /proc/PID/stat, in USER_HZ ticks, which Linux fixes at 100 a second). Read
/// around a phase, it says how much work the server did per request whatever else the
/// machine was doing, where throughput moves with the load.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Runs `work`, and says how much CPU time (seconds) process `pid` used meanwhile.
pub async fn with_cpu<T>(
    pid: Option<u32>,
    work: impl std::future::Future<Output = T>,
) -> (T, Option<f64>) {
    let before = pid.and_then(cpu_seconds);
    let out = work.await;
    let after = pid.and_then(cpu_seconds);
    (out, before.zip(after).map(|(b, a)| a - b))
}

/// Microseconds per operation of `seconds` of CPU time.
pub fn cpu_per_op(seconds: Option<f64>, ops: u64) -> Option<f64> {
    seconds.filter(|_| ops > 0).map(|s| s * 1e6 / ops as f64)
}

/// Resident memory.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// Peak resident memory.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// One admin-socket connection: a JSON request per line, a JSON answer per line.
#[derive(Debug)]
pub struct Admin {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Admin {
    pub async fn connect(path: &Path) -> Result<Admin, BenchError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| BenchError::Admin(format!("cannot connect to {}: {e}", path.display())))?;
        let (read, write) = stream.into_split();
        Ok(Admin {
            read: BufReader::new(read),
            write,
        })
    }

    pub async fn call(&mut self, request: &AdminRequest) -> Result<serde_json::Value, BenchError> {
        let mut line =
            serde_json::to_string(request).map_err(|e| BenchError::Admin(e.to_string()))?;
        line.push('\n');
        self.write
            .write_all(line.as_bytes())
            .await
            .map_err(|e| BenchError::Admin(e.to_string()))?;
        let mut answer = String::new();
        self.read
            .read_line(&mut answer)
            .await
            .map_err(|e| BenchError::Admin(e.to_string()))?;
        let reply: AdminReply = serde_json::from_str(&answer)
            .map_err(|e| BenchError::Admin(format!("unreadable answer {answer:?}: {e}")))?;
        match (reply.ok, reply.error) {
            (Some(v), _) => Ok(v),
            (None, Some(e)) => Err(BenchError::Admin(e)),
            (None, None) => Err(BenchError::Admin("an empty answer".into())),
        }
    }
}

/// `n` enrolment codes for the Default pool, over `parallel` admin connections.
pub async fn issue_codes(
    admin: &Path,
    n: usize,
    parallel: usize,
) -> Result<Vec<String>, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.clamp(1, n.max(1)) {
        let (admin, next) = (admin.to_path_buf(), next.clone());
        tasks.spawn(async move {
            let mut conn = Admin::connect(&admin).await?;
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, BenchError>(got);
                }
                let v = conn
                    .call(&AdminRequest::PoolCode {
                        pool: "Default".into(),
                    })
                    .await?;
                let code = v["code"]
                    .as_str()
                    .ok_or_else(|| BenchError::Admin(format!("no code in {v}")))?;
                got.push((i, code.to_string()));
            }
        });
    }
    let mut codes = vec![String::new(); n];
    while let Some(r) = tasks.join_next().await {
        let got = r.map_err(|e| BenchError::Admin(e.to_string()))??;
        for (i, c) in got {
            codes[i] = c;
        }
    }
    Ok(codes)
}
