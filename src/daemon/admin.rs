//! The admin API and its Unix socket (mode 0660), where `netkeyctl` sends one JSON
//! request per line. Every action is written once here, in `AdminApi::handle`, against
//! the core: the web console's pages and forms make the same requests.

use super::conn::ACK_WAIT;
use super::owner::CoreHandle;
use super::DaemonInfo;
use crate::core::{Command, Outcome, PoolId, Refusal};
use crate::outcome;
use crate::proto::admin::*;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// Binds the admin socket, replacing a stale socket file left by a crash but never a
/// socket another daemon still answers on.
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another daemon answers on the admin socket {}",
                    path.display()
                ),
            ));
        }
        // Only a stale socket is replaced: a mistyped path must not delete a file.
        use std::os::unix::fs::FileTypeExt;
        if !std::fs::symlink_metadata(path)?.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
            refuse_open_directory(dir)?;
        }
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Anyone who can write to the socket's directory could replace the socket with their
/// own and collect administrators' commands, so such a directory is refused.
fn refuse_open_directory(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o002 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the admin socket's directory {} is writable by every user (mode {:o}); use a directory only the daemon's user can write, such as /run/netkey",
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The admin API: what `netkeyctl` and the web console ask of the daemon.
#[derive(Clone, Debug)]
pub struct AdminApi {
    pub core: CoreHandle,
    pub info: Arc<DaemonInfo>,
    pub console: Arc<crate::web::Console>,
}

pub async fn serve(listener: UnixListener, api: AdminApi, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (api, shutdown) = (api.clone(), shutdown.clone());
                    tokio::spawn(async move { connection(stream, api, shutdown).await });
                }
                Err(e) => {
                    tracing::warn!("admin socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
}

async fn connection(stream: UnixStream, api: AdminApi, shutdown: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    loop {
        let mut line = String::new();
        // Bounded read: a line longer than the limit is refused, not buffered whole.
        let mut limited = (&mut lines).take(MAX_ADMIN_LINE as u64 + 1);
        let n = tokio::select! {
            n = limited.read_line(&mut line) => n,
            _ = shutdown.cancelled() => return,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = line.len() > MAX_ADMIN_LINE;
        let reply = if too_long {
            AdminReply {
                ok: None,
                error: Some("request too long".into()),
            }
        } else {
            match serde_json::from_str::<AdminRequest>(line.trim()) {
                Ok(req) => api.handle(req).await,
                Err(e) => AdminReply {
                    ok: None,
                    error: Some(format!("bad admin request: {e}")),
                },
            }
        };
        let Ok(mut text) = serde_json::to_string(&reply) else {
            return;
        };
        text.push('\n');
        // After an overlong line the rest of it is still unread: close rather than
        // answer its tail as a second request.
        if write.write_all(text.as_bytes()).await.is_err() || too_long {
            return;
        }
    }
}

fn ok<T: Serialize>(v: T) -> AdminReply {
    match serde_json::to_value(v) {
        Ok(v) => AdminReply {
            ok: Some(v),
            error: None,
        },
        Err(e) => AdminReply {
            ok: None,
            error: Some(e.to_string()),
        },
    }
}

fn err(e: impl std::fmt::Display) -> AdminReply {
    AdminReply {
        ok: None,
        error: Some(e.to_string()),
    }
}

impl AdminApi {
    /// Answers one admin request: the one place every administrative action is made.
    pub async fn handle(&self, req: AdminRequest) -> AdminReply {
        let core = &self.core;
        let result = match req {
            AdminRequest::ServerKick { server, force } => kick(core, server, force).await,
            AdminRequest::CameraFree { camera, key, force } => free(core, camera, key, force).await,
            AdminRequest::KeyReturn { key, force } => {
                match super::keys::return_key(core, &self.info, key, force).await {
                    Ok(doc) => ok(doc),
                    Err(e) => err(e),
                }
            }
            AdminRequest::ConsoleLogin => {
                let now = core.call(|o| o.now).await;
                match now {
                    Ok(now) => {
                        let (token, ttl) = self.console.mint_login_token();
                        ok(ConsoleUrl {
                            url: format!(
                                "{}/login?token={token}",
                                crate::web::loopback_base(&self.info.listen)
                            ),
                            expires_at: now.plus(ttl.as_millis() as u64),
                        })
                    }
                    Err(e) => err(e),
                }
            }
            AdminRequest::ConsolePassword { password } => {
                let console = self.console.clone();
                let set =
                    tokio::task::spawn_blocking(move || console.set_password(password.as_deref()))
                        .await;
                match set {
                    Ok(Ok(enabled)) => ok(serde_json::json!({ "password_login": enabled })),
                    Ok(Err(e)) => err(e),
                    Err(e) => err(e),
                }
            }
            other => {
                let info = self.info.clone();
                core.call(move |o| query(o, other, &info))
                    .await
                    .unwrap_or_else(err)
            }
        };
        if let Some(e) = &result.error {
            tracing::info!(reason = %e, "admin request refused");
        }
        result
    }
}

/// The pool a command made or filled, as listed now.
fn pool_changed(o: &super::owner::Owner, change: crate::core::PoolChange) -> AdminReply {
    let name = change.to.to_string();
    match o
        .core()
        .pool_views(o.now)
        .into_iter()
        .find(|p| p.pool == name)
    {
        Some(pool) => ok(PoolChanged {
            from: change.from.to_string(),
            to: name,
            moved: change.moved,
            pool,
        }),
        None => err(Refusal::UnknownPool { pool: name }),
    }
}

/// The key a new pool belongs to: the one named, or the only key installed.
fn key_for_new_pool(o: &super::owner::Owner, key: Option<String>) -> Result<String, String> {
    if let Some(k) = key {
        return Ok(k);
    }
    let keys: Vec<String> = o
        .core()
        .key_views(o.now)
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    match keys.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("no key is installed".into()),
        _ => Err(format!(
            "several keys are installed; say which one the pool belongs to ({})",
            keys.join(", ")
        )),
    }
}

fn query(o: &mut super::owner::Owner, req: AdminRequest, info: &DaemonInfo) -> AdminReply {
    let now = o.now;
    match req {
        AdminRequest::Status => {
            let counts = o.core().server_counts();
            ok(Status {
                daemon_id: info.daemon_id.clone(),
                identity: info.identity.public().fingerprint(),
                software: info.software.clone(),
                demo: info.demo,
                listen: info.listen.clone(),
                now,
                started_at: info.started_at,
                servers: counts.servers,
                servers_live: counts.live,
                cameras: counts.cameras,
                keys: o.core().key_views(now),
                audit_head: o.audit_head(),
                store_error: o.degraded.clone(),
                store_writing: o.store().write_under_way(),
                discovery: info.discovery.map(|a| a.to_string()),
                duplicate_keys: info
                    .duplicates
                    .lock()
                    .map(|d| d.clone())
                    .unwrap_or_default(),
                clock: o.clock_guard().map(|g| ClockView {
                    wall: o.wall(),
                    mark: g.mark(),
                    rollback: g.rollback(),
                    tolerance_secs: super::clockguard::TOLERANCE_MS / 1000,
                }),
            })
        }
        AdminRequest::KeyInstall { key } => match super::keys::install(o, info, &key) {
            Ok(v) => ok(v),
            Err(e) => err(e),
        },
        AdminRequest::KeyRequest => match super::keys::request(o, info) {
            Ok(v) => ok(v),
            Err(e) => err(e),
        },
        AdminRequest::KeyReport { key } => match super::keys::report(o, info, &key) {
            Ok(v) => ok(v),
            Err(e) => err(e),
        },
        AdminRequest::KeyClockReset { token } => match super::keys::clock_reset(o, info, &token) {
            Ok(v) => ok(v),
            Err(e) => err(e),
        },
        AdminRequest::KeyList => ok(o.core().key_views(now)),
        AdminRequest::PoolList => ok(o.core().pool_views(now)),
        AdminRequest::PoolShow { pool } => match o.core().resolve_pool(&pool) {
            Ok(id) => {
                let name = id.to_string();
                let Some(view) = o
                    .core()
                    .pool_views(now)
                    .into_iter()
                    .find(|p| p.pool == name)
                else {
                    return err(Refusal::UnknownPool { pool });
                };
                let servers = o
                    .core()
                    .server_views(now)
                    .into_iter()
                    .filter(|s| s.pool == name)
                    .collect();
                ok(PoolDetail {
                    pool: view,
                    servers,
                })
            }
            Err(e) => err(e),
        },
        AdminRequest::PoolCode { pool } => {
            let id = match o.core().resolve_pool(&pool) {
                Ok(id) => id,
                Err(e) => return err(e),
            };
            // A fresh random code; a clash with a live code is vanishingly rare, so retry.
            for _ in 0..8 {
                let code = super::enrolment_code();
                if let Ok(expires_at) = outcome!(o.execute(Command::CreateCode { pool: id.clone(), code: code.clone() }), Outcome::CodeCreated { expires_at } => expires_at)
                {
                    return ok(CodeIssued {
                        pool: id.to_string(),
                        code,
                        expires_at,
                    });
                }
            }
            err("could not issue a unique code")
        }
        AdminRequest::ServerList => ok(o.core().server_views(now)),
        AdminRequest::ServerShow { server } => {
            let Some(view) = o
                .core()
                .server_views(now)
                .into_iter()
                .find(|s| s.server_id == server)
            else {
                return err(Refusal::UnknownServer { server });
            };
            let cameras = o
                .core()
                .camera_views(now)
                .into_iter()
                .filter(|c| c.server_id == server)
                .collect();
            ok(ServerDetail {
                server: view,
                cameras,
            })
        }
        AdminRequest::ServerRename { server, name } => {
            match outcome!(o.execute(Command::RenameServer { server: server.clone(), name: name.clone() }), Outcome::Done => ())
            {
                Ok(()) => ok(serde_json::json!({"server_id": server, "name": name})),
                Err(e) => err(e),
            }
        }
        AdminRequest::ServerMove { server, pool } => {
            let result = o.core().resolve_pool(&pool).and_then(|id: PoolId| {
                outcome!(o.execute(Command::MoveServer { server: server.clone(), pool: id.clone() }), Outcome::Done => ())?;
                Ok(id)
            });
            match result {
                Ok(id) => ok(serde_json::json!({"server_id": server, "pool": id.to_string()})),
                Err(e) => err(e),
            }
        }
        AdminRequest::PoolCreate { name, key, seats } => {
            if let Some((k, n)) = name.split_once('/') {
                if key.as_deref().is_some_and(|key| key != k) {
                    return err(format!(
                        "pool {name} does not belong to key {}",
                        key.unwrap_or_default()
                    ));
                }
                let id = PoolId::new(k, n);
                return match outcome!(o.execute(Command::CreatePool { pool: id, seats }), Outcome::PoolChanged(c) => c)
                {
                    Ok(c) => pool_changed(o, c),
                    Err(e) => err(e),
                };
            }
            let key = match key_for_new_pool(o, key) {
                Ok(k) => k,
                Err(e) => return err(e),
            };
            let id = PoolId::new(&key, &name);
            match outcome!(o.execute(Command::CreatePool { pool: id, seats }), Outcome::PoolChanged(c) => c)
            {
                Ok(c) => pool_changed(o, c),
                Err(e) => err(e),
            }
        }
        AdminRequest::PoolMove { from, to, seats } => {
            let ids = o.core().resolve_pool(&from).and_then(|f| {
                // A bare target name is looked up among the source's key first.
                let t = if to.contains('/') {
                    o.core().resolve_pool(&to)?
                } else {
                    o.core()
                        .resolve_pool(&format!("{}/{to}", f.key))
                        .or_else(|_| o.core().resolve_pool(&to))?
                };
                Ok((f, t))
            });
            let (f, t) = match ids {
                Ok(ids) => ids,
                Err(e) => return err(e),
            };
            match outcome!(o.execute(Command::MoveSeats { from: f, to: t, seats }), Outcome::PoolChanged(c) => c)
            {
                Ok(c) => pool_changed(o, c),
                Err(e) => err(e),
            }
        }
        AdminRequest::PoolDelete { pool } => {
            let id = match o.core().resolve_pool(&pool) {
                Ok(id) => id,
                Err(e) => return err(e),
            };
            match outcome!(o.execute(Command::DeletePool { pool: id }), Outcome::PoolChanged(c) => c)
            {
                Ok(c) => pool_changed(o, c),
                Err(e) => err(e),
            }
        }
        AdminRequest::Usage { since } => {
            let since = since.unwrap_or(now.minus(crate::core::time::DAY));
            match o.store().usage_since(since) {
                Ok(samples) => ok(UsageHistory {
                    now,
                    sample_interval_secs: super::owner::USAGE_SAMPLE_MS / 1000,
                    samples,
                }),
                Err(e) => err(e),
            }
        }
        AdminRequest::CameraList {
            server,
            pool,
            feature,
        } => {
            let pool = match pool.map(|p| o.core().resolve_pool(&p)).transpose() {
                Ok(p) => p.map(|p| p.to_string()),
                Err(e) => return err(e),
            };
            let cams: Vec<_> = o
                .core()
                .camera_views(now)
                .into_iter()
                .filter(|c| server.as_ref().is_none_or(|s| c.server_id == *s))
                .filter(|c| pool.as_ref().is_none_or(|p| c.pool == *p))
                .filter(|c| {
                    feature
                        .as_ref()
                        .is_none_or(|f| c.features.get(f).is_some_and(|n| *n > 0))
                })
                .collect();
            ok(cams)
        }
        AdminRequest::Audit { since } => match o.store().audit_records(since) {
            Ok(records) => ok(AuditExport {
                head: o.audit_head(),
                records,
            }),
            Err(e) => err(e),
        },
        AdminRequest::Backup => {
            use base64::Engine as _;
            let taken =
                crate::store::Backup::take(o.store(), o.core(), now).and_then(|b| b.to_bytes());
            match taken {
                Ok(bytes) => ok(BackupFile {
                    taken_at: now,
                    data: base64::engine::general_purpose::STANDARD.encode(bytes),
                }),
                Err(e) => err(e),
            }
        }
        AdminRequest::ServerKick { .. }
        | AdminRequest::CameraFree { .. }
        | AdminRequest::KeyReturn { .. }
        | AdminRequest::ConsoleLogin
        | AdminRequest::ConsolePassword { .. } => err("internal: routed elsewhere"),
    }
}

/// Waits up to `ACK_WAIT` while `pending` says a live holder may still acknowledge.
pub(super) async fn wait_for_acks<F>(core: &CoreHandle, pending: F)
where
    F: Fn(&mut super::owner::Owner) -> bool + Send + Sync + Clone + 'static,
{
    let deadline = tokio::time::Instant::now() + ACK_WAIT;
    loop {
        let notified = core.acks.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let p = pending.clone();
        if !core.call(move |o| p(o)).await.unwrap_or(false) {
            return;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

async fn free(core: &CoreHandle, camera: String, key: Option<String>, force: bool) -> AdminReply {
    let c = camera.clone();
    let outcome = match core
        .call(move |o| outcome!(o.execute(Command::Free { key, camera: c, force }), Outcome::Freed(f) => f))
        .await
    {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return err(e),
        Err(e) => return err(e),
    };
    if outcome.revoking {
        let (h, c, e) = (
            outcome.holder.clone(),
            outcome.camera.clone(),
            outcome.epoch,
        );
        wait_for_acks(core, move |o| {
            o.core().is_live(&h) && o.core().is_revoking(&h, &c, e)
        })
        .await;
    }
    let (h, c, e) = (
        outcome.holder.clone(),
        outcome.camera.clone(),
        outcome.epoch,
    );
    let still = core
        .call(move |o| o.core().is_revoking(&h, &c, e))
        .await
        .unwrap_or(false);
    let state = if outcome.forced {
        "forced"
    } else if still {
        "revoking"
    } else {
        "freed"
    };
    ok(FreeResult {
        camera_id: outcome.camera,
        key_id: outcome.key,
        server_id: outcome.holder,
        state: state.into(),
    })
}

async fn kick(core: &CoreHandle, server: String, force: bool) -> AdminReply {
    let s = server.clone();
    let first = match core.call(move |o| outcome!(o.execute(Command::Kick { server: s, force }), Outcome::Kicked(k) => k)).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return err(e),
        Err(e) => return err(e),
    };
    if !first.revoking.is_empty() {
        let s = server.clone();
        wait_for_acks(core, move |o| {
            o.core().is_live(&s)
                && o.core()
                    .server_views(o.now)
                    .iter()
                    .any(|v| v.server_id == s && v.revoking > 0)
        })
        .await;
    }
    let s = server.clone();
    let now_state = core
        .call(move |o| {
            let detail = o
                .core()
                .server_views(o.now)
                .into_iter()
                .find(|v| v.server_id == s);
            let revoking: Vec<String> = o
                .core()
                .camera_views(o.now)
                .into_iter()
                .filter(|c| c.server_id == s && c.state == "revoking")
                .map(|c| c.camera_id)
                .collect();
            (detail.is_none(), revoking)
        })
        .await;
    let (forgotten, revoking) = now_state.unwrap_or((first.forgotten, first.revoking.clone()));
    ok(KickResult {
        server_id: server,
        forgotten,
        kept_newly_added: first.kept_newly_added,
        revoking,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_admin_socket_in_a_world_writable_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = bind(&open.join("admin.sock")).await.expect_err("refused");
        assert!(err.to_string().contains("writable by every user"), "{err}");
        assert!(bind(&dir.path().join("admin.sock")).await.is_ok());
    }
}
