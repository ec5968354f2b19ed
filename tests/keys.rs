//! Keys and activation with the daemon in-process: a production daemon (no demo
//! vendor) with an injected clock and injected machine identifiers, so a test can clone
//! the host, swap a network card, or set the wall clock back. Every refusal is checked by
//! the text the administrator reads.

use netkey::core::{
    CameraOutcome, CheckoutItem, Command, EnrolRequest, Outcome, PoolId, Timestamp,
};
use netkey::daemon::{Config, Daemon, ManualClock};
use netkey::key::{
    ActivationRequest, ClockResetToken, DaemonDoc, DaemonDocKind, Entry, HostSource, HostValues,
    KeyKind, KeySpec, Policy, ReturnReceipt, UsageReport, VendorKeyPair,
};
use netkey::proto::admin::{AdminReply, AdminRequest};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// 2027-01-15T08:00:00Z.
const T0: Timestamp = Timestamp(1_800_000_000_000);
const DAY: u64 = 86_400_000;
const HOUR: u64 = 3_600_000;
const MINUTE: u64 = 60_000;

fn host_a() -> HostValues {
    HostValues {
        board_uuid: Some("4c4c4544-0042-3510-8052-b4c04f4e3732".into()),
        macs: vec!["52:54:00:12:34:56".into(), "52:54:00:12:34:57".into()],
        machine_id: Some("3d1219c7c4c5404aaa1f6d2a48adfda4".into()),
        root_fs_uuid: Some("0b6c1b5e-5f0f-4a43-9d5e-0b1f3c1f7a11".into()),
    }
}

/// A clone of host A's VM: same disk (machine-id, root filesystem), new hypervisor UUID
/// and new MAC addresses.
fn clone_of_a() -> HostValues {
    HostValues {
        board_uuid: Some("9e1f0c2a-7b3d-4e5f-8a6b-1c2d3e4f5a6b".into()),
        macs: vec!["52:54:00:aa:bb:01".into(), "52:54:00:aa:bb:02".into()],
        ..host_a()
    }
}

struct H {
    daemon: Option<Daemon>,
    clock: Arc<ManualClock>,
    vendor: VendorKeyPair,
    dir: tempfile::TempDir,
}

fn config(state: &Path, socket: PathBuf, vendor: &VendorKeyPair, host: HostValues) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_socket: socket,
        state_dir: state.to_path_buf(),
        demo: false,
        no_broadcast: true,
        listener: None,
        discovery: None,
        peers: Vec::new(),
        vendor_keys: vec![vendor.public()],
        host: HostSource::Values(host),
        ..Config::default()
    }
}

impl H {
    async fn start(host: HostValues) -> H {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let vendor = VendorKeyPair::generate().unwrap();
        let mut h = H {
            daemon: None,
            clock,
            vendor,
            dir,
        };
        h.boot(host).await;
        h
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    async fn boot(&mut self, host: HostValues) {
        let c = config(&self.state_dir(), self.socket(), &self.vendor, host);
        self.daemon = Some(Daemon::start(c, self.clock.clone()).await.unwrap());
    }

    /// Starts again trusting only `vendors`.
    async fn boot_trusting(&mut self, vendors: Vec<netkey::key::VendorPublicKey>) {
        let mut c = config(&self.state_dir(), self.socket(), &self.vendor, host_a());
        c.vendor_keys = vendors;
        self.daemon = Some(Daemon::start(c, self.clock.clone()).await.unwrap());
    }

    async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }

    fn d(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    async fn admin(&self, req: &AdminRequest) -> Result<Value, String> {
        admin(&self.socket(), req).await
    }

    async fn status(&self) -> Value {
        self.admin(&AdminRequest::Status).await.unwrap()
    }

    async fn key_list(&self) -> Value {
        self.admin(&AdminRequest::KeyList).await.unwrap()
    }

    /// `key request` as the administrator would send it to the vendor.
    async fn request(&self) -> (String, ActivationRequest) {
        let v = self.admin(&AdminRequest::KeyRequest).await.unwrap();
        let text = v["text"].as_str().unwrap().to_string();
        let req = DaemonDoc::open(&text)
            .unwrap()
            .parse(DaemonDocKind::ActivationRequest)
            .unwrap();
        (text, req)
    }

    /// What the vendor sends back for `spec`: a key file activated for this daemon.
    async fn activated(&self, spec: KeySpec) -> String {
        let (_, req) = self.request().await;
        let doc = spec.activate(&req, T0).unwrap();
        self.vendor.issue(&doc).unwrap()
    }

    async fn install(&self, file: &str) -> Result<Value, String> {
        self.admin(&AdminRequest::KeyInstall {
            key: file.to_string(),
        })
        .await
    }

    async fn enrol(&self, key: &str, server: &str) {
        let code = format!("code-{server}");
        let pool = PoolId::default_of(key);
        let out = self
            .d()
            .core()
            .execute(Command::CreateCode {
                pool,
                code: code.clone(),
            })
            .await
            .unwrap();
        assert!(matches!(out, Outcome::CodeCreated { .. }), "{out:?}");
        let out = self
            .d()
            .core()
            .execute(Command::Enrol {
                request: EnrolRequest {
                    code,
                    name: server.into(),
                    version: "1.0".into(),
                    server_id: server.into(),
                    credential: vec![1],
                    existing: None,
                },
            })
            .await
            .unwrap();
        assert!(matches!(out, Outcome::Enrolled(_)), "{out:?}");
    }

    async fn checkout(&self, server: &str, item: CheckoutItem) -> CameraOutcome {
        let out = self
            .d()
            .core()
            .execute(Command::Checkout {
                server: server.into(),
                key: None,
                items: vec![item],
                after_wait: false,
            })
            .await
            .unwrap();
        match out {
            Outcome::Checkout(a) => a.outcomes[0].1.clone(),
            other => panic!("{other:?}"),
        }
    }

    async fn heartbeat(&self, server: &str) -> Outcome {
        self.d()
            .core()
            .execute(Command::Heartbeat {
                server: server.into(),
                digest: [0; 32],
            })
            .await
            .unwrap()
    }
}

async fn admin(socket: &Path, req: &AdminRequest) -> Result<Value, String> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(req).unwrap();
    line.push('\n');
    w.write_all(line.as_bytes()).await.unwrap();
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await.unwrap();
    let reply: AdminReply = serde_json::from_str(&answer).unwrap();
    match (reply.ok, reply.error) {
        (_, Some(e)) => Err(e),
        (Some(v), None) => Ok(v),
        _ => panic!("empty reply"),
    }
}

fn spec(key_id: &str, entries: Vec<Entry>, policy: Policy) -> KeySpec {
    KeySpec {
        key_id: key_id.into(),
        revision: 1,
        kind: KeyKind::Network,
        customer: "Harbour Site".into(),
        issued_at: Some(T0),
        entries,
        policy,
        host: None,
    }
}

fn entry(count: u32, not_after: Timestamp, order: &str) -> Entry {
    Entry {
        feature: "camera".into(),
        count,
        not_after,
        order: order.into(),
    }
}

fn policy() -> Policy {
    Policy {
        heartbeat_interval_secs: 10,
        offline_grace_secs: 2 * HOUR / 1000,
        ..Policy::default()
    }
}

fn site() -> KeySpec {
    spec(
        "SITE-0001",
        vec![entry(4, T0.plus(365 * DAY), "SO-2001")],
        policy(),
    )
}

fn cam(name: &str) -> CheckoutItem {
    CheckoutItem::camera(name)
}

fn refusal_text(o: &CameraOutcome) -> String {
    match o {
        CameraOutcome::Refused(r) => r.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn granted(o: &CameraOutcome) -> bool {
    matches!(o, CameraOutcome::Granted { .. })
}

#[tokio::test]
async fn keys_from_an_untrusted_vendor_or_the_demo_vendor_are_refused() {
    let mut h = H::start(host_a()).await;
    let (_, req) = h.request().await;
    let stranger = VendorKeyPair::generate().unwrap();
    let file = stranger.issue(&site().activate(&req, T0).unwrap()).unwrap();
    let err = h.install(&file).await.unwrap_err();
    assert_eq!(
        err,
        format!(
            "the key is signed by vendor {}, which this installation does not trust (trusted vendors: {})",
            stranger.public().fingerprint(),
            h.vendor.public().fingerprint()
        )
    );
    let demo = netkey::key::demo_vendor()
        .issue(&netkey::key::demo_key(T0))
        .unwrap();
    let err = h.install(&demo).await.unwrap_err();
    assert!(
        err.ends_with("which this installation does not trust (the built-in DEMO vendor is trusted only by a daemon started with --demo)"),
        "{err}"
    );
    // A key the vendor issued without activating it is not bound to any host.
    let unbound = h.vendor.issue(&site().into_document(T0).unwrap()).unwrap();
    let err = h.install(&unbound).await.unwrap_err();
    assert_eq!(
        err,
        "key SITE-0001 cannot be installed on this daemon: the key is not bound to a host; the vendor activates it for this daemon from an activation request (`netkeyctl key request --out FILE`)"
    );
    assert_eq!(h.key_list().await, serde_json::json!([]));
    h.stop().await;
}

#[tokio::test]
async fn every_flipped_byte_of_an_activated_key_file_is_refused_with_a_reason() {
    let mut h = H::start(host_a()).await;
    let file = h.activated(site()).await;
    let bytes = file.as_bytes();
    let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
    for i in 0..bytes.len() {
        let mut b = bytes.to_vec();
        b[i] ^= 0x01;
        let text = String::from_utf8(b).expect("key files are ASCII; a low-bit flip keeps them so");
        let err = h
            .install(&text)
            .await
            .expect_err(&format!("the flip of byte {i} was installed"));
        let kind = [
            ("not a netkey key file", "malformed"),
            ("altered after signing", "signature"),
            ("does not trust", "signer"),
            ("is not supported", "format"),
        ]
        .into_iter()
        .find(|(needle, _)| err.contains(needle))
        .map(|(_, kind)| kind)
        .unwrap_or_else(|| panic!("flip at byte {i}: unexpected reason {err:?}"));
        *reasons.entry(kind).or_default() += 1;
    }
    assert_eq!(reasons.values().sum::<usize>(), bytes.len());
    assert!(reasons["signature"] > bytes.len() / 2, "{reasons:?}");
    let ok = h.install(&file).await.unwrap();
    assert_eq!(ok["binding"], "bound to this host");
    h.stop().await;
}

#[tokio::test]
async fn an_expired_key_is_refused_and_an_expired_entry_among_live_ones_is_shown() {
    let mut h = H::start(host_a()).await;
    let old = spec(
        "OLD-0001",
        vec![entry(4, T0.minus(DAY), "SO-OLD")],
        policy(),
    );
    let file = h.activated(old).await;
    let err = h.install(&file).await.unwrap_err();
    assert_eq!(
        err,
        "key OLD-0001 has expired: its last entry ended at 2027-01-14T08:00:00Z"
    );
    let mixed = spec(
        "MIXED-0001",
        vec![
            entry(4, T0.minus(DAY), "SO-OLD"),
            entry(2, T0.plus(10 * DAY), "SO-NEW"),
        ],
        policy(),
    );
    let file = h.activated(mixed).await;
    h.install(&file).await.unwrap();
    let k = &h.key_list().await[0];
    assert_eq!(k["entries"][0]["state"], "expired");
    assert_eq!(k["entries"][1]["state"], "expiring");
    assert_eq!(k["entries"][1]["days_left"], 10);
    assert_eq!(k["seats"][0]["total"], 2);
    h.enrol("MIXED-0001", "A").await;
    assert!(granted(&h.checkout("A", cam("c1")).await));
    assert!(granted(&h.checkout("A", cam("c2")).await));
    assert_eq!(
        refusal_text(&h.checkout("A", cam("c3")).await),
        "no free camera licence: 2 in use of 2 total in this pool"
    );
    // The heartbeat answer warns of the entry that ends in 10 days.
    match h.heartbeat("A").await {
        Outcome::Heartbeat(a) => {
            assert_eq!(a.expiring.len(), 1);
            assert_eq!(a.expiring[0].order, "SO-NEW");
        }
        other => panic!("{other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn a_cloned_host_serves_nothing_and_says_what_changed() {
    let mut h = H::start(host_a()).await;
    let file = h.activated(site()).await;
    h.install(&file).await.unwrap();
    h.enrol("SITE-0001", "A").await;
    assert!(granted(&h.checkout("A", cam("c1")).await));
    h.stop().await;

    // The VM is cloned, disk and all (the state directory, the identity with it).
    let clone_dir = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    };
    copy(&h.state_dir(), &clone_dir.path().join("state"));
    let c = config(
        &clone_dir.path().join("state"),
        clone_dir.path().join("admin.sock"),
        &h.vendor,
        clone_of_a(),
    );
    let clone = Daemon::start(c, h.clock.clone()).await.unwrap();
    let socket = clone_dir.path().join("admin.sock");
    let keys = admin(&socket, &AdminRequest::KeyList).await.unwrap();
    let k = &keys[0];
    assert_eq!(k["state"], "refused");
    assert_eq!(k["binding"], "NOT bound to this host");
    let problem = k["problem"].as_str().unwrap();
    assert_eq!(
        problem,
        "this host is not the one the key was activated for: the hypervisor or board UUID and the network cards' permanent MAC addresses changed (a cloned or moved virtual machine, or new hardware). Request a repair: run `netkeyctl key request --out FILE` here and send FILE with the key id to the vendor"
    );
    let out = clone
        .core()
        .execute(Command::Checkout {
            server: "A".into(),
            key: None,
            items: vec![cam("c2")],
            after_wait: false,
        })
        .await
        .unwrap();
    let Outcome::Checkout(a) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        refusal_text(&a.outcomes[0].1),
        format!("key SITE-0001 is not served by this daemon: {problem}")
    );
    // Its leases are not renewed either: the copy's video servers' grace runs out.
    let hb = clone
        .core()
        .execute(Command::Heartbeat {
            server: "A".into(),
            digest: [0; 32],
        })
        .await
        .unwrap();
    assert!(matches!(hb, Outcome::Refused(_)), "{hb:?}");
    // Nor will the clone take the key file again.
    let err = admin(&socket, &AdminRequest::KeyInstall { key: file.clone() })
        .await
        .unwrap_err();
    assert!(
        err.starts_with("key SITE-0001 cannot be installed on this daemon: this host is not the one the key was activated for"),
        "{err}"
    );
    let status = admin(&socket, &AdminRequest::Status).await.unwrap();
    assert_eq!(status["keys"][0]["state"], "refused");
    clone.shutdown().await;

    // The original host, with one network card replaced, still serves it.
    let mut swapped = host_a();
    swapped.macs[1] = "52:54:00:99:99:99".into();
    h.boot(swapped).await;
    let k = &h.key_list().await[0];
    assert_eq!(k["state"], "active");
    assert_eq!(
        k["binding"],
        "bound to this host (the network cards' permanent MAC addresses changed: one change is tolerated)"
    );
    assert!(granted(&h.checkout("A", cam("c2")).await));
    h.stop().await;
}

#[tokio::test]
async fn a_lower_revision_is_refused_and_a_higher_one_replaces_in_place() {
    let mut h = H::start(host_a()).await;
    let mut s2 = site();
    s2.revision = 2;
    h.install(&h.activated(s2.clone()).await).await.unwrap();
    h.enrol("SITE-0001", "A").await;
    assert!(granted(&h.checkout("A", cam("c1")).await));
    let mut s1 = site();
    s1.revision = 1;
    let err = h.install(&h.activated(s1).await).await.unwrap_err();
    assert_eq!(
        err,
        "key SITE-0001 revision 1: key SITE-0001 revision 2 is installed; revision 1 does not replace it"
    );
    let mut s3 = s2;
    s3.revision = 3;
    s3.entries[0].count = 6;
    let v = h.install(&h.activated(s3).await).await.unwrap();
    assert_eq!(v["replaced"], 2);
    let k = &h.key_list().await[0];
    assert_eq!(
        (k["revision"].as_u64(), k["seats"][0]["total"].as_u64()),
        (Some(3), Some(6))
    );
    assert_eq!(k["seats"][0]["in_use"], 1, "the lease was kept");
    h.stop().await;
}

#[tokio::test]
async fn a_returned_key_stays_returned_even_after_a_restore() {
    let mut h = H::start(host_a()).await;
    let file = h.activated(site()).await;
    h.install(&file).await.unwrap();
    h.enrol("SITE-0001", "A").await;
    assert!(granted(&h.checkout("A", cam("c1")).await));
    let backup = h.admin(&AdminRequest::Backup).await.unwrap();

    // A silent holder keeps its lease revoking: the return waits, or is forced.
    let err = h
        .admin(&AdminRequest::KeyReturn {
            key: "SITE-0001".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "key SITE-0001 is deactivated and its leases are revoked, but 1 remains until the video servers acknowledge (or their reservations end); run `netkeyctl key return SITE-0001` again then, or add --force to drop them now (an audited overlap)"
    );
    assert_eq!(
        refusal_text(&h.checkout("A", cam("c2")).await),
        "key SITE-0001 is not served by this daemon: it is being returned (`netkeyctl key return`)"
    );
    let done = h
        .admin(&AdminRequest::KeyReturn {
            key: "SITE-0001".into(),
            force: true,
        })
        .await
        .unwrap();
    let doc = DaemonDoc::open(done["text"].as_str().unwrap()).unwrap();
    let receipt: ReturnReceipt = doc.parse(DaemonDocKind::ReturnReceipt).unwrap();
    assert_eq!(
        (receipt.key_id.as_str(), receipt.revision),
        ("SITE-0001", 1)
    );
    assert!(receipt.forced);
    assert_eq!(receipt.leases_dropped, 1);
    assert_eq!(receipt.daemon_id, h.d().daemon_id());
    assert_eq!(h.key_list().await, serde_json::json!([]));
    // Asked again, the same receipt comes back.
    let again = h
        .admin(&AdminRequest::KeyReturn {
            key: "SITE-0001".into(),
            force: false,
        })
        .await
        .unwrap();
    assert_eq!(again["text"], done["text"]);
    let err = h.install(&file).await.unwrap_err();
    assert!(
        err.starts_with(
            "key SITE-0001 revision 1 was returned from this daemon on 2027-01-15T08:00:00Z"
        ),
        "{err}"
    );

    // A backup from before the return is restored: the key does not come back.
    h.stop().await;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(backup["data"].as_str().unwrap())
        .unwrap();
    let b = netkey::store::Backup::from_bytes(&bytes).unwrap();
    assert!(b.core.has_key("SITE-0001"));
    b.restore_into(&h.state_dir()).unwrap();
    h.boot(host_a()).await;
    assert_eq!(h.key_list().await, serde_json::json!([]));
    assert!(h.install(&file).await.is_err());
    // A new revision activated for this daemon may come back.
    let mut s2 = site();
    s2.revision = 2;
    h.install(&h.activated(s2).await).await.unwrap();
    h.stop().await;
}

#[tokio::test]
async fn a_clock_set_back_beyond_the_tolerance_blocks_new_checkouts_until_it_passes_the_mark() {
    let mut h = H::start(host_a()).await;
    h.install(&h.activated(site()).await).await.unwrap();
    h.enrol("SITE-0001", "A").await;
    let epoch = match h.checkout("A", cam("c1")).await {
        CameraOutcome::Granted { epoch, .. } => epoch,
        other => panic!("{other:?}"),
    };
    h.clock.advance(MINUTE);
    // Within the tolerance: nothing happens.
    h.clock.step_wall(-4 * MINUTE as i64);
    assert_eq!(h.status().await["clock"]["rollback"], Value::Null);
    h.clock.step_wall(4 * MINUTE as i64);
    assert_eq!(
        h.status().await["clock"]["mark"],
        T0.plus(MINUTE).to_string()
    );
    let mark = T0.plus(MINUTE);
    // Two hours back.
    h.clock.step_wall(-2 * HOUR as i64);
    let status = h.status().await;
    assert_eq!(status["clock"]["rollback"], mark.to_string());
    assert_eq!(status["clock"]["mark"], mark.to_string());
    assert_eq!(
        refusal_text(&h.checkout("A", cam("c2")).await),
        "the daemon's wall clock is behind its high-water mark 2027-01-15T08:01:00Z; new checkouts are refused until it passes the mark or a vendor's reset token is installed (renewals go on)"
    );
    // Renewals go on.
    let renewal = CheckoutItem {
        epoch: Some(epoch),
        ..cam("c1")
    };
    assert!(granted(&h.checkout("A", renewal).await));
    assert!(matches!(h.heartbeat("A").await, Outcome::Heartbeat(_)));
    // The audit log says so.
    let audit = h.admin(&AdminRequest::Audit { since: None }).await.unwrap();
    assert!(audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "clock_rollback"));
    // A restart does not forget the mark.
    h.stop().await;
    h.boot(host_a()).await;
    assert_eq!(h.status().await["clock"]["rollback"], mark.to_string());
    // Time passes until the wall clock is at the mark again.
    h.clock.advance(2 * HOUR);
    assert_eq!(h.status().await["clock"]["rollback"], Value::Null);
    assert!(granted(&h.checkout("A", cam("c2")).await));
    h.stop().await;
}

#[tokio::test]
async fn a_forward_jump_of_the_wall_clock_expires_nothing() {
    let mut h = H::start(host_a()).await;
    h.install(&h.activated(site()).await).await.unwrap();
    h.enrol("SITE-0001", "A").await;
    assert!(granted(&h.checkout("A", cam("c1")).await));
    let before = h.status().await["now"].clone();
    // The wall clock jumps a year ahead: past the key's end and every reservation.
    h.clock.step_wall((400 * DAY) as i64);
    let status = h.status().await;
    assert_eq!(
        status["now"], before,
        "the daemon's time runs on the monotonic clock"
    );
    assert_eq!(status["keys"][0]["seats"][0]["in_use"], 1);
    assert!(matches!(h.heartbeat("A").await, Outcome::Heartbeat(_)));
    assert!(granted(&h.checkout("A", cam("c2")).await));
    h.stop().await;
}

#[tokio::test]
async fn a_vendor_reset_token_clears_a_rollback_once() {
    let mut h = H::start(host_a()).await;
    h.install(&h.activated(site()).await).await.unwrap();
    h.enrol("SITE-0001", "A").await;
    h.clock.step_wall(-(2 * DAY as i64));
    let (_, req) = h.request().await;
    let mark = req
        .clock_rollback
        .expect("the request reports the rollback");
    assert_eq!(mark, T0);
    let token = |identity: &str, mark: Timestamp, id: &str| {
        ClockResetToken {
            token_id: id.into(),
            daemon_identity: identity.into(),
            mark,
            issued_at: T0,
        }
        .sign(&h.vendor)
        .unwrap()
    };
    let reset = |text: String| AdminRequest::KeyClockReset { token: text };
    let other = netkey::identity::Identity::generate().public();
    let err = h
        .admin(&reset(token(&other.to_base64(), mark, "t0")))
        .await
        .unwrap_err();
    assert!(
        err.starts_with(&format!(
            "the token names daemon identity {}",
            other.fingerprint()
        )),
        "{err}"
    );
    let err = h
        .admin(&reset(token(&req.daemon_identity, mark.plus(1000), "t0")))
        .await
        .unwrap_err();
    assert!(err.starts_with("the token names the mark 2027-01-15T08:00:01Z, but this daemon's mark is 2027-01-15T08:00:00Z"), "{err}");
    let stranger = VendorKeyPair::generate().unwrap();
    let foreign = ClockResetToken {
        token_id: "t9".into(),
        daemon_identity: req.daemon_identity.clone(),
        mark,
        issued_at: T0,
    }
    .sign(&stranger)
    .unwrap();
    let err = h.admin(&reset(foreign)).await.unwrap_err();
    assert!(err.contains("does not trust"), "{err}");

    let good = token(&req.daemon_identity, mark, "t1");
    let done = h.admin(&reset(good.clone())).await.unwrap();
    assert_eq!(done["cleared"], mark.to_string());
    let status = h.status().await;
    assert_eq!(status["clock"]["rollback"], Value::Null);
    // The daemon's time is the wall clock's again.
    assert_eq!(status["now"], T0.minus(2 * DAY).to_string());
    assert!(granted(&h.checkout("A", cam("c1")).await));
    // Used once: after another rollback the same token is refused.
    h.clock.step_wall(-(DAY as i64));
    let err = h.admin(&reset(good)).await.unwrap_err();
    assert_eq!(
        err,
        "this reset token (t1) was already used; a token clears one rollback once"
    );
    // Not rolled back at all: nothing to reset.
    h.clock.step_wall(DAY as i64);
    let err = h
        .admin(&reset(token(&req.daemon_identity, mark, "t2")))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("the clock is not behind its high-water mark"),
        "{err}"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_overdraft_is_granted_flagged_and_refused_once_its_allowance_is_spent() {
    let mut h = H::start(host_a()).await;
    let od = spec(
        "CALLS-0001",
        vec![entry(2, T0.plus(365 * DAY), "SO-4001")],
        Policy {
            overdraft_seats: 1,
            overdraft_hours: 1,
            ..policy()
        },
    );
    h.install(&h.activated(od).await).await.unwrap();
    h.enrol("CALLS-0001", "A").await;
    for c in ["c1", "c2", "c3"] {
        assert!(granted(&h.checkout("A", cam(c)).await), "{c}");
        h.clock.advance(1000);
    }
    let cams = h
        .admin(&AdminRequest::CameraList {
            server: None,
            pool: None,
            feature: None,
        })
        .await
        .unwrap();
    let flagged: Vec<bool> = cams
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["overdraft"].as_bool().unwrap())
        .collect();
    assert_eq!(flagged, vec![false, false, true]);
    let k = &h.status().await["keys"][0];
    assert_eq!(k["overdraft"]["in_use"], 1);
    assert_eq!(k["seats"][0]["overdraft"], 1);
    // An hour over the allocation later (the server heartbeats meanwhile).
    for _ in 0..6 {
        h.clock.advance(10 * MINUTE);
        assert!(matches!(h.heartbeat("A").await, Outcome::Heartbeat(_)));
    }
    let k = &h.status().await["keys"][0];
    assert_eq!(k["overdraft"]["spent"], true);
    assert_eq!(
        k["seats"][0]["revoking"], 1,
        "the overdraft lease is revoked"
    );
    assert_eq!(
        refusal_text(&h.checkout("A", cam("c4")).await),
        "no free camera licence: 3 in use of 2 total in this pool, and the key's overdraft allowance (1 hours per 30 days) is spent"
    );
    let audit = h.admin(&AdminRequest::Audit { since: None }).await.unwrap();
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"overdraft_started"), "{actions:?}");
    assert!(actions.contains(&"overdraft_spent"), "{actions:?}");

    // The usage report says what the vendor needs for a true-up.
    let r = h
        .admin(&AdminRequest::KeyReport {
            key: "CALLS-0001".into(),
        })
        .await
        .unwrap();
    let doc = DaemonDoc::open(r["text"].as_str().unwrap()).unwrap();
    let report: UsageReport = doc.parse(DaemonDocKind::UsageReport).unwrap();
    assert_eq!(report.days.len(), 1);
    assert_eq!(report.days[0].date, "2027-01-15");
    assert_eq!(report.days[0].peak["camera"], 3);
    assert_eq!(report.overdraft_hours_allowed, 1);
    assert!(report.overdraft_hours_last_30_days >= 1.0, "{report:?}");
    assert_eq!(report.licensed["camera"], 2);
    h.stop().await;
}

#[tokio::test]
async fn legacy_devices_and_minimum_versions_through_the_daemon() {
    let mut h = H::start(host_a()).await;
    let versions = |id: &str, entitled: bool| {
        spec(
            id,
            vec![entry(2, T0.plus(365 * DAY), "SO-3001")],
            Policy {
                min_device_version: Some("8.0".into()),
                current_device_version: Some("9.0".into()),
                legacy_entitlement: entitled,
                ..policy()
            },
        )
    };
    h.install(&h.activated(versions("EDGE-0001", true)).await)
        .await
        .unwrap();
    h.install(&h.activated(versions("EDGE-0002", false)).await)
        .await
        .unwrap();
    h.enrol("EDGE-0001", "A").await;
    h.enrol("EDGE-0002", "B").await;
    let dev = |name: &str, v: &str| CheckoutItem {
        device_version: Some(v.into()),
        ..cam(name)
    };
    match h.checkout("A", dev("old", "8.2")).await {
        CameraOutcome::Granted { legacy, .. } => assert!(legacy),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        refusal_text(&h.checkout("B", dev("old", "8.2")).await),
        "a legacy device, and this key does not grant legacy licences"
    );
    assert_eq!(
        refusal_text(&h.checkout("A", dev("ancient", "7.4")).await),
        "the device version is below the minimum 8.0"
    );
    let k = &h.key_list().await[0];
    assert_eq!(k["seats"][0]["in_use"], 0, "a legacy licence costs nothing");
    h.stop().await;
}

#[tokio::test]
async fn a_local_key_never_appears_in_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let vendor = VendorKeyPair::generate().unwrap();
    let mut c = config(
        &dir.path().join("state"),
        dir.path().join("admin.sock"),
        &vendor,
        host_a(),
    );
    c.discovery = Some("127.0.0.1:0".parse().unwrap());
    let clock = ManualClock::new(T0);
    let d = Daemon::start(c, clock).await.unwrap();
    let h = H {
        daemon: Some(d),
        clock: ManualClock::new(T0),
        vendor,
        dir,
    };
    let mut local = site();
    local.key_id = "LOCAL-0001".into();
    local.kind = KeyKind::Local;
    h.install(&h.activated(local).await).await.unwrap();
    h.install(&h.activated(site()).await).await.unwrap();
    assert_eq!(h.key_list().await.as_array().unwrap().len(), 2);
    let search = netkey::discovery::Search {
        to: vec![h.d().discovery_addr().unwrap()],
        broadcast_port: None,
        key_id: None,
        timeout: std::time::Duration::from_millis(500),
    };
    let found = netkey::discovery::discover(&search).await.unwrap();
    assert_eq!(found.len(), 1);
    let offered: Vec<&str> = found[0]
        .offer
        .keys
        .iter()
        .map(|k| k.key_id.as_str())
        .collect();
    assert_eq!(offered, vec!["SITE-0001"]);
    let mut h = h;
    h.stop().await;
}

#[tokio::test]
async fn a_key_whose_vendor_is_no_longer_trusted_is_not_served() {
    let mut h = H::start(host_a()).await;
    h.install(&h.activated(site()).await).await.unwrap();
    h.stop().await;
    let other = VendorKeyPair::generate().unwrap();
    h.boot_trusting(vec![other.public()]).await;
    let k = &h.key_list().await[0];
    assert_eq!(k["state"], "refused");
    assert_eq!(
        k["problem"],
        format!(
            "it is signed by vendor {}, which this daemon no longer trusts (vendor_keys)",
            h.vendor.public().fingerprint()
        )
    );
    h.stop().await;
    h.boot(host_a()).await;
    assert_eq!(h.key_list().await[0]["state"], "active");
    h.stop().await;
}

#[tokio::test]
async fn a_local_key_answers_on_its_unix_socket_and_nowhere_on_tcp() {
    use netkey::client::{Client, Trust};
    let mut h = H::start(host_a()).await;
    let mut local = site();
    local.key_id = "LOCAL-0001".into();
    local.kind = KeyKind::Local;
    h.install(&h.activated(local).await).await.unwrap();
    h.install(&h.activated(site()).await).await.unwrap();
    let code = |pool: &'static str| {
        let socket = h.socket();
        async move {
            admin(
                &socket,
                &AdminRequest::PoolCode {
                    pool: pool.to_string(),
                },
            )
            .await
            .unwrap()["code"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let trust = Trust::Vendors(vec![h.vendor.public()]);
    let client = |name: &str, addr: String| {
        Client::with_clock(
            &h.dir.path().join(format!("{name}.json")),
            trust.clone(),
            Some(addr),
            h.clock.clone(),
        )
        .unwrap()
    };
    let unix = format!("unix:{}", h.d().local_socket().display());
    let tcp = h.d().local_addr().to_string();

    // On the local socket: enrolled on the local key, a camera checked out.
    let mut on_host = client("on-host", unix.clone());
    let binding = on_host
        .enrol(&code("LOCAL-0001/Default").await, "on-host", "1.0")
        .await
        .unwrap();
    assert_eq!(binding.key_id, "LOCAL-0001");
    let out = on_host.checkout(vec![cam("cam-1")]).await.unwrap();
    assert!(granted(&out[0].1), "{out:?}");

    // Over TCP the local key is not offered, and its codes are refused unspent.
    let local_code = code("LOCAL-0001/Default").await;
    let mut remote = client("remote", tcp.clone());
    let err = remote
        .enrol(&local_code, "remote", "1.0")
        .await
        .expect_err("a local key over TCP");
    assert!(err.to_string().contains("on a local key"), "{err}");
    let conn = netkey::client::Connection::connect(
        &tcp,
        &netkey::tls::licence_client_config(&netkey::identity::Identity::generate()).unwrap(),
    )
    .await
    .unwrap();
    let offered: Vec<&str> = conn
        .welcome
        .keys
        .iter()
        .map(|k| k.key_id.as_str())
        .collect();
    assert_eq!(offered, vec!["SITE-0001"]);
    // The code was not spent: it still enrols on the local socket.
    let mut second = client("second", unix.clone());
    second.enrol(&local_code, "second", "1.0").await.unwrap();

    // And a network key's code is refused on the local socket.
    let mut wrong = client("wrong", unix);
    let err = wrong
        .enrol(&code("SITE-0001/Default").await, "wrong", "1.0")
        .await
        .expect_err("a network key on the local socket");
    assert!(err.to_string().contains("on a network key"), "{err}");
    h.stop().await;
}
