//! netkey-vendor: the vendor's tool. Makes signing keys, issues signed keys from a TOML
//! spec, and verifies key files.

use clap::Parser;
use netkey::core::Timestamp;
use netkey::key::{KeySpec, SignedKey, VendorKeyPair, VendorPublicKey};
use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use netkey::cli::vendor::*;

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netkey-vendor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Keygen { out } => {
            std::fs::create_dir_all(&out)
                .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
            let pair = VendorKeyPair::generate().map_err(|e| e.to_string())?;
            write_private(&out.join("vendor.key"), &pair.to_text())?;
            let public = out.join("vendor.pub");
            std::fs::write(&public, pair.public().to_text())
                .map_err(|e| format!("cannot write {}: {e}", public.display()))?;
            println!(
                "vendor key {}: secret {} (keep it offline), public {}",
                pair.public().fingerprint(),
                out.join("vendor.key").display(),
                public.display()
            );
        }
        Command::Issue {
            spec,
            signing_key,
            out,
        } => {
            let pair = VendorKeyPair::from_text(&read(&signing_key)?)
                .map_err(|e| format!("{}: {e}", signing_key.display()))?;
            let spec_doc = KeySpec::from_toml(&read(&spec)?)
                .map_err(|e| format!("{}: {e}", spec.display()))?;
            let now = Timestamp::from_system_time(SystemTime::now());
            let doc = spec_doc
                .into_document(now)
                .map_err(|e| format!("{}: {e}", spec.display()))?;
            let file = pair.issue(&doc).map_err(|e| e.to_string())?;
            std::fs::write(&out, file)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            println!(
                "issued key {} revision {} for {:?} -> {}",
                doc.key_id,
                doc.revision,
                doc.customer,
                out.display()
            );
        }
        Command::Verify { file, public_key } => {
            let vendor = VendorPublicKey::from_text(&read(&public_key)?)
                .map_err(|e| format!("{}: {e}", public_key.display()))?;
            let key = SignedKey::verify(&read(&file)?, &[vendor])
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let d = &key.document;
            println!(
                "valid key {} revision {} ({:?}) for {:?}, signed by vendor {}{}",
                d.key_id,
                d.revision,
                d.kind,
                d.customer,
                key.signer,
                if key.is_demo() { " [DEMO]" } else { "" }
            );
            for e in &d.entries {
                println!(
                    "  {} x{} until {} (order {})",
                    e.feature, e.count, e.not_after, e.order
                );
            }
        }
    }
    Ok(())
}
