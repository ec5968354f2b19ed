//! A minimal video server that licenses its cameras with `netkey::client`.
//!
//! ```text
//! cargo run --example video_server -- STATE_FILE DAEMON_ADDR [CODE] CAMERA...
//! ```
//! With a CODE (8 digits from `netkeyctl pool code Default`) it enrols first. It then
//! records every camera it holds a licence for, stops a camera the moment the daemon
//! revokes it (moved, freed, kicked), and stops everything when its grace period ends.
//! Ctrl-C stops it; its licences stay reserved for it until its grace period ends, so a
//! restart picks them up again.

use netkey::client::{Client, ClientEvent, Trust, VideoServer};
use netkey::core::CheckoutItem;
use std::collections::BTreeSet;
use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(state), Some(daemon)) = (args.next(), args.next()) else {
        eprintln!("usage: video_server STATE_FILE DAEMON_ADDR [CODE] CAMERA...");
        std::process::exit(2);
    };
    let mut rest: Vec<String> = args.collect();
    // A real product compiles its vendor's public keys in: `Trust::Vendors(vec![...])`.
    // This example talks to `netkeyd --demo`.
    let mut client = Client::open(&PathBuf::from(state), Trust::Demo, Some(daemon))?;
    if rest
        .first()
        .is_some_and(|a| a.len() == 8 && a.bytes().all(|b| b.is_ascii_digit()))
    {
        let code = rest.remove(0);
        let binding = client
            .enrol(&code, "example video server", env!("CARGO_PKG_VERSION"))
            .await?;
        println!("enrolled as {} in pool {}", binding.server_id, binding.pool);
    }
    let cameras: Vec<CheckoutItem> = rest.iter().map(|c| CheckoutItem::camera(c)).collect();

    let (tx, mut events) = tokio::sync::mpsc::channel(256);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let session = tokio::spawn(VideoServer::new(client, cameras).run(tx, shutdown.clone()));
    let mut recording = BTreeSet::new();
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                match &event {
                    ClientEvent::Granted { camera, .. } => { recording.insert(camera.clone()); }
                    ClientEvent::Revoked { camera, .. } | ClientEvent::Lost { camera, .. } => { recording.remove(camera); }
                    ClientEvent::GraceEnded { .. } | ClientEvent::Unenrolled { .. } => recording.clear(),
                    _ => {}
                }
                println!("{event}; recording {} cameras", recording.len());
            }
            _ = tokio::signal::ctrl_c() => shutdown.cancel(),
        }
    }
    session.await??;
    Ok(())
}
