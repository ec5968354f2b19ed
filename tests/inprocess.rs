//! The daemon in-process with an injected clock, driven through the client library.
//! Time moves only when a test says so.

use netkey::client::{Client, ClientEvent, Trust, VideoServer};
use netkey::core::{
    CameraOutcome, CheckoutItem, Command, Outcome, PoolId, Refusal, RevocationReason, Timestamp,
};
use netkey::daemon::{Config, Daemon, ManualClock};
use std::sync::Arc;

const T0: Timestamp = Timestamp(1_800_000_000_000);
/// The demo key's policy: heartbeat 10 s, grace 1 h.
const INTERVAL: u64 = 10_000;
const GRACE: u64 = 3_600_000;

pub(crate) struct Harness {
    pub daemon: Daemon,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    /// The licence socket, kept by the test so a restarted daemon serves the same port
    /// (another test could otherwise take a freed port in between).
    listener: Arc<std::net::TcpListener>,
}

impl Harness {
    pub async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let listener = Arc::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let daemon = Daemon::start(config(&dir, &listener), clock.clone())
            .await
            .unwrap();
        Harness {
            daemon,
            clock,
            dir,
            listener,
        }
    }

    async fn code(&self) -> String {
        let code: String = format!("{:08}", rand_code());
        let c = code.clone();
        let out = self
            .daemon
            .core()
            .execute(Command::CreateCode {
                pool: PoolId::default_of("DEMO"),
                code: c,
            })
            .await
            .unwrap();
        assert!(matches!(out, Outcome::CodeCreated { .. }), "{out:?}");
        code
    }

    pub async fn client(&self, name: &str) -> Client {
        let path = self.dir.path().join(format!("{name}.json"));
        let mut c = Client::with_clock(
            &path,
            Trust::Demo,
            Some(self.daemon.local_addr().to_string()),
            self.clock.clone(),
        )
        .unwrap();
        c.enrol(&self.code().await, name, "1.0").await.unwrap();
        c
    }

    /// Counted `camera` seats (held + revoking) and the revoking part.
    pub async fn camera_use(&self) -> (u64, u64) {
        self.daemon
            .core()
            .call(|o| {
                let u = o.core().usage(&PoolId::default_of("DEMO"), "camera");
                o.core().check_invariants(o.now).unwrap();
                (u.counted(), u.revoking)
            })
            .await
            .unwrap()
    }

    pub async fn reservation_end(&self, server: &str) -> Timestamp {
        let s = server.to_string();
        self.daemon
            .core()
            .call(move |o| o.core().reservation_end(&s))
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn stop(self) {
        self.daemon.shutdown().await;
    }
}

fn config(dir: &tempfile::TempDir, listener: &Arc<std::net::TcpListener>) -> Config {
    Config {
        listen: listener.local_addr().unwrap(),
        admin_socket: dir.path().join("admin.sock"),
        state_dir: dir.path().join("state"),
        demo: true,
        no_broadcast: true,
        listener: Some(listener.clone()),
        discovery: None,
        peers: Vec::new(),
        ..Config::default()
    }
}

fn rand_code() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(10_000_000);
    N.fetch_add(7919, Ordering::Relaxed)
}

pub(crate) fn items(cams: &[&str]) -> Vec<CheckoutItem> {
    cams.iter().map(|c| CheckoutItem::camera(c)).collect()
}

fn all_granted(out: &[(String, CameraOutcome)]) {
    for (c, o) in out {
        assert!(matches!(o, CameraOutcome::Granted { .. }), "{c}: {o:?}");
    }
}

fn server_id(c: &Client) -> String {
    c.state().unwrap().server_id.clone()
}

#[tokio::test]
async fn silent_server_past_its_reservation_loses_its_leases() {
    let h = Harness::start().await;
    let mut a = h.client("A").await;
    all_granted(&a.checkout(items(&["c1", "c2"])).await.unwrap());
    assert_eq!(h.camera_use().await, (2, 0));
    let end = h.reservation_end(&server_id(&a)).await;
    assert_eq!(end, T0.plus(GRACE + INTERVAL));
    h.clock.set(end.minus(1));
    assert_eq!(
        h.camera_use().await,
        (2, 0),
        "still reserved a millisecond before the end"
    );
    h.clock.set(end);
    assert_eq!(
        h.camera_use().await,
        (0, 0),
        "seats return at the reservation end"
    );
    // Still enrolled: it comes back, learns it holds nothing, and checks out again.
    let events = a.refresh().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Lost { camera, .. } if camera == "c1")),
        "{events:?}"
    );
    assert!(a.state().unwrap().cameras.is_empty());
    all_granted(&a.checkout(items(&["c1"])).await.unwrap());
    h.stop().await;
}

#[tokio::test]
async fn move_from_silent_server_takes_a_spare_seat_returned_on_acknowledgement() {
    let h = Harness::start().await;
    let mut a = h.client("A").await;
    let mut b = h.client("B").await;
    all_granted(&a.checkout(items(&["c1"])).await.unwrap());
    h.clock.advance(1_000);
    all_granted(&b.checkout(items(&["c1"])).await.unwrap());
    assert_eq!(
        h.camera_use().await,
        (2, 1),
        "A's old lease is revoking and still counted"
    );
    h.clock.advance(1_000);
    let events = a.refresh().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::Revoked { camera, reason: RevocationReason::Moved } if camera == "c1")),
        "{events:?}"
    );
    assert_eq!(h.camera_use().await, (1, 0), "the revoking seat returned");
    assert!(!a.state().unwrap().cameras.contains_key("c1"));
    h.stop().await;
}

#[tokio::test]
async fn stale_reclaim_after_a_move_gets_moved() {
    let h = Harness::start().await;
    let mut a = h.client("A").await;
    let mut b = h.client("B").await;
    all_granted(&a.checkout(items(&["c1"])).await.unwrap());
    all_granted(&b.checkout(items(&["c1"])).await.unwrap());
    // A re-claims with its old epoch (from its state file), without hearing of the move.
    let out = a.checkout(items(&["c1"])).await.unwrap();
    assert!(
        matches!(
            out[0].1,
            CameraOutcome::Refused(Refusal::Moved { epoch: 2 })
        ),
        "{out:?}"
    );
    assert!(
        !a.state().unwrap().cameras.contains_key("c1"),
        "the client drops it"
    );
    h.stop().await;
}

#[tokio::test]
async fn digest_mismatch_syncs_releases_unclaimed_and_reports_not_held() {
    let h = Harness::start().await;
    let mut a = h.client("A").await;
    all_granted(&a.checkout(items(&["c1", "c2"])).await.unwrap());
    // Make A's belief differ: it forgets c2 and believes it holds c9.
    let path = h.dir.path().join("A.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cams = state["cameras"].as_object_mut().unwrap();
    let c1 = cams["c1"].clone();
    cams.remove("c2");
    cams.insert("c9".into(), c1);
    std::fs::write(&path, serde_json::to_string(&state).unwrap()).unwrap();
    let mut a = Client::with_clock(&path, Trust::Demo, None, h.clock.clone()).unwrap();
    let events = a.refresh().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Lost { camera, .. } if camera == "c9")),
        "{events:?}"
    );
    assert_eq!(
        h.camera_use().await,
        (1, 0),
        "c2 released: the sync no longer claimed it"
    );
    assert_eq!(
        a.state().unwrap().cameras.keys().collect::<Vec<_>>(),
        vec!["c1"]
    );
    h.stop().await;
}

#[tokio::test]
async fn client_deadline_always_falls_before_the_reservation_end() {
    let h = Harness::start().await;
    let mut a = h.client("A").await;
    all_granted(&a.checkout(items(&["c1"])).await.unwrap());
    for step in [0, 1, 9_999, 10_000, 25_000, 3_000_000] {
        h.clock.advance(step);
        a.refresh().await.unwrap();
        let deadline = a.state().unwrap().deadline.unwrap();
        let end = h.reservation_end(&server_id(&a)).await;
        assert!(
            deadline < end,
            "after +{step} ms: deadline {deadline} not before reservation end {end}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn a_lease_token_is_answered_again_while_fresh_and_the_client_keeps_it() {
    let h = Harness::start().await;
    let mut a = h.client("A").await;
    all_granted(&a.checkout(items(&["c1", "c2"])).await.unwrap());
    let mut conn = a.connect().await.unwrap();
    a.heartbeat(&mut conn).await.unwrap();
    let first = a.state().unwrap().lease.clone().expect("a signed token");
    assert_eq!(first.cameras, 2);

    // A second later on the same connection: the same token comes back, and the client
    // keeps it, since it proves no more than the answer gives.
    h.clock.advance(1_000);
    a.heartbeat(&mut conn).await.unwrap();
    let state = a.state().unwrap();
    assert_eq!(state.lease.as_ref(), Some(&first));
    let proven = state
        .proven_deadline()
        .expect("the kept token proves a deadline");
    let live = state.deadline.unwrap();
    assert!(
        proven <= live,
        "proven {proven} after the live deadline {live}"
    );
    assert!(live.since(proven) <= 5 * 60_000);

    // A released camera changes the count: a new signature.
    a.release(vec!["c2".into()]).await.unwrap();
    a.heartbeat(&mut conn).await.unwrap();
    let after_release = a.state().unwrap().lease.clone().unwrap();
    assert_eq!(after_release.cameras, 1);
    assert!(after_release.sent_at > first.sent_at);

    // Once a new token would prove a deadline more than five minutes later (the daemon's
    // renewal is persisted just after a heartbeat's answer, so the next one shows it), a
    // new signature, proving exactly the live deadline.
    h.clock.advance(5 * 60_000 + 1);
    a.heartbeat(&mut conn).await.unwrap();
    h.clock.advance(1_000);
    a.heartbeat(&mut conn).await.unwrap();
    let state = a.state().unwrap();
    let fresh = state.lease.clone().unwrap();
    assert!(fresh.sent_at > after_release.sent_at);
    assert_eq!(state.proven_deadline(), state.deadline);
    drop(conn);
    h.stop().await;
}

#[tokio::test]
async fn live_holder_acknowledges_a_move_and_no_seat_is_spent() {
    let h = Harness::start().await;
    let a = h.client("A").await;
    let mut b = h.client("B").await;
    let cams: Vec<String> = (1..=16).map(|i| format!("cam-{i}")).collect();
    let wanted: Vec<CheckoutItem> = cams.iter().map(|c| CheckoutItem::camera(c)).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(VideoServer::new(a, wanted).run(tx, stop.clone()));
    let mut granted = 0;
    while granted < 16 {
        if let ClientEvent::Granted { .. } = rx.recv().await.unwrap() {
            granted += 1;
        }
    }
    let out = b.checkout(items(&["cam-17"])).await.unwrap();
    assert!(matches!(
        &out[0].1,
        CameraOutcome::Refused(Refusal::NoSeats {
            in_use: 16,
            total: 16,
            ..
        })
    ));
    all_granted(&b.checkout(items(&["cam-3"])).await.unwrap());
    assert_eq!(h.camera_use().await, (16, 0));
    loop {
        if let ClientEvent::Revoked { camera, reason } = rx.recv().await.unwrap() {
            assert_eq!(
                (camera.as_str(), reason),
                ("cam-3", RevocationReason::Moved)
            );
            break;
        }
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    h.stop().await;
}

#[tokio::test]
async fn a_live_video_server_carries_on_through_a_daemon_restart_without_new_grants() {
    let h = Harness::start().await;
    let a = h.client("A").await;
    let wanted = items(&["c1", "c2", "c3"]);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(VideoServer::new(a, wanted).run(tx, stop.clone()));
    let mut epochs = Vec::new();
    while epochs.len() < 3 {
        if let ClientEvent::Granted {
            epoch,
            renewed: false,
            ..
        } = rx.recv().await.unwrap()
        {
            epochs.push(epoch);
        }
    }
    // Stop the daemon and start it again on the same state directory and socket.
    let Harness {
        daemon,
        clock,
        dir,
        listener,
    } = h;
    daemon.shutdown().await;
    let daemon = match Daemon::start(config(&dir, &listener), clock.clone()).await {
        Ok(d) => d,
        Err(e) => panic!("restart failed: {e}"),
    };
    let h = Harness {
        daemon,
        clock,
        dir,
        listener,
    };
    assert_eq!(
        h.camera_use().await,
        (3, 0),
        "the leases survived the restart"
    );
    // The client reconnects and re-claims with its epochs: renewals, not new grants.
    let mut renewed = 0;
    while renewed < 3 {
        match rx.recv().await.unwrap() {
            ClientEvent::Granted {
                renewed: true,
                epoch,
                ..
            } => {
                assert_eq!(epoch, 1);
                renewed += 1;
            }
            ClientEvent::Granted { camera, .. } => {
                panic!("{camera} was granted anew after the restart")
            }
            _ => {}
        }
    }
    assert_eq!(h.camera_use().await, (3, 0));
    stop.cancel();
    task.await.unwrap().unwrap();
    h.stop().await;
}

#[tokio::test]
async fn a_code_is_refused_after_use_and_after_24_hours() {
    let h = Harness::start().await;
    let client_at = |name: &str| {
        Client::with_clock(
            &h.dir.path().join(format!("{name}.json")),
            Trust::Demo,
            Some(h.daemon.local_addr().to_string()),
            h.clock.clone(),
        )
        .unwrap()
    };
    let used = h.code().await;
    client_at("first")
        .enrol(&used, "first", "1.0")
        .await
        .unwrap();
    let again = client_at("second").enrol(&used, "second", "1.0").await;
    assert!(
        matches!(
            again,
            Err(netkey::client::ClientError::Refused(Refusal::CodeInvalid))
        ),
        "{again:?}"
    );
    let late = h.code().await;
    h.clock.advance(24 * 3_600_000 + 1);
    let expired = client_at("third").enrol(&late, "third", "1.0").await;
    let err = expired.expect_err("a day-old code");
    assert!(
        matches!(
            err,
            netkey::client::ClientError::Refused(Refusal::CodeExpired)
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired"), "{err}");
    h.stop().await;
}

#[tokio::test]
async fn network_keys_are_not_served_on_the_local_socket() {
    let h = Harness::start().await;
    let local = format!("unix:{}", h.daemon.local_socket().display());
    let mut client = Client::with_clock(
        &h.dir.path().join("local.json"),
        Trust::Demo,
        Some(local),
        h.clock.clone(),
    )
    .unwrap();
    // The demo key is a network key: the local socket does not offer it.
    let err = client
        .enrol(&h.code().await, "local", "1.0")
        .await
        .expect_err("a network key over the local socket");
    assert!(err.to_string().contains("hosts no DEMO key"), "{err}");
    h.stop().await;
}
