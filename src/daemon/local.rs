//! The local licence socket: local keys are served here and nowhere else, to video
//! servers on this host whose user is root or in the daemon's group (`netkey`). The
//! socket file is mode 0660 (the kernel's check); the peer's credentials (SO_PEERCRED,
//! and its supplementary groups from /proc) are checked again on every connection.
//! Inside, the same TLS 1.3 and licence protocol as on TCP.

use super::owner::CoreHandle;
use super::{conn, DaemonInfo};
use crate::key::KeyKind;
use crate::tls::{peer_identity, ALPN_LICENCE};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// The group whose members may use local keys.
pub const LOCAL_GROUP: &str = "netkey";

/// Binds the local socket, replacing a stale one, mode 0660.
pub(super) async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    super::admin::bind(path).await
}

/// Who may connect: root, the daemon's own user, or a member of `LOCAL_GROUP`.
#[derive(Clone, Debug)]
struct Allowed {
    own_uid: Option<u32>,
    group: Option<u32>,
}

impl Allowed {
    fn here() -> Allowed {
        use std::os::unix::fs::MetadataExt;
        Allowed {
            own_uid: std::fs::metadata("/proc/self").ok().map(|m| m.uid()),
            group: group_id(
                &std::fs::read_to_string("/etc/group").unwrap_or_default(),
                LOCAL_GROUP,
            ),
        }
    }

    fn admits(&self, uid: u32, gid: u32, supplementary: &[u32]) -> bool {
        uid == 0
            || Some(uid) == self.own_uid
            || self
                .group
                .is_some_and(|g| gid == g || supplementary.contains(&g))
    }
}

/// The id of group `name` in an /etc/group text.
fn group_id(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// A process's supplementary groups, from the `Groups:` line of /proc/PID/status.
fn supplementary_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) async fn serve(
    listener: UnixListener,
    core: CoreHandle,
    info: Arc<DaemonInfo>,
    shutdown: CancellationToken,
) {
    let allowed = Allowed::here();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("local socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        let supplementary = cred
            .pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .map(|s| supplementary_groups(&s))
            .unwrap_or_default();
        if !allowed.admits(cred.uid(), cred.gid(), &supplementary) {
            tracing::warn!(
                uid = cred.uid(),
                gid = cred.gid(),
                "local licence socket: the peer is neither root nor in group {LOCAL_GROUP}: closed"
            );
            continue;
        }
        // Finished connections are reaped first: `len` counts them until they are.
        while connections.try_join_next().is_some() {}
        if connections.len() >= info.limits.max_connections {
            continue;
        }
        let (core, info, shutdown) = (core.clone(), info.clone(), shutdown.clone());
        connections.spawn(tls(stream, core, info, shutdown));
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn tls(
    stream: UnixStream,
    core: CoreHandle,
    info: Arc<DaemonInfo>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(info.tls.licence.clone());
    let handshake = tokio::time::timeout(info.limits.handshake_timeout(), acceptor.accept(stream));
    let tls = tokio::select! {
        r = handshake => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!("local TLS handshake failed: {e}");
                return;
            }
            Err(_) => return,
        },
        _ = shutdown.cancelled() => return,
    };
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_LICENCE) {
        return;
    }
    let Some(identity) = peer_identity(tls.get_ref().1.peer_certificates()) else {
        return;
    };
    // Local peers have no network address; the guessing defence counts them as one
    // source, the loopback address.
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    conn::serve(tls, peer, identity, KeyKind::Local, core, info, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_and_credentials() {
        let etc = "root:x:0:\nnetkey:x:998:vms,ops\nvideo:x:44:\n";
        assert_eq!(group_id(etc, "netkey"), Some(998));
        assert_eq!(group_id(etc, "nobody"), None);
        let status = "Name:\tvms\nGroups:\t44 998 \nVmRSS:\t1 kB\n";
        assert_eq!(supplementary_groups(status), vec![44, 998]);
        let a = Allowed {
            own_uid: Some(997),
            group: Some(998),
        };
        assert!(a.admits(0, 0, &[]), "root");
        assert!(a.admits(997, 997, &[]), "the daemon's own user");
        assert!(a.admits(1000, 998, &[]), "primary group netkey");
        assert!(
            a.admits(1000, 1000, &[44, 998]),
            "supplementary group netkey"
        );
        assert!(!a.admits(1000, 1000, &[44]), "anyone else");
        let no_group = Allowed {
            own_uid: Some(997),
            group: None,
        };
        assert!(!no_group.admits(1000, 998, &[998]));
    }
}
