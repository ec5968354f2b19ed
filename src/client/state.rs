//! The client's state file: its binding (daemon id, key id), its credentials, the cameras
//! it holds with their epochs, and its grace deadline. Written atomically (temp file,
//! fsync, rename) with mode 0600, since it holds the server's secret.

use super::ClientError;
use crate::core::Timestamp;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCamera {
    pub epoch: u64,
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub modules: Vec<String>,
    #[serde(default)]
    pub device_version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientState {
    pub daemon_id: String,
    /// Where the daemon was last reached; the binding is the daemon id, not this.
    pub daemon_addr: String,
    pub key_id: String,
    pub pool: String,
    pub server_id: String,
    pub name: String,
    /// The enrolment secret, base64.
    pub secret: String,
    pub demo: bool,
    pub heartbeat_interval_ms: u64,
    pub offline_grace_ms: u64,
    pub cameras: BTreeMap<String, HeldCamera>,
    /// The instant the grace period ends if no heartbeat is answered before it.
    pub deadline: Option<Timestamp>,
    /// The daemon's audit head in its latest heartbeat answer: evidence against later
    /// rewriting of the daemon's audit log.
    #[serde(default)]
    pub audit_head: Option<crate::proto::AuditHead>,
}

impl ClientState {
    pub fn load(path: &Path) -> Result<Option<ClientState>, ClientError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                ClientError::State(format!(
                    "{} is not a netkey client state file: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::State(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| ClientError::State(e.to_string()))?;
        write_private_atomic(path, text.as_bytes())
            .map_err(|e| ClientError::State(format!("cannot write {}: {e}", path.display())))
    }

    pub fn secret_bytes(&self) -> Result<Vec<u8>, ClientError> {
        B64.decode(&self.secret)
            .map_err(|_| ClientError::State("the secret in the state file is not base64".into()))
    }

    pub fn encode_secret(secret: &[u8]) -> String {
        B64.encode(secret)
    }

    /// The digest of what this client believes it holds, as the daemon computes it.
    pub fn digest(&self) -> [u8; 32] {
        crate::core::digest::holdings(self.cameras.iter().map(|(c, h)| (c.as_str(), h.epoch)))
    }
}

pub use crate::files::write_private_atomic;
