//! What lives beside the daemon identity in the state directory, outside the redb store:
//! the record of returned keys and the wall-clock high-water mark (PRODUCT.md,
//! "Identity"). A backup never carries them and a restore never touches them, so no
//! restore brings a returned key back or winds the mark back; the store's own mark is
//! merged in at start, so the newer of each wins.

use crate::core::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const RETURNED_FILE: &str = "returned-keys.json";
pub const CLOCK_FILE: &str = "clock-mark.json";

#[derive(Debug, thiserror::Error)]
pub enum BesideError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({reason}); it protects against returned keys coming back and clocks set back, so netkeyd will not start without it: restore it, or ask the vendor")]
    Damaged { path: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

fn load<T: for<'de> Deserialize<'de> + Default>(dir: &Path, name: &str) -> Result<T, BesideError> {
    let path = dir.join(name);
    let shown = path.display().to_string();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| BesideError::Damaged {
            path: shown,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(BesideError::Read {
            path: shown,
            source,
        }),
    }
}

fn save<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), BesideError> {
    let path = dir.join(name);
    let text = serde_json::to_vec_pretty(value).map_err(|e| BesideError::Write {
        path: path.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    crate::files::write_private_atomic(&path, &text).map_err(|source| BesideError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// A key returned from this daemon: it and every earlier revision stay out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnedKey {
    pub key_id: String,
    pub revision: u32,
    pub returned_at: Timestamp,
    pub forced: bool,
    /// The receipt given, so a lost one can be asked for again.
    #[serde(default)]
    pub receipt: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnedKeys {
    pub keys: Vec<ReturnedKey>,
}

impl ReturnedKeys {
    pub fn load(dir: &Path) -> Result<Self, BesideError> {
        load(dir, RETURNED_FILE)
    }

    pub fn save(&self, dir: &Path) -> Result<(), BesideError> {
        save(dir, RETURNED_FILE, self)
    }

    /// The return that keeps `revision` of `key_id` out, if any.
    pub fn covering(&self, key_id: &str, revision: u32) -> Option<&ReturnedKey> {
        self.keys
            .iter()
            .filter(|r| r.key_id == key_id && r.revision >= revision)
            .max_by_key(|r| r.revision)
    }

    /// Adds a return, keeping the newer record of each key.
    pub fn add(&mut self, r: ReturnedKey) {
        match self.keys.iter_mut().find(|k| k.key_id == r.key_id) {
            Some(k) if k.revision >= r.revision => {}
            Some(k) => *k = r,
            None => self.keys.push(r),
        }
    }
}

/// The wall-clock high-water mark and the reset tokens already used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockMark {
    pub mark: Timestamp,
    pub used_tokens: Vec<String>,
}

impl ClockMark {
    pub fn load(dir: &Path) -> Result<Self, BesideError> {
        load(dir, CLOCK_FILE)
    }

    pub fn save(&self, dir: &Path) -> Result<(), BesideError> {
        save(dir, CLOCK_FILE, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_keep_the_newer_revision_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = ReturnedKeys::load(dir.path()).unwrap();
        let k = |revision| ReturnedKey {
            key_id: "K".into(),
            revision,
            returned_at: Timestamp::from_secs(1),
            forced: false,
            receipt: None,
        };
        r.add(k(3));
        r.add(k(2));
        r.save(dir.path()).unwrap();
        let back = ReturnedKeys::load(dir.path()).unwrap();
        assert_eq!(back.keys, vec![k(3)]);
        assert!(back.covering("K", 3).is_some());
        assert!(back.covering("K", 1).is_some());
        assert!(back.covering("K", 4).is_none());
        std::fs::write(dir.path().join(RETURNED_FILE), "{").unwrap();
        let err = ReturnedKeys::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is damaged"), "{err}");
    }
}
