//! Activation with the real binaries: a production `netkeyd` (trusting one vendor, no
//! demo vendor) on this host's real machine identifiers; `netkeyctl key request` ->
//! `netkey-vendor activate` -> `netkeyctl key install` -> a video server checks out; then
//! a usage report and a return receipt that `netkey-vendor verify` reads.

use crate::util::eventually;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

struct Prod {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Prod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prod {
    /// `netkeyd` without --demo, trusting `vendor_pub`, on loopback port 0.
    fn start(vendor_pub: &Path) -> Prod {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_netkeyd"))
            .args([
                "--no-broadcast",
                "--listen",
                "127.0.0.1:0",
                "--discovery",
                "127.0.0.1:0",
                "--log-level",
                "warn",
                "--config",
                "/dev/null",
            ])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--admin-socket")
            .arg(&socket)
            .arg("--vendor-key")
            .arg(vendor_pub)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let p = Prod { child, socket, dir };
        eventually("netkeyd to answer on its admin socket", || {
            p.ctl(&["status"]).status.success()
        });
        p
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_netkeyctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "netkeyctl {args:?}: {}", stderr(&out));
        stdout(&out)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// A fresh enrolment code for `pool`.
    fn code(&self, pool: &str) -> String {
        self.json(&["pool", "code", pool])["code"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Runs `netkeyctl client` for the video server whose state is `state`, trusting the
    /// vendor key `vendor_pub`, against this daemon.
    fn client(&self, state: &str, vendor_pub: &str, args: &[&str]) -> Output {
        let addr = self.json(&["status"])["listen"]
            .as_str()
            .unwrap()
            .to_string();
        Command::new(env!("CARGO_BIN_EXE_netkeyctl"))
            .args(["client", "--state", state, "--vendor-key", vendor_pub])
            .args(["--daemon", &addr])
            .args(args)
            .output()
            .unwrap()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn vendor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netkey-vendor"))
        .args(args)
        .output()
        .unwrap()
}

fn vendor_ok(args: &[&str]) -> String {
    let out = vendor(args);
    assert!(
        out.status.success(),
        "netkey-vendor {args:?}: {}",
        stderr(&out)
    );
    stdout(&out)
}

fn spec(name: &str) -> String {
    format!("{}/examples/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn activation_round_trip_with_the_real_binaries() {
    let vdir = tempfile::tempdir().unwrap();
    let v = |f: &str| vdir.path().join(f).to_str().unwrap().to_string();
    vendor_ok(&["keygen", "--out", &v("v")]);
    let d = Prod::start(Path::new(&v("v/vendor.pub")));

    // The customer's request, and what the vendor sees in it.
    let said = d.ok(&["key", "request", "--out", &d.path("request.json")]);
    assert!(said.contains("activation request of daemon nkd-"), "{said}");
    let seen = vendor_ok(&["verify", &d.path("request.json")]);
    assert!(
        seen.starts_with("valid activation request of daemon nkd-"),
        "{seen}"
    );

    // The vendor activates the spec for that daemon; the customer installs it.
    let act = vendor_ok(&[
        "activate",
        &d.path("request.json"),
        "--spec",
        &spec("site.toml"),
        "--signing-key",
        &v("v/vendor.key"),
        "--out",
        &v("site.key"),
    ]);
    assert!(act.contains("activated key SITE-0001 revision 1"), "{act}");
    let inst = d.ok(&["key", "install", &v("site.key")]);
    assert_eq!(
        inst.trim(),
        "key SITE-0001 revision 1 installed; bound to this host"
    );
    let list = d.ok(&["key", "list"]);
    assert!(
        list.contains("KEY SITE-0001  network  revision 1"),
        "{list}"
    );
    assert!(list.contains("  binding:   bound to this host"), "{list}");
    assert!(list.contains("SO-2001"), "{list}");

    // A video server enrols and checks out, trusting the vendor's public key.
    let code = d.code("SITE-0001/Default");
    let (state, vendor_pub) = (d.path("vs1.json"), v("v/vendor.pub"));
    let client = |args: &[&str]| d.client(&state, &vendor_pub, args);
    let out = client(&["enrol", &code, "--name", "vs1"]);
    assert!(out.status.success(), "enrol: {}", stderr(&out));
    let out = client(&["checkout", "cam-1", "cam-2"]);
    assert!(out.status.success(), "checkout: {}", stderr(&out));
    let k = &d.json(&["key", "list"])[0];
    assert_eq!(k["seats"][0]["in_use"], 2);

    // A usage report for the vendor.
    d.ok(&[
        "key",
        "report",
        "SITE-0001",
        "--out",
        &d.path("report.json"),
    ]);
    let rep = vendor_ok(&[
        "verify",
        &d.path("report.json"),
        "--public-key",
        &v("v/vendor.pub"),
        "--key",
        &v("site.key"),
    ]);
    assert!(
        rep.starts_with("valid usage report: key SITE-0001 revision 1"),
        "{rep}"
    );
    assert!(rep.contains("peak camera 2"), "{rep}");
    assert!(
        rep.contains("comes from the daemon key SITE-0001 was activated for"),
        "{rep}"
    );

    // The key moves away: returned (the video server is not running, so by force), with
    // a receipt the vendor checks against the key it issued.
    let out = d.ctl(&[
        "key",
        "return",
        "SITE-0001",
        "--out",
        &d.path("receipt.json"),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is deactivated and its leases are revoked, but 2 remain"),
        "{}",
        stderr(&out)
    );
    let said = d.ok(&[
        "key",
        "return",
        "SITE-0001",
        "--out",
        &d.path("receipt.json"),
        "--force",
    ]);
    assert!(
        said.contains("key SITE-0001 revision 1 returned by force (2 leases dropped)"),
        "{said}"
    );
    let rec = vendor_ok(&[
        "verify",
        &d.path("receipt.json"),
        "--public-key",
        &v("v/vendor.pub"),
        "--key",
        &v("site.key"),
    ]);
    assert!(
        rec.starts_with("valid return receipt: key SITE-0001 revision 1"),
        "{rec}"
    );
    assert!(
        rec.contains("it may be activated for another host"),
        "{rec}"
    );
    let out = d.ctl(&["key", "install", &v("site.key")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("was returned from this daemon"),
        "{}",
        stderr(&out)
    );
    // A receipt tampered with is refused.
    let text = std::fs::read_to_string(d.path("receipt.json")).unwrap();
    let forged = text.replacen("SITE-0001", "SITE-0002", 1);
    std::fs::write(d.path("forged.json"), forged).unwrap();
    let out = vendor(&["verify", &d.path("forged.json")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("altered after daemon"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_daemon_refuses_untrusted_expired_and_unbound_keys_with_reasons() {
    let vdir = tempfile::tempdir().unwrap();
    let v = |f: &str| vdir.path().join(f).to_str().unwrap().to_string();
    vendor_ok(&["keygen", "--out", &v("v")]);
    vendor_ok(&["keygen", "--out", &v("other")]);
    let d = Prod::start(Path::new(&v("v/vendor.pub")));
    d.ok(&["key", "request", "--out", &d.path("request.json")]);
    let activate = |spec_name: &str, signing: &str, out: &str| {
        vendor_ok(&[
            "activate",
            &d.path("request.json"),
            "--spec",
            &spec(spec_name),
            "--signing-key",
            &v(signing),
            "--out",
            &v(out),
        ])
    };
    let fails = |file: &str| {
        let out = d.ctl(&["key", "install", &v(file)]);
        assert!(!out.status.success(), "{file} was installed");
        let e = stderr(&out);
        assert!(e.starts_with("netkeyctl: "), "{e}");
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        e
    };
    activate("site.toml", "other/vendor.key", "foreign.key");
    let e = fails("foreign.key");
    assert!(
        e.contains("which this installation does not trust (trusted vendors: "),
        "{e}"
    );
    activate("expired.toml", "v/vendor.key", "expired.key");
    let e = fails("expired.key");
    assert!(
        e.contains("key OLD-0001 has expired: its last entry ended at 2020-06-30T23:59:59Z"),
        "{e}"
    );
    vendor_ok(&[
        "issue",
        &spec("site.toml"),
        "--signing-key",
        &v("v/vendor.key"),
        "--out",
        &v("unbound.key"),
    ]);
    let e = fails("unbound.key");
    assert!(e.contains("the key is not bound to a host"), "{e}");

    // An expired entry among live ones installs, and `key list` shows it.
    activate("mixed-expiry.toml", "v/vendor.key", "mixed.key");
    d.ok(&["key", "install", &v("mixed.key")]);
    let list = d.ok(&["key", "list"]);
    assert!(list.contains("SO-OLD"), "{list}");
    assert!(
        list.contains("until 2020-06-30T23:59:59Z  expired"),
        "{list}"
    );
    assert!(list.contains("  seats:     camera 0/2"), "{list}");
}

#[test]
fn check_config_names_a_bad_vendor_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("netkeyd.toml");
    std::fs::write(
        &conf,
        "vendor_keys = [\"netkey-vendor-public-key-v1:AAAA\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netkeyd"))
        .arg("--config")
        .arg(&conf)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("vendor key netkey-vendor-public-key-v1:AAAA: not a vendor key: public key is not 32 bytes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn legacy_firmware_through_the_real_client() {
    let vdir = tempfile::tempdir().unwrap();
    let v = |f: &str| vdir.path().join(f).to_str().unwrap().to_string();
    vendor_ok(&["keygen", "--out", &v("v")]);
    let d = Prod::start(Path::new(&v("v/vendor.pub")));
    d.ok(&["key", "request", "--out", &d.path("request.json")]);
    vendor_ok(&[
        "activate",
        &d.path("request.json"),
        "--spec",
        &spec("legacy.toml"),
        "--signing-key",
        &v("v/vendor.key"),
        "--out",
        &v("edge.key"),
    ]);
    d.ok(&["key", "install", &v("edge.key")]);
    let code = d.code("EDGE-0001/Default");
    let (state, vendor_pub) = (d.path("vs.json"), v("v/vendor.pub"));
    let client = |args: &[&str]| d.client(&state, &vendor_pub, args);
    assert!(client(&["enrol", &code, "--name", "edge"]).status.success());
    let out = client(&["checkout", "old", "--device-version", "8.2"]);
    assert_eq!(
        stdout(&out).trim(),
        "granted old (epoch 1) legacy",
        "{}",
        stderr(&out)
    );
    let out = client(&["checkout", "ancient", "--device-version", "7.4"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "netkeyctl: refused ancient: the device version is below the minimum 8.0"
    );
    let out = client(&[
        "checkout",
        "enc",
        "--class",
        "encoder-4ch",
        "--device-version",
        "9.1",
    ]);
    assert_eq!(
        stderr(&out).trim(),
        "netkeyctl: refused enc: no free camera licence: 0 in use of 2 total in this pool"
    );
    let out = client(&["checkout", "new", "--device-version", "9.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let k = &d.json(&["key", "list"])[0];
    assert_eq!(
        k["seats"][0]["in_use"], 1,
        "the legacy device costs nothing"
    );
}

#[test]
fn every_example_spec_makes_a_valid_key() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let spec = netkey::key::KeySpec::from_toml(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        spec.into_document(netkey::core::Timestamp::from_secs(1_800_000_000))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 7, "{n} specs");
}

#[test]
fn the_unit_start_step_hands_over_the_privileged_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host-ids");
    let out = Command::new(env!("CARGO_BIN_EXE_netkeyd"))
        .arg("--write-host-ids")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let handed: netkey::key::host::Handover =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    // What this machine has, read directly, is what was handed over.
    let direct = netkey::key::HostValues::collect(Path::new("/"));
    assert_eq!(handed, direct.handover());
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), std::fs::metadata(dir.path()).unwrap().uid());
}
