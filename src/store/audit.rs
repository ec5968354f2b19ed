//! The audit log: one record per change, each hashed together with the previous record's
//! hash (SHA-256), so editing or dropping any record breaks every hash after it. The head
//! (count, hash) goes into every export and heartbeat answer; an earlier head proves
//! later rewriting or truncation (`verify` with an anchor).

use crate::core::{Event, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0; 32];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1-based position in the chain.
    pub index: u64,
    pub at: Timestamp,
    pub action: String,
    pub key_id: Option<String>,
    pub server_id: Option<String>,
    pub camera_id: Option<String>,
    pub pool: Option<String>,
    pub detail: String,
    #[serde(with = "hex32")]
    pub prev: [u8; 32],
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// An audit record before it is chained.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditEntry {
    pub action: String,
    pub key_id: Option<String>,
    pub server_id: Option<String>,
    pub camera_id: Option<String>,
    pub pool: Option<String>,
    pub detail: String,
}

pub use crate::proto::AuditHead;

pub use crate::hex;

use crate::proto::hex32;

/// What a record's hash covers: its fields and the previous hash, in this order.
fn hashed_fields(r: &AuditRecord) -> impl Serialize + '_ {
    (
        r.index,
        r.at,
        &r.action,
        &r.key_id,
        &r.server_id,
        &r.camera_id,
        &r.pool,
        &r.detail,
        r.prev,
    )
}

/// The hash of a record: SHA-256 over its fields (postcard) and the previous hash.
pub fn record_hash(r: &AuditRecord) -> [u8; 32] {
    // Straight into the hash, no buffer between: every change makes a record.
    let digest = postcard::serialize_with_flavor(&hashed_fields(r), Sha256Flavor::new())
        .unwrap_or_else(
            // Cannot happen (nothing here fails to serialize); the hash of nothing, as before.
            |_| ring::digest::digest(&ring::digest::SHA256, &[]),
        );
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A postcard output that hashes what it is given, gathered into blocks first: postcard
/// hands over many pieces of a byte or a few (the 32 bytes of `prev` one at a time), and
/// a call into the hash for each cost more than serializing to a buffer had.
struct Sha256Flavor {
    hash: ring::digest::Context,
    block: [u8; 64],
    filled: usize,
}

impl Sha256Flavor {
    fn new() -> Sha256Flavor {
        Sha256Flavor {
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            block: [0; 64],
            filled: 0,
        }
    }

    fn flush(&mut self) {
        self.hash.update(&self.block[..self.filled]);
        self.filled = 0;
    }
}

impl postcard::ser_flavors::Flavor for Sha256Flavor {
    type Output = ring::digest::Digest;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.filled + data.len() > self.block.len() {
            self.flush();
        }
        if data.len() >= self.block.len() {
            self.hash.update(data);
        } else {
            self.block[self.filled..self.filled + data.len()].copy_from_slice(data);
            self.filled += data.len();
        }
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.filled == self.block.len() {
            self.flush();
        }
        self.block[self.filled] = data;
        self.filled += 1;
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Self::Output> {
        self.flush();
        Ok(self.hash.finish())
    }
}

/// Chains `entry` after `head`.
pub fn chain(head: AuditHead, at: Timestamp, entry: AuditEntry) -> AuditRecord {
    let mut r = AuditRecord {
        index: head.count + 1,
        at,
        action: entry.action,
        key_id: entry.key_id,
        server_id: entry.server_id,
        camera_id: entry.camera_id,
        pool: entry.pool,
        detail: entry.detail,
        prev: head.hash,
        hash: [0; 32],
    };
    r.hash = record_hash(&r);
    r
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("audit record {index} was altered: its hash does not match its contents")]
    Altered { index: u64 },
    #[error(
        "audit record {index} does not follow record {prev}: a record was removed or inserted"
    )]
    Broken { index: u64, prev: u64 },
    #[error(
        "the audit log was rewritten at or before record {index}: it does not match the anchor"
    )]
    Rewritten { index: u64 },
    #[error(
        "the audit log was truncated: it has {have} records, the anchor proves {anchored} existed"
    )]
    Truncated { have: u64, anchored: u64 },
}

/// Checks a whole chain, and that it extends `anchor` (an earlier head) if given.
/// Returns the head.
pub fn verify(records: &[AuditRecord], anchor: Option<AuditHead>) -> Result<AuditHead, AuditError> {
    let mut head = AuditHead::EMPTY;
    for r in records {
        if r.index != head.count + 1 || r.prev != head.hash {
            return Err(AuditError::Broken {
                index: r.index,
                prev: head.count,
            });
        }
        if record_hash(r) != r.hash {
            return Err(AuditError::Altered { index: r.index });
        }
        head = AuditHead {
            count: r.index,
            hash: r.hash,
        };
        if let Some(a) = anchor {
            if a.count == r.index && a.hash != r.hash {
                return Err(AuditError::Rewritten { index: r.index });
            }
        }
    }
    if let Some(a) = anchor {
        if a.count > head.count {
            return Err(AuditError::Truncated {
                have: head.count,
                anchored: a.count,
            });
        }
    }
    Ok(head)
}

fn opt(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// What the audit log says about a core event.
pub fn entry_for(event: &Event) -> AuditEntry {
    let mut e = AuditEntry::default();
    match event {
        Event::KeyInstalled {
            key,
            revision,
            demo,
        } => {
            e.action = "key_installed".into();
            e.key_id = opt(key);
            e.detail = format!("revision {revision}{}", if *demo { " DEMO" } else { "" });
        }
        Event::CodeCreated { pool, expires_at } => {
            e.action = "code_created".into();
            e.pool = Some(pool.to_string());
            e.detail = format!("valid until {expires_at}");
        }
        Event::Enrolled { server, name, pool } => {
            e.action = "enrolled".into();
            e.server_id = opt(server);
            e.pool = Some(pool.to_string());
            e.detail = format!("name {name:?}");
        }
        Event::Granted {
            key,
            camera,
            server,
            epoch,
            features,
            legacy,
        } => {
            e.action = "granted".into();
            e.key_id = opt(key);
            e.camera_id = opt(camera);
            e.server_id = opt(server);
            // One string, written in place and sized for a few features: a grant's entry
            // is made on every checkout.
            let mut d = String::with_capacity(64);
            let _ = write!(d, "epoch {epoch} ");
            for (i, (k, n)) in features.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(d, "{sep}{k}={n}");
            }
            if *legacy {
                d.push_str(" legacy");
            }
            e.detail = d;
        }
        Event::Released {
            key,
            camera,
            server,
            epoch,
            reason,
        } => {
            e.action = "released".into();
            e.key_id = opt(key);
            e.camera_id = opt(camera);
            e.server_id = opt(server);
            e.detail = format!("epoch {epoch} reason {reason:?}");
        }
        Event::MoveRequested {
            key,
            camera,
            from,
            to,
        } => {
            e.action = "move_requested".into();
            e.key_id = opt(key);
            e.camera_id = opt(camera);
            e.server_id = opt(to);
            e.detail = format!("from {from}");
        }
        Event::MoveWithdrawn {
            key,
            camera,
            from,
            to,
        } => {
            e.action = "move_withdrawn".into();
            e.key_id = opt(key);
            e.camera_id = opt(camera);
            e.server_id = opt(to);
            e.detail = format!("from {from}: no acknowledgement, no spare seat");
        }
        Event::Moved {
            key,
            camera,
            from,
            to,
            epoch,
        } => {
            e.action = "moved".into();
            e.key_id = opt(key);
            e.camera_id = opt(camera);
            e.server_id = opt(to);
            e.detail = format!("from {from} epoch {epoch}");
        }
        Event::RevocationIssued {
            server,
            key,
            camera,
            epoch,
            reason,
        } => {
            e.action = "revoked".into();
            e.key_id = opt(key);
            e.camera_id = opt(camera);
            e.server_id = opt(server);
            e.detail = format!("epoch {epoch} reason {}", reason.as_str());
        }
        Event::RevokingEnded {
            key,
            camera,
            server,
            epoch,
            acknowledged,
        } => {
            e.action = "revoking_ended".into();
            e.key_id = opt(key);
            e.camera_id = opt(camera);
            e.server_id = opt(server);
            e.detail = format!(
                "epoch {epoch} {}",
                if *acknowledged {
                    "acknowledged"
                } else {
                    "reservation ended"
                }
            );
        }
        Event::CameraContested {
            key,
            camera,
            moves,
            window_ms,
        } => {
            e.action = "camera_contested".into();
            e.key_id = opt(key);
            e.camera_id = opt(camera);
            e.detail = format!("{moves} moves within {} s", window_ms / 1000);
        }
        Event::ForcedOverlap {
            key,
            camera,
            server,
        } => {
            e.action = "forced_overlap".into();
            e.key_id = opt(key);
            e.camera_id = opt(camera);
            e.server_id = opt(server);
            e.detail = "administrator --force: seat freed before the holder acknowledged".into();
        }
        Event::Kicked { server, forced } => {
            e.action = "kicked".into();
            e.server_id = opt(server);
            e.detail = if *forced {
                "forced".into()
            } else {
                String::new()
            };
        }
        Event::Forgotten { server } => {
            e.action = "forgotten".into();
            e.server_id = opt(server);
        }
        Event::ServerExpired { server, cameras } => {
            e.action = "reservation_ended".into();
            e.server_id = opt(server);
            e.detail = format!("{cameras} cameras released after silence");
        }
        Event::EntryExpired {
            key,
            order,
            feature,
            count,
        } => {
            e.action = "entry_expired".into();
            e.key_id = opt(key);
            e.detail = format!("order {order}: {count} {feature}");
        }
        Event::AllocationShrunk {
            pool,
            feature,
            in_use,
            total,
        } => {
            e.action = "allocation_shrunk".into();
            e.pool = Some(pool.to_string());
            e.detail = format!("{feature}: {in_use} in use of {total}");
        }
        Event::ServerMoved { server, from, to } => {
            e.action = "server_moved".into();
            e.server_id = opt(server);
            e.pool = Some(to.to_string());
            e.detail = format!("from {from}");
        }
        Event::ServerRenamed { server, name } => {
            e.action = "server_renamed".into();
            e.server_id = opt(server);
            e.detail = format!("name {name:?}");
        }
        Event::EntryExpiring {
            key,
            order,
            feature,
            count,
            not_after,
            days,
        } => {
            e.action = "entry_expiring".into();
            e.key_id = opt(key);
            e.detail =
                format!("order {order} {feature} x{count} until {not_after}: {days} days left");
        }
        Event::KeyChecked {
            key,
            binding,
            refused,
        } => {
            e.action = "key_checked".into();
            e.key_id = opt(key);
            e.detail = match refused {
                Some(r) => format!("NOT SERVED: {r} (binding: {binding})"),
                None => format!("served (binding: {binding})"),
            };
        }
        Event::KeyReturning { key, leases } => {
            e.action = "key_returning".into();
            e.key_id = opt(key);
            e.detail = format!("{leases} leases revoked or revoking");
        }
        Event::KeyReturned {
            key,
            revision,
            forced,
            dropped,
        } => {
            e.action = "key_returned".into();
            e.key_id = opt(key);
            e.detail = format!(
                "revision {revision}{}",
                if *forced {
                    format!(" with --force: {dropped} leases dropped")
                } else {
                    String::new()
                }
            );
        }
        Event::OverdraftStarted { key, seats } => {
            e.action = "overdraft_started".into();
            e.key_id = opt(key);
            e.detail = format!("{seats} seats over the allocation");
        }
        Event::OverdraftEnded { key, minutes } => {
            e.action = "overdraft_ended".into();
            e.key_id = opt(key);
            e.detail = format!("{minutes} minutes over the allocation");
        }
        Event::OverdraftSpent { key, hours } => {
            e.action = "overdraft_spent".into();
            e.key_id = opt(key);
            e.detail = format!("allowance of {hours} h per 30 days spent");
        }
        Event::ClockRollback { mark } => {
            e.action = "clock_rollback".into();
            e.detail = match mark {
                Some(m) => {
                    format!("wall clock behind the high-water mark {m}: new checkouts refused")
                }
                None => "cleared".into(),
            };
        }
        Event::TimeRebased { at } => {
            e.action = "time_rebased".into();
            e.detail = format!("time reset to the wall clock at {at} by a vendor token");
        }
        Event::PoolCreated { pool } => {
            e.action = "pool_created".into();
            e.key_id = opt(&pool.key);
            e.pool = Some(pool.to_string());
        }
        Event::SeatsMoved {
            from,
            to,
            feature,
            order,
            count,
        } => {
            e.action = "seats_moved".into();
            e.key_id = opt(&to.key);
            e.pool = Some(to.to_string());
            e.detail = format!("{count} {feature} of order {order} from {from}");
        }
        Event::PoolDeleted { pool } => {
            e.action = "pool_deleted".into();
            e.key_id = opt(&pool.key);
            e.pool = Some(pool.to_string());
            e.detail = "seats returned to Default".into();
        }
    }
    e
}

/// CSV export: a header line, then one line per record; fields with commas or quotes
/// are quoted.
pub fn to_csv(records: &[AuditRecord]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = String::from("index,at,action,key_id,server_id,camera_id,pool,detail,hash\n");
    for r in records {
        let cols = [
            r.index.to_string(),
            r.at.to_string(),
            r.action.clone(),
            r.key_id.clone().unwrap_or_default(),
            r.server_id.clone().unwrap_or_default(),
            r.camera_id.clone().unwrap_or_default(),
            r.pool.clone().unwrap_or_default(),
            r.detail.clone(),
            hex(&r.hash),
        ];
        out.push_str(&cols.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hasher_gives_sha256_of_what_it_is_given_however_it_is_cut() {
        use postcard::ser_flavors::Flavor as _;
        let data: Vec<u8> = (0..200u8).collect();
        let expected = ring::digest::digest(&ring::digest::SHA256, &data);
        let n = data.len();
        for a in 0..=n {
            for b in [a, a + 1, a + 63, a + 64, a + 65, n].map(|b| b.min(n)) {
                // Slices, then single bytes, then slices again.
                let mut h = Sha256Flavor::new();
                h.try_extend(&data[..a]).unwrap();
                for &byte in &data[a..b] {
                    h.try_push(byte).unwrap();
                }
                h.try_extend(&data[b..]).unwrap();
                let got = h.finalize().unwrap();
                assert_eq!(got.as_ref(), expected.as_ref(), "cut at {a} and {b}");
            }
        }
    }

    /// A grant's record chained after record `count` whose hash is 32 bytes of `fill`.
    fn granted(
        (count, fill): (u64, u8),
        at: u64,
        (key, server, camera): (&str, &str, &str),
        pool: Option<String>,
        detail: String,
    ) -> AuditRecord {
        chain(
            AuditHead {
                count,
                hash: [fill; 32],
            },
            Timestamp(at),
            AuditEntry {
                action: "granted".into(),
                key_id: Some(key.into()),
                server_id: Some(server.into()),
                camera_id: Some(camera.into()),
                pool,
                detail,
            },
        )
    }

    #[test]
    fn a_record_s_hash_is_the_one_written_by_earlier_versions() {
        // Chains on disk were hashed from postcard's bytes by every version so far. The
        // figure was worked out apart from postcard, from its format: varints for the
        // index and time, a length before each string, a tag before each option, then
        // the 32 bytes of the previous hash.
        let r = granted(
            (6, 0xab),
            1_764_000_000_000,
            ("DEMO", "vms-0001", "02:00:00:01:00:64"),
            None,
            "epoch 3 camera=1".into(),
        );
        assert_eq!(
            hex(&r.hash),
            "5f4df1c74252529f34107e91da9a70be79c1adcb92fc713ef470cda56bbbe821"
        );
    }

    #[test]
    fn a_record_s_hash_is_sha256_of_its_fields_in_postcard_and_the_previous_hash() {
        // The chain is on disk: hashing straight from the serializer must give what
        // hashing the serialized bytes gave, whatever the fields' lengths (pieces that fill
        // the hasher's block exactly, cross it, or are longer than one).
        for n in [0, 1, 20, 31, 32, 33, 63, 64, 65, 127, 128, 129, 300] {
            let r = granted(
                (41, 3),
                1_700_000_000_123,
                ("K-1", "vms-7", "02:00:00:00:01:2c"),
                (n % 2 == 1).then(|| "p".repeat(n)),
                "d".repeat(n),
            );
            let bytes = postcard::to_allocvec(&hashed_fields(&r)).unwrap();
            let expected = ring::digest::digest(&ring::digest::SHA256, &bytes);
            assert_eq!(r.hash.as_slice(), expected.as_ref(), "fields of {n} bytes");
            assert_eq!(r.index, 42);
        }
    }

    #[test]
    fn a_grant_is_audited_with_its_epoch_features_and_legacy_flag() {
        let granted = |features: &[(&str, u32)], legacy| {
            entry_for(&Event::Granted {
                key: "K1".into(),
                camera: "cam-1".into(),
                server: "srv-1".into(),
                epoch: 3,
                features: features.iter().map(|(f, n)| (f.to_string(), *n)).collect(),
                legacy,
            })
        };
        let e = granted(&[("lpr", 1), ("camera", 1)], true);
        assert_eq!(e.action, "granted");
        assert_eq!(
            (
                e.key_id.as_deref(),
                e.camera_id.as_deref(),
                e.server_id.as_deref()
            ),
            (Some("K1"), Some("cam-1"), Some("srv-1"))
        );
        // Features in their (sorted) order: the same text as ever, so chains verify.
        assert_eq!(e.detail, "epoch 3 camera=1,lpr=1 legacy");
        assert_eq!(granted(&[("camera", 2)], false).detail, "epoch 3 camera=2");
        assert_eq!(granted(&[], false).detail, "epoch 3 ");
    }

    fn chain_of(n: u64) -> Vec<AuditRecord> {
        let mut head = AuditHead::EMPTY;
        (0..n)
            .map(|i| {
                let r = chain(
                    head,
                    Timestamp(i),
                    AuditEntry {
                        action: format!("a{i}"),
                        ..Default::default()
                    },
                );
                head = AuditHead {
                    count: r.index,
                    hash: r.hash,
                };
                r
            })
            .collect()
    }

    #[test]
    fn an_edited_record_is_named() {
        let mut c = chain_of(5);
        assert_eq!(verify(&c, None).unwrap().count, 5);
        c[2].detail = "edited".into();
        assert_eq!(verify(&c, None), Err(AuditError::Altered { index: 3 }));
    }

    #[test]
    fn a_removed_record_breaks_the_chain() {
        let mut c = chain_of(5);
        c.remove(1);
        assert_eq!(
            verify(&c, None),
            Err(AuditError::Broken { index: 3, prev: 1 })
        );
    }

    #[test]
    fn truncation_and_rewriting_show_against_an_anchor() {
        let c = chain_of(5);
        let anchor = verify(&c, None).unwrap();
        assert_eq!(
            verify(&c[..3], Some(anchor)),
            Err(AuditError::Truncated {
                have: 3,
                anchored: 5
            })
        );
        // A rewritten, self-consistent chain of the same length.
        let mut head = AuditHead::EMPTY;
        let forged: Vec<AuditRecord> = (0..5)
            .map(|i| {
                let r = chain(
                    head,
                    Timestamp(i),
                    AuditEntry {
                        action: format!("x{i}"),
                        ..Default::default()
                    },
                );
                head = AuditHead {
                    count: r.index,
                    hash: r.hash,
                };
                r
            })
            .collect();
        assert_eq!(
            verify(&forged, Some(anchor)),
            Err(AuditError::Rewritten { index: 5 })
        );
        // A longer chain that extends the anchor is fine.
        assert!(verify(&chain_of(7), Some(verify(&chain_of(5), None).unwrap())).is_ok());
    }

    #[test]
    fn head_json_is_hex() {
        let h = AuditHead {
            count: 2,
            hash: [0xab; 32],
        };
        let j = serde_json::to_string(&h).unwrap();
        assert!(j.contains(&"ab".repeat(32)));
        assert_eq!(serde_json::from_str::<AuditHead>(&j).unwrap(), h);
    }
}
