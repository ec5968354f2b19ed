//! The client's state file: its binding (daemon id and identity, key id), its own
//! identity, the cameras it holds with their epochs, and the daemon-signed lease token its
//! grace deadline comes from. Written atomically (temp file, fsync, rename) with mode
//! 0600, since it holds the server's private key.

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
    /// This video server's identity: Ed25519 PKCS#8, base64. It proves the server to the
    /// daemon over mutual TLS; no shared secret exists.
    pub identity: String,
    /// The daemon identity (public key, base64) pinned at enrolment: a daemon that proves
    /// another one is refused, naming both fingerprints.
    pub daemon_identity: String,
    /// The signed key file the binding came from: at load it is checked again against the
    /// vendor keys the program embeds, which anchors `daemon_identity` in the vendor.
    pub key_file: String,
    pub demo: bool,
    pub heartbeat_interval_ms: u64,
    pub offline_grace_ms: u64,
    pub cameras: BTreeMap<String, HeldCamera>,
    /// The instant the grace period ends if no heartbeat is answered before it. Never
    /// written: after a restart it is recomputed from `lease`, so editing the file cannot
    /// extend it.
    #[serde(skip)]
    pub deadline: Option<Timestamp>,
    /// The daemon's signed lease token from the last answered heartbeat.
    #[serde(default)]
    pub lease: Option<crate::proto::LeaseToken>,
    /// The latest instant this client's clock has shown: time never runs backwards for
    /// the grace period, even if the machine's clock is wound back.
    #[serde(default)]
    pub clock_hwm: Timestamp,
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

    /// This server's identity, from the file.
    pub fn identity(&self) -> Result<crate::identity::Identity, ClientError> {
        B64.decode(&self.identity)
            .ok()
            .and_then(|b| crate::identity::Identity::from_pkcs8(&b).ok())
            .ok_or_else(|| {
                ClientError::State("the identity in the state file is damaged; re-enrol".into())
            })
    }

    pub fn encode_identity(identity: &crate::identity::Identity) -> String {
        B64.encode(identity.pkcs8())
    }

    /// The grace deadline the file proves: the lease token must be signed by the pinned
    /// daemon identity, for this server and at least as many cameras as the file lists
    /// (released cameras need no new token; added ones do). Anything else (an edited
    /// file, a token from elsewhere) proves nothing, and the cameras wait for the daemon.
    pub fn proven_deadline(&self) -> Option<Timestamp> {
        let lease = self.lease.as_ref()?;
        let daemon = crate::identity::PublicKey::from_base64(&self.daemon_identity).ok()?;
        let valid = lease.verify(&daemon)
            && lease.server_id == self.server_id
            && self.cameras.len() <= lease.cameras as usize;
        valid.then(|| super::deadline_from(lease.sent_at, lease.valid_for_ms))
    }

    /// The digest of what this client believes it holds, as the daemon computes it.
    pub fn digest(&self) -> [u8; 32] {
        crate::core::digest::holdings(self.cameras.iter().map(|(c, h)| (c.as_str(), h.epoch)))
    }
}

pub use crate::files::write_private_atomic;
