//! `netkeyd`'s command line and configuration file, in the library so man pages and
//! completions are generated from the same definition. Every setting of the file is
//! also a flag; a flag overrides the file, the file overrides the default.

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/netkey/netkeyd.toml";

#[derive(Parser, Debug)]
#[command(
    name = "netkeyd",
    version,
    about = "netkey floating-licence daemon (TCP and UDP port 1947)",
    long_about = "netkey floating-licence daemon. Hosts signed network keys on TCP port 1947 and \
                  answers video servers that enrol, check out one licence per camera, heartbeat \
                  and release. Settings come from the configuration file (default \
                  /etc/netkey/netkeyd.toml); each flag overrides the file."
)]
pub struct Args {
    /// Configuration file [default: /etc/netkey/netkeyd.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address and port for the licence protocol [default: 0.0.0.0:1947].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// UDP address for discovery (DISCOVER/OFFER) [default: 0.0.0.0:1947].
    #[arg(long, value_name = "ADDR:PORT")]
    pub discovery: Option<SocketAddr>,
    /// Another daemon to ask for duplicates of this daemon's keys (repeatable); with
    /// peers given, nothing is broadcast.
    #[arg(long = "peer", value_name = "ADDR:PORT")]
    pub peers: Vec<SocketAddr>,
    /// State directory: the store, the audit log, the daemon id [default: /var/lib/netkey].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Unix socket for netkeyctl, mode 0660 [default: /run/netkey/admin.sock].
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Run with the built-in demo vendor and a DEMO network key (16 camera, 4 lpr).
    #[arg(long)]
    pub demo: bool,
    /// Never send broadcast datagrams.
    #[arg(long)]
    pub no_broadcast: bool,
    /// Validate the configuration, print the effective settings, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Restore a backup (from `netkeyctl backup`) into the state directory, then exit.
    /// The directory keeps its own daemon identity and the newer time high-water mark.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides it) [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// A vendor public key (`vendor.pub`) whose keys this daemon installs (repeatable;
    /// adds to `vendor_keys` of the file).
    #[arg(long = "vendor-key", value_name = "FILE")]
    pub vendor_keys: Vec<PathBuf>,
    /// Write the machine identifiers the service user cannot read (the board UUID, the
    /// root filesystem's UUID) to FILE for the daemon, then exit. The systemd unit runs
    /// this as root before starting netkeyd.
    #[arg(long, value_name = "FILE")]
    pub write_host_ids: Option<PathBuf>,
    /// A host name the web console answers to, besides localhost and loopback addresses
    /// (repeatable): the name administrators use to reach it over HTTPS. Requests for
    /// any other name are refused (DNS rebinding).
    #[arg(long = "console-host", value_name = "NAME")]
    pub console_hosts: Vec<String>,
    /// Make /metrics need a console session from loopback too (from other machines it
    /// always does).
    #[arg(long)]
    pub metrics_need_session: bool,
    /// Snapshot after this many log records instead of the default: for tests that want
    /// snapshots (and crashes during them) without committing tens of thousands of batches.
    #[arg(long, hide = true, value_name = "RECORDS")]
    pub snapshot_every: Option<u64>,
}

/// The configuration file. Unknown settings are errors, so a misspelt one is caught.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub discovery: Option<SocketAddr>,
    pub peers: Option<Vec<SocketAddr>>,
    pub state_dir: Option<PathBuf>,
    pub admin_socket: Option<PathBuf>,
    pub demo: Option<bool>,
    pub no_broadcast: Option<bool>,
    pub log_level: Option<String>,
    /// `[limits]`: bounds on connections, timeouts and frames.
    #[serde(default)]
    pub limits: crate::daemon::Limits,
    /// Vendor public key files (or their text) whose keys this daemon installs.
    pub vendor_keys: Option<Vec<String>>,
    pub console_hosts: Option<Vec<String>>,
    pub metrics_need_session: Option<bool>,
}

/// The settings in force: defaults, then the file, then the flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub listen: SocketAddr,
    pub discovery: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub state_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub demo: bool,
    pub no_broadcast: bool,
    pub log_level: String,
    pub limits: crate::daemon::Limits,
    /// Vendor public key files, or keys given as text.
    pub vendor_keys: Vec<String>,
    pub console_hosts: Vec<String>,
    pub metrics_need_session: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("log level {0:?} is not one of error, warn, info, debug, trace")]
    LogLevel(String),
    #[error("vendor key {entry}: {reason}")]
    VendorKey { entry: String, reason: String },
}

impl Settings {
    /// The trusted vendor keys: each entry is a public key file or the key's text.
    pub fn vendor_public_keys(&self) -> Result<Vec<crate::key::VendorPublicKey>, ConfigError> {
        self.vendor_keys
            .iter()
            .map(|entry| {
                let text = if entry.trim_start().starts_with("netkey-vendor-public-key") {
                    entry.clone()
                } else {
                    std::fs::read_to_string(entry).map_err(|e| ConfigError::VendorKey {
                        entry: entry.clone(),
                        reason: e.to_string(),
                    })?
                };
                crate::key::VendorPublicKey::from_text(&text).map_err(|e| ConfigError::VendorKey {
                    entry: entry.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })
    }
}

impl Args {
    /// Reads the configuration file (the default one only if it exists) and merges.
    pub fn settings(&self) -> Result<(Settings, Option<PathBuf>), ConfigError> {
        let (path, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => Some(FileConfig::parse(&path, &text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let used = file.as_ref().map(|_| path);
        let f = file.unwrap_or_default();
        let settings = Settings {
            listen: self
                .listen
                .or(f.listen)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], crate::DEFAULT_PORT))),
            discovery: self
                .discovery
                .or(f.discovery)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], crate::DEFAULT_PORT))),
            peers: if self.peers.is_empty() {
                f.peers.unwrap_or_default()
            } else {
                self.peers.clone()
            },
            state_dir: self
                .state_dir
                .clone()
                .or(f.state_dir)
                .unwrap_or_else(|| "/var/lib/netkey".into()),
            admin_socket: self
                .admin_socket
                .clone()
                .or(f.admin_socket)
                .unwrap_or_else(|| "/run/netkey/admin.sock".into()),
            demo: self.demo || f.demo.unwrap_or(false),
            no_broadcast: self.no_broadcast || f.no_broadcast.unwrap_or(false),
            log_level: self
                .log_level
                .clone()
                .or(f.log_level)
                .unwrap_or_else(|| "info".into()),
            limits: f.limits,
            vendor_keys: f
                .vendor_keys
                .unwrap_or_default()
                .into_iter()
                .chain(self.vendor_keys.iter().map(|p| p.display().to_string()))
                .collect(),
            console_hosts: if self.console_hosts.is_empty() {
                f.console_hosts.unwrap_or_default()
            } else {
                self.console_hosts.clone()
            },
            metrics_need_session: self.metrics_need_session
                || f.metrics_need_session.unwrap_or(false),
        };
        settings
            .limits
            .validate()
            .map_err(|message| ConfigError::Invalid {
                path: used.clone().unwrap_or_default(),
                message,
            })?;
        if !["error", "warn", "info", "debug", "trace"].contains(&settings.log_level.as_str()) {
            return Err(ConfigError::LogLevel(settings.log_level));
        }
        settings.vendor_public_keys()?;
        Ok((settings, used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_setting_is_named() {
        let err = FileConfig::parse(Path::new("x.toml"), "lisen = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:2000\"\nstate_dir = \"/srv/nk\"\nlog_level = \"debug\"\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "netkeyd",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:3000",
        ]);
        let (s, used) = args.settings().unwrap();
        assert_eq!(used.as_deref(), Some(path.as_path()));
        assert_eq!(s.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(s.state_dir, PathBuf::from("/srv/nk"));
        assert_eq!(s.log_level, "debug");
        assert_eq!(s.admin_socket, PathBuf::from("/run/netkey/admin.sock"));
    }

    #[test]
    fn vendor_keys_come_from_files_or_text_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pair = crate::key::VendorKeyPair::generate().unwrap();
        let file = dir.path().join("vendor.pub");
        std::fs::write(&file, pair.public().to_text()).unwrap();
        let conf = dir.path().join("n.toml");
        std::fs::write(
            &conf,
            format!(
                "vendor_keys = [{:?}, {:?}]\n",
                file.display().to_string(),
                pair.public().to_text().trim()
            ),
        )
        .unwrap();
        let args = Args::parse_from(["netkeyd", "--config", conf.to_str().unwrap()]);
        let (s, _) = args.settings().unwrap();
        assert_eq!(
            s.vendor_public_keys().unwrap(),
            vec![pair.public(), pair.public()]
        );
        let args = Args::parse_from([
            "netkeyd",
            "--config",
            "/dev/null",
            "--vendor-key",
            "/nonexistent.pub",
        ]);
        let err = args.settings().unwrap_err().to_string();
        assert!(err.contains("vendor key /nonexistent.pub"), "{err}");
    }

    #[test]
    fn an_explicit_missing_file_is_an_error_and_a_bad_level_too() {
        let args = Args::parse_from(["netkeyd", "--config", "/nonexistent/n.toml"]);
        assert!(matches!(args.settings(), Err(ConfigError::Read { .. })));
        let args = Args::parse_from(["netkeyd", "--config", "/dev/null", "--log-level", "loud"]);
        assert!(matches!(args.settings(), Err(ConfigError::LogLevel(_))));
    }
}
