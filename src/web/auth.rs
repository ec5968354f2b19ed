//! Who may use the web console: one-time login tokens (minted over the admin socket by
//! `netkeyctl console`), the console password (PBKDF2-HMAC-SHA256, only its hash kept,
//! in the state directory), failed password logins rate limited per source and in total,
//! and sessions, each with its own CSRF token. Nothing here reaches the core.

use crate::daemon::guess::GuessLimiter;
use base64::Engine as _;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A one-time login URL works this long.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(300);
/// A session ends after this long without a request...
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// ...and after this long in any case.
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 256;
const MAX_TOKENS: usize = 64;
/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
const PBKDF2_ITERATIONS: u32 = 600_000;
const PASSWORD_FILE: &str = "console-password";
const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("wrong password")]
    Wrong,
    #[error("no console password is set: use `netkeyctl console` on the daemon's machine")]
    NoPassword,
    #[error("too many failed logins; try again in {} s", .retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
}

/// One browser's session.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
    /// A message for the next page shown (the outcome of an action).
    flash: Option<Flash>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

struct Inner {
    tokens: HashMap<String, Instant>,
    sessions: HashMap<String, Session>,
    password: Option<String>,
    guesses: GuessLimiter,
}

/// The console's logins and sessions. Secrets never appear in `Debug`.
pub struct Console {
    inner: Mutex<Inner>,
    password_file: Option<PathBuf>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("password_file", &self.password_file)
            .finish_non_exhaustive()
    }
}

fn random_hex<const N: usize>() -> String {
    crate::hex(&crate::daemon::random_bytes::<N>())
}

impl Console {
    /// A console keeping its password hash in `state_dir` (none: in memory only).
    pub fn open(state_dir: Option<&Path>) -> std::io::Result<Console> {
        let password_file = state_dir.map(|d| d.join(PASSWORD_FILE));
        let password = match &password_file {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(Console {
            inner: Mutex::new(Inner {
                tokens: HashMap::new(),
                sessions: HashMap::new(),
                password,
                guesses: GuessLimiter::default(),
            }),
            password_file,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh one-time login token and how long it works.
    pub fn mint_login_token(&self) -> (String, Duration) {
        let token = random_hex::<32>();
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tokens.retain(|_, t| *t > now);
        if inner.tokens.len() >= MAX_TOKENS {
            // The oldest goes: minting needs the admin socket, so this is no attack.
            if let Some(oldest) = inner
                .tokens
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                inner.tokens.remove(&oldest);
            }
        }
        inner.tokens.insert(token.clone(), now + LOGIN_TOKEN_TTL);
        (token, LOGIN_TOKEN_TTL)
    }

    /// Uses up a login token: true once, if it was minted and has not expired.
    pub fn redeem_login_token(&self, token: &str, now: Instant) -> bool {
        let mut inner = self.lock();
        inner.tokens.retain(|_, t| *t > now);
        inner.tokens.remove(token).is_some()
    }

    pub fn has_password(&self) -> bool {
        self.lock().password.is_some()
    }

    /// Sets (or with `None` removes) the console password; returns whether password
    /// logins are possible now. Slow on purpose (PBKDF2): call off the async threads.
    pub fn set_password(&self, password: Option<&str>) -> Result<bool, String> {
        let encoded = match password {
            Some(p) => {
                if p.chars().count() < MIN_PASSWORD || p.len() > MAX_PASSWORD {
                    return Err(format!(
                        "a console password has at least {MIN_PASSWORD} characters"
                    ));
                }
                Some(hash_password(p))
            }
            None => None,
        };
        if let Some(file) = &self.password_file {
            match &encoded {
                Some(e) => crate::files::write_private_atomic(file, e.as_bytes()),
                None => match std::fs::remove_file(file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                },
            }
            .map_err(|e| {
                format!(
                    "cannot save the console password in {}: {e}",
                    file.display()
                )
            })?;
        }
        let enabled = encoded.is_some();
        self.lock().password = encoded;
        Ok(enabled)
    }

    /// Checks a password login from `ip`. Slow on purpose (PBKDF2): call off the async
    /// threads. Failures count against the source and against everyone.
    pub fn check_password(
        &self,
        ip: IpAddr,
        password: &str,
        now: Instant,
    ) -> Result<(), LoginError> {
        let stored = {
            let mut inner = self.lock();
            if let Err(crate::core::Refusal::RateLimited { retry_after_ms }) =
                inner.guesses.check(ip, now)
            {
                return Err(LoginError::RateLimited {
                    retry_after: Duration::from_millis(retry_after_ms),
                });
            }
            inner.password.clone()
        };
        let Some(stored) = stored else {
            return Err(LoginError::NoPassword);
        };
        let good = password.len() <= MAX_PASSWORD && verify_password(&stored, password);
        let mut inner = self.lock();
        if good {
            inner.guesses.succeeded(ip);
            Ok(())
        } else {
            inner.guesses.failed(ip, now);
            Err(LoginError::Wrong)
        }
    }

    /// Opens a session; the oldest goes if too many are open.
    pub fn open_session(&self, now: Instant) -> Session {
        let session = Session {
            id: random_hex::<32>(),
            csrf: random_hex::<32>(),
            created: now,
            last_seen: now,
            flash: None,
        };
        let mut inner = self.lock();
        inner.sessions.retain(|_, s| alive(s, now));
        if inner.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = inner
                .sessions
                .values()
                .min_by_key(|s| s.last_seen)
                .map(|s| s.id.clone())
            {
                inner.sessions.remove(&oldest);
            }
        }
        inner.sessions.insert(session.id.clone(), session.clone());
        session
    }

    /// The live session with this id, touched; its flash message is taken.
    pub fn session(&self, id: &str, now: Instant) -> Option<(Session, Option<Flash>)> {
        let mut inner = self.lock();
        let s = inner.sessions.get_mut(id)?;
        if !alive(s, now) {
            inner.sessions.remove(id);
            return None;
        }
        s.last_seen = now;
        let flash = s.flash.take();
        Some((s.clone(), flash))
    }

    pub fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(s) = self.lock().sessions.get_mut(id) {
            s.flash = Some(flash);
        }
    }

    pub fn close_session(&self, id: &str) {
        self.lock().sessions.remove(id);
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.last_seen) < SESSION_IDLE
        && now.saturating_duration_since(s.created) < SESSION_MAX
}

/// `pbkdf2-sha256$ITERATIONS$SALT$HASH`, salt and hash in base64.
fn hash_password(password: &str) -> String {
    let salt = crate::daemon::random_bytes::<16>();
    let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(NonZeroU32::MIN);
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "pbkdf2-sha256${PBKDF2_ITERATIONS}${}${}",
        b64.encode(salt),
        b64.encode(out)
    )
}

fn verify_password(stored: &str, password: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut parts = stored.split('$');
    let (Some("pbkdf2-sha256"), Some(iter), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Some(iter), Ok(salt), Ok(hash)) = (
        iter.parse::<u32>().ok().and_then(NonZeroU32::new),
        b64.decode(salt),
        b64.decode(hash),
    ) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iter,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

/// Constant-time comparison of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_token_works_once_and_not_after_it_expires() {
        let c = Console::open(None).unwrap();
        let (t, ttl) = c.mint_login_token();
        let now = Instant::now();
        assert!(c.redeem_login_token(&t, now));
        assert!(!c.redeem_login_token(&t, now), "a token works once");
        let (t2, _) = c.mint_login_token();
        assert!(!c.redeem_login_token(&t2, now + ttl + Duration::from_secs(1)));
        assert!(!c.redeem_login_token("guess", now));
    }

    #[test]
    fn sessions_end_when_idle_or_old() {
        let c = Console::open(None).unwrap();
        let t = Instant::now();
        let s = c.open_session(t);
        assert_eq!(s.csrf.len(), 64);
        assert!(c.session(&s.id, t + Duration::from_secs(60)).is_some());
        assert!(c
            .session(&s.id, t + SESSION_IDLE + Duration::from_secs(61))
            .is_none());
        let s = c.open_session(t);
        let mut now = t;
        while now < t + SESSION_MAX - SESSION_IDLE {
            now += SESSION_IDLE / 2;
            assert!(c.session(&s.id, now).is_some());
        }
        assert!(c.session(&s.id, t + SESSION_MAX).is_none());
        let s = c.open_session(t);
        c.close_session(&s.id);
        assert!(c.session(&s.id, t).is_none());
    }

    #[test]
    fn the_password_is_kept_hashed_and_wrong_ones_are_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let c = Console::open(Some(dir.path())).unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t = Instant::now();
        assert_eq!(
            c.check_password(ip, "anything", t),
            Err(LoginError::NoPassword)
        );
        assert!(c.set_password(Some("short")).is_err());
        assert_eq!(c.set_password(Some("correct horse battery")), Ok(true));
        let stored = std::fs::read_to_string(dir.path().join(PASSWORD_FILE)).unwrap();
        assert!(stored.starts_with("pbkdf2-sha256$600000$"), "{stored}");
        assert!(!stored.contains("horse"));
        // A restarted daemon reads the hash back.
        let c = Console::open(Some(dir.path())).unwrap();
        assert_eq!(c.check_password(ip, "correct horse battery", t), Ok(()));
        for _ in 0..6 {
            assert_eq!(c.check_password(ip, "wrong", t), Err(LoginError::Wrong));
        }
        assert!(matches!(
            c.check_password(ip, "correct horse battery", t),
            Err(LoginError::RateLimited { .. })
        ));
        // Another source is not blocked by this one.
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(c.check_password(other, "correct horse battery", t), Ok(()));
        assert_eq!(c.set_password(None), Ok(false));
        assert!(!dir.path().join(PASSWORD_FILE).exists());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
    }
}
