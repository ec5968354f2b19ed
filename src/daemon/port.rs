//! Naming who holds a port: when 1947 is taken (often by Sentinel's License Manager), the
//! error says which process has it, where /proc lets us see, else which user.

use std::net::SocketAddr;

/// Adds the holder of `addr` to an "address in use" error.
pub fn port_error(addr: SocketAddr, err: std::io::Error, proto: &str) -> std::io::Error {
    if err.kind() != std::io::ErrorKind::AddrInUse {
        return err;
    }
    let who = holder(addr.port(), proto).unwrap_or_else(|| "a process this user cannot see".into());
    std::io::Error::new(
        err.kind(),
        format!("{err}: {proto} port {} is held by {who}", addr.port()),
    )
}

/// (inode, uid) of sockets bound to `port` in /proc/net/{proto}{,6}.
fn sockets(port: u16, proto: &str) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    for file in [format!("/proc/net/{proto}"), format!("/proc/net/{proto}6")] {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(uid), Some(inode)) = (cols.get(1), cols.get(7), cols.get(9))
            else {
                continue;
            };
            let Some(p) = local
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            if p == port {
                if let (Ok(i), Ok(u)) = (inode.parse(), uid.parse()) {
                    out.push((i, u));
                }
            }
        }
    }
    out
}

fn holder(port: u16, proto: &str) -> Option<String> {
    let socks = sockets(port, proto);
    let (_, uid) = *socks.first()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if socks
                .iter()
                .any(|(inode, _)| link == format!("socket:[{inode}]"))
            {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some(format!("{} (pid {pid})", comm.trim()));
            }
        }
    }
    Some(format!("a process of uid {uid}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_process_holding_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let err = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address in use");
        let msg = super::port_error(addr, err, "tcp").to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }
}
