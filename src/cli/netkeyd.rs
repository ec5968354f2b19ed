//! `netkeyd`'s command line, in the library so man pages and completions are generated
//! from the same definition.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "netkeyd",
    version,
    about = "netkey floating-licence daemon (TCP and UDP port 1947)"
)]
pub struct Args {
    /// Address and port for the licence protocol.
    #[arg(long, default_value = "0.0.0.0:1947")]
    pub listen: SocketAddr,
    /// State directory (daemon identity, later the store).
    #[arg(long, default_value = "/var/lib/netkey")]
    pub state_dir: PathBuf,
    /// Unix socket for netkeyctl (mode 0660).
    #[arg(long, default_value = "/run/netkey/admin.sock")]
    pub admin_socket: PathBuf,
    /// Run with the built-in demo vendor and a DEMO network key (16 camera, 4 lpr).
    #[arg(long)]
    pub demo: bool,
    /// Never send broadcast datagrams (discovery answers only).
    #[arg(long)]
    pub no_broadcast: bool,
    /// Restore a backup (from `netkeyctl backup`) into --state-dir, then exit. The state
    /// directory keeps its own daemon identity and the newer time high-water mark.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}
