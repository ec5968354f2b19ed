//! The overdraft (seed 004, Pexip): a key may go over its allocation by up to
//! `overdraft_seats` seats, shared by all its pools and features, for at most
//! `overdraft_hours` hours of wall-clock time over the allocation in any 30 days. When
//! that allowance is spent, leases beyond the allocation are revoked newest first (as for
//! any shrink) and nothing more is granted over it until the window frees hours again.
//!
//! Also kept here, since it watches the same numbers: each key's peak use per feature per
//! UTC day, for usage reports.

use super::time::{DAY, HOUR, MINUTE};
use super::{Core, Event, PoolId, RevocationReason, Timestamp};
use crate::key::Feature;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The rolling window of the allowance.
pub const WINDOW_MS: u64 = 30 * DAY;
/// Days of history kept for usage reports.
pub const KEEP_DAYS: u64 = 400;
/// Closed periods kept at most; beyond, the oldest two are merged (counting the gap
/// between them as over, which can only spend the allowance sooner).
const MAX_PERIODS: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverdraftState {
    /// Since when the key has been over its allocation; `None`: within it.
    pub over_since: Option<Timestamp>,
    /// Closed periods over the allocation that end within the window.
    pub periods: Vec<(Timestamp, Timestamp)>,
    /// Milliseconds over the allocation per UTC day (days since 1970-01-01), closed
    /// periods only, for usage reports.
    pub per_day: BTreeMap<u64, u64>,
    /// When the allowance was found spent (the event is given once per spell).
    pub spent_at: Option<Timestamp>,
}

fn overlap(a: Timestamp, b: Timestamp, from: Timestamp, to: Timestamp) -> u64 {
    b.min(to).since(a.max(from))
}

impl OverdraftState {
    /// Milliseconds over the allocation within the 30 days before `now`.
    pub fn used_ms(&self, now: Timestamp) -> u64 {
        let from = now.minus(WINDOW_MS);
        let closed: u64 = self
            .periods
            .iter()
            .map(|(a, b)| overlap(*a, *b, from, now))
            .sum();
        closed + self.over_since.map_or(0, |s| overlap(s, now, from, now))
    }

    /// Milliseconds over the allocation on UTC day `day`, the open period included.
    pub fn day_ms(&self, day: u64, now: Timestamp) -> u64 {
        let open = self.over_since.map_or(0, |s| {
            overlap(s, now, Timestamp(day * DAY), Timestamp((day + 1) * DAY))
        });
        self.per_day.get(&day).copied().unwrap_or(0) + open
    }

    fn close(&mut self, start: Timestamp, end: Timestamp) {
        self.periods.push((start, end));
        let mut t = start;
        while t < end {
            let day = t.millis() / DAY;
            let day_end = Timestamp((day + 1) * DAY).min(end);
            *self.per_day.entry(day).or_insert(0) += day_end.since(t);
            t = day_end;
        }
        if self.periods.len() > MAX_PERIODS {
            let (a, _) = self.periods.remove(0);
            self.periods[0].0 = a;
        }
    }

    fn prune(&mut self, now: Timestamp) {
        let from = now.minus(WINDOW_MS);
        self.periods.retain(|(_, b)| *b > from);
        let first_day = (now.millis() / DAY).saturating_sub(KEEP_DAYS);
        self.per_day.retain(|d, _| *d >= first_day);
    }
}

impl Core {
    /// Seats over the allocation across the key's pools and features, `revoking` included.
    pub fn key_excess(&self, key: &str, now: Timestamp) -> u64 {
        self.pools
            .values()
            .filter(|p| p.id.key == key)
            .flat_map(|p| {
                p.usage
                    .iter()
                    .map(|(f, u)| u.counted().saturating_sub(self.allocation(&p.id, f, now)))
            })
            .sum()
    }

    /// Whether the key's overdraft allowance is spent at `now` (always, for a key with
    /// no hours).
    pub fn overdraft_spent(&self, key: &str, now: Timestamp) -> bool {
        self.keys.get(key).is_some_and(|k| {
            k.overdraft.used_ms(now)
                >= u64::from(k.document.policy.overdraft_hours).saturating_mul(HOUR)
        })
    }

    /// Seats `pool`'s `feature` may hold beyond its allocation: what is left of the key's
    /// overdraft once the other pools' and features' excess is counted; none once the
    /// allowance is spent.
    pub(crate) fn overdraft_room(&self, pool: &PoolId, feature: &str, now: Timestamp) -> u64 {
        let Some(k) = self.keys.get(&pool.key) else {
            return 0;
        };
        let seats = u64::from(k.document.policy.overdraft_seats);
        if seats == 0 || self.overdraft_spent(&pool.key, now) {
            return 0;
        }
        let own = self
            .usage(pool, feature)
            .counted()
            .saturating_sub(self.allocation(pool, feature, now));
        seats.saturating_sub(self.key_excess(&pool.key, now) - own)
    }

    /// The next instant at which a key over its allocation spends its allowance.
    pub(crate) fn overdraft_deadline(&self, now: Timestamp) -> Timestamp {
        self.keys
            .values()
            .filter(|k| k.overdraft.over_since.is_some() && k.overdraft.spent_at.is_none())
            .map(|k| {
                let allowance = u64::from(k.document.policy.overdraft_hours).saturating_mul(HOUR);
                now.plus(allowance.saturating_sub(k.overdraft.used_ms(now)))
            })
            .min()
            .unwrap_or(Timestamp::NEVER)
    }

    /// Brings every key's overdraft record and daily peaks up to date after a change.
    /// Called at the end of every operation that changes use or allocation, and when
    /// time passes.
    pub(crate) fn settle(&mut self, now: Timestamp) {
        let ids: Vec<String> = self.keys.keys().cloned().collect();
        for key in ids {
            self.settle_key(&key, now);
        }
        // A key that just went over its allocation spends its allowance from now on.
        self.next_due = self.next_due.min(self.overdraft_deadline(now));
    }

    fn settle_key(&mut self, key: &str, now: Timestamp) {
        // Read before the key is borrowed to change it, and only for a key that may
        // overdraw: this runs after every command, and the excess walks every pool and
        // feature of the key (skipping it took `settle` from 476 to 339 million
        // instructions of a restart replaying camera moves, in callgrind).
        let overdraft = self
            .keys
            .get(key)
            .is_some_and(|k| k.document.policy.overdraft_seats > 0)
            .then(|| (self.key_excess(key, now), self.overdraft_spent(key, now)));
        let Some(k) = self.keys.get_mut(key) else {
            return;
        };
        // Seats in use per feature over the key's pools, with the names borrowed: this
        // runs after every checkout, and a key has a handful of features.
        let mut per_feature: Vec<(&str, u64)> = Vec::new();
        for p in self.pools.values().filter(|p| p.id.key == key) {
            for (f, u) in &p.usage {
                match per_feature.iter_mut().find(|(g, _)| *g == f.as_str()) {
                    Some((_, n)) => *n += u.counted(),
                    None => per_feature.push((f, u.counted())),
                }
            }
        }
        let day = now.millis() / DAY;
        if !per_feature.is_empty() {
            let peaks = k.peaks.entry(day).or_default();
            for (f, n) in per_feature {
                match peaks.get_mut(f) {
                    Some(peak) => *peak = (*peak).max(n),
                    None => {
                        peaks.insert(f.to_string(), n);
                    }
                }
            }
        }
        let first_day = day.saturating_sub(KEEP_DAYS);
        while k
            .peaks
            .first_key_value()
            .is_some_and(|(d, _)| *d < first_day)
        {
            k.peaks.pop_first();
        }
        let Some((excess, spent)) = overdraft else {
            return;
        };
        let hours = k.document.policy.overdraft_hours;
        let od = &mut k.overdraft;
        match (excess > 0, od.over_since) {
            (true, None) => {
                od.over_since = Some(now);
                self.events.push_with(|| Event::OverdraftStarted {
                    key: key.to_string(),
                    seats: excess,
                });
            }
            (false, Some(since)) => {
                od.over_since = None;
                od.close(since, now);
                self.events.push_with(|| Event::OverdraftEnded {
                    key: key.to_string(),
                    minutes: now.since(since) / MINUTE,
                });
            }
            _ => {}
        }
        od.prune(now);
        match (spent, od.spent_at) {
            (true, None) => {
                od.spent_at = Some(now);
                self.events.push_with(|| Event::OverdraftSpent {
                    key: key.to_string(),
                    hours,
                });
            }
            (false, Some(_)) => od.spent_at = None,
            _ => {}
        }
        if spent && excess > 0 {
            // The allowance is spent: the allocation shrinks back to what the key grants.
            let over: Vec<(PoolId, Feature)> = self
                .pools
                .values()
                .filter(|p| p.id.key == key)
                .flat_map(|p| {
                    p.usage
                        .iter()
                        .filter(|(f, u)| u.held > self.allocation(&p.id, f, now))
                        .map(|(f, _)| (p.id.clone(), f.clone()))
                })
                .collect();
            for (pool, feature) in over {
                self.shrink(now, &pool, &feature, RevocationReason::Shrunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_only_the_last_30_days() {
        let t0 = Timestamp(100 * DAY);
        let mut od = OverdraftState::default();
        od.close(t0, t0.plus(2 * HOUR));
        od.close(t0.plus(DAY), t0.plus(DAY + HOUR));
        assert_eq!(od.used_ms(t0.plus(2 * DAY)), 3 * HOUR);
        // 30 days after the first period's end only the second one counts.
        assert_eq!(od.used_ms(t0.plus(30 * DAY + 2 * HOUR)), HOUR);
        od.over_since = Some(t0.plus(40 * DAY));
        assert_eq!(od.used_ms(t0.plus(40 * DAY + 30 * MINUTE)), 30 * MINUTE);
        od.prune(t0.plus(40 * DAY));
        assert!(od.periods.is_empty());
        assert_eq!(od.per_day.get(&100), Some(&(2 * HOUR)));
    }

    #[test]
    fn a_period_over_midnight_is_split_between_days() {
        let mut od = OverdraftState::default();
        let midnight = Timestamp(200 * DAY);
        od.close(midnight.minus(HOUR), midnight.plus(3 * HOUR));
        assert_eq!(od.day_ms(199, midnight.plus(DAY)), HOUR);
        assert_eq!(od.day_ms(200, midnight.plus(DAY)), 3 * HOUR);
    }
}
