//! The admin API: one JSON request per line on the admin Unix socket, one JSON answer per
//! line back. `netkeyctl` speaks it; the web console will serve the same requests.
//! `docs/ADMIN-API.md` lists every request and answer.

use crate::core::{CameraView, KeyView, PoolView, ServerView, Timestamp};
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
    /// The UDP address discovery answers on.
    pub discovery: Option<String>,
    /// Other daemons offering a key this one hosts: a key belongs on one daemon only.
    pub duplicate_keys: Vec<crate::discovery::DuplicateKey>,
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
