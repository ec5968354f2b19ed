//! The client's side of discovery: DISCOVER by broadcast to every IPv4 interface's subnet
//! broadcast address and 255.255.255.255, and by unicast to configured addresses (or to
//! those alone), collecting OFFERs until a timeout.

use super::{decode, encode_discover, Datagram, Discover, Offer};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Where to look.
#[derive(Clone, Debug, Default)]
pub struct Search {
    /// Unicast targets (routers and VPNs do not pass broadcast).
    pub to: Vec<SocketAddr>,
    /// Also broadcast to this UDP port on every local IPv4 network.
    pub broadcast_port: Option<u16>,
    pub key_id: Option<String>,
    pub timeout: Duration,
}

/// One daemon that answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Where the OFFER came from.
    pub from: SocketAddr,
    /// Where to connect for the licence protocol.
    pub connect: SocketAddr,
    pub offer: Offer,
}

/// Every IPv4 interface's subnet broadcast address, plus the limited broadcast.
pub fn broadcast_targets(port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.addr {
            // An address added without `brd` reports itself (or nothing) as broadcast:
            // compute the subnet's broadcast address from the netmask instead.
            if_addrs::IfAddr::V4(v4) if !v4.is_loopback() => match v4.broadcast {
                Some(b) if b != v4.ip => Some(b),
                _ if v4.prefixlen < 31 => {
                    Some(Ipv4Addr::from(u32::from(v4.ip) | !u32::from(v4.netmask)))
                }
                _ => None,
            },
            _ => None,
        })
        .map(|b| SocketAddr::V4(SocketAddrV4::new(b, port)))
        .collect();
    out.push(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, port)));
    out.sort();
    out.dedup();
    out
}

pub async fn discover(search: &Search) -> std::io::Result<Vec<Found>> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())?;
    let socket = UdpSocket::from_std(socket.into())?;
    let nonce = u64::from_le_bytes(crate::daemon::random_bytes::<8>());
    let ask = encode_discover(&Discover {
        nonce,
        key_id: search.key_id.clone(),
        from_daemon: None,
    });
    let mut targets = search.to.clone();
    if let Some(port) = search.broadcast_port {
        targets.extend(broadcast_targets(port));
    }
    for t in &targets {
        // 255.255.255.255 fails with ENETUNREACH where no route covers it; the subnet
        // broadcasts still go out, so one failed target is no failure.
        if let Err(e) = socket.send_to(&ask, t).await {
            tracing::debug!(target = %t, "discovery send failed: {e}");
        }
    }
    let mut found: Vec<Found> = Vec::new();
    let deadline = tokio::time::Instant::now() + search.timeout;
    let mut buf = vec![0u8; 2048];
    loop {
        let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
        let Ok(Ok((n, from))) = received else { break };
        let Some(Datagram::Offer(offer)) = decode(&buf[..n]) else {
            continue;
        };
        if offer.nonce != nonce {
            continue;
        }
        let connect = offer
            .tcp_addr
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .filter(|a| !a.ip().is_unspecified())
            .unwrap_or(SocketAddr::new(from.ip(), offer.tcp_port));
        if !found
            .iter()
            .any(|f| f.offer.daemon_id == offer.daemon_id && f.from == from)
        {
            found.push(Found {
                from,
                connect,
                offer,
            });
        }
    }
    Ok(found)
}
