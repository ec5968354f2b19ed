//! The digest of a server's holdings, computed the same way by the client and the
//! daemon: SHA-256 over the (camera, epoch) pairs sorted by camera id, each encoded as
//! the camera id's UTF-8 bytes, one 0x00 byte, and the epoch as 8 bytes little-endian.

use super::compact::IdKey;
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

/// The cameras a server holds, and the digest of its holdings once a heartbeat has
/// asked for it. Every heartbeat compares digests, and computing one looks up every lease
/// of the server (a hundred, for a large recorder), so it is kept until the holdings
/// change. A camera's epoch changes only when it is granted anew, which inserts it here,
/// so `insert` and `remove` are the only ways the digest can go stale, and both forget it.
///
/// The ids are a sorted vector, not a tree: a server holds tens to thousands of cameras,
/// which a vector keeps in 24 bytes each and shifts in microseconds, where a tree's nodes
/// cost about twice that. Serialized as the plain set of camera ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Vec<IdKey>")]
pub struct Holdings {
    cameras: Vec<IdKey>,
    digest: Option<[u8; 32]>,
}

impl Holdings {
    fn find(&self, camera: &str) -> Result<usize, usize> {
        IdKey::search(&self.cameras, camera)
    }

    pub fn insert(&mut self, camera: &str) -> bool {
        self.digest = None;
        let camera = IdKey::new(camera);
        match self.cameras.binary_search(&camera) {
            Ok(_) => false,
            Err(i) => {
                self.cameras.insert(i, camera);
                true
            }
        }
    }

    pub fn remove(&mut self, camera: &str) -> bool {
        self.digest = None;
        match self.find(camera) {
            Ok(i) => {
                self.cameras.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains(&self, camera: &str) -> bool {
        self.find(camera).is_ok()
    }

    pub fn len(&self) -> usize {
        self.cameras.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cameras.is_empty()
    }

    /// The camera ids, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.cameras.iter().map(IdKey::as_str)
    }

    /// The camera ids as owned strings, for a caller that changes the holdings as it goes.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }

    pub(crate) fn cached_digest(&self) -> Option<[u8; 32]> {
        self.digest
    }

    pub(crate) fn keep_digest(&mut self, digest: [u8; 32]) {
        self.digest = Some(digest);
    }
}

impl From<Vec<IdKey>> for Holdings {
    fn from(mut cameras: Vec<IdKey>) -> Self {
        // Written sorted and unique; sorting again costs little and keeps `find` right
        // whatever was read.
        cameras.sort_unstable();
        cameras.dedup();
        Holdings {
            cameras,
            digest: None,
        }
    }
}

impl Serialize for Holdings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.cameras.serialize(s)
    }
}

impl<'a> IntoIterator for &'a Holdings {
    type Item = &'a str;
    type IntoIter = std::iter::Map<std::slice::Iter<'a, IdKey>, fn(&'a IdKey) -> &'a str>;
    fn into_iter(self) -> Self::IntoIter {
        self.cameras.iter().map(IdKey::as_str)
    }
}

pub fn holdings<'a>(pairs: impl IntoIterator<Item = (&'a str, u64)>) -> [u8; 32] {
    let mut sorted: Vec<(&str, u64)> = pairs.into_iter().collect();
    sorted.sort_unstable();
    let mut ctx = Context::new(&SHA256);
    for (camera, epoch) in sorted {
        ctx.update(camera.as_bytes());
        ctx.update(&[0]);
        ctx.update(&epoch.to_le_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::Holdings;

    #[test]
    fn a_change_of_holdings_forgets_the_digest() {
        let mut h = Holdings::default();
        h.keep_digest([1; 32]);
        h.insert("cam-1");
        assert_eq!(h.cached_digest(), None);
        h.keep_digest([2; 32]);
        h.remove("cam-1");
        assert_eq!(h.cached_digest(), None);
        // Serialized as the set alone: snapshots written before the cache still load.
        let mut set = std::collections::BTreeSet::new();
        set.insert("cam-2".to_string());
        let bytes = postcard::to_allocvec(&set).unwrap();
        let back: Holdings = postcard::from_bytes(&bytes).unwrap();
        assert!(back.contains("cam-2") && back.cached_digest().is_none());
    }

    #[test]
    fn order_does_not_matter_epochs_do() {
        let a = super::holdings([("cam-1", 1), ("cam-2", 4)]);
        let b = super::holdings([("cam-2", 4), ("cam-1", 1)]);
        let c = super::holdings([("cam-2", 5), ("cam-1", 1)]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
