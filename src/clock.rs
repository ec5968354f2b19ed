//! Where the daemon and the client get "now". Leases are measured on the monotonic clock: the wall
//! clock is read once at start and the monotonic elapsed time is added to it, so a wall
//! clock step while running moves no lease. Tests hand the daemon a `ManualClock`; the
//! shipped binaries have no way to alter time.

use crate::core::Timestamp;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> Timestamp;
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
}

/// A clock that only moves when told: for in-process tests.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Arc<Self> {
        Arc::new(ManualClock(AtomicU64::new(start.millis())))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// `inner` shifted forward so it starts no earlier than `floor`: after a restart, time
/// resumes from the last persisted instant even if the wall clock was set back, and runs
/// on from there at the monotonic rate (a frozen clock would extend every lease).
#[derive(Debug)]
pub struct Floored {
    inner: Arc<dyn Clock>,
    offset: u64,
}

pub fn floored(inner: Arc<dyn Clock>, floor: Timestamp) -> Arc<dyn Clock> {
    let offset = floor.since(inner.now());
    if offset == 0 {
        return inner;
    }
    Arc::new(Floored { inner, offset })
}

impl Clock for Floored {
    fn now(&self) -> Timestamp {
        self.inner.now().plus(self.offset)
    }
}
