//! Dotted device and server versions ("4.12.1"), compared numerically part by part.

use std::cmp::Ordering;
use std::fmt;

#[derive(Clone, Debug)]
pub struct DeviceVersion(Vec<u64>);

impl DeviceVersion {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_start_matches(['v', 'V']);
        if s.is_empty() || s.len() > 64 {
            return Err(format!("{s:?} is not a version like 4.12.1"));
        }
        s.split('.')
            .map(|p| {
                p.parse::<u64>()
                    .map_err(|_| format!("{s:?} is not a version like 4.12.1"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(DeviceVersion)
    }
}

impl Ord for DeviceVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.0.len().max(other.0.len());
        for i in 0..n {
            let (a, b) = (
                self.0.get(i).copied().unwrap_or(0),
                other.0.get(i).copied().unwrap_or(0),
            );
            match a.cmp(&b) {
                Ordering::Equal => continue,
                o => return o,
            }
        }
        Ordering::Equal
    }
}

// "4.0" and "4" are the same version, so equality follows the ordering.
impl PartialEq for DeviceVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for DeviceVersion {}

impl PartialOrd for DeviceVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for DeviceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_numerically() {
        let v = |s| DeviceVersion::parse(s).unwrap();
        assert!(v("4.10") > v("4.9"));
        assert_eq!(v("4.0"), v("4"));
        assert!(v("v2.1.1") > v("2.1"));
        assert!(DeviceVersion::parse("4.x").is_err());
    }
}
