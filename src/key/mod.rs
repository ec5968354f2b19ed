//! Key documents: what a vendor-signed key entitles (entries, policy, classes) and how it
//! is signed and checked. The allocation core reads these types; it never sees bytes.

mod demo;
pub mod host;
mod sign;
pub mod signed;
mod version;

pub use demo::{demo_key, demo_vendor, DEMO_KEY_ID};
pub use host::{BindingError, HostBinding, HostSource, HostValues, IdentKind};
pub use sign::{KeyError, SignedKey, VendorKeyPair, VendorPublicKey};
pub use signed::{
    ActivationRequest, ClockResetToken, DaemonDoc, DaemonDocKind, DayUsage, ReturnReceipt,
    UsageReport,
};
pub use version::DeviceVersion;

use crate::core::time::{Timestamp, DAY, HOUR, SECOND};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type KeyId = String;
pub type Feature = String;

/// Whether a key serves the LAN or only this host's Unix socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Network,
    Local,
}

/// One sales-order line: `count` seats of `feature` until `not_after`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub feature: Feature,
    pub count: u32,
    pub not_after: Timestamp,
    /// The sales-order reference (seed 001 moves seats "by sales order").
    pub order: String,
}

/// The key document a vendor signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDocument {
    pub key_id: KeyId,
    pub revision: u32,
    pub kind: KeyKind,
    pub customer: String,
    pub issued_at: Timestamp,
    /// A demo key (built-in demo vendor): marked DEMO everywhere, refused by production clients.
    #[serde(default)]
    pub demo: bool,
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub policy: Policy,
    /// The daemon identity and hashed machine identifiers this key is bound to.
    #[serde(default)]
    pub host: Option<HostBinding>,
}

/// The rules a key imposes on its pools, servers and cameras.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub heartbeat_interval_secs: u64,
    pub offline_grace_secs: u64,
    /// How long a camera stays "newly added" after its first grant on this key: frees and
    /// kicks skip it (seed 000's protection against licence hopping). 0 disables it.
    pub revocation_period_secs: u64,
    pub overdraft_seats: u32,
    pub overdraft_hours: u32,
    /// A camera moved at least this many times within `contested_window_secs` raises
    /// `CameraContested`.
    pub contested_moves: u32,
    pub contested_window_secs: u64,
    /// Devices below this version are refused.
    pub min_device_version: Option<String>,
    /// Devices at or above `min_device_version` and below this one are legacy devices
    /// (seed 002): a perpetual licence that costs nothing, if `legacy_entitlement`.
    pub current_device_version: Option<String>,
    pub legacy_entitlement: bool,
    /// Video servers below this version may not enrol.
    pub min_server_version: Option<String>,
    /// Device classes and what one device of the class costs, e.g.
    /// `encoder-4ch = { camera = 4 }`. The class `camera` costs one `camera` unless listed.
    pub classes: BTreeMap<String, BTreeMap<Feature, u32>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            heartbeat_interval_secs: 60,
            offline_grace_secs: 14 * DAY / SECOND,
            revocation_period_secs: 0,
            overdraft_seats: 0,
            overdraft_hours: 0,
            contested_moves: 3,
            contested_window_secs: HOUR / SECOND,
            min_device_version: None,
            current_device_version: None,
            legacy_entitlement: false,
            min_server_version: None,
            classes: BTreeMap::new(),
        }
    }
}

impl Policy {
    pub fn heartbeat_interval_ms(&self) -> u64 {
        self.heartbeat_interval_secs.max(1).saturating_mul(SECOND)
    }
    pub fn offline_grace_ms(&self) -> u64 {
        self.offline_grace_secs.saturating_mul(SECOND)
    }
    pub fn revocation_period_ms(&self) -> u64 {
        self.revocation_period_secs.saturating_mul(SECOND)
    }
    pub fn contested_window_ms(&self) -> u64 {
        self.contested_window_secs.saturating_mul(SECOND)
    }

    /// Checks the policy makes sense before a key carrying it is issued or installed.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval_secs == 0 {
            return Err("heartbeat_interval_secs must be at least 1".into());
        }
        if self.offline_grace_ms() < 2 * self.heartbeat_interval_ms() {
            return Err(format!(
                "offline_grace_secs ({}) must be at least two heartbeat intervals ({}s)",
                self.offline_grace_secs,
                2 * self.heartbeat_interval_secs
            ));
        }
        for v in [
            &self.min_device_version,
            &self.current_device_version,
            &self.min_server_version,
        ]
        .into_iter()
        .flatten()
        {
            DeviceVersion::parse(v)?;
        }
        Ok(())
    }
}

impl KeyDocument {
    /// Seats of `feature` in entries still valid at `now`.
    pub fn total(&self, feature: &str, now: Timestamp) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.feature == feature && now < e.not_after)
            .map(|e| u64::from(e.count))
            .sum()
    }

    /// Every feature named by an entry, in order.
    pub fn features(&self) -> Vec<Feature> {
        let mut f: Vec<Feature> = self.entries.iter().map(|e| e.feature.clone()).collect();
        f.sort();
        f.dedup();
        f
    }

    /// The last not-after of any entry: after it the key serves nothing.
    pub fn expires_at(&self) -> Timestamp {
        self.entries
            .iter()
            .map(|e| e.not_after)
            .max()
            .unwrap_or(Timestamp::ZERO)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.key_id.is_empty() || self.key_id.contains('/') || self.key_id.len() > 64 {
            return Err(format!(
                "key id {:?} must be 1-64 characters without '/'",
                self.key_id
            ));
        }
        if self.entries.is_empty() {
            return Err("a key needs at least one entry".into());
        }
        for e in &self.entries {
            if e.feature.is_empty() || e.feature.len() > 64 {
                return Err(format!(
                    "feature name {:?} must be 1-64 characters",
                    e.feature
                ));
            }
        }
        self.policy.validate()
    }
}

/// Short text for a span of the policy, e.g. in `status`.
pub fn describe_interval(secs: u64) -> String {
    crate::core::time::human_span(secs.saturating_mul(SECOND))
}

/// What a vendor writes to issue a key (`netkey-vendor issue SPEC.toml`): a key document
/// whose issue instant defaults to now. `docs/KEYS.md` documents every field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub key_id: KeyId,
    #[serde(default = "one")]
    pub revision: u32,
    #[serde(default = "network")]
    pub kind: KeyKind,
    pub customer: String,
    #[serde(default)]
    pub issued_at: Option<Timestamp>,
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub host: Option<HostBinding>,
}

fn one() -> u32 {
    1
}
fn network() -> KeyKind {
    KeyKind::Network
}

impl KeySpec {
    pub fn from_toml(text: &str) -> Result<KeySpec, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The key of this spec bound to the daemon of a (verified) activation request: its
    /// identity and the salted hashes of its machine identifiers.
    pub fn activate(
        self,
        request: &ActivationRequest,
        now: Timestamp,
    ) -> Result<KeyDocument, String> {
        if self.host.is_some() {
            return Err(
                "the spec names a host already; `activate` takes the host from the request".into(),
            );
        }
        if request.host.daemon_identity != request.daemon_identity {
            return Err("the request's host binding names another daemon identity".into());
        }
        let mut doc = self.into_document(now)?;
        doc.host = Some(request.host.clone());
        Ok(doc)
    }

    pub fn into_document(self, now: Timestamp) -> Result<KeyDocument, String> {
        let doc = KeyDocument {
            key_id: self.key_id,
            revision: self.revision,
            kind: self.kind,
            customer: self.customer,
            issued_at: self.issued_at.unwrap_or(now),
            demo: false,
            entries: self.entries,
            policy: self.policy,
            host: self.host,
        };
        doc.validate()?;
        Ok(doc)
    }
}
