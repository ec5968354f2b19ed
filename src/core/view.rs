//! Read-only views of the core for listings (`status`, `pool list`, `server list`,
//! `camera list`), and `check_invariants`, which recomputes every count from scratch.

use super::{Core, PoolId, Timestamp, Usage};
use crate::key::{Feature, KeyKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Seat usage of one feature, the shape every listing uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatUsage {
    pub feature: Feature,
    /// Counted seats, `revoking` included.
    pub in_use: u64,
    pub revoking: u64,
    pub total: u64,
    pub free: u64,
    /// Seats in use beyond `total`: the key's overdraft (or, after a shrink, leases
    /// being revoked).
    pub overdraft: u64,
}

/// One entry (sales-order line) of a key, as `key list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub order: String,
    pub feature: Feature,
    pub count: u32,
    pub not_after: Timestamp,
    /// `valid`, `expiring` (within 30 days) or `expired`.
    pub state: String,
    /// Whole days left before `not_after` (0 once expired).
    pub days_left: u64,
}

/// A key's overdraft: seats over the allocation and hours over it in the last 30 days.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverdraftView {
    /// Extra seats the key allows, shared by its pools.
    pub seats: u32,
    /// Seats in use over the allocation now.
    pub in_use: u64,
    /// Hours over the allocation allowed per rolling 30 days.
    pub hours_allowed: u32,
    /// Minutes over the allocation in the last 30 days.
    pub minutes_used: u64,
    /// The allowance is spent: no overdraft is granted until hours free up.
    pub spent: bool,
    /// Since when the key is over its allocation.
    pub over_since: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub key_id: String,
    pub revision: u32,
    pub kind: KeyKind,
    pub customer: String,
    pub demo: bool,
    pub expires_at: Timestamp,
    pub heartbeat_interval_secs: u64,
    pub offline_grace_secs: u64,
    pub seats: Vec<SeatUsage>,
    pub issued_at: Timestamp,
    /// `active`, `refused` (not served: see `problem`) or `returning`.
    pub state: String,
    pub problem: Option<String>,
    /// How the key is bound to this host (`bound to this host`, `DEMO key: not
    /// host-bound`, or what changed).
    pub binding: String,
    pub entries: Vec<EntryView>,
    pub overdraft: OverdraftView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub pool: String,
    pub key_id: String,
    pub name: String,
    pub demo: bool,
    pub servers: u64,
    pub seats: Vec<SeatUsage>,
    /// The seats it holds of each entry (sales order line) of its key.
    pub entries: Vec<PoolEntry>,
}

/// Seats a pool holds of one entry of its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolEntry {
    pub order: String,
    pub feature: Feature,
    pub seats: u32,
    pub not_after: Timestamp,
    pub expired: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    pub server_id: String,
    pub name: String,
    pub pool: String,
    pub key_id: String,
    pub version: String,
    pub cameras: u64,
    pub revoking: u64,
    pub seats: Vec<SeatUsage>,
    pub enrolled_at: Timestamp,
    pub last_checkin: Timestamp,
    /// `live` (connected); `silent` (no connection, licensed by its offline grace);
    /// `reservation ending` (silent past its grace: it has stopped, and its seats come
    /// back at `reservation_end`); `kicked` (what it holds is being taken back).
    pub state: String,
    pub reservation_end: Option<Timestamp>,
    pub pending_revocations: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CameraView {
    pub camera_id: String,
    pub key_id: String,
    pub pool: String,
    pub server_id: String,
    pub server_name: String,
    /// `held` or `revoking`.
    pub state: String,
    pub epoch: u64,
    pub class: String,
    pub features: BTreeMap<Feature, u32>,
    pub legacy: bool,
    pub granted_at: Option<Timestamp>,
    pub last_renewal: Timestamp,
    pub newly_added_until: Option<Timestamp>,
    pub revoking_until: Option<Timestamp>,
    /// Held beyond its pool's allocation, on the key's overdraft (the newest leases of a
    /// pool over its allocation are the ones counted as overdraft).
    pub overdraft: bool,
    /// Moved at least the key's `contested_moves` times within its window: two servers
    /// may be fighting over it (`CameraContested`).
    pub contested: bool,
}

/// Enrolled servers, those with a live connection (and not kicked), and the cameras
/// they hold: the same figures `server_views` gives, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounts {
    pub servers: u64,
    pub live: u64,
    pub cameras: u64,
}

impl Core {
    fn seat_usage(&self, pool: &PoolId, now: Timestamp) -> Vec<SeatUsage> {
        let Some(k) = self.keys.get(&pool.key) else {
            return Vec::new();
        };
        let mut features = k.document.features();
        if let Some(p) = self.pools.get(pool) {
            for f in p.usage.keys() {
                if !features.contains(f) {
                    features.push(f.clone());
                }
            }
        }
        features
            .into_iter()
            .map(|feature| {
                let u = self.usage(pool, &feature);
                let total = self.allocation(pool, &feature, now);
                SeatUsage {
                    in_use: u.counted(),
                    revoking: u.revoking,
                    total,
                    free: total.saturating_sub(u.counted()),
                    overdraft: u.counted().saturating_sub(total),
                    feature,
                }
            })
            .collect()
    }

    pub fn key_views(&self, now: Timestamp) -> Vec<KeyView> {
        self.keys
            .values()
            .map(|k| {
                let d = &k.document;
                let mut seats: Vec<SeatUsage> = Vec::new();
                for p in self.pools.keys().filter(|p| p.key == d.key_id) {
                    for s in self.seat_usage(p, now) {
                        match seats.iter_mut().find(|x| x.feature == s.feature) {
                            Some(x) => {
                                x.in_use += s.in_use;
                                x.revoking += s.revoking;
                                x.total += s.total;
                                x.free += s.free;
                                x.overdraft += s.overdraft;
                            }
                            None => seats.push(s),
                        }
                    }
                }
                KeyView {
                    key_id: d.key_id.clone(),
                    revision: d.revision,
                    kind: d.kind,
                    customer: d.customer.clone(),
                    demo: k.demo,
                    expires_at: d.expires_at(),
                    heartbeat_interval_secs: d.policy.heartbeat_interval_secs,
                    offline_grace_secs: d.policy.offline_grace_secs,
                    seats,
                    issued_at: d.issued_at,
                    state: if k.returning {
                        "returning"
                    } else if k.refused.is_some() {
                        "refused"
                    } else {
                        "active"
                    }
                    .into(),
                    problem: k.inactive_reason(),
                    binding: k.binding.clone(),
                    entries: d
                        .entries
                        .iter()
                        .map(|e| EntryView {
                            order: e.order.clone(),
                            feature: e.feature.clone(),
                            count: e.count,
                            not_after: e.not_after,
                            state: if e.not_after <= now {
                                "expired"
                            } else if now >= e.not_after.minus(30 * super::time::DAY) {
                                "expiring"
                            } else {
                                "valid"
                            }
                            .into(),
                            days_left: e.not_after.since(now) / super::time::DAY,
                        })
                        .collect(),
                    overdraft: OverdraftView {
                        seats: d.policy.overdraft_seats,
                        in_use: self.key_excess(&d.key_id, now),
                        hours_allowed: d.policy.overdraft_hours,
                        minutes_used: k.overdraft.used_ms(now) / super::time::MINUTE,
                        spent: d.policy.overdraft_seats > 0 && self.overdraft_spent(&d.key_id, now),
                        over_since: k.overdraft.over_since,
                    },
                }
            })
            .collect()
    }

    pub fn pool_views(&self, now: Timestamp) -> Vec<PoolView> {
        self.pools
            .keys()
            .map(|p| PoolView {
                pool: p.to_string(),
                key_id: p.key.clone(),
                name: p.name.clone(),
                demo: self.keys.get(&p.key).is_some_and(|k| k.demo),
                servers: self.servers.values().filter(|s| s.pool == *p).count() as u64,
                seats: self.seat_usage(p, now),
                entries: self.pool_entries(p, now),
            })
            .collect()
    }

    /// What `status` counts, without a view of every lease: at a million leases
    /// `server_views` takes about a second, and the daemon does nothing else meanwhile.
    pub fn server_counts(&self) -> ServerCounts {
        let mut c = ServerCounts::default();
        for s in self.servers.values() {
            c.servers += 1;
            c.live += u64::from(!s.kicked && s.sessions > 0);
            c.cameras += s.held.len() as u64;
        }
        c
    }

    fn pool_entries(&self, pool: &PoolId, now: Timestamp) -> Vec<PoolEntry> {
        let (Some(p), Some(k)) = (self.pools.get(pool), self.keys.get(&pool.key)) else {
            return Vec::new();
        };
        p.seats
            .iter()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(i, n)| {
                let e = k.document.entries.get(*i)?;
                Some(PoolEntry {
                    order: e.order.clone(),
                    feature: e.feature.clone(),
                    seats: *n,
                    not_after: e.not_after,
                    expired: e.not_after <= now,
                })
            })
            .collect()
    }

    /// Whether a camera moved often enough lately to be `CameraContested`.
    fn contested(&self, key: &str, rec: &super::CameraRecord, now: Timestamp) -> bool {
        let Some(k) = self.keys.get(key) else {
            return false;
        };
        let policy = &k.document.policy;
        let window = policy.contested_window_ms();
        let recent = rec
            .moves()
            .iter()
            .filter(|t| now.since(**t) < window)
            .count() as u32;
        policy.contested_moves > 0 && recent >= policy.contested_moves
    }

    pub fn server_views(&self, now: Timestamp) -> Vec<ServerView> {
        self.servers
            .values()
            .map(|s| {
                let mut per: BTreeMap<Feature, u64> = BTreeMap::new();
                for c in &s.held {
                    if let Some(l) = self.cameras.get(&s.pool.key, c).and_then(|r| r.lease()) {
                        for (f, n) in &l.features {
                            *per.entry(f.clone()).or_insert(0) += u64::from(*n);
                        }
                    }
                }
                let busy = !s.held.is_empty() || !s.revoking.is_empty();
                let state = if s.kicked {
                    "kicked"
                } else if s.sessions > 0 {
                    "live"
                } else if busy && self.valid_for(now, &s.id) == 0 {
                    "reservation ending"
                } else {
                    "silent"
                };
                ServerView {
                    server_id: s.id.clone(),
                    name: s.name.clone(),
                    pool: s.pool.to_string(),
                    key_id: s.pool.key.clone(),
                    version: s.version.clone(),
                    cameras: s.held.len() as u64,
                    revoking: s.revoking.len() as u64,
                    seats: per
                        .into_iter()
                        .map(|(feature, n)| SeatUsage {
                            feature,
                            in_use: n,
                            revoking: 0,
                            total: n,
                            free: 0,
                            overdraft: 0,
                        })
                        .collect(),
                    enrolled_at: s.enrolled_at,
                    last_checkin: s.last_checkin,
                    state: state.into(),
                    reservation_end: (!s.held.is_empty())
                        .then(|| self.reservation_end(&s.id))
                        .flatten(),
                    pending_revocations: s.revocations.len() as u64,
                }
            })
            .collect()
    }

    pub fn camera_views(&self, now: Timestamp) -> Vec<CameraView> {
        let overdraft = self.overdraft_leases(now);
        let mut out = Vec::new();
        for ((key, camera), rec) in &self.cameras {
            let newly = self.is_newly_added(key, rec, now);
            let contested = self.contested(key, rec, now);
            if let Some(l) = rec.lease() {
                let s = self.servers.get(&l.server);
                out.push(CameraView {
                    camera_id: camera.to_string(),
                    key_id: key.clone(),
                    pool: l.pool.to_string(),
                    server_id: l.server.clone(),
                    server_name: s.map(|s| s.name.clone()).unwrap_or_default(),
                    state: "held".into(),
                    epoch: l.epoch,
                    class: l.class.clone(),
                    features: l.features.clone(),
                    legacy: l.legacy,
                    granted_at: Some(l.granted_at),
                    last_renewal: s.map(|s| s.renewed_at).unwrap_or_default(),
                    newly_added_until: newly,
                    revoking_until: None,
                    overdraft: overdraft.contains(&(key.clone(), camera.to_string())),
                    contested,
                });
            }
            for r in rec.revoking() {
                let s = self.servers.get(&r.server);
                out.push(CameraView {
                    camera_id: camera.to_string(),
                    key_id: key.clone(),
                    pool: r.pool.to_string(),
                    server_id: r.server.clone(),
                    server_name: s.map(|s| s.name.clone()).unwrap_or_default(),
                    state: "revoking".into(),
                    epoch: r.epoch,
                    class: String::new(),
                    features: r.features.clone(),
                    legacy: false,
                    granted_at: None,
                    last_renewal: s.map(|s| s.renewed_at).unwrap_or_default(),
                    newly_added_until: newly,
                    revoking_until: Some(r.until),
                    overdraft: false,
                    contested,
                });
            }
        }
        out
    }

    /// Held leases counted as overdraft: in each pool and feature over its allocation,
    /// the newest leases that make up the excess.
    fn overdraft_leases(&self, now: Timestamp) -> std::collections::BTreeSet<(String, String)> {
        let mut out = std::collections::BTreeSet::new();
        for p in self.pools.values() {
            for (feature, u) in &p.usage {
                let mut excess = u
                    .counted()
                    .saturating_sub(self.allocation(&p.id, feature, now));
                if excess == 0 {
                    continue;
                }
                let mut leases: Vec<(Timestamp, u64, String, u64)> = self
                    .cameras
                    .iter()
                    .filter(|((k, _), _)| **k == p.id.key)
                    .filter_map(|((_, c), r)| {
                        let l = r.lease()?;
                        let n = u64::from(l.features.get(feature).copied().unwrap_or(0));
                        (l.pool == p.id && n > 0).then(|| (l.granted_at, l.epoch, c.to_string(), n))
                    })
                    .collect();
                leases.sort();
                while excess > 0 {
                    let Some((_, _, camera, n)) = leases.pop() else {
                        break;
                    };
                    out.insert((p.id.key.clone(), camera));
                    excess = excess.saturating_sub(n);
                }
            }
        }
        out
    }

    /// Recomputes every count and cross-reference from scratch and compares. Used by the
    /// tests after every step; cheap enough for a debug endpoint.
    pub fn check_invariants(&self, now: Timestamp) -> Result<(), String> {
        let mut usage: BTreeMap<(PoolId, Feature), Usage> = BTreeMap::new();
        for ((key, camera), rec) in &self.cameras {
            if let Some(l) = rec.lease() {
                let s = self.servers.get(&l.server).ok_or(format!(
                    "{key}/{camera} held by unknown server {}",
                    l.server
                ))?;
                if s.pool != l.pool || l.pool.key != *key {
                    return Err(format!(
                        "invariant 3: {key}/{camera} leased in {} by a server of pool {}",
                        l.pool, s.pool
                    ));
                }
                if !s.held.contains(camera) {
                    return Err(format!(
                        "{key}/{camera}: holder {} does not list it",
                        l.server
                    ));
                }
                // A held lease is at the camera's epoch by construction: the record
                // stores the epoch once for both.
                for (f, n) in &l.features {
                    usage.entry((l.pool.clone(), f.clone())).or_default().held += u64::from(*n);
                }
            }
            for r in rec.revoking() {
                if r.until <= now {
                    return Err(format!(
                        "invariant 5: {key}/{camera} revoking past {}",
                        r.until
                    ));
                }
                if rec
                    .lease()
                    .is_some_and(|l| l.server == r.server && l.epoch == r.epoch)
                {
                    return Err(format!("{key}/{camera}: same lease held and revoking"));
                }
                let s = self
                    .servers
                    .get(&r.server)
                    .ok_or(format!("revoking by unknown server {}", r.server))?;
                if !s.revoking.contains(&(camera.to_string(), r.epoch)) {
                    return Err(format!(
                        "{key}/{camera}: revoking not listed by {}",
                        r.server
                    ));
                }
                for (f, n) in &r.features {
                    usage
                        .entry((r.pool.clone(), f.clone()))
                        .or_default()
                        .revoking += u64::from(*n);
                }
            }
        }
        for (id, s) in &self.servers {
            for c in &s.held {
                let l = self
                    .cameras
                    .get(&s.pool.key, c)
                    .and_then(|r| r.lease())
                    .ok_or(format!(
                        "invariant 2: server {id} lists {c} without a lease"
                    ))?;
                if l.server != *id {
                    return Err(format!(
                        "invariant 2: {c} listed by {id} but held by {}",
                        l.server
                    ));
                }
            }
            if !s.held.is_empty() {
                let end = self.reservation_end(id).unwrap_or(Timestamp::ZERO);
                if end <= now {
                    return Err(format!(
                        "invariant 5: server {id} holds seats past its reservation {end}"
                    ));
                }
            }
        }
        for p in self.pools.values() {
            for (f, u) in &p.usage {
                let want = usage.remove(&(p.id.clone(), f.clone())).unwrap_or_default();
                if *u != want {
                    return Err(format!(
                        "pool {} {f}: counters {u:?}, recomputed {want:?}",
                        p.id
                    ));
                }
            }
        }
        if let Some(((p, f), u)) = usage.into_iter().find(|(_, u)| u.counted() > 0) {
            return Err(format!("pool {p} {f}: {u:?} in use but not counted"));
        }
        Ok(())
    }

    /// Servers enrolled, for callers that iterate (the daemon's status line).
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }
    pub fn has_key(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }
    pub fn key_document(&self, key: &str) -> Option<&crate::key::KeyDocument> {
        self.keys.get(key).map(|k| &k.document)
    }
    pub fn installed_key(&self, key: &str) -> Option<&super::InstalledKey> {
        self.keys.get(key)
    }
    pub fn installed_keys(&self) -> impl Iterator<Item = &super::InstalledKey> {
        self.keys.values()
    }
    pub fn server_pool(&self, server: &str) -> Option<&PoolId> {
        self.servers.get(server).map(|s| &s.pool)
    }
    pub fn server_revocations(&self, server: &str) -> Vec<super::Revocation> {
        self.servers
            .get(server)
            .map(|s| s.revocations.values().cloned().collect())
            .unwrap_or_default()
    }
    /// The server holding `camera` of `key`, if any (`revoking` leases are not held).
    pub fn holder(&self, key: &str, camera: &str) -> Option<&str> {
        self.cameras
            .get(key, camera)
            .and_then(|r| r.terms())
            .map(|t| t.server.as_str())
    }

    /// Whether `server` still has a `revoking` lease on `camera` at `epoch`.
    pub fn is_revoking(&self, server: &str, camera: &str, epoch: u64) -> bool {
        self.servers
            .get(server)
            .is_some_and(|s| s.revoking.contains(&(camera.to_string(), epoch)))
    }

    /// Whether `server` has an open authenticated connection.
    pub fn is_live(&self, server: &str) -> bool {
        self.servers.get(server).is_some_and(|s| s.sessions > 0)
    }

    /// Whether `server` holds `camera` of its key at `epoch`.
    pub fn holds(&self, server: &str, camera: &str, epoch: u64) -> bool {
        let Some(s) = self.servers.get(server) else {
            return false;
        };
        self.cameras
            .get(&s.pool.key, camera)
            .and_then(|r| r.lease())
            .is_some_and(|l| l.server == server && l.epoch == epoch)
    }
}
