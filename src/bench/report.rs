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

    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.errors += other.errors;
        for e in &other.samples {
            if self.samples.len() < ERROR_SAMPLES {
                self.samples.push(e.clone());
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

impl RedisRun {
    /// Rounds of the same test as one run: every request over the time they all took
    /// (a round that reports no rate counts neither). redis-benchmark reports percentiles
    /// per run only, so p50 and p99 are each the median of the rounds' figures (not
    /// necessarily from one round), and the maximum is the largest.
    pub fn combine(rounds: &[RedisRun]) -> Option<RedisRun> {
        let first = rounds.first()?;
        let timed = || rounds.iter().filter(|r| r.ops_per_sec > 0.0);
        let requests: usize = timed().map(|r| r.requests).sum();
        let seconds: f64 = timed().map(|r| r.requests as f64 / r.ops_per_sec).sum();
        let cpu = rounds
            .iter()
            .map(|r| r.server_cpu_us_per_op.map(|c| c * r.requests as f64))
            .sum::<Option<f64>>();
        Some(RedisRun {
            requests,
            ops_per_sec: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            p50_us: median(rounds.iter().map(|r| r.p50_us)),
            p99_us: median(rounds.iter().map(|r| r.p99_us)),
            max_us: rounds.iter().map(|r| r.max_us).fold(0.0, f64::max),
            server_cpu_us_per_op: cpu.filter(|_| requests > 0).map(|c| c / requests as f64),
            ..first.clone()
        })
    }
}

/// The middle value (the mean of the two middle ones for an even count), 0 for none.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One round of a like-for-like phase: netkey's part, and redis-benchmark's run with as
/// many requests right after it (none without the yardstick). Taking turns, neither side
/// gets the machine's quiet minutes alone: on a shared machine throughput drifts by tens
/// of percent from minute to minute, for both alike.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Round {
    pub phase: String,
    /// From 1.
    pub round: usize,
    pub netkey: PhaseResult,
    pub redis: Option<RedisRun>,
}

impl Round {
    /// netkey / redis throughput in this round alone.
    pub fn ratio(&self) -> Option<f64> {
        self.redis
            .as_ref()
            .filter(|r| r.ops_per_sec > 0.0)
            .map(|r| self.netkey.ops_per_sec / r.ops_per_sec)
    }
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
    /// For a phase run in rounds, the median of the rounds' p99 on each side (redis's
    /// is always that, as `RedisRun::combine` says).
    pub netkey_p99_us: f64,
    pub redis_p99_us: f64,
    /// Server CPU per request on each side.
    #[serde(default)]
    pub netkey_cpu_us_per_op: Option<f64>,
    #[serde(default)]
    pub redis_cpu_us_per_op: Option<f64>,
    /// The ratio in each round, for a like-for-like phase run in rounds beside this same
    /// redis run: their spread is the noise the headline ratio carries.
    #[serde(default)]
    pub round_ratios: Vec<f64>,
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
                let rounds: Vec<&Round> = report
                    .rounds
                    .iter()
                    .filter(|k| {
                        k.phase == phase
                            && k.redis.as_ref().is_some_and(|x| {
                                x.test == r.test
                                    && x.transport == r.transport
                                    && x.durable == r.durable
                            })
                    })
                    .collect();
                // Like redis's, the median of the rounds' p99 where the phase ran in
                // rounds beside this run: all its requests pooled would let the slowest
                // round set it, against redis's middle one.
                let netkey_p99_us = match rounds.is_empty() {
                    true => p.p99_us,
                    false => median(rounds.iter().map(|k| k.netkey.p99_us)),
                };
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
                    netkey_p99_us,
                    redis_p99_us: r.p99_us,
                    netkey_cpu_us_per_op: p.server_cpu_us_per_op,
                    redis_cpu_us_per_op: r.server_cpu_us_per_op,
                    round_ratios: rounds.iter().filter_map(|k| k.ratio()).collect(),
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
    /// Each like-for-like phase is run in rounds, netkey and redis taking turns: the
    /// phase and the redis run in `redis` are every round's requests together.
    #[serde(default)]
    pub rounds: Vec<Round>,
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
            rounds: Vec::new(),
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
                if c.round_ratios.len() > 1 {
                    let each: Vec<String> =
                        c.round_ratios.iter().map(|r| format!("{r:.2}")).collect();
                    let _ = writeln!(
                        s,
                        "{:<54} in {} rounds, taking turns: {}",
                        "",
                        each.len(),
                        each.join(", ")
                    );
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(requests: usize, ops_per_sec: f64, p99_us: f64, cpu: Option<f64>) -> RedisRun {
        RedisRun {
            test: "SET".into(),
            transport: "tls".into(),
            durable: true,
            clients: 50,
            requests,
            ops_per_sec,
            p50_us: p99_us / 2.0,
            p99_us,
            max_us: p99_us * 3.0,
            server_cpu_us_per_op: cpu,
        }
    }

    fn phase(name: &str, ops: u64, ops_per_sec: f64, latency_us: u64) -> PhaseResult {
        let mut rec = Recorder::new();
        for _ in 0..ops {
            rec.record(Duration::from_micros(latency_us));
        }
        PhaseResult {
            ops_per_sec,
            ..rec.finish(name, 50, Duration::from_secs(1))
        }
    }

    #[test]
    fn rounds_of_redis_combine_into_every_request_over_all_their_time() {
        // 1,000 requests in 1 s, 3,000 in 1 s, 2,000 in 2 s: 6,000 in 4 s, 1,500/s,
        // not the mean of the three rates (1,667/s).
        let all = RedisRun::combine(&[
            set(1_000, 1_000.0, 900.0, Some(20.0)),
            set(3_000, 3_000.0, 1_500.0, Some(10.0)),
            set(2_000, 1_000.0, 1_100.0, Some(40.0)),
        ])
        .unwrap();
        assert_eq!(all.requests, 6_000);
        assert!((all.ops_per_sec - 1_500.0).abs() < 1e-9, "{all:?}");
        assert_eq!(all.p99_us, 1_100.0, "the median round's");
        assert_eq!(all.max_us, 4_500.0);
        // (20 x 1,000 + 10 x 3,000 + 40 x 2,000) / 6,000
        assert!((all.server_cpu_us_per_op.unwrap() - 130_000.0 / 6_000.0).abs() < 1e-9);
        // A round without its CPU figure leaves the whole without one.
        let partial =
            RedisRun::combine(&[set(1, 1.0, 1.0, Some(1.0)), set(1, 1.0, 1.0, None)]).unwrap();
        assert_eq!(partial.server_cpu_us_per_op, None);
        assert!(RedisRun::combine(&[]).is_none());
        // A round without a rate adds neither requests nor time.
        let unrated =
            RedisRun::combine(&[set(1_000, 1_000.0, 1.0, None), set(500, 0.0, 1.0, None)]).unwrap();
        assert_eq!((unrated.requests, unrated.ops_per_sec), (1_000, 1_000.0));
    }

    #[test]
    fn the_median_is_the_middle_or_the_mean_of_the_two_middle_ones() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    #[test]
    fn a_comparison_in_rounds_gives_the_whole_ratio_and_each_round_s() {
        let config = BenchConfig::quick("netkeyd".into());
        let mut report = Report::new(&config, "tls");
        // The phase's pooled p99 (9 ms) is not what either of its rounds had.
        report.push(phase("checkouts_like_redis", 300, 3_000.0, 9_000));
        for (k, (ours, theirs, p99)) in [(900.0, 1_000.0, 400), (1_200.0, 1_000.0, 600)]
            .into_iter()
            .enumerate()
        {
            report.rounds.push(Round {
                phase: "checkouts_like_redis".into(),
                round: k + 1,
                netkey: phase("checkouts_like_redis", 150, ours, p99),
                redis: Some(set(150, theirs, 1_000.0, None)),
            });
        }
        let whole = set(300, 2_000.0, 1_000.0, None);
        let c = Comparison::build(&report, std::slice::from_ref(&whole));
        let like = c
            .iter()
            .find(|c| c.netkey_phase == "checkouts_like_redis")
            .unwrap();
        assert_eq!(like.ratio, 1.5);
        assert_eq!(like.round_ratios, vec![0.9, 1.2]);
        // p99 as redis's is taken: the median of the rounds'.
        assert!((like.netkey_p99_us - 500.0).abs() < 1.0, "{like:?}");
        report.redis = vec![whole.clone()];
        report.comparisons = c.clone();
        let table = report.table();
        assert!(
            table.contains("in 2 rounds, taking turns: 0.90, 1.20"),
            "{table}"
        );
        // A redis run over plain TCP was not one of the rounds.
        let tcp = RedisRun {
            transport: "tcp".into(),
            ..whole
        };
        let c = Comparison::build(&report, &[tcp]);
        assert!(c.iter().all(|c| c.round_ratios.is_empty()), "{c:?}");
        assert!(c.iter().all(|c| c.netkey_p99_us > 8_000.0), "{c:?}");
    }
}
