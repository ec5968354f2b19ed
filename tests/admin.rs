//! netkeyctl's administration commands against the real daemon: pools created, filled
//! and deleted (seeds 000 and 001), servers moved and listed, cameras filtered, with
//! their JSON shapes and their refusals' one-line reasons.

use crate::util::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `netkeyctl ARGS` that must fail; returns its one-line reason.
fn refused(d: &DaemonProcess, args: &[&str]) -> String {
    let out = d.ctl(args);
    assert!(!out.status.success(), "netkeyctl {args:?} succeeded");
    let line = stderr(&out);
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    line
}

fn seats<'a>(pool: &'a serde_json::Value, feature: &str) -> &'a serde_json::Value {
    pool["seats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["feature"] == feature)
        .unwrap_or_else(|| panic!("no {feature} in {pool}"))
}

fn pool<'a>(pools: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == name)
        .unwrap_or_else(|| panic!("no pool {name} in {pools}"))
}

#[test]
fn pools_are_created_filled_by_sales_order_and_deleted_back_into_default() {
    let d = DaemonProcess::start_demo();
    // The demo key: 16 camera (order DEMO-CAM), 4 lpr (DEMO-LPR).
    let c = d.json(&[
        "pool",
        "create",
        "West",
        "--key",
        "DEMO",
        "camera=4",
        "lpr=1@DEMO-LPR",
    ]);
    assert_eq!(c["from"], "DEMO/Default");
    assert_eq!(c["to"], "DEMO/West");
    assert_eq!(c["pool"]["pool"], "DEMO/West");
    let moved = c["moved"].as_array().unwrap();
    assert_eq!(moved.len(), 2);
    assert_eq!(moved[0]["order"], "DEMO-CAM");
    assert_eq!(moved[0]["count"], 4);
    assert!(moved[0]["not_after"].as_str().unwrap().ends_with('Z'));
    let west = seats(&c["pool"], "camera");
    assert_eq!(
        (
            west["total"].as_u64(),
            west["in_use"].as_u64(),
            west["free"].as_u64()
        ),
        (Some(4), Some(0), Some(4))
    );
    // Text output says what moved.
    let out = d.ctl_ok(&["pool", "create", "East", "lpr=1"]);
    assert_eq!(out.trim(), "pool DEMO/East created: 1 lpr of DEMO-LPR");

    let pools = d.json(&["pool", "list"]);
    assert_eq!(seats(pool(&pools, "DEMO/Default"), "camera")["total"], 12);
    assert_eq!(seats(pool(&pools, "DEMO/Default"), "lpr")["total"], 2);
    let entries = pool(&pools, "DEMO/West")["entries"].as_array().unwrap();
    assert_eq!(entries[0]["order"], "DEMO-CAM");
    assert_eq!(entries[0]["seats"], 4);
    assert_eq!(entries[0]["expired"], false);

    // A server enrolled in West uses 3 of its 4 camera seats.
    let code = d.json(&["pool", "code", "West"])["code"]
        .as_str()
        .unwrap()
        .to_string();
    let en = d.client("w", &["enrol", &code, "--name", "Recorder W"]);
    assert!(en.status.success(), "{}", stderr(&en));
    let co = d.client("w", &["checkout", "cam-1", "cam-2", "cam-3"]);
    assert!(co.status.success(), "{}", stderr(&co));

    // Only unused seats move: the refusal gives the numbers, and changes nothing.
    let why = refused(&d, &["pool", "move", "West", "Default", "camera=2"]);
    assert!(
        why.contains("only unused seats move: pool DEMO/West has 1 unused camera seats (3 in use of 4); 2 asked"),
        "{why}"
    );
    let one = d.json(&["pool", "move", "West", "Default", "camera=1"]);
    assert_eq!(one["from"], "DEMO/West");
    assert_eq!(one["to"], "DEMO/Default");
    assert_eq!(seats(&one["pool"], "camera")["total"], 13);
    let why = refused(&d, &["pool", "create", "Big", "camera=20"]);
    assert!(
        why.contains("holds 13 unexpired camera seats; 20 asked"),
        "{why}"
    );
    let why = refused(&d, &["pool", "create", "Odd", "camera=1@NO-SUCH-ORDER"]);
    assert!(why.contains("no camera entry of sales order"), "{why}");
    let why = refused(&d, &["pool", "create", "Bad", "camera"]);
    assert!(why.contains("FEATURE=N"), "{why}");

    // pool show: seats, sales orders, servers.
    let show = d.json(&["pool", "show", "West"]);
    assert_eq!(show["pool"]["servers"], 1);
    assert_eq!(show["servers"][0]["name"], "Recorder W");
    assert_eq!(seats(&show["pool"], "camera")["in_use"], 3);

    // Delete is refused while a server is enrolled; move it out, then delete.
    let why = refused(&d, &["pool", "delete", "West"]);
    assert!(
        why.contains("pool DEMO/West still has 1 video server enrolled; move or kick it first"),
        "{why}"
    );
    let why = refused(&d, &["pool", "delete", "Default"]);
    assert!(why.contains("cannot be deleted"), "{why}");
    let server = show["servers"][0]["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    let why = refused(&d, &["server", "move", &server, "East"]);
    assert!(
        why.contains("no free camera licence"),
        "East has no camera seat: {why}"
    );
    d.ctl_ok(&["server", "move", &server, "Default"]);
    let del = d.json(&["pool", "delete", "West"]);
    assert_eq!(del["from"], "DEMO/West");
    assert_eq!(del["to"], "DEMO/Default");
    let pools = d.json(&["pool", "list"]);
    assert_eq!(pools.as_array().unwrap().len(), 2);
    assert_eq!(seats(pool(&pools, "DEMO/Default"), "camera")["total"], 16);
    assert_eq!(seats(pool(&pools, "DEMO/Default"), "camera")["in_use"], 3);

    // Every step is in the audit log.
    let audit = d.json(&["audit"]);
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in [
        "pool_created",
        "seats_moved",
        "server_moved",
        "pool_deleted",
    ] {
        assert!(actions.contains(&a), "no {a} in {actions:?}");
    }
}

#[test]
fn server_and_camera_listings_show_what_administrators_look_for() {
    let d = DaemonProcess::start_demo();
    let code = d.code();
    assert!(d
        .client(
            "a",
            &["enrol", &code, "--name", "Gate", "--version", "7.2.0"]
        )
        .status
        .success());
    let co = d.client("a", &["checkout", "cam-1", "cam-2"]);
    assert!(co.status.success(), "{}", stderr(&co));
    let lpr = d.client("a", &["checkout", "cam-3", "--module", "lpr"]);
    assert!(lpr.status.success(), "{}", stderr(&lpr));

    let servers = d.json(&["server", "list"]);
    let s = &servers[0];
    for field in [
        "server_id",
        "name",
        "pool",
        "key_id",
        "version",
        "cameras",
        "seats",
        "last_checkin",
        "state",
    ] {
        assert!(!s[field].is_null(), "server list has no {field}: {s}");
    }
    assert_eq!(s["name"], "Gate");
    assert_eq!(s["version"], "7.2.0");
    assert_eq!(s["cameras"], 3);
    assert_eq!(s["state"], "silent");
    let id = s["server_id"].as_str().unwrap().to_string();

    // Human output: an aligned table with relative times.
    let table = d.ctl_ok(&["server", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(lines[0].contains("LAST CHECK-IN") && lines[0].contains("VERSION"));
    assert!(
        lines[1].contains("Gate") && (lines[1].contains("ago") || lines[1].contains("just now")),
        "{table}"
    );
    let col = lines[0].find("POOL").unwrap();
    assert_eq!(&lines[1][col..col + 12], "DEMO/Default", "{table}");

    // server show: every camera with features, epoch, since, last renewal.
    let show = d.json(&["server", "show", &id]);
    let cams = show["cameras"].as_array().unwrap();
    assert_eq!(cams.len(), 3);
    for c in cams {
        for field in [
            "features",
            "epoch",
            "granted_at",
            "last_renewal",
            "contested",
        ] {
            assert!(!c[field].is_null(), "camera has no {field}: {c}");
        }
    }

    // camera list filters by server, pool and feature.
    let all = d.json(&["camera", "list"]);
    assert_eq!(all.as_array().unwrap().len(), 3);
    let lpr = d.json(&["camera", "list", "--feature", "lpr"]);
    assert_eq!(lpr.as_array().unwrap().len(), 1);
    assert_eq!(lpr[0]["camera_id"], "cam-3");
    let by_server = d.json(&["camera", "list", "--server", &id, "--pool", "Default"]);
    assert_eq!(by_server.as_array().unwrap().len(), 3);
    let none = d.json(&["camera", "list", "--server", "nobody"]);
    assert_eq!(none.as_array().unwrap().len(), 0);
    let why = refused(&d, &["camera", "list", "--pool", "Nowhere"]);
    assert!(why.contains("no pool Nowhere"), "{why}");

    // Rename is display only.
    d.ctl_ok(&["server", "rename", &id, "Gate North"]);
    assert_eq!(
        d.json(&["server", "show", &id])["server"]["name"],
        "Gate North"
    );
    let why = refused(&d, &["server", "rename", &id, ""]);
    assert!(why.contains("1-128 characters"), "{why}");
}

#[test]
fn console_prints_a_one_time_url_and_takes_a_password_from_stdin() {
    let d = DaemonProcess::start_demo();
    let c = d.json(&["console"]);
    let url = c["url"].as_str().unwrap();
    let port = d.addr.rsplit(':').next().unwrap();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{port}/login?token=")),
        "{url}"
    );
    assert_eq!(url.len() - url.find("token=").unwrap() - 6, 64);
    assert!(c["expires_at"].as_str().unwrap().ends_with('Z'));

    let set = |input: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_netkeyctl"))
            .arg("--socket")
            .arg(&d.socket)
            .args(["console", "--set-password"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let short = set("short\n");
    assert!(!short.status.success());
    assert!(stderr(&short).contains("at least 10 characters"));
    let ok = set("a long console password\n");
    assert!(ok.status.success(), "{}", stderr(&ok));
    let stored = std::fs::read_to_string(d.state_dir().join("console-password")).unwrap();
    assert!(
        stored.starts_with("pbkdf2-sha256$"),
        "stored hashed: {stored}"
    );
    assert!(!stored.contains("console password"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.state_dir().join("console-password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    d.ctl_ok(&["console", "--clear-password"]);
    assert!(!d.state_dir().join("console-password").exists());
}

#[test]
fn pools_survive_a_crash_and_restart() {
    let mut d = DaemonProcess::start_demo();
    d.ctl_ok(&["pool", "create", "West", "camera=5", "lpr=2@DEMO-LPR"]);
    d.ctl_ok(&["pool", "create", "East"]);
    d.ctl_ok(&["pool", "move", "West", "East", "camera=2"]);
    d.ctl_ok(&["pool", "create", "Gone", "camera=1"]);
    d.ctl_ok(&["pool", "delete", "Gone"]);
    let before = d.json(&["pool", "list"]);
    d.crash_and_restart();
    assert_eq!(
        d.json(&["pool", "list"]),
        before,
        "pools changed across a restart"
    );
    assert_eq!(seats(pool(&before, "DEMO/East"), "camera")["total"], 2);
    assert_eq!(seats(pool(&before, "DEMO/Default"), "camera")["total"], 11);
}
