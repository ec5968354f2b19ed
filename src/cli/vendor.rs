//! `netkey-vendor`'s command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "netkey-vendor",
    version,
    about = "Issue and verify netkey licence keys"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make a vendor signing key pair: DIR/vendor.key (secret, mode 0600) and DIR/vendor.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a key spec (TOML) into a key file.
    Issue {
        spec: PathBuf,
        #[arg(long)]
        signing_key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Activate a key for one daemon: the spec's key, bound to the identity and hashed
    /// machine identifiers of a customer's activation request (`netkeyctl key request`).
    Activate {
        request: PathBuf,
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        signing_key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a file and print what it says: a key file or clock-reset token (against
    /// --public-key), or an activation request, return receipt or usage report (signed
    /// by the daemon identity it names; with --key, also that it is the daemon the key
    /// was activated for).
    Verify {
        file: PathBuf,
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// A key file the receipt or report must belong to (needs --public-key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Sign a clock-reset token for the daemon of an activation request, naming the clock
    /// high-water mark the request reports (or --mark).
    ClockReset {
        request: PathBuf,
        #[arg(long)]
        signing_key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The mark to clear (RFC 3339), when the request names none.
        #[arg(long)]
        mark: Option<String>,
    },
}
