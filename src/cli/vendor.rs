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
    /// Check a key file's signature against a vendor public key and print what it grants.
    Verify {
        file: PathBuf,
        #[arg(long)]
        public_key: PathBuf,
    },
}
