//! The built-in demo vendor and demo network key used by `netkeyd --demo`: 16 `camera`
//! and 4 `lpr` seats, marked DEMO everywhere (like Sentinel's DEMOMA vendor code).
//!
//! The demo signing key is derived from a public constant on purpose: anyone can sign
//! demo keys, which is why production clients refuse any key signed by it.

use super::{Entry, KeyDocument, KeyKind, Policy, VendorKeyPair};
use crate::core::time::{Timestamp, DAY};

pub const DEMO_KEY_ID: &str = "DEMO";

pub fn demo_vendor() -> VendorKeyPair {
    let digest = ring::digest::digest(&ring::digest::SHA256, b"netkey demo vendor, not a secret");
    let mut seed = [0u8; 32];
    seed.copy_from_slice(digest.as_ref());
    // A 32-byte seed is always a valid Ed25519 private key.
    #[allow(clippy::expect_used)]
    VendorKeyPair::from_seed(&seed).expect("a 32-byte seed makes an Ed25519 key")
}

/// The demo network key, issued at `now` and valid for a year.
pub fn demo_key(now: Timestamp) -> KeyDocument {
    let not_after = Timestamp::from_millis(now.millis() - now.millis() % DAY).plus(366 * DAY);
    KeyDocument {
        key_id: DEMO_KEY_ID.to_string(),
        revision: 1,
        kind: KeyKind::Network,
        customer: "DEMO customer".to_string(),
        issued_at: now,
        demo: true,
        entries: vec![
            Entry {
                feature: "camera".into(),
                count: 16,
                not_after,
                order: "DEMO-CAM".into(),
            },
            Entry {
                feature: "lpr".into(),
                count: 4,
                not_after,
                order: "DEMO-LPR".into(),
            },
        ],
        policy: Policy {
            heartbeat_interval_secs: 10,
            offline_grace_secs: 3600,
            ..Policy::default()
        },
        host: None,
    }
}
