//! One connection to a daemon: the version handshake, request ids, and pushes that
//! arrive between answers (kept until read).

use super::ClientError;
use crate::proto::{
    self, ClientFrame, HostedKey, Push, Request, Response, ServerFrame, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub daemon_id: String,
    pub software: String,
    pub keys: Vec<HostedKey>,
}

#[derive(Debug)]
pub struct Connection {
    framed: proto::Framed<TcpStream>,
    next_id: u32,
    pushes: VecDeque<Push>,
    pub welcome: Welcome,
    pub addr: String,
}

impl Connection {
    pub async fn connect(addr: &str) -> Result<Connection, ClientError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Unreachable {
                addr: addr.to_string(),
                reason: "timed out".into(),
            })?
            .map_err(|e| ClientError::Unreachable {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        Self::over(stream, addr).await
    }

    /// The version handshake over a stream the caller connected (from a chosen source
    /// address, say: `netkey-bench` spreads its simulated servers over 127.0.0.x).
    pub async fn over(stream: TcpStream, addr: &str) -> Result<Connection, ClientError> {
        let _ = stream.set_nodelay(true);
        let mut conn = Connection {
            framed: proto::framed(stream),
            next_id: 1,
            pushes: VecDeque::new(),
            welcome: Welcome {
                daemon_id: String::new(),
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
            Response::Welcome {
                daemon_id,
                software,
                keys,
                ..
            } => {
                conn.welcome = Welcome {
                    daemon_id,
                    software,
                    keys,
                };
                Ok(conn)
            }
            other => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
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
