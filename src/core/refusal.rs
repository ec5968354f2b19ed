//! Business refusals: answers, not errors. Each has a wire code (its variant) and a
//! sentence for the person reading it.

use super::time::Timestamp;
use crate::key::{Feature, KeyId};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The pool has no free seat of `feature`.
    NoSeats {
        feature: Feature,
        in_use: u64,
        total: u64,
    },
    /// The server is bound to another key.
    BoundToOtherKey {
        key: KeyId,
    },
    /// The camera moved to another server since this epoch.
    Moved {
        epoch: u64,
    },
    /// Another server holds the camera, did not acknowledge a revocation, and no seat is
    /// spare to carry its lease as `revoking`.
    HeldBySilentServer {
        holder: String,
    },
    /// The device version is below the key's minimum.
    VersionRefused {
        min: String,
    },
    /// A legacy device, and the key does not grant the legacy entitlement.
    LegacyNotEntitled,
    /// Every entry of the key has passed its not-after instant.
    KeyExpired {
        key: KeyId,
    },
    NotEnrolled,
    CodeInvalid,
    CodeExpired,
    RateLimited {
        retry_after_ms: u64,
    },
    /// The daemon's wall clock is behind its high-water mark `mark` by more than the
    /// tolerance: new checkouts wait until it passes the mark (renewals go on).
    ClockRollback {
        mark: Timestamp,
    },
    /// The server does not hold this camera (at this epoch).
    NotHeld,
    /// The camera is newly added until `until`: frees and kicks skip it.
    NewlyAdded {
        until: Timestamp,
    },
    UnknownClass {
        class: String,
    },
    UnknownKey {
        key: KeyId,
    },
    UnknownPool {
        pool: String,
    },
    UnknownServer {
        server: String,
    },
    UnknownCamera {
        camera: String,
    },
    /// The server was kicked and holds what is left until it is forgotten.
    ServerKicked,
    /// Use exceeds a shrunken allocation: nothing is granted until it is back under.
    OverAllocated {
        feature: Feature,
        in_use: u64,
        total: u64,
    },
    /// The server's version is below the key's minimum for servers.
    ServerVersionRefused {
        min: String,
    },
    BadRequest {
        reason: String,
    },
    /// The daemon could not save the change (disk full, state directory not writable),
    /// so it did not make it; or it is shutting down.
    Unavailable {
        reason: String,
    },
    /// The daemon does not serve this key now: its host binding failed, it is a DEMO key
    /// on a production daemon, or it is being returned. `reason` says which.
    KeyInactive {
        key: KeyId,
        reason: String,
    },
    /// No free seat, and the key's overdraft allowance of `hours` per 30 days is spent.
    OverdraftSpent {
        feature: Feature,
        in_use: u64,
        total: u64,
        hours: u32,
    },
    /// Administration only: moving `asked` seats of `feature` out of `pool` would leave
    /// it fewer than it has in use; only unused seats move.
    SeatsInUse {
        pool: String,
        feature: Feature,
        asked: u64,
        in_use: u64,
        total: u64,
    },
    /// Administration only: servers are still enrolled in the pool being deleted, or
    /// seats of servers that left it are still counted (`revoking`).
    PoolInUse {
        pool: String,
        servers: u64,
        revoking: u64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Refusal::*;
        match self {
            NoSeats { feature, in_use, total } => write!(
                f,
                "no free {feature} licence: {in_use} in use of {total} total in this pool"
            ),
            BoundToOtherKey { key } => write!(
                f,
                "this video server is bound to key {key}; a server uses one key at a time"
            ),
            Moved { epoch } => write!(
                f,
                "the camera moved to another video server (now at epoch {epoch}); stop recording it"
            ),
            HeldBySilentServer { holder } => write!(
                f,
                "the camera is held by video server {holder}, which did not release it, and no spare seat can cover both until it does"
            ),
            VersionRefused { min } => write!(f, "the device version is below the minimum {min}"),
            LegacyNotEntitled => {
                write!(f, "a legacy device, and this key does not grant legacy licences")
            }
            KeyExpired { key } => write!(f, "key {key} has expired"),
            NotEnrolled => write!(f, "this video server is not enrolled (or its credentials are wrong)"),
            CodeInvalid => write!(f, "the enrolment code is not valid (wrong, or already used)"),
            CodeExpired => write!(f, "the enrolment code has expired; ask the administrator for a new one"),
            RateLimited { retry_after_ms } => {
                write!(f, "too many attempts; try again in {} s", retry_after_ms.div_ceil(1000))
            }
            ClockRollback { mark } => write!(
                f,
                "the daemon's wall clock is behind its high-water mark {mark}; new checkouts are refused until it passes the mark or a vendor's reset token is installed (renewals go on)"
            ),
            NotHeld => write!(f, "this video server does not hold the camera"),
            NewlyAdded { until } => write!(
                f,
                "the camera is newly added and protected until {until}; it cannot be freed or kicked before"
            ),
            UnknownClass { class } => write!(f, "the key has no licence class {class:?}"),
            UnknownKey { key } => write!(f, "no key {key} is installed"),
            UnknownPool { pool } => write!(f, "no pool {pool}"),
            UnknownServer { server } => write!(f, "no video server {server}"),
            UnknownCamera { camera } => write!(f, "no camera {camera} is known"),
            ServerKicked => write!(f, "this video server was kicked; it may not check out cameras"),
            OverAllocated { feature, in_use, total } => write!(
                f,
                "{feature} use ({in_use}) exceeds the allocation ({total}) since it shrank; nothing is granted until use is back under"
            ),
            ServerVersionRefused { min } => {
                write!(f, "the video server's version is below the key's minimum {min}")
            }
            BadRequest { reason } => write!(f, "bad request: {reason}"),
            Unavailable { reason } => write!(f, "the licence daemon cannot make changes now: {reason}"),
            KeyInactive { key, reason } => write!(f, "key {key} is not served by this daemon: {reason}"),
            OverdraftSpent { feature, in_use, total, hours } => write!(
                f,
                "no free {feature} licence: {in_use} in use of {total} total in this pool, and the key's overdraft allowance ({hours} hours per 30 days) is spent"
            ),
            SeatsInUse { pool, feature, asked, in_use, total } => write!(
                f,
                "only unused seats move: pool {pool} has {} unused {feature} seats ({in_use} in use of {total}); {asked} asked",
                total.saturating_sub(*in_use)
            ),
            PoolInUse { pool, servers, .. } if *servers > 0 => write!(
                f,
                "pool {pool} still has {servers} video server{} enrolled; move or kick {} first",
                if *servers == 1 { "" } else { "s" },
                if *servers == 1 { "it" } else { "them" }
            ),
            PoolInUse { pool, revoking, .. } => write!(
                f,
                "pool {pool} still counts {revoking} revoking seat{} of a server that left it; it can be deleted once the server acknowledges or its reservation ends",
                if *revoking == 1 { "" } else { "s" }
            ),
        }
    }
}

impl std::error::Error for Refusal {}
