//! The licence protocol spoken on TCP 1947 (inside TLS once the Security issue lands):
//! postcard-encoded messages in length-delimited frames. Shared by daemon and client so
//! both use one encoding per message. `docs/PROTOCOL.md` specifies it byte by byte.

pub mod admin;
mod frame;
mod message;

pub use frame::{codec, decode, encode, framed, FrameError, Framed, MAX_FRAME};
pub use message::*;
