//! The admin API: one JSON request per line on the admin Unix socket, one JSON answer per
//! line back. `netkeyctl` speaks it, and the web console's pages and forms make the same
//! requests, so every action is written once (`daemon::admin::AdminApi`).
//! `docs/ADMIN-API.md` lists every request and answer.

use crate::core::{CameraView, KeyView, PoolView, SeatRequest, SeatsMoved, ServerView, Timestamp};
use crate::proto::AuditHead;
use serde::{Deserialize, Serialize};

/// The longest request line the daemon reads.
pub const MAX_ADMIN_LINE: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    Status,
    KeyList,
    PoolList,
    PoolShow {
        pool: String,
    },
    PoolCode {
        pool: String,
    },
    /// A new pool of `key` (the only key, if absent) holding unused seats taken from its
    /// `Default` pool, per sales order where `order` is given.
    PoolCreate {
        name: String,
        key: Option<String>,
        seats: Vec<SeatRequest>,
    },
    /// Unused seats from one pool to another of the same key.
    PoolMove {
        from: String,
        to: String,
        seats: Vec<SeatRequest>,
    },
    /// Deletes a pool no server is enrolled in; its seats return to `Default`.
    PoolDelete {
        pool: String,
    },
    ServerList,
    ServerShow {
        server: String,
    },
    ServerRename {
        server: String,
        name: String,
    },
    ServerMove {
        server: String,
        pool: String,
    },
    ServerKick {
        server: String,
        force: bool,
    },
    CameraList {
        server: Option<String>,
        pool: Option<String>,
        /// Only cameras whose licence includes this feature.
        feature: Option<String>,
    },
    CameraFree {
        camera: String,
        key: Option<String>,
        force: bool,
    },
    /// Audit records from `since` (all when absent), with the chain's head.
    Audit {
        since: Option<Timestamp>,
    },
    /// A consistent backup of the state, without the daemon identity's private key.
    Backup,
    /// Installs a key file (its text): checked against the trusted vendors and this
    /// host; a higher revision of an installed key replaces it in place.
    KeyInstall {
        key: String,
    },
    /// An activation request for this daemon, signed by its identity.
    KeyRequest,
    /// Returns a key: its leases are revoked; once none remains (or with `force`) it is
    /// forgotten, recorded as returned, and a receipt signed by the identity answered.
    KeyReturn {
        key: String,
        force: bool,
    },
    /// A usage report of a key, signed by the identity.
    KeyReport {
        key: String,
    },
    /// Installs a vendor's clock-reset token (its text).
    KeyClockReset {
        token: String,
    },
    /// Seats in use per key and feature over time, sampled every 5 minutes and kept 31
    /// days: samples from `since` (the last 24 hours when absent).
    Usage {
        since: Option<Timestamp>,
    },
    /// A one-time URL that logs a browser on this machine into the web console.
    ConsoleLogin,
    /// Sets the password for web console logins over HTTPS (stored hashed), or removes
    /// it (`null`), which leaves only one-time URLs.
    ConsolePassword {
        password: Option<String>,
    },
}

/// The answer line: exactly one of `ok` or `error`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub daemon_id: String,
    /// The fingerprint of the daemon identity (what `netkeyctl client --pin` takes).
    pub identity: String,
    pub software: String,
    pub demo: bool,
    pub listen: String,
    pub now: Timestamp,
    pub started_at: Timestamp,
    pub servers: u64,
    pub servers_live: u64,
    pub cameras: u64,
    pub keys: Vec<KeyView>,
    pub audit_head: AuditHead,
    /// Set while the state store refuses writes (disk full, not writable): changes are
    /// refused, leases are renewed in memory.
    pub store_error: Option<String>,
    /// A checkpoint or snapshot is being written to the store on a thread of its own.
    /// Until it ends, memory also holds the state serialized and the store's write buffer.
    #[serde(default)]
    pub store_writing: bool,
    /// The UDP address discovery answers on.
    pub discovery: Option<String>,
    /// Other daemons offering a key this one hosts: a key belongs on one daemon only.
    pub duplicate_keys: Vec<crate::discovery::DuplicateKey>,
    /// The wall clock against its high-water mark.
    pub clock: Option<ClockView>,
}

/// The wall clock against the daemon's high-water mark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockView {
    pub wall: Timestamp,
    pub mark: Timestamp,
    /// Set while the wall clock is behind `mark` by more than the tolerance: new
    /// checkouts are refused until it passes this instant or a reset token is installed.
    pub rollback: Option<Timestamp>,
    pub tolerance_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInstalled {
    pub key_id: String,
    pub revision: u32,
    /// The revision it replaced in place (pools and leases kept).
    pub replaced: Option<u32>,
    pub demo: bool,
    pub binding: String,
}

/// A document signed by the daemon's identity (activation request, return receipt,
/// usage report), for `netkeyctl` to write to a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDocument {
    /// One line on what it says.
    pub summary: String,
    /// The file's text.
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockResetDone {
    /// The mark the token cleared.
    pub cleared: Timestamp,
    /// The daemon's time now: the wall clock.
    pub now: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeIssued {
    pub pool: String,
    pub code: String,
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDetail {
    pub pool: PoolView,
    pub servers: Vec<ServerView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerDetail {
    pub server: ServerView,
    pub cameras: Vec<CameraView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeResult {
    pub camera_id: String,
    pub key_id: String,
    pub server_id: String,
    /// `freed` (seat back), `revoking` (holder not yet acknowledged) or `forced`.
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KickResult {
    pub server_id: String,
    pub forgotten: bool,
    pub kept_newly_added: Vec<String>,
    pub revoking: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditExport {
    pub head: AuditHead,
    pub records: Vec<crate::store::AuditRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    pub taken_at: Timestamp,
    /// The backup file's bytes, base64.
    pub data: String,
}

/// What a pool command did: the seats that moved from `from` to `to`, per sales order,
/// and the pool it made or filled as it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolChanged {
    pub from: String,
    pub to: String,
    pub moved: Vec<SeatsMoved>,
    /// The pool created or filled (the target; `Default` after a delete).
    pub pool: PoolView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageHistory {
    pub now: Timestamp,
    pub sample_interval_secs: u64,
    pub samples: Vec<crate::store::UsageSample>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleUrl {
    pub url: String,
    pub expires_at: Timestamp,
}

impl PoolChanged {
    /// The seats that moved, per sales order, as a suffix for the one-line answer (": 4
    /// camera of SO-1, ..."); empty when none did. The console and netkeyctl say the same.
    pub fn moved_suffix(&self) -> String {
        if self.moved.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = self
            .moved
            .iter()
            .map(|m| format!("{} {} of {}", m.count, m.feature, m.order))
            .collect();
        format!(": {}", parts.join(", "))
    }
}

impl KickResult {
    /// What the kick did, in one sentence (the console and netkeyctl say the same).
    pub fn sentence(&self) -> String {
        if self.forgotten {
            return format!("server {} kicked and forgotten", self.server_id);
        }
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let mut parts = Vec::new();
        if !self.revoking.is_empty() {
            parts.push(format!(
                "{} camera{} revoking until it acknowledges or its reservation ends ({})",
                self.revoking.len(),
                plural(self.revoking.len()),
                self.revoking.join(", ")
            ));
        }
        if !self.kept_newly_added.is_empty() {
            parts.push(format!(
                "{} newly added camera{} kept ({})",
                self.kept_newly_added.len(),
                plural(self.kept_newly_added.len()),
                self.kept_newly_added.join(", ")
            ));
        }
        format!(
            "server {} kicked; not forgotten yet: {}",
            self.server_id,
            parts.join("; ")
        )
    }
}

impl FreeResult {
    /// What the free did, in one sentence (the console and netkeyctl say the same).
    pub fn sentence(&self) -> String {
        let what = match self.state.as_str() {
            "freed" => "freed: the holder acknowledged and the seat is back",
            "forced" => "freed by force: the seat is back now; the holder is told when it next connects (audited overlap)",
            _ => "revoking: the seat returns when the holder acknowledges or its reservation ends",
        };
        format!(
            "camera {} on server {}: {what}",
            self.camera_id, self.server_id
        )
    }
}
