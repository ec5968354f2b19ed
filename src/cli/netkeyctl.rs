//! `netkeyctl`'s command line, in the library so man pages and completions are generated
//! from the same definition.

use clap::{Args as ClapArgs, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "netkeyctl",
    version,
    about = "Administer netkeyd, or act as a video server from the shell"
)]
pub struct Cli {
    /// The daemon's admin socket.
    #[arg(long, global = true, default_value = "/run/netkey/admin.sock")]
    pub socket: PathBuf,
    /// Print one JSON document on stdout instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Keys, seat usage and servers at a glance.
    Status,
    /// Print a one-time URL that logs a browser on this machine into the web console
    /// (valid 5 minutes), or set the password for logins over HTTPS.
    Console {
        /// Read a new console password from standard input (stored hashed); remote
        /// browsers log in with it over HTTPS.
        #[arg(long, conflicts_with = "clear_password")]
        set_password: bool,
        /// Remove the console password: only one-time URLs log in then.
        #[arg(long)]
        clear_password: bool,
    },
    #[command(subcommand)]
    Key(KeyCmd),
    #[command(subcommand)]
    Pool(PoolCmd),
    #[command(subcommand)]
    Server(ServerCmd),
    #[command(subcommand)]
    Camera(CameraCmd),
    /// Find licence daemons on the LAN (UDP 1947), or ask the given addresses only.
    Discover {
        /// How long to collect answers.
        #[arg(long, default_value_t = 2.0, value_name = "SECS")]
        timeout: f64,
        /// The UDP port to broadcast to, and for --to addresses without one.
        #[arg(long, default_value_t = crate::DEFAULT_PORT)]
        port: u16,
        /// Ask this daemon directly (repeatable); with --to, nothing is broadcast.
        #[arg(long = "to", value_name = "ADDR[:PORT]")]
        to: Vec<String>,
    },
    /// Export the audit log, or verify its hash chain.
    Audit(AuditArgs),
    /// Write a consistent backup of the daemon's state (never its identity's private key).
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// Act as a video server (for testing a deployment and for scripts).
    Client(ClientArgs),
}

#[derive(ClapArgs, Debug)]
pub struct AuditArgs {
    /// Only records at or after this RFC 3339 instant.
    #[arg(long)]
    pub since: Option<String>,
    /// csv or json (default: a table).
    #[arg(long)]
    pub format: Option<String>,
    #[command(subcommand)]
    pub verify: Option<AuditCmd>,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check the hash chain; with --anchor, also that it extends an earlier head (an
    /// earlier `audit --format json` export, or a video server's state file).
    Verify {
        #[arg(long)]
        anchor: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Installed keys: kind, revision, customer, entries, host binding, seats, overdraft.
    List,
    /// Install a key file from the vendor; a higher revision of an installed key
    /// replaces it in place, keeping pools and leases.
    Install { file: PathBuf },
    /// Write an activation request (this daemon's identity and hashed machine
    /// identifiers) for the vendor to activate a key for this host, or repair one.
    Request {
        #[arg(long)]
        out: PathBuf,
    },
    /// Return a key to move it to another host: its leases are revoked; once none
    /// remains (or with --force) it is forgotten here and a signed receipt is written.
    Return {
        key_id: String,
        #[arg(long)]
        out: PathBuf,
        /// Drop leases still counted instead of waiting for them (an audited overlap).
        #[arg(long)]
        force: bool,
    },
    /// Write a signed usage report of a key: peak seats per feature per day and
    /// overdraft hours, for true-up and renewal.
    Report {
        key_id: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Install a vendor's clock-reset token: clears a clock rollback once.
    ClockReset { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Pools with their seats per feature: allocated, in use, revoking, free, servers.
    List,
    /// One pool: seats per feature, the sales orders it holds, its servers.
    Show { pool: String },
    /// Create pool NAME with unused seats from the key's Default pool: FEATURE=N takes
    /// them from the entries that expire last, FEATURE=N@ORDER from that sales order.
    Create {
        name: String,
        /// The key (may be left out when only one key is installed).
        #[arg(long, value_name = "KEY_ID")]
        key: Option<String>,
        #[arg(value_name = "FEATURE=N[@ORDER]")]
        seats: Vec<String>,
    },
    /// Move unused seats from pool FROM to pool TO of the same key.
    Move {
        from: String,
        to: String,
        #[arg(required = true, value_name = "FEATURE=N[@ORDER]")]
        seats: Vec<String>,
    },
    /// Delete a pool no server is enrolled in; its seats go back to Default.
    Delete { pool: String },
    /// Print a one-time 8-digit enrolment code for POOL, valid 24 hours.
    Code { pool: String },
}

#[derive(Subcommand, Debug)]
pub enum ServerCmd {
    List,
    Show {
        id: String,
    },
    Rename {
        id: String,
        name: String,
    },
    Move {
        id: String,
        pool: String,
    },
    /// Revoke a server's cameras (newly added ones stay) and forget it once it holds nothing.
    Kick {
        id: String,
        /// Free its seats at once, without waiting for it (an audited overlap).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CameraCmd {
    /// Licensed cameras (held and revoking), optionally of one server, pool or feature.
    List {
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        /// Only cameras whose licence includes this feature (e.g. lpr).
        #[arg(long)]
        feature: Option<String>,
    },
    /// Free a camera's licence: the holder is told to stop recording it.
    Free {
        camera: String,
        /// The key, where the camera id exists on several keys.
        #[arg(long)]
        key: Option<String>,
        /// Free the seat at once, without waiting for the holder (an audited overlap).
        #[arg(long)]
        force: bool,
    },
}

#[derive(ClapArgs, Debug)]
pub struct ClientArgs {
    /// The video server's state file (binding, credentials, held cameras).
    #[arg(long)]
    pub state: PathBuf,
    /// Trust the built-in demo vendor (DEMO keys only).
    #[arg(long, conflicts_with = "vendor_key")]
    pub demo: bool,
    /// A vendor public key file to trust (repeatable).
    #[arg(long = "vendor-key", value_name = "FILE")]
    pub vendor_key: Vec<PathBuf>,
    /// The daemon's address (ADDR:PORT); defaults to the one in the state file.
    #[arg(long)]
    pub daemon: Option<String>,
    /// Accept only the daemon whose identity has this fingerprint (as `netkeyctl status`
    /// and `discover` show it), on top of the vendor check.
    #[arg(long, value_name = "FINGERPRINT")]
    pub pin: Option<String>,
    #[command(subcommand)]
    pub command: ClientCmd,
}

#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    /// Enrol with a one-time code from `pool code`.
    Enrol {
        code: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        version: String,
    },
    Checkout {
        #[arg(required = true)]
        cameras: Vec<String>,
        #[arg(long)]
        class: Option<String>,
        #[arg(long = "module")]
        modules: Vec<String>,
        #[arg(long)]
        device_version: Option<String>,
    },
    Release {
        #[arg(required = true)]
        cameras: Vec<String>,
    },
    Status,
    /// Run as a live video server until SIGTERM, one line per event.
    Run {
        cameras: Vec<String>,
    },
}
