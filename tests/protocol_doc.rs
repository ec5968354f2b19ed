//! Keeps `docs/PROTOCOL.md` honest: every `<!-- example: NAME -->` hex block must decode
//! to the value built here under NAME, and that value must encode to exactly those bytes.
//! An example without a value here, or a value here without an example, fails the test.
//! The same holds for the discovery datagrams, marked `<!-- datagram: NAME -->`: a
//! DISCOVER is shown without its zero padding, an OFFER in full. The lease token's worked
//! example (`lease-signed`, `lease-key`, `lease-signature`) must be a signature the
//! client's check accepts.

use netkey::client;
use netkey::core::digest;
use netkey::core::{
    CameraOutcome, CheckoutAnswer, CheckoutItem, ExpiryWarning, HeartbeatAnswer, Refusal,
    Revocation, RevocationReason, SyncAnswer, Timestamp,
};
use netkey::discovery::{self, Datagram, Discover, Offer, OfferedKey, DISCOVER_SIZE};
use netkey::identity::{Identity, PublicKey};
use netkey::key::demo_vendor;
use netkey::proto::{
    self, AuditHead, Binding, ClientFrame, HostedKey, LeaseToken, Push, Request, Response,
    ServerFrame, MAX_FRAME, PROTOCOL_VERSION,
};
use std::collections::{BTreeMap, BTreeSet};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every example the document must contain, one per name.
const NAMES: &[&str] = &[
    // Requests
    "hello",
    "enrol",
    "login",
    "checkout_simple",
    "checkout_full",
    "release",
    "heartbeat",
    "heartbeat_nothing_held",
    "sync",
    "acknowledge",
    // Responses and the push
    "welcome",
    "enrolled",
    "enrolled_again",
    "logged_in",
    "checkout_granted",
    "checkout_mixed",
    "checkout_legacy",
    "released",
    "heartbeat_answer",
    "heartbeat_answer_revocations",
    "heartbeat_answer_expiring",
    "synced",
    "acknowledged",
    "error_malformed",
    "error_version",
    "push_revoke",
    // One of each refusal
    "refusal_no_seats",
    "refusal_bound_to_other_key",
    "refusal_moved",
    "refusal_held_by_silent_server",
    "refusal_version_refused",
    "refusal_legacy_not_entitled",
    "refusal_key_expired",
    "refusal_not_enrolled",
    "refusal_code_invalid",
    "refusal_code_expired",
    "refusal_rate_limited",
    "refusal_clock_rollback",
    "refusal_not_held",
    "refusal_newly_added",
    "refusal_unknown_class",
    "refusal_unknown_key",
    "refusal_unknown_pool",
    "refusal_unknown_server",
    "refusal_unknown_camera",
    "refusal_server_kicked",
    "refusal_over_allocated",
    "refusal_server_version_refused",
    "refusal_bad_request",
    "refusal_unavailable",
    "refusal_key_inactive",
    "refusal_overdraft_spent",
];

#[derive(Debug)]
enum Msg {
    Client(ClientFrame),
    Server(ServerFrame),
}

const KEY: &str = "ACME-0001";
const SERVER: &str = "srv-3fa94c01b2d7";
const DAEMON: &str = "nkd-8c1e5b2a90d4f617";
/// 2026-01-01T00:00:00Z.
const NEW_YEAR_2026: u64 = 1_767_225_600_000;
const HOUR_MS: u64 = 3_600_000;

fn c(id: u32, request: Request) -> Option<Msg> {
    Some(Msg::Client(ClientFrame { id, request }))
}

fn s(id: u32, response: Response) -> Option<Msg> {
    Some(Msg::Server(ServerFrame::Response { id, response }))
}

/// A refusal of the whole request.
fn refused(id: u32, refusal: Refusal) -> Option<Msg> {
    s(id, Response::Refused(refusal))
}

/// A refusal of one camera in a checkout answer.
fn camera_refused(id: u32, camera: &str, refusal: Refusal) -> Option<Msg> {
    s(
        id,
        Response::Checkout(CheckoutAnswer {
            outcomes: vec![(camera.to_string(), CameraOutcome::Refused(refusal))],
            valid_for_ms: 1_209_598_500,
        }),
    )
}

fn features(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(f, n)| (f.to_string(), *n)).collect()
}

/// The client's clock when it sent the heartbeats of the examples.
const SENT_AT: Timestamp = Timestamp::from_millis(1_795_000_000_000);

/// A stand-in for a signed key file (a real one is about a kilobyte of JSON).
const KEY_FILE: &str = "{\"format\":1}";

/// A lease token as the examples show it; the signature bytes are a stand-in (0..64).
fn lease(valid_for_ms: u64, cameras: u32) -> LeaseToken {
    LeaseToken {
        server_id: SERVER.into(),
        sent_at: SENT_AT,
        valid_for_ms,
        cameras,
        signature: (0u8..64).collect(),
    }
}

fn binding() -> Binding {
    Binding {
        server_id: SERVER.into(),
        key_id: KEY.into(),
        pool: "ACME-0001/Default".into(),
        demo: false,
        heartbeat_interval_ms: 60_000,
        offline_grace_ms: 1_209_600_000,
    }
}

fn revocation(camera: &str, epoch: u64, reason: RevocationReason, provisional: bool) -> Revocation {
    Revocation {
        camera: camera.into(),
        epoch,
        reason,
        issued_at: Timestamp::from_millis(NEW_YEAR_2026),
        provisional,
    }
}

/// An audit head with `count` records whose last hash is `hash` (64 hex digits).
fn audit_head(count: u64, hash: &str) -> AuditHead {
    assert_eq!(hash.len(), 64);
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap();
    }
    AuditHead { count, hash: out }
}

/// The cameras of the heartbeat example and their epochs.
const HELD: [(&str, u64); 2] = [("cam-01", 1), ("cam-02", 3)];

fn expected(name: &str) -> Option<Msg> {
    use Refusal::*;
    match name {
        "hello" => c(
            1,
            Request::Hello {
                protocol: 1,
                software: "acme-vms 7.2".into(),
            },
        ),
        "enrol" => c(
            2,
            Request::Enrol {
                code: "04718253".into(),
                name: "Recorder 3".into(),
                version: "7.2.0".into(),
            },
        ),
        "login" => c(
            2,
            Request::Login {
                server_id: SERVER.into(),
            },
        ),
        "checkout_simple" => c(
            3,
            Request::Checkout {
                key: Some(KEY.into()),
                items: vec![CheckoutItem::camera("cam-01")],
            },
        ),
        "checkout_full" => c(
            4,
            Request::Checkout {
                key: None,
                items: vec![
                    CheckoutItem {
                        camera: "enc-7".into(),
                        class: Some("encoder-4ch".into()),
                        modules: vec!["lpr".into()],
                        device_version: Some("2.4.1".into()),
                        epoch: Some(7),
                    },
                    CheckoutItem::camera("cam-02"),
                ],
            },
        ),
        "release" => c(
            5,
            Request::Release {
                cameras: vec!["cam-01".into(), "cam-09".into()],
            },
        ),
        "heartbeat" => c(
            6,
            Request::Heartbeat {
                digest: digest::holdings(HELD),
                sent_at: SENT_AT,
            },
        ),
        "heartbeat_nothing_held" => c(
            300,
            Request::Heartbeat {
                digest: digest::holdings([]),
                sent_at: SENT_AT,
            },
        ),
        "sync" => c(
            7,
            Request::Sync {
                claimed: HELD.iter().map(|(c, e)| (c.to_string(), *e)).collect(),
            },
        ),
        "acknowledge" => c(
            8,
            Request::Acknowledge {
                camera: "cam-02".into(),
                epoch: 3,
            },
        ),
        "welcome" => s(
            1,
            Response::Welcome {
                protocol: 1,
                daemon_id: DAEMON.into(),
                software: "netkeyd 0.1.0".into(),
                keys: vec![HostedKey {
                    key_id: KEY.into(),
                    demo: false,
                    file: KEY_FILE.into(),
                }],
            },
        ),
        "enrolled" => s(2, Response::Enrolled { binding: binding() }),
        "enrolled_again" => s(3, Response::Enrolled { binding: binding() }),
        "logged_in" => s(2, Response::LoggedIn { binding: binding() }),
        "checkout_granted" => s(
            3,
            Response::Checkout(CheckoutAnswer {
                outcomes: vec![(
                    "cam-01".into(),
                    CameraOutcome::Granted {
                        epoch: 1,
                        features: features(&[("camera", 1)]),
                        legacy: false,
                        renewed: false,
                    },
                )],
                valid_for_ms: 1_209_600_000,
            }),
        ),
        "checkout_mixed" => s(
            4,
            Response::Checkout(CheckoutAnswer {
                outcomes: vec![
                    (
                        "enc-7".into(),
                        CameraOutcome::Granted {
                            epoch: 7,
                            features: features(&[("camera", 4), ("lpr", 1)]),
                            legacy: false,
                            renewed: true,
                        },
                    ),
                    (
                        "cam-02".into(),
                        CameraOutcome::AwaitingHolder {
                            holder: "Recorder 1 (srv-0b9d44e1a6c3)".into(),
                        },
                    ),
                    (
                        "cam-03".into(),
                        CameraOutcome::Refused(NoSeats {
                            feature: "camera".into(),
                            in_use: 64,
                            total: 64,
                        }),
                    ),
                ],
                valid_for_ms: 1_209_598_500,
            }),
        ),
        "checkout_legacy" => s(
            5,
            Response::Checkout(CheckoutAnswer {
                outcomes: vec![(
                    "cam-old".into(),
                    CameraOutcome::Granted {
                        epoch: 2,
                        features: BTreeMap::new(),
                        legacy: true,
                        renewed: false,
                    },
                )],
                valid_for_ms: 1_209_600_000,
            }),
        ),
        "released" => s(
            5,
            Response::Released(vec![
                ("cam-01".into(), None),
                ("cam-09".into(), Some(NotHeld)),
            ]),
        ),
        "heartbeat_answer" => s(
            6,
            Response::Heartbeat {
                answer: HeartbeatAnswer {
                    valid_for_ms: 1_209_600_000,
                    heartbeat_interval_ms: 60_000,
                    sync_needed: false,
                    revocations: Vec::new(),
                    expiring: Vec::new(),
                },
                audit: audit_head(
                    1234,
                    "c2f9a84a7f187f828744398cea40b08119dcf303fa32573a48dd6e67d3e97bb4",
                ),
                lease: lease(1_209_600_000, 2),
            },
        ),
        "heartbeat_answer_revocations" => s(
            6,
            Response::Heartbeat {
                answer: HeartbeatAnswer {
                    valid_for_ms: 1_209_540_000,
                    heartbeat_interval_ms: 60_000,
                    sync_needed: true,
                    revocations: vec![
                        revocation("cam-01", 1, RevocationReason::Freed, false),
                        revocation("cam-02", 3, RevocationReason::Shrunk, false),
                    ],
                    expiring: Vec::new(),
                },
                audit: audit_head(
                    1236,
                    "1d36c4b3875cf0a70425cd311170e3912535be50c2ef7dabd201a63d7300b41a",
                ),
                lease: lease(1_209_540_000, 0),
            },
        ),
        "heartbeat_answer_expiring" => s(
            6,
            Response::Heartbeat {
                answer: HeartbeatAnswer {
                    valid_for_ms: 1_209_600_000,
                    heartbeat_interval_ms: 60_000,
                    sync_needed: false,
                    revocations: Vec::new(),
                    expiring: vec![ExpiryWarning {
                        order: "SO-1002".into(),
                        feature: "camera".into(),
                        count: 16,
                        not_after: Timestamp(NEW_YEAR_2026 + 7 * 24 * HOUR_MS),
                    }],
                },
                audit: audit_head(
                    1240,
                    "9a41c0e2d7b3f5086e1c4d2a7b9e0f3152c6a8d4e7f1b2039c5d6e8fa0b1c2d3",
                ),
                lease: lease(1_209_600_000, 2),
            },
        ),
        "synced" => s(
            7,
            Response::Synced(SyncAnswer {
                not_held: vec!["cam-02".into()],
                released: vec!["cam-05".into()],
                valid_for_ms: 1_209_600_000,
                revocations: vec![revocation("cam-01", 1, RevocationReason::Kicked, false)],
            }),
        ),
        "acknowledged" => s(
            8,
            Response::Acknowledged {
                seat_returned: true,
            },
        ),
        "error_malformed" => s(
            0,
            Response::Error {
                reason: "frame is not a valid message: Hit the end of buffer, expected more data"
                    .into(),
            },
        ),
        "error_version" => s(
            1,
            Response::Error {
                reason: "protocol version 2 is not supported; this daemon speaks 1".into(),
            },
        ),
        "push_revoke" => Some(Msg::Server(ServerFrame::Push(Push::Revoke(revocation(
            "cam-02",
            3,
            RevocationReason::Moved,
            true,
        ))))),
        "refusal_no_seats" => camera_refused(
            3,
            "cam-65",
            NoSeats {
                feature: "camera".into(),
                in_use: 64,
                total: 64,
            },
        ),
        "refusal_bound_to_other_key" => refused(
            3,
            BoundToOtherKey {
                key: "ACME-0002".into(),
            },
        ),
        "refusal_moved" => camera_refused(3, "cam-02", Moved { epoch: 4 }),
        "refusal_held_by_silent_server" => camera_refused(
            3,
            "cam-02",
            HeldBySilentServer {
                holder: "Recorder 1 (srv-0b9d44e1a6c3)".into(),
            },
        ),
        "refusal_version_refused" => camera_refused(
            3,
            "cam-old",
            VersionRefused {
                min: "1.0.0".into(),
            },
        ),
        "refusal_legacy_not_entitled" => camera_refused(3, "cam-old", LegacyNotEntitled),
        "refusal_key_expired" => camera_refused(3, "cam-01", KeyExpired { key: KEY.into() }),
        "refusal_not_enrolled" => refused(2, NotEnrolled),
        "refusal_code_invalid" => refused(2, CodeInvalid),
        "refusal_code_expired" => refused(2, CodeExpired),
        "refusal_rate_limited" => refused(
            2,
            RateLimited {
                retry_after_ms: 30_000,
            },
        ),
        "refusal_clock_rollback" => refused(
            3,
            ClockRollback {
                mark: Timestamp::from_millis(NEW_YEAR_2026 + HOUR_MS),
            },
        ),
        "refusal_not_held" => s(
            5,
            Response::Released(vec![("cam-09".into(), Some(NotHeld))]),
        ),
        "refusal_newly_added" => refused(
            9,
            NewlyAdded {
                until: Timestamp::from_millis(NEW_YEAR_2026 + 24 * HOUR_MS),
            },
        ),
        "refusal_unknown_class" => camera_refused(
            3,
            "enc-7",
            UnknownClass {
                class: "encoder-8ch".into(),
            },
        ),
        "refusal_unknown_key" => refused(
            2,
            UnknownKey {
                key: "ACME-0001".into(),
            },
        ),
        "refusal_unknown_pool" => refused(
            3,
            UnknownPool {
                pool: "ACME-0002/Lobby".into(),
            },
        ),
        "refusal_unknown_server" => refused(
            3,
            UnknownServer {
                server: SERVER.into(),
            },
        ),
        "refusal_unknown_camera" => refused(
            9,
            UnknownCamera {
                camera: "cam-77".into(),
            },
        ),
        "refusal_server_kicked" => camera_refused(3, "cam-01", ServerKicked),
        "refusal_over_allocated" => camera_refused(
            3,
            "cam-01",
            OverAllocated {
                feature: "camera".into(),
                in_use: 50,
                total: 48,
            },
        ),
        "refusal_server_version_refused" => refused(
            2,
            ServerVersionRefused {
                min: "7.0.0".into(),
            },
        ),
        "refusal_bad_request" => refused(
            9,
            BadRequest {
                reason: "Hello was already exchanged".into(),
            },
        ),
        "refusal_unavailable" => refused(
            3,
            Unavailable {
                reason: "the daemon is shutting down".into(),
            },
        ),
        "refusal_key_inactive" => camera_refused(
            3,
            "cam-01",
            KeyInactive {
                key: KEY.into(),
                reason: "it is being returned (`netkeyctl key return`)".into(),
            },
        ),
        "refusal_overdraft_spent" => camera_refused(
            3,
            "cam-17",
            OverdraftSpent {
                feature: "camera".into(),
                in_use: 52,
                total: 48,
                hours: 24,
            },
        ),
        _ => None,
    }
}

/// The hex blocks of the document marked `<!-- KIND: NAME -->` on the line just above
/// their opening fence, in document order.
fn blocks(kind: &str) -> Vec<(String, Vec<u8>)> {
    let doc = doc();
    let lines: Vec<&str> = doc.lines().collect();
    let prefix = format!("<!-- {kind}:");
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let name = rest
            .strip_suffix("-->")
            .unwrap_or_else(|| panic!("line {}: marker not closed: {line}", i + 1))
            .trim()
            .to_string();
        assert_eq!(
            lines.get(i + 1).map(|l| l.trim()),
            Some("```hex"),
            "line {}: `{kind}: {name}` must be followed by a ```hex block",
            i + 1
        );
        let mut bytes = Vec::new();
        let mut closed = false;
        for l in &lines[i + 2..] {
            if l.trim() == "```" {
                closed = true;
                break;
            }
            for pair in l.split_whitespace() {
                assert!(
                    pair.len() == 2
                        && pair
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                    "example {name}: {pair:?} is not a lowercase hex byte"
                );
                bytes.push(u8::from_str_radix(pair, 16).unwrap());
            }
        }
        assert!(closed, "example {name}: hex block not closed");
        assert!(!bytes.is_empty(), "example {name}: empty hex block");
        out.push((name, bytes));
    }
    out
}

fn encode(msg: &Msg) -> Vec<u8> {
    match msg {
        Msg::Client(m) => proto::encode(m).unwrap().to_vec(),
        Msg::Server(m) => proto::encode(m).unwrap().to_vec(),
    }
}

#[test]
fn every_example_decodes_to_its_value_and_back() {
    let examples = blocks("example");
    let mut seen = BTreeSet::new();
    for (name, _) in &examples {
        assert!(seen.insert(name.as_str()), "example {name} appears twice");
    }
    let listed: BTreeSet<&str> = NAMES.iter().copied().collect();
    assert_eq!(listed.len(), NAMES.len(), "a name is listed twice in NAMES");
    let undocumented: Vec<_> = listed.difference(&seen).collect();
    let unlisted: Vec<_> = seen.difference(&listed).collect();
    assert!(
        undocumented.is_empty(),
        "no example in docs/PROTOCOL.md for {undocumented:?}"
    );
    assert!(
        unlisted.is_empty(),
        "examples in docs/PROTOCOL.md without an expected value here: {unlisted:?}"
    );
    for name in NAMES {
        assert!(
            expected(name).is_some(),
            "no expected value built for {name}"
        );
    }

    // Every wrong example is reported at once, with the bytes it should have, laid out
    // as the document writes them.
    let mut wrong = Vec::new();
    for (name, bytes) in &examples {
        let want = expected(name).unwrap();
        let want_bytes = encode(&want);
        let problem = match &want {
            Msg::Client(v) => decode_problem(bytes, v),
            Msg::Server(v) => decode_problem(bytes, v),
        }
        .or_else(|| (want_bytes != *bytes).then(|| "the value encodes to other bytes".into()));
        if let Some(problem) = problem {
            wrong.push(format!(
                "example {name}: {problem}; expected:\n{}",
                hex_lines(&want_bytes)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// Why `bytes` do not decode to `want`, if they do not.
fn decode_problem<T>(bytes: &[u8], want: &T) -> Option<String>
where
    T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    match proto::decode::<T>(bytes) {
        Err(e) => Some(format!("does not decode: {e}")),
        Ok(got) if got != *want => Some(format!("decodes to another value: {got:?}")),
        Ok(_) => None,
    }
}

/// Bytes as the document shows them: lowercase hex pairs, 16 to a line.
fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_frame_example_has_its_length_prefix() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    let frames = blocks("frame");
    assert!(!frames.is_empty(), "docs/PROTOCOL.md has no frame example");
    for (name, bytes) in frames {
        assert!(bytes.len() > 4, "frame {name} is shorter than its prefix");
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4, "frame {name}: wrong length prefix");
        let want = expected(&name)
            .unwrap_or_else(|| panic!("frame {name} must be named after an example"));
        assert_eq!(bytes[4..], encode(&want), "frame {name}: payload differs");

        // The daemon's own codec reads it as one frame with that payload.
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(&bytes).await.unwrap();
        drop(tx);
        let mut framed = proto::framed(rx);
        let payload = framed.next().await.unwrap().unwrap();
        assert_eq!(
            payload[..],
            bytes[4..],
            "frame {name}: codec payload differs"
        );
        assert!(
            framed.next().await.is_none(),
            "frame {name}: bytes left over"
        );
    }
}

#[test]
fn every_hex_block_is_checked() {
    let doc = doc();
    let fences = doc.lines().filter(|l| l.trim() == "```hex").count();
    let checked: usize = [
        "example",
        "frame",
        "digest-input",
        "digest",
        "datagram",
        "lease-signed",
        "lease-key",
        "lease-signature",
    ]
    .iter()
    .map(|kind| blocks(kind).len())
    .sum();
    assert_eq!(
        fences, checked,
        "docs/PROTOCOL.md has a hex block without an example, frame, digest or datagram marker"
    );
}

#[test]
fn the_documented_constants_hold() {
    assert_eq!(MAX_FRAME, 65_536);
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(DISCOVER_SIZE, 1200);
    assert_eq!(discovery::MAGIC, *b"NKY");
    assert_eq!(discovery::VERSION, 1);
}

/// The one block of `kind` the document must hold, for the example `name`.
fn only_block(kind: &str, name: &str) -> Vec<u8> {
    let found = blocks(kind);
    assert_eq!(found.len(), 1, "one {kind} block expected");
    let (got, bytes) = found.into_iter().next().unwrap();
    assert_eq!(got, name, "the {kind} block belongs to another example");
    bytes
}

/// The lease token section's worked example: what the signature covers, and a real
/// signature by the RFC 8032 test key (section 7.1, TEST 1) that the client's check
/// accepts and that the daemon's signing reproduces.
#[test]
fn the_lease_token_example_is_a_real_signature() {
    let token = lease(1_209_600_000, 2);
    let signed = only_block("lease-signed", "heartbeat_answer");
    assert_eq!(signed, token.signed_bytes(), "the signed bytes");
    // The signed bytes are the context, then the token's own encoding up to its signature.
    let encoded = postcard::to_allocvec(&token).unwrap();
    let fields = encoded.len() - 1 - token.signature.len();
    assert_eq!(signed[..22], *b"netkey lease token v1\0");
    assert_eq!(signed[22..], encoded[..fields]);

    let key = only_block("lease-key", "heartbeat_answer");
    let signature = only_block("lease-signature", "heartbeat_answer");
    let daemon = PublicKey::from_slice(&key).expect("a 32-byte key");
    let real = LeaseToken {
        signature,
        ..token.clone()
    };
    assert!(
        real.verify(&daemon),
        "the documented signature does not verify"
    );
    let edited = LeaseToken {
        cameras: 3,
        ..real.clone()
    };
    assert!(!edited.verify(&daemon), "an edited token must not verify");

    // The daemon's own signing, with the RFC's private key, makes the same bytes.
    let seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    let mut pkcs8 = unhex("3053020101300506032b657004220420");
    pkcs8.extend(unhex(seed));
    pkcs8.extend(unhex("a123032100"));
    pkcs8.extend_from_slice(&key);
    let identity = Identity::from_pkcs8(&pkcs8).expect("the RFC 8032 key pair");
    assert_eq!(identity.public(), daemon);
    let signed_again = LeaseToken::sign(
        &identity,
        token.server_id.clone(),
        token.sent_at,
        token.valid_for_ms,
        token.cameras,
    );
    assert_eq!(signed_again, real);

    // The names and the deadline the text gives for it.
    let doc = doc();
    for shown in [
        daemon.daemon_id(),
        daemon.fingerprint(),
        client::deadline_from(token.sent_at, token.valid_for_ms)
            .millis()
            .to_string(),
    ] {
        assert!(
            doc.contains(&shown),
            "the lease token section should say {shown}"
        );
    }
}

/// The demo vendor's public key, as section 1.4 gives it: a demo client of another
/// language needs it to check DEMO keys.
#[test]
fn the_documented_demo_vendor_key_is_the_built_in_one() {
    let public = demo_vendor().public();
    let doc = doc();
    let text = public.to_text();
    assert!(
        doc.contains(text.trim()),
        "docs/PROTOCOL.md should give {text}"
    );
    assert!(doc.contains(&format!("(fingerprint `{}`)", public.fingerprint())));
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The digest section's worked example: the SHA-256 input written out byte by byte,
/// and the digest that the `heartbeat` example carries.
#[test]
fn the_digest_example_matches_the_implementation() {
    let inputs = blocks("digest-input");
    assert_eq!(inputs.len(), 1, "one digest-input block expected");
    let (_, input) = &inputs[0];
    let mut documented_rule = Vec::new();
    let mut sorted = HELD.to_vec();
    sorted.sort();
    for (camera, epoch) in sorted {
        documented_rule.extend_from_slice(camera.as_bytes());
        documented_rule.push(0);
        documented_rule.extend_from_slice(&epoch.to_le_bytes());
    }
    assert_eq!(input, &documented_rule);
    let sha = ring::digest::digest(&ring::digest::SHA256, input);
    assert_eq!(sha.as_ref(), digest::holdings(HELD));
    let digests = blocks("digest");
    assert_eq!(digests.len(), 2, "two digest blocks expected");
    for (name, bytes) in digests {
        let want = match name.as_str() {
            "heartbeat" => digest::holdings(HELD),
            "heartbeat_nothing_held" => digest::holdings([]),
            other => panic!("unknown digest block {other}"),
        };
        assert_eq!(bytes, want, "digest {name}");
    }
}

/// Every discovery datagram the document must contain, one per name.
const DATAGRAM_NAMES: &[&str] = &[
    "discover",
    "discover_key_from_daemon",
    "offer_demo",
    "offer_truncated",
];

/// The nonces of the discovery examples: random 64-bit numbers, as a client draws them.
const NONCE_CLIENT: u64 = 0x9e37_79b9_7f4a_7c15;
const NONCE_DAEMON: u64 = 0x2545_f491_4f6c_dd1d;

fn expected_datagram(name: &str) -> Option<Datagram> {
    let offer = |nonce, tcp_addr: Option<String>, keys, truncated| Offer {
        nonce,
        daemon_id: DAEMON.into(),
        // The documented example offers the product's default port.
        tcp_port: netkey::DEFAULT_PORT,
        tcp_addr,
        tls_identity: None,
        software: "netkeyd 0.1.0".into(),
        keys,
        truncated,
    };
    let key = |key_id: &str, demo, seats: &[(&str, u64, u64)]| OfferedKey {
        key_id: key_id.into(),
        demo,
        seats: seats
            .iter()
            .map(|(f, free, total)| (f.to_string(), *free, *total))
            .collect(),
    };
    Some(match name {
        "discover" => Datagram::Discover(Discover {
            nonce: NONCE_CLIENT,
            key_id: None,
            from_daemon: None,
        }),
        "discover_key_from_daemon" => Datagram::Discover(Discover {
            nonce: NONCE_DAEMON,
            key_id: Some(KEY.into()),
            from_daemon: Some("nkd-51d0a7c39e2b4f86".into()),
        }),
        "offer_demo" => Datagram::Offer(offer(
            NONCE_CLIENT,
            None,
            vec![key("DEMO", true, &[("camera", 16, 16), ("lpr", 4, 4)])],
            false,
        )),
        "offer_truncated" => Datagram::Offer(offer(
            NONCE_DAEMON,
            Some(format!("192.0.2.10:{}", netkey::DEFAULT_PORT)),
            vec![key(KEY, false, &[("camera", 40, 64)])],
            true,
        )),
        _ => return None,
    })
}

#[test]
fn every_datagram_example_decodes_to_its_value_and_back() {
    let examples = blocks("datagram");
    let mut seen = BTreeSet::new();
    for (name, _) in &examples {
        assert!(seen.insert(name.as_str()), "datagram {name} appears twice");
    }
    let listed: BTreeSet<&str> = DATAGRAM_NAMES.iter().copied().collect();
    assert_eq!(
        listed.len(),
        DATAGRAM_NAMES.len(),
        "a name is listed twice in DATAGRAM_NAMES"
    );
    let undocumented: Vec<_> = listed.difference(&seen).collect();
    let unlisted: Vec<_> = seen.difference(&listed).collect();
    assert!(
        undocumented.is_empty(),
        "no datagram example in docs/PROTOCOL.md for {undocumented:?}"
    );
    assert!(
        unlisted.is_empty(),
        "datagram examples in docs/PROTOCOL.md without an expected value here: {unlisted:?}"
    );
    for name in DATAGRAM_NAMES {
        assert!(
            expected_datagram(name).is_some(),
            "no expected value built for datagram {name}"
        );
    }

    for (name, bytes) in &examples {
        let want = expected_datagram(name).unwrap();
        assert_eq!(
            discovery::decode(bytes).as_ref(),
            Some(&want),
            "datagram {name} does not decode to its value"
        );
        match &want {
            Datagram::Discover(d) => {
                // The document shows the header and body; the sender pads with zeros.
                let full = discovery::encode_discover(d);
                assert_eq!(full.len(), DISCOVER_SIZE, "datagram {name}: not padded");
                assert!(
                    full.len() > bytes.len(),
                    "datagram {name}: longer than a DISCOVER"
                );
                assert_eq!(
                    &full[..bytes.len()],
                    &bytes[..],
                    "datagram {name}: the value encodes to other bytes"
                );
                assert!(
                    full[bytes.len()..].iter().all(|b| *b == 0),
                    "datagram {name}: the bytes after the shown ones are not all padding"
                );
                // Nothing shown is padding: one byte less no longer decodes.
                assert_eq!(
                    discovery::decode(&bytes[..bytes.len() - 1]),
                    None,
                    "datagram {name}: the shown bytes include padding"
                );
                assert_eq!(
                    discovery::decode(&full).as_ref(),
                    Some(&want),
                    "datagram {name}: the padded datagram decodes to another value"
                );
            }
            Datagram::Offer(o) => {
                assert_eq!(
                    discovery::encode_offer(o, DISCOVER_SIZE).as_ref(),
                    Some(bytes),
                    "datagram {name}: the value encodes to other bytes"
                );
            }
        }
    }
}

/// Section 12's size rule: an OFFER keeps as many keys as fit in the DISCOVER's size,
/// dropping them from the end, and says so.
#[test]
fn an_offer_keeps_the_leading_keys_that_fit() {
    let Some(Datagram::Offer(template)) = expected_datagram("offer_demo") else {
        panic!("offer_demo is an OFFER")
    };
    let many = Offer {
        keys: (0..100)
            .map(|i| OfferedKey {
                key_id: format!("ACME-{i:04}"),
                ..template.keys[0].clone()
            })
            .collect(),
        ..template
    };
    let bytes = discovery::encode_offer(&many, DISCOVER_SIZE).unwrap();
    assert!(bytes.len() <= DISCOVER_SIZE);
    let Some(Datagram::Offer(got)) = discovery::decode(&bytes) else {
        panic!("not an OFFER")
    };
    let kept = got.keys.len();
    assert!(got.truncated && kept > 0 && kept < many.keys.len());
    assert_eq!(got.keys[..], many.keys[..kept], "not the leading keys");
    let one_more = Offer {
        keys: many.keys[..kept + 1].to_vec(),
        truncated: true,
        ..many.clone()
    };
    let whole = discovery::encode_offer(&one_more, usize::MAX).unwrap();
    assert!(whole.len() > DISCOVER_SIZE, "a key was dropped that fitted");
    // Nothing at all fits a request too small for an OFFER without keys: no reply.
    assert_eq!(discovery::encode_offer(&many, 12), None);
}
