//! Signing and checking key files with the vendor's Ed25519 keys (`ring`).
//!
//! A key file is JSON holding the key document as a JSON *string*, the signature over
//! exactly those bytes, and the signer's fingerprint. Signing the string rather than a
//! re-serialised object means no canonical form is needed: any changed byte fails.

use super::KeyDocument;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::fmt;

const KEY_FILE_FORMAT: u32 = 1;
const PUBLIC_PREFIX: &str = "netkey-vendor-public-key-v1:";
const SECRET_PREFIX: &str = "netkey-vendor-signing-key-v1:";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a netkey key file: {0}")]
    Malformed(String),
    #[error("key file format {0} is not supported (this build reads format {KEY_FILE_FORMAT})")]
    UnsupportedFormat(u32),
    #[error("the key is signed by vendor {signer}, which this installation does not trust")]
    UntrustedVendor { signer: String },
    #[error("the signature does not match the key document: the key was altered after signing by vendor {signer}")]
    BadSignature { signer: String },
    #[error("the key document is invalid: {0}")]
    InvalidDocument(String),
    #[error("not a vendor key: {0}")]
    BadVendorKey(String),
    #[error("could not make a key pair: {0}")]
    Crypto(String),
    #[error("the signature does not match the document: it was altered after daemon {identity} signed it")]
    BadDaemonSignature { identity: String },
}

/// A vendor's public key: what daemons and clients trust.
#[derive(Clone, PartialEq, Eq)]
pub struct VendorPublicKey {
    bytes: [u8; 32],
}

impl fmt::Debug for VendorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VendorPublicKey({})", self.fingerprint())
    }
}

impl VendorPublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        VendorPublicKey { bytes }
    }
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
    /// The first 8 bytes of SHA-256 of the public key, as hex: how files and messages name
    /// a vendor.
    pub fn fingerprint(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.bytes);
        crate::hex(&d.as_ref()[..8])
    }
    /// The text form written by `netkey-vendor keygen` (`vendor.pub`).
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}\n", B64.encode(self.bytes))
    }
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let b64 = text.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(|| {
            KeyError::BadVendorKey(format!("a public key file starts with {PUBLIC_PREFIX:?}"))
        })?;
        let raw = B64
            .decode(b64)
            .map_err(|e| KeyError::BadVendorKey(format!("public key is not base64: {e}")))?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|_| KeyError::BadVendorKey("public key is not 32 bytes".into()))?;
        Ok(VendorPublicKey { bytes })
    }
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, signature)
            .is_ok()
    }
}

/// A vendor's signing key pair (PKCS#8), held only by the vendor.
pub struct VendorKeyPair {
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for VendorKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VendorKeyPair({})", self.public().fingerprint())
    }
}

impl VendorKeyPair {
    pub fn generate() -> Result<Self, KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        Self::from_pkcs8(doc.as_ref())
    }
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|e| {
            KeyError::BadVendorKey(format!("signing key is not Ed25519 PKCS#8: {e}"))
        })?;
        Ok(VendorKeyPair {
            pkcs8: pkcs8.to_vec(),
            pair,
        })
    }
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        Ok(VendorKeyPair {
            pkcs8: Vec::new(),
            pair,
        })
    }
    pub fn public(&self) -> VendorPublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        VendorPublicKey { bytes }
    }
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", B64.encode(&self.pkcs8))
    }
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let b64 = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            KeyError::BadVendorKey(format!("a signing key file starts with {SECRET_PREFIX:?}"))
        })?;
        let raw = B64
            .decode(b64)
            .map_err(|e| KeyError::BadVendorKey(format!("signing key is not base64: {e}")))?;
        Self::from_pkcs8(&raw)
    }
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    /// Signs a key document into the text of a key file.
    pub fn issue(&self, doc: &KeyDocument) -> Result<String, KeyError> {
        doc.validate().map_err(KeyError::InvalidDocument)?;
        let document = serde_json::to_string_pretty(doc)
            .map_err(|e| KeyError::InvalidDocument(e.to_string()))?;
        let file = KeyFile {
            netkey_key: KEY_FILE_FORMAT,
            signer: self.public().fingerprint(),
            signature: B64.encode(self.sign(document.as_bytes())),
            document,
        };
        serde_json::to_string_pretty(&file).map_err(|e| KeyError::InvalidDocument(e.to_string()))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    netkey_key: u32,
    signer: String,
    document: String,
    signature: String,
}

/// A key whose signature checked out against a trusted vendor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedKey {
    pub document: KeyDocument,
    /// Fingerprint of the vendor key that signed it.
    pub signer: String,
    /// The key file exactly as issued, so it can be stored and handed on unchanged.
    pub file: String,
}

impl SignedKey {
    /// Parses and checks a key file against the vendors this installation trusts.
    pub fn verify(file: &str, trusted: &[VendorPublicKey]) -> Result<SignedKey, KeyError> {
        let parsed: KeyFile =
            serde_json::from_str(file).map_err(|e| KeyError::Malformed(e.to_string()))?;
        if parsed.netkey_key != KEY_FILE_FORMAT {
            return Err(KeyError::UnsupportedFormat(parsed.netkey_key));
        }
        let vendor = trusted
            .iter()
            .find(|v| v.fingerprint() == parsed.signer)
            .ok_or_else(|| KeyError::UntrustedVendor {
                signer: parsed.signer.clone(),
            })?;
        let signature = B64
            .decode(&parsed.signature)
            .map_err(|_| KeyError::BadSignature {
                signer: parsed.signer.clone(),
            })?;
        if !vendor.verify(parsed.document.as_bytes(), &signature) {
            return Err(KeyError::BadSignature {
                signer: parsed.signer,
            });
        }
        let document: KeyDocument = serde_json::from_str(&parsed.document)
            .map_err(|e| KeyError::InvalidDocument(e.to_string()))?;
        document.validate().map_err(KeyError::InvalidDocument)?;
        Ok(SignedKey {
            document,
            signer: parsed.signer,
            file: file.to_string(),
        })
    }

    /// True when signed by the built-in demo vendor, whatever the document says: the demo
    /// signing key is public, so its signature proves nothing about a customer.
    pub fn is_demo(&self) -> bool {
        self.signer == super::demo_vendor().public().fingerprint() || self.document.demo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::demo_key;

    #[test]
    fn public_key_text_round_trip() {
        let pair = VendorKeyPair::generate().unwrap();
        let text = pair.public().to_text();
        assert_eq!(VendorPublicKey::from_text(&text).unwrap(), pair.public());
        let back = VendorKeyPair::from_text(&pair.to_text()).unwrap();
        assert_eq!(back.public(), pair.public());
    }

    #[test]
    fn every_flipped_byte_is_rejected_with_a_reason() {
        let vendor = crate::key::demo_vendor();
        let file = vendor
            .issue(&demo_key(crate::core::time::Timestamp::from_secs(0)))
            .unwrap();
        let trusted = [vendor.public()];
        assert!(SignedKey::verify(&file, &trusted).is_ok());
        let bytes = file.as_bytes();
        // Every position, one bit flip each: none may verify.
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            let Ok(text) = String::from_utf8(b) else {
                continue;
            };
            let err = SignedKey::verify(&text, &trusted)
                .expect_err(&format!("flip at byte {i} was accepted"));
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn wrong_vendor_is_named() {
        let file = crate::key::demo_vendor()
            .issue(&demo_key(crate::core::time::Timestamp::from_secs(0)))
            .unwrap();
        let other = VendorKeyPair::generate().unwrap().public();
        let err = SignedKey::verify(&file, &[other]).unwrap_err();
        assert!(matches!(err, KeyError::UntrustedVendor { .. }), "{err}");
        assert!(err.to_string().contains("does not trust"));
    }
}
