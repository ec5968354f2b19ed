//! The wall clock against its high-water mark (PRODUCT.md, "Time"). Leases and
//! not-after instants run on the daemon's own time, which never goes back; this watches
//! the wall clock itself. Set back further than the tolerance below the mark, new
//! checkouts are refused with `ClockRollback` (renewals go on) until the wall clock
//! passes the mark again, or a vendor-signed reset token naming this daemon and the mark
//! is installed (once). A forward step raises the mark and moves no lease.

use super::beside::{BesideError, ClockMark};
use crate::core::time::{MINUTE, SECOND};
use crate::core::Timestamp;
use std::path::PathBuf;

/// How far the wall clock may fall behind the mark before checkouts stop: NTP slews and
/// small corrections stay well inside it.
pub const TOLERANCE_MS: u64 = 5 * MINUTE;
/// The mark is written to disk when it has moved on this much (and at every change of
/// state): a crash loses less than the tolerance.
const SAVE_EVERY_MS: u64 = 60 * SECOND;

#[derive(Debug)]
pub struct ClockGuard {
    dir: PathBuf,
    state: ClockMark,
    saved: Timestamp,
    /// The mark the wall clock must pass again, while rolled back.
    rollback: Option<Timestamp>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResetError {
    #[error("the clock is not behind its high-water mark ({mark}); there is nothing to reset")]
    NotRolledBack { mark: Timestamp },
    #[error("the token names daemon identity {named}, not this daemon ({ours})")]
    OtherDaemon { named: String, ours: String },
    #[error("the token names the mark {named}, but this daemon's mark is {ours}; ask the vendor for a token naming {ours} (it is in `netkeyctl status` and in a `key request`)")]
    OtherMark { named: Timestamp, ours: Timestamp },
    #[error("this reset token ({0}) was already used; a token clears one rollback once")]
    Used(String),
}

impl ClockGuard {
    /// Loads the mark kept beside the identity and raises it to the store's, so the
    /// newer of the two counts (a restore may bring either).
    pub fn load(dir: PathBuf, store_mark: Timestamp) -> Result<ClockGuard, BesideError> {
        let mut state = ClockMark::load(&dir)?;
        let saved = state.mark;
        state.mark = state.mark.max(store_mark);
        Ok(ClockGuard {
            dir,
            state,
            saved,
            rollback: None,
        })
    }

    pub fn mark(&self) -> Timestamp {
        self.state.mark
    }

    pub fn rollback(&self) -> Option<Timestamp> {
        self.rollback
    }

    /// Looks at the wall clock. Returns the new rollback state when it changed.
    pub fn observe(&mut self, wall: Timestamp) -> Option<Option<Timestamp>> {
        let before = self.rollback;
        match self.rollback {
            Some(mark) if wall >= mark => self.rollback = None,
            Some(_) => {}
            None if wall.plus(TOLERANCE_MS) < self.state.mark => {
                self.rollback = Some(self.state.mark)
            }
            None => {}
        }
        if self.rollback.is_none() && wall > self.state.mark {
            self.state.mark = wall;
        }
        let changed = before != self.rollback;
        if changed || self.state.mark.since(self.saved) >= SAVE_EVERY_MS {
            self.persist();
        }
        changed.then_some(self.rollback)
    }

    /// Writes the mark now (also at shutdown).
    pub fn persist(&mut self) {
        match self.state.save(&self.dir) {
            Ok(()) => self.saved = self.state.mark,
            Err(e) => tracing::error!("cannot save the clock high-water mark: {e}"),
        }
    }

    /// Checks a verified token against this daemon and its rollback.
    pub fn check_token(
        &self,
        token: &crate::key::ClockResetToken,
        identity: &crate::identity::PublicKey,
    ) -> Result<Timestamp, ResetError> {
        if token.daemon_identity != identity.to_base64() {
            let named = crate::identity::PublicKey::from_base64(&token.daemon_identity)
                .map(|p| p.fingerprint())
                .unwrap_or_else(|_| token.daemon_identity.clone());
            return Err(ResetError::OtherDaemon {
                named,
                ours: identity.fingerprint(),
            });
        }
        if self.state.used_tokens.contains(&token.token_id) {
            return Err(ResetError::Used(token.token_id.clone()));
        }
        let Some(mark) = self.rollback else {
            return Err(ResetError::NotRolledBack {
                mark: self.state.mark,
            });
        };
        if token.mark != mark {
            return Err(ResetError::OtherMark {
                named: token.mark,
                ours: mark,
            });
        }
        Ok(mark)
    }

    /// Forgets the mark: the wall clock is trusted from `wall` on; the token is spent.
    pub fn reset(&mut self, token_id: &str, wall: Timestamp) -> Result<(), BesideError> {
        self.state.used_tokens.push(token_id.to_string());
        self.state.mark = wall;
        self.rollback = None;
        self.state.save(&self.dir)?;
        self.saved = wall;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::time::DAY;

    #[test]
    fn back_beyond_the_tolerance_and_forward_again() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Timestamp::from_secs(1_800_000_000);
        let mut g = ClockGuard::load(dir.path().into(), t0).unwrap();
        assert_eq!(g.observe(t0.plus(MINUTE)), None);
        // A small step back is tolerated.
        assert_eq!(g.observe(t0.plus(MINUTE).minus(TOLERANCE_MS)), None);
        let mark = g.mark();
        assert_eq!(g.observe(t0.minus(DAY)), Some(Some(mark)));
        assert_eq!(g.observe(t0), None, "still behind the mark");
        assert_eq!(g.observe(mark), Some(None));
        // The mark survives a restart.
        let g2 = ClockGuard::load(dir.path().into(), Timestamp::ZERO).unwrap();
        assert_eq!(g2.mark(), mark);
    }

    #[test]
    fn the_newer_of_file_and_store_wins() {
        let dir = tempfile::tempdir().unwrap();
        let t = Timestamp::from_secs(1_800_000_000);
        let mut g = ClockGuard::load(dir.path().into(), t).unwrap();
        g.persist();
        let g = ClockGuard::load(dir.path().into(), t.minus(DAY)).unwrap();
        assert_eq!(g.mark(), t);
        let g = ClockGuard::load(dir.path().into(), t.plus(DAY)).unwrap();
        assert_eq!(g.mark(), t.plus(DAY));
    }
}
