//! One licence-protocol connection: the version handshake, login or enrolment, then
//! requests answered in order, with revocations pushed between answers. A frame that
//! does not decode closes this connection only.

use super::owner::CoreHandle;
use super::DaemonInfo;
use crate::core::{
    CameraOutcome, CheckoutItem, Command, EnrolRequest, Outcome, Refusal, Timestamp,
};
use crate::identity::PublicKey;
use crate::key::KeyKind;
use crate::outcome;
use crate::proto::{
    self, Binding, ClientFrame, FrameError, HostedKey, LeaseToken, Push, Request, Response,
    ServerFrame, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// How long a live holder has to acknowledge before a move treats it as silent.
pub const ACK_WAIT: Duration = Duration::from_secs(2);
/// From the end of the TLS handshake to the protocol's Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const PUSH_QUEUE: usize = 256;
/// How far a client's clock may run ahead of ours before its lease tokens stop proving
/// its send time (they prove our clock plus this instead: less grace, never more).
const MAX_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;
/// A lease token signed earlier on the connection is answered again while the deadline it
/// proves is short of the one a new token would prove by no more than this fraction of
/// the validity, and no more than `TOKEN_REUSE_MAX_MS`. An Ed25519 signature costs more
/// than the rest of a heartbeat; a token that proves a slightly earlier deadline costs
/// the client that much grace after a restart, and only then.
const TOKEN_REUSE_FRACTION: u64 = 16;
const TOKEN_REUSE_MAX_MS: u64 = 5 * 60 * 1000;
/// Revocations listed in one heartbeat answer at most, so the answer fits in a frame.
const MAX_REVOCATIONS_PER_ANSWER: usize = 256;
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

struct Conn<T> {
    framed: proto::Framed<T>,
    core: CoreHandle,
    info: Arc<DaemonInfo>,
    peer: SocketAddr,
    /// The identity the client proved in the TLS handshake.
    identity: PublicKey,
    /// Which keys this connection may use: network keys over TCP, local keys over the
    /// local socket, never the other.
    transport: KeyKind,
    id: u64,
    server: Option<String>,
    push_tx: mpsc::Sender<Push>,
    /// Cancelled by the core task when this server is forgotten.
    forgotten: CancellationToken,
    /// The last lease token signed on this connection, answered again while it is
    /// fresh enough (see `reusable_token`).
    last_token: Option<LeaseToken>,
}

pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    peer: SocketAddr,
    identity: PublicKey,
    transport: KeyKind,
    core: CoreHandle,
    info: Arc<DaemonInfo>,
    shutdown: CancellationToken,
) {
    let (push_tx, mut push_rx) = mpsc::channel(PUSH_QUEUE);
    let mut conn = Conn {
        framed: proto::framed(io),
        core,
        info,
        peer,
        identity,
        transport,
        id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        server: None,
        push_tx,
        forgotten: CancellationToken::new(),
        last_token: None,
    };
    match timeout(HELLO_TIMEOUT, conn.handshake()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, "handshake failed: {e}");
            if matches!(e, FrameError::Decode(_)) {
                let reason = format!("expected Hello: {e}");
                let _ = conn
                    .send(ServerFrame::Response {
                        id: 0,
                        response: Response::Error { reason },
                    })
                    .await;
            }
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "handshake timed out");
            return;
        }
    }
    let (idle, max_frame) = (
        conn.info.limits.idle_timeout(),
        conn.info.limits.max_frame_bytes,
    );
    // Made once and polled across requests: a timer registered and a cancellation waiter
    // queued anew for every request were work on the event loop, per request, for each
    // of thousands of connections. The idle timer moves on with each frame (a later
    // deadline is a store, not a trip through the timer wheel).
    let login_timer = tokio::time::sleep(conn.info.limits.login_timeout());
    let idle_timer = tokio::time::sleep(idle);
    let forgotten = conn.forgotten.clone().cancelled_owned();
    let shutdown = shutdown.cancelled();
    tokio::pin!(login_timer, idle_timer, forgotten, shutdown);
    loop {
        tokio::select! {
            () = &mut login_timer, if conn.server.is_none() => {
                tracing::debug!(peer = %peer, "no login or enrolment in time: closing");
                break;
            }
            () = &mut idle_timer => {
                tracing::debug!(peer = %peer, "idle for {idle:?}: closing");
                break;
            }
            frame = conn.framed.next() => {
                let result = match frame {
                    None => Err(FrameError::Closed),
                    Some(Err(e)) => Err(FrameError::Io(e)),
                    Some(Ok(bytes)) if bytes.len() > max_frame => Err(FrameError::TooLarge { len: bytes.len(), limit: max_frame }),
                    Some(Ok(bytes)) => conn.handle_frame(&bytes).await,
                };
                if let Err(e) = result {
                    if !matches!(e, FrameError::Closed) {
                        tracing::info!(peer = %peer, "closing licence connection: {e}");
                        let _ = conn.send(ServerFrame::Response { id: 0, response: Response::Error { reason: e.to_string() } }).await;
                    }
                    break;
                }
                idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            Some(push) = push_rx.recv() => {
                if conn.send(ServerFrame::Push(push)).await.is_err() { break; }
            }
            () = &mut forgotten => {
                tracing::debug!(peer = %peer, "server forgotten: closing its connection");
                break;
            }
            () = &mut shutdown => break,
        }
    }
    if let Some(server) = conn.server.take() {
        let id = conn.id;
        let _ = conn.core.call(move |o| o.close_session(&server, id)).await;
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    /// Sends one frame; a peer that does not read within `SEND_TIMEOUT` is dropped, so it
    /// cannot pin this task (or shutdown) forever.
    async fn send(&mut self, frame: ServerFrame) -> Result<(), FrameError> {
        let bytes = proto::encode(&frame)?;
        match timeout(SEND_TIMEOUT, self.framed.send(bytes)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer stopped reading",
                )))
            }
        }
        Ok(())
    }

    async fn answer(&mut self, id: u32, response: Response) -> Result<(), FrameError> {
        self.send(ServerFrame::Response { id, response }).await
    }

    /// Refuses at once while this source (or everyone) is guessing too fast.
    fn guard_guessing(&self) -> Result<(), Refusal> {
        let mut g = self.info.guesses.lock().unwrap_or_else(|e| e.into_inner());
        g.check(self.peer.ip(), std::time::Instant::now())
    }

    /// Counts a failed code or credential against this source.
    fn note_attempt<R>(&self, r: Result<R, Refusal>) -> Result<R, Refusal> {
        let mut g = self.info.guesses.lock().unwrap_or_else(|e| e.into_inner());
        match &r {
            Ok(_) => g.succeeded(self.peer.ip()),
            Err(Refusal::CodeInvalid | Refusal::CodeExpired | Refusal::NotEnrolled) => {
                g.failed(self.peer.ip(), std::time::Instant::now())
            }
            Err(_) => {}
        }
        r
    }

    fn session(&self) -> super::owner::Session {
        super::owner::Session {
            conn: self.id,
            push: self.push_tx.clone(),
            close: self.forgotten.clone(),
        }
    }

    async fn handshake(&mut self) -> Result<(), FrameError> {
        let bytes = self.framed.next().await.ok_or(FrameError::Closed)??;
        let frame: ClientFrame = proto::decode(&bytes)?;
        let Request::Hello { protocol, software } = frame.request else {
            let reason = "the first request must be Hello".to_string();
            self.answer(frame.id, Response::Error { reason }).await?;
            return Err(FrameError::Closed);
        };
        if protocol != PROTOCOL_VERSION {
            let reason = format!(
                "protocol version {protocol} is not supported; this daemon speaks {PROTOCOL_VERSION}"
            );
            self.answer(frame.id, Response::Error { reason }).await?;
            return Err(FrameError::Closed);
        }
        tracing::debug!(peer = %self.peer, software = %software, "licence client connected");
        // Only keys this transport serves, and only while they are served (not refused,
        // not being returned), each with its signed file for the client to check.
        let transport = self.transport;
        let keys = self
            .core
            .call(move |o| o.core().offered_keys(transport))
            .await
            .map_err(|_| FrameError::Closed)?
            .into_iter()
            .map(|(key_id, demo, file)| HostedKey { key_id, demo, file })
            .collect();
        let welcome = Response::Welcome {
            protocol: PROTOCOL_VERSION,
            daemon_id: self.info.daemon_id.clone(),
            software: self.info.software.clone(),
            keys,
        };
        self.answer(frame.id, welcome).await
    }

    async fn handle_frame(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        let frame: ClientFrame = proto::decode(bytes)?;
        let id = frame.id;
        let response = match self.handle(frame.request).await {
            Ok(r) => r,
            Err(refusal) => Response::Refused(refusal),
        };
        self.answer(id, response).await
    }

    async fn handle(&mut self, request: Request) -> Result<Response, Refusal> {
        let closed = |e: super::owner::CallError| Refusal::Unavailable {
            reason: e.to_string(),
        };
        match request {
            Request::Hello { .. } => Err(Refusal::BadRequest {
                reason: "Hello was already exchanged".into(),
            }),
            Request::Enrol {
                code,
                name,
                version,
            } => {
                // Bounded before anything else: these come from anyone on the LAN.
                if code.len() > 32 || name.len() > 128 || version.len() > 64 {
                    return Err(Refusal::BadRequest {
                        reason: "code, name or version too long".into(),
                    });
                }
                self.guard_guessing()?;
                let transport = self.transport;
                let req = EnrolRequest {
                    code,
                    name,
                    version,
                    server_id: format!("srv-{}", crate::hex(&super::random_bytes::<6>())),
                    credential: self.identity.bytes().to_vec(),
                    existing: self.server.clone(),
                };
                let session = self.session();
                let was = self.server.clone();
                let enrolled = self
                    .core
                    .call(move |o| {
                        // Checked in the same turn of the core task as the enrolment, so
                        // the code cannot change keys in between and be spent here.
                        if o.core().code_key_kind(&req.code).is_some_and(|k| k != transport) {
                            return Err(wrong_transport(transport));
                        }
                        let e = outcome!(o.execute(Command::Enrol { request: req }), Outcome::Enrolled(e) => e)?;
                        if was.is_none() {
                            o.open_session(&e.server_id, session);
                        }
                        Ok::<_, Refusal>(e)
                    })
                    .await
                    .map_err(closed)?;
                let enrolled = self.note_attempt(enrolled)?;
                self.server = Some(enrolled.server_id.clone());
                Ok(Response::Enrolled {
                    binding: binding(&enrolled),
                })
            }
            Request::Login { server_id } => {
                if self.server.is_some() {
                    return Err(Refusal::BadRequest {
                        reason: "already logged in".into(),
                    });
                }
                if server_id.len() > 64 {
                    return Err(Refusal::NotEnrolled);
                }
                self.guard_guessing()?;
                let (session, sid) = (self.session(), server_id.clone());
                let transport = self.transport;
                let proof = *self.identity.bytes();
                let enrolment = self
                    .core
                    .call(move |o| {
                        let ok = o
                            .core()
                            .credential(&sid)
                            .is_some_and(|c| c == proof.as_slice());
                        if !ok {
                            return Err(Refusal::NotEnrolled);
                        }
                        if o.core()
                            .server_key_kind(&sid)
                            .is_some_and(|k| k != transport)
                        {
                            return Err(wrong_transport(transport));
                        }
                        let e = o.core().enrolment(&sid)?;
                        o.open_session(&sid, session);
                        Ok(e)
                    })
                    .await
                    .map_err(closed)?;
                let enrolment = self.note_attempt(enrolment)?;
                tracing::debug!(peer = %self.peer, server_id = %server_id, "video server logged in");
                self.server = Some(server_id);
                Ok(Response::LoggedIn {
                    binding: binding(&enrolment),
                })
            }
            other => {
                let server = self.server.clone().ok_or(Refusal::NotEnrolled)?;
                self.handle_enrolled(server, other).await
            }
        }
    }

    async fn handle_enrolled(
        &mut self,
        server: String,
        request: Request,
    ) -> Result<Response, Refusal> {
        let closed = |e: super::owner::CallError| Refusal::Unavailable {
            reason: e.to_string(),
        };
        match request {
            Request::Checkout { key, items } => self.checkout(server, key, items).await,
            Request::Release { cameras } => {
                let out = self
                    .core
                    .call(move |o| {
                        outcome!(o.execute(Command::Release { server, cameras }), Outcome::Released(r) => r)
                    })
                    .await
                    .map_err(closed)??;
                Ok(Response::Released(
                    out.into_iter().map(|(c, r)| (c, r.err())).collect(),
                ))
            }
            Request::Heartbeat { digest, sent_at } => {
                let s = server.clone();
                let (answer, audit, holdings, now) = self
                    .core
                    .call(move |o| {
                        let a = outcome!(o.execute(Command::Heartbeat { server: s.clone(), digest }), Outcome::Heartbeat(a) => a)?;
                        Ok::<_, Refusal>((a, o.audit_head(), u32::try_from(o.core().held_count(&s)).unwrap_or(u32::MAX), o.now))
                    })
                    .await
                    .map_err(closed)??;
                let mut answer = answer;
                // Bounded: the rest go out with the next answers (and as pushes).
                answer.revocations.truncate(MAX_REVOCATIONS_PER_ANSWER);
                // A send time ahead of our clock would stretch the client's grace after
                // a restart: it is signed no later than now plus a skew allowance.
                let sent_at = sent_at.min(now.plus(MAX_CLOCK_SKEW_MS));
                let lease = match reusable_token(
                    self.last_token.as_ref(),
                    &server,
                    sent_at,
                    answer.valid_for_ms,
                    holdings,
                ) {
                    Some(t) => t.clone(),
                    None => {
                        // Signed here, not in the core task, so signing never holds up
                        // the core.
                        let t = LeaseToken::sign(
                            &self.info.identity,
                            server,
                            sent_at,
                            answer.valid_for_ms,
                            holdings,
                        );
                        self.last_token = Some(t.clone());
                        t
                    }
                };
                Ok(Response::Heartbeat {
                    answer,
                    audit,
                    lease,
                })
            }
            Request::Sync { claimed } => {
                let a = self
                    .core
                    .call(move |o| outcome!(o.execute(Command::Sync { server, claimed }), Outcome::Synced(a) => a))
                    .await
                    .map_err(closed)??;
                Ok(Response::Synced(a))
            }
            Request::Acknowledge { camera, epoch } => {
                let freed = self
                    .core
                    .call(move |o| {
                        outcome!(
                            o.execute(Command::Acknowledge { server, camera, epoch }),
                            Outcome::Acknowledged { seat_returned } => seat_returned
                        )
                    })
                    .await
                    .map_err(closed)??;
                Ok(Response::Acknowledged {
                    seat_returned: freed,
                })
            }
            Request::Hello { .. } | Request::Enrol { .. } | Request::Login { .. } => {
                Err(Refusal::BadRequest {
                    reason: "unexpected request".into(),
                })
            }
        }
    }

    /// A checkout that may move cameras from live holders: ask them, wait up to
    /// `ACK_WAIT` for their acknowledgements, then decide the rest as if they were silent.
    async fn checkout(
        &mut self,
        server: String,
        key: Option<String>,
        items: Vec<CheckoutItem>,
    ) -> Result<Response, Refusal> {
        let closed = |e: super::owner::CallError| Refusal::Unavailable {
            reason: e.to_string(),
        };
        if items.len() > 1024 {
            return Err(Refusal::BadRequest {
                reason: "at most 1024 cameras per checkout".into(),
            });
        }
        let (s, k) = (server.clone(), key.clone());
        let (answer, waiting) = self
            .core
            .call(move |o| {
                let c = Command::Checkout {
                    server: s,
                    key: k,
                    items,
                    after_wait: false,
                };
                // The cameras left waiting for their holders are asked for again below:
                // copied here, where there are any, rather than every request copied.
                let (out, waiting) = o.execute_then(c, |c, out| match (c, out) {
                    (Command::Checkout { items, .. }, Outcome::Checkout(a)) => items
                        .iter()
                        .zip(&a.outcomes)
                        .filter(|(_, (_, outcome))| {
                            matches!(outcome, CameraOutcome::AwaitingHolder { .. })
                        })
                        .map(|(item, _)| item.clone())
                        .collect(),
                    _ => Vec::new(),
                });
                (outcome!(out, Outcome::Checkout(a) => a), waiting)
            })
            .await
            .map_err(closed)?;
        let mut answer = answer?;
        if waiting.is_empty() {
            return Ok(Response::Checkout(answer));
        }
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
        loop {
            let notified = self.core.acks.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (s, cams) = (
                server.clone(),
                waiting.iter().map(|i| i.camera.clone()).collect::<Vec<_>>(),
            );
            let still_held = self
                .core
                .call(move |o| {
                    let Some(pool) = o.core().server_pool(&s).cloned() else {
                        return false;
                    };
                    cams.iter()
                        .any(|c| o.core().holder(&pool.key, c).is_some_and(|h| h != s))
                })
                .await
                .map_err(closed)?;
            if !still_held {
                break;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let (s, w) = (server, waiting);
        let second = self
            .core
            .call(move |o| {
                let c = Command::Checkout {
                    server: s,
                    key,
                    items: w,
                    after_wait: true,
                };
                outcome!(o.execute(c), Outcome::Checkout(a) => a)
            })
            .await
            .map_err(closed)??;
        for (camera, outcome) in second.outcomes {
            if let Some(slot) = answer.outcomes.iter_mut().find(|(c, _)| *c == camera) {
                slot.1 = outcome;
            }
        }
        answer.valid_for_ms = second.valid_for_ms;
        Ok(Response::Checkout(answer))
    }
}

/// A local key over TCP, or a network key over the local socket.
fn wrong_transport(transport: KeyKind) -> Refusal {
    Refusal::BadRequest {
        reason: match transport {
            KeyKind::Network => "this code or server is on a local key: use the daemon's local socket on its own host".into(),
            KeyKind::Local => "this code or server is on a network key: connect over the network".into(),
        },
    }
}

fn binding(e: &crate::core::Enrolment) -> Binding {
    Binding {
        server_id: e.server_id.clone(),
        key_id: e.key.clone(),
        pool: e.pool.to_string(),
        demo: e.demo,
        heartbeat_interval_ms: e.heartbeat_interval_ms,
        offline_grace_ms: e.offline_grace_ms,
    }
}

/// The token signed earlier on this connection, if it may answer this heartbeat too: the
/// same server and camera count, sent no later, proving a deadline no later than a new
/// token would and at most `valid_for_ms / TOKEN_REUSE_FRACTION` (and 5 minutes) earlier.
fn reusable_token<'a>(
    last: Option<&'a LeaseToken>,
    server: &str,
    sent_at: Timestamp,
    valid_for_ms: u64,
    cameras: u32,
) -> Option<&'a LeaseToken> {
    let last = last?;
    let proven = last.sent_at.plus(last.valid_for_ms);
    let fresh = sent_at.plus(valid_for_ms);
    (last.server_id == server
        && last.cameras == cameras
        && last.sent_at <= sent_at
        && proven <= fresh
        && fresh.since(proven) <= (valid_for_ms / TOKEN_REUSE_FRACTION).min(TOKEN_REUSE_MAX_MS))
    .then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(sent_at: u64, valid_for_ms: u64, cameras: u32) -> LeaseToken {
        LeaseToken {
            server_id: "srv-1".into(),
            sent_at: Timestamp::from_millis(sent_at),
            valid_for_ms,
            cameras,
            signature: vec![0; 64],
        }
    }

    #[test]
    fn a_token_is_reused_only_while_it_proves_nearly_the_same_deadline() {
        let hour = 3_600_000;
        let last = token(1_000_000, hour, 100);
        let reuse = |sent_at: u64, valid_for: u64, cameras: u32| {
            reusable_token(
                Some(&last),
                "srv-1",
                Timestamp::from_millis(sent_at),
                valid_for,
                cameras,
            )
            .is_some()
        };
        // A second later, the same validity: the deadline it proves is a second short.
        assert!(reuse(1_001_000, hour, 100));
        // Exactly 1/16 of the validity short still reuses it; a millisecond more does not.
        assert!(reuse(1_000_000 + hour / 16, hour, 100));
        assert!(!reuse(1_000_000 + hour / 16 + 1, hour, 100));
        // However long the validity, never more than 5 minutes short.
        let day = 24 * hour;
        let long = token(1_000_000, day, 100);
        let reuse_long = |sent_at: u64| {
            reusable_token(
                Some(&long),
                "srv-1",
                Timestamp::from_millis(sent_at),
                day,
                100,
            )
            .is_some()
        };
        assert!(reuse_long(1_000_000 + 300_000));
        assert!(!reuse_long(1_000_000 + 300_001));
        // Another camera count needs a new signature, either way.
        assert!(!reuse(1_001_000, hour, 101));
        assert!(!reuse(1_001_000, hour, 99));
        // Never a token that proves a later deadline than a new one would.
        assert!(!reuse(1_001_000, hour - 2_000, 100));
        // Never a token from after this heartbeat's send time (a client clock set back).
        assert!(!reuse(999_000, hour + 5_000, 100));
        // Nor another server's, nor none at all.
        assert!(reusable_token(
            Some(&last),
            "srv-2",
            Timestamp::from_millis(1_001_000),
            hour,
            100
        )
        .is_none());
        assert!(
            reusable_token(None, "srv-1", Timestamp::from_millis(1_001_000), hour, 100).is_none()
        );
    }
}
