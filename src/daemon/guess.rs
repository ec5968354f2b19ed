//! Defence against guessing enrolment codes (and probing logins): failed attempts are counted per
//! source address, with a back-off that doubles after the first few, and in total, so a
//! crowd of sources cannot guess faster than the global budget either.

use crate::core::Refusal;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures a source may make before it is made to wait.
const FREE_FAILURES: u32 = 5;
const MAX_BLOCK: Duration = Duration::from_secs(3600);
/// Failures allowed per minute from all sources together.
const GLOBAL_PER_MINUTE: u32 = 30;
const MAX_SOURCES: usize = 10_000;

#[derive(Debug)]
pub struct GuessLimiter {
    sources: HashMap<IpAddr, (u32, Instant)>,
    minute: Instant,
    failures_this_minute: u32,
}

impl Default for GuessLimiter {
    fn default() -> Self {
        GuessLimiter {
            sources: HashMap::new(),
            minute: Instant::now(),
            failures_this_minute: 0,
        }
    }
}

impl GuessLimiter {
    /// May `ip` try now? Refused with how long to wait if not.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if now.duration_since(self.minute) >= Duration::from_secs(60) {
            self.minute = now;
            self.failures_this_minute = 0;
        }
        if self.failures_this_minute >= GLOBAL_PER_MINUTE {
            let wait = Duration::from_secs(60).saturating_sub(now.duration_since(self.minute));
            return Err(Refusal::RateLimited {
                retry_after_ms: wait.as_millis() as u64,
            });
        }
        if let Some((_, until)) = self.sources.get(&ip) {
            if *until > now {
                return Err(Refusal::RateLimited {
                    retry_after_ms: (*until - now).as_millis() as u64,
                });
            }
        }
        Ok(())
    }

    /// Records a failed attempt from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        self.failures_this_minute += 1;
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            self.sources.retain(|_, (_, until)| *until > now);
        }
        let (n, until) = self.sources.entry(ip).or_insert((0, now));
        *n += 1;
        if *n > FREE_FAILURES {
            let block = Duration::from_secs(1u64 << (*n - FREE_FAILURES).min(12)).min(MAX_BLOCK);
            *until = now + block;
            tracing::warn!(source = %ip, failures = *n, block_s = block.as_secs(), "repeated failed enrolment or login: source blocked for a while");
        }
    }

    pub fn succeeded(&mut self, ip: IpAddr) {
        self.sources.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guessing_source_waits_longer_and_longer_and_the_crowd_is_capped() {
        let mut g = GuessLimiter::default();
        let ip: IpAddr = "127.0.0.7".parse().unwrap();
        let t = Instant::now();
        for _ in 0..FREE_FAILURES {
            g.check(ip, t).unwrap();
            g.failed(ip, t);
        }
        g.check(ip, t).unwrap();
        g.failed(ip, t);
        assert!(matches!(
            g.check(ip, t),
            Err(Refusal::RateLimited {
                retry_after_ms: 2000
            })
        ));
        g.failed(ip, t);
        assert!(matches!(
            g.check(ip, t),
            Err(Refusal::RateLimited {
                retry_after_ms: 4000
            })
        ));
        // Many sources together hit the global budget.
        let mut g = GuessLimiter::default();
        for i in 0..GLOBAL_PER_MINUTE {
            let ip: IpAddr = format!("10.9.0.{}", i % 250).parse().unwrap();
            g.failed(ip, t);
        }
        let fresh: IpAddr = "10.9.9.9".parse().unwrap();
        assert!(g.check(fresh, t).is_err());
        assert!(g.check(fresh, t + Duration::from_secs(61)).is_ok());
    }
}
