//! What a benchmark run found: per phase throughput, latency percentiles (hdrhistogram)
//! and errors; the daemon's memory and restart time; the redis yardstick and the ratios.
//! Printed as a table and written as JSON (the plot script reads the JSON).

use super::BenchConfig;
use crate::core::Timestamp;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

/// Error messages kept per phase; the rest are only counted.
const ERROR_SAMPLES: usize = 5;

/// Latencies and errors as a phase goes, one per driver, merged at the end.
#[derive(Debug)]
pub struct Recorder {
    /// Nanoseconds, 1 µs to 100 s, three significant digits.
    hist: Histogram<u64>,
    errors: u64,
    samples: Vec<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        // Fixed, valid bounds: this cannot fail.
        #[allow(clippy::expect_used)]
        let hist =
            Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds");
        Recorder {
            hist,
            errors: 0,
            samples: Vec::new(),
        }
    }

    pub fn record(&mut self, took: Duration) {
        self.hist
            .saturating_record(took.as_nanos().min(u64::MAX as u128) as u64);
    }

    pub fn error(&mut self, e: String) {
        self.errors += 1;
        if self.samples.len() < ERROR_SAMPLES {
            self.samples.push(e);
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.errors += other.errors;
        for e in other.samples {
            if self.samples.len() < ERROR_SAMPLES {
                self.samples.push(e);
            }
        }
    }

    pub fn finish(self, name: &str, clients: usize, wall: Duration) -> PhaseResult {
        let us = |q: f64| self.hist.value_at_quantile(q) as f64 / 1_000.0;
        let ok = self.hist.len();
        let seconds = wall.as_secs_f64();
        PhaseResult {
            name: name.to_string(),
            ops: ok + self.errors,
            clients,
            seconds,
            ops_per_sec: if seconds > 0.0 {
                ok as f64 / seconds
            } else {
                0.0
            },
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.hist.max() as f64 / 1_000.0,
            errors: self.errors,
            error_samples: self.samples,
            server_cpu_us_per_op: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseResult {
    pub name: String,
    /// Requests made (answered or failed).
    pub ops: u64,
    /// Requests in flight at once.
    pub clients: usize,
    pub seconds: f64,
    /// Answered requests per second of the phase's wall time.
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// The daemon's CPU time (user + system) during the phase per request made: the work
    /// a request costs, which machine load does not move the way it moves ops/s.
    #[serde(default)]
    pub server_cpu_us_per_op: Option<f64>,
}

/// The daemon's resident memory (VmRSS, KiB) at each stage, and what it says per
/// connection and per lease.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Memory {
    pub pid: Option<u32>,
    /// Started, key installed, nothing connected.
    pub baseline_kib: Option<u64>,
    /// Every server enrolled and connected.
    pub connected_kib: Option<u64>,
    /// After the checkout storm.
    pub leased_kib: Option<u64>,
    /// After heartbeats, moves and status queries.
    pub live_kib: Option<u64>,
    /// VmHWM before the restart.
    pub peak_kib: Option<u64>,
    /// Restarted on the same state: every lease loaded, no connection yet.
    pub restarted_kib: Option<u64>,
    /// (connected - baseline) / servers: a connection and a server's enrolment.
    pub bytes_per_connection: Option<f64>,
    /// (leased - connected) / leases, while live.
    pub bytes_per_lease: Option<f64>,
    /// (restarted - baseline) / leases: leases and enrolments as loaded from disk.
    pub bytes_per_lease_restarted: Option<f64>,
}

impl Memory {
    /// `leases` after the storm (when `leased_kib` is taken), `restarted` at the restart.
    pub fn finish(&mut self, servers: usize, leases: usize, restarted: usize) {
        let per = |a: Option<u64>, b: Option<u64>, n: usize| match (a, b) {
            (Some(a), Some(b)) if n > 0 => Some((a as f64 - b as f64) * 1024.0 / n as f64),
            _ => None,
        };
        self.bytes_per_connection = per(self.connected_kib, self.baseline_kib, servers);
        self.bytes_per_lease = per(self.leased_kib, self.connected_kib, leases);
        self.bytes_per_lease_restarted = per(self.restarted_kib, self.baseline_kib, restarted);
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Restart {
    pub leases: u64,
    /// SIGTERM until the process exited (it writes a snapshot on the way out).
    pub shutdown_ms: f64,
    /// Start until the first Hello is answered on the licence port.
    pub ready_ms: f64,
    /// The same after SIGKILL (no snapshot on the way out: the log since the last one is
    /// replayed), taken just before the SIGTERM restart.
    #[serde(default)]
    pub crash_ready_ms: Option<f64>,
}

/// One `redis-benchmark` run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedisRun {
    /// GET or SET.
    pub test: String,
    /// "tls" or "tcp".
    pub transport: String,
    /// SET with `appendfsync always`: on disk before the answer.
    pub durable: bool,
    pub clients: usize,
    pub requests: usize,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// redis-server's CPU time (user + system) during the run per request.
    #[serde(default)]
    pub server_cpu_us_per_op: Option<f64>,
}

/// netkey's phase beside its redis yardstick.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub netkey_phase: String,
    pub redis: String,
    pub netkey_ops_per_sec: f64,
    pub redis_ops_per_sec: f64,
    /// netkey / redis throughput: >= 1.0 meets the target.
    pub ratio: f64,
    pub netkey_p99_us: f64,
    pub redis_p99_us: f64,
    /// Server CPU per request on each side.
    #[serde(default)]
    pub netkey_cpu_us_per_op: Option<f64>,
    #[serde(default)]
    pub redis_cpu_us_per_op: Option<f64>,
}

impl Comparison {
    pub fn build(report: &Report, runs: &[RedisRun]) -> Vec<Comparison> {
        let mut out = Vec::new();
        for (phase, test) in [
            ("heartbeats_like_redis", "GET"),
            ("checkouts_like_redis", "SET"),
            ("heartbeats", "GET"),
            ("checkout_storm", "SET"),
        ] {
            let Some(p) = report.phase(phase) else {
                continue;
            };
            for r in runs.iter().filter(|r| r.test == test) {
                out.push(Comparison {
                    netkey_phase: phase.to_string(),
                    redis: format!(
                        "{} {}{}",
                        r.test,
                        r.transport.to_uppercase(),
                        if r.durable { " appendfsync always" } else { "" }
                    ),
                    netkey_ops_per_sec: p.ops_per_sec,
                    redis_ops_per_sec: r.ops_per_sec,
                    ratio: if r.ops_per_sec > 0.0 {
                        p.ops_per_sec / r.ops_per_sec
                    } else {
                        0.0
                    },
                    netkey_p99_us: p.p99_us,
                    redis_p99_us: r.p99_us,
                    netkey_cpu_us_per_op: p.server_cpu_us_per_op,
                    redis_cpu_us_per_op: r.server_cpu_us_per_op,
                });
            }
        }
        out
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub software: String,
    /// "release" or "debug": only release figures mean anything.
    pub build: String,
    pub preset: String,
    /// What the licence connections were (plain TCP before TLS landed).
    pub transport: String,
    pub servers: usize,
    pub cameras_per_server: usize,
    pub leases: usize,
    pub clients: usize,
    pub cpus: usize,
    /// /proc/loadavg's 1-minute figure at the start and at the end: other work on the
    /// machine takes CPU from both sides of the comparison.
    pub load_average: (f64, f64),
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub total_seconds: f64,
    pub phases: Vec<PhaseResult>,
    pub memory: Memory,
    pub restart: Option<Restart>,
    pub redis: Vec<RedisRun>,
    pub comparisons: Vec<Comparison>,
    /// Checks that failed outside any one request (counts that do not add up).
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(config: &BenchConfig, transport: &str) -> Report {
        let now = Timestamp::from_system_time(std::time::SystemTime::now());
        Report {
            software: format!("netkey {}", env!("CARGO_PKG_VERSION")),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
            preset: config.preset.clone(),
            transport: transport.to_string(),
            servers: config.servers,
            cameras_per_server: config.cameras,
            leases: config.leases(),
            clients: config.clients,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_average: (load_average(), 0.0),
            started_at: now,
            finished_at: now,
            total_seconds: 0.0,
            phases: Vec::new(),
            memory: Memory::default(),
            restart: None,
            redis: Vec::new(),
            comparisons: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a phase's result, and says so on stderr: a full run takes minutes.
    pub fn push(&mut self, phase: PhaseResult) {
        eprintln!(
            "netkey-bench: {} done: {} requests in {:.1} s, {:.0}/s, p99 {}, {} errors",
            phase.name,
            phase.ops,
            phase.seconds,
            phase.ops_per_sec,
            us(phase.p99_us),
            phase.errors
        );
        self.phases.push(phase);
    }

    pub fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    pub fn note(&mut self, what: &str) {
        self.notes.push(what.to_string());
    }

    pub fn phase(&self, name: &str) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Every error of every phase, plus the failed checks.
    pub fn errors(&self) -> u64 {
        self.phases.iter().map(|p| p.errors).sum::<u64>() + self.failures.len() as u64
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "netkey-bench ({} build, {} preset): {} servers x {} cameras = {} leases, {} clients in flight, {} CPUs",
            self.build, self.preset, self.servers, self.cameras_per_server, self.leases, self.clients, self.cpus
        );
        let _ = writeln!(s, "licence connections: {}", self.transport);
        let _ = writeln!(
            s,
            "load average (1 min) at start {:.2}, at end {:.2}",
            self.load_average.0, self.load_average.1
        );
        let _ = writeln!(
            s,
            "\n{:<22} {:>9} {:>8} {:>11} {:>10} {:>10} {:>10} {:>10} {:>7} {:>10}",
            "phase", "ops", "clients", "ops/s", "p50", "p99", "p99.9", "max", "errors", "cpu/op"
        );
        for p in &self.phases {
            let _ = writeln!(
                s,
                "{:<22} {:>9} {:>8} {:>11.0} {:>10} {:>10} {:>10} {:>10} {:>7} {:>10}",
                p.name,
                p.ops,
                p.clients,
                p.ops_per_sec,
                us(p.p50_us),
                us(p.p99_us),
                us(p.p999_us),
                us(p.max_us),
                p.errors,
                cpu(p.server_cpu_us_per_op)
            );
        }
        let m = &self.memory;
        let kib =
            |v: Option<u64>| v.map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let bytes = |v: Option<f64>| v.map_or("-".to_string(), |b| format!("{b:.0} B"));
        let _ = writeln!(
            s,
            "\ndaemon memory (VmRSS): baseline {}, connected {}, leased {}, live {}, peak {}, restarted {}",
            kib(m.baseline_kib),
            kib(m.connected_kib),
            kib(m.leased_kib),
            kib(m.live_kib),
            kib(m.peak_kib),
            kib(m.restarted_kib)
        );
        let _ = writeln!(
            s,
            "per connection (with its enrolment): {}; per lease: {} live, {} after a restart",
            bytes(m.bytes_per_connection),
            bytes(m.bytes_per_lease),
            bytes(m.bytes_per_lease_restarted)
        );
        if let Some(r) = &self.restart {
            let _ = writeln!(
                s,
                "restart at {} leases: SIGTERM to exit {:.0} ms, start to ready {:.0} ms",
                r.leases, r.shutdown_ms, r.ready_ms
            );
            if let Some(crash) = r.crash_ready_ms {
                let _ = writeln!(
                    s,
                    "restart after SIGKILL at {} leases (the log since the last snapshot replayed): start to ready {crash:.0} ms",
                    r.leases
                );
            }
        }
        if !self.redis.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<54} {:>11} {:>10} {:>10} | {:>11} {:>10} {:>10} | {:>7}",
                "netkey phase vs redis-benchmark",
                "netkey/s",
                "p99",
                "cpu/op",
                "redis/s",
                "p99",
                "cpu/op",
                "ratio"
            );
            for c in &self.comparisons {
                let _ = writeln!(
                    s,
                    "{:<54} {:>11.0} {:>10} {:>10} | {:>11.0} {:>10} {:>10} | {:>7.2}",
                    format!("{} vs {}", c.netkey_phase, c.redis),
                    c.netkey_ops_per_sec,
                    us(c.netkey_p99_us),
                    cpu(c.netkey_cpu_us_per_op),
                    c.redis_ops_per_sec,
                    us(c.redis_p99_us),
                    cpu(c.redis_cpu_us_per_op),
                    c.ratio
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for f in &self.failures {
            let _ = writeln!(s, "FAILED: {f}");
        }
        for p in self.phases.iter().filter(|p| p.errors > 0) {
            for e in &p.error_samples {
                let _ = writeln!(s, "error in {}: {e}", p.name);
            }
        }
        let _ = writeln!(s, "errors: {}", self.errors());
        s
    }
}

/// The 1-minute load average, 0 where /proc does not say.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Server CPU per request, "-" where it was not measured.
fn cpu(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1} µs"))
}

/// Microseconds, shown in the unit that reads best.
fn us(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.2} s", v / 1_000_000.0)
    } else if v >= 1_000.0 {
        format!("{:.2} ms", v / 1_000.0)
    } else {
        format!("{v:.0} µs")
    }
}
