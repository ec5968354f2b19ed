//! Where the daemon and the client get "now". Leases are measured on the monotonic clock: the wall
//! clock is read once at start and the monotonic elapsed time is added to it, so a wall
//! clock step while running moves no lease. The wall clock itself is read separately, to
//! watch it against the daemon's high-water mark. Tests hand the daemon a `ManualClock`,
//! whose wall clock they can step apart from its monotonic time; the shipped binaries
//! have no way to alter time.

use crate::core::Timestamp;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Time on the monotonic scale leases are measured on.
    fn now(&self) -> Timestamp;
    /// What the wall clock says now (which an administrator may set back or forward).
    fn wall(&self) -> Timestamp {
        self.now()
    }
}

#[derive(Debug)]
pub struct SystemClock {
    wall_at_start: Timestamp,
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Arc<Self> {
        Arc::new(SystemClock {
            wall_at_start: Timestamp::from_system_time(SystemTime::now()),
            start: Instant::now(),
        })
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.wall_at_start.plus(elapsed)
    }
    fn wall(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }
}

/// A clock that only moves when told: for in-process tests. Its wall clock follows its
/// time, apart from steps made with `step_wall` (an administrator setting the clock).
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
    wall_offset: AtomicI64,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Arc<Self> {
        Arc::new(ManualClock {
            now: AtomicU64::new(start.millis()),
            wall_offset: AtomicI64::new(0),
        })
    }
    /// Time passes: the monotonic time and the wall clock both move on.
    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, t: Timestamp) {
        self.now.store(t.millis(), Ordering::SeqCst);
    }
    /// The wall clock is set back (negative) or forward by `ms`; no time passes.
    pub fn step_wall(&self, ms: i64) {
        self.wall_offset.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.now.load(Ordering::SeqCst))
    }
    fn wall(&self) -> Timestamp {
        shift(self.now(), self.wall_offset.load(Ordering::SeqCst))
    }
}

fn shift(t: Timestamp, by: i64) -> Timestamp {
    if by >= 0 {
        t.plus(by.unsigned_abs())
    } else {
        t.minus(by.unsigned_abs())
    }
}

/// The daemon's clock: `inner` shifted so it starts no earlier than the persisted
/// high-water mark. After a restart, time resumes from the last persisted instant even if
/// the wall clock was set back, and runs on from there at the monotonic rate (a frozen
/// clock would extend every lease). Only a vendor's reset token moves it back, to the
/// wall clock (`rebase_to_wall`).
#[derive(Debug)]
pub struct DaemonClock {
    inner: Arc<dyn Clock>,
    offset: AtomicI64,
}

pub fn floored(inner: Arc<dyn Clock>, floor: Timestamp) -> Arc<DaemonClock> {
    let offset = i64::try_from(floor.since(inner.now())).unwrap_or(i64::MAX);
    Arc::new(DaemonClock {
        inner,
        offset: AtomicI64::new(offset),
    })
}

impl DaemonClock {
    /// From now on, time is what the wall clock says, running on at the monotonic rate.
    pub fn rebase_to_wall(&self) {
        let (wall, now) = (self.inner.wall().millis(), self.inner.now().millis());
        let offset = i64::try_from(i128::from(wall) - i128::from(now)).unwrap_or(0);
        self.offset.store(offset, Ordering::SeqCst);
    }
}

impl Clock for DaemonClock {
    fn now(&self) -> Timestamp {
        shift(self.inner.now(), self.offset.load(Ordering::SeqCst))
    }
    fn wall(&self) -> Timestamp {
        self.inner.wall()
    }
}
