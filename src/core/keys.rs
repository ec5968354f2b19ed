//! A hosted key's life after installation: the daemon's verdict on it (host binding,
//! trust), its return (leases revoked, then the key, its pools and servers forgotten),
//! and the clock: a rollback blocks new checkouts, a vendor's reset moves time back.

use super::{Core, Event, PoolId, Refusal, ReleaseReason, RevocationReason, Timestamp};
use crate::key::KeyId;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnOutcome {
    pub key: KeyId,
    pub revision: u32,
    pub customer: String,
    /// Leases still counted that `force` dropped (a deliberate, audited overlap).
    pub dropped: u64,
    pub forced: bool,
}

impl Core {
    /// Records the daemon's verdict on `key`: how it is bound, and why it is not served
    /// (`None`: it is). Servers of a refused key get `KeyInactive` for checkouts,
    /// heartbeats and syncs, so their grace runs out: a copy of a key must not serve.
    pub fn key_checked(
        &mut self,
        now: Timestamp,
        key: &str,
        binding: &str,
        refused: Option<String>,
        signer: Option<String>,
        file: Option<String>,
    ) -> Result<(), Refusal> {
        self.advance(now);
        let k = self.keys.get_mut(key).ok_or(Refusal::UnknownKey {
            key: key.to_string(),
        })?;
        if signer.is_some() {
            k.signer = signer;
        }
        if let Some(file) = file {
            k.file = file;
        }
        if k.binding == binding && k.refused == refused {
            return Ok(());
        }
        k.binding = binding.to_string();
        k.refused = refused.clone();
        self.events.push_with(|| Event::KeyChecked {
            key: key.to_string(),
            binding: binding.to_string(),
            refused,
        });
        Ok(())
    }

    /// The keys a client on `kind`'s transport may be offered, each with its signed file:
    /// served (not refused, not being returned) and of that kind.
    pub fn offered_keys(&self, kind: crate::key::KeyKind) -> Vec<(String, bool, String)> {
        self.keys
            .values()
            .filter(|k| k.document.kind == kind && k.refused.is_none() && !k.returning)
            .map(|k| (k.document.key_id.clone(), k.demo, k.file.clone()))
            .collect()
    }

    /// Leases of `key` still counted: held and `revoking`.
    pub fn key_leases(&self, key: &str) -> u64 {
        self.cameras
            .iter()
            .filter(|((k, _), _)| *k == key)
            .map(|(_, c)| u64::from(c.is_held()) + c.revoking().len() as u64)
            .sum()
    }

    /// Whether a live server still holds a lease of `key` (held or `revoking`): the
    /// daemon may wait briefly for its acknowledgements.
    pub fn key_has_live_holders(&self, key: &str) -> bool {
        self.cameras
            .iter()
            .filter(|((k, _), _)| *k == key)
            .any(|(_, c)| {
                c.terms()
                    .map(|t| &t.server)
                    .into_iter()
                    .chain(c.revoking().iter().map(|r| &r.server))
                    .any(|s| self.servers.get(s).is_some_and(|s| s.sessions > 0))
            })
    }

    /// First step of a return: every lease of the key is revoked as for any shrink (live
    /// holders told, silent ones `revoking`); nothing new is granted from it. Returns the
    /// leases still counted.
    pub fn deactivate_key(&mut self, now: Timestamp, key: &str) -> Result<u64, Refusal> {
        self.advance(now);
        let k = self.keys.get_mut(key).ok_or(Refusal::UnknownKey {
            key: key.to_string(),
        })?;
        if !k.returning {
            k.returning = true;
            let held: Vec<String> = self
                .cameras
                .iter()
                .filter(|((k, _), c)| *k == key && c.is_held())
                .map(|((_, c), _)| c.to_string())
                .collect();
            for camera in held {
                self.revoke_lease(now, key, &camera, RevocationReason::Shrunk);
            }
            self.codes.retain(|_, c| c.pool.key != key);
            let leases = self.key_leases(key);
            self.events.push_with(|| Event::KeyReturning {
                key: key.to_string(),
                leases,
            });
            self.settle(now);
        }
        Ok(self.key_leases(key))
    }

    /// Last step of a return: forgets the key, its pools, cameras and servers. Refused
    /// while leases remain unless `force`, which drops them (audited as an overlap).
    pub fn return_key(
        &mut self,
        now: Timestamp,
        key: &str,
        force: bool,
    ) -> Result<ReturnOutcome, Refusal> {
        self.advance(now);
        let k = self.keys.get(key).ok_or(Refusal::UnknownKey {
            key: key.to_string(),
        })?;
        if !k.returning {
            return Err(Refusal::BadRequest {
                reason: format!("key {key} is not being returned (deactivate it first)"),
            });
        }
        let remaining = self.key_leases(key);
        if remaining > 0 && !force {
            return Err(Refusal::BadRequest {
                reason: format!(
                    "{remaining} lease{} of key {key} remain{} (revoking until the video servers acknowledge or their reservations end); return it when none remains, or with --force",
                    if remaining == 1 { "" } else { "s" },
                    if remaining == 1 { "s" } else { "" }
                ),
            });
        }
        let (revision, customer) = (k.document.revision, k.document.customer.clone());
        // Per camera: its id, its `revoking` leases (server, epoch), its holder.
        type Leases = (String, Vec<(String, u64)>, Option<String>);
        let cameras: Vec<Leases> = self
            .cameras
            .iter()
            .filter(|((k, _), _)| *k == key)
            .map(|((_, c), r)| {
                (
                    c.to_string(),
                    r.revoking()
                        .iter()
                        .map(|x| (x.server.clone(), x.epoch))
                        .collect(),
                    r.lease().map(|l| l.server.clone()),
                )
            })
            .collect();
        for (camera, revoking, holder) in cameras {
            if let Some(server) = holder {
                self.release_lease(key, &camera, ReleaseReason::Forced);
                self.events.push_with(|| Event::ForcedOverlap {
                    key: key.to_string(),
                    camera: camera.clone(),
                    server,
                });
            }
            for (server, epoch) in revoking {
                self.end_revoking(key, &camera, &server, epoch, false);
                self.events.push_with(|| Event::ForcedOverlap {
                    key: key.to_string(),
                    camera: camera.clone(),
                    server,
                });
            }
        }
        let servers: Vec<String> = self
            .servers
            .values()
            .filter(|s| s.pool.key == key)
            .map(|s| s.id.clone())
            .collect();
        for server in servers {
            self.servers.remove(&server);
            self.unpersisted.remove(&server);
            self.events.push_with(|| Event::Forgotten { server });
        }
        self.cameras.remove_key(key);
        self.pools.retain(|p: &PoolId, _| p.key != key);
        self.codes.retain(|_, c| c.pool.key != key);
        self.keys.remove(key);
        self.events.push_with(|| Event::KeyReturned {
            key: key.to_string(),
            revision,
            forced: remaining > 0,
            dropped: remaining,
        });
        self.next_due = self.compute_next_due(now);
        Ok(ReturnOutcome {
            key: key.to_string(),
            revision,
            customer,
            dropped: remaining,
            forced: remaining > 0,
        })
    }

    /// The wall clock is behind `mark` (new checkouts refused) or, with `None`, no longer.
    pub fn set_clock_rollback(&mut self, now: Timestamp, mark: Option<Timestamp>) {
        self.advance(now);
        if self.clock_rollback != mark {
            self.clock_rollback = mark;
            self.events.push_with(|| Event::ClockRollback { mark });
        }
    }

    pub fn clock_rollback(&self) -> Option<Timestamp> {
        self.clock_rollback
    }

    /// Time was set back to the wall clock (a vendor's reset token): an entry that had
    /// expired by the old reckoning but not by the new counts again, and its warnings are
    /// given again as their instants come.
    pub fn time_rebased(&mut self, now: Timestamp) {
        for k in self.keys.values_mut() {
            let entries = &k.document.entries;
            k.expired_entries
                .retain(|i| entries.get(*i).is_some_and(|e| e.not_after <= now));
            k.warned.retain(|i, days| {
                entries
                    .get(*i)
                    .is_some_and(|e| now >= e.not_after.minus(u64::from(*days) * super::time::DAY))
            });
        }
        self.clock_rollback = None;
        self.events.push_with(|| Event::TimeRebased { at: now });
        self.next_due = self.compute_next_due(now);
        self.advance(now);
    }
}
