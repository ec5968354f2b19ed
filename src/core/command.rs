//! Every change to the core as a value: `Core::apply(now, command) -> Outcome`. The
//! daemon logs each batch of commands with its instant before answering, so replaying
//! the log over the last snapshot rebuilds exactly the state that was acknowledged.

use super::{
    CheckoutAnswer, CheckoutItem, Core, EnrolRequest, Enrolment, FreeOutcome, HeartbeatAnswer,
    KickOutcome, PoolChange, PoolId, Refusal, ReleaseOutcomes, ReturnOutcome, SeatRequest,
    SyncAnswer, Timestamp,
};
use crate::key::KeyDocument;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    InstallKey {
        document: KeyDocument,
        demo: bool,
    },
    CreateCode {
        pool: PoolId,
        code: String,
    },
    Enrol {
        request: EnrolRequest,
    },
    SessionOpened {
        server: String,
    },
    SessionClosed {
        server: String,
    },
    Checkout {
        server: String,
        key: Option<String>,
        items: Vec<CheckoutItem>,
        after_wait: bool,
    },
    Release {
        server: String,
        cameras: Vec<String>,
    },
    Heartbeat {
        server: String,
        digest: [u8; 32],
    },
    Sync {
        server: String,
        claimed: Vec<(String, u64)>,
    },
    Acknowledge {
        server: String,
        camera: String,
        epoch: u64,
    },
    Free {
        key: Option<String>,
        camera: String,
        force: bool,
    },
    Kick {
        server: String,
        force: bool,
    },
    MoveServer {
        server: String,
        pool: PoolId,
    },
    RenameServer {
        server: String,
        name: String,
    },
    /// These renewals (server, renewed at) are durable now. Heartbeats themselves are not
    /// logged: they renew in memory, and this record makes their effect durable.
    RenewalsPersisted {
        renewals: Vec<(String, Timestamp)>,
    },
    /// Time passes: reservations end, entries expire.
    Advance,
    /// The daemon started: no connection is open any more, so every server is silent and
    /// move requests waiting for live holders are withdrawn. Logged first by every daemon
    /// start, so a replay across several restarts sees each one.
    Restarted,
    /// The daemon's verdict on an installed key (host binding, trust): `refused` keeps
    /// it from being served until a later verdict clears it.
    KeyChecked {
        key: String,
        binding: String,
        refused: Option<String>,
        /// The fingerprint of the vendor key that signed it, when the daemon knows it.
        signer: Option<String>,
        /// The signed key file, at install: clients check it against the daemon's
        /// identity, so it is kept with the key.
        file: Option<String>,
    },
    /// `key return`, first step: the key's leases are revoked, no new checkouts.
    DeactivateKey {
        key: String,
    },
    /// `key return`, last step: the key, its pools and servers are forgotten. Refused
    /// while leases remain (`revoking` included) unless `force`.
    ReturnKey {
        key: String,
        force: bool,
    },
    /// The wall clock is behind the high-water mark `Some(mark)` (new checkouts wait), or
    /// no longer (`None`).
    ClockRollback {
        mark: Option<Timestamp>,
    },
    /// A vendor's reset token set the daemon's time back to the wall clock: entries that
    /// expired are judged again at the new instant.
    TimeRebased,
    /// A new pool with unused seats from its key's `Default` pool.
    CreatePool {
        pool: PoolId,
        seats: Vec<SeatRequest>,
    },
    /// Unused seats from one pool to another of the same key.
    MoveSeats {
        from: PoolId,
        to: PoolId,
        seats: Vec<SeatRequest>,
    },
    /// A pool with no server goes; its seats return to `Default`.
    DeletePool {
        pool: PoolId,
    },
}

impl Command {
    /// Whether the command goes into the log. Heartbeats do not: they only renew in
    /// memory, and `RenewalsPersisted` records their effect in batches.
    pub fn is_logged(&self) -> bool {
        !matches!(self, Command::Heartbeat { .. })
    }

    /// Whether its answer must wait for a durable commit. Session changes and the
    /// passage of time need not: sessions all end in a restart, and time is replayed.
    pub fn must_be_durable(&self) -> bool {
        !matches!(
            self,
            Command::Heartbeat { .. }
                | Command::SessionOpened { .. }
                | Command::SessionClosed { .. }
                | Command::Advance
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    CodeCreated { expires_at: Timestamp },
    Enrolled(Enrolment),
    Checkout(CheckoutAnswer),
    Released(ReleaseOutcomes),
    Heartbeat(HeartbeatAnswer),
    Synced(SyncAnswer),
    Acknowledged { seat_returned: bool },
    Freed(FreeOutcome),
    Kicked(KickOutcome),
    Refused(Refusal),
    Deactivated { leases: u64 },
    Returned(ReturnOutcome),
    PoolChanged(PoolChange),
}

fn from<T>(r: Result<T, Refusal>, f: impl FnOnce(T) -> Outcome) -> Outcome {
    match r {
        Ok(v) => f(v),
        Err(e) => Outcome::Refused(e),
    }
}

impl Core {
    /// Applies one command at `now`. Deterministic: the same commands at the same
    /// instants from the same state give the same state and outcomes.
    pub fn apply(&mut self, now: Timestamp, command: Command) -> Outcome {
        self.apply_ref(now, &command)
    }

    /// Applies one command at `now` without taking it: the daemon keeps each command it
    /// logs, and applying a copy cost a clone of every checkout. The few that hand what
    /// they carry to the state (a key document, an enrolment) copy that part.
    pub fn apply_ref(&mut self, now: Timestamp, command: &Command) -> Outcome {
        match command {
            Command::InstallKey { document, demo } => {
                from(self.install_key(now, document.clone(), *demo), |_| {
                    Outcome::Done
                })
            }
            Command::Enrol { request } => from(self.enrol(now, request.clone()), Outcome::Enrolled),
            Command::KeyChecked {
                key,
                binding,
                refused,
                signer,
                file,
            } => from(
                self.key_checked(
                    now,
                    key,
                    binding,
                    refused.clone(),
                    signer.clone(),
                    file.clone(),
                ),
                |_| Outcome::Done,
            ),
            Command::CreateCode { pool, code } => {
                from(self.create_code(now, pool, code), |expires_at| {
                    Outcome::CodeCreated { expires_at }
                })
            }
            Command::SessionOpened { server } => {
                self.session_opened(now, server);
                Outcome::Done
            }
            Command::SessionClosed { server } => {
                self.session_closed(now, server);
                Outcome::Done
            }
            Command::Checkout {
                server,
                key,
                items,
                after_wait,
            } => from(
                self.checkout(now, server, key.as_deref(), items, *after_wait),
                Outcome::Checkout,
            ),
            Command::Release { server, cameras } => {
                from(self.release(now, server, cameras), Outcome::Released)
            }
            Command::Heartbeat { server, digest } => {
                from(self.heartbeat(now, server, digest), Outcome::Heartbeat)
            }
            Command::Sync { server, claimed } => {
                from(self.sync(now, server, claimed), Outcome::Synced)
            }
            Command::Acknowledge {
                server,
                camera,
                epoch,
            } => from(
                self.acknowledge(now, server, camera, *epoch),
                |seat_returned| Outcome::Acknowledged { seat_returned },
            ),
            Command::Free { key, camera, force } => from(
                self.free(now, key.as_deref(), camera, *force),
                Outcome::Freed,
            ),
            Command::Kick { server, force } => {
                from(self.kick(now, server, *force), Outcome::Kicked)
            }
            Command::MoveServer { server, pool } => {
                from(self.move_server(now, server, pool), |_| Outcome::Done)
            }
            Command::RenameServer { server, name } => {
                from(self.rename_server(now, server, name), |_| Outcome::Done)
            }
            Command::RenewalsPersisted { renewals } => {
                self.advance(now);
                self.apply_persisted_renewals(renewals);
                Outcome::Done
            }
            Command::Advance => {
                self.advance(now);
                Outcome::Done
            }
            Command::Restarted => {
                self.reset_sessions();
                Outcome::Done
            }
            Command::DeactivateKey { key } => from(self.deactivate_key(now, key), |leases| {
                Outcome::Deactivated { leases }
            }),
            Command::ReturnKey { key, force } => {
                from(self.return_key(now, key, *force), Outcome::Returned)
            }
            Command::ClockRollback { mark } => {
                self.set_clock_rollback(now, *mark);
                Outcome::Done
            }
            Command::TimeRebased => {
                self.time_rebased(now);
                Outcome::Done
            }
            Command::CreatePool { pool, seats } => {
                from(self.create_pool(now, pool, seats), Outcome::PoolChanged)
            }
            Command::MoveSeats { from: f, to, seats } => {
                from(self.move_seats(now, f, to, seats), Outcome::PoolChanged)
            }
            Command::DeletePool { pool } => from(self.delete_pool(now, pool), Outcome::PoolChanged),
        }
    }
}

impl Outcome {
    /// The refusal inside, if this outcome is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Outcome::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// Takes the expected variant out of an `Outcome`, or its refusal.
#[macro_export]
macro_rules! outcome {
    ($value:expr, $pattern:pat => $out:expr) => {
        match $value {
            $pattern => Ok($out),
            $crate::core::Outcome::Refused(r) => Err(r),
            other => Err($crate::core::Refusal::BadRequest {
                reason: format!("internal: unexpected outcome {other:?}"),
            }),
        }
    };
}
