//! The keys a daemon hosts, as the administrator handles them: installation (trusted
//! vendors only, bound to this host, never a returned key), activation requests, returns
//! with signed receipts, usage reports and clock-reset tokens. At start, every hosted key
//! is checked again against this host and the record of returned keys: a cloned machine,
//! or a restore that brings back a returned key, serves nothing from it.

use super::admin::wait_for_acks;
use super::beside::ReturnedKey;
use super::owner::{CoreHandle, Owner};
use super::DaemonInfo;
use crate::core::{Command, Outcome, Refusal, ReturnOutcome, Timestamp};
use crate::key::host::{self, BindingOk};
use crate::key::signed::{daemon_sign, RequestedKey};
use crate::key::{
    demo_vendor, ActivationRequest, ClockResetToken, DaemonDocKind, DayUsage, HostValues,
    KeyDocument, KeyError, ReturnReceipt, SignedKey, UsageReport,
};
use crate::outcome;
use crate::proto::admin::{ClockResetDone, KeyInstalled, SignedDocument};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How the daemon sees a key it hosts: its binding, and why it is not served (if not).
pub(super) fn verdict(
    doc: &KeyDocument,
    demo: bool,
    signer: Option<&str>,
    info: &DaemonInfo,
    values: &HostValues,
) -> (String, Option<String>) {
    if demo {
        let binding = "DEMO key: not host-bound".to_string();
        return if info.demo {
            (binding, None)
        } else {
            (
                binding,
                Some("a DEMO key is served only by a daemon started with --demo".into()),
            )
        };
    }
    let (binding, refused) = match host::check(doc.host.as_ref(), &info.identity.public(), values) {
        Ok(BindingOk { tolerated: None }) => ("bound to this host".into(), None),
        Ok(BindingOk {
            tolerated: Some(kind),
        }) => (
            format!("bound to this host ({kind} changed: one change is tolerated)"),
            None,
        ),
        Err(e) => ("NOT bound to this host".into(), Some(e.to_string())),
    };
    // A vendor taken out of `vendor_keys` no longer vouches for the keys it signed.
    if let Some(fp) = signer {
        if refused.is_none() && !info.trust.iter().any(|v| v.fingerprint() == fp) {
            return (
                binding,
                Some(format!(
                    "it is signed by vendor {fp}, which this daemon no longer trusts (vendor_keys)"
                )),
            );
        }
    }
    (binding, refused)
}

/// A key-file error, with what the administrator can do about it.
fn explain(e: KeyError, info: &DaemonInfo) -> String {
    let text = e.to_string();
    match e {
        KeyError::UntrustedVendor { signer } => {
            if signer == demo_vendor().public().fingerprint() {
                format!("{text} (the built-in DEMO vendor is trusted only by a daemon started with --demo)")
            } else if info.trust.iter().all(|v| *v == demo_vendor().public()) {
                format!("{text}; no vendor keys are configured: add the vendor's public key (vendor.pub) to vendor_keys in /etc/netkey/netkeyd.toml and restart netkeyd")
            } else {
                let known: Vec<String> = info.trust.iter().map(|v| v.fingerprint()).collect();
                format!("{text} (trusted vendors: {})", known.join(", "))
            }
        }
        _ => text,
    }
}

fn refusal_text(r: Refusal) -> String {
    match r {
        Refusal::BadRequest { reason } => reason,
        other => other.to_string(),
    }
}

/// Installs a key file. Runs in the task that owns the core.
pub(super) fn install(
    o: &mut Owner,
    info: &DaemonInfo,
    text: &str,
) -> Result<KeyInstalled, String> {
    let signed = SignedKey::verify(text, &info.trust).map_err(|e| explain(e, info))?;
    let demo = signed.is_demo();
    let signer = signed.signer;
    let doc = signed.document;
    let key = doc.key_id.clone();
    let returned = info
        .returned
        .lock()
        .map_err(|_| "the record of returned keys is unavailable".to_string())?
        .covering(&key, doc.revision)
        .cloned();
    if let Some(r) = returned {
        return Err(format!(
            "key {key} revision {} was returned from this daemon on {} (revision {} and earlier stay out); the vendor can issue a new revision for this daemon",
            doc.revision, r.returned_at, r.revision
        ));
    }
    let values = info.host_source.read();
    if !demo {
        host::check(doc.host.as_ref(), &info.identity.public(), &values)
            .map_err(|e| format!("key {key} cannot be installed on this daemon: {e}"))?;
    }
    if doc.expires_at() <= o.now {
        return Err(format!(
            "key {key} has expired: its last entry ended at {}",
            doc.expires_at()
        ));
    }
    let (binding, refused) = verdict(&doc, demo, Some(&signer), info, &values);
    let replaced = o.core().key_document(&key).map(|d| d.revision);
    let revision = doc.revision;
    outcome!(o.execute(Command::InstallKey { document: doc, demo }), Outcome::Done => ())
        .map_err(|r| format!("key {key} revision {revision}: {}", refusal_text(r)))?;
    let _ = o.execute(Command::KeyChecked {
        key: key.clone(),
        binding: binding.clone(),
        refused,
        signer: Some(signer),
        file: Some(text.to_string()),
    });
    Ok(KeyInstalled {
        key_id: key,
        revision,
        replaced,
        demo,
        binding,
    })
}

/// At start: keys returned from this daemon are removed (a restore may have brought them
/// back), and every other key is checked against this host again.
pub(super) async fn check_at_start(
    core: &CoreHandle,
    info: &Arc<DaemonInfo>,
) -> Result<(), String> {
    let info = info.clone();
    core.call(move |o| {
        let values = info.host_source.read();
        // Each key with what the daemon last said of it: (binding, why not served).
        type Seen = (KeyDocument, bool, Option<String>, (String, Option<String>));
        let keys: Vec<Seen> = o
            .core()
            .installed_keys()
            .map(|k| {
                let seen = (k.binding.clone(), k.refused.clone());
                (k.document.clone(), k.demo, k.signer.clone(), seen)
            })
            .collect();
        for (doc, demo, signer, seen) in keys {
            let key = doc.key_id.clone();
            let returned = info
                .returned
                .lock()
                .ok()
                .and_then(|r| r.covering(&key, doc.revision).cloned());
            if let Some(r) = returned {
                tracing::warn!(key_id = %key, revision = doc.revision, returned_at = %r.returned_at, "key {key} was returned from this daemon; the restored state still held it: removed");
                let _ = o.execute(Command::DeactivateKey { key: key.clone() });
                let _ = o.execute(Command::ReturnKey { key, force: true });
                continue;
            }
            let verdict = verdict(&doc, demo, signer.as_deref(), &info, &values);
            if verdict != seen {
                let _ = o.execute(Command::KeyChecked {
                    key,
                    binding: verdict.0,
                    refused: verdict.1,
                    signer: None,
                    file: None,
                });
            }
        }
    })
    .await
    .map_err(|e| e.to_string())
}

/// `key request`: what the vendor needs to activate (or repair) a key for this daemon.
pub(super) fn request(o: &mut Owner, info: &DaemonInfo) -> Result<SignedDocument, String> {
    let values = info.host_source.read();
    let salt = crate::hex(&super::random_bytes::<16>());
    let host = values.binding(&info.identity.public(), &salt);
    let keys = o
        .core()
        .key_views(o.now)
        .into_iter()
        .map(|k| RequestedKey {
            key_id: k.key_id,
            revision: k.revision,
            binding: k.problem.unwrap_or(k.binding),
        })
        .collect();
    let request = ActivationRequest {
        daemon_id: info.daemon_id.clone(),
        daemon_identity: info.identity.public().to_base64(),
        made_at: o.now,
        software: info.software.clone(),
        clock_rollback: o.clock_guard().and_then(|g| g.rollback()),
        keys,
        host,
    };
    let text = daemon_sign(&info.identity, DaemonDocKind::ActivationRequest, &request)
        .map_err(|e| e.to_string())?;
    let (hw, sw) = (request.host.hardware.len(), request.host.software.len());
    let mut summary = format!(
        "activation request of daemon {} (identity {}): {hw} hardware and {sw} software identifiers",
        info.daemon_id,
        info.identity.public().fingerprint()
    );
    if hw == 0 {
        summary.push_str(
            "; WARNING: no hardware identifier found, so a clone of this host cannot be told apart",
        );
    }
    Ok(SignedDocument { summary, text })
}

/// `key report`: peak use per feature per day and overdraft hours, signed.
pub(super) fn report(
    o: &mut Owner,
    info: &DaemonInfo,
    key: &str,
) -> Result<SignedDocument, String> {
    use crate::core::time::{DAY, HOUR};
    let now = o.now;
    let k = o
        .core()
        .installed_key(key)
        .ok_or_else(|| Refusal::UnknownKey { key: key.into() }.to_string())?;
    let d = &k.document;
    let mut days: BTreeSet<u64> = k.peaks.keys().copied().collect();
    days.extend(k.overdraft.per_day.keys().copied());
    if k.overdraft.over_since.is_some() {
        days.insert(now.millis() / DAY);
    }
    let days = days
        .into_iter()
        .map(|day| DayUsage {
            date: Timestamp(day * DAY).rfc3339().chars().take(10).collect(),
            peak: k.peaks.get(&day).cloned().unwrap_or_default(),
            overdraft_hours: round2(k.overdraft.day_ms(day, now) as f64 / HOUR as f64),
        })
        .collect();
    let licensed: BTreeMap<String, u64> = d
        .features()
        .into_iter()
        .map(|f| {
            let n = d.total(&f, now);
            (f, n)
        })
        .collect();
    let r = UsageReport {
        key_id: d.key_id.clone(),
        revision: d.revision,
        customer: d.customer.clone(),
        daemon_id: info.daemon_id.clone(),
        daemon_identity: info.identity.public().to_base64(),
        made_at: now,
        licensed,
        days,
        overdraft_seats: d.policy.overdraft_seats,
        overdraft_hours_allowed: d.policy.overdraft_hours,
        overdraft_hours_last_30_days: round2(k.overdraft.used_ms(now) as f64 / HOUR as f64),
    };
    let text =
        daemon_sign(&info.identity, DaemonDocKind::UsageReport, &r).map_err(|e| e.to_string())?;
    Ok(SignedDocument {
        summary: format!(
            "usage report of key {} revision {}: {} days, {} overdraft hours in the last 30 days",
            r.key_id,
            r.revision,
            r.days.len(),
            r.overdraft_hours_last_30_days
        ),
        text,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `key clock-reset`: a vendor's token clears a rollback once.
pub(super) fn clock_reset(
    o: &mut Owner,
    info: &DaemonInfo,
    text: &str,
) -> Result<ClockResetDone, String> {
    let token = ClockResetToken::verify(text, &info.trust).map_err(|e| explain(e, info))?;
    let guard = o
        .clock_guard()
        .ok_or_else(|| "this daemon does not watch its clock".to_string())?;
    let cleared = guard
        .check_token(&token, &info.identity.public())
        .map_err(|e| e.to_string())?;
    let now = o.reset_clock(&token.token_id)?;
    tracing::warn!(mark = %cleared, now = %now, token = %token.token_id, "clock reset by vendor token: the wall clock is trusted again");
    Ok(ClockResetDone { cleared, now })
}

/// `key return`: deactivate, wait briefly for live holders, then (once no lease remains
/// or forced) record the return beside the identity, forget the key and sign a receipt.
pub(super) async fn return_key(
    core: &CoreHandle,
    info: &Arc<DaemonInfo>,
    key: String,
    force: bool,
) -> Result<SignedDocument, String> {
    let k = key.clone();
    let i = info.clone();
    // A key already returned: hand out its receipt again (the first answer may be lost).
    let again = core
        .call(move |o| {
            if o.core().has_key(&k) {
                return None;
            }
            i.returned
                .lock()
                .ok()?
                .keys
                .iter()
                .find(|r| r.key_id == k)
                .and_then(|r| r.receipt.clone())
        })
        .await
        .map_err(|e| e.to_string())?;
    if let Some(text) = again {
        return Ok(SignedDocument {
            summary: format!("key {key} was already returned; here is its receipt again"),
            text,
        });
    }
    let k = key.clone();
    let leases = core
        .call(move |o| outcome!(o.execute(Command::DeactivateKey { key: k }), Outcome::Deactivated { leases } => leases))
        .await
        .map_err(|e| e.to_string())?
        .map_err(refusal_text)?;
    if leases > 0 && !force {
        let k = key.clone();
        wait_for_acks(core, move |o| {
            o.core().key_leases(&k) > 0 && o.core().key_has_live_holders(&k)
        })
        .await;
    }
    let (k, i) = (key.clone(), info.clone());
    core.call(move |o| finish_return(o, &i, &k, force))
        .await
        .map_err(|e| e.to_string())?
}

fn finish_return(
    o: &mut Owner,
    info: &DaemonInfo,
    key: &str,
    force: bool,
) -> Result<SignedDocument, String> {
    let remaining = o.core().key_leases(key);
    if remaining > 0 && !force {
        return Err(format!(
            "key {key} is deactivated and its leases are revoked, but {remaining} remain{} until the video servers acknowledge (or their reservations end); run `netkeyctl key return {key}` again then, or add --force to drop them now (an audited overlap)",
            if remaining == 1 { "s" } else { "" }
        ));
    }
    let doc = o
        .core()
        .key_document(key)
        .ok_or_else(|| Refusal::UnknownKey { key: key.into() }.to_string())?;
    let outcome = ReturnOutcome {
        key: key.to_string(),
        revision: doc.revision,
        customer: doc.customer.clone(),
        dropped: remaining,
        forced: remaining > 0,
    };
    let receipt = sign_receipt(o, info, &outcome)?;
    // Recorded beside the identity, receipt and all, before the store forgets the key:
    // whatever happens next, no restore brings it back, and the receipt can be asked for
    // again.
    let text = {
        let mut returned = info
            .returned
            .lock()
            .map_err(|_| "the record of returned keys is unavailable".to_string())?;
        returned.add(ReturnedKey {
            key_id: key.to_string(),
            revision: outcome.revision,
            returned_at: o.now,
            forced: outcome.forced,
            receipt: Some(receipt.text.clone()),
        });
        returned
            .save(&info.state_dir)
            .map_err(|e| format!("the key was not returned: {e}"))?;
        returned
            .covering(key, outcome.revision)
            .and_then(|r| r.receipt.clone())
            .unwrap_or(receipt.text.clone())
    };
    outcome!(o.execute(Command::ReturnKey { key: key.to_string(), force }), Outcome::Returned(_) => ())
        .map_err(refusal_text)?;
    Ok(SignedDocument {
        summary: receipt.summary,
        text,
    })
}

/// The receipt of a return, signed by the identity. It names the audit log's head as the
/// return is made (the record of the return itself follows it).
fn sign_receipt(o: &Owner, info: &DaemonInfo, r: &ReturnOutcome) -> Result<SignedDocument, String> {
    let head = o.audit_head();
    let receipt = ReturnReceipt {
        key_id: r.key.clone(),
        revision: r.revision,
        customer: r.customer.clone(),
        daemon_id: info.daemon_id.clone(),
        daemon_identity: info.identity.public().to_base64(),
        returned_at: o.now,
        forced: r.forced,
        leases_dropped: r.dropped,
        audit_count: head.count,
        audit_hash: crate::hex(&head.hash),
    };
    let text = daemon_sign(&info.identity, DaemonDocKind::ReturnReceipt, &receipt)
        .map_err(|e| e.to_string())?;
    Ok(SignedDocument {
        summary: format!(
            "key {} revision {} returned{}; send the receipt to the vendor to move the key to another host",
            r.key,
            r.revision,
            if r.forced {
                format!(" by force ({} leases dropped)", r.dropped)
            } else {
                String::new()
            }
        ),
        text,
    })
}
