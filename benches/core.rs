//! Core benchmark (not a test): what one durable checkout costs the allocation core
//! itself, with no network, TLS or disk, at the scale netkey-bench's full preset runs:
//! 10,000 servers holding 100 cameras each. Fifty of them then check out new cameras one
//! per request, in batches of 25, as `checkouts_like_redis` does through the daemon.
//!
//! `cargo bench --bench core` (add `-- --quick` for 1,000 servers). It prints five rounds
//! and the best. Each round adds 100,000 leases (1.0 to 1.5 million over the five) and
//! 2,000 cameras to each of the fifty servers' holdings, so later rounds run on a larger
//! state and the best is usually the first: compare builds by the best, or round by round.

mod support;

use netkey::bench::camera_id;
use netkey::core::{CameraOutcome, CheckoutItem, Command, Core, Outcome, Timestamp};
use netkey::key::{demo_key, Entry};
use std::time::Instant;

// The daemon's allocator, so allocation costs what it costs in netkeyd.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CLIENTS: usize = 50;
const BATCH: usize = 25;
const PER_ROUND: usize = 100_000;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (servers, cameras) = if quick { (1_000, 100) } else { (10_000, 100) };
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let mut key = demo_key(now);
    key.entries = vec![Entry {
        feature: "camera".into(),
        count: u32::try_from(servers * cameras + 10 * PER_ROUND).expect("seats fit in u32"),
        not_after: now.plus(365 * 86_400_000),
        order: "BENCH".into(),
    }];
    let mut core = Core::new();
    let built = Instant::now();
    core.apply(
        now,
        Command::InstallKey {
            document: key,
            demo: true,
        },
    );
    for s in 0..servers {
        let [code, enrol] = support::enrol_commands(s, server_id(s));
        core.apply(now, code);
        let outcome = core.apply(now, enrol);
        assert!(matches!(outcome, Outcome::Enrolled(_)), "{outcome:?}");
        core.apply(
            now,
            Command::Checkout {
                server: server_id(s),
                key: None,
                items: (0..cameras)
                    .map(|c| CheckoutItem::camera(&camera_id(s, c)))
                    .collect(),
                after_wait: false,
            },
        );
        core.drain_events();
    }
    println!(
        "core with {} leases on {servers} servers built in {:.1?}",
        servers * cameras,
        built.elapsed()
    );

    let mut best = f64::MAX;
    for round in 0..5 {
        // Made before the clock starts: the daemon decodes them from the network. Each
        // client's next camera follows its last, as netkey-bench's ids do.
        let commands: Vec<Command> = (0..PER_ROUND)
            .map(|i| {
                let s = i % CLIENTS;
                let camera = cameras + round * PER_ROUND / CLIENTS + i / CLIENTS;
                Command::Checkout {
                    server: server_id(s),
                    key: None,
                    items: vec![CheckoutItem::camera(&camera_id(s, camera))],
                    after_wait: false,
                }
            })
            .collect();
        let started = Instant::now();
        let mut granted = 0usize;
        for batch in commands.chunks(BATCH) {
            for command in batch {
                if let Outcome::Checkout(answer) = core.apply_ref(now, command) {
                    granted += answer
                        .outcomes
                        .iter()
                        .filter(|(_, o)| matches!(o, CameraOutcome::Granted { .. }))
                        .count();
                }
            }
            std::hint::black_box(core.drain_events());
        }
        let ns = started.elapsed().as_nanos() as f64 / PER_ROUND as f64;
        assert_eq!(granted, PER_ROUND, "every checkout is granted");
        println!("round {}: {ns:.0} ns per checkout", round + 1);
        best = best.min(ns);
    }
    println!("best: {best:.0} ns per single-camera checkout");
}

fn server_id(s: usize) -> String {
    format!("srv-{s:012x}")
}
