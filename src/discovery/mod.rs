//! LAN discovery on UDP 1947: DISCOVER and OFFER datagrams, both sides. A datagram starts
//! with the magic `NKY` and a version byte; anything else is dropped without a reply or a
//! log line (Sentinel's License Manager shares the port). DISCOVER is padded to 1200
//! bytes and an OFFER is never larger than the DISCOVER that asked, so the daemon cannot
//! be used to amplify a flood; OFFERs list network keys only.

mod responder;
mod search;

pub use responder::{spawn_responder, DuplicateKey, Responder};
pub use search::{discover, Found, Search};

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 3] = *b"NKY";
pub const VERSION: u8 = 1;
/// Every DISCOVER is padded to this size; an OFFER never exceeds the request's size.
pub const DISCOVER_SIZE: usize = 1200;
const KIND_DISCOVER: u8 = 1;
const KIND_OFFER: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discover {
    /// Echoed in the OFFER, so a client matches answers to its own search.
    pub nonce: u64,
    /// Only daemons hosting this key need answer (None: any).
    pub key_id: Option<String>,
    /// The asking daemon's id when a daemon looks for duplicates of its keys.
    pub from_daemon: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedKey {
    pub key_id: String,
    pub demo: bool,
    /// (feature, free, total) per feature.
    pub seats: Vec<(String, u64, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub nonce: u64,
    pub daemon_id: String,
    /// The licence port; the address is the one the OFFER came from unless `tcp_addr`
    /// names one (a daemon bound to a specific address).
    pub tcp_port: u16,
    pub tcp_addr: Option<String>,
    /// The fingerprint of the daemon's identity, which its TLS certificate carries. For
    /// people comparing daemons; clients check the identity itself over TLS.
    pub tls_identity: Option<String>,
    pub software: String,
    pub keys: Vec<OfferedKey>,
    /// Some keys were left out to keep the OFFER no larger than the DISCOVER.
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datagram {
    Discover(Discover),
    Offer(Offer),
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// A DISCOVER datagram, padded with zero bytes to `DISCOVER_SIZE`.
pub fn encode_discover(d: &Discover) -> Vec<u8> {
    let body = postcard::to_allocvec(d).unwrap_or_default();
    let mut out = frame(KIND_DISCOVER, &body);
    if out.len() < DISCOVER_SIZE {
        out.resize(DISCOVER_SIZE, 0);
    }
    out
}

/// An OFFER no larger than `limit` bytes: keys are left out from the end (and
/// `truncated` set) until it fits. `None` if even an offer without keys does not fit.
pub fn encode_offer(offer: &Offer, limit: usize) -> Option<Vec<u8>> {
    let mut o = offer.clone();
    loop {
        let body = postcard::to_allocvec(&o).ok()?;
        let out = frame(KIND_OFFER, &body);
        if out.len() <= limit {
            return Some(out);
        }
        o.keys.pop()?;
        o.truncated = true;
    }
}

/// Decodes a datagram; `None` for anything that is not ours (wrong magic, version or
/// kind, or a body that does not decode). Padding after a DISCOVER must be zeros.
pub fn decode(bytes: &[u8]) -> Option<Datagram> {
    let rest = bytes.strip_prefix(&MAGIC)?;
    let (&version, rest) = rest.split_first()?;
    if version != VERSION {
        return None;
    }
    let (&kind, body) = rest.split_first()?;
    match kind {
        KIND_DISCOVER => {
            let (d, pad) = postcard::take_from_bytes::<Discover>(body).ok()?;
            pad.iter().all(|b| *b == 0).then_some(Datagram::Discover(d))
        }
        KIND_OFFER => {
            let (o, rest) = postcard::take_from_bytes::<Offer>(body).ok()?;
            rest.is_empty().then_some(Datagram::Offer(o))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(keys: usize) -> Offer {
        Offer {
            nonce: 7,
            daemon_id: "nkd-1".into(),
            tcp_port: crate::DEFAULT_PORT,
            tcp_addr: None,
            tls_identity: None,
            software: "netkeyd 0.1.0".into(),
            keys: (0..keys)
                .map(|i| OfferedKey {
                    key_id: format!("KEY-{i:04}"),
                    demo: false,
                    seats: vec![("camera".into(), 10, 64), ("lpr".into(), 2, 8)],
                })
                .collect(),
            truncated: false,
        }
    }

    #[test]
    fn discover_is_padded_and_round_trips() {
        let d = Discover {
            nonce: 42,
            key_id: Some("ACME".into()),
            from_daemon: None,
        };
        let bytes = encode_discover(&d);
        assert_eq!(bytes.len(), DISCOVER_SIZE);
        assert_eq!(decode(&bytes), Some(Datagram::Discover(d)));
    }

    #[test]
    fn an_offer_never_exceeds_the_request_and_says_when_keys_were_left_out() {
        let big = offer(200);
        let bytes = encode_offer(&big, DISCOVER_SIZE).unwrap();
        assert!(bytes.len() <= DISCOVER_SIZE);
        let Some(Datagram::Offer(o)) = decode(&bytes) else {
            panic!("not an offer")
        };
        assert!(o.truncated && o.keys.len() < 200 && !o.keys.is_empty());
        let small = encode_offer(&offer(1), DISCOVER_SIZE).unwrap();
        let Some(Datagram::Offer(o)) = decode(&small) else {
            panic!("not an offer")
        };
        assert!(!o.truncated);
        assert!(encode_offer(&offer(0), 10).is_none());
    }

    #[test]
    fn foreign_datagrams_are_not_ours() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"\x00\x01\x02 sentinel license manager"), None);
        let mut d = encode_discover(&Discover {
            nonce: 1,
            key_id: None,
            from_daemon: None,
        });
        d[3] = 9; // unknown version
        assert_eq!(decode(&d), None);
        let mut d = encode_discover(&Discover {
            nonce: 1,
            key_id: None,
            from_daemon: None,
        });
        d[1000] = 1; // non-zero padding
        assert_eq!(decode(&d), None);
    }
}
