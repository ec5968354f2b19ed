//! Counters the owner task keeps for `/metrics`: grants, moves, expiries, refusals by
//! reason, and how long heartbeats take from reaching the core task to being answered
//! (queueing, applying and committing). Gauges (seats, servers) are read from the core
//! when scraped, so they always agree with `status`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the heartbeat latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub grants: AtomicU64,
    pub moves: AtomicU64,
    pub releases: AtomicU64,
    pub revocations: AtomicU64,
    pub forced_overlaps: AtomicU64,
    /// Silent servers whose reservation ended.
    pub reservations_ended: AtomicU64,
    pub entries_expired: AtomicU64,
    pub contested: AtomicU64,
    refusals: Mutex<BTreeMap<String, u64>>,
    /// Per bucket (not cumulative), then the overflow bucket.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

/// A consistent copy of the counters for rendering.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub grants: u64,
    pub moves: u64,
    pub releases: u64,
    pub revocations: u64,
    pub forced_overlaps: u64,
    pub reservations_ended: u64,
    pub entries_expired: u64,
    pub contested: u64,
    pub refusals: BTreeMap<String, u64>,
    /// Cumulative counts per bucket bound, then the total count.
    pub latency_cumulative: Vec<u64>,
    pub latency_count: u64,
    pub latency_sum_secs: f64,
}

impl Metrics {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, code: &str) {
        if let Ok(mut m) = self.refusals.lock() {
            *m.entry(code.to_string()).or_insert(0) += 1;
        }
    }

    pub fn heartbeat_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS.len());
        for b in &self.latency[..LATENCY_BUCKETS.len()] {
            running += load(b);
            cumulative.push(running);
        }
        let count = running + load(&self.latency[LATENCY_BUCKETS.len()]);
        MetricsSnapshot {
            grants: load(&self.grants),
            moves: load(&self.moves),
            releases: load(&self.releases),
            revocations: load(&self.revocations),
            forced_overlaps: load(&self.forced_overlaps),
            reservations_ended: load(&self.reservations_ended),
            entries_expired: load(&self.entries_expired),
            contested: load(&self.contested),
            refusals: self.refusals.lock().map(|m| m.clone()).unwrap_or_default(),
            latency_cumulative: cumulative,
            latency_count: count,
            latency_sum_secs: load(&self.latency_sum_us) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative() {
        let m = Metrics::default();
        m.heartbeat_latency(Duration::from_micros(300));
        m.heartbeat_latency(Duration::from_millis(3));
        m.heartbeat_latency(Duration::from_secs(10));
        let s = m.snapshot();
        assert_eq!(s.latency_cumulative[0], 1);
        assert_eq!(s.latency_cumulative[3], 2);
        assert_eq!(*s.latency_cumulative.last().unwrap(), 2);
        assert_eq!(s.latency_count, 3);
        assert!((s.latency_sum_secs - 10.0033).abs() < 1e-6);
        m.refused("NoSeats");
        m.refused("NoSeats");
        assert_eq!(m.snapshot().refusals["NoSeats"], 2);
    }
}
