//! The bodies of the `cargo fuzz` targets (`fuzz/fuzz_targets/`), one function per decoder
//! family, kept in the library so the regression test (`tests/fuzz_corpus.rs`) feeds the
//! corpus and every minimised crash through exactly the code the fuzzer ran.
//!
//! Each function takes untrusted bytes, runs them through the decoders that read them in
//! the product, and checks what must hold for any input: no panic, no unbounded
//! allocation, and whatever decodes re-encodes to something that decodes to the same
//! value. A violated property panics: that is how the fuzzer sees it. Not an API.

use crate::cli::netkeyd::FileConfig;
use crate::client::ClientState;
use crate::core::compact::{self, TermsFormat};
use crate::core::{Core, Timestamp};
use crate::discovery::{self, Datagram, Offer, OfferedKey};
use crate::identity::{Identity, PublicKey};
use crate::key::{demo_vendor, KeySpec, SignedKey, VendorKeyPair, VendorPublicKey};
use crate::proto::admin::{AdminRequest, AuditExport};
use crate::proto::{self, AuditHead, ClientFrame, ServerFrame, MAX_FRAME};
use crate::store::{audit, Backup, BatchRecord};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use tokio_util::codec::Decoder as _;

/// The instant the key-spec check issues keys at (2026-01-01T00:00:00Z): any fixed one.
const ISSUED: Timestamp = Timestamp(1_767_225_600_000);

/// A production vendor key for the key-file target, derived from a public constant like
/// the demo vendor's but not the demo vendor: key files signed by it take the non-demo
/// paths. The seed corpus holds files signed by it (`examples/fuzz_seeds.rs`).
pub fn vendor() -> VendorKeyPair {
    let digest = ring::digest::digest(&ring::digest::SHA256, b"netkey fuzzing vendor");
    let mut seed = [0u8; 32];
    seed.copy_from_slice(digest.as_ref());
    match VendorKeyPair::from_seed(&seed) {
        Ok(pair) => pair,
        Err(e) => panic!("a 32-byte seed makes an Ed25519 key: {e}"),
    }
}

/// The length-delimited framing of the licence protocol, fed in arbitrary chunks.
///
/// Input: one byte `n`, then `n % 8` chunk sizes (each byte `s` feeds `s + 1` bytes;
/// they repeat), then the byte stream (fed in one piece when there are no sizes). The
/// frames the codec yields, and whether it fails, must not depend on the chunking, and
/// must match a reading of the stream by the rule `docs/PROTOCOL.md` states: a 4-byte
/// big-endian length up to `MAX_FRAME`, then that many bytes.
pub fn frame(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let (want, want_error) = frames_by_the_rule(stream);

    let mut codec = proto::codec();
    let mut buf = BytesMut::new();
    let mut got: Vec<Bytes> = Vec::new();
    let mut failed = false;
    let mut pos = 0;
    let mut size = sizes.iter().cycle();
    'feed: while pos < stream.len() {
        let len = size.next().map_or(stream.len(), |s| usize::from(*s) + 1);
        let end = stream.len().min(pos + len);
        buf.extend_from_slice(&stream[pos..end]);
        pos = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => got.push(f.freeze()),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
        // The codec reserves room for the frame it waits for; that must stay bounded by
        // the limit, not by what the peer announces.
        assert!(
            buf.capacity() <= 4 * (MAX_FRAME + 4) + 1024,
            "the codec holds {} bytes of buffer",
            buf.capacity()
        );
    }
    if !failed {
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(f)) => got.push(f.freeze()),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
    }
    assert!(
        got.iter().all(|f| f.len() <= MAX_FRAME),
        "an oversized frame"
    );
    assert_eq!(got, want, "the codec split the stream differently");
    assert_eq!(failed, want_error, "the codec's verdict on the stream");
}

/// The frames of `stream` by the documented rule, and whether the stream is broken
/// (an announced length over the limit, or a frame cut off by the end). A stream that
/// ends just after a length, before any payload byte, ends cleanly: tokio-util's codec
/// has consumed the length by then and sees no bytes left (the connection closes either
/// way; the fuzzer found this on its first run).
fn frames_by_the_rule(stream: &[u8]) -> (Vec<Bytes>, bool) {
    let mut out = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (out, false);
        }
        let Some((head, body)) = rest.split_first_chunk::<4>() else {
            return (out, true);
        };
        let len = u32::from_be_bytes(*head) as usize;
        if len > MAX_FRAME {
            return (out, true);
        }
        if body.len() < len {
            return (out, !body.is_empty());
        }
        out.push(Bytes::copy_from_slice(&body[..len]));
        rest = &body[len..];
    }
}

/// Every message of the protocol: the bytes as a frame payload from a client
/// (`ClientFrame`, what the daemon decodes) and from the daemon (`ServerFrame`, what the
/// client decodes), and as a line on the admin socket (`AdminRequest`, trimmed as the
/// daemon trims it).
pub fn message(data: &[u8]) {
    if let Ok(m) = proto::decode::<ClientFrame>(data) {
        frame_round_trip(&m, data.len());
    }
    if let Ok(m) = proto::decode::<ServerFrame>(data) {
        frame_round_trip(&m, data.len());
    }
    if let Ok(line) = std::str::from_utf8(data) {
        if let Ok(req) = serde_json::from_str::<AdminRequest>(line.trim()) {
            json_round_trip(&req);
        }
    }
}

fn frame_round_trip<M: Serialize + DeserializeOwned + PartialEq + Debug>(m: &M, len: usize) {
    match proto::encode(m) {
        Ok(bytes) => {
            assert!(
                bytes.len() <= len,
                "{m:?} re-encodes longer than it came in"
            );
            match proto::decode::<M>(&bytes) {
                Ok(again) => assert_eq!(&again, m, "re-encoded message decodes differently"),
                Err(e) => panic!("re-encoded {m:?} does not decode: {e}"),
            }
        }
        // Only a payload over the limit can give a message over the limit.
        Err(e) => assert!(len > MAX_FRAME, "{m:?} does not re-encode: {e}"),
    }
}

fn json_round_trip<M: Serialize + DeserializeOwned + PartialEq + Debug>(m: &M) {
    let text = match serde_json::to_string(m) {
        Ok(t) => t,
        Err(e) => panic!("{m:?} does not encode as JSON: {e}"),
    };
    match serde_json::from_str::<M>(&text) {
        Ok(again) => assert_eq!(&again, m, "{text} decodes to another value"),
        Err(e) => panic!("{text} (re-encoded {m:?}) does not decode: {e}"),
    }
}

/// Discovery datagrams: DISCOVER and OFFER. A decoded DISCOVER re-encodes (padded) to
/// the same value, and the OFFER the responder would answer it with is no larger than
/// the request and carries its nonce; a decoded OFFER re-encodes to the same value.
pub fn discovery(data: &[u8]) {
    match discovery::decode(data) {
        None => {}
        Some(Datagram::Discover(d)) => {
            let again = discovery::encode_discover(&d);
            assert_eq!(
                discovery::decode(&again),
                Some(Datagram::Discover(d.clone())),
                "re-encoded DISCOVER decodes differently"
            );
            let reply = Offer {
                nonce: d.nonce,
                ..responder_offer()
            };
            if let Some(bytes) = discovery::encode_offer(&reply, data.len()) {
                assert!(
                    bytes.len() <= data.len(),
                    "an OFFER larger than its DISCOVER"
                );
                match discovery::decode(&bytes) {
                    Some(Datagram::Offer(o)) => assert_eq!(o.nonce, d.nonce, "nonce not echoed"),
                    other => panic!("the OFFER does not decode as one: {other:?}"),
                }
            }
        }
        Some(Datagram::Offer(o)) => match discovery::encode_offer(&o, usize::MAX) {
            Some(again) => assert_eq!(
                discovery::decode(&again),
                Some(Datagram::Offer(o)),
                "re-encoded OFFER decodes differently"
            ),
            None => panic!("{o:?} does not re-encode"),
        },
    }
}

/// What a daemon hosting a few keys offers.
fn responder_offer() -> Offer {
    Offer {
        nonce: 0,
        daemon_id: "nkd-8c1e5b2a90d4f617".into(),
        tcp_port: crate::DEFAULT_PORT,
        tcp_addr: None,
        tls_identity: None,
        software: "netkeyd 0.1.0".into(),
        keys: (0..40)
            .map(|i| OfferedKey {
                key_id: format!("ACME-{i:04}"),
                demo: false,
                seats: vec![("camera".into(), 40, 64), ("lpr".into(), 2, 8)],
            })
            .collect(),
        truncated: false,
    }
}

/// Key files and what vendors and daemons read alongside them. The bytes as: a key file
/// checked against the demo vendor and a production vendor; a key document (signed here
/// with the demo vendor, so the document parser is reached past the signature); a key
/// spec (`netkey-vendor issue`); a vendor public or signing key file; an identity public
/// key as key files and requests carry it. Whatever is accepted must be issued again to
/// something that verifies to the same document.
pub fn key_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let demo = demo_vendor();
    let real = vendor();
    let trusted = [demo.public(), real.public()];

    // The daemon-signed documents (activation requests, return receipts, usage reports)
    // and vendor-signed clock-reset tokens that `netkey-vendor verify` and
    // `netkeyctl key clock-reset` read: whatever opens must parse only as its own kind.
    if let Ok(doc) = crate::key::signed::DaemonDoc::open(text) {
        use crate::key::signed::{ActivationRequest, DaemonDocKind, ReturnReceipt, UsageReport};
        let kinds = [
            doc.parse::<ActivationRequest>(DaemonDocKind::ActivationRequest)
                .is_ok(),
            doc.parse::<ReturnReceipt>(DaemonDocKind::ReturnReceipt)
                .is_ok(),
            doc.parse::<UsageReport>(DaemonDocKind::UsageReport).is_ok(),
        ];
        assert!(
            kinds.iter().filter(|k| **k).count() <= 1,
            "a daemon document parses as more than one kind"
        );
    }
    let _ = crate::key::signed::ClockResetToken::verify(text, &trusted);

    if let Ok(k) = SignedKey::verify(text, &trusted) {
        if let Err(e) = k.document.validate() {
            panic!("a verified key's document is invalid: {e}");
        }
        let demo_signed = k.signer == demo.public().fingerprint();
        assert_eq!(k.is_demo(), demo_signed || k.document.demo);
        reissue(&k, if demo_signed { &demo } else { &real }, &trusted);
    }

    let signed = serde_json::json!({
        "netkey_key": 1,
        "signer": demo.public().fingerprint(),
        "document": text,
        "signature": B64.encode(demo.sign(data)),
    })
    .to_string();
    match SignedKey::verify(&signed, &trusted) {
        Ok(k) => reissue(&k, &demo, &trusted),
        Err(crate::key::KeyError::InvalidDocument(_)) => {}
        Err(e) => panic!("a document signed by a trusted vendor was refused: {e}"),
    }

    if let Ok(spec) = KeySpec::from_toml(text) {
        if let Ok(doc) = spec.into_document(ISSUED) {
            let file = match real.issue(&doc) {
                Ok(f) => f,
                Err(e) => panic!("a valid key spec does not issue: {e}"),
            };
            match SignedKey::verify(&file, &trusted) {
                Ok(k) => assert_eq!(k.document, doc, "the issued key holds another document"),
                Err(e) => panic!("a key issued from a spec does not verify: {e}"),
            }
        }
    }

    if let Ok(p) = VendorPublicKey::from_text(text) {
        assert_eq!(VendorPublicKey::from_text(&p.to_text()).ok(), Some(p));
    }
    if let Ok(pair) = VendorKeyPair::from_text(text) {
        assert!(pair.public().verify(b"m", &pair.sign(b"m")));
    }
    if let Ok(p) = PublicKey::from_base64(text) {
        assert_eq!(PublicKey::from_base64(&p.to_base64()).ok(), Some(p));
    }
}

fn reissue(k: &SignedKey, by: &VendorKeyPair, trusted: &[VendorPublicKey]) {
    let file = match by.issue(&k.document) {
        Ok(f) => f,
        Err(e) => panic!("a verified document does not issue again: {e}"),
    };
    match SignedKey::verify(&file, trusted) {
        Ok(again) => assert_eq!(again.document, k.document, "re-issued key differs"),
        Err(e) => panic!("a re-issued key does not verify: {e}"),
    }
}

/// The files the client and the daemon read back: the client state file, an audit export
/// (and its verification, with its own head as the anchor) or a bare audit head (an
/// anchor), `netkeyd.toml`, a backup file (`netkeyd --restore`), the store's snapshot and
/// log records (postcard, as the store decodes them), and `identity.key`.
pub fn state_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(state) = serde_json::from_str::<ClientState>(text) {
            let _ = state.identity();
            let _ = state.proven_deadline();
            let _ = state.digest();
            let saved = match serde_json::to_string_pretty(&state) {
                Ok(t) => t,
                Err(e) => panic!("{state:?} does not save: {e}"),
            };
            match serde_json::from_str::<ClientState>(&saved) {
                Ok(again) => assert_eq!(again, state, "the saved state reads back differently"),
                Err(e) => panic!("the saved state does not read back: {e}"),
            }
        }
        if let Ok(export) = serde_json::from_str::<AuditExport>(text) {
            let _ = audit::verify(&export.records, None);
            let _ = audit::verify(&export.records, Some(export.head));
            let _ = audit::to_csv(&export.records);
            json_round_trip(&export);
        }
        if let Ok(head) = serde_json::from_str::<AuditHead>(text) {
            json_round_trip(&head);
        }
        if let Ok(config) = FileConfig::parse(std::path::Path::new("netkeyd.toml"), text) {
            let written = match toml::to_string(&config) {
                Ok(t) => t,
                Err(e) => panic!("{config:?} does not write as TOML: {e}"),
            };
            match FileConfig::parse(std::path::Path::new("netkeyd.toml"), &written) {
                Ok(again) => assert_eq!(again, config, "{written} reads back differently"),
                Err(e) => panic!("{written} does not read back: {e}"),
            }
        }
    }

    if let Ok(backup) = Backup::from_bytes(data) {
        let bytes = match backup.to_bytes() {
            Ok(b) => b,
            Err(e) => panic!("a backup that reads does not write: {e}"),
        };
        match Backup::from_bytes(&bytes) {
            Ok(again) => assert_eq!(again.to_bytes().ok(), Some(bytes)),
            Err(e) => panic!("a re-written backup does not read: {e}"),
        }
    }
    if let Ok(core) = postcard::from_bytes::<Core>(data) {
        postcard_round_trip_bytes(&core);
    }
    // A snapshot written before schema 4, as a migrated directory keeps until its next.
    if let Ok(core) = compact::read_as(TermsFormat::Inline, || postcard::from_bytes::<Core>(data)) {
        postcard_round_trip_bytes(&core);
    }
    if let Ok(record) = postcard::from_bytes::<BatchRecord>(data) {
        let bytes = match postcard::to_allocvec(&record) {
            Ok(b) => b,
            Err(e) => panic!("{record:?} does not encode: {e}"),
        };
        assert_eq!(
            postcard::from_bytes::<BatchRecord>(&bytes).ok(),
            Some(record)
        );
    }
    let _ = Identity::from_pkcs8(data);
}

/// For types without equality: encoding what decoded, then decoding and encoding again,
/// gives the same bytes.
fn postcard_round_trip_bytes<M: Serialize + DeserializeOwned + Debug>(m: &M) {
    let bytes = match postcard::to_allocvec(m) {
        Ok(b) => b,
        Err(e) => panic!("{m:?} does not encode: {e}"),
    };
    match postcard::from_bytes::<M>(&bytes) {
        Ok(again) => assert_eq!(postcard::to_allocvec(&again).ok(), Some(bytes)),
        Err(e) => panic!("re-encoded {m:?} does not decode: {e}"),
    }
}
