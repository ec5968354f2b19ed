//! `netkey::client`: what a video server embeds. It enrols once (binding and credentials
//! in a state file), checks cameras out and releases them, and `run` keeps a live
//! session: heartbeats at the key's interval, sync on a digest mismatch, revocations
//! acknowledged once reported, reconnection with back-off, and an offline grace period
//! that always ends before the daemon's reservation does (invariant 6).
//!
//! The vendor's public keys come only from the embedding program (`Trust`), never from
//! the state file.

mod connection;
mod run;
mod state;
pub mod trust;

pub use connection::{Connection, Welcome};
pub use run::{Backoff, ClientEvent, VideoServer};
pub use state::{write_private_atomic, ClientState, HeldCamera};

use crate::clock::Clock;
use crate::core::{CameraOutcome, CheckoutItem, Refusal};
use crate::key::VendorPublicKey;
use crate::proto::{Binding, Request, Response};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The client's deadline: its send instant plus `valid_for`, less 0.1% for the two
/// clocks running at slightly different rates over a long grace period.
pub fn deadline_from(sent_at: crate::core::Timestamp, valid_for_ms: u64) -> crate::core::Timestamp {
    sent_at.plus(valid_for_ms - valid_for_ms / 1000)
}

/// Cameras per checkout request; the daemon takes at most 1024.
const CHECKOUT_CHUNK: usize = 256;

/// Whose keys this client accepts: the built-in demo vendor (opt-in, says DEMO), or the
/// vendor public keys compiled into or passed by the embedding program.
#[derive(Clone, Debug)]
pub enum Trust {
    Demo,
    Vendors(Vec<VendorPublicKey>),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the licence daemon at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("connection to the licence daemon failed: {0}")]
    Io(std::io::Error),
    #[error("licence protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    State(String),
    #[error("not enrolled: run `enrol CODE --name NAME` first")]
    NotEnrolled,
    #[error("no daemon address: pass --daemon ADDR:PORT")]
    NoAddress,
    #[error("this client is bound to daemon {expected}, but {addr} is daemon {found}; re-enrol to change daemons")]
    WrongDaemon {
        expected: String,
        found: String,
        addr: String,
    },
    #[error("the daemon at {addr} hosts only DEMO keys, and this client trusts production vendors only (use --demo to accept demo keys)")]
    DemoRefused { addr: String },
    #[error("the daemon at {addr} hosts no DEMO key; a --demo client only talks to demo daemons")]
    NotDemo { addr: String },
    #[error("the daemon at {addr} (identity {identity}) is not trusted: no key from a vendor this program trusts is bound to its identity ({reasons})")]
    UntrustedDaemon {
        addr: String,
        identity: String,
        reasons: String,
    },
    #[error("the daemon at {addr} proves identity {found}, but this server is bound to the daemon with identity {expected}; refusing it (re-enrol to change daemons, or request a repair if the daemon's host was rebuilt)")]
    IdentityChanged {
        addr: String,
        expected: String,
        found: String,
    },
}

/// A video server's handle on its licences, for one-shot operations from a program or
/// the shell (`netkeyctl client`). For a long-lived session use `VideoServer`.
#[derive(Debug)]
pub struct Client {
    state_path: PathBuf,
    state: Option<ClientState>,
    trust: Trust,
    daemon: Option<String>,
    clock: Arc<dyn Clock>,
    /// TLS set up with this server's identity, made once.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// A new identity (PKCS#8, base64) made for an enrolment, saved once it succeeds.
    pending_identity: Option<String>,
    /// An explicit fingerprint the daemon's identity must have, on top of the vendor check.
    pin: Option<String>,
}

impl Client {
    /// Opens (or prepares) the state file. `daemon` overrides the address in it.
    pub fn open(
        state_path: &Path,
        trust: Trust,
        daemon: Option<String>,
    ) -> Result<Client, ClientError> {
        Self::with_clock(state_path, trust, daemon, crate::clock::SystemClock::new())
    }

    pub fn with_clock(
        state_path: &Path,
        trust: Trust,
        daemon: Option<String>,
        clock: Arc<dyn Clock>,
    ) -> Result<Client, ClientError> {
        let mut state = ClientState::load(state_path)?;
        let mut tls = None;
        if let Some(s) = state.as_mut() {
            // The grace deadline counts only if the file proves it: a lease token signed by
            // a daemon identity that a key from a trusted vendor names.
            s.deadline = if anchored(&trust, s) {
                s.proven_deadline()
            } else {
                None
            };
            tls = Some(crate::tls::licence_client_config(&s.identity()?).map_err(tls_error)?);
        }
        Ok(Client {
            state_path: state_path.to_path_buf(),
            state,
            trust,
            daemon,
            clock,
            tls,
            pending_identity: None,
            pin: None,
        })
    }

    pub fn state(&self) -> Option<&ClientState> {
        self.state.as_ref()
    }

    /// Points the client at a new address for its bound daemon (after re-discovery).
    pub fn set_address(&mut self, addr: String) {
        self.daemon = Some(addr.clone());
        if let Some(s) = self.state.as_mut() {
            s.daemon_addr = addr;
            let _ = s.save(&self.state_path);
        }
    }

    pub fn address(&self) -> Result<String, ClientError> {
        self.daemon
            .clone()
            .or_else(|| self.state.as_ref().map(|s| s.daemon_addr.clone()))
            .ok_or(ClientError::NoAddress)
    }

    /// Checks the daemon against this client's trust before anything that matters is
    /// sent: the identity it proved must be the pinned one (once enrolled), and a hosted
    /// key from a trusted vendor must name it. Returns the keys that do, with their files.
    fn check_trust(
        &self,
        conn: &Connection,
    ) -> Result<Vec<(crate::key::SignedKey, String)>, ClientError> {
        self.check_pin(conn)?;
        if let Some(state) = &self.state {
            let pinned =
                crate::identity::PublicKey::from_base64(&state.daemon_identity).map_err(|e| {
                    ClientError::State(format!("the state file's daemon identity: {e}"))
                })?;
            if pinned != conn.welcome.identity {
                return Err(ClientError::IdentityChanged {
                    addr: conn.addr.clone(),
                    expected: pinned.fingerprint(),
                    found: conn.welcome.identity.fingerprint(),
                });
            }
        }
        trust::trusted_keys(
            &self.trust,
            &conn.welcome.identity,
            &conn.addr,
            &conn.welcome.keys,
        )
    }

    /// Accept only a daemon whose identity has this fingerprint (colon-separated hex, as
    /// `PublicKey::fingerprint` prints it), in addition to every other check.
    pub fn pin(&mut self, fingerprint: &str) {
        self.pin = Some(fingerprint.trim().to_ascii_lowercase());
    }

    fn check_pin(&self, conn: &Connection) -> Result<(), ClientError> {
        match &self.pin {
            Some(pin) if *pin != conn.welcome.identity.fingerprint() => {
                Err(ClientError::IdentityChanged {
                    addr: conn.addr.clone(),
                    expected: pin.clone(),
                    found: conn.welcome.identity.fingerprint(),
                })
            }
            _ => Ok(()),
        }
    }

    fn tls(&mut self) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        if let Some(t) = &self.tls {
            return Ok(t.clone());
        }
        let identity = match &self.state {
            Some(s) => s.identity()?,
            None => crate::identity::Identity::generate(),
        };
        let t = crate::tls::licence_client_config(&identity).map_err(tls_error)?;
        self.pending_identity = Some(ClientState::encode_identity(&identity));
        self.tls = Some(t.clone());
        Ok(t)
    }

    /// Exchanges a one-time enrolment code for a binding to the code's pool.
    pub async fn enrol(
        &mut self,
        code: &str,
        name: &str,
        version: &str,
    ) -> Result<Binding, ClientError> {
        let addr = self.address()?;
        let tls = self.tls()?;
        let mut conn = Connection::connect(&addr, &tls).await?;
        // A server re-enrols with the daemon it is bound to (it logs in first, and keeps
        // its id and cameras); a new daemon means a new binding.
        let reenrol = self
            .state
            .as_ref()
            .is_some_and(|s| s.daemon_id == conn.welcome.daemon_id);
        let trusted = if reenrol {
            let t = self.check_trust(&conn)?;
            self.login(&mut conn).await?;
            t
        } else {
            self.check_pin(&conn)?;
            trust::trusted_keys(
                &self.trust,
                &conn.welcome.identity,
                &conn.addr,
                &conn.welcome.keys,
            )?
        };
        let req = Request::Enrol {
            code: code.to_string(),
            name: name.to_string(),
            version: version.to_string(),
        };
        let binding = match conn.request(req).await? {
            Response::Enrolled { binding } => binding,
            Response::Refused(r) => return Err(ClientError::Refused(r)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected answer to Enrol: {other:?}"
                )))
            }
        };
        let key_file = trusted
            .into_iter()
            .find(|(k, _)| k.document.key_id == binding.key_id)
            .map(|(_, file)| file)
            .ok_or_else(|| ClientError::UntrustedDaemon {
                addr: addr.clone(),
                identity: conn.welcome.identity.fingerprint(),
                reasons: format!(
                    "it enrolled this server on key {}, which it did not prove",
                    binding.key_id
                ),
            })?;
        let previous = self.state.take();
        let identity = match (&previous, self.pending_identity.take()) {
            (Some(s), _) => s.identity.clone(),
            (None, Some(new)) => new,
            (None, None) => return Err(ClientError::State("no identity was made".into())),
        };
        let cameras = match (&previous, reenrol) {
            (Some(s), true) => s.cameras.clone(),
            _ => Default::default(),
        };
        let state = ClientState {
            daemon_id: conn.welcome.daemon_id.clone(),
            daemon_addr: addr,
            key_id: binding.key_id.clone(),
            pool: binding.pool.clone(),
            server_id: binding.server_id.clone(),
            name: name.to_string(),
            identity,
            daemon_identity: conn.welcome.identity.to_base64(),
            key_file,
            demo: binding.demo,
            heartbeat_interval_ms: binding.heartbeat_interval_ms,
            offline_grace_ms: binding.offline_grace_ms,
            cameras,
            deadline: None,
            lease: None,
            clock_hwm: previous
                .as_ref()
                .map_or(crate::core::Timestamp::ZERO, |s| s.clock_hwm),
            audit_head: previous.as_ref().and_then(|s| s.audit_head),
        };
        state.save(&self.state_path)?;
        self.state = Some(state);
        Ok(binding)
    }

    async fn login(&self, conn: &mut Connection) -> Result<Binding, ClientError> {
        let state = self.state.as_ref().ok_or(ClientError::NotEnrolled)?;
        if conn.welcome.daemon_id != state.daemon_id {
            return Err(ClientError::WrongDaemon {
                expected: state.daemon_id.clone(),
                found: conn.welcome.daemon_id.clone(),
                addr: conn.addr.clone(),
            });
        }
        let req = Request::Login {
            server_id: state.server_id.clone(),
        };
        match conn.request(req).await? {
            Response::LoggedIn { binding } => Ok(binding),
            Response::Refused(r) => Err(ClientError::Refused(r)),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer to Login: {other:?}"
            ))),
        }
    }

    /// Connects to the bound daemon, checks trust, and logs in.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let tls = self.tls.clone().ok_or(ClientError::NotEnrolled)?;
        let mut conn = Connection::connect(&self.address()?, &tls).await?;
        self.check_trust(&conn)?;
        self.login(&mut conn).await?;
        Ok(conn)
    }

    /// Checks out cameras. Cameras this client already holds are re-claimed with their
    /// epoch (idempotent). Returns one outcome per camera. The lease token covering new
    /// cameras comes with the next heartbeat (`refresh`, or `VideoServer`, which sends one
    /// at once after new grants).
    pub async fn checkout(
        &mut self,
        items: Vec<CheckoutItem>,
    ) -> Result<Vec<(String, CameraOutcome)>, ClientError> {
        let mut conn = self.connect().await?;
        let out = self.checkout_on(&mut conn, items).await?;
        Ok(out)
    }

    pub(crate) async fn checkout_on(
        &mut self,
        conn: &mut Connection,
        mut items: Vec<CheckoutItem>,
    ) -> Result<Vec<(String, CameraOutcome)>, ClientError> {
        let state = self.state.as_ref().ok_or(ClientError::NotEnrolled)?;
        for item in &mut items {
            if item.epoch.is_none() {
                item.epoch = state.cameras.get(&item.camera).map(|h| h.epoch);
            }
        }
        let key = Some(state.key_id.clone());
        let sent_at = self.clock.now();
        // Large batches go in chunks, so every request and answer fits in a frame.
        let mut answer = crate::core::CheckoutAnswer {
            outcomes: Vec::new(),
            valid_for_ms: u64::MAX,
        };
        for chunk in items.chunks(CHECKOUT_CHUNK) {
            let part = match conn
                .request(Request::Checkout {
                    key: key.clone(),
                    items: chunk.to_vec(),
                })
                .await?
            {
                Response::Checkout(a) => a,
                Response::Refused(r) => return Err(ClientError::Refused(r)),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected answer to Checkout: {other:?}"
                    )))
                }
            };
            answer.valid_for_ms = answer.valid_for_ms.min(part.valid_for_ms);
            answer.outcomes.extend(part.outcomes);
        }
        let state = self.state.as_mut().ok_or(ClientError::NotEnrolled)?;
        for ((camera, outcome), item) in answer.outcomes.iter().zip(&items) {
            match outcome {
                CameraOutcome::Granted { epoch, .. } => {
                    state.cameras.insert(
                        camera.clone(),
                        HeldCamera {
                            epoch: *epoch,
                            class: item.class.clone(),
                            modules: item.modules.clone(),
                            device_version: item.device_version.clone(),
                        },
                    );
                }
                CameraOutcome::Refused(Refusal::Moved { .. }) => {
                    state.cameras.remove(camera);
                }
                _ => {}
            }
        }
        if answer
            .outcomes
            .iter()
            .any(|(_, o)| matches!(o, CameraOutcome::Granted { .. }))
        {
            state.deadline = Some(deadline_from(sent_at, answer.valid_for_ms));
        }
        self.save()?;
        Ok(answer.outcomes)
    }

    /// Releases cameras; the seats return at once.
    pub async fn release(
        &mut self,
        cameras: Vec<String>,
    ) -> Result<Vec<(String, Option<Refusal>)>, ClientError> {
        let mut conn = self.connect().await?;
        let out = match conn.request(Request::Release { cameras }).await? {
            Response::Released(out) => out,
            Response::Refused(r) => return Err(ClientError::Refused(r)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected answer to Release: {other:?}"
                )))
            }
        };
        let state = self.state.as_mut().ok_or(ClientError::NotEnrolled)?;
        for (camera, _) in &out {
            state.cameras.remove(camera);
        }
        self.save()?;
        Ok(out)
    }

    /// One heartbeat (with a sync if the daemon's view differs) and acknowledgement of
    /// pending revocations: brings the state file up to date with the daemon.
    pub async fn refresh(&mut self) -> Result<Vec<ClientEvent>, ClientError> {
        let mut conn = self.connect().await?;
        self.heartbeat(&mut conn).await
    }

    /// `refresh` on a connection the caller keeps open (from `connect`), as a long-lived
    /// video server does between heartbeats.
    pub async fn heartbeat(
        &mut self,
        conn: &mut Connection,
    ) -> Result<Vec<ClientEvent>, ClientError> {
        let mut events = Vec::new();
        run::heartbeat_once(self, conn, &mut events).await?;
        Ok(events)
    }

    pub(crate) fn state_mut(&mut self) -> Result<&mut ClientState, ClientError> {
        self.state.as_mut().ok_or(ClientError::NotEnrolled)
    }

    pub(crate) fn save(&mut self) -> Result<(), ClientError> {
        let now = self.clock.now();
        match &mut self.state {
            Some(s) => {
                s.clock_hwm = s.clock_hwm.max(now);
                s.save(&self.state_path)
            }
            None => Ok(()),
        }
    }

    /// The client's clock, never earlier than the latest instant it has shown (kept in
    /// the state file), so winding the machine's clock back cannot stretch the grace.
    pub(crate) fn now(&self) -> crate::core::Timestamp {
        let now = self.clock.now();
        self.state.as_ref().map_or(now, |s| now.max(s.clock_hwm))
    }
}

fn tls_error(e: crate::tls::TlsError) -> ClientError {
    ClientError::State(format!("cannot set up TLS: {e}"))
}

/// Whether the daemon identity a state file pins is one a key from a trusted vendor
/// names (the key file is kept beside it), so a file edited to pin another identity
/// proves nothing.
fn anchored(trust: &Trust, state: &ClientState) -> bool {
    let Ok(daemon) = crate::identity::PublicKey::from_base64(&state.daemon_identity) else {
        return false;
    };
    let hosted = crate::proto::HostedKey {
        key_id: state.key_id.clone(),
        demo: state.demo,
        file: state.key_file.clone(),
    };
    trust::trusted_keys(trust, &daemon, &state.daemon_addr, &[hosted])
        .is_ok_and(|keys| keys.iter().any(|(k, _)| k.document.key_id == state.key_id))
}
