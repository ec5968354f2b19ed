//! Pools as an administrator shapes them (seeds 000 and 001): create a pool with unused
//! seats taken from its key's `Default` pool, move unused seats between two pools of one
//! key, delete a pool (its seats go back to `Default`). Seats are held per entry (sales
//! order); without `@ORDER` they come from the entries that expire last.
//!
//! Only unused seats move, so no move ever shrinks an allocation below its use: invariant
//! 1 holds without revoking anything, and a refusal names the numbers that stopped it.

use super::{Core, Event, Pool, PoolId, Refusal, Timestamp, DEFAULT_POOL};
use crate::key::Feature;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const MAX_POOL_NAME: usize = 64;

/// `FEATURE=N[@ORDER]`: N seats of a feature, from one sales order's entries if named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatRequest {
    pub feature: Feature,
    pub count: u32,
    /// Missing in JSON means none. (Never skipped when serialising: the command log is
    /// postcard, which has no field names to tell a skipped field by.)
    #[serde(default)]
    pub order: Option<String>,
}

impl SeatRequest {
    /// Parses `camera=4` or `camera=4@SO-1001`.
    pub fn parse(s: &str) -> Result<SeatRequest, String> {
        let (feature, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not FEATURE=N or FEATURE=N@ORDER"))?;
        let (count, order) = match rest.split_once('@') {
            Some((n, o)) => (n, Some(o.trim().to_string())),
            None => (rest, None),
        };
        let feature = feature.trim();
        if feature.is_empty() || order.as_deref() == Some("") {
            return Err(format!("{s:?} is not FEATURE=N or FEATURE=N@ORDER"));
        }
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: the seat count must be a whole number"))?;
        Ok(SeatRequest {
            feature: feature.to_string(),
            count,
            order,
        })
    }
}

impl std::fmt::Display for SeatRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.feature, self.count)?;
        if let Some(o) = &self.order {
            write!(f, "@{o}")?;
        }
        Ok(())
    }
}

/// Seats that moved from one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatsMoved {
    pub feature: Feature,
    pub order: String,
    pub count: u32,
    pub not_after: Timestamp,
}

/// What a pool command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolChange {
    pub from: PoolId,
    pub to: PoolId,
    pub moved: Vec<SeatsMoved>,
}

impl Core {
    /// Creates `pool` holding `seats` taken from its key's `Default` pool, in one step:
    /// if any seat cannot be had, no pool is made.
    pub fn create_pool(
        &mut self,
        now: Timestamp,
        pool: &PoolId,
        seats: &[SeatRequest],
    ) -> Result<PoolChange, Refusal> {
        self.advance(now);
        self.key_of(pool)?;
        validate_name(&pool.name)?;
        if self.pools.contains_key(pool) {
            return Err(Refusal::BadRequest {
                reason: format!("pool {pool} exists already"),
            });
        }
        let from = PoolId::default_of(&pool.key);
        let plan = self.plan_move(now, &from, seats)?;
        self.pools.insert(
            pool.clone(),
            Pool {
                id: pool.clone(),
                seats: BTreeMap::new(),
                usage: BTreeMap::new(),
            },
        );
        self.events
            .push_with(|| Event::PoolCreated { pool: pool.clone() });
        Ok(self.carry_out(&from, pool, plan))
    }

    /// Moves unused seats from one pool to another of the same key.
    pub fn move_seats(
        &mut self,
        now: Timestamp,
        from: &PoolId,
        to: &PoolId,
        seats: &[SeatRequest],
    ) -> Result<PoolChange, Refusal> {
        self.advance(now);
        for p in [from, to] {
            if !self.pools.contains_key(p) {
                return Err(Refusal::UnknownPool {
                    pool: p.to_string(),
                });
            }
        }
        if from.key != to.key {
            return Err(Refusal::BadRequest {
                reason: format!(
                    "pools {from} and {to} belong to different keys; seats stay with their key"
                ),
            });
        }
        if from == to {
            return Err(Refusal::BadRequest {
                reason: format!("pool {from} is both source and target"),
            });
        }
        let plan = self.plan_move(now, from, seats)?;
        Ok(self.carry_out(from, to, plan))
    }

    /// Deletes a pool that no server is enrolled in and no seat is counted in: its seats
    /// go back to `Default`. Enrolment codes for it become invalid.
    pub fn delete_pool(&mut self, now: Timestamp, pool: &PoolId) -> Result<PoolChange, Refusal> {
        self.advance(now);
        if !self.pools.contains_key(pool) {
            return Err(Refusal::UnknownPool {
                pool: pool.to_string(),
            });
        }
        if pool.name == DEFAULT_POOL {
            return Err(Refusal::BadRequest {
                reason: format!(
                    "{pool} holds every seat not moved elsewhere; it cannot be deleted"
                ),
            });
        }
        let servers = self.servers.values().filter(|s| s.pool == *pool).count() as u64;
        // A server that moved out may still have a `revoking` lease counted here; it ends
        // by itself (acknowledged, or the reservation ends), and until then the pool's
        // seats are what keeps it within an allocation.
        let revoking: u64 = self
            .pools
            .get(pool)
            .map(|p| p.usage.values().map(|u| u.revoking).sum())
            .unwrap_or(0);
        if servers > 0 || revoking > 0 {
            return Err(Refusal::PoolInUse {
                pool: pool.to_string(),
                servers,
                revoking,
            });
        }
        let to = PoolId::default_of(&pool.key);
        let Some(gone) = self.pools.remove(pool) else {
            return Err(Refusal::UnknownPool {
                pool: pool.to_string(),
            });
        };
        let entries = self
            .keys
            .get(&pool.key)
            .map(|k| k.document.entries.clone())
            .unwrap_or_default();
        let mut moved = Vec::new();
        if let Some(default) = self.pools.get_mut(&to) {
            for (i, n) in &gone.seats {
                if *n == 0 {
                    continue;
                }
                *default.seats.entry(*i).or_insert(0) += n;
                if let Some(e) = entries.get(*i) {
                    moved.push(SeatsMoved {
                        feature: e.feature.clone(),
                        order: e.order.clone(),
                        count: *n,
                        not_after: e.not_after,
                    });
                }
            }
        }
        self.codes.retain(|_, c| c.pool != *pool);
        for m in &moved {
            self.events.push_with(|| Event::SeatsMoved {
                from: pool.clone(),
                to: to.clone(),
                feature: m.feature.clone(),
                order: m.order.clone(),
                count: m.count,
            });
        }
        self.events
            .push_with(|| Event::PoolDeleted { pool: pool.clone() });
        Ok(PoolChange {
            from: pool.clone(),
            to,
            moved,
        })
    }

    /// Which entries of `from` give each request, or why they cannot: per feature, the
    /// seats taken must leave `from` with at least what it has in use.
    fn plan_move(
        &self,
        now: Timestamp,
        from: &PoolId,
        seats: &[SeatRequest],
    ) -> Result<BTreeMap<usize, u32>, Refusal> {
        let key = self.key_of(from)?;
        let entries = &key.document.entries;
        let pool = self.pools.get(from).ok_or(Refusal::UnknownPool {
            pool: from.to_string(),
        })?;
        let mut plan: BTreeMap<usize, u32> = BTreeMap::new();
        let mut per_feature: BTreeMap<&str, u64> = BTreeMap::new();
        for req in seats {
            if req.count == 0 {
                continue;
            }
            if !entries.iter().any(|e| e.feature == req.feature) {
                return Err(Refusal::BadRequest {
                    reason: format!("key {} has no feature {:?}", from.key, req.feature),
                });
            }
            if let Some(order) = &req.order {
                if !entries
                    .iter()
                    .any(|e| e.feature == req.feature && e.order == *order)
                {
                    return Err(Refusal::BadRequest {
                        reason: format!(
                            "key {} has no {} entry of sales order {order:?}",
                            from.key, req.feature
                        ),
                    });
                }
            }
            // Unexpired entries of this feature (and order), the one expiring last first.
            let mut candidates: Vec<usize> = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.feature == req.feature
                        && now < e.not_after
                        && req.order.as_ref().is_none_or(|o| e.order == *o)
                })
                .map(|(i, _)| i)
                .collect();
            candidates.sort_by_key(|i| std::cmp::Reverse((entries[*i].not_after, *i)));
            let mut left = req.count;
            for i in candidates {
                let have = pool.seats.get(&i).copied().unwrap_or(0);
                let taken = plan.get(&i).copied().unwrap_or(0);
                let take = left.min(have.saturating_sub(taken));
                if take > 0 {
                    *plan.entry(i).or_insert(0) += take;
                    left -= take;
                }
                if left == 0 {
                    break;
                }
            }
            if left > 0 {
                let available = req.count - left;
                return Err(Refusal::BadRequest {
                    reason: match &req.order {
                        Some(o) => format!(
                            "pool {from} holds {available} unexpired {} seats of sales order {o}; {} asked",
                            req.feature, req.count
                        ),
                        None => format!(
                            "pool {from} holds {available} unexpired {} seats; {} asked",
                            req.feature, req.count
                        ),
                    },
                });
            }
            *per_feature.entry(req.feature.as_str()).or_insert(0) += u64::from(req.count);
        }
        for (feature, asked) in per_feature {
            let in_use = self.usage(from, feature).counted();
            let total = self.allocation(from, feature, now);
            let unused = total.saturating_sub(in_use);
            if asked > unused {
                return Err(Refusal::SeatsInUse {
                    pool: from.to_string(),
                    feature: feature.to_string(),
                    asked,
                    in_use,
                    total,
                });
            }
        }
        Ok(plan)
    }

    fn carry_out(&mut self, from: &PoolId, to: &PoolId, plan: BTreeMap<usize, u32>) -> PoolChange {
        let entries = self
            .keys
            .get(&from.key)
            .map(|k| k.document.entries.clone())
            .unwrap_or_default();
        let mut moved = Vec::new();
        for (i, n) in plan {
            if let Some(p) = self.pools.get_mut(from) {
                if let Some(have) = p.seats.get_mut(&i) {
                    *have -= n;
                }
            }
            if let Some(p) = self.pools.get_mut(to) {
                *p.seats.entry(i).or_insert(0) += n;
            }
            if let Some(e) = entries.get(i) {
                self.events.push_with(|| Event::SeatsMoved {
                    from: from.clone(),
                    to: to.clone(),
                    feature: e.feature.clone(),
                    order: e.order.clone(),
                    count: n,
                });
                moved.push(SeatsMoved {
                    feature: e.feature.clone(),
                    order: e.order.clone(),
                    count: n,
                    not_after: e.not_after,
                });
            }
        }
        PoolChange {
            from: from.clone(),
            to: to.clone(),
            moved,
        }
    }
}

fn validate_name(name: &str) -> Result<(), Refusal> {
    let ok = !name.trim().is_empty()
        && name.trim() == name
        && name.len() <= MAX_POOL_NAME
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Refusal::BadRequest {
            reason: format!(
                "a pool name is 1-{MAX_POOL_NAME} characters, without '/' or surrounding spaces"
            ),
        })
    }
}
