//! The daemon's side of discovery: answers DISCOVER with an OFFER (rate limited per
//! source and in total, never larger than the request), stays silent to anything else,
//! and looks for other daemons offering the same key ids (DuplicateKey) by sending
//! DISCOVER itself: to explicit peers, or by broadcast unless broadcasting is off.

use super::{decode, encode_discover, encode_offer, Datagram, Discover, Offer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Replies per source: a burst of this many, then `PER_SOURCE_RATE` a second.
const PER_SOURCE_BURST: f64 = 5.0;
const PER_SOURCE_RATE: f64 = 2.0;
/// Replies in total per second, whatever the sources.
const GLOBAL_RATE: u32 = 200;
const MAX_SOURCES: usize = 10_000;
/// How often the daemon looks for duplicates of its keys.
const DUPLICATE_SEARCH: Duration = Duration::from_secs(300);

/// Another daemon offering a key id this one hosts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DuplicateKey {
    pub key_id: String,
    pub other_daemon: String,
    pub other_address: String,
}

#[derive(Debug)]
pub struct Responder {
    pub local_addr: SocketAddr,
    pub duplicates: Arc<Mutex<Vec<DuplicateKey>>>,
    pub task: tokio::task::JoinHandle<()>,
}

struct Limiter {
    sources: HashMap<IpAddr, (f64, Instant)>,
    second: Instant,
    sent_this_second: u32,
}

impl Limiter {
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.sent_this_second = 0;
        }
        if self.sent_this_second >= GLOBAL_RATE {
            return false;
        }
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            // A spoofed-source flood: forget everyone rather than grow without bound.
            self.sources.clear();
        }
        let (tokens, last) = self.sources.entry(ip).or_insert((PER_SOURCE_BURST, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * PER_SOURCE_RATE)
            .min(PER_SOURCE_BURST);
        *last = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        self.sent_this_second += 1;
        true
    }
}

/// Binds the discovery socket (address reuse, broadcast allowed) and starts answering.
/// `offer` holds the current OFFER (the nonce is filled in per reply); `peers` are
/// asked for duplicates directly; with `broadcast`, the local networks are asked too.
pub fn spawn_responder(
    bind: SocketAddr,
    offer: watch::Receiver<Offer>,
    peers: Vec<SocketAddr>,
    broadcast: bool,
    duplicates: Arc<Mutex<Vec<DuplicateKey>>>,
    shutdown: CancellationToken,
) -> std::io::Result<Responder> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    let socket = UdpSocket::from_std(socket.into())?;
    let local_addr = socket.local_addr()?;
    let task = tokio::spawn(run(
        socket,
        offer,
        peers,
        broadcast,
        duplicates.clone(),
        shutdown,
    ));
    Ok(Responder {
        local_addr,
        duplicates,
        task,
    })
}

async fn run(
    socket: UdpSocket,
    offer: watch::Receiver<Offer>,
    peers: Vec<SocketAddr>,
    broadcast: bool,
    duplicates: Arc<Mutex<Vec<DuplicateKey>>>,
    shutdown: CancellationToken,
) {
    let mut limiter = Limiter {
        sources: HashMap::new(),
        second: Instant::now(),
        sent_this_second: 0,
    };
    let mut buf = vec![0u8; 2048];
    // The first search waits until the daemon's keys are in the OFFER.
    let mut next_search = tokio::time::Instant::now() + Duration::from_millis(300);
    let own_nonce = u64::from_le_bytes(crate::daemon::random_bytes::<8>());
    let mut asked_back: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                match decode(&buf[..n]) {
                    Some(Datagram::Discover(d)) => {
                        let template = offer.borrow().clone();
                        if d.from_daemon.as_deref() == Some(template.daemon_id.as_str()) {
                            continue; // our own search, heard by broadcast
                        }
                        if d.key_id.as_ref().is_some_and(|k| !template.keys.iter().any(|o| &o.key_id == k)) {
                            continue;
                        }
                        if !limiter.allow(from.ip(), Instant::now()) {
                            continue;
                        }
                        let reply = Offer { nonce: d.nonce, ..template };
                        // Never larger than the request: no amplification.
                        if let Some(bytes) = encode_offer(&reply, n) {
                            let _ = socket.send_to(&bytes, from).await;
                        }
                        // Another daemon looking for duplicates: ask it back, so both
                        // sides learn of a key they share.
                        let ask_back = d.from_daemon.as_ref().is_some_and(|other| {
                            // Once per daemon per search period, or two daemons would
                            // bounce their searches back and forth.
                            let now = Instant::now();
                            let due = asked_back.get(other).is_none_or(|t: &Instant| now.duration_since(*t) >= DUPLICATE_SEARCH);
                            if due {
                                if asked_back.len() >= MAX_SOURCES {
                                    asked_back.clear();
                                }
                                asked_back.insert(other.clone(), now);
                            }
                            due
                        });
                        if ask_back && limiter.allow(from.ip(), Instant::now()) {
                            let me = offer.borrow().daemon_id.clone();
                            let ask = encode_discover(&Discover { nonce: own_nonce, key_id: None, from_daemon: Some(me) });
                            let _ = socket.send_to(&ask, from).await;
                        }
                    }
                    Some(Datagram::Offer(o)) if o.nonce == own_nonce => {
                        let mine = offer.borrow().clone();
                        if o.daemon_id == mine.daemon_id {
                            continue;
                        }
                        for k in &o.keys {
                            if mine.keys.iter().any(|m| m.key_id == k.key_id) {
                                let dup = DuplicateKey {
                                    key_id: k.key_id.clone(),
                                    other_daemon: o.daemon_id.clone(),
                                    other_address: from.to_string(),
                                };
                                let mut list = duplicates.lock().unwrap_or_else(|e| e.into_inner());
                                if !list.contains(&dup) {
                                    tracing::warn!(key_id = %dup.key_id, other_daemon = %dup.other_daemon, other_address = %dup.other_address,
                                        "DuplicateKey: another daemon offers a key this daemon hosts; a key must be installed on one daemon only");
                                    list.push(dup);
                                }
                            }
                        }
                    }
                    // Foreign traffic (Sentinel shares this port) and stray offers: silence.
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(next_search) => {
                if offer.borrow().keys.is_empty() {
                    next_search = tokio::time::Instant::now() + Duration::from_secs(1);
                    continue;
                }
                next_search = tokio::time::Instant::now() + DUPLICATE_SEARCH;
                let me = offer.borrow().daemon_id.clone();
                let ask = encode_discover(&Discover { nonce: own_nonce, key_id: None, from_daemon: Some(me) });
                let port = socket.local_addr().map(|a| a.port()).unwrap_or(crate::DEFAULT_PORT);
                for peer in &peers {
                    let _ = socket.send_to(&ask, peer).await;
                }
                if broadcast {
                    for target in super::search::broadcast_targets(port) {
                        let _ = socket.send_to(&ask, target).await;
                    }
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_a_burst_then_the_steady_rate() {
        let mut l = Limiter {
            sources: HashMap::new(),
            second: Instant::now(),
            sent_this_second: 0,
        };
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let t = Instant::now();
        let allowed = (0..50).filter(|_| l.allow(ip, t)).count();
        assert_eq!(allowed, PER_SOURCE_BURST as usize);
        assert!(
            l.allow(ip, t + Duration::from_millis(600)),
            "tokens refill at the steady rate"
        );
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(l.allow(other, t), "another source has its own budget");
    }
}
