//! Durability benchmark (not a test): durable checkouts per second with 1, 16 and 64
//! concurrent video servers against an in-process daemon on this machine's disk, and
//! restart-to-ready time with 10^4 and 10^6 leases.
//!
//! `cargo bench --bench durable` (add `-- --quick` for a short run).

use netkey::client::{Client, Trust};
use netkey::core::{CheckoutItem, Command, Core, Outcome, PoolId, Timestamp};
use netkey::daemon::{Config, Daemon, SystemClock};
use netkey::key::{demo_key, Entry};
use netkey::proto::{Request, Response};
use netkey::store::{BatchRecord, Store};
use std::time::{Duration, Instant};

const KEY: &str = "DEMO";

fn big_key(now: Timestamp, cameras: u32) -> netkey::key::KeyDocument {
    let mut k = demo_key(now);
    k.entries = vec![Entry {
        feature: "camera".into(),
        count: cameras,
        not_after: now.plus(365 * 86_400_000),
        order: "BENCH".into(),
    }];
    k
}

async fn durable_checkouts(clients: usize, seconds: u64) -> (f64, Vec<Duration>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_socket: dir.path().join("admin.sock"),
        state_dir: dir.path().join("state"),
        demo: false,
        no_broadcast: true,
        listener: None,
        discovery: None,
        peers: Vec::new(),
        ..Config::default()
    };
    let daemon = Daemon::start(config, SystemClock::new())
        .await
        .expect("daemon");
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    // Signed by the demo vendor and kept with its file, as a demo daemon hosts its key:
    // clients check the file before they enrol.
    let document = big_key(now, 10_000_000);
    let file = netkey::key::demo_vendor().issue(&document).expect("sign");
    for command in [
        Command::InstallKey {
            document,
            demo: true,
        },
        Command::KeyChecked {
            key: KEY.into(),
            binding: "DEMO key: not host-bound".into(),
            refused: None,
            signer: None,
            file: Some(file),
        },
    ] {
        let out = daemon.core().execute(command).await;
        assert!(matches!(out, Ok(Outcome::Done)), "{out:?}");
    }
    let addr = daemon.local_addr().to_string();
    let mut tasks = Vec::new();
    let stop = Instant::now() + Duration::from_secs(seconds);
    for i in 0..clients {
        let code = format!("{:08}", 10_000_000 + i);
        let c2 = code.clone();
        daemon
            .core()
            .execute(Command::CreateCode {
                pool: PoolId::default_of(KEY),
                code: c2,
            })
            .await
            .expect("code");
        let path = dir.path().join(format!("vs{i}.json"));
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::open(&path, Trust::Demo, Some(addr)).expect("client");
            client
                .enrol(&code, &format!("vs{i}"), "1")
                .await
                .expect("enrol");
            // One persistent connection; each checkout is one durable change.
            let mut conn = client.connect().await.expect("connect");
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < stop {
                let req = Request::Checkout {
                    key: None,
                    items: vec![CheckoutItem::camera(&format!("vs{i}-cam{n}"))],
                };
                let t = Instant::now();
                let answer = conn.request(req).await.expect("checkout");
                latencies.push(t.elapsed());
                assert!(matches!(answer, Response::Checkout(_)), "{answer:?}");
                n += 1;
            }
            latencies
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    daemon.shutdown().await;
    all.sort();
    (rate, all)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Builds a state directory holding `servers` x `per_server` leases, committed as the
/// daemon would, and returns the time `Store::open` then takes (with and without a
/// snapshot).
fn restart_time(servers: usize, per_server: usize) -> (Duration, Duration, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    {
        let (mut store, _) = Store::open(dir.path()).expect("store");
        let mut core = Core::new();
        let mut batch = vec![Command::InstallKey {
            document: big_key(now, (servers * per_server) as u32),
            demo: true,
        }];
        for s in 0..servers {
            let code = format!("{s:08}");
            batch.push(Command::CreateCode {
                pool: PoolId::default_of(KEY),
                code: code.clone(),
            });
            batch.push(Command::Enrol {
                request: netkey::core::EnrolRequest {
                    code,
                    name: format!("vs{s}"),
                    version: "1".into(),
                    server_id: format!("srv-{s}"),
                    credential: vec![0; 32],
                    existing: None,
                },
            });
            batch.push(Command::Checkout {
                server: format!("srv-{s}"),
                key: None,
                items: (0..per_server)
                    .map(|c| CheckoutItem::camera(&format!("s{s}-c{c}")))
                    .collect(),
                after_wait: false,
            });
            if batch.len() >= 300 || s + 1 == servers {
                for c in &batch {
                    core.apply(now, c.clone());
                }
                core.drain_events();
                store
                    .commit(
                        &BatchRecord {
                            now,
                            commands: std::mem::take(&mut batch),
                        },
                        Vec::new(),
                        false,
                    )
                    .expect("commit");
            }
        }
        store
            .commit(
                &BatchRecord {
                    now,
                    commands: vec![Command::Advance],
                },
                Vec::new(),
                true,
            )
            .expect("sync");
    }
    let t = Instant::now();
    let (store, loaded) = Store::open(dir.path()).expect("reopen");
    let replay = t.elapsed();
    let leases: u64 = loaded
        .core
        .server_views(now)
        .iter()
        .map(|s| s.cameras)
        .sum();
    let mut store = store;
    store.snapshot(&loaded.core).expect("snapshot");
    drop((store, loaded));
    let t = Instant::now();
    let (_store, loaded) = Store::open(dir.path()).expect("reopen");
    let from_snapshot = t.elapsed();
    assert_eq!(loaded.replayed, 0);
    (replay, from_snapshot, leases)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("durable checkouts (one camera per request, committed with fsync before the answer)");
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>10}",
        "clients", "checkouts/s", "p50", "p99", "p999"
    );
    for clients in [1, 16, 64] {
        let (rate, lat) = rt.block_on(durable_checkouts(clients, if quick { 2 } else { 8 }));
        println!(
            "{clients:>8} {rate:>12.0} {:>10.2?} {:>10.2?} {:>10.2?}",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 0.999)
        );
    }
    println!("\nrestart to ready (Store::open: load and replay)");
    println!(
        "{:>10} {:>16} {:>16}",
        "leases", "log replay", "from snapshot"
    );
    let sizes: &[(usize, usize)] = if quick {
        &[(100, 100)]
    } else {
        &[(100, 100), (10_000, 100)]
    };
    for &(servers, per) in sizes {
        let (replay, snap, leases) = restart_time(servers, per);
        println!("{leases:>10} {replay:>16.2?} {snap:>16.2?}");
    }
}
