//! Every message of the licence protocol. Field order is the wire order (postcard), so
//! fields are only ever appended in a new protocol version.

use crate::core::{CheckoutAnswer, CheckoutItem, HeartbeatAnswer, Refusal, Revocation, SyncAnswer};
use serde::{Deserialize, Serialize};

/// The protocol version the first exchange agrees on.
pub const PROTOCOL_VERSION: u16 = 1;

/// What a client sends: a request id (echoed in the answer, so requests can be
/// pipelined) and the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    pub id: u32,
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Must be the first request on a connection.
    Hello {
        protocol: u16,
        software: String,
    },
    /// Exchanges a one-time code for an enrolment of the identity this connection's
    /// client certificate proves. On a connection already logged in, re-enrols that
    /// server into the code's pool (keeping its id).
    Enrol {
        code: String,
        name: String,
        version: String,
    },
    /// Claims an enrolled server; the daemon checks that the connection's client
    /// certificate proves the identity that server enrolled with.
    Login {
        server_id: String,
    },
    Checkout {
        key: Option<String>,
        items: Vec<CheckoutItem>,
    },
    Release {
        cameras: Vec<String>,
    },
    /// `sent_at` is the client's own clock; the daemon signs it into the lease token.
    Heartbeat {
        digest: [u8; 32],
        sent_at: crate::core::Timestamp,
    },
    Sync {
        claimed: Vec<(String, u64)>,
    },
    Acknowledge {
        camera: String,
        epoch: u64,
    },
}

/// What the daemon sends: an answer to a request, or a push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    Response { id: u32, response: Response },
    Push(Push),
}

/// A key the daemon hosts, as the client sees it in `Welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedKey {
    pub key_id: String,
    pub demo: bool,
    /// The signed key file, so the client can check the vendor's signature and that the
    /// key names the identity this daemon proved in the TLS handshake.
    pub file: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub server_id: String,
    pub key_id: String,
    pub pool: String,
    pub demo: bool,
    pub heartbeat_interval_ms: u64,
    pub offline_grace_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Welcome {
        protocol: u16,
        daemon_id: String,
        software: String,
        keys: Vec<HostedKey>,
    },
    Enrolled {
        binding: Binding,
    },
    LoggedIn {
        binding: Binding,
    },
    Checkout(CheckoutAnswer),
    Released(Vec<(String, Option<Refusal>)>),
    Heartbeat {
        answer: HeartbeatAnswer,
        audit: AuditHead,
        lease: LeaseToken,
    },
    Synced(SyncAnswer),
    Acknowledged {
        seat_returned: bool,
    },
    /// A business refusal of the whole request; the connection stays open.
    Refused(Refusal),
    /// A protocol error; the daemon closes the connection after sending it.
    Error {
        reason: String,
    },
}

/// The daemon's signed word that `server`'s leases, `cameras` of them, stay valid for
/// `valid_for_ms` from the client's `sent_at`. The client keeps it in its state file:
/// after a restart its grace deadline comes from this token, checked against the
/// daemon's identity, so editing the file voids the grace instead of extending it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseToken {
    pub server_id: String,
    pub sent_at: crate::core::Timestamp,
    pub valid_for_ms: u64,
    pub cameras: u32,
    /// Ed25519 by the daemon identity over `signed_bytes()`.
    pub signature: Vec<u8>,
}

impl LeaseToken {
    const CONTEXT: &'static [u8] = b"netkey lease token v1\0";

    /// What the signature covers: a context string, then the fields in postcard.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let fields = (
            &self.server_id,
            self.sent_at,
            self.valid_for_ms,
            self.cameras,
        );
        let mut out = Self::CONTEXT.to_vec();
        // Encoding plain integers, strings and arrays cannot fail.
        out.extend(postcard::to_stdvec(&fields).unwrap_or_default());
        out
    }

    pub fn sign(
        identity: &crate::identity::Identity,
        server_id: String,
        sent_at: crate::core::Timestamp,
        valid_for_ms: u64,
        cameras: u32,
    ) -> LeaseToken {
        let mut t = LeaseToken {
            server_id,
            sent_at,
            valid_for_ms,
            cameras,
            signature: Vec::new(),
        };
        t.signature = identity.sign(&t.signed_bytes()).to_vec();
        t
    }

    pub fn verify(&self, daemon: &crate::identity::PublicKey) -> bool {
        daemon.verify(&self.signed_bytes(), &self.signature)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Push {
    /// Stop recording the camera, then send `Acknowledge`.
    Revoke(Revocation),
}

/// The audit chain's head: how many records, and the last one's hash. Every heartbeat
/// answer carries it; a later head that does not extend an earlier one proves tampering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub count: u64,
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

impl AuditHead {
    pub const EMPTY: AuditHead = AuditHead {
        count: 0,
        hash: [0; 32],
    };
}

impl std::fmt::Display for AuditHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h: String = self.hash.iter().map(|x| format!("{x:02x}")).collect();
        write!(f, "{} records, head {h}", self.count)
    }
}

/// 32-byte hashes: hex text in JSON, raw bytes in postcard.
pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&v.iter().map(|x| format!("{x:02x}")).collect::<String>())
        } else {
            serde::Serialize::serialize(v, s)
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let mut out = [0u8; 32];
            // Hex digits only before slicing: a multi-byte character would split (the
            // fuzzer's panic on a state file), and `from_str_radix` would take a '+'.
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(serde::de::Error::custom("a hash is 64 hex digits"));
            }
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                    .map_err(serde::de::Error::custom)?;
            }
            Ok(out)
        } else {
            <[u8; 32]>::deserialize(d)
        }
    }
}
