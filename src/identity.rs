//! Ed25519 identities: the daemon's (made at first start, kept in the state directory,
//! named by host-bound keys, behind the TLS certificate, signing receipts, reports and
//! lease tokens) and each video server's (made at enrolment, kept in its state file,
//! proving the server over mutual TLS). Only the public half ever leaves the host.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use std::fmt;
use std::path::Path;

/// The file in the state directory holding the daemon identity (PKCS#8, mode 0600).
pub const IDENTITY_FILE: &str = "identity.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the identity {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the identity {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the identity {path} is damaged (not an Ed25519 PKCS#8 key); move it away to make a new identity, then request a repair from the vendor")]
    Damaged { path: String },
    #[error("not an Ed25519 key pair")]
    BadKeyPair,
    #[error("{0:?} is not an identity public key (base64 of 32 bytes)")]
    BadPublicKey(String),
}

/// An identity's public half: what keys, certificates and enrolments name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }
    pub fn from_slice(bytes: &[u8]) -> Option<PublicKey> {
        <[u8; 32]>::try_from(bytes).ok().map(PublicKey)
    }
    /// Parses the base64 form key files and requests carry.
    pub fn from_base64(text: &str) -> Result<PublicKey, IdentityError> {
        B64.decode(text.trim())
            .ok()
            .and_then(|b| PublicKey::from_slice(&b))
            .ok_or_else(|| IdentityError::BadPublicKey(text.chars().take(80).collect()))
    }
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }
    /// SHA-256 of the public key, first 16 bytes, as colon-separated hex: what people
    /// compare when a pin or a binding does not match.
    pub fn fingerprint(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        d.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
    /// The daemon id clients bind to, derived from the identity so that it cannot be
    /// claimed by a daemon without the private half.
    pub fn daemon_id(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        format!("nkd-{}", crate::hex(&d.as_ref()[..8]))
    }
    /// Checks an Ed25519 signature by this identity.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// A private identity: the key pair and its PKCS#8 encoding (which TLS needs).
pub struct Identity {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.public().fingerprint())
    }
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Identity {
        let rng = ring::rand::SystemRandom::new();
        // The system RNG failing is unrecoverable: no identity can be made safely.
        #[allow(clippy::expect_used)]
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("the system random number generator failed")
            .as_ref()
            .to_vec();
        #[allow(clippy::expect_used)]
        Identity::from_pkcs8(&pkcs8).expect("ring parses the PKCS#8 it just made")
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Identity, IdentityError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| IdentityError::BadKeyPair)?;
        Ok(Identity {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The daemon identity in `state_dir`, made (and made durable) on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity, IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        let shown = path.display().to_string();
        match std::fs::read(&path) {
            Ok(bytes) => {
                Identity::from_pkcs8(&bytes).map_err(|_| IdentityError::Damaged { path: shown })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Identity::generate();
                crate::files::write_private_atomic(&path, &identity.pkcs8).map_err(|source| {
                    IdentityError::Write {
                        path: shown,
                        source,
                    }
                })?;
                Ok(identity)
            }
            Err(source) => Err(IdentityError::Read {
                path: shown,
                source,
            }),
        }
    }

    pub fn public(&self) -> PublicKey {
        let mut b = [0u8; 32];
        b.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(b)
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut s = [0u8; 64];
        s.copy_from_slice(self.pair.sign(message).as_ref());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_a_restart_and_signs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Identity::load_or_create(dir.path()).expect("create");
        let b = Identity::load_or_create(dir.path()).expect("load");
        assert_eq!(a.public(), b.public());
        let sig = b.sign(b"hello");
        assert!(a.public().verify(b"hello", &sig));
        assert!(!a.public().verify(b"hellO", &sig));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(a.public().daemon_id().starts_with("nkd-"));
        assert_eq!(
            PublicKey::from_base64(&a.public().to_base64()).expect("round trip"),
            a.public()
        );
    }

    #[test]
    fn a_damaged_identity_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(IDENTITY_FILE), b"garbage").expect("write");
        let err = Identity::load_or_create(dir.path()).expect_err("damaged");
        assert!(err.to_string().contains("is damaged"), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join(IDENTITY_FILE)).expect("read"),
            b"garbage"
        );
    }
}
