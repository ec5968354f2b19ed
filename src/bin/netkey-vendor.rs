//! netkey-vendor: the vendor's tool. Makes signing keys, issues signed keys from a TOML
//! spec, activates them for a customer's daemon from its activation request, signs
//! clock-reset tokens, and verifies keys, tokens, requests, return receipts and usage
//! reports.

use clap::Parser;
use netkey::core::Timestamp;
use netkey::identity::PublicKey;
use netkey::key::{
    ActivationRequest, ClockResetToken, DaemonDoc, DaemonDocKind, KeySpec, ReturnReceipt,
    SignedKey, UsageReport, VendorKeyPair, VendorPublicKey,
};
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

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
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

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

fn signing_key(path: &Path) -> Result<VendorKeyPair, String> {
    VendorKeyPair::from_text(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

fn public_key(path: &Path) -> Result<VendorPublicKey, String> {
    VendorPublicKey::from_text(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

fn spec(path: &Path) -> Result<KeySpec, String> {
    KeySpec::from_toml(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads an activation request and checks the daemon's signature on it.
fn request(path: &Path) -> Result<ActivationRequest, String> {
    DaemonDoc::open(&read(path)?)
        .and_then(|d| d.parse(DaemonDocKind::ActivationRequest))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn identity_line(b64: &str) -> String {
    match PublicKey::from_base64(b64) {
        Ok(p) => format!("daemon {} (identity {})", p.daemon_id(), p.fingerprint()),
        Err(_) => format!("an unreadable identity {b64:?}"),
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Keygen { out } => {
            std::fs::create_dir_all(&out)
                .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
            let pair = VendorKeyPair::generate().map_err(|e| e.to_string())?;
            write_private(&out.join("vendor.key"), &pair.to_text())?;
            let public = out.join("vendor.pub");
            write(&public, &pair.public().to_text())?;
            println!(
                "vendor key {}: secret {} (keep it offline), public {}",
                pair.public().fingerprint(),
                out.join("vendor.key").display(),
                public.display()
            );
        }
        Command::Issue {
            spec: spec_path,
            signing_key: key_path,
            out,
        } => {
            let pair = signing_key(&key_path)?;
            let doc = spec(&spec_path)?
                .into_document(now())
                .map_err(|e| format!("{}: {e}", spec_path.display()))?;
            let file = pair.issue(&doc).map_err(|e| e.to_string())?;
            write(&out, &file)?;
            println!(
                "issued key {} revision {} for {:?} -> {}",
                doc.key_id,
                doc.revision,
                doc.customer,
                out.display()
            );
            if doc.host.is_none() {
                println!("note: the key is not host-bound; a daemon installs it only once activated for its host (netkey-vendor activate)");
            }
        }
        Command::Activate {
            request: request_path,
            spec: spec_path,
            signing_key: key_path,
            out,
        } => {
            let pair = signing_key(&key_path)?;
            let req = request(&request_path)?;
            let doc = spec(&spec_path)?
                .activate(&req, now())
                .map_err(|e| format!("{}: {e}", spec_path.display()))?;
            let file = pair.issue(&doc).map_err(|e| e.to_string())?;
            write(&out, &file)?;
            println!(
                "activated key {} revision {} for {:?} on {} -> {}",
                doc.key_id,
                doc.revision,
                doc.customer,
                identity_line(&req.daemon_identity),
                out.display()
            );
            if req.host.hardware.is_empty() {
                println!("WARNING: the request carries no hardware identifier: a clone of that host cannot be told apart");
            }
        }
        Command::ClockReset {
            request: request_path,
            signing_key: key_path,
            out,
            mark,
        } => {
            let pair = signing_key(&key_path)?;
            let req = request(&request_path)?;
            let mark = match (mark, req.clock_rollback) {
                (Some(m), _) => Timestamp::parse_rfc3339(&m).map_err(|e| format!("--mark: {e}"))?,
                (None, Some(m)) => m,
                (None, None) => {
                    return Err(format!(
                        "{}: the daemon reported no clock rollback; give the mark with --mark",
                        request_path.display()
                    ))
                }
            };
            let id: [u8; 8] = {
                use ring::rand::SecureRandom;
                let mut b = [0u8; 8];
                ring::rand::SystemRandom::new()
                    .fill(&mut b)
                    .map_err(|_| "the system random number generator failed".to_string())?;
                b
            };
            let token = ClockResetToken {
                token_id: netkey::hex(&id),
                daemon_identity: req.daemon_identity.clone(),
                mark,
                issued_at: now(),
            };
            write(&out, &token.sign(&pair).map_err(|e| e.to_string())?)?;
            println!(
                "clock-reset token {} for {}, clearing the mark {mark} once -> {}",
                token.token_id,
                identity_line(&req.daemon_identity),
                out.display()
            );
        }
        Command::Verify {
            file,
            public_key: pk,
            key,
        } => verify(&file, pk.as_deref(), key.as_deref())?,
    }
    Ok(())
}

fn verify(file: &Path, pk: Option<&Path>, key: Option<&Path>) -> Result<(), String> {
    let text = read(file)?;
    let shown = file.display();
    let vendor = pk.map(public_key).transpose()?;
    if DaemonDoc::sniff(&text) {
        let doc = DaemonDoc::open(&text).map_err(|e| format!("{shown}: {e}"))?;
        let expected = match (key, &vendor) {
            (Some(k), Some(v)) => Some(
                SignedKey::verify(&read(k)?, std::slice::from_ref(v))
                    .map_err(|e| format!("{}: {e}", k.display()))?,
            ),
            (Some(_), None) => return Err("--key needs --public-key to check the key".into()),
            _ => None,
        };
        let who = identity_line(&doc.identity.to_base64());
        match doc.kind {
            DaemonDocKind::ActivationRequest => {
                let r: ActivationRequest = doc
                    .parse(DaemonDocKind::ActivationRequest)
                    .map_err(|e| format!("{shown}: {e}"))?;
                println!(
                    "valid activation request of {who}, made {} by {}",
                    r.made_at, r.software
                );
                let labels = |v: &[String]| {
                    v.iter()
                        .map(|h| h.split(':').next().unwrap_or("?").to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("  hardware identifiers: {}", labels(&r.host.hardware));
                println!("  software identifiers: {}", labels(&r.host.software));
                if let Some(m) = r.clock_rollback {
                    println!("  clock rolled back behind the mark {m} (netkey-vendor clock-reset can clear it)");
                }
                for k in &r.keys {
                    println!(
                        "  hosts key {} revision {}: {}",
                        k.key_id, k.revision, k.binding
                    );
                }
            }
            DaemonDocKind::ReturnReceipt => {
                let r: ReturnReceipt = doc
                    .parse(DaemonDocKind::ReturnReceipt)
                    .map_err(|e| format!("{shown}: {e}"))?;
                println!(
                    "valid return receipt: key {} revision {} ({:?}) returned by {who} at {}{}",
                    r.key_id,
                    r.revision,
                    r.customer,
                    r.returned_at,
                    if r.forced {
                        format!(" by force ({} leases dropped)", r.leases_dropped)
                    } else {
                        String::new()
                    }
                );
                println!(
                    "  audit log head: {} records, {}",
                    r.audit_count, r.audit_hash
                );
                if let Some(k) = expected {
                    let d = &k.document;
                    let bound = d.host.as_ref().map(|h| h.daemon_identity.as_str());
                    if d.key_id != r.key_id || bound != Some(r.daemon_identity.as_str()) {
                        return Err(format!(
                            "{shown}: the receipt is not for key {} as activated for {} (it names key {} on {who})",
                            d.key_id,
                            bound.map(identity_line).unwrap_or_else(|| "no host".into()),
                            r.key_id
                        ));
                    }
                    if r.revision < d.revision {
                        return Err(format!(
                            "{shown}: the receipt returns revision {}, but revision {} was issued since",
                            r.revision, d.revision
                        ));
                    }
                    println!("  matches key {} revision {} as activated for that daemon: it may be activated for another host", d.key_id, d.revision);
                }
            }
            DaemonDocKind::UsageReport => {
                let r: UsageReport = doc
                    .parse(DaemonDocKind::UsageReport)
                    .map_err(|e| format!("{shown}: {e}"))?;
                println!(
                    "valid usage report: key {} revision {} ({:?}) on {who}, made {}",
                    r.key_id, r.revision, r.customer, r.made_at
                );
                let licensed: Vec<String> =
                    r.licensed.iter().map(|(f, n)| format!("{f} {n}")).collect();
                println!("  licensed now: {}", licensed.join(", "));
                println!(
                    "  overdraft: {} seats, {} of {} hours used in the last 30 days",
                    r.overdraft_seats, r.overdraft_hours_last_30_days, r.overdraft_hours_allowed
                );
                for d in &r.days {
                    let peaks: Vec<String> =
                        d.peak.iter().map(|(f, n)| format!("{f} {n}")).collect();
                    println!(
                        "  {}  peak {}{}",
                        d.date,
                        peaks.join(", "),
                        if d.overdraft_hours > 0.0 {
                            format!("  overdraft {} h", d.overdraft_hours)
                        } else {
                            String::new()
                        }
                    );
                }
                if let Some(k) = expected {
                    if k.document.key_id != r.key_id
                        || k.document.host.as_ref().map(|h| h.daemon_identity.as_str())
                            != Some(r.daemon_identity.as_str())
                    {
                        return Err(format!(
                            "{shown}: the report is not from the daemon key {} was activated for",
                            k.document.key_id
                        ));
                    }
                    println!(
                        "  comes from the daemon key {} was activated for",
                        k.document.key_id
                    );
                }
            }
        }
        return Ok(());
    }
    let vendor = vendor.ok_or_else(|| {
        format!("{shown}: a key file or clock-reset token is checked against the vendor's public key: give --public-key")
    })?;
    let trusted = [vendor];
    if ClockResetToken::sniff(&text) {
        let t = ClockResetToken::verify(&text, &trusted).map_err(|e| format!("{shown}: {e}"))?;
        println!(
            "valid clock-reset token {} for {}: clears the mark {} once (issued {})",
            t.token_id,
            identity_line(&t.daemon_identity),
            t.mark,
            t.issued_at
        );
        return Ok(());
    }
    let key = SignedKey::verify(&text, &trusted).map_err(|e| format!("{shown}: {e}"))?;
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
    match &d.host {
        Some(h) => println!(
            "  bound to {} ({} hardware, {} software identifiers)",
            identity_line(&h.daemon_identity),
            h.hardware.len(),
            h.software.len()
        ),
        None => println!("  not host-bound: a daemon installs it only once activated"),
    }
    for e in &d.entries {
        println!(
            "  {} x{} until {} (order {})",
            e.feature, e.count, e.not_after, e.order
        );
    }
    Ok(())
}
