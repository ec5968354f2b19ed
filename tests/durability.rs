//! Durability with the real binaries: SIGKILL at random moments loses nothing that was
//! acknowledged; one daemon per state directory; the audit log shows tampering; backups
//! restore; a full or read-only disk refuses changes instead of acknowledging them.

use crate::util::*;
use netkey::client::{Client, Trust};
use netkey::core::{CameraOutcome, CheckoutItem};
use std::collections::BTreeMap;
use std::process::Command;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let d = DaemonProcess::start_demo();
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netkeyd"))
        .args([
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--discovery",
            "127.0.0.1:0",
            "--log-level",
            "error",
        ])
        .arg("--state-dir")
        .arg(d.state_dir())
        .arg("--admin-socket")
        .arg(other.path().join("admin.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another netkeyd already uses the state directory"),
        "{}",
        stderr(&out)
    );
}

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a client last saw acknowledged for a camera.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Held(u64),
    Released,
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    sigkill_at_random_moments(&[]);
}

/// The same with a snapshot every few batches, so kills land while one is written on
/// its blocking thread (and while the journal waits for it to be checkpointed).
#[test]
fn sigkill_while_snapshots_are_written_loses_nothing_acknowledged() {
    sigkill_at_random_moments(&["--snapshot-every", "7"]);
}

fn sigkill_at_random_moments(flags: &[&str]) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut d = DaemonProcess::start_demo_with(flags);
    let rt = tokio::runtime::Runtime::new().unwrap();
    const CLIENTS: usize = 6;
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("vs{i}")).collect();
    for n in &names {
        let code = d.code();
        assert!(d.client(n, &["enrol", &code, "--name", n]).status.success());
    }
    // Every client works its own cameras; moves happen between neighbours.
    let mut seen: BTreeMap<(usize, String), Seen> = BTreeMap::new();
    for round in 0..5 {
        let addr = d.addr.clone();
        let kill_after = std::time::Duration::from_millis(50 + rng.below(250));
        let seeds: Vec<u64> = (0..CLIENTS).map(|_| rng.next()).collect();
        let dir = d.dir.path().to_path_buf();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (addr, dir, seed) = (addr.clone(), dir.clone(), seeds[i]);
                rt.spawn(async move {
                    let mut rng = Rng(seed | 1);
                    let path = dir.join(format!("vs{i}.json"));
                    let mut acked: Vec<((usize, String), Seen)> = Vec::new();
                    let mut in_flight: Option<String> = None;
                    for _ in 0..200 {
                        let Ok(mut c) = Client::open(&path, Trust::Demo, Some(addr.clone())) else {
                            break;
                        };
                        let own = format!("cam-{i}-{}", rng.below(2));
                        let op = rng.below(3);
                        let cam = if op == 1 {
                            format!("cam-{}-{}", (i + 1) % CLIENTS, rng.below(2))
                        } else {
                            own.clone()
                        };
                        let result = match op {
                            0 | 1 => {
                                // Checkout of an own camera, or (op 1) a neighbour's: a move.
                                let cam = cam.clone();
                                c.checkout(vec![CheckoutItem::camera(&cam)])
                                    .await
                                    .map(|out| {
                                        if let Some((_, CameraOutcome::Granted { epoch, .. })) =
                                            out.first()
                                        {
                                            acked.push(((i, cam), Seen::Held(*epoch)));
                                        }
                                    })
                            }
                            _ => c.release(vec![own.clone()]).await.map(|out| {
                                if out.first().is_some_and(|(_, r)| r.is_none()) {
                                    acked.push(((i, own), Seen::Released));
                                }
                            }),
                        };
                        if result.is_err() {
                            // The daemon died mid-request: it may or may not have made
                            // (and saved) this change before dying.
                            in_flight = Some(cam);
                            break;
                        }
                    }
                    (acked, in_flight)
                })
            })
            .collect();
        std::thread::sleep(kill_after);
        d.crash_and_restart();
        let mut uncertain = Vec::new();
        for t in tasks {
            let (acked, in_flight) = rt.block_on(t).unwrap();
            for (k, v) in acked {
                seen.insert(k, v);
            }
            uncertain.extend(in_flight);
        }
        // Every acknowledged state is what the restarted daemon holds, unless a later
        // acknowledged move by another client took the camera.
        let cams = d.json(&["camera", "list"]);
        let servers = d.json(&["server", "list"]);
        let id_of = |name: &str| {
            servers
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .unwrap()["server_id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let held: BTreeMap<String, (String, u64)> = cams
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["state"] == "held")
            .map(|c| {
                (
                    c["camera_id"].as_str().unwrap().to_string(),
                    (
                        c["server_id"].as_str().unwrap().to_string(),
                        c["epoch"].as_u64().unwrap(),
                    ),
                )
            })
            .collect();
        for ((i, cam), s) in &seen {
            if uncertain.contains(cam) {
                continue;
            }
            let me = id_of(&names[*i]);
            match (s, held.get(cam)) {
                (Seen::Held(e), Some((holder, epoch))) => {
                    // Held by me at that epoch, or moved on to a later epoch.
                    if !((holder == &me && epoch == e) || epoch > e) {
                        let audit = d.ctl_ok(&["audit"]);
                        let lines: Vec<&str> =
                            audit.lines().filter(|l| l.contains(cam.as_str())).collect();
                        eprintln!("audit of {cam}:\n{}", lines.join("\n"));
                    }
                    assert!(
                        (holder == &me && epoch == e) || epoch > e,
                        "round {round}: {cam} acknowledged to {me} at epoch {e}, daemon has {holder} at {epoch} (seed {seed})"
                    );
                }
                (Seen::Held(e), None) => {
                    // Released since: only by an acknowledged release (recorded later) or a
                    // move whose old lease is revoking.
                    let revoking = cams
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|c| c["camera_id"] == cam.as_str() && c["state"] == "revoking");
                    let later_release = seen
                        .iter()
                        .any(|((_, c), s)| c == cam && *s == Seen::Released);
                    assert!(revoking || later_release, "round {round}: {cam} acknowledged held at {e} by {me} is gone (seed {seed})");
                }
                (Seen::Released, Some((holder, _))) => {
                    assert!(
                        holder != &me
                            || seen.iter().any(|((j, c), s)| c == cam
                                && *j == *i
                                && matches!(s, Seen::Held(_))),
                        "round {round}: {cam} released by {me} but still held by it (seed {seed})"
                    );
                }
                (Seen::Released, None) => {}
            }
        }
        // Invariants 1 and 2 after the restart.
        let in_use = d.camera_in_use();
        assert!(
            in_use <= 16,
            "round {round}: {in_use} camera seats in use of 16 (seed {seed})"
        );
        assert_eq!(
            held.len(),
            cams.as_array()
                .unwrap()
                .iter()
                .filter(|c| c["state"] == "held")
                .count()
        );
        // Forget what later rounds may legitimately change, and what is uncertain.
        seen.retain(|(_, c), s| matches!(s, Seen::Held(_)) && !uncertain.contains(c));
    }
}

#[test]
fn an_edited_audit_record_is_named_and_truncation_shows_against_an_anchor() {
    let mut d = DaemonProcess::start_demo();
    let code = d.code();
    assert!(d
        .client("a", &["enrol", &code, "--name", "A"])
        .status
        .success());
    assert!(d
        .client("a", &["checkout", "c1", "c2", "c3"])
        .status
        .success());
    assert!(d.client("a", &["release", "c2"]).status.success());
    // The client's state file keeps the head of its latest heartbeat answer.
    assert!(d.client("a", &["status"]).status.success());
    let anchor = d.state("a");
    let export = d.json(&["audit", "--format", "json"]);
    let count = export["head"]["count"].as_u64().unwrap();
    assert!(count >= 6, "{export}");
    assert!(d
        .ctl_ok(&["audit", "verify", "--anchor", anchor.to_str().unwrap()])
        .contains("intact"));
    let csv = d.ctl_ok(&["audit", "--format", "csv"]);
    assert!(
        csv.starts_with("index,at,action,") && csv.contains(",granted,"),
        "{csv}"
    );

    // Root edits record 3 behind the daemon's back.
    d.stop();
    {
        let (mut store, _) = netkey::store::Store::open(&d.state_dir()).unwrap();
        let mut r = store.audit_records(None).unwrap()[2].clone();
        r.detail = "nothing to see here".into();
        store.tamper_audit_record(3, &r).unwrap();
    }
    d.start_again();
    let out = d.ctl(&["audit", "verify"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("audit record 3 was altered"),
        "{}",
        stderr(&out)
    );

    // Root cuts the tail instead: the chain alone looks fine; the anchor proves the cut.
    d.stop();
    {
        let (mut store, _) = netkey::store::Store::open(&d.state_dir()).unwrap();
        let mut r = store.audit_records(None).unwrap()[2].clone();
        r.detail = export["records"][2]["detail"].as_str().unwrap().to_string();
        store.tamper_audit_record(3, &r).unwrap();
        store.truncate_audit(count - 2).unwrap();
    }
    d.start_again();
    assert!(
        d.ctl(&["audit", "verify"]).status.success(),
        "the shortened chain is self-consistent"
    );
    let out = d.ctl(&["audit", "verify", "--anchor", anchor.to_str().unwrap()]);
    assert!(!out.status.success());
    let why = stderr(&out);
    assert!(
        why.contains("truncated") || why.contains("rewritten"),
        "{why}"
    );
}

#[test]
fn backup_while_running_then_restore_elsewhere() {
    let d = DaemonProcess::start_demo();
    let code = d.code();
    assert!(d
        .client("a", &["enrol", &code, "--name", "A"])
        .status
        .success());
    assert!(d
        .client("a", &["checkout", "c1", "c2", "c3"])
        .status
        .success());
    let file = d.dir.path().join("netkey.backup");
    d.ctl_ok(&["backup", "--out", file.to_str().unwrap()]);
    let target = tempfile::tempdir().unwrap();
    let state = target.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_netkeyd"))
        .arg("--restore")
        .arg(&file)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = DaemonProcess::start_with_state(target);
    assert_eq!(restored.camera_in_use(), 3);
    assert!(restored.ctl_ok(&["audit", "verify"]).contains("intact"));
    let servers = restored.json(&["server", "list"]);
    assert_eq!(servers[0]["name"], "A");
}

/// Whether this test may mount file systems. Elsewhere it says why it skips; under
/// CI=true a skip is a failure.
fn root_or_skip(test: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs root (mount), and CI runs as root"
        );
        eprintln!("skipping {test}: it needs root to mount a small tmpfs / a read-only bind mount");
    }
    root
}

/// A mount that is undone when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    fn run(args: &[&str]) {
        let out = Command::new("mount").args(args).output().unwrap();
        assert!(out.status.success(), "mount {args:?}: {}", stderr(&out));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_changes_keeps_renewing_and_recovers() {
    if !root_or_skip("a_full_disk_refuses_changes_keeps_renewing_and_recovers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    Mount::run(&[
        "-t",
        "tmpfs",
        "-o",
        "size=8m",
        "tmpfs",
        mnt.to_str().unwrap(),
    ]);
    let _mount = Mount(mnt.clone());
    let socket = dir.path().join("admin.sock");
    let (child, addr) = spawn_demo(&mnt.join("state"), &socket);
    let d = DaemonProcess {
        child,
        addr,
        socket,
        dir,
        flags: Vec::new(),
    };
    let code = d.code();
    assert!(d
        .client("a", &["enrol", &code, "--name", "A"])
        .status
        .success());
    assert!(d.client("a", &["checkout", "c0"]).status.success());
    // Fill the file system.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Changes are refused (not acknowledged) once the store cannot write; a few may
    // still fit into pages the store already owns.
    let mut refused = None;
    for i in 1..2000 {
        let out = d.client("a", &["checkout", &format!("c{}", i % 15 + 1)]);
        let _ = d.client("a", &["release", &format!("c{}", i % 15 + 1)]);
        if !out.status.success() {
            refused = Some(stderr(&out));
            break;
        }
    }
    let why = refused.expect("a full disk never refused a change");
    assert!(why.contains("cannot make changes now"), "{why}");
    let status = d.json(&["status"]);
    assert!(status["store_error"].is_string(), "{status}");
    // Heartbeats go on: the client still reaches the daemon.
    let st = d.client("a", &["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
    assert_eq!(
        v["connected"],
        true,
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    // Space comes back: the daemon recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    eventually("the store to accept writes again", || {
        d.client("a", &["checkout", "c14"]).status.success()
    });
    assert!(d.json(&["status"])["store_error"].is_null());
    assert!(d.ctl_ok(&["audit", "verify"]).contains("intact"));
}

#[test]
fn a_read_only_state_directory_is_refused_with_a_clear_message() {
    if !root_or_skip("a_read_only_state_directory_is_refused_with_a_clear_message") {
        return;
    }
    let mut d = DaemonProcess::start_demo();
    let state = d.state_dir();
    d.stop();
    Mount::run(&["--bind", state.to_str().unwrap(), state.to_str().unwrap()]);
    let _mount = Mount(state.clone());
    Mount::run(&["-o", "remount,bind,ro", state.to_str().unwrap()]);
    let sock = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netkeyd"))
        .args([
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--discovery",
            "127.0.0.1:0",
            "--log-level",
            "error",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--admin-socket")
        .arg(sock.path().join("a.sock"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "started on a read-only state directory"
    );
    let why = stderr(&out);
    assert!(
        why.contains("Read-only file system") || why.contains("read-only"),
        "{why}"
    );
    assert_eq!(why.trim().lines().count(), 1, "one line: {why}");
}
