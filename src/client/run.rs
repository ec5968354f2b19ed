//! A live video server: keeps a session to its bound daemon, heartbeats at the key's
//! interval, syncs on a digest mismatch, acknowledges revocations after reporting them,
//! reconnects with back-off, and stops every camera when its grace deadline passes.

use super::{Client, ClientError, Connection};
use crate::core::{CameraOutcome, CheckoutItem, Refusal, Revocation, RevocationReason, Timestamp};
use crate::proto::{Push, Request, Response, ServerFrame};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// While disconnected, the grace deadline is checked at least this often.
const GRACE_CHECK: Duration = Duration::from_millis(250);

/// What happened to the video server's licences. Stop recording a camera on `Revoked`,
/// `Lost` and `GraceEnded`: the library acknowledges a revocation once the event is sent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClientEvent {
    Connected {
        daemon_id: String,
        addr: String,
    },
    Granted {
        camera: String,
        epoch: u64,
        legacy: bool,
        renewed: bool,
    },
    Refused {
        camera: String,
        refusal: Refusal,
    },
    Revoked {
        camera: String,
        reason: RevocationReason,
    },
    /// The daemon says this server does not hold the camera (it moved while offline, or
    /// the reservation ended).
    Lost {
        camera: String,
        why: String,
    },
    ContactLost {
        error: String,
        deadline: Option<Timestamp>,
    },
    /// No contact for a while: the cameras stop at `deadline` unless contact returns.
    GraceWarning {
        remaining_ms: u64,
        deadline: Timestamp,
    },
    GraceEnded {
        cameras: usize,
    },
    Unenrolled {
        reason: String,
    },
}

impl fmt::Display for ClientEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientEvent::Connected { daemon_id, addr } => {
                write!(f, "connected to daemon {daemon_id} at {addr}")
            }
            ClientEvent::Granted {
                camera,
                epoch,
                legacy,
                renewed,
            } => write!(
                f,
                "{} {camera} (epoch {epoch}){}",
                if *renewed { "holding" } else { "granted" },
                if *legacy { " legacy licence" } else { "" }
            ),
            ClientEvent::Refused { camera, refusal } => write!(f, "refused {camera}: {refusal}"),
            ClientEvent::Revoked { camera, reason } => {
                write!(
                    f,
                    "{} {camera}: stopped recording, acknowledged",
                    reason.as_str()
                )
            }
            ClientEvent::Lost { camera, why } => {
                write!(f, "lost {camera}: {why}; stopped recording")
            }
            ClientEvent::ContactLost { error, deadline } => match deadline {
                Some(d) => write!(f, "contact lost ({error}); recording on grace until {d}"),
                None => write!(f, "contact lost ({error})"),
            },
            ClientEvent::GraceWarning { remaining_ms, deadline } => write!(
                f,
                "grace warning: no contact with the licence daemon; recording stops at {deadline} (in {})",
                crate::core::time::human_span(*remaining_ms)
            ),
            ClientEvent::GraceEnded { cameras } => {
                write!(f, "grace period ended: stopped recording {cameras} cameras")
            }
            ClientEvent::Unenrolled { reason } => write!(f, "no longer enrolled: {reason}"),
        }
    }
}

/// Drops a revoked camera from the state, reports it, then acknowledges.
async fn settle_revocation(
    client: &mut Client,
    conn: &mut Connection,
    rev: Revocation,
    events: &mut Vec<ClientEvent>,
) -> Result<(), ClientError> {
    let state = client.state_mut()?;
    let held_at = state.cameras.get(&rev.camera).map(|h| h.epoch);
    if held_at == Some(rev.epoch) {
        state.cameras.remove(&rev.camera);
        client.save()?;
        events.push(ClientEvent::Revoked {
            camera: rev.camera.clone(),
            reason: rev.reason,
        });
    }
    let ack = Request::Acknowledge {
        camera: rev.camera,
        epoch: rev.epoch,
    };
    match conn.request(ack).await? {
        Response::Acknowledged { .. } => Ok(()),
        Response::Refused(r) => Err(ClientError::Refused(r)),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer to Acknowledge: {other:?}"
        ))),
    }
}

async fn settle_pushes(
    client: &mut Client,
    conn: &mut Connection,
    events: &mut Vec<ClientEvent>,
) -> Result<(), ClientError> {
    loop {
        let pushes = conn.take_pushes();
        if pushes.is_empty() {
            return Ok(());
        }
        for Push::Revoke(rev) in pushes {
            settle_revocation(client, conn, rev, events).await?;
        }
    }
}

/// One heartbeat, a sync if the digests differ, and every revocation settled.
pub(crate) async fn heartbeat_once(
    client: &mut Client,
    conn: &mut Connection,
    events: &mut Vec<ClientEvent>,
) -> Result<(), ClientError> {
    let sent_at = client.now();
    let digest = client.state_mut()?.digest();
    let (answer, lease) = match conn.request(Request::Heartbeat { digest, sent_at }).await? {
        Response::Heartbeat {
            answer,
            audit,
            lease,
        } => {
            client.state_mut()?.audit_head = Some(audit);
            (answer, lease)
        }
        Response::Refused(r) => return Err(ClientError::Refused(r)),
        other => {
            return Err(ClientError::Protocol(format!(
                "unexpected answer to Heartbeat: {other:?}"
            )))
        }
    };
    for rev in answer.revocations.clone() {
        settle_revocation(client, conn, rev, events).await?;
    }
    if answer.sync_needed {
        let claimed: Vec<(String, u64)> = client
            .state_mut()?
            .cameras
            .iter()
            .map(|(c, h)| (c.clone(), h.epoch))
            .collect();
        let synced = match conn.request(Request::Sync { claimed }).await? {
            Response::Synced(a) => a,
            Response::Refused(r) => return Err(ClientError::Refused(r)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected answer to Sync: {other:?}"
                )))
            }
        };
        let state = client.state_mut()?;
        for camera in synced.not_held {
            if state.cameras.remove(&camera).is_some() {
                events.push(ClientEvent::Lost {
                    camera,
                    why: "the daemon does not count it as ours".into(),
                });
            }
        }
        for rev in synced.revocations {
            settle_revocation(client, conn, rev, events).await?;
        }
    }
    // `valid_for` covers only cameras not revoked in this answer, and they are gone now.
    let state = client.state_mut()?;
    state.deadline = Some(super::deadline_from(sent_at, answer.valid_for_ms));
    // Kept only if it is signed by the daemon we are bound to, for us, and proves no
    // later a deadline than this answer gives (the daemon may answer again with a token
    // it signed for an earlier heartbeat, or cap a send time far ahead of its clock):
    // a token that proves more than we were given is worth nothing after a restart.
    let pinned = crate::identity::PublicKey::from_base64(&state.daemon_identity).ok();
    let proves = pinned.is_some_and(|p| lease.verify(&p))
        && lease.sent_at <= sent_at
        && lease.sent_at.plus(lease.valid_for_ms) <= sent_at.plus(answer.valid_for_ms)
        && lease.server_id == state.server_id;
    state.lease = proves.then_some(lease);
    client.save()?;
    settle_pushes(client, conn, events).await
}

/// How a disconnected video server retries: "full jitter" exponential back-off, so
/// thousands of servers cut off together (a daemon restart) spread their reconnects over
/// seconds instead of arriving in the same instant.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The window of the first retry: uniformly within (0, first].
    pub first: Duration,
    /// The largest window.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(5),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based), for a uniform `r` in [0, 1).
    pub fn delay(&self, attempt: u32, r: f64) -> Duration {
        let window = self
            .first
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let floor = Duration::from_millis(50).min(window);
        floor + (window - floor).mul_f64(r.clamp(0.0, 1.0))
    }
}

/// A long-lived video server session.
#[derive(Debug)]
pub struct VideoServer {
    client: Client,
    wanted: Vec<CheckoutItem>,
    backoff: Backoff,
    /// Warn once this share of the offline grace has passed without contact.
    grace_warning_share: f64,
    /// Where to look for the bound daemon when its address stops answering.
    rediscover: Option<crate::discovery::Search>,
}

impl VideoServer {
    /// `wanted`: the cameras this server records; checked out on every (re)connection.
    pub fn new(client: Client, wanted: Vec<CheckoutItem>) -> Self {
        VideoServer {
            client,
            wanted,
            backoff: Backoff::default(),
            grace_warning_share: 0.25,
            rediscover: None,
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Warn (`GraceWarning`) once `share` (0..1) of the offline grace has passed.
    pub fn with_grace_warning(mut self, share: f64) -> Self {
        self.grace_warning_share = share.clamp(0.0, 1.0);
        self
    }

    /// Re-discover the bound daemon (by its daemon id) with this search when its last
    /// address does not answer: the daemon may have moved.
    pub fn with_rediscovery(mut self, search: crate::discovery::Search) -> Self {
        self.rediscover = Some(search);
        self
    }

    /// Runs until `shutdown` fires (cameras stay held: a restarted server re-claims them)
    /// or the server is no longer enrolled.
    pub async fn run(
        mut self,
        events: mpsc::Sender<ClientEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), ClientError> {
        let mut attempt = 0u32;
        let mut lost_reported = false;
        let mut warned = false;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // Connecting may take long (timeouts): never past the grace deadline.
            let connect = match self.grace_left() {
                Some(left) => match tokio::time::timeout(left, self.client.connect()).await {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::Unreachable {
                        addr: self.client.address().unwrap_or_default(),
                        reason: "no answer before the grace period ended".into(),
                    }),
                },
                None => self.client.connect().await,
            };
            let result = match connect {
                Ok(conn) => {
                    attempt = 0;
                    lost_reported = false;
                    warned = false;
                    self.session(conn, &events, &shutdown).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(ClientError::Refused(Refusal::NotEnrolled)) => {
                    let n = self.stop_all()?;
                    let _ = events
                        .send(ClientEvent::Unenrolled {
                            reason: format!("{} (stopped {n} cameras)", Refusal::NotEnrolled),
                        })
                        .await;
                    return Err(ClientError::Refused(Refusal::NotEnrolled));
                }
                Err(
                    e @ (ClientError::WrongDaemon { .. }
                    | ClientError::DemoRefused { .. }
                    | ClientError::NotDemo { .. }
                    | ClientError::UntrustedDaemon { .. }
                    | ClientError::IdentityChanged { .. }
                    | ClientError::State(_)),
                ) => {
                    return Err(e);
                }
                Err(e) => {
                    if !lost_reported {
                        let deadline = self.client.state().and_then(|s| s.deadline);
                        let _ = events
                            .send(ClientEvent::ContactLost {
                                error: e.to_string(),
                                deadline,
                            })
                            .await;
                        lost_reported = true;
                    }
                    if self.rediscover().await {
                        continue;
                    }
                }
            }
            // Wait for the next try, checking the grace period all along: the cameras
            // must stop at the deadline, not at the next retry.
            let retry_at = tokio::time::Instant::now() + self.backoff.delay(attempt, jitter_unit());
            attempt = attempt.saturating_add(1);
            loop {
                self.check_grace(&events, &mut warned).await?;
                let now = tokio::time::Instant::now();
                if now >= retry_at {
                    break;
                }
                let nap = (retry_at - now).min(GRACE_CHECK);
                tokio::select! {
                    _ = tokio::time::sleep(nap) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    }

    /// Looks for the bound daemon elsewhere; true if it was found at a new address.
    async fn rediscover(&mut self) -> bool {
        let Some(search) = self.rediscover.clone() else {
            return false;
        };
        let Some(daemon_id) = self.client.state().map(|s| s.daemon_id.clone()) else {
            return false;
        };
        let Ok(found) = crate::discovery::discover(&search).await else {
            return false;
        };
        let Some(f) = found.into_iter().find(|f| f.offer.daemon_id == daemon_id) else {
            return false;
        };
        let addr = f.connect.to_string();
        if self.client.address().ok().as_deref() == Some(addr.as_str()) {
            return false;
        }
        tracing::info!(daemon_id = %daemon_id, addr = %addr, "the bound daemon answers at a new address");
        self.client.set_address(addr);
        true
    }

    /// Time left until the grace deadline, while cameras are held.
    fn grace_left(&self) -> Option<Duration> {
        let s = self.client.state()?;
        if s.cameras.is_empty() {
            return None;
        }
        Some(Duration::from_millis(s.deadline?.since(self.client.now())))
    }

    fn stop_all(&mut self) -> Result<usize, ClientError> {
        let state = self.client.state_mut()?;
        let n = state.cameras.len();
        state.cameras.clear();
        state.deadline = None;
        self.client.save()?;
        Ok(n)
    }

    async fn check_grace(
        &mut self,
        events: &mpsc::Sender<ClientEvent>,
        warned: &mut bool,
    ) -> Result<(), ClientError> {
        let now = self.client.now();
        if let Some(s) = self.client.state() {
            if let (Some(deadline), false) = (s.deadline, s.cameras.is_empty()) {
                let remaining = deadline.since(now);
                let warn_below =
                    (s.offline_grace_ms as f64 * (1.0 - self.grace_warning_share)) as u64;
                if !*warned && remaining > 0 && remaining <= warn_below {
                    *warned = true;
                    let _ = events
                        .send(ClientEvent::GraceWarning {
                            remaining_ms: remaining,
                            deadline,
                        })
                        .await;
                }
            }
        }
        // Cameras held without a deadline have no proof of any grace (a state file whose
        // lease token does not check out): they stop until the daemon renews them.
        let over = self
            .client
            .state()
            .is_some_and(|s| s.deadline.is_none_or(|d| d <= now));
        let holding = self.client.state().is_some_and(|s| !s.cameras.is_empty());
        if over && holding {
            let n = self.stop_all()?;
            let _ = events.send(ClientEvent::GraceEnded { cameras: n }).await;
        }
        Ok(())
    }

    async fn session(
        &mut self,
        mut conn: Connection,
        out: &mpsc::Sender<ClientEvent>,
        shutdown: &CancellationToken,
    ) -> Result<(), ClientError> {
        let _ = out
            .send(ClientEvent::Connected {
                daemon_id: conn.welcome.daemon_id.clone(),
                addr: conn.addr.clone(),
            })
            .await;
        let mut events = Vec::new();
        heartbeat_once(&mut self.client, &mut conn, &mut events).await?;
        flush(out, &mut events).await;
        if !self.wanted.is_empty() {
            let outcomes = self
                .client
                .checkout_on(&mut conn, self.wanted.clone())
                .await?;
            let mut dropped = BTreeSet::new();
            for (camera, outcome) in outcomes {
                let event = match outcome {
                    CameraOutcome::Granted {
                        epoch,
                        legacy,
                        renewed,
                        ..
                    } => ClientEvent::Granted {
                        camera,
                        epoch,
                        legacy,
                        renewed,
                    },
                    CameraOutcome::Refused(Refusal::Moved { epoch }) => {
                        dropped.insert(camera.clone());
                        ClientEvent::Lost {
                            camera,
                            why: format!("it moved to another server (epoch {epoch})"),
                        }
                    }
                    CameraOutcome::Refused(refusal) => ClientEvent::Refused { camera, refusal },
                    CameraOutcome::AwaitingHolder { holder } => ClientEvent::Refused {
                        camera,
                        refusal: Refusal::HeldBySilentServer { holder },
                    },
                };
                events.push(event);
            }
            // A camera that moved away is no longer ours to claim on reconnect.
            self.wanted.retain(|i| !dropped.contains(&i.camera));
            // New cameras need a lease token that covers them, or a restart of this
            // program before the next heartbeat would find no proof of their grace.
            let token_covers = self.client.state().is_some_and(|s| {
                s.lease
                    .as_ref()
                    .is_some_and(|l| l.cameras as usize >= s.cameras.len())
            });
            if !token_covers {
                heartbeat_once(&mut self.client, &mut conn, &mut events).await?;
            }
            settle_pushes(&mut self.client, &mut conn, &mut events).await?;
            flush(out, &mut events).await;
        }
        let interval = Duration::from_millis(
            self.client
                .state()
                .map(|s| s.heartbeat_interval_ms)
                .unwrap_or(60_000)
                .max(1000),
        );
        let mut next = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                frame = conn.read_frame() => {
                    match frame? {
                        ServerFrame::Push(Push::Revoke(rev)) => {
                            settle_revocation(&mut self.client, &mut conn, rev, &mut events).await?;
                            settle_pushes(&mut self.client, &mut conn, &mut events).await?;
                        }
                        ServerFrame::Response { response: Response::Error { reason }, .. } => {
                            return Err(ClientError::Protocol(reason));
                        }
                        ServerFrame::Response { id, .. } => {
                            tracing::debug!(id, "ignoring an answer nobody waits for");
                        }
                    }
                }
                _ = tokio::time::sleep_until(next) => {
                    // A daemon that stops answering must not keep us past the deadline.
                    let limit = self.grace_left().unwrap_or(Duration::from_secs(3600));
                    match tokio::time::timeout(limit, heartbeat_once(&mut self.client, &mut conn, &mut events)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            return Err(ClientError::Protocol("no heartbeat answer before the grace period ended".into()))
                        }
                    }
                    next = tokio::time::Instant::now() + interval;
                }
                _ = shutdown.cancelled() => return Ok(()),
            }
            self.forget_revoked(&events);
            flush(out, &mut events).await;
        }
    }

    fn forget_revoked(&mut self, events: &[ClientEvent]) {
        for e in events {
            if let ClientEvent::Revoked { camera, .. } | ClientEvent::Lost { camera, .. } = e {
                self.wanted.retain(|i| i.camera != *camera);
            }
        }
    }
}

async fn flush(out: &mpsc::Sender<ClientEvent>, events: &mut Vec<ClientEvent>) {
    for e in events.drain(..) {
        let _ = out.send(e).await;
    }
}

/// A uniform number in [0, 1) for jitter, so servers cut off together do not reconnect
/// in lockstep.
fn jitter_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_servers_cut_off_together_do_not_reconnect_together() {
        // A daemon restart: every server loses contact at 0 and the daemon is back at
        // 3 s. Count the reconnects that succeed per 100 ms (a deterministic generator
        // stands in for the random jitter).
        let b = Backoff::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut unit = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut buckets = std::collections::BTreeMap::<u64, u32>::new();
        for _ in 0..10_000 {
            let (mut t, mut attempt) = (Duration::ZERO, 0);
            loop {
                t += b.delay(attempt, unit());
                attempt += 1;
                if t >= Duration::from_secs(3) {
                    break;
                }
            }
            *buckets.entry(t.as_millis() as u64 / 100).or_default() += 1;
        }
        let busiest = buckets.values().max().copied().unwrap_or(0);
        let busiest_second: u32 = (0..200u64)
            .map(|s| (s * 10..s * 10 + 10).filter_map(|k| buckets.get(&k)).sum())
            .max()
            .unwrap_or(0);
        assert!(
            busiest <= 300,
            "{busiest} of 10000 reconnect within one 100 ms"
        );
        // Spread over several seconds: no second sees more than 30% of them.
        assert!(
            busiest_second <= 3_000,
            "{busiest_second} of 10000 reconnect within one second"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let b = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(8),
        };
        assert_eq!(b.delay(0, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(b.delay(30, 1.0), Duration::from_secs(8));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
    }
}
