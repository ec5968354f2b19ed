//! A video server cut off from the daemon (a TCP proxy the test breaks and mends), with
//! time injected on both sides: contact lost, grace warning, reconnection without new
//! grants, a client restart keeping its deadline, and grace ending strictly before the
//! daemon's reservation does (invariant 6).

use crate::inprocess::{items, Harness};
use netkey::client::{Backoff, Client, ClientEvent, Trust, VideoServer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Forwards connections to the daemon until cut.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c, l) = (cut.clone(), links.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                l.lock().unwrap().push(link.abort_handle());
            }
        });
        Proxy {
            addr,
            cut,
            links,
            task,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for l in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }

    fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn next_event(
    rx: &mut tokio::sync::mpsc::Receiver<ClientEvent>,
    what: &str,
    pick: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    let wait = async {
        loop {
            let e = rx.recv().await.expect("the video server stopped");
            if pick(&e) {
                return e;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} event"))
}

fn video_server(h: &Harness, proxy: &Proxy) -> VideoServer {
    let path = h.dir.path().join("A.json");
    let client = Client::with_clock(
        &path,
        Trust::Demo,
        Some(proxy.addr.to_string()),
        h.clock.clone(),
    )
    .unwrap();
    VideoServer::new(client, items(&["c1", "c2"]))
        .with_backoff(Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
        .with_grace_warning(0.25)
}

/// A running video server (`video_server`) and what a test needs to follow and stop it.
struct Running {
    rx: tokio::sync::mpsc::Receiver<ClientEvent>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), netkey::client::ClientError>>,
}

/// Starts the video server through the proxy and waits until both its cameras are granted.
async fn run_until_granted(h: &Harness, proxy: &Proxy) -> Running {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(video_server(h, proxy).run(tx, stop.clone()));
    for _ in 0..2 {
        next_event(&mut rx, "grant", |e| {
            matches!(e, ClientEvent::Granted { renewed: false, .. })
        })
        .await;
    }
    Running { rx, stop, task }
}

#[tokio::test]
async fn cut_off_the_client_keeps_recording_on_grace_and_stops_before_the_daemon_reservation_ends()
{
    let h = Harness::start().await;
    let enrolled = h.client("A").await;
    let server = enrolled.state().unwrap().server_id.clone();
    let grace = enrolled.state().unwrap().offline_grace_ms;
    let proxy = Proxy::start(h.daemon.local_addr()).await;
    let Running { mut rx, stop, task } = run_until_granted(&h, &proxy).await;

    // Cut: contact lost, the cameras keep recording on grace.
    proxy.cut();
    let lost = next_event(&mut rx, "contact lost", |e| {
        matches!(e, ClientEvent::ContactLost { .. })
    })
    .await;
    assert!(
        matches!(
            lost,
            ClientEvent::ContactLost {
                deadline: Some(_),
                ..
            }
        ),
        "{lost:?}"
    );
    h.clock.advance(grace * 30 / 100);
    next_event(&mut rx, "grace warning", |e| {
        matches!(e, ClientEvent::GraceWarning { .. })
    })
    .await;

    // Mended before the deadline: the client carries on, re-claiming, not re-granting.
    proxy.mend();
    let mut renewed = 0;
    while renewed < 2 {
        match next_event(&mut rx, "re-claim", |e| {
            matches!(e, ClientEvent::Granted { .. })
        })
        .await
        {
            ClientEvent::Granted { renewed: true, .. } => renewed += 1,
            other => panic!("granted anew after reconnecting: {other:?}"),
        }
    }
    assert_eq!(h.camera_use().await, (2, 0), "no seat counted twice");

    // Cut again, and restart the video server in between: its deadline survives.
    proxy.cut();
    let lost = next_event(&mut rx, "contact lost", |e| {
        matches!(e, ClientEvent::ContactLost { .. })
    })
    .await;
    let ClientEvent::ContactLost {
        deadline: Some(deadline),
        ..
    } = lost
    else {
        panic!("{lost:?}")
    };
    stop.cancel();
    task.await.unwrap().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(video_server(&h, &proxy).run(tx, stop.clone()));
    let lost = next_event(&mut rx, "contact lost after restart", |e| {
        matches!(e, ClientEvent::ContactLost { .. })
    })
    .await;
    assert!(
        matches!(lost, ClientEvent::ContactLost { deadline: Some(d), .. } if d == deadline),
        "{lost:?}"
    );

    // Time runs out: the client stops at its deadline, while the daemon still reserves.
    let reservation_end = h.reservation_end(&server).await;
    assert!(
        deadline < reservation_end,
        "deadline {deadline} vs reservation end {reservation_end}"
    );
    h.clock.set(deadline);
    next_event(&mut rx, "grace ended", |e| {
        matches!(e, ClientEvent::GraceEnded { cameras: 2 })
    })
    .await;
    assert_eq!(
        h.camera_use().await,
        (2, 0),
        "the daemon still reserves the seats when the client stops"
    );
    // Renewals persisted since may have moved the reservation later, never earlier.
    let reservation_end = h.reservation_end(&server).await.max(reservation_end);
    assert!(deadline < reservation_end);
    h.clock.set(reservation_end);
    assert_eq!(
        h.camera_use().await,
        (0, 0),
        "and frees them at its reservation end"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    drop(proxy);
    h.stop().await;
}

/// Restarts the video server on its state file after `edit`, cut off from the daemon:
/// returns the deadline it reports and whether it stopped its cameras at once.
async fn restart_cut_off_after(
    h: &Harness,
    proxy: &Proxy,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (Option<netkey::core::Timestamp>, bool) {
    let path = h.dir.path().join("A.json");
    let original = std::fs::read_to_string(&path).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&original).unwrap();
    edit(&mut state);
    std::fs::write(&path, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(video_server(h, proxy).run(tx, stop.clone()));
    let lost = next_event(&mut rx, "contact lost", |e| {
        matches!(e, ClientEvent::ContactLost { .. })
    })
    .await;
    let ClientEvent::ContactLost { deadline, .. } = lost else {
        unreachable!()
    };
    let ended = if deadline.is_none() {
        next_event(&mut rx, "grace ended", |e| {
            matches!(e, ClientEvent::GraceEnded { .. })
        })
        .await;
        true
    } else {
        false
    };
    stop.cancel();
    task.await.unwrap().unwrap();
    std::fs::write(&path, original).unwrap();
    (deadline, ended)
}

#[tokio::test]
async fn an_edited_state_file_voids_the_grace_instead_of_extending_it() {
    let h = Harness::start().await;
    h.client("A").await;
    let proxy = Proxy::start(h.daemon.local_addr()).await;
    let Running { mut rx, stop, task } = run_until_granted(&h, &proxy).await;
    proxy.cut();
    let ClientEvent::ContactLost {
        deadline: Some(deadline),
        ..
    } = next_event(&mut rx, "contact lost", |e| {
        matches!(e, ClientEvent::ContactLost { .. })
    })
    .await
    else {
        panic!("no deadline while cut off")
    };
    stop.cancel();
    task.await.unwrap().unwrap();

    // Untouched, the file proves the same deadline after a restart.
    let (kept, ended) = restart_cut_off_after(&h, &proxy, |_| {}).await;
    assert_eq!((kept, ended), (Some(deadline), false));
    // A longer validity, a later send time, an extra camera, another daemon identity:
    // each voids the grace, and the cameras stop at once.
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "valid_for_ms",
            Box::new(|s| s["lease"]["valid_for_ms"] = (1u64 << 40).into()),
        ),
        (
            "sent_at",
            Box::new(|s| {
                let sent = s["lease"]["sent_at"].as_str().unwrap();
                let sent = netkey::core::Timestamp::parse_rfc3339(sent).unwrap();
                s["lease"]["sent_at"] = sent.plus(86_400_000).to_string().into();
            }),
        ),
        (
            "cameras",
            Box::new(|s| {
                s["cameras"]["c9"] = serde_json::json!({"epoch": 1});
            }),
        ),
        (
            "daemon_identity",
            Box::new(|s| {
                let other = netkey::identity::Identity::generate().public().to_base64();
                s["daemon_identity"] = other.into();
            }),
        ),
    ];
    for (field, edit) in edits {
        let (deadline, ended) = restart_cut_off_after(&h, &proxy, edit).await;
        assert_eq!((deadline, ended), (None, true), "after editing {field}");
    }
    drop(proxy);
    h.stop().await;
}

#[tokio::test]
async fn the_client_finds_its_daemon_again_at_a_new_address() {
    use netkey::daemon::{Config, Daemon};
    let dir = tempfile::tempdir().unwrap();
    let clock = netkey::daemon::ManualClock::new(netkey::core::Timestamp(1_800_000_000_000));
    let config = |listen: SocketAddr, discovery: SocketAddr| Config {
        listen,
        admin_socket: dir.path().join("admin.sock"),
        state_dir: dir.path().join("state"),
        demo: true,
        no_broadcast: true,
        listener: None,
        discovery: Some(discovery),
        peers: Vec::new(),
        ..Config::default()
    };
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let d1 = Daemon::start(config(local, local), clock.clone())
        .await
        .unwrap();
    let udp = d1.discovery_addr().unwrap();
    let code = "31415926".to_string();
    let c = code.clone();
    let out = d1
        .core()
        .execute(netkey::core::Command::CreateCode {
            pool: netkey::core::PoolId::default_of("DEMO"),
            code: c,
        })
        .await
        .unwrap();
    assert!(matches!(out, netkey::core::Outcome::CodeCreated { .. }));
    let path = dir.path().join("A.json");
    let mut client = Client::with_clock(
        &path,
        Trust::Demo,
        Some(d1.local_addr().to_string()),
        clock.clone(),
    )
    .unwrap();
    client.enrol(&code, "A", "1").await.unwrap();
    let client = Client::with_clock(&path, Trust::Demo, None, clock.clone()).unwrap();
    let search = netkey::discovery::Search {
        to: vec![udp],
        broadcast_port: None,
        key_id: None,
        timeout: Duration::from_millis(300),
    };
    let vs = VideoServer::new(client, items(&["c1"]))
        .with_backoff(Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
        .with_rediscovery(search);
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(vs.run(tx, stop.clone()));
    next_event(&mut rx, "grant", |e| {
        matches!(e, ClientEvent::Granted { renewed: false, .. })
    })
    .await;
    let old = d1.local_addr();
    d1.shutdown().await;
    // The daemon comes back on another TCP port (same state, same discovery socket).
    let d2 = match Daemon::start(config(local, udp), clock.clone()).await {
        Ok(d) => d,
        Err(e) => panic!("restart on {udp}: {e}"),
    };
    assert_ne!(d2.local_addr(), old);
    let back = next_event(&mut rx, "reconnect", |e| {
        matches!(e, ClientEvent::Connected { .. })
    })
    .await;
    assert!(
        matches!(&back, ClientEvent::Connected { addr, .. } if *addr == d2.local_addr().to_string()),
        "{back:?}"
    );
    let again = next_event(&mut rx, "re-claim", |e| {
        matches!(e, ClientEvent::Granted { .. })
    })
    .await;
    assert!(
        matches!(again, ClientEvent::Granted { renewed: true, .. }),
        "{again:?}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        saved["daemon_addr"],
        d2.local_addr().to_string().as_str(),
        "the new address is remembered"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    d2.shutdown().await;
}
