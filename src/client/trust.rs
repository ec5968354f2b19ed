//! Whether a daemon may license this video server (invariant 8). The TLS handshake
//! proved which identity the daemon holds; here the keys it hosts must show that a
//! vendor this program trusts bound one of them to that identity. A production client
//! accepts only such a key; a demo client accepts only the demo vendor's DEMO key.

use super::{ClientError, Trust};
use crate::identity::PublicKey;
use crate::key::{demo_vendor, KeyKind, SignedKey, VendorPublicKey};
use crate::proto::HostedKey;

/// The vendor keys a trust setting accepts signatures from.
pub fn vendors(trust: &Trust) -> Vec<VendorPublicKey> {
    match trust {
        Trust::Demo => vec![demo_vendor().public()],
        Trust::Vendors(v) => v.clone(),
    }
}

/// Why one key file does not make the daemon trustworthy, or `None` if it does. `kind`
/// is what the transport serves: network keys over TCP, local keys on the local socket.
fn refuse(trust: &Trust, peer: &PublicKey, key: &SignedKey, kind: KeyKind) -> Option<String> {
    let doc = &key.document;
    match trust {
        Trust::Demo if key.is_demo() => None,
        Trust::Demo => Some(format!("{} is not a DEMO key", doc.key_id)),
        Trust::Vendors(_) if key.is_demo() => Some(format!("{} is a DEMO key", doc.key_id)),
        Trust::Vendors(_) if doc.kind != kind => Some(format!(
            "{} is not a {} key",
            doc.key_id,
            match kind {
                KeyKind::Network => "network",
                KeyKind::Local => "local",
            }
        )),
        Trust::Vendors(_) => match &doc.host {
            None => Some(format!("{} is not bound to a host", doc.key_id)),
            Some(h) if PublicKey::from_base64(&h.daemon_identity).is_ok_and(|k| k == *peer) => None,
            Some(h) => Some(format!(
                "{} is bound to identity {}, not to this daemon's",
                doc.key_id,
                PublicKey::from_base64(&h.daemon_identity)
                    .map(|p| p.fingerprint())
                    .unwrap_or_else(|_| "(unreadable)".into())
            )),
        },
    }
}

/// The hosted keys that make the daemon at `addr`, proving `peer`, trustworthy, with
/// their files. Refused with every reason when there is none.
pub fn trusted_keys(
    trust: &Trust,
    peer: &PublicKey,
    addr: &str,
    hosted: &[HostedKey],
) -> Result<Vec<(SignedKey, String)>, ClientError> {
    let vendors = vendors(trust);
    // The local socket (`unix:PATH`) serves local keys; TCP serves network keys.
    let kind = if addr.starts_with("unix:") {
        KeyKind::Local
    } else {
        KeyKind::Network
    };
    let mut accepted = Vec::new();
    let mut reasons = Vec::new();
    for k in hosted {
        match SignedKey::verify(&k.file, &vendors) {
            Ok(signed) => match refuse(trust, peer, &signed, kind) {
                None => accepted.push((signed, k.file.clone())),
                Some(why) => reasons.push(why),
            },
            Err(e) => reasons.push(format!("{}: {e}", k.key_id)),
        }
    }
    if !accepted.is_empty() {
        return Ok(accepted);
    }
    if hosted.is_empty() {
        reasons.push("it hosts no network key".into());
    }
    Err(match trust {
        Trust::Demo => ClientError::NotDemo {
            addr: addr.to_string(),
        },
        Trust::Vendors(_) if hosted.iter().all(|k| k.demo) && !hosted.is_empty() => {
            ClientError::DemoRefused {
                addr: addr.to_string(),
            }
        }
        Trust::Vendors(_) => ClientError::UntrustedDaemon {
            addr: addr.to_string(),
            identity: peer.fingerprint(),
            reasons: reasons.join("; "),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Timestamp;
    use crate::identity::Identity;
    use crate::key::{demo_key, HostBinding, VendorKeyPair};

    fn hosted(file: String, demo: bool) -> HostedKey {
        HostedKey {
            key_id: "K".into(),
            demo,
            file,
        }
    }

    fn bound_key(vendor: &VendorKeyPair, identity: &PublicKey) -> String {
        let mut doc = demo_key(Timestamp::from_millis(1_000));
        doc.key_id = "K".into();
        doc.demo = false;
        doc.host = Some(HostBinding {
            daemon_identity: identity.to_base64(),
            salt: String::new(),
            hardware: vec![],
            software: vec![],
        });
        vendor.issue(&doc).expect("issue")
    }

    #[test]
    fn a_production_client_needs_a_key_naming_the_daemon_it_talks_to() {
        let vendor = VendorKeyPair::generate().expect("vendor");
        let trust = Trust::Vendors(vec![vendor.public()]);
        let daemon = Identity::generate().public();
        let file = bound_key(&vendor, &daemon);
        let ok = trusted_keys(&trust, &daemon, "a", &[hosted(file.clone(), false)]);
        assert_eq!(ok.expect("trusted").len(), 1);

        // The same key presented by another daemon (a copy, or a man in the middle).
        let rogue = Identity::generate().public();
        let err = trusted_keys(&trust, &rogue, "a", &[hosted(file, false)])
            .expect_err("rogue")
            .to_string();
        assert!(err.contains("not to this daemon's"), "{err}");
        assert!(err.contains(&rogue.fingerprint()), "{err}");

        // A key the rogue signed itself.
        let own_vendor = VendorKeyPair::generate().expect("vendor");
        let err = trusted_keys(
            &trust,
            &rogue,
            "a",
            &[hosted(bound_key(&own_vendor, &rogue), false)],
        )
        .expect_err("self-issued")
        .to_string();
        assert!(err.contains("does not trust"), "{err}");
    }

    #[test]
    fn demo_keys_only_for_demo_clients() {
        let daemon = Identity::generate().public();
        let file = demo_vendor()
            .issue(&demo_key(Timestamp::from_millis(1_000)))
            .expect("issue");
        let vendor = VendorKeyPair::generate().expect("vendor");
        let err = trusted_keys(
            &Trust::Vendors(vec![vendor.public()]),
            &daemon,
            "a",
            &[hosted(file.clone(), true)],
        )
        .expect_err("production refuses demo");
        assert!(matches!(err, ClientError::DemoRefused { .. }), "{err}");
        assert!(trusted_keys(&Trust::Demo, &daemon, "a", &[hosted(file, true)]).is_ok());
        let prod = bound_key(&vendor, &daemon);
        let err = trusted_keys(&Trust::Demo, &daemon, "a", &[hosted(prod, false)])
            .expect_err("demo client refuses production keys");
        assert!(matches!(err, ClientError::NotDemo { .. }), "{err}");
    }
}
