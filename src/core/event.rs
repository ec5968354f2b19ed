//! What the core reports after a change: the daemon logs and audits these, and pushes
//! `RevocationIssued` to the holder's live connection.

use super::{CameraId, PoolId, ServerId};
use crate::key::{Feature, KeyId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a holder is asked to give up a camera.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// Another server checked the camera out.
    Moved,
    /// An administrator freed the camera.
    Freed,
    /// An administrator kicked the server.
    Kicked,
    /// The allocation shrank below use (an entry expired, seats moved, a key returned, the
    /// overdraft allowance was spent).
    Shrunk,
}

impl RevocationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Moved => "moved",
            RevocationReason::Freed => "freed",
            RevocationReason::Kicked => "kicked",
            RevocationReason::Shrunk => "shrunk",
        }
    }
}

/// Why a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The holder released it.
    Released,
    /// The holder's sync no longer claimed it.
    NotClaimed,
    /// The holder acknowledged a revocation.
    Acknowledged,
    /// The holder was silent past its reservation.
    Expired,
    /// An administrator forced it (a deliberate, audited overlap).
    Forced,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    KeyInstalled {
        key: KeyId,
        revision: u32,
        demo: bool,
    },
    CodeCreated {
        pool: PoolId,
        expires_at: super::Timestamp,
    },
    Enrolled {
        server: ServerId,
        name: String,
        pool: PoolId,
    },
    Granted {
        key: KeyId,
        camera: CameraId,
        server: ServerId,
        epoch: u64,
        features: BTreeMap<Feature, u32>,
        legacy: bool,
    },
    Released {
        key: KeyId,
        camera: CameraId,
        server: ServerId,
        epoch: u64,
        reason: ReleaseReason,
    },
    /// A move was asked of a live holder; the daemon waits briefly for its acknowledgement.
    MoveRequested {
        key: KeyId,
        camera: CameraId,
        from: ServerId,
        to: ServerId,
    },
    /// A move request was withdrawn: the holder did not answer and no seat was spare.
    MoveWithdrawn {
        key: KeyId,
        camera: CameraId,
        from: ServerId,
        to: ServerId,
    },
    Moved {
        key: KeyId,
        camera: CameraId,
        from: ServerId,
        to: ServerId,
        epoch: u64,
    },
    /// Tell `server` to stop `camera` and acknowledge.
    RevocationIssued {
        server: ServerId,
        key: KeyId,
        camera: CameraId,
        epoch: u64,
        reason: RevocationReason,
    },
    /// A `revoking` lease stopped counting: acknowledged, or its reservation ended.
    RevokingEnded {
        key: KeyId,
        camera: CameraId,
        server: ServerId,
        epoch: u64,
        acknowledged: bool,
    },
    CameraContested {
        key: KeyId,
        camera: CameraId,
        moves: u32,
        window_ms: u64,
    },
    /// An administrator's `--force`: the holder may still record until it hears.
    ForcedOverlap {
        key: KeyId,
        camera: CameraId,
        server: ServerId,
    },
    Kicked {
        server: ServerId,
        forced: bool,
    },
    Forgotten {
        server: ServerId,
    },
    ServerExpired {
        server: ServerId,
        cameras: u64,
    },
    EntryExpired {
        key: KeyId,
        order: String,
        feature: Feature,
        count: u32,
    },
    AllocationShrunk {
        pool: PoolId,
        feature: Feature,
        in_use: u64,
        total: u64,
    },
    ServerMoved {
        server: ServerId,
        from: PoolId,
        to: PoolId,
    },
    ServerRenamed {
        server: ServerId,
        name: String,
    },
    /// An entry expires within `days` days (warned at 30, 7 and 1 days).
    EntryExpiring {
        key: KeyId,
        order: String,
        feature: Feature,
        count: u32,
        not_after: super::Timestamp,
        days: u32,
    },
    /// The daemon's verdict on a key it hosts changed: `binding` describes its host
    /// binding, `refused` why it is not served (None: served).
    KeyChecked {
        key: KeyId,
        binding: String,
        refused: Option<String>,
    },
    /// `key return` began: the key's leases are revoked; no new checkouts.
    KeyReturning {
        key: KeyId,
        leases: u64,
    },
    /// The key is gone from this daemon; `dropped` leases still counted were dropped by
    /// force (a deliberate overlap).
    KeyReturned {
        key: KeyId,
        revision: u32,
        forced: bool,
        dropped: u64,
    },
    /// The key went over its allocation (into its overdraft) by `seats`.
    OverdraftStarted {
        key: KeyId,
        seats: u64,
    },
    /// The key is back within its allocation after `minutes` over it.
    OverdraftEnded {
        key: KeyId,
        minutes: u64,
    },
    /// The overdraft allowance (`hours` per 30 days) is spent: overdraft leases are
    /// revoked, newest first, and no more overdraft is granted.
    OverdraftSpent {
        key: KeyId,
        hours: u32,
    },
    /// The wall clock is behind the high-water mark (`Some`), or no longer (`None`).
    ClockRollback {
        mark: Option<super::Timestamp>,
    },
    /// A vendor's reset token moved the daemon's time back to the wall clock.
    TimeRebased {
        at: super::Timestamp,
    },
    PoolCreated {
        pool: PoolId,
    },
    /// Unused seats of one entry (sales order) moved between two pools of a key.
    SeatsMoved {
        from: PoolId,
        to: PoolId,
        feature: Feature,
        order: String,
        count: u32,
    },
    PoolDeleted {
        pool: PoolId,
    },
}
