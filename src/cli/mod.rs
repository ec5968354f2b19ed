//! The command lines of the three binaries, defined once (clap derive) and used by the
//! binaries, the man pages and the shell completions.

pub mod netkeyctl;
pub mod netkeyd;
pub mod table;
pub mod vendor;
