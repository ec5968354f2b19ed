//! What an administrator asks of the core: free a camera, kick a server, move a server
//! to another pool, rename it. Frees and kicks skip newly added cameras, even forced.

use super::{Core, Event, PoolId, Refusal, ReleaseReason, RevocationReason, Terms, Timestamp};
use crate::key::KeyId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeOutcome {
    pub key: KeyId,
    pub camera: String,
    pub holder: String,
    pub epoch: u64,
    /// Still counted until the holder acknowledges or its reservation ends.
    pub revoking: bool,
    pub forced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KickOutcome {
    pub server: String,
    pub forgotten: bool,
    /// Newly added cameras the server keeps.
    pub kept_newly_added: Vec<String>,
    /// Cameras counted as `revoking` until the server acknowledges.
    pub revoking: Vec<String>,
}

impl Core {
    /// Finds the key a camera id belongs to; ambiguous ids must name the key.
    pub fn resolve_camera(&self, key: Option<&str>, camera: &str) -> Result<KeyId, Refusal> {
        if let Some(k) = key {
            return if self.cameras.contains(k, camera) {
                Ok(k.to_string())
            } else {
                Err(Refusal::UnknownCamera {
                    camera: format!("{k}/{camera}"),
                })
            };
        }
        let keys: Vec<&KeyId> = self.cameras.keys_of(camera).collect();
        match keys.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Refusal::UnknownCamera {
                camera: camera.to_string(),
            }),
            _ => Err(Refusal::BadRequest {
                reason: format!("camera {camera} exists on several keys; name the key"),
            }),
        }
    }

    /// Frees a camera: the holder is told; its seat returns when it acknowledges (or its
    /// reservation ends). `force` returns the seat at once: an audited overlap.
    pub fn free(
        &mut self,
        now: Timestamp,
        key: Option<&str>,
        camera: &str,
        force: bool,
    ) -> Result<FreeOutcome, Refusal> {
        self.advance(now);
        let key = self.resolve_camera(key, camera)?;
        let ck = (key.clone(), camera.to_string());
        let record = self.cameras.get(&ck.0, &ck.1).cloned().unwrap_or_default();
        let lease = record.lease().ok_or(Refusal::NotHeld)?;
        if let Some(until) = self.is_newly_added(&key, &record, now) {
            return Err(Refusal::NewlyAdded { until });
        }
        let holder = lease.server.clone();
        if force {
            self.release_lease(&key, camera, ReleaseReason::Forced);
            self.issue_revocation(
                now,
                &holder,
                &key,
                camera,
                lease.epoch,
                RevocationReason::Freed,
                false,
            );
            self.events.push_with(|| Event::ForcedOverlap {
                key: key.clone(),
                camera: camera.to_string(),
                server: holder.clone(),
            });
        } else {
            self.revoke_lease(now, &key, camera, RevocationReason::Freed);
        }
        let revoking = self
            .servers
            .get(&holder)
            .is_some_and(|s| s.revoking.contains(&(camera.to_string(), lease.epoch)));
        self.settle(now);
        Ok(FreeOutcome {
            key,
            camera: camera.to_string(),
            holder,
            epoch: lease.epoch,
            revoking,
            forced: force,
        })
    }

    /// Kicks a server: its cameras are revoked (newly added ones stay); it is forgotten
    /// once it holds nothing, `revoking` included.
    pub fn kick(
        &mut self,
        now: Timestamp,
        server: &str,
        force: bool,
    ) -> Result<KickOutcome, Refusal> {
        self.advance(now);
        let s = self.servers.get_mut(server).ok_or(Refusal::UnknownServer {
            server: server.to_string(),
        })?;
        s.kicked = true;
        let key = s.pool.key.clone();
        let cameras: Vec<String> = s.held.to_vec();
        self.events.push_with(|| Event::Kicked {
            server: server.to_string(),
            forced: force,
        });
        let mut kept = Vec::new();
        for camera in cameras {
            let ck = (key.clone(), camera.clone());
            let Some(record) = self.cameras.get(&ck.0, &ck.1).cloned() else {
                continue;
            };
            if self.is_newly_added(&key, &record, now).is_some() {
                kept.push(camera);
                continue;
            }
            let epoch = record.lease().map(|l| l.epoch).unwrap_or(0);
            if force {
                self.release_lease(&key, &camera, ReleaseReason::Forced);
                self.issue_revocation(
                    now,
                    server,
                    &key,
                    &camera,
                    epoch,
                    RevocationReason::Kicked,
                    false,
                );
                self.events.push_with(|| Event::ForcedOverlap {
                    key: key.clone(),
                    camera: camera.clone(),
                    server: server.to_string(),
                });
            } else {
                self.revoke_lease(now, &key, &camera, RevocationReason::Kicked);
            }
        }
        let revoking = self
            .servers
            .get(server)
            .map(|s| s.revoking.iter().map(|(c, _)| c.clone()).collect())
            .unwrap_or_default();
        self.forget_if_kicked_and_empty(server);
        self.settle(now);
        let forgotten = !self.servers.contains_key(server);
        Ok(KickOutcome {
            server: server.to_string(),
            forgotten,
            kept_newly_added: kept,
            revoking,
        })
    }

    /// Moves a server, with every camera it holds, to `pool` in one step; nothing changes
    /// if the pool lacks room. Another key's pool only while it holds nothing.
    pub fn move_server(
        &mut self,
        now: Timestamp,
        server: &str,
        pool: &PoolId,
    ) -> Result<(), Refusal> {
        self.advance(now);
        if !self.pools.contains_key(pool) {
            return Err(Refusal::UnknownPool {
                pool: pool.to_string(),
            });
        }
        let s = self.servers.get(server).ok_or(Refusal::UnknownServer {
            server: server.to_string(),
        })?;
        let from = s.pool.clone();
        if from == *pool {
            return Ok(());
        }
        if from.key != pool.key {
            let kind = |k: &str| self.keys.get(k).map(|k| k.document.kind);
            if kind(&from.key) != kind(&pool.key) {
                // A local key licenses the video server on this host alone; it cannot
                // also take licences from a network key (nor the other way round).
                return Err(Refusal::BadRequest {
                    reason: format!(
                        "server {server} is on key {} ({}); it cannot move to key {} ({}): a video server uses either a local or a network key",
                        from.key,
                        kind_name(kind(&from.key)),
                        pool.key,
                        kind_name(kind(&pool.key))
                    ),
                });
            }
            if !s.held.is_empty() || !s.revoking.is_empty() {
                return Err(Refusal::BoundToOtherKey {
                    key: from.key.clone(),
                });
            }
        } else {
            let mut needed: BTreeMap<String, u32> = BTreeMap::new();
            for c in &s.held {
                if let Some(l) = self.cameras.get(&from.key, c).and_then(|r| r.lease()) {
                    for (f, n) in &l.features {
                        *needed.entry(f.clone()).or_insert(0) += n;
                    }
                }
            }
            self.fits(pool, &needed, now)?;
            let held: Vec<String> = s.held.to_vec();
            for c in held {
                let ck = (from.key.clone(), c);
                let Some(features) = self
                    .cameras
                    .get(&ck.0, &ck.1)
                    .and_then(|r| r.lease())
                    .map(|l| l.features.clone())
                else {
                    continue;
                };
                self.add_usage(&from, &features, -1, 0);
                self.add_usage(pool, &features, 1, 0);
                let Some(old) = self
                    .cameras
                    .get(&ck.0, &ck.1)
                    .and_then(|r| r.lease())
                    .map(|l| l.terms().clone())
                else {
                    continue;
                };
                let terms = self.cameras.intern(Terms {
                    pool: pool.clone(),
                    ..old
                });
                if let Some(r) = self.cameras.get_mut(&ck.0, &ck.1) {
                    r.set_terms(terms);
                }
            }
        }
        if let Some(s) = self.servers.get_mut(server) {
            s.pool = pool.clone();
        }
        self.settle(now);
        self.events.push_with(|| Event::ServerMoved {
            server: server.to_string(),
            from,
            to: pool.clone(),
        });
        Ok(())
    }

    pub fn rename_server(
        &mut self,
        now: Timestamp,
        server: &str,
        name: &str,
    ) -> Result<(), Refusal> {
        self.advance(now);
        if name.trim().is_empty() || name.len() > 128 {
            return Err(Refusal::BadRequest {
                reason: "a server name is 1-128 characters".into(),
            });
        }
        let s = self.servers.get_mut(server).ok_or(Refusal::UnknownServer {
            server: server.to_string(),
        })?;
        s.name = name.to_string();
        self.events.push_with(|| Event::ServerRenamed {
            server: server.to_string(),
            name: name.to_string(),
        });
        Ok(())
    }
}

fn kind_name(kind: Option<crate::key::KeyKind>) -> &'static str {
    match kind {
        Some(crate::key::KeyKind::Local) => "local",
        Some(crate::key::KeyKind::Network) => "network",
        None => "not installed",
    }
}
