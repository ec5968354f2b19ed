//! The real binaries, end to end: the issue's "done when" walk-through, listings that
//! agree with `status`, and bad input that closes only its own connection.

use crate::util::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn demo_walkthrough_limit_move_release_and_silent_holder() {
    let d = DaemonProcess::start_demo();
    let (code_a, code_b) = (d.code(), d.code());
    assert_ne!(code_a, code_b);
    assert!(d
        .client("a", &["enrol", &code_a, "--name", "A"])
        .status
        .success());
    assert!(d
        .client("b", &["enrol", &code_b, "--name", "B"])
        .status
        .success());
    // Codes are single-use.
    let reuse = d.client("c", &["enrol", &code_a, "--name", "C"]);
    assert!(!reuse.status.success());
    assert!(stderr(&reuse).contains("not valid"), "{}", stderr(&reuse));

    let cams: Vec<String> = (1..=16).map(|i| format!("cam-{i}")).collect();
    let a_out = d.dir.path().join("a.out");
    let a = Background(
        Command::new(env!("CARGO_BIN_EXE_netkeyctl"))
            .args(["client", "--state"])
            .arg(d.state("a"))
            .args(["--demo", "--daemon", &d.addr, "run"])
            .args(&cams)
            .stdout(std::fs::File::create(&a_out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("A to hold 16 cameras", || d.camera_in_use() == 16);

    let over = d.client("b", &["checkout", "cam-17"]);
    assert!(!over.status.success());
    let line = stderr(&over);
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    assert!(
        line.contains("camera") && line.contains("16 in use") && line.contains("16 total"),
        "{line}"
    );
    assert_eq!(d.json(&["status"])["cameras"], 16);

    // B takes one of A's cameras: A acknowledges, no seat is spent.
    let mv = d.client("b", &["checkout", "cam-3"]);
    assert!(mv.status.success(), "{}", stderr(&mv));
    assert_eq!(d.camera_in_use(), 16);
    eventually("A to report the move", || {
        read(&a_out).contains("moved cam-3")
    });
    // B re-claims it: idempotent.
    assert!(d.client("b", &["checkout", "cam-3"]).status.success());
    assert_eq!(d.camera_in_use(), 16);
    // B releases it and takes the 17th.
    assert!(d.client("b", &["release", "cam-3"]).status.success());
    let got = d.client("b", &["checkout", "cam-17"]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(stdout(&got).contains("granted cam-17"));

    // Listings agree with status.
    let cams_json = d.json(&["camera", "list"]);
    let servers = d.json(&["server", "list"]);
    assert_eq!(cams_json.as_array().unwrap().len(), 16);
    let total: u64 = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cameras"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 16);
    let a_row = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "A")
        .unwrap();
    assert_eq!(a_row["cameras"], 15);
    assert_eq!(a_row["state"], "live");
    assert!(a_row["last_checkin"].as_str().unwrap().ends_with('Z'));
    let cam3 = cams_json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["camera_id"] == "cam-17")
        .unwrap();
    assert_eq!(cam3["epoch"], 1);

    // A stops (silent, holding 15): moving one of its cameras needs a spare seat.
    drop(a);
    eventually("A to be silent", || {
        d.json(&["server", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "A" && s["state"] == "silent")
    });
    let silent = d.client("b", &["checkout", "cam-5"]);
    assert!(!silent.status.success());
    assert!(
        stderr(&silent).contains("did not release it"),
        "{}",
        stderr(&silent)
    );
    assert_eq!(d.camera_in_use(), 16);
}

#[test]
fn json_listings_use_the_documented_shapes() {
    let d = DaemonProcess::start_demo();
    let s = d.json(&["status"]);
    let seats = &s["keys"][0]["seats"][0];
    for field in ["feature", "in_use", "total"] {
        assert!(seats.get(field).is_some(), "status seats lack {field}: {s}");
    }
    assert_eq!(s["keys"][0]["demo"], true);
    assert!(s["now"].as_str().unwrap().ends_with('Z'));
    let pools = d.json(&["pool", "list"]);
    assert_eq!(pools[0]["pool"], "DEMO/Default");
    assert!(d.ctl_ok(&["status"]).contains("DEMO"));
    assert!(d.ctl_ok(&["pool", "list"]).contains("[DEMO]"));
}

fn checkout_works(d: &DaemonProcess, who: &str, cam: &str) {
    let o = d.client(who, &["checkout", cam]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Reads until the daemon closes the connection; returns what it sent.
fn read_to_close(mut s: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

/// A TCP connection with a read timeout, so a daemon that fails to close cannot hang the
/// test (it fails on the assertion instead).
fn tcp(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

#[test]
fn bytes_that_are_neither_tls_nor_http_get_only_a_closed_connection() {
    let d = DaemonProcess::start_demo();
    for junk in [
        &b"\x00\x00\x00\x05hello"[..],
        &b"\xff\xfe\x00garbage"[..],
        &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3][..],
        // The licence protocol in clear text: a Hello frame without TLS.
        &[0, 0, 0, 5, 1, 0, 1, 1, b'x'][..],
    ] {
        let mut s = tcp(&d.addr);
        s.write_all(junk).unwrap();
        assert_eq!(read_to_close(s), b"", "no answer to {junk:?}");
    }
}

#[test]
fn bad_frames_close_only_their_own_connection() {
    let d = DaemonProcess::start_demo();
    let code = d.code();
    assert!(d
        .client("good", &["enrol", &code, "--name", "good"])
        .status
        .success());
    // A connection that stays open through all of it, mid-session.
    let mut idle = tls_connect(&tcp(&d.addr));
    idle.write_all(&[0, 0, 0, 1]).unwrap(); // half a frame: waits for the rest

    // An oversized length prefix: refused before any buffer is reserved.
    let mut s = tls_connect(&tcp(&d.addr));
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    read_to_close(s);
    checkout_works(&d, "good", "cam-1");

    // A well-framed payload that is not a message.
    let mut s = tls_connect(&tcp(&d.addr));
    s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
    let answer = read_to_close(s);
    assert!(
        !answer.is_empty(),
        "a malformed message gets an error frame before the close"
    );
    checkout_works(&d, "good", "cam-2");

    // A valid Hello with an unknown protocol version.
    let mut s = tls_connect(&tcp(&d.addr));
    // ClientFrame { id: 1, Hello { protocol: 99, software: "x" } }
    s.write_all(&[0, 0, 0, 5, 1, 0, 99, 1, b'x']).unwrap();
    let answer = read_to_close(s);
    assert!(String::from_utf8_lossy(&answer).contains("not supported"));
    checkout_works(&d, "good", "cam-3");
    assert_eq!(d.camera_in_use(), 3);
    drop(idle);
}

#[test]
fn vendor_tool_issues_and_verifies_and_rejects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let vendor = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_netkey-vendor"))
            .args(args)
            .output()
            .unwrap()
    };
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    assert!(vendor(&["keygen", "--out", &p("v")]).status.success());
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys/acme.toml");
    let out = vendor(&[
        "issue",
        spec,
        "--signing-key",
        &p("v/vendor.key"),
        "--out",
        &p("acme.key"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ok = vendor(&["verify", &p("acme.key"), "--public-key", &p("v/vendor.pub")]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("ACME-0001"));
    let mut text = std::fs::read_to_string(p("acme.key")).unwrap();
    // Raise the first entry's count inside the signed document (not some "48" that a
    // random signature or fingerprint may happen to contain).
    let signed_count = r#"\"count\": 48"#;
    assert!(text.contains(signed_count), "{text}");
    text = text.replacen(signed_count, r#"\"count\": 49"#, 1);
    std::fs::write(p("tampered.key"), text).unwrap();
    let bad = vendor(&[
        "verify",
        &p("tampered.key"),
        "--public-key",
        &p("v/vendor.pub"),
    ]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("altered after signing"),
        "{}",
        stderr(&bad)
    );
    assert!(vendor(&["keygen", "--out", &p("other")]).status.success());
    let wrong = vendor(&[
        "verify",
        &p("acme.key"),
        "--public-key",
        &p("other/vendor.pub"),
    ]);
    assert!(
        stderr(&wrong).contains("does not trust"),
        "{}",
        stderr(&wrong)
    );
}

fn run_client(d: &DaemonProcess, name: &str, cams: &[&str], out: &std::path::Path) -> Background {
    Background(
        Command::new(env!("CARGO_BIN_EXE_netkeyctl"))
            .args(["client", "--state"])
            .arg(d.state(name))
            .args(["--demo", "--daemon", &d.addr, "run"])
            .args(cams)
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn free_and_kick_a_live_server_then_a_silent_one() {
    let d = DaemonProcess::start_demo();
    let code = d.code();
    assert!(d
        .client("a", &["enrol", &code, "--name", "A"])
        .status
        .success());
    let a_out = d.dir.path().join("a.out");
    let a = run_client(&d, "a", &["cam-1", "cam-2", "cam-3"], &a_out);
    eventually("A to hold 3 cameras", || d.camera_in_use() == 3);

    // A live holder acknowledges within the wait: the seat is back when the command returns.
    let f = d.json(&["camera", "free", "cam-1"]);
    assert_eq!(f["state"], "freed", "{f}");
    assert_eq!(d.camera_in_use(), 2);
    eventually("A to report the free", || {
        read(&a_out).contains("freed cam-1")
    });

    let a_id = d.json(&["server", "list"])[0]["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    let k = d.json(&["server", "kick", &a_id]);
    assert_eq!(k["forgotten"], true, "{k}");
    assert_eq!(d.camera_in_use(), 0);
    eventually("A to hear it is no longer enrolled", || {
        read(&a_out).contains("no longer enrolled")
    });
    drop(a);

    // A silent holder: a free leaves a counted `revoking` seat; --force returns it at once.
    let code = d.code();
    assert!(d
        .client("b", &["enrol", &code, "--name", "B"])
        .status
        .success());
    assert!(d
        .client("b", &["checkout", "cam-7", "cam-8"])
        .status
        .success());
    let f = d.json(&["camera", "free", "cam-7"]);
    assert_eq!(f["state"], "revoking", "{f}");
    let cams = d.json(&["camera", "list"]);
    let row = cams
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["camera_id"] == "cam-7")
        .unwrap();
    assert_eq!(row["state"], "revoking");
    assert_eq!(d.camera_in_use(), 2, "revoking seats still count");
    let f = d.json(&["camera", "free", "cam-8", "--force"]);
    assert_eq!(f["state"], "forced");
    assert_eq!(d.camera_in_use(), 1);
    // B comes back: it hears both, acknowledges, and the revoking seat returns.
    let status = d.client("b", &["status"]);
    let text = stdout(&status);
    assert!(
        text.contains("freed cam-7") && text.contains("freed cam-8"),
        "{text}"
    );
    assert_eq!(d.camera_in_use(), 0);
}

#[test]
fn tells_systemd_it_is_ready_and_pings_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_netkeyd"))
        .args([
            "--demo",
            "--no-broadcast",
            "--listen",
            "127.0.0.1:0",
            "--discovery",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "600000")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Background(child);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        let n = sock.recv(&mut buf).expect("no notification from netkeyd");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert!(seen.contains("STATUS=DEMO (DEMO): camera 0/16"), "{seen}");
}

#[test]
fn check_config_names_a_misspelt_setting_and_prints_the_effective_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netkeyd"))
        .arg("--config")
        .arg(&bad)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown field `lisen`"),
        "{}",
        stderr(&out)
    );
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:2000\"\nlog_level = \"debug\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netkeyd"))
        .arg("--config")
        .arg(&good)
        .args(["--check-config", "--listen", "127.0.0.1:3000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("listen = \"127.0.0.1:3000\"") && text.contains("log_level = \"debug\""),
        "{text}"
    );
}

#[test]
fn guessing_enrolment_codes_hits_a_limit() {
    let d = DaemonProcess::start_demo();
    let mut limited = false;
    for i in 0..12 {
        let out = d.client(
            "guesser",
            &["enrol", &format!("{:08}", 55_550_000 + i), "--name", "g"],
        );
        assert!(!out.status.success());
        if stderr(&out).contains("too many attempts") {
            limited = true;
            break;
        }
    }
    assert!(limited, "twelve wrong codes in a row were all tried");
    // A real code is refused too while the source waits.
    let code = d.code();
    let out = d.client("guesser", &["enrol", &code, "--name", "g"]);
    assert!(
        stderr(&out).contains("too many attempts"),
        "{}",
        stderr(&out)
    );
}
