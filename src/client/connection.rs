//! One connection to a daemon: TLS 1.3 (this server's identity as client certificate),
//! the version handshake, request ids, and pushes that arrive between answers (kept until
//! read). Whether the daemon is trustworthy is the caller's decision (`trust`), made
//! from `Welcome` before anything that matters is sent.

use super::ClientError;
use crate::proto::{
    self, ClientFrame, HostedKey, Push, Request, Response, ServerFrame, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A byte stream to the daemon: TCP, or the local socket (`unix:PATH`).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The identity the daemon proved in the TLS handshake.
    pub identity: crate::identity::PublicKey,
    /// Derived from `identity`, never taken from what the daemon says.
    pub daemon_id: String,
    pub software: String,
    pub keys: Vec<HostedKey>,
}

pub struct Connection {
    framed: proto::Framed<TlsStream<Box<dyn Io>>>,
    next_id: u32,
    pushes: VecDeque<Push>,
    pub welcome: Welcome,
    pub addr: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("daemon_id", &self.welcome.daemon_id)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects over TCP (from `source` if given, e.g. one of many loopback addresses),
    /// or to the local socket when `addr` is `unix:PATH`; then TLS with `tls` (see
    /// `tls::licence_client_config`), then Hello.
    pub async fn connect_from(
        addr: &str,
        source: Option<std::net::IpAddr>,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Connection, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let setup = async {
            let stream: Box<dyn Io> = match (addr.strip_prefix("unix:"), source) {
                // Local keys are served only here, on this host.
                (Some(path), _) => Box::new(tokio::net::UnixStream::connect(path).await?),
                (None, None) => {
                    let s = TcpStream::connect(addr).await?;
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
                (None, Some(ip)) => {
                    let target = tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                    })?;
                    let socket = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(std::net::SocketAddr::new(ip, 0))?;
                    let s = socket.connect(target).await?;
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
            };
            let name = rustls::pki_types::ServerName::try_from(crate::tls::SERVER_NAME)
                .map_err(std::io::Error::other)?;
            tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, stream)
                .await
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let identity = crate::tls::peer_identity(stream.get_ref().1.peer_certificates())
            .ok_or_else(|| unreachable("the daemon proved no identity".into()))?;
        let mut conn = Connection {
            framed: proto::framed(stream),
            next_id: 1,
            pushes: VecDeque::new(),
            welcome: Welcome {
                identity,
                daemon_id: identity.daemon_id(),
                software: String::new(),
                keys: Vec::new(),
            },
            addr: addr.to_string(),
        };
        let hello = Request::Hello {
            protocol: PROTOCOL_VERSION,
            software: format!("netkey-client {}", env!("CARGO_PKG_VERSION")),
        };
        match conn.request(hello).await? {
            Response::Welcome { software, keys, .. } => {
                conn.welcome.software = software;
                conn.welcome.keys = keys;
                Ok(conn)
            }
            other => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    }

    pub async fn connect(
        addr: &str,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Connection, ClientError> {
        Self::connect_from(addr, None, tls).await
    }

    /// Sends one request and waits for its answer; pushes that arrive meanwhile are kept.
    pub async fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.send(request).await?;
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read_frame())
                .await
                .map_err(|_| ClientError::Protocol("the daemon did not answer in time".into()))??;
            match frame {
                ServerFrame::Response { id: got, response } if got == id => {
                    return match response {
                        Response::Error { reason } => Err(ClientError::Protocol(reason)),
                        other => Ok(other),
                    }
                }
                ServerFrame::Response {
                    response: Response::Error { reason },
                    ..
                } => return Err(ClientError::Protocol(reason)),
                ServerFrame::Response { id: got, .. } => {
                    return Err(ClientError::Protocol(format!(
                        "answer to request {got}, expected {id}"
                    )))
                }
                ServerFrame::Push(p) => self.pushes.push_back(p),
            }
        }
    }

    /// Sends a request without waiting; returns its id.
    pub async fn send(&mut self, request: Request) -> Result<u32, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let bytes = proto::encode(&ClientFrame { id, request })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.framed.send(bytes).await.map_err(ClientError::Io)?;
        Ok(id)
    }

    /// Reads the next frame of any kind.
    pub async fn read_frame(&mut self) -> Result<ServerFrame, ClientError> {
        match self.framed.next().await {
            None => Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection",
            ))),
            Some(Err(e)) => Err(ClientError::Io(e)),
            Some(Ok(bytes)) => {
                proto::decode(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
            }
        }
    }

    pub fn take_pushes(&mut self) -> Vec<Push> {
        self.pushes.drain(..).collect()
    }
}
