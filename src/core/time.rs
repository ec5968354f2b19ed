//! Instants and durations as the core sees them: plain milliseconds since the Unix epoch,
//! handed in by the caller. The core never reads a clock; the daemon maps its monotonic
//! clock onto this scale and tests move it by hand.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An instant: milliseconds since 1970-01-01T00:00:00Z.
///
/// Serialised as an RFC 3339 string in human-readable formats (JSON, TOML) and as a
/// varint of milliseconds in postcard, so key files stay readable and frames stay small.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);
    /// The far future: used for "never" so comparisons need no `Option`.
    pub const NEVER: Timestamp = Timestamp(u64::MAX);

    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }
    pub fn from_secs(s: u64) -> Self {
        Timestamp(s.saturating_mul(1000))
    }
    pub fn millis(self) -> u64 {
        self.0
    }
    pub fn plus(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }
    pub fn minus(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_sub(ms))
    }
    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
    /// Clamped to the last millisecond of year 9999, the last instant RFC 3339 can name
    /// (clamping to its last whole second printed 9999-12-31T23:59:59.5Z as .000Z).
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.min(253_402_300_799_999))
    }
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(_) => Timestamp(0),
        }
    }
    /// RFC 3339 UTC with second precision (millisecond precision when not whole).
    pub fn rfc3339(self) -> String {
        if self == Timestamp::NEVER {
            return "never".to_string();
        }
        let t = self.to_system_time();
        if self.0.is_multiple_of(1000) {
            humantime::format_rfc3339_seconds(t).to_string()
        } else {
            humantime::format_rfc3339_millis(t).to_string()
        }
    }
    pub fn parse_rfc3339(s: &str) -> Result<Self, String> {
        if s == "never" {
            return Ok(Timestamp::NEVER);
        }
        humantime::parse_rfc3339_weak(s)
            .map(Timestamp::from_system_time)
            .map_err(|e| format!("{s:?} is not an RFC 3339 instant ({e})"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.rfc3339())
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
        } else {
            u64::deserialize(d).map(Timestamp)
        }
    }
}

pub const SECOND: u64 = 1000;
pub const MINUTE: u64 = 60 * SECOND;
pub const HOUR: u64 = 60 * MINUTE;
pub const DAY: u64 = 24 * HOUR;

/// "3d 4h", "12m", "45s": how listings show a span.
pub fn human_span(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

/// `t` as seen from `now`: "3 min ago", "in 2 h", "just now"; "never" for `NEVER`.
pub fn relative(now: Timestamp, t: Timestamp) -> String {
    if t == Timestamp::NEVER {
        return "never".into();
    }
    let (ms, past) = if t <= now {
        (now.since(t), true)
    } else {
        (t.since(now), false)
    };
    let s = ms / 1000;
    let span = if s < 5 {
        return "just now".into();
    } else if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else if s < 2 * 86_400 {
        format!("{} h", s / 3600)
    } else {
        format!("{} days", s / 86_400)
    };
    if past {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_like_speech() {
        let now = Timestamp::from_secs(1_000_000);
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now, now.minus(30_000)), "30 s ago");
        assert_eq!(relative(now, now.minus(3 * MINUTE + 10)), "3 min ago");
        assert_eq!(relative(now, now.plus(2 * HOUR)), "in 2 h");
        assert_eq!(relative(now, now.plus(3 * DAY)), "in 3 days");
        assert_eq!(relative(now, Timestamp::NEVER), "never");
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-11-22T14:00:00Z").unwrap();
        assert_eq!(t.rfc3339(), "2026-11-22T14:00:00Z");
        assert_eq!(Timestamp(t.0 + 5).rfc3339(), "2026-11-22T14:00:00.005Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn the_last_second_of_year_9999_keeps_its_milliseconds() {
        let t = Timestamp::parse_rfc3339("9999-12-31T23:59:59.5Z").unwrap();
        assert_eq!(t.rfc3339(), "9999-12-31T23:59:59.500Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.rfc3339()), Ok(t));
    }

    #[test]
    fn json_is_text_postcard_is_number() {
        let t = Timestamp::from_secs(1);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"1970-01-01T00:00:01Z\""
        );
        assert_eq!(postcard::to_allocvec(&t).unwrap(), vec![0xe8, 0x07]);
    }
}
