//! Memory benchmark (not a test): what one lease costs the daemon, component by
//! component, at N video servers x 100 cameras (MAC-shaped camera ids, as netkey-bench
//! names them). A counting allocator gives the heap bytes the core holds per lease; VmRSS
//! from /proc gives what the process keeps resident. The store's share is measured by
//! committing the same commands to a real `Store` in a temp dir and snapshotting; the
//! restart figure comes from a fresh process that only opens the store, as netkeyd does.
//! It counts through the system allocator (stats_alloc's `new` is not `const` on stable
//! Rust), while netkeyd runs on jemalloc: heap bytes are the same, resident figures are
//! glibc's; netkey-bench measures netkeyd's own.
//!
//! `cargo bench --bench memory` (1,000,000 leases; `-- --servers 1000` for fewer).
//! For quick iterations: `CARGO_PROFILE_BENCH_LTO=false cargo bench --bench memory`.

mod support;

use netkey::core::{CheckoutItem, Command, Core, Outcome, Timestamp};
use netkey::key::{demo_key, Entry};
use netkey::store::{BatchRecord, Store};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::path::Path;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CAMERAS: usize = 100;
/// Servers checking out at once, as netkey-bench's 50 clients interleave them.
const INTERLEAVE: usize = 50;

/// Live heap bytes and allocations.
fn heap() -> (i64, i64) {
    let s = GLOBAL.stats();
    (
        s.bytes_allocated as i64 - s.bytes_deallocated as i64 + s.bytes_reallocated as i64,
        s.allocations as i64 - s.deallocations as i64,
    )
}

/// Resident memory in bytes (VmRSS).
fn rss() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<i64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn camera_id(server: usize, camera: usize) -> String {
    let n = (server as u64) << 16 | camera as u64;
    let b = n.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[3], b[4], b[5], b[6], b[7]
    )
}

fn server_id(s: usize) -> String {
    // As the daemon names them: "srv-" and 6 random bytes in hex.
    format!("srv-{:012x}", s as u64 * 0x9e37_79b9 % (1 << 48))
}

/// The commands that build the state, batch by batch as the daemon would commit them:
/// enrolments first, then one camera per checkout, `INTERLEAVE` servers at a time. Made
/// as they are used, so no copy of them sits in memory while it is measured.
fn each_batch(now: Timestamp, servers: usize, mut f: impl FnMut(Vec<Command>)) {
    let mut key = demo_key(now);
    key.entries = vec![Entry {
        feature: "camera".into(),
        count: (servers * CAMERAS) as u32,
        not_after: now.plus(365 * 86_400_000),
        order: "BENCH".into(),
    }];
    f(vec![Command::InstallKey {
        document: key,
        demo: true,
    }]);
    for s in 0..servers {
        f(support::enrol_commands(s, server_id(s)).to_vec());
    }
    for first in (0..servers).step_by(INTERLEAVE) {
        let group = first..(first + INTERLEAVE).min(servers);
        for c in 0..CAMERAS {
            f(group
                .clone()
                .map(|s| Command::Checkout {
                    server: server_id(s),
                    key: None,
                    items: vec![CheckoutItem::camera(&camera_id(s, c))],
                    after_wait: false,
                })
                .collect());
        }
    }
}

fn per(bytes: i64, leases: usize) -> f64 {
    bytes as f64 / leases as f64
}

/// One line: the heap (bytes, allocations) grown from `from` to `to`, and `rss`, per lease.
fn row(what: &str, from: (i64, i64), to: (i64, i64), rss: i64, leases: usize) {
    let heap = (to.0 - from.0, to.1 - from.1);
    println!(
        "{what:<44} {:>10.1} {:>10.2} {:>10.1}",
        per(heap.0, leases),
        per(heap.1, leases),
        per(rss, leases)
    );
}

/// What a snapshot of `core` costs: its size per lease, and the time to serialize it (on
/// the daemon's event loop, into a buffer sized from the last) and to load it (at start),
/// best of three.
fn snapshot_cost(core: &Core, leases: usize) {
    let mut serialize = std::time::Duration::MAX;
    let mut load = std::time::Duration::MAX;
    let mut len = 0;
    for _ in 0..3 {
        // Into a buffer sized ahead, as the daemon serializes a snapshot.
        let room = Vec::with_capacity(len + len / 8);
        let t = std::time::Instant::now();
        let bytes = postcard::to_extend(core, room).expect("serialize");
        serialize = serialize.min(t.elapsed());
        len = bytes.len();
        let t = std::time::Instant::now();
        let back: Core = postcard::from_bytes(&bytes).expect("deserialize");
        load = load.min(t.elapsed());
        drop(back);
    }
    println!(
        "snapshot: {:.1} B per lease; serialized in {:.0} ms, loaded in {:.0} ms",
        per(len as i64, leases),
        serialize.as_secs_f64() * 1e3,
        load.as_secs_f64() * 1e3
    );
}

/// Opens the store as netkeyd does at start, in this fresh process.
fn load(dir: &Path, leases: usize) {
    let rss0 = rss();
    let h0 = heap();
    let (store, loaded) = Store::open(dir).expect("open");
    let h1 = heap();
    let rss1 = rss();
    let held: u64 = loaded
        .core
        .server_views(loaded.hwm)
        .iter()
        .map(|s| s.cameras)
        .sum();
    assert_eq!(held as usize, leases, "leases after loading");
    row(
        "restarted: Store::open (core + store)",
        h0,
        h1,
        rss1 - rss0,
        leases,
    );
    drop(store);
    let h2 = heap();
    row(
        "restarted: core alone (store closed)",
        h0,
        h2,
        rss() - rss0,
        leases,
    );
}

/// Core and store together, in this fresh process, as the daemon runs them: each batch
/// applied and committed with its audit records, a snapshot whenever the store asks for
/// one.
fn together(servers: usize) {
    let leases = servers * CAMERAS;
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = Store::open(dir.path()).expect("store");
    let mut core = Core::new();
    let rss0 = rss();
    let h0 = heap();
    let mut snapshots = 0;
    each_batch(now, servers, |batch| {
        for command in batch.clone() {
            core.apply(now, command);
        }
        let audit = core
            .drain_events()
            .iter()
            .map(netkey::store::audit::entry_for)
            .collect();
        store
            .commit(
                &BatchRecord {
                    now,
                    commands: batch,
                },
                audit,
                true,
            )
            .expect("commit");
        if store.wants_snapshot() {
            store.snapshot(&core).expect("snapshot");
            snapshots += 1;
        }
    });
    let h1 = heap();
    row(
        &format!("as the daemon ({snapshots} snapshots on the way)"),
        h0,
        h1,
        rss() - rss0,
        leases,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let (Some(dir), Some(leases)) = (arg("--load"), arg("--leases")) {
        load(Path::new(&dir), leases.parse().expect("--leases N"));
        return;
    }
    let servers: usize = arg("--servers")
        .map(|s| s.parse().expect("--servers N"))
        .unwrap_or(10_000);
    if args.iter().any(|a| a == "--together") {
        together(servers);
        return;
    }
    let leases = servers * CAMERAS;
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    println!("{servers} servers x {CAMERAS} cameras = {leases} leases");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "per lease", "heap B", "allocs", "RSS B"
    );

    // The core alone, built through the real commands.
    let mut core = Core::new();
    let rss0 = rss();
    let h0 = heap();
    each_batch(now, servers, |batch| {
        for command in batch {
            let out = core.apply(now, command);
            assert!(
                !matches!(out, Outcome::Refused(_)),
                "refused while building: {out:?}"
            );
            core.drain_events();
        }
    });
    let h1 = heap();
    let rss1 = rss();
    row("core: leases held", h0, h1, rss1 - rss0, leases);
    snapshot_cost(&core, leases);

    // The store: the same batches committed to the log (durably, as checkouts are), then
    // a snapshot, as the daemon does (core untouched, so the heap growth is the store's).
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = Store::open(dir.path()).expect("store");
    let h2 = heap();
    let rss2 = rss();
    each_batch(now, servers, |batch| {
        store
            .commit(
                &BatchRecord {
                    now,
                    commands: batch,
                },
                Vec::new(),
                true,
            )
            .expect("commit");
    });
    let h3 = heap();
    row(
        "store: log of the commands committed",
        h2,
        h3,
        rss() - rss2,
        leases,
    );
    store.snapshot(&core).expect("snapshot");
    let h4 = heap();
    row("store: + snapshot written", h2, h4, rss() - rss2, leases);
    drop(store);
    drop(core);
    row(
        "after dropping core and store (leftover)",
        h0,
        heap(),
        rss() - rss0,
        leases,
    );

    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--load",
            &dir.path().display().to_string(),
            "--leases",
            &leases.to_string(),
        ])
        .status()
        .expect("load process");
    assert!(status.success(), "the load process failed");
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--together", "--servers", &servers.to_string()])
        .status()
        .expect("core and store process");
    assert!(status.success(), "the core and store process failed");
}
