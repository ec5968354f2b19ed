//! `netkey-bench` end to end at a tiny scale: it starts the real `netkeyd`, runs every
//! phase with zero errors, and writes a JSON report naming each phase. No timing is
//! asserted: the figures of a run this small mean nothing.

use std::process::Command;

#[test]
fn a_tiny_run_completes_every_phase_without_errors_and_writes_json() {
    tiny_run(None, 1);
}

/// The same with the daemon on worker threads and the core on a thread of its own, as
/// `TOKIO_WORKER_THREADS` asks (netkeyd's default is one event loop), and the
/// like-for-like phases in two rounds.
#[test]
fn a_tiny_run_against_a_daemon_on_worker_threads_completes_every_phase() {
    tiny_run(Some("2"), 2);
}

fn tiny_run(worker_threads: Option<&str>, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let mut bench = Command::new(env!("CARGO_BIN_EXE_netkey-bench"));
    // netkey-bench's environment is its netkeyd's.
    match worker_threads {
        Some(n) => bench.env("TOKIO_WORKER_THREADS", n),
        None => bench.env_remove("TOKIO_WORKER_THREADS"),
    };
    let run = bench
        .args(["--servers", "3", "--cameras", "4", "--clients", "2"])
        .args([
            "--heartbeats",
            "30",
            "--moves",
            "4",
            "--status-queries",
            "5",
            "--checkouts",
            "5",
        ])
        .args(["--rounds", &rounds.to_string()])
        .arg("--no-redis")
        .arg("--netkeyd")
        .arg(env!("CARGO_BIN_EXE_netkeyd"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "netkey-bench failed: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let phase = |name: &str| {
        report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no phase {name} in {report}"))
            .clone()
    };
    // Every phase made exactly the requests it plans, and none failed.
    for (name, ops) in [
        ("enrol", 3),
        ("checkout_storm", 12),
        ("heartbeats", 30),
        // On the first 2 servers (as many as clients): 30 heartbeats, 5 new cameras.
        ("heartbeats_like_redis", 30 * rounds),
        ("checkouts_like_redis", 5 * rounds),
        // 3 servers: one pair, so one mover takes its partner's 4 cameras.
        ("move_churn", 4),
        ("status", 5),
        ("reconnect", 3),
        ("release", 17),
    ] {
        let p = phase(name);
        assert_eq!(p["errors"], 0, "{name}: {p}");
        assert_eq!(p["ops"], ops, "{name}: {p}");
        assert!(p["p99_us"].as_f64().unwrap() > 0.0, "{name}: {p}");
    }
    // Each round of a like-for-like phase makes every request of the phase, and the
    // phase counts them all. (The checkouts of a round before the last are released
    // again: the restart's lease count below says so.)
    let rounds_of = |name: &str| -> Vec<u64> {
        report["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["phase"] == name)
            .map(|r| r["netkey"]["ops"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(rounds_of("checkouts_like_redis"), vec![5; rounds]);
    assert_eq!(rounds_of("heartbeats_like_redis"), vec![30; rounds]);
    assert_eq!(report["leases"], 12);
    assert_eq!(report["restart"]["leases"], 17, "{report}");
    assert!(report["memory"]["restarted_kib"].as_u64().unwrap() > 0);
    assert_eq!(report["failures"], serde_json::json!([]));
    assert_eq!(report["redis"], serde_json::json!([]));
    assert!(stdout.contains("errors: 0"), "{stdout}");
}
