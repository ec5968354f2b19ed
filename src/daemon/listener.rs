//! The TCP port: accepting within limits (in total and per source address), telling TLS
//! from plain HTTP by the first byte, the TLS handshake under a deadline, and handing
//! the stream to the protocol its ALPN names. Anything else gets a closed connection.

use super::owner::CoreHandle;
use super::{conn, DaemonInfo};
use crate::key::KeyKind;
use crate::tls::{peer_identity, ALPN_HTTP, ALPN_LICENCE};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The smallest frame limit that still takes a checkout chunk of the client library.
const MIN_FRAME: usize = 16 * 1024;

/// Every bound the daemon puts on what peers can make it hold. Each is a setting
/// (`[limits]` in the configuration file) with a default safe on a LAN of thousands of
/// video servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open TCP connections in total; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open TCP connections from one source address; more are closed at once.
    pub max_connections_per_source: usize,
    /// From accept to a finished TLS handshake (a slow-drip peer is dropped here).
    pub handshake_timeout_secs: u64,
    /// After the handshake, the time to log in or enrol.
    pub login_timeout_secs: u64,
    /// A logged-in connection with no complete frame for this long is closed.
    pub idle_timeout_secs: u64,
    /// Largest frame accepted, in bytes; a bigger one closes the connection. (The
    /// protocol's hard maximum, 64 KiB, bounds what is buffered before the check. Each
    /// connection handles one request at a time: pipelined requests wait in the socket,
    /// under TCP flow control, so requests in flight per connection are bounded too.)
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
            max_connections_per_source: 64,
            handshake_timeout_secs: 10,
            login_timeout_secs: 10,
            idle_timeout_secs: 15 * 60,
            max_frame_bytes: crate::proto::MAX_FRAME,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_source",
                self.max_connections_per_source as u64,
            ),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("login_timeout_secs", self.login_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("limits.{name} must be at least 1"));
        }
        if !(MIN_FRAME..=crate::proto::MAX_FRAME).contains(&self.max_frame_bytes) {
            return Err(format!(
                "limits.max_frame_bytes must be between {MIN_FRAME} and {}",
                crate::proto::MAX_FRAME
            ));
        }
        Ok(())
    }
    pub fn handshake_timeout(&self) -> Duration {
        timeout_of(self.handshake_timeout_secs)
    }
    pub fn login_timeout(&self) -> Duration {
        timeout_of(self.login_timeout_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        timeout_of(self.idle_timeout_secs)
    }
}

/// Longer timeouts are this one (a hundred years: never, in practice), so a deadline of
/// now plus any of them cannot overflow `Instant`.
const TIMEOUT_CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn timeout_of(secs: u64) -> Duration {
    Duration::from_secs(secs).min(TIMEOUT_CAP)
}

/// Connections open per source address; an entry goes when its last connection does.
#[derive(Debug, Default)]
struct PerSource {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Held by a connection's task; gives its slot back when dropped.
struct SourceSlot {
    sources: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    core: CoreHandle,
    info: Arc<DaemonInfo>,
    web: Arc<crate::web::WebContext>,
    shutdown: CancellationToken,
) {
    let limits = info.limits.clone();
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let sources = Arc::new(PerSource::default());
    let mut connections = tokio::task::JoinSet::new();
    let mut refused_sources: u64 = 0;
    loop {
        // Take a permit before accepting, so a flood waits in the backlog, not in memory.
        let permit = tokio::select! {
            p = total.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = sources.take(peer.ip(), limits.max_connections_per_source) else {
                    // One line per thousand, so a flood cannot fill the journal.
                    if refused_sources.is_multiple_of(1000) {
                        tracing::warn!(
                            source = %peer.ip(),
                            limit = limits.max_connections_per_source,
                            "too many connections from one source: closing new ones"
                        );
                    }
                    refused_sources += 1;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (core, info, shutdown) = (core.clone(), info.clone(), shutdown.clone());
                let web = web.clone();
                connections.spawn(async move {
                    dispatch(stream, peer, core, info, web, shutdown).await;
                    drop(slot);
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
    // Connections see the shutdown token and close; wait briefly for them to finish.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// A finished TLS handshake, by the protocol its ALPN chose.
enum Accepted {
    Licence(tokio_rustls::server::TlsStream<TcpStream>),
    Web(tokio_rustls::server::TlsStream<TcpStream>),
}

/// The first byte decides: 0x16 opens a TLS handshake; an HTTP method from loopback is
/// the web console in plain HTTP; anything else is closed without a word.
async fn dispatch(
    stream: TcpStream,
    peer: SocketAddr,
    core: CoreHandle,
    info: Arc<DaemonInfo>,
    web: Arc<crate::web::WebContext>,
    shutdown: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + info.limits.handshake_timeout();
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        r = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => r,
        _ = shutdown.cancelled() => return,
    };
    match peeked {
        Ok(Ok(1)) => {}
        _ => return,
    }
    match first[0] {
        0x16 => tls(stream, peer, deadline, core, info, web, shutdown).await,
        b if peer.ip().is_loopback() && crate::web::looks_like_http(b) => {
            crate::web::serve_http(stream, peer, false, web).await;
        }
        _ => tracing::debug!(peer = %peer, "neither TLS nor HTTP: closed"),
    }
}

async fn tls(
    stream: TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    core: CoreHandle,
    info: Arc<DaemonInfo>,
    web: Arc<crate::web::WebContext>,
    shutdown: CancellationToken,
) {
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let handshake = async {
        let start = acceptor.await.map_err(|e| e.to_string())?;
        let offered: Vec<Vec<u8>> = start
            .client_hello()
            .alpn()
            .map(|protocols| protocols.map(|p| p.to_vec()).collect())
            .unwrap_or_default();
        if offered.iter().any(|p| p == ALPN_LICENCE) {
            let config = info.tls.licence.clone();
            let tls = start.into_stream(config).await.map_err(|e| e.to_string())?;
            Ok(Accepted::Licence(tls))
        } else if offered.iter().any(|p| p == ALPN_HTTP) {
            let config = info.tls.web.clone();
            let tls = start.into_stream(config).await.map_err(|e| e.to_string())?;
            Ok(Accepted::Web(tls))
        } else {
            Err("the client offered neither netkey/1 nor http/1.1".to_string())
        }
    };
    let result = tokio::select! {
        r = tokio::time::timeout_at(deadline, handshake) => r,
        _ = shutdown.cancelled() => return,
    };
    match result {
        Ok(Ok(Accepted::Licence(tls))) => {
            let Some(identity) = peer_identity(tls.get_ref().1.peer_certificates()) else {
                tracing::debug!(peer = %peer, "licence client without an identity: closed");
                return;
            };
            conn::serve(tls, peer, identity, KeyKind::Network, core, info, shutdown).await;
        }
        Ok(Ok(Accepted::Web(tls))) => crate::web::serve_http(tls, peer, true, web).await,
        Ok(Err(e)) => tracing::debug!(peer = %peer, "TLS handshake failed: {e}"),
        Err(_) => tracing::debug!(peer = %peer, "TLS handshake not finished in time: closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_slots_come_back() {
        let s = Arc::new(PerSource::default());
        let ip: IpAddr = [127, 0, 0, 9].into();
        let a = s.take(ip, 2).expect("first");
        let b = s.take(ip, 2).expect("second");
        assert!(s.take(ip, 2).is_none(), "third refused");
        assert!(
            s.take([127, 0, 0, 8].into(), 2).is_some(),
            "others unaffected"
        );
        drop(a);
        assert!(s.take(ip, 2).is_some(), "a slot came back");
        drop(b);
    }

    #[test]
    fn a_timeout_however_long_makes_a_deadline() {
        let huge = Limits {
            handshake_timeout_secs: u64::MAX,
            login_timeout_secs: u64::MAX,
            idle_timeout_secs: u64::MAX,
            ..Limits::default()
        };
        assert!(huge.validate().is_ok());
        let now = tokio::time::Instant::now();
        for t in [
            huge.handshake_timeout(),
            huge.login_timeout(),
            huge.idle_timeout(),
        ] {
            assert!(now.checked_add(t).is_some(), "{t:?}");
            assert_eq!(t, TIMEOUT_CAP);
        }
        assert_eq!(Limits::default().idle_timeout(), Duration::from_secs(900));
    }

    #[test]
    fn limits_are_checked() {
        assert!(Limits::default().validate().is_ok());
        let bad = Limits {
            max_connections_per_source: 0,
            ..Limits::default()
        };
        assert!(bad
            .validate()
            .expect_err("zero")
            .contains("max_connections_per_source"));
    }
}
