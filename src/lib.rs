//! netkey: an on-premises floating-licence server for video surveillance.
//!
//! Layers, with arrows one way: `bin` -> `daemon` / `client` -> `proto` -> `core` -> `key`.
//! - [`key`]: signed key documents (entries, policy, classes), vendor keys, the demo key.
//! - [`core`]: the pure allocation state machine (no I/O, no clock).
//! - [`proto`]: messages and framing shared by daemon and client.
//! - [`daemon`]: `netkeyd`: listeners, connections, the task that owns the core, admin.
//! - [`client`]: what a video server embeds.
//! - [`admin`]: the admin API shared by `netkeyctl` and (later) the web console.

pub mod core;
pub mod key;
