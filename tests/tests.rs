//! Integration tests: one binary. `inprocess` runs the daemon inside the test with an
//! injected clock; `blackbox` starts the real binaries on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod bench;
mod blackbox;
mod discovery;
mod durability;
mod fuzz_corpus;
mod inprocess;
mod keys;
mod keys_blackbox;
mod netns;
mod outage;
mod protocol_doc;
mod security;
mod util;
mod web;
