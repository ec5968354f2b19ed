//! The one task that owns the allocation core. Connection tasks send it jobs over a
//! bounded channel; it drains every job waiting, applies them in order, commits once,
//! then answers them all (group commit). It also logs the core's events and pushes
//! revocations to the holders' live connections.

use crate::clock::Clock;
use crate::core::{Core, Event, ReleaseReason, Timestamp};
use crate::proto::Push;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// Jobs waiting at most this many per batch, so one flood cannot starve the timers.
const MAX_BATCH: usize = 1024;
const CHANNEL_DEPTH: usize = 4096;

type Reply = Box<dyn FnOnce() + Send>;
type Job = Box<dyn FnOnce(&mut Owner) -> Reply + Send>;

#[derive(Debug, thiserror::Error)]
#[error("the daemon is shutting down")]
pub struct ShuttingDown;

/// A live connection of an enrolled server.
#[derive(Debug)]
pub struct Session {
    pub conn: u64,
    pub push: mpsc::Sender<Push>,
    /// Cancelled when the server is forgotten: its connections close.
    pub close: CancellationToken,
}

/// What the task that owns the core holds.
pub struct Owner {
    pub core: Core,
    /// The instant of the batch being applied: every job of a batch sees the same one.
    pub now: Timestamp,
    sessions: HashMap<String, Vec<Session>>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Owner {
    /// Registers a live connection for `server`: revocations are pushed to it.
    pub fn open_session(&mut self, server: &str, session: Session) {
        self.core.session_opened(self.now, server);
        self.sessions
            .entry(server.to_string())
            .or_default()
            .push(session);
    }

    pub fn close_session(&mut self, server: &str, conn: u64) {
        if let Some(v) = self.sessions.get_mut(server) {
            let before = v.len();
            v.retain(|s| s.conn != conn);
            if v.len() < before {
                self.core.session_closed(self.now, server);
            }
            if v.is_empty() {
                self.sessions.remove(server);
            }
        }
    }

    fn push(&mut self, server: &str, push: Push) {
        if let Some(v) = self.sessions.get(server) {
            for s in v {
                // A full queue means the connection is not reading; the revocation stays
                // pending in the core and goes out with the next heartbeat answer.
                let _ = s.push.try_send(push.clone());
            }
        }
    }
}

/// A cheap handle for connection tasks: submit jobs, wait for acknowledgements.
#[derive(Clone, Debug)]
pub struct CoreHandle {
    tx: mpsc::Sender<Job>,
    /// Notified after every batch in which a holder acknowledged a revocation.
    pub acks: Arc<Notify>,
}

impl CoreHandle {
    /// Runs `f` on the core in the owner task; the answer comes after the batch commits.
    pub async fn call<R, F>(&self, f: F) -> Result<R, ShuttingDown>
    where
        R: Send + 'static,
        F: FnOnce(&mut Owner) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |owner: &mut Owner| {
            let r = f(owner);
            Box::new(move || {
                let _ = tx.send(r);
            })
        });
        self.tx.send(job).await.map_err(|_| ShuttingDown)?;
        rx.await.map_err(|_| ShuttingDown)
    }
}

/// Starts the owner task. It ends when `shutdown` fires and the jobs queued are done.
pub fn spawn(
    core: Core,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> (CoreHandle, tokio::task::JoinHandle<Core>) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let acks = Arc::new(Notify::new());
    let handle = CoreHandle {
        tx,
        acks: acks.clone(),
    };
    let owner = Owner {
        core,
        now: clock.now(),
        sessions: HashMap::new(),
    };
    let task = tokio::spawn(run(owner, rx, clock, acks, shutdown));
    (handle, task)
}

async fn run(
    mut owner: Owner,
    mut rx: mpsc::Receiver<Job>,
    clock: Arc<dyn Clock>,
    acks: Arc<Notify>,
    shutdown: CancellationToken,
) -> Core {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Job> = Vec::new();
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                Some(j) => batch.push(j),
                None => break,
            },
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {
                // Answer what is queued, then stop.
                rx.close();
                while let Some(j) = rx.recv().await { batch.push(j); }
                apply(&mut owner, &mut batch, &clock, &acks);
                break;
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        apply(&mut owner, &mut batch, &clock, &acks);
    }
    owner.core
}

fn apply(owner: &mut Owner, batch: &mut Vec<Job>, clock: &Arc<dyn Clock>, acks: &Notify) {
    owner.now = clock.now();
    owner.core.advance(owner.now);
    let replies: Vec<Reply> = batch.drain(..).map(|job| job(owner)).collect();
    let acknowledged = dispatch_events(owner);
    // Commit point. With no store yet, memory is the record, so renewals count as
    // persisted at once; the Durability issue moves this after the store's commit.
    owner.core.renewals_persisted(owner.now);
    for reply in replies {
        reply();
    }
    if acknowledged {
        acks.notify_waiters();
    }
}

/// Logs every event and pushes revocations; returns whether a holder acknowledged.
fn dispatch_events(owner: &mut Owner) -> bool {
    let mut acknowledged = false;
    for event in owner.core.drain_events() {
        super::log::event(&event);
        match event {
            Event::RevocationIssued {
                server,
                camera,
                epoch,
                reason,
                ..
            } => {
                let rev = owner
                    .core
                    .server_revocations(&server)
                    .into_iter()
                    .find(|r| r.camera == camera && r.epoch == epoch);
                if let Some(rev) = rev {
                    owner.push(&server, Push::Revoke(rev));
                } else {
                    tracing::debug!(
                        server,
                        camera,
                        epoch,
                        reason = reason.as_str(),
                        "revocation already settled"
                    );
                }
            }
            Event::Forgotten { server } => {
                for s in owner.sessions.remove(&server).unwrap_or_default() {
                    s.close.cancel();
                }
            }
            Event::Released {
                reason: ReleaseReason::Acknowledged,
                ..
            }
            | Event::RevokingEnded {
                acknowledged: true, ..
            } => acknowledged = true,
            _ => {}
        }
    }
    acknowledged
}
