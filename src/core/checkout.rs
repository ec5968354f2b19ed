//! What a video server asks of the core: checkout (grant, renew, move), release,
//! heartbeat, sync and acknowledgement of revocations.

use super::{
    digest, AsTermsRef, CameraId, Core, Event, Features, Lease, PoolId, Refusal, ReleaseReason,
    Revocation, RevocationReason, TermsRef, Timestamp,
};
use crate::key::{DeviceVersion, Feature, KeyId, Policy};
use serde::{Deserialize, Serialize};

const MAX_CAMERA_ID: usize = 128;

/// One result per released camera.
pub type ReleaseOutcomes = Vec<(CameraId, Result<(), Refusal>)>;

/// One camera of a checkout batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutItem {
    pub camera: CameraId,
    /// The licence class (`None`: one `camera`).
    pub class: Option<String>,
    pub modules: Vec<Feature>,
    pub device_version: Option<String>,
    /// The epoch the client holds for this camera, if it held it before.
    pub epoch: Option<u64>,
}

impl CheckoutItem {
    pub fn camera(camera: &str) -> Self {
        CheckoutItem {
            camera: camera.to_string(),
            class: None,
            modules: Vec::new(),
            device_version: None,
            epoch: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CameraOutcome {
    Granted {
        epoch: u64,
        features: Features,
        legacy: bool,
        renewed: bool,
    },
    Refused(Refusal),
    /// Held by another server with a live connection, which has been asked to release it.
    /// The daemon waits briefly for its acknowledgement, then asks again with
    /// `after_wait` (never returned then).
    AwaitingHolder {
        holder: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutAnswer {
    pub outcomes: Vec<(CameraId, CameraOutcome)>,
    pub valid_for_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// The last persisted renewal + offline grace - now. Covers every held camera not
    /// listed in `revocations`.
    pub valid_for_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// The client's digest differs from the daemon's view: send a full sync.
    pub sync_needed: bool,
    pub revocations: Vec<Revocation>,
    /// Entries of the server's key that expire within 30 days.
    pub expiring: Vec<ExpiryWarning>,
}

/// An entry of the key nearing its not-after instant (warned 30, 7 and 1 days ahead): its
/// seats go then, and cameras beyond what is left are revoked, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryWarning {
    pub order: String,
    pub feature: Feature,
    pub count: u32,
    pub not_after: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncAnswer {
    /// Claimed cameras the server does not hold (at that epoch): stop recording them.
    pub not_held: Vec<CameraId>,
    /// Leases released because the sync no longer claimed them.
    pub released: Vec<CameraId>,
    pub valid_for_ms: u64,
    pub revocations: Vec<Revocation>,
}

/// What one device costs under a key's policy, or why it may not be licensed.
pub(crate) fn cost(policy: &Policy, item: &CheckoutItem) -> Result<(Features, bool), Refusal> {
    let class = item.class.as_deref().unwrap_or("camera");
    let mut features: Features = match policy.classes.get(class) {
        Some(costs) => costs.clone(),
        None if class == "camera" => [("camera".to_string(), 1)].into_iter().collect(),
        None => {
            return Err(Refusal::UnknownClass {
                class: class.to_string(),
            })
        }
    };
    let mut legacy = false;
    if let Some(v) = &item.device_version {
        let v = DeviceVersion::parse(v).map_err(|reason| Refusal::BadRequest { reason })?;
        if let Some(min) = &policy.min_device_version {
            if DeviceVersion::parse(min).is_ok_and(|m| v < m) {
                return Err(Refusal::VersionRefused { min: min.clone() });
            }
        }
        if let Some(current) = &policy.current_device_version {
            if DeviceVersion::parse(current).is_ok_and(|c| v < c) {
                if !policy.legacy_entitlement {
                    return Err(Refusal::LegacyNotEntitled);
                }
                legacy = true;
                features.clear();
            }
        }
    }
    for m in &item.modules {
        if m.is_empty() || m.len() > 64 {
            return Err(Refusal::BadRequest {
                reason: "module names are 1-64 characters".into(),
            });
        }
        *features.entry(m.clone()).or_insert(0) += 1;
    }
    features.retain(|_, n| *n > 0);
    Ok((features, legacy))
}

impl Core {
    /// Checks out a batch: one outcome per camera, each all-or-nothing across features.
    ///
    /// `key` is the key the client believes it is bound to; `after_wait` is set when the
    /// daemon asks again after waiting for live holders to acknowledge.
    pub fn checkout(
        &mut self,
        now: Timestamp,
        server: &str,
        key: Option<&str>,
        items: &[CheckoutItem],
        after_wait: bool,
    ) -> Result<CheckoutAnswer, Refusal> {
        self.advance(now);
        // One lookup of the server for what is read here and for `check_in`.
        let s = self.servers.get_mut(server).ok_or(Refusal::NotEnrolled)?;
        if let Some(k) = key {
            if k != s.pool.key {
                return Err(Refusal::BoundToOtherKey {
                    key: s.pool.key.clone(),
                });
            }
        }
        let pool = s.pool.clone();
        let kicked = s.kicked;
        s.check_in(now);
        self.note_unpersisted(server);
        let mut outcomes = Vec::with_capacity(items.len());
        let mut changed = false;
        for item in items {
            let outcome = if kicked {
                CameraOutcome::Refused(Refusal::ServerKicked)
            } else {
                self.checkout_one(now, server, &pool, item, after_wait)
            };
            changed |= matches!(outcome, CameraOutcome::Granted { renewed: false, .. });
            outcomes.push((item.camera.clone(), outcome));
        }
        if changed {
            self.check_in_durable(now, server);
        }
        self.settle(now);
        Ok(CheckoutAnswer {
            outcomes,
            valid_for_ms: self.checkout_valid_for(now, server),
        })
    }

    /// `valid_for` for a checkout answer. Unlike a heartbeat's, it carries no revocations,
    /// so a client that has not heard of one would keep recording that camera until its
    /// new deadline: the deadline must not outlast the seat still counted for the server's
    /// `revoking` leases (invariants 2 and 6). The next heartbeat tells it and restores
    /// the full span.
    fn checkout_valid_for(&self, now: Timestamp, server: &str) -> u64 {
        let Some(s) = self.servers.get(server) else {
            return 0;
        };
        let valid = self.valid_for_server(now, s);
        s.revoking
            .iter()
            .filter_map(|(camera, epoch)| {
                let rec = self.cameras.get(&s.pool.key, camera)?;
                let r = rec
                    .revoking()
                    .iter()
                    .find(|r| r.server == server && r.epoch == *epoch)?;
                Some(r.until.since(now))
            })
            .fold(valid, u64::min)
    }

    fn checkout_one(
        &mut self,
        now: Timestamp,
        server: &str,
        pool: &PoolId,
        item: &CheckoutItem,
        after_wait: bool,
    ) -> CameraOutcome {
        use CameraOutcome::*;
        // No control characters: ids appear in logs and listings, and a 0x00 byte would
        // make the holdings digest ambiguous.
        if item.camera.is_empty()
            || item.camera.len() > MAX_CAMERA_ID
            || item.camera.chars().any(char::is_control)
        {
            return Refused(Refusal::BadRequest {
                reason: "a camera id is 1-128 bytes without control characters".into(),
            });
        }
        // A stale epoch is answered Moved before anything else about the item: it is what
        // tells the client to stop recording the camera.
        let ck = (pool.key.clone(), item.camera.clone());
        let record = self.cameras.get(&ck.0, &ck.1).cloned().unwrap_or_default();
        if let Some(e) = item.epoch {
            if e < record.epoch {
                return Refused(Refusal::Moved {
                    epoch: record.epoch,
                });
            }
        }
        let Some(key) = self.keys.get(&pool.key) else {
            return Refused(Refusal::UnknownKey {
                key: pool.key.clone(),
            });
        };
        if let Some(reason) = key.inactive_reason() {
            return Refused(Refusal::KeyInactive {
                key: pool.key.clone(),
                reason,
            });
        }
        if key.document.expires_at() <= now {
            return Refused(Refusal::KeyExpired {
                key: pool.key.clone(),
            });
        }
        let (features, legacy) = match cost(&key.document.policy, item) {
            Ok(c) => c,
            Err(r) => return Refused(r),
        };
        // While the wall clock is behind its high-water mark only renewals go on.
        if let Some(mark) = self.clock_rollback {
            let renewal = record
                .lease()
                .is_some_and(|l| l.server == server && l.features == features);
            if !renewal {
                return Refused(Refusal::ClockRollback { mark });
            }
        }
        match record.lease() {
            Some(lease) if lease.server == server => {
                // Idempotent re-claim by the holder, also after a reconnect.
                if lease.features != features {
                    return self.change_lease(now, &ck, lease.clone(), features, legacy, item);
                }
                Granted {
                    epoch: lease.epoch,
                    features,
                    legacy: lease.legacy,
                    renewed: true,
                }
            }
            None => match self.fits(pool, &features, now) {
                Ok(()) => self.grant(now, &ck, server, pool, features, legacy, item, None),
                Err(r) => Refused(r),
            },
            Some(lease) => {
                let holder = lease.server.clone();
                let holder_state = self.servers.get(&holder);
                let holder_live = holder_state.is_some_and(|h| h.sessions > 0);
                if holder_live && !after_wait {
                    let already = holder_state.is_some_and(|h| {
                        h.revocations
                            .contains_key(&(item.camera.clone(), lease.epoch))
                    });
                    if !already {
                        self.issue_revocation(
                            now,
                            &holder,
                            &pool.key,
                            &item.camera,
                            lease.epoch,
                            RevocationReason::Moved,
                            true,
                        );
                        self.events.push_with(|| Event::MoveRequested {
                            key: pool.key.clone(),
                            camera: item.camera.clone(),
                            from: holder.clone(),
                            to: server.to_string(),
                        });
                    }
                    return AwaitingHolder {
                        holder: self.server_label(&holder),
                    };
                }
                // The holder is silent, or did not acknowledge in time: its lease stays
                // counted as `revoking`, so the move needs a spare seat.
                if self.fits(pool, &features, now).is_err() {
                    let withdrawn = self.servers.get_mut(&holder).and_then(|h| {
                        let k = (item.camera.clone(), lease.epoch);
                        if h.revocations.get(&k).is_some_and(|r| r.provisional) {
                            h.revocations.remove(&k)
                        } else {
                            None
                        }
                    });
                    if withdrawn.is_some() {
                        self.events.push_with(|| Event::MoveWithdrawn {
                            key: pool.key.clone(),
                            camera: item.camera.clone(),
                            from: holder.clone(),
                            to: server.to_string(),
                        });
                    }
                    return Refused(Refusal::HeldBySilentServer {
                        holder: self.server_label(&holder),
                    });
                }
                self.revoke_lease(now, &pool.key, &item.camera, RevocationReason::Moved);
                // revoke_lease may have released it outright (holder's reservation over).
                self.grant(now, &ck, server, pool, features, legacy, item, Some(holder))
            }
        }
    }

    fn server_label(&self, id: &str) -> String {
        match self.servers.get(id) {
            Some(s) => format!("{} ({})", s.name, s.id),
            None => id.to_string(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        now: Timestamp,
        ck: &(KeyId, CameraId),
        server: &str,
        pool: &PoolId,
        features: Features,
        legacy: bool,
        item: &CheckoutItem,
        moved_from: Option<String>,
    ) -> CameraOutcome {
        // Only the contested-move rule is needed here: copied out rather than cloning the
        // whole policy (its class table) on every grant.
        let default = crate::key::Policy::default();
        let policy = self
            .keys
            .get(&pool.key)
            .map_or(&default, |k| &k.document.policy);
        let (contested_window, contested_moves) =
            (policy.contested_window_ms(), policy.contested_moves);
        let terms = self.cameras.intern_ref(TermsRef {
            server,
            pool,
            features: &features,
            class: item.class.as_deref().unwrap_or("camera"),
            modules: &item.modules,
            device_version: item.device_version.as_deref(),
            legacy,
        });
        let record = self.cameras.entry(&ck.0, &ck.1);
        record.epoch += 1;
        let epoch = record.epoch;
        if record.first_granted().is_none() {
            record.first_granted.set(now);
        }
        record.hold(terms, now);
        let mut contested = None;
        if moved_from.is_some() {
            let window = contested_window;
            let moves = record.moves_mut();
            moves.retain(|t| now.since(*t) < window);
            moves.push(now);
            let n = moves.len() as u32;
            if contested_moves > 0 && n >= contested_moves {
                contested = Some((n, window));
            }
        }
        self.add_usage(pool, &features, 1, 0);
        if let Some(s) = self.servers.get_mut(server) {
            s.held.insert(&ck.1);
        }
        if let Some(from) = moved_from {
            self.events.push_with(|| Event::Moved {
                key: ck.0.clone(),
                camera: ck.1.clone(),
                from,
                to: server.to_string(),
                epoch,
            });
        }
        self.events.push_with(|| Event::Granted {
            key: ck.0.clone(),
            camera: ck.1.clone(),
            server: server.to_string(),
            epoch,
            features: features.clone(),
            legacy,
        });
        if let Some((moves, window_ms)) = contested {
            self.events.push_with(|| Event::CameraContested {
                key: ck.0.clone(),
                camera: ck.1.clone(),
                moves,
                window_ms,
            });
        }
        CameraOutcome::Granted {
            epoch,
            features,
            legacy,
            renewed: false,
        }
    }

    /// The holder re-claims a camera with other features (class or modules changed):
    /// all or nothing, the epoch stays.
    fn change_lease(
        &mut self,
        now: Timestamp,
        ck: &(KeyId, CameraId),
        old: Lease,
        features: Features,
        legacy: bool,
        item: &CheckoutItem,
    ) -> CameraOutcome {
        self.add_usage(&old.pool, &old.features, -1, 0);
        if let Err(r) = self.fits(&old.pool, &features, now) {
            self.add_usage(&old.pool, &old.features, 1, 0);
            return CameraOutcome::Refused(r);
        }
        self.add_usage(&old.pool, &features, 1, 0);
        let epoch = old.epoch;
        let terms = self.cameras.intern_ref(TermsRef {
            features: &features,
            legacy,
            class: item.class.as_deref().unwrap_or("camera"),
            modules: &item.modules,
            device_version: item.device_version.as_deref(),
            ..old.terms().terms_ref()
        });
        if let Some(r) = self.cameras.get_mut(&ck.0, &ck.1) {
            r.set_terms(terms);
        }
        self.events.push_with(|| Event::Granted {
            key: ck.0.clone(),
            camera: ck.1.clone(),
            server: old.server.clone(),
            epoch,
            features: features.clone(),
            legacy,
        });
        CameraOutcome::Granted {
            epoch,
            features,
            legacy,
            renewed: false,
        }
    }

    /// Releases cameras the server holds; a camera it does not hold gets `NotHeld`.
    pub fn release(
        &mut self,
        now: Timestamp,
        server: &str,
        cameras: &[CameraId],
    ) -> Result<ReleaseOutcomes, Refusal> {
        self.advance(now);
        let key = self
            .servers
            .get(server)
            .ok_or(Refusal::NotEnrolled)?
            .pool
            .key
            .clone();
        self.check_in(now, server);
        let mut out = Vec::with_capacity(cameras.len());
        for camera in cameras {
            let held = self
                .servers
                .get(server)
                .is_some_and(|s| s.held.contains(camera));
            if held {
                self.release_lease(&key, camera, ReleaseReason::Released);
                out.push((camera.clone(), Ok(())));
            } else {
                out.push((camera.clone(), Err(Refusal::NotHeld)));
            }
        }
        self.forget_if_kicked_and_empty(server);
        self.settle(now);
        Ok(out)
    }

    /// Renews every lease of the server and compares the client's digest of its holdings.
    pub fn heartbeat(
        &mut self,
        now: Timestamp,
        server: &str,
        client_digest: &[u8; 32],
    ) -> Result<HeartbeatAnswer, Refusal> {
        self.advance(now);
        let s = self.servers.get(server).ok_or(Refusal::NotEnrolled)?;
        self.refuse_if_key_refused(&s.pool.key)?;
        let key = s.pool.key.clone();
        let interval = self
            .keys
            .get(&key)
            .map(|k| k.document.policy.heartbeat_interval_ms())
            .unwrap_or(60_000);
        let revocations = s.revocations.values().cloned().collect();
        let ours = match s.held.cached_digest() {
            Some(d) => d,
            None => {
                let d = self.holdings_digest(server);
                if let Some(s) = self.servers.get_mut(server) {
                    s.held.keep_digest(d);
                }
                d
            }
        };
        self.check_in(now, server);
        Ok(HeartbeatAnswer {
            valid_for_ms: self.valid_for(now, server),
            heartbeat_interval_ms: interval,
            sync_needed: &ours != client_digest,
            revocations,
            expiring: self.expiring_entries(&key, now),
        })
    }

    /// The kind of key a code enrols into (`None` for an unknown code), so the caller
    /// can refuse a network code on the local socket and the reverse without spending it.
    pub fn code_key_kind(&self, code: &str) -> Option<crate::key::KeyKind> {
        let c = self.codes.get(code)?;
        Some(self.keys.get(&c.pool.key)?.document.kind)
    }

    /// The kind of key an enrolled server is on.
    pub fn server_key_kind(&self, server: &str) -> Option<crate::key::KeyKind> {
        let s = self.servers.get(server)?;
        Some(self.keys.get(&s.pool.key)?.document.kind)
    }

    /// How many cameras the server holds.
    pub fn held_count(&self, server: &str) -> usize {
        self.servers.get(server).map_or(0, |s| s.held.len())
    }

    /// A key the daemon refuses to serve (host binding failed, DEMO key on a production
    /// daemon) renews nothing: its servers' grace runs out, so a copy cannot serve.
    fn refuse_if_key_refused(&self, key: &str) -> Result<(), Refusal> {
        match self.keys.get(key).and_then(|k| k.refused.clone()) {
            Some(reason) => Err(Refusal::KeyInactive {
                key: key.to_string(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// The digest of (camera, epoch) the server holds, as the client computes it.
    pub fn holdings_digest(&self, server: &str) -> [u8; 32] {
        let Some(s) = self.servers.get(server) else {
            return digest::holdings(std::iter::empty());
        };
        let key = &s.pool.key;
        digest::holdings(s.held.iter().filter_map(|c| {
            let rec = self.cameras.get(key, c)?;
            rec.is_held().then_some((c, rec.epoch))
        }))
    }

    /// A full sync: releases leases the client no longer claims; claimed cameras the
    /// server does not hold at that epoch come back as `not_held`. Never grants.
    pub fn sync(
        &mut self,
        now: Timestamp,
        server: &str,
        claimed: &[(CameraId, u64)],
    ) -> Result<SyncAnswer, Refusal> {
        self.advance(now);
        let s = self.servers.get(server).ok_or(Refusal::NotEnrolled)?;
        let key = s.pool.key.clone();
        self.refuse_if_key_refused(&key)?;
        let held: Vec<CameraId> = s.held.to_vec();
        self.check_in(now, server);
        let claimed_set: std::collections::BTreeMap<&str, u64> =
            claimed.iter().map(|(c, e)| (c.as_str(), *e)).collect();
        let mut released = Vec::new();
        for camera in held {
            let epoch = self
                .cameras
                .get(&key, &camera)
                .and_then(|c| c.lease())
                .map(|l| l.epoch);
            if claimed_set.get(camera.as_str()).copied() != epoch {
                self.release_lease(&key, &camera, ReleaseReason::NotClaimed);
                released.push(camera);
            }
        }
        let mut not_held = Vec::new();
        for (camera, epoch) in claimed {
            let holds = self
                .cameras
                .get(&key, camera)
                .and_then(|c| c.lease())
                .is_some_and(|l| l.server == server && l.epoch == *epoch);
            if !holds {
                not_held.push(camera.clone());
            }
        }
        if !released.is_empty() {
            self.check_in_durable(now, server);
        }
        let revocations = self
            .servers
            .get(server)
            .map(|s| s.revocations.values().cloned().collect())
            .unwrap_or_default();
        let answer = SyncAnswer {
            not_held,
            released,
            valid_for_ms: self.valid_for(now, server),
            revocations,
        };
        self.forget_if_kicked_and_empty(server);
        self.settle(now);
        Ok(answer)
    }

    /// The holder acknowledges a revocation: it stopped recording `camera` at `epoch`.
    /// Returns whether a seat came back.
    pub fn acknowledge(
        &mut self,
        now: Timestamp,
        server: &str,
        camera: &str,
        epoch: u64,
    ) -> Result<bool, Refusal> {
        self.advance(now);
        let s = self.servers.get_mut(server).ok_or(Refusal::NotEnrolled)?;
        let key = s.pool.key.clone();
        s.revocations.remove(&(camera.to_string(), epoch));
        s.check_in(now);
        self.note_unpersisted(server);
        let holds_at_epoch = self
            .cameras
            .get(&key, camera)
            .and_then(|c| c.lease())
            .is_some_and(|l| l.server == server && l.epoch == epoch);
        let mut freed = false;
        if holds_at_epoch {
            self.release_lease(&key, camera, ReleaseReason::Acknowledged);
            freed = true;
        }
        let revoking = self
            .servers
            .get(server)
            .is_some_and(|s| s.revoking.contains(&(camera.to_string(), epoch)));
        if revoking {
            self.end_revoking(&key, camera, server, epoch, true);
            freed = true;
        } else {
            self.forget_if_kicked_and_empty(server);
        }
        self.settle(now);
        Ok(freed)
    }
}
