//! Writes the seed corpus of the fuzz targets: real encodings of every message, datagram
//! and file the decoders read, into `fuzz/corpus/<target>/seed-<name>`.
//!
//! ```text
//! cargo run --example fuzz_seeds
//! ```
//! The protocol messages and datagrams are the hex examples of `docs/PROTOCOL.md` (which
//! `tests/protocol_doc.rs` holds to the code), so every variant the document shows seeds
//! the fuzzer; the rest is built here with the library. Everything is deterministic, so a
//! rerun rewrites the same files. `fuzz/README.md` says how to minimise the corpus after.

use netkey::cli::netkeyd::FileConfig;
use netkey::client::{ClientState, HeldCamera};
use netkey::core::{CheckoutItem, Command, Core, EnrolRequest, PoolId, Timestamp};
use netkey::discovery::{encode_discover, Discover};
use netkey::key::{demo_key, demo_vendor, KeyDocument, KeySpec};
use netkey::proto::admin::{AdminRequest, AuditExport};
use netkey::proto::AuditHead;
use netkey::store::{audit, AuditRecord, Backup, BatchRecord};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// 2026-01-01T00:00:00Z.
const T0: Timestamp = Timestamp(1_767_225_600_000);

type Seeds = Vec<(String, Vec<u8>)>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/PROTOCOL.md"))?;
    let corpus = root.join("fuzz/corpus");
    let targets: [(&str, Seeds); 5] = [
        ("frame", frame_seeds(&doc)?),
        ("message", message_seeds(&doc)?),
        ("discovery", discovery_seeds(&doc)?),
        ("key_file", key_file_seeds(root)?),
        ("state_file", state_file_seeds(root)?),
    ];
    for (target, seeds) in targets {
        let dir: PathBuf = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
        println!("{target}: {} seeds in {}", seeds.len(), dir.display());
    }
    Ok(())
}

/// The hex blocks of `docs/PROTOCOL.md` marked `<!-- KIND: NAME -->`.
fn blocks(doc: &str, kind: &str) -> Result<Seeds, String> {
    let lines: Vec<&str> = doc.lines().collect();
    let prefix = format!("<!-- {kind}:");
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix(&prefix) else {
            continue;
        };
        let name = rest.trim_end_matches("-->").trim().to_string();
        let mut bytes = Vec::new();
        for l in lines.iter().skip(i + 2).take_while(|l| l.trim() != "```") {
            for pair in l.split_whitespace() {
                bytes.push(
                    u8::from_str_radix(pair, 16)
                        .map_err(|e| format!("{kind} {name}: {pair:?}: {e}"))?,
                );
            }
        }
        out.push((name, bytes));
    }
    if out.is_empty() {
        return Err(format!("docs/PROTOCOL.md has no {kind} blocks"));
    }
    Ok(out)
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// The frame target's input: a count of chunk sizes, the sizes, then the stream.
fn chunked(sizes: &[u8], stream: &[u8]) -> Vec<u8> {
    let mut out = vec![sizes.len() as u8];
    out.extend_from_slice(sizes);
    out.extend_from_slice(stream);
    out
}

fn frame_seeds(doc: &str) -> Result<Seeds, String> {
    let examples = blocks(doc, "example")?;
    let mut out: Seeds = Vec::new();
    for (name, bytes) in blocks(doc, "frame")? {
        out.push((format!("frame-{name}"), chunked(&[], &bytes)));
    }
    // A whole conversation in one stream, read at once, byte by byte, and in odd chunks.
    let stream: Vec<u8> = examples.iter().flat_map(|(_, b)| framed(b)).collect();
    out.push(("conversation".into(), chunked(&[], &stream)));
    out.push(("conversation-bytewise".into(), chunked(&[0], &stream)));
    out.push(("conversation-chunks".into(), chunked(&[2, 6, 30], &stream)));
    // An empty frame, a frame at the limit's header, one over it, one cut off.
    out.push(("empty-frame".into(), chunked(&[], &framed(&[]))));
    let mut at_limit = 65_536u32.to_be_bytes().to_vec();
    at_limit.extend_from_slice(&[0; 16]);
    out.push(("at-limit-cut".into(), chunked(&[3], &at_limit)));
    out.push(("over-limit".into(), chunked(&[], &65_537u32.to_be_bytes())));
    let cut = framed(&examples[0].1);
    out.push(("cut-off".into(), chunked(&[1], &cut[..cut.len() - 1])));
    Ok(out)
}

fn message_seeds(doc: &str) -> Result<Seeds, String> {
    let mut out = blocks(doc, "example")?;
    let requests = [
        ("status", AdminRequest::Status),
        ("key_list", AdminRequest::KeyList),
        ("pool_list", AdminRequest::PoolList),
        (
            "pool_show",
            AdminRequest::PoolShow {
                pool: "ACME-0001/Default".into(),
            },
        ),
        (
            "pool_code",
            AdminRequest::PoolCode {
                pool: "Default".into(),
            },
        ),
        ("server_list", AdminRequest::ServerList),
        (
            "server_show",
            AdminRequest::ServerShow {
                server: "srv-3fa94c01b2d7".into(),
            },
        ),
        (
            "server_rename",
            AdminRequest::ServerRename {
                server: "srv-3fa94c01b2d7".into(),
                name: "Recorder \"3\" é".into(),
            },
        ),
        (
            "server_move",
            AdminRequest::ServerMove {
                server: "srv-3fa94c01b2d7".into(),
                pool: "Lobby".into(),
            },
        ),
        (
            "server_kick",
            AdminRequest::ServerKick {
                server: "srv-3fa94c01b2d7".into(),
                force: true,
            },
        ),
        (
            "camera_list",
            AdminRequest::CameraList {
                server: Some("srv-3fa94c01b2d7".into()),
                pool: None,
                feature: None,
            },
        ),
        (
            "camera_free",
            AdminRequest::CameraFree {
                camera: "cam-01".into(),
                key: Some("ACME-0001".into()),
                force: false,
            },
        ),
        (
            "audit_since",
            AdminRequest::Audit {
                since: Some(Timestamp(T0.0 + 5)),
            },
        ),
        ("audit", AdminRequest::Audit { since: None }),
        ("backup", AdminRequest::Backup),
    ];
    for (name, req) in requests {
        let line = serde_json::to_string(&req).map_err(|e| e.to_string())?;
        out.push((format!("admin-{name}"), format!("{line}\n").into_bytes()));
    }
    Ok(out)
}

fn discovery_seeds(doc: &str) -> Result<Seeds, String> {
    let mut out = blocks(doc, "datagram")?;
    let padded = encode_discover(&Discover {
        nonce: 7,
        key_id: Some("ACME-0001".into()),
        from_daemon: None,
    });
    out.push(("discover-padded".into(), padded));
    Ok(out)
}

/// A fixed Ed25519 key pair as PKCS#8 v2 (what `identity.key` and vendor signing key
/// files hold), so the seeds are the same on every run.
fn pkcs8(label: &[u8]) -> Result<Vec<u8>, String> {
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    let digest = ring::digest::digest(&ring::digest::SHA256, label);
    let seed = digest.as_ref();
    let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| e.to_string())?;
    let mut out = vec![
        0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    out.extend_from_slice(seed);
    out.extend_from_slice(&[0xa1, 0x23, 0x03, 0x21, 0x00]);
    out.extend_from_slice(pair.public_key().as_ref());
    Ok(out)
}

fn key_file_seeds(root: &Path) -> Result<Seeds, Box<dyn std::error::Error>> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let spec_text = std::fs::read_to_string(root.join("examples/keys/acme.toml"))?;
    let spec = KeySpec::from_toml(&spec_text)?;
    let mut acme: KeyDocument = spec.into_document(T0)?;
    acme.policy.min_device_version = Some("2.0".into());
    acme.policy.current_device_version = Some("v4.1.0".into());
    acme.policy.legacy_entitlement = true;
    acme.policy.min_server_version = Some("7.0".into());
    acme.host = Some(netkey::key::HostBinding {
        daemon_identity: b64.encode([7u8; 32]),
        salt: "00112233".into(),
        hardware: vec!["a1b2".into()],
        software: vec!["c3d4".into()],
    });
    let demo = demo_vendor();
    let vendor = netkey::fuzzing::vendor();
    let daemon = netkey::identity::Identity::from_pkcs8(&pkcs8(b"daemon")?)?;
    let receipt = netkey::key::signed::daemon_sign(
        &daemon,
        netkey::key::signed::DaemonDocKind::ReturnReceipt,
        &netkey::key::signed::ReturnReceipt {
            key_id: "ACME-0001".into(),
            revision: 2,
            customer: "ACME".into(),
            daemon_id: daemon.public().daemon_id(),
            daemon_identity: daemon.public().to_base64(),
            returned_at: T0,
            forced: false,
            leases_dropped: 0,
            audit_count: 3,
            audit_hash: "ab".repeat(32),
        },
    )?;
    let signing_key = format!(
        "netkey-vendor-signing-key-v1:{}\n",
        b64.encode(pkcs8(b"vendor")?)
    );
    Ok(vec![
        ("demo-key".into(), demo.issue(&demo_key(T0))?.into_bytes()),
        ("acme-key".into(), vendor.issue(&acme)?.into_bytes()),
        (
            "acme-document".into(),
            serde_json::to_string_pretty(&acme)?.into_bytes(),
        ),
        ("acme-spec".into(), spec_text.into_bytes()),
        ("vendor-pub".into(), vendor.public().to_text().into_bytes()),
        ("vendor-signing-key".into(), signing_key.into_bytes()),
        ("identity-pub".into(), b64.encode([7u8; 32]).into_bytes()),
        ("return-receipt".into(), receipt.into_bytes()),
    ])
}

fn state_file_seeds(root: &Path) -> Result<Seeds, Box<dyn std::error::Error>> {
    let mut out: Seeds = Vec::new();

    let head = AuditHead {
        count: 3,
        hash: [0xab; 32],
    };
    let mut cameras = BTreeMap::new();
    cameras.insert(
        "cam-01".to_string(),
        HeldCamera {
            epoch: 1,
            class: None,
            modules: vec![],
            device_version: None,
        },
    );
    cameras.insert(
        "enc-7".to_string(),
        HeldCamera {
            epoch: 3,
            class: Some("encoder-4ch".into()),
            modules: vec!["lpr".into()],
            device_version: Some("2.4.1".into()),
        },
    );
    let state = ClientState {
        daemon_id: "nkd-8c1e5b2a90d4f617".into(),
        daemon_addr: "192.0.2.10:1947".into(),
        key_id: "ACME-0001".into(),
        pool: "ACME-0001/Default".into(),
        server_id: "srv-3fa94c01b2d7".into(),
        name: "Recorder 3".into(),
        identity: ClientState::encode_identity(&netkey::identity::Identity::from_pkcs8(&pkcs8(
            b"video server",
        )?)?),
        daemon_identity: netkey::identity::PublicKey::from_bytes([7u8; 32]).to_base64(),
        key_file: "{}".into(),
        demo: false,
        heartbeat_interval_ms: 60_000,
        offline_grace_ms: 1_209_600_000,
        cameras,
        deadline: None,
        lease: Some(netkey::proto::LeaseToken {
            server_id: "srv-3fa94c01b2d7".into(),
            sent_at: T0,
            valid_for_ms: 1_209_600_000,
            cameras: 2,
            signature: vec![0; 64],
        }),
        clock_hwm: T0,
        audit_head: Some(head),
    };
    out.push((
        "client-state".into(),
        serde_json::to_string_pretty(&state)?.into_bytes(),
    ));
    out.push((
        "audit-head".into(),
        serde_json::to_string(&head)?.into_bytes(),
    ));

    // A core with a key, a pool's code, an enrolled server and two leases: the commands
    // are a log record, the result a snapshot, and with its audit chain a backup.
    let commands = vec![
        Command::InstallKey {
            document: demo_key(T0),
            demo: true,
        },
        Command::CreateCode {
            pool: PoolId::default_of("DEMO"),
            code: "04718253".into(),
        },
        Command::Enrol {
            request: EnrolRequest {
                code: "04718253".into(),
                name: "Recorder 3".into(),
                version: "7.2.0".into(),
                server_id: "srv-3fa94c01b2d7".into(),
                credential: vec![9; 32],
                existing: None,
            },
        },
        Command::SessionOpened {
            server: "srv-3fa94c01b2d7".into(),
        },
        Command::Checkout {
            server: "srv-3fa94c01b2d7".into(),
            key: None,
            items: vec![
                CheckoutItem::camera("cam-01"),
                CheckoutItem {
                    modules: vec!["lpr".into()],
                    ..CheckoutItem::camera("cam-02")
                },
            ],
            after_wait: false,
        },
        Command::Release {
            server: "srv-3fa94c01b2d7".into(),
            cameras: vec!["cam-02".into()],
        },
        Command::Advance,
        Command::Restarted,
    ];
    let mut core = Core::new();
    for c in commands.clone() {
        core.apply(T0, c);
    }
    let mut records: Vec<AuditRecord> = Vec::new();
    let mut head = AuditHead::EMPTY;
    for event in core.drain_events() {
        let r = audit::chain(head, T0, audit::entry_for(&event));
        head = AuditHead {
            count: r.index,
            hash: r.hash,
        };
        records.push(r);
    }
    let record = BatchRecord { now: T0, commands };
    out.push(("log-record".into(), postcard::to_allocvec(&record)?));
    out.push(("snapshot".into(), postcard::to_allocvec(&core)?));
    let export = AuditExport {
        head,
        records: records.clone(),
    };
    out.push((
        "audit-export".into(),
        serde_json::to_string_pretty(&export)?.into_bytes(),
    ));
    let backup = Backup {
        taken_at: T0,
        hwm: T0,
        core,
        audit: records,
    };
    out.push(("backup".into(), backup.to_bytes()?));
    // A backup the schema-3 build wrote (lease terms in full with every lease), and the
    // snapshot inside it, as a directory migrated from schema 3 keeps until its next.
    let schema_3 = std::fs::read(root.join("tests/fixtures/schema3.backup"))?;
    let body = schema_3
        .get(16..)
        .ok_or("the schema-3 backup is too short")?;
    let snapshot =
        netkey::core::compact::read_as(netkey::core::compact::TermsFormat::Inline, || {
            let (_, rest) = postcard::take_from_bytes::<(u32, Timestamp, Timestamp)>(body)?;
            let (_, after) = postcard::take_from_bytes::<Core>(rest)?;
            Ok::<_, postcard::Error>(rest[..rest.len() - after.len()].to_vec())
        })?;
    out.push(("schema3-backup".into(), schema_3));
    out.push(("schema3-snapshot".into(), snapshot));

    // netkeyd.toml as packaged, with every setting switched on.
    let packaged = std::fs::read_to_string(root.join("packaging/netkeyd.toml"))?;
    // The commented-out settings, under their table headers.
    let config: String = packaged
        .lines()
        .filter_map(|l| {
            l.strip_prefix('#')
                .filter(|s| s.contains(" = "))
                .or(Some(l).filter(|l| l.starts_with('[')))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    FileConfig::parse(Path::new("netkeyd.toml"), &config)?;
    out.push(("netkeyd-toml".into(), config.into_bytes()));
    out.push(("identity-key".into(), pkcs8(b"identity")?));
    Ok(out)
}
