//! netkey: an on-premises floating-licence server for video surveillance.
//!
//! Layers, with arrows one way: `bin` -> `daemon` / `client` -> `proto` -> `core` -> `key`.
//! - [`key`]: signed key documents (entries, policy, classes), vendor keys, the demo key.
//! - [`core`]: the pure allocation state machine (no I/O, no clock).
//! - [`proto`]: messages and framing shared by daemon and client.
//! - [`daemon`]: `netkeyd`: listeners, connections, the task that owns the core, admin.
//! - [`client`]: what a video server embeds.
//! - [`bench`]: `netkey-bench`, simulated video servers against a real daemon and redis.
//! - [`web`]: the web console on the licence port (HTTP/1.1, server-rendered pages).
//! - [`clock`]: where "now" comes from: the system's monotonic clock, or a test's.

/// The licence protocol's TCP port and discovery's UDP port (shared with Sentinel's
/// License Manager on many LANs, which is why datagrams carry a magic prefix).
pub const DEFAULT_PORT: u16 = 1947;

/// Lower-case hex of `bytes`: how ids, hashes and fingerprints are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod core;
pub mod daemon;
pub mod discovery;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod key;
pub mod proto;
pub mod store;
pub mod tls;
pub mod web;
