//! Time passing: silent servers' reservations end, `revoking` leases stop counting,
//! entries are warned about 30, 7 and 1 days ahead and then expire, shrinking exactly
//! the pools that hold them, and overdraft allowances run out.

use super::time::DAY;
use super::{Core, Event, ExpiryWarning, PoolId, ReleaseReason, RevocationReason, Timestamp};
use crate::key::Feature;
use std::collections::BTreeSet;

/// Days before an entry's not-after instant at which it is warned about.
pub const WARN_DAYS: [u32; 3] = [30, 7, 1];

impl Core {
    /// Applies everything due at or before `now`. Every command calls it first, so the
    /// caller only needs to call it on a timer when no commands arrive.
    pub fn advance(&mut self, now: Timestamp) {
        if now < self.next_due {
            return;
        }
        self.warn_entries(now);
        self.expire_entries(now);
        self.expire_revoking(now);
        self.expire_silent_servers(now);
        self.settle(now);
        self.next_due = self.compute_next_due(now);
    }

    /// The earliest instant at which `advance` has work to do.
    pub fn next_deadline(&self) -> Timestamp {
        self.next_due
    }

    pub(crate) fn compute_next_due(&self, now: Timestamp) -> Timestamp {
        let mut next = Timestamp::NEVER;
        for s in self.servers.values() {
            if !s.held.is_empty() {
                if let Some(end) = super::reservation_end_of(&self.keys, s) {
                    next = next.min(end);
                }
            }
        }
        for c in self.cameras.values() {
            for r in c.revoking() {
                next = next.min(r.until);
            }
        }
        for k in self.keys.values() {
            for (i, e) in k.document.entries.iter().enumerate() {
                if !k.expired_entries.contains(&i) {
                    next = next.min(e.not_after);
                    let warned = k.warned.get(&i).copied().unwrap_or(u32::MAX);
                    for days in WARN_DAYS.into_iter().filter(|d| *d < warned) {
                        let at = e.not_after.minus(u64::from(days) * DAY);
                        if at > now {
                            next = next.min(at);
                        }
                    }
                }
            }
        }
        next = next.min(self.overdraft_deadline(now));
        next.max(now.plus(1))
    }

    /// Entries within 30, 7 or 1 days of their not-after instant, each stage warned once
    /// (an entry installed late gets only the stage it is in).
    fn warn_entries(&mut self, now: Timestamp) {
        for (key_id, k) in self.keys.iter_mut() {
            for (i, e) in k.document.entries.iter().enumerate() {
                if e.not_after <= now {
                    continue;
                }
                let stage = WARN_DAYS
                    .into_iter()
                    .filter(|d| now >= e.not_after.minus(u64::from(*d) * DAY))
                    .min();
                let Some(days) = stage else { continue };
                if k.warned.get(&i).is_some_and(|w| *w <= days) {
                    continue;
                }
                k.warned.insert(i, days);
                self.events.push_with(|| Event::EntryExpiring {
                    key: key_id.clone(),
                    order: e.order.clone(),
                    feature: e.feature.clone(),
                    count: e.count,
                    not_after: e.not_after,
                    days,
                });
            }
        }
    }

    /// Entries of `key` whose expiry is warned about at `now`: within 30 days, unexpired.
    pub fn expiring_entries(&self, key: &str, now: Timestamp) -> Vec<ExpiryWarning> {
        let Some(k) = self.keys.get(key) else {
            return Vec::new();
        };
        k.document
            .entries
            .iter()
            .filter(|e| e.not_after > now && now >= e.not_after.minus(30 * DAY))
            .map(|e| ExpiryWarning {
                order: e.order.clone(),
                feature: e.feature.clone(),
                count: e.count,
                not_after: e.not_after,
            })
            .collect()
    }

    fn expire_revoking(&mut self, now: Timestamp) {
        let mut due = Vec::new();
        for ((key, camera), c) in &self.cameras {
            for r in c.revoking() {
                if r.until <= now {
                    due.push((key.clone(), camera.to_string(), r.server.clone(), r.epoch));
                }
            }
        }
        for (key, camera, server, epoch) in due {
            self.end_revoking(&key, &camera, &server, epoch, false);
        }
    }

    fn expire_silent_servers(&mut self, now: Timestamp) {
        let due: Vec<(String, String)> = self
            .servers
            .iter()
            .filter(|(_, s)| {
                !s.held.is_empty()
                    && super::reservation_end_of(&self.keys, s).is_some_and(|end| end <= now)
            })
            .map(|(id, s)| (id.to_string(), s.pool.key.clone()))
            .collect();
        for (server, key) in due {
            let cameras: Vec<String> = self
                .servers
                .get(&server)
                .map(|s| s.held.to_vec())
                .unwrap_or_default();
            let n = cameras.len() as u64;
            for camera in cameras {
                self.release_lease(&key, &camera, ReleaseReason::Expired);
            }
            if let Some(s) = self.servers.get_mut(&server) {
                // Its own deadline passed before this (invariant 6): nothing to revoke.
                s.revocations.retain(|_, r| !r.provisional);
            }
            self.events.push_with(|| Event::ServerExpired {
                server: server.clone(),
                cameras: n,
            });
            self.forget_if_kicked_and_empty(&server);
        }
    }

    fn expire_entries(&mut self, now: Timestamp) {
        let mut shrunk: BTreeSet<(PoolId, Feature)> = BTreeSet::new();
        for (key_id, k) in self.keys.iter_mut() {
            for (i, e) in k.document.entries.iter().enumerate() {
                if e.not_after <= now && k.expired_entries.insert(i) {
                    self.events.push_with(|| Event::EntryExpired {
                        key: key_id.clone(),
                        order: e.order.clone(),
                        feature: e.feature.clone(),
                        count: e.count,
                    });
                    for p in self.pools.values() {
                        if p.id.key == *key_id && p.seats.get(&i).is_some_and(|n| *n > 0) {
                            shrunk.insert((p.id.clone(), e.feature.clone()));
                        }
                    }
                }
            }
        }
        for (pool, feature) in shrunk {
            self.shrink(now, &pool, &feature, RevocationReason::Shrunk);
        }
    }

    /// Brings held use of `feature` in `pool` back within its allocation (plus what is
    /// left of the key's overdraft) by revoking the newest leases first (the ones granted
    /// last have recorded least).
    pub(crate) fn shrink(
        &mut self,
        now: Timestamp,
        pool: &PoolId,
        feature: &str,
        reason: RevocationReason,
    ) {
        let allocation = self.allocation(pool, feature, now);
        let before = self.usage(pool, feature);
        if before.held <= allocation {
            return;
        }
        let total = allocation + self.overdraft_room(pool, feature, now);
        if before.held <= total {
            return;
        }
        self.events.push_with(|| Event::AllocationShrunk {
            pool: pool.clone(),
            feature: feature.to_string(),
            in_use: before.counted(),
            total,
        });
        while self.usage(pool, feature).held > total {
            let newest = self
                .servers
                .values()
                .filter(|s| s.pool == *pool)
                .flat_map(|s| s.held.iter())
                .filter_map(|c| {
                    let l = self.cameras.get(&pool.key, c)?.lease()?;
                    (l.features.get(feature).copied().unwrap_or(0) > 0)
                        .then(|| (l.granted_at, l.epoch, c.to_string()))
                })
                .max();
            let Some((_, _, camera)) = newest else { break };
            self.revoke_lease(now, &pool.key, &camera, reason);
        }
    }
}
