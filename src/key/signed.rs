//! The other signed documents of activation (docs/KEYS.md):
//! - signed by the daemon's identity: activation requests (`netkeyctl key request`),
//!   return receipts (`key return`) and usage reports (`key report`), which the vendor
//!   reads with `netkey-vendor verify`;
//! - signed by the vendor: clock-reset tokens (`netkey-vendor clock-reset`), which a
//!   daemon installs with `netkeyctl key clock-reset`.
//!
//! Like key files, each is JSON holding the document as a JSON *string* and a signature
//! over its kind and exactly those bytes, so no canonical form is needed and a document
//! of one kind can never pass for another.

use super::{KeyError, VendorKeyPair, VendorPublicKey};
use crate::core::Timestamp;
use crate::identity::{Identity, PublicKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const FORMAT: u32 = 1;

/// What a daemon signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonDocKind {
    ActivationRequest,
    ReturnReceipt,
    UsageReport,
}

impl DaemonDocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonDocKind::ActivationRequest => "activation_request",
            DaemonDocKind::ReturnReceipt => "return_receipt",
            DaemonDocKind::UsageReport => "usage_report",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonFile {
    netkey_daemon_document: u32,
    kind: DaemonDocKind,
    /// The signing daemon identity's public key, base64.
    daemon_identity: String,
    document: String,
    signature: String,
}

fn signed_bytes(kind: &str, document: &str) -> Vec<u8> {
    let mut m = format!("netkey {kind} v1\0").into_bytes();
    m.extend_from_slice(document.as_bytes());
    m
}

/// Signs `doc` as a `kind` document of this daemon.
pub fn daemon_sign<T: Serialize>(
    identity: &Identity,
    kind: DaemonDocKind,
    doc: &T,
) -> Result<String, KeyError> {
    let document =
        serde_json::to_string_pretty(doc).map_err(|e| KeyError::InvalidDocument(e.to_string()))?;
    let file = DaemonFile {
        netkey_daemon_document: FORMAT,
        kind,
        daemon_identity: identity.public().to_base64(),
        signature: B64.encode(identity.sign(&signed_bytes(kind.as_str(), &document))),
        document,
    };
    serde_json::to_string_pretty(&file).map_err(|e| KeyError::InvalidDocument(e.to_string()))
}

/// A daemon document whose signature checked out against the identity it names.
#[derive(Clone, Debug)]
pub struct DaemonDoc {
    pub kind: DaemonDocKind,
    pub identity: PublicKey,
    pub document: String,
}

impl DaemonDoc {
    /// Whether `text` looks like a daemon document (and not, say, a key file).
    pub fn sniff(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .is_some_and(|v| v.get("netkey_daemon_document").is_some())
    }

    /// Parses and checks the signature. Anyone can make an identity, so this proves only
    /// that the document comes from the daemon holding that identity: the vendor compares
    /// the identity with the one its key names.
    pub fn open(text: &str) -> Result<DaemonDoc, KeyError> {
        let f: DaemonFile =
            serde_json::from_str(text).map_err(|e| KeyError::Malformed(e.to_string()))?;
        if f.netkey_daemon_document != FORMAT {
            return Err(KeyError::UnsupportedFormat(f.netkey_daemon_document));
        }
        let identity = PublicKey::from_base64(&f.daemon_identity)
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        let sig = B64.decode(&f.signature).unwrap_or_default();
        if !identity.verify(&signed_bytes(f.kind.as_str(), &f.document), &sig) {
            return Err(KeyError::BadDaemonSignature {
                identity: identity.fingerprint(),
            });
        }
        Ok(DaemonDoc {
            kind: f.kind,
            identity,
            document: f.document,
        })
    }

    /// The document, which must be of `kind` and name the signing identity.
    pub fn parse<T: DeserializeOwned + NamesIdentity>(
        &self,
        kind: DaemonDocKind,
    ) -> Result<T, KeyError> {
        if self.kind != kind {
            return Err(KeyError::Malformed(format!(
                "this is a {}, not a {}",
                self.kind.as_str(),
                kind.as_str()
            )));
        }
        let doc: T = serde_json::from_str(&self.document)
            .map_err(|e| KeyError::InvalidDocument(e.to_string()))?;
        if doc.daemon_identity() != self.identity.to_base64() {
            return Err(KeyError::InvalidDocument(
                "the document names another daemon identity than the one that signed it".into(),
            ));
        }
        Ok(doc)
    }
}

/// Documents that name the daemon identity they come from.
pub trait NamesIdentity {
    fn daemon_identity(&self) -> &str;
}

/// An installed key as a request lists it, so the vendor sees what needs repair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestedKey {
    pub key_id: String,
    pub revision: u32,
    /// `bound`, `demo` or why the binding fails.
    pub binding: String,
}

/// `netkeyctl key request`: what the vendor needs to activate a key for this daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationRequest {
    pub daemon_id: String,
    pub daemon_identity: String,
    pub made_at: Timestamp,
    pub software: String,
    /// Salt and hashed machine identifiers: the `host` of the key to issue.
    pub host: super::HostBinding,
    /// The clock high-water mark, when the daemon's clock is behind it (the vendor signs a
    /// reset token naming it).
    pub clock_rollback: Option<Timestamp>,
    /// Keys installed now, with their binding status (a repair names the failing ones).
    pub keys: Vec<RequestedKey>,
}

impl NamesIdentity for ActivationRequest {
    fn daemon_identity(&self) -> &str {
        &self.daemon_identity
    }
}

/// `netkeyctl key return`: the daemon no longer serves the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnReceipt {
    pub key_id: String,
    pub revision: u32,
    pub customer: String,
    pub daemon_id: String,
    pub daemon_identity: String,
    pub returned_at: Timestamp,
    /// Returned with `--force` while leases remained (they were dropped, audited).
    pub forced: bool,
    pub leases_dropped: u64,
    /// The audit log's head as the return was made (count and hash, hex); the record of
    /// the return follows it.
    pub audit_count: u64,
    pub audit_hash: String,
}

impl NamesIdentity for ReturnReceipt {
    fn daemon_identity(&self) -> &str {
        &self.daemon_identity
    }
}

/// Peak use of each feature on one UTC day, and the overdraft hours spent that day.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    pub peak: BTreeMap<String, u64>,
    pub overdraft_hours: f64,
}

/// `netkeyctl key report`: for true-up and renewal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    pub key_id: String,
    pub revision: u32,
    pub customer: String,
    pub daemon_id: String,
    pub daemon_identity: String,
    pub made_at: Timestamp,
    /// What the key grants now: seats per feature (unexpired entries).
    pub licensed: BTreeMap<String, u64>,
    pub days: Vec<DayUsage>,
    pub overdraft_seats: u32,
    pub overdraft_hours_allowed: u32,
    /// Overdraft hours used in the 30 days before `made_at`.
    pub overdraft_hours_last_30_days: f64,
}

impl NamesIdentity for UsageReport {
    fn daemon_identity(&self) -> &str {
        &self.daemon_identity
    }
}

/// A vendor's permission for one daemon to forget one clock high-water mark: the clock
/// is trusted again from where it is now. Usable once (`token_id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockResetToken {
    pub token_id: String,
    pub daemon_identity: String,
    pub mark: Timestamp,
    pub issued_at: Timestamp,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    netkey_clock_reset: u32,
    signer: String,
    document: String,
    signature: String,
}

const TOKEN_KIND: &str = "clock_reset";

impl ClockResetToken {
    pub fn sign(&self, vendor: &VendorKeyPair) -> Result<String, KeyError> {
        let document = serde_json::to_string_pretty(self)
            .map_err(|e| KeyError::InvalidDocument(e.to_string()))?;
        let file = TokenFile {
            netkey_clock_reset: FORMAT,
            signer: vendor.public().fingerprint(),
            signature: B64.encode(vendor.sign(&signed_bytes(TOKEN_KIND, &document))),
            document,
        };
        serde_json::to_string_pretty(&file).map_err(|e| KeyError::InvalidDocument(e.to_string()))
    }

    /// Parses a token file and checks it against the vendors this installation trusts.
    pub fn verify(text: &str, trusted: &[VendorPublicKey]) -> Result<ClockResetToken, KeyError> {
        let f: TokenFile = serde_json::from_str(text)
            .map_err(|e| KeyError::Malformed(format!("not a clock-reset token: {e}")))?;
        if f.netkey_clock_reset != FORMAT {
            return Err(KeyError::UnsupportedFormat(f.netkey_clock_reset));
        }
        let vendor = trusted
            .iter()
            .find(|v| v.fingerprint() == f.signer)
            .ok_or_else(|| KeyError::UntrustedVendor {
                signer: f.signer.clone(),
            })?;
        let sig = B64.decode(&f.signature).unwrap_or_default();
        if !vendor.verify(&signed_bytes(TOKEN_KIND, &f.document), &sig) {
            return Err(KeyError::BadSignature { signer: f.signer });
        }
        serde_json::from_str(&f.document).map_err(|e| KeyError::InvalidDocument(e.to_string()))
    }

    pub fn sniff(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .is_some_and(|v| v.get("netkey_clock_reset").is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(identity: &Identity) -> ReturnReceipt {
        ReturnReceipt {
            key_id: "ACME-0001".into(),
            revision: 2,
            customer: "ACME".into(),
            daemon_id: identity.public().daemon_id(),
            daemon_identity: identity.public().to_base64(),
            returned_at: Timestamp::from_secs(1_800_000_000),
            forced: false,
            leases_dropped: 0,
            audit_count: 7,
            audit_hash: "00".repeat(32),
        }
    }

    #[test]
    fn a_receipt_round_trips_and_any_flip_fails() {
        let id = Identity::generate();
        let text = daemon_sign(&id, DaemonDocKind::ReturnReceipt, &receipt(&id)).unwrap();
        let doc = DaemonDoc::open(&text).unwrap();
        let r: ReturnReceipt = doc.parse(DaemonDocKind::ReturnReceipt).unwrap();
        assert_eq!(r, receipt(&id));
        let err = doc
            .parse::<UsageReport>(DaemonDocKind::UsageReport)
            .unwrap_err();
        assert!(err.to_string().contains("not a usage_report"), "{err}");
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            let Ok(t) = String::from_utf8(b) else {
                continue;
            };
            let ok = DaemonDoc::open(&t)
                .and_then(|d| d.parse::<ReturnReceipt>(DaemonDocKind::ReturnReceipt))
                .is_ok_and(|r| r == receipt(&id));
            // A flip in JSON whitespace outside the signed string may still parse to the
            // same receipt; nothing else may.
            if ok {
                assert!(bytes[i].is_ascii_whitespace(), "flip at {i} accepted");
            }
        }
    }

    #[test]
    fn a_receipt_signed_by_one_identity_cannot_name_another() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let text = daemon_sign(&a, DaemonDocKind::ReturnReceipt, &receipt(&b)).unwrap();
        let err = DaemonDoc::open(&text)
            .unwrap()
            .parse::<ReturnReceipt>(DaemonDocKind::ReturnReceipt)
            .unwrap_err();
        assert!(err.to_string().contains("another daemon identity"), "{err}");
    }

    #[test]
    fn a_token_checks_its_vendor() {
        let vendor = VendorKeyPair::generate().unwrap();
        let t = ClockResetToken {
            token_id: "t1".into(),
            daemon_identity: "x".into(),
            mark: Timestamp::from_secs(5),
            issued_at: Timestamp::from_secs(6),
        };
        let text = t.sign(&vendor).unwrap();
        assert_eq!(
            ClockResetToken::verify(&text, &[vendor.public()]).unwrap(),
            t
        );
        let other = VendorKeyPair::generate().unwrap().public();
        let err = ClockResetToken::verify(&text, &[other]).unwrap_err();
        assert!(err.to_string().contains("does not trust"), "{err}");
        let tampered = text.replace("\\\"t1\\\"", "\\\"t2\\\"");
        assert_ne!(tampered, text);
        let err = ClockResetToken::verify(&tampered, &[vendor.public()]).unwrap_err();
        assert!(err.to_string().contains("altered after signing"), "{err}");
    }
}
