//! Discovery on UDP with the real binaries, on loopback only: `netkeyctl discover` finds
//! the daemon; foreign datagrams get silence; an OFFER is never larger than its DISCOVER
//! and replies are rate limited per source; two daemons with the same key both report it.

use crate::util::*;
use netkey::discovery::{decode, encode_discover, Datagram, Discover, DISCOVER_SIZE};
use std::net::UdpSocket;
use std::time::Duration;

fn socket_on(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// Reads replies until 300 ms pass with none.
fn replies(s: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

#[test]
fn netkeyctl_discover_finds_the_daemon_by_unicast() {
    let d = DaemonProcess::start_demo();
    let status = d.json(&["status"]);
    let found = d.json(&["discover", "--to", &d.discovery(), "--timeout", "1"]);
    let daemons = found["daemons"].as_array().unwrap();
    assert_eq!(daemons.len(), 1, "{found}");
    assert_eq!(daemons[0]["daemon_id"], status["daemon_id"]);
    assert_eq!(daemons[0]["address"], d.addr.as_str());
    let key = &daemons[0]["keys"][0];
    assert_eq!(key["key_id"], "DEMO");
    assert_eq!(key["demo"], true);
    assert_eq!(key["seats"][0]["free"], 16);
    let table = d.ctl_ok(&["discover", "--to", &d.discovery(), "--timeout", "1"]);
    assert!(table.contains("DEMO [DEMO] camera 16/16"), "{table}");
}

#[test]
fn foreign_datagrams_get_silence_offers_fit_their_request_and_floods_are_limited() {
    let d = DaemonProcess::start_demo();
    let target = d.discovery();
    // Foreign traffic (another licence manager on the port): no answer at all.
    let s = socket_on("127.0.0.2");
    for junk in [
        &b"\x00\x00\x00\x01sentinel"[..],
        b"NKY",
        b"NKY\x02\x01",
        &[0u8; 1200][..],
    ] {
        s.send_to(junk, &target).unwrap();
    }
    assert!(replies(&s).is_empty(), "answered a foreign datagram");

    // A DISCOVER too small for any OFFER: silence rather than a bigger reply.
    let s = socket_on("127.0.0.3");
    let ask = encode_discover(&Discover {
        nonce: 1,
        key_id: None,
        from_daemon: None,
    });
    let short = &ask[..12];
    s.send_to(short, &target).unwrap();
    for r in replies(&s) {
        assert!(
            r.len() <= short.len(),
            "a {}-byte reply to a {}-byte request",
            r.len(),
            short.len()
        );
    }

    // A flood from one source: a burst is answered, the rest is not; every reply fits.
    let s = socket_on("127.0.0.4");
    for i in 0..50u64 {
        let ask = encode_discover(&Discover {
            nonce: i,
            key_id: None,
            from_daemon: None,
        });
        s.send_to(&ask, &target).unwrap();
    }
    let got = replies(&s);
    assert!(
        !got.is_empty() && got.len() <= 6,
        "{} replies to a flood of 50",
        got.len()
    );
    for r in &got {
        assert!(r.len() <= DISCOVER_SIZE);
        assert!(matches!(decode(r), Some(Datagram::Offer(_))));
    }
    // Another source is not starved by the flood.
    let s = socket_on("127.0.0.5");
    s.send_to(
        &encode_discover(&Discover {
            nonce: 9,
            key_id: None,
            from_daemon: None,
        }),
        &target,
    )
    .unwrap();
    assert_eq!(replies(&s).len(), 1);
    // Asking for a key it does not host: silence.
    let s = socket_on("127.0.0.6");
    let other = Discover {
        nonce: 3,
        key_id: Some("NOT-HERE".into()),
        from_daemon: None,
    };
    s.send_to(&encode_discover(&other), &target).unwrap();
    assert!(replies(&s).is_empty());
}

#[test]
fn two_daemons_hosting_the_same_key_both_report_duplicate_key() {
    let a = DaemonProcess::start_demo();
    let b = DaemonProcess::start_demo_with(&["--peer", &a.discovery()]);
    let dup = |d: &DaemonProcess| {
        d.json(&["status"])["duplicate_keys"]
            .as_array()
            .map(|v| v.iter().any(|x| x["key_id"] == "DEMO"))
            .unwrap_or(false)
    };
    eventually("B to report the duplicate", || dup(&b));
    eventually("A to report the duplicate", || dup(&a));
    assert!(a.ctl_ok(&["status"]).contains("DuplicateKey: key DEMO"));
}
