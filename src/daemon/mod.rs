//! `netkeyd`: binds the licence port and the admin socket, loads the keys it hosts, and
//! runs the task that owns the allocation core. `Daemon::start` takes its clock and
//! returns a handle whose `shutdown` stops everything, so tests run it in-process.

pub mod admin;
mod beside;
mod clockguard;
mod conn;
pub(crate) mod guess;
mod keys;
mod listener;
mod local;
mod log;
pub mod metrics;
mod owner;
mod port;

pub use beside::{ClockMark, ReturnedKeys, CLOCK_FILE, RETURNED_FILE};
pub use clockguard::TOLERANCE_MS as CLOCK_TOLERANCE_MS;

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use conn::ACK_WAIT;
pub use listener::Limits;
pub use owner::{CoreHandle, Owner, Session, ShuttingDown};
use port::port_error;

use crate::core::{Command, Core, Outcome, Timestamp};
use crate::key::{demo_key, demo_vendor, HostSource, SignedKey, VendorPublicKey};
use crate::store::Store;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_socket: PathBuf,
    pub state_dir: PathBuf,
    pub demo: bool,
    pub no_broadcast: bool,
    /// An already bound licence-protocol socket to serve instead of binding `listen`
    /// (handed over by a supervisor, or kept by a test across a restart).
    pub listener: Option<Arc<std::net::TcpListener>>,
    /// UDP address for discovery (None: no discovery).
    pub discovery: Option<SocketAddr>,
    /// Daemons to ask directly when looking for duplicates of this daemon's keys.
    pub peers: Vec<SocketAddr>,
    pub limits: Limits,
    /// The vendors whose keys this daemon installs (the demo vendor only with `demo`).
    pub vendor_keys: Vec<VendorPublicKey>,
    /// Where the host's machine identifiers are read from (tests give their own).
    pub host: HostSource,
    /// The web console's settings (host names, metrics access).
    pub console: crate::web::ConsoleConfig,
    /// Log records after which a snapshot is due, if not the store's default (tests).
    pub snapshot_every: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], crate::DEFAULT_PORT)),
            admin_socket: PathBuf::from("/run/netkey/admin.sock"),
            state_dir: PathBuf::from("/var/lib/netkey"),
            demo: false,
            no_broadcast: false,
            listener: None,
            discovery: Some(SocketAddr::from(([0, 0, 0, 0], crate::DEFAULT_PORT))),
            peers: Vec::new(),
            limits: Limits::default(),
            vendor_keys: Vec::new(),
            host: HostSource::System,
            console: crate::web::ConsoleConfig::default(),
            snapshot_every: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the admin socket {path}: {source}")]
    AdminSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the demo key did not verify: {0}")]
    DemoKey(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot start: {0}")]
    Startup(String),
    #[error("cannot answer discovery on UDP {addr}: {source}")]
    Discovery {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Identity(String),
    #[error("{0}")]
    Beside(#[from] beside::BesideError),
}

/// What every connection may tell about this daemon.
#[derive(Debug)]
pub struct DaemonInfo {
    pub daemon_id: String,
    /// The daemon identity: behind the TLS certificate, named by host-bound keys.
    pub identity: Arc<crate::identity::Identity>,
    pub software: String,
    pub listen: String,
    /// Where discovery answers, if it runs.
    pub discovery: Option<SocketAddr>,
    /// Failed enrolment codes and logins, per source and in total.
    pub guesses: std::sync::Mutex<guess::GuessLimiter>,
    /// Other daemons found offering a key this one hosts.
    pub duplicates: Arc<std::sync::Mutex<Vec<crate::discovery::DuplicateKey>>>,
    pub demo: bool,
    pub started_at: Timestamp,
    pub limits: Limits,
    pub tls: TlsConfigs,
    /// Vendors whose keys and tokens this daemon accepts.
    pub trust: Vec<VendorPublicKey>,
    /// Where the host's machine identifiers come from.
    pub host_source: HostSource,
    /// Keys returned from this daemon (kept beside the identity).
    pub returned: std::sync::Mutex<ReturnedKeys>,
    pub state_dir: PathBuf,
}

/// The TLS configurations made from the daemon identity at start.
#[derive(Debug)]
pub struct TlsConfigs {
    pub licence: Arc<rustls::ServerConfig>,
    pub web: Arc<rustls::ServerConfig>,
}

impl TlsConfigs {
    fn new(
        identity: &crate::identity::Identity,
        daemon_id: &str,
    ) -> Result<TlsConfigs, DaemonError> {
        let tls_err = |e: crate::tls::TlsError| DaemonError::Startup(e.to_string());
        let (cert, key) =
            crate::tls::certificate(identity, &[daemon_id.to_string(), "localhost".into()])
                .map_err(tls_err)?;
        Ok(TlsConfigs {
            licence: crate::tls::licence_server_config(cert.clone(), key.clone_key())
                .map_err(tls_err)?,
            web: crate::tls::web_server_config(cert, key).map_err(tls_err)?,
        })
    }
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    local_addr: SocketAddr,
    admin_socket: PathBuf,
    info: Arc<DaemonInfo>,
    core: CoreHandle,
    web: Arc<crate::web::WebContext>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    owner: tokio::task::JoinHandle<Core>,
}

impl Daemon {
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Daemon, DaemonError> {
        let state_err = |source| DaemonError::StateDir {
            path: config.state_dir.clone(),
            source,
        };
        crate::files::ensure_private_dir(&config.state_dir).map_err(state_err)?;
        let identity = Arc::new(
            crate::identity::Identity::load_or_create(&config.state_dir)
                .map_err(|e| DaemonError::Identity(e.to_string()))?,
        );
        let daemon_id = identity.public().daemon_id();
        let (mut store, loaded) = Store::open(&config.state_dir)?;
        if let Some(records) = config.snapshot_every {
            store.set_snapshot_every(records);
        }
        tracing::info!(
            state_dir = %config.state_dir.display(),
            replayed = loaded.replayed,
            repaired = loaded.repaired,
            servers = loaded.core.server_count(),
            "state loaded"
        );
        if loaded.repaired {
            tracing::warn!(
                state_dir = %config.state_dir.display(),
                "the state store was not closed cleanly and its last commit did not record redb's allocator state: it was checked page by page"
            );
        }
        let returned = ReturnedKeys::load(&config.state_dir)?;
        let guard = clockguard::ClockGuard::load(config.state_dir.clone(), loaded.hwm)?;
        // Time resumes from the last persisted instant if the wall clock is behind it.
        let daemon_clock = crate::clock::floored(clock, loaded.hwm);
        let clock: Arc<dyn Clock> = daemon_clock.clone();
        let now = clock.now();
        config.limits.validate().map_err(DaemonError::Startup)?;
        let tls = TlsConfigs::new(&identity, &daemon_id)?;
        let demo_key = if config.demo {
            let vendor = demo_vendor();
            let file = vendor
                .issue(&demo_key(now))
                .map_err(|e| DaemonError::DemoKey(e.to_string()))?;
            let key = SignedKey::verify(&file, &[vendor.public()])
                .map_err(|e| DaemonError::DemoKey(e.to_string()))?;
            (!loaded.core.has_key(&key.document.key_id)).then_some((key.document, file))
        } else {
            None
        };
        let core = loaded.core;
        let listen_err = |source: std::io::Error| DaemonError::Listen {
            addr: config.listen,
            source: port_error(config.listen, source, "tcp"),
        };
        let listener = match &config.listener {
            Some(given) => {
                let own = given.try_clone().map_err(listen_err)?;
                own.set_nonblocking(true).map_err(listen_err)?;
                TcpListener::from_std(own).map_err(listen_err)?
            }
            None => TcpListener::bind(config.listen).await.map_err(listen_err)?,
        };
        let local_addr = listener
            .local_addr()
            .map_err(|source| DaemonError::Listen {
                addr: config.listen,
                source,
            })?;
        let admin =
            admin::bind(&config.admin_socket)
                .await
                .map_err(|source| DaemonError::AdminSocket {
                    path: config.admin_socket.clone(),
                    source,
                })?;
        let local_socket = local_socket_beside(&config.admin_socket);
        let local =
            local::bind(&local_socket)
                .await
                .map_err(|source| DaemonError::AdminSocket {
                    path: local_socket.clone(),
                    source,
                })?;
        let software = format!("netkeyd {}", env!("CARGO_PKG_VERSION"));
        let shutdown = CancellationToken::new();
        let duplicates = Arc::new(std::sync::Mutex::new(Vec::new()));
        let template = crate::discovery::Offer {
            nonce: 0,
            daemon_id: daemon_id.clone(),
            tcp_port: local_addr.port(),
            tcp_addr: (!local_addr.ip().is_unspecified()).then(|| local_addr.to_string()),
            tls_identity: Some(identity.public().fingerprint()),
            software: software.clone(),
            keys: Vec::new(),
            truncated: false,
        };
        let (offer_tx, offer_rx) = tokio::sync::watch::channel(template);
        let responder = match config.discovery {
            Some(bind) => {
                // Broadcast only where allowed: never in demo mode, with explicit peers,
                // or with --no-broadcast.
                let broadcast = !config.demo && !config.no_broadcast && config.peers.is_empty();
                let r = crate::discovery::spawn_responder(
                    bind,
                    offer_rx,
                    config.peers.clone(),
                    broadcast,
                    duplicates.clone(),
                    shutdown.clone(),
                )
                .map_err(|source| DaemonError::Discovery {
                    addr: bind,
                    source: port_error(bind, source, "udp"),
                })?;
                Some(r)
            }
            None => None,
        };
        let info = Arc::new(DaemonInfo {
            daemon_id,
            identity,
            software,
            listen: local_addr.to_string(),
            discovery: responder.as_ref().map(|r| r.local_addr),
            demo: config.demo,
            started_at: now,
            duplicates,
            guesses: std::sync::Mutex::new(guess::GuessLimiter::default()),
            limits: config.limits.clone(),
            tls,
            trust: {
                let mut t = config.vendor_keys.clone();
                if config.demo {
                    t.push(demo_vendor().public());
                }
                t
            },
            host_source: config.host.clone(),
            returned: std::sync::Mutex::new(returned),
            state_dir: config.state_dir.clone(),
        });
        let (handle, owner) =
            owner::spawn(core, store, clock, Some(offer_tx), shutdown.child_token());
        handle
            .call(move |o| o.watch_clock(guard, daemon_clock))
            .await
            .map_err(|e| DaemonError::Startup(e.to_string()))?;
        // Mark the restart in the log before anything else, durably.
        handle
            .execute(Command::Restarted)
            .await
            .map_err(|e| DaemonError::Startup(e.to_string()))?;
        if let Some((document, file)) = demo_key {
            let key = document.key_id.clone();
            let commands = [
                Command::InstallKey {
                    document,
                    demo: true,
                },
                Command::KeyChecked {
                    key,
                    binding: "DEMO key: not host-bound".into(),
                    refused: None,
                    signer: Some(demo_vendor().public().fingerprint()),
                    file: Some(file),
                },
            ];
            for command in commands {
                match handle.execute(command).await {
                    Ok(Outcome::Refused(r)) => return Err(DaemonError::DemoKey(r.to_string())),
                    Ok(_) => {}
                    Err(e) => return Err(DaemonError::DemoKey(e.to_string())),
                }
            }
        }
        keys::check_at_start(&handle, &info)
            .await
            .map_err(DaemonError::Startup)?;
        let console =
            Arc::new(crate::web::Console::open(Some(&config.state_dir)).map_err(state_err)?);
        let api = admin::AdminApi {
            core: handle.clone(),
            info: info.clone(),
            console: console.clone(),
        };
        let web = Arc::new(crate::web::WebContext {
            admin: api.clone(),
            console,
            config: config.console.clone(),
            shutdown: shutdown.clone(),
        });
        let mut tasks = vec![
            tokio::spawn(listener::accept_loop(
                listener,
                handle.clone(),
                info.clone(),
                web.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(local::serve(
                local,
                handle.clone(),
                info.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(admin::serve(admin, api, shutdown.clone())),
        ];
        // Shutdown waits for the discovery task too, so its socket is closed on return.
        if let Some(r) = responder {
            tasks.push(r.task);
        }
        tracing::info!(
            listen = %local_addr,
            admin_socket = %config.admin_socket.display(),
            daemon_id = %info.daemon_id,
            demo = config.demo,
            "netkeyd ready{}",
            if config.demo { " (DEMO mode: built-in demo vendor and DEMO key)" } else { "" }
        );
        Ok(Daemon {
            local_addr,
            admin_socket: config.admin_socket,
            info,
            core: handle,
            web,
            shutdown,
            tasks,
            owner,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }
    /// The local licence socket, where local keys are served.
    pub fn local_socket(&self) -> PathBuf {
        local_socket_beside(&self.admin_socket)
    }
    /// The UDP address discovery answers on.
    pub fn discovery_addr(&self) -> Option<SocketAddr> {
        self.info.discovery
    }
    pub fn daemon_id(&self) -> &str {
        &self.info.daemon_id
    }
    /// Direct access to the core task, for in-process tests and tools.
    pub fn core(&self) -> &CoreHandle {
        &self.core
    }
    /// The web console, for serving a connection by hand (`web::serve_http`).
    pub fn web(&self) -> Arc<crate::web::WebContext> {
        self.web.clone()
    }
    /// One line on keys, seat use, servers and the store, as systemd's STATUS= shows it.
    pub async fn status_line(&self) -> String {
        self.core
            .call(|o| owner::status_line(o))
            .await
            .unwrap_or_else(|e| e.to_string())
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, closes every connection, lets the core task answer what is
    /// queued, and returns the final core state.
    pub async fn shutdown(self) -> Core {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.admin_socket);
        let _ = std::fs::remove_file(local_socket_beside(&self.admin_socket));
        self.owner.await.unwrap_or_default()
    }
}

/// The local licence socket lives beside the admin socket (`/run/netkey/local.sock` under
/// the shipped unit): same directory, same protection.
pub fn local_socket_beside(admin_socket: &Path) -> PathBuf {
    admin_socket.with_file_name("local.sock")
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    // The system RNG failing is unrecoverable for a licence server; ids would collide.
    #[allow(clippy::expect_used)]
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random number generator failed");
    b
}

/// Eight random digits, uniformly distributed (rejection sampling avoids modulo bias).
pub(crate) fn enrolment_code() -> String {
    loop {
        let v = u32::from_le_bytes(random_bytes::<4>());
        if v < 4_200_000_000 {
            return format!("{:08}", v % 100_000_000);
        }
    }
}
