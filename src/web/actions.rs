//! The console's actions: each POST form becomes one admin request (the same one the
//! matching `netkeyctl` command makes); its answer or refusal becomes the flash message
//! of the page the browser is sent back to.

use super::auth::{Flash, Session};
use super::pages::not_found;
use super::{ask, redirect, Req, WebContext};
use crate::core::SeatRequest;
use crate::proto::admin::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

/// Whether `p` is a path of this console (never another site: `//host` or `/\\host`).
pub fn local_path(p: &str) -> bool {
    p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') && !p.contains(['\r', '\n'])
}

/// Where to send the browser after an action: a local path, never another site.
fn back(r: &Req) -> String {
    match r.form.get("back") {
        Some(b) if local_path(b) => b.clone(),
        _ => "/".into(),
    }
}

fn seat_requests(text: &str) -> Result<Vec<SeatRequest>, String> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(SeatRequest::parse)
        .collect()
}

fn field(r: &Req, name: &str) -> String {
    r.form
        .get(name)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A POST: one admin request; its outcome becomes the next page's message.
pub async fn action(r: &Req, session: &Session, ctx: &WebContext) -> Response<Full<Bytes>> {
    let flash = match run_action(r, ctx).await {
        Ok(text) => Flash { ok: true, text },
        Err(text) => Flash { ok: false, text },
    };
    if flash.text == "no such action" {
        return not_found();
    }
    tracing::info!(peer = %r.peer, action = %r.path, ok = flash.ok, "web console action: {}", flash.text);
    ctx.console.set_flash(&session.id, flash);
    redirect(&back(r))
}

async fn run_action(r: &Req, ctx: &WebContext) -> Result<String, String> {
    let force = r.form.get("force").is_some_and(|v| !v.is_empty());
    match r.path.as_str() {
        "/pools/create" => {
            let key = Some(field(r, "key")).filter(|k| !k.is_empty());
            let c: PoolChanged = ask(
                ctx,
                AdminRequest::PoolCreate {
                    name: field(r, "name"),
                    key,
                    seats: seat_requests(&field(r, "seats"))?,
                },
            )
            .await?;
            Ok(format!("pool {} created{}", c.to, c.moved_suffix()))
        }
        "/pools/move" => {
            let c: PoolChanged = ask(
                ctx,
                AdminRequest::PoolMove {
                    from: field(r, "from"),
                    to: field(r, "to"),
                    seats: seat_requests(&field(r, "seats"))?,
                },
            )
            .await?;
            Ok(format!(
                "seats moved from {} to {}{}",
                c.from,
                c.to,
                c.moved_suffix()
            ))
        }
        "/pools/delete" => {
            let c: PoolChanged = ask(
                ctx,
                AdminRequest::PoolDelete {
                    pool: field(r, "pool"),
                },
            )
            .await?;
            Ok(format!(
                "pool {} deleted; its seats are back in {}",
                c.from, c.to
            ))
        }
        "/pools/code" => {
            let c: CodeIssued = ask(
                ctx,
                AdminRequest::PoolCode {
                    pool: field(r, "pool"),
                },
            )
            .await?;
            Ok(format!(
                "enrolment code for pool {}: {} (one use, valid until {})",
                c.pool, c.code, c.expires_at
            ))
        }
        "/servers/rename" => {
            let (server, name) = (field(r, "server"), field(r, "name"));
            let _: serde_json::Value = ask(
                ctx,
                AdminRequest::ServerRename {
                    server: server.clone(),
                    name: name.clone(),
                },
            )
            .await?;
            Ok(format!("server {server} is now called {name:?}"))
        }
        "/servers/move" => {
            let server = field(r, "server");
            let v: serde_json::Value = ask(
                ctx,
                AdminRequest::ServerMove {
                    server: server.clone(),
                    pool: field(r, "pool"),
                },
            )
            .await?;
            Ok(format!(
                "server {server} moved to pool {} with its cameras",
                v.get("pool").and_then(|p| p.as_str()).unwrap_or("?")
            ))
        }
        "/servers/kick" => {
            let k: KickResult = ask(
                ctx,
                AdminRequest::ServerKick {
                    server: field(r, "server"),
                    force,
                },
            )
            .await?;
            Ok(k.sentence())
        }
        "/cameras/free" => {
            let key = Some(field(r, "key")).filter(|k| !k.is_empty());
            let f: FreeResult = ask(
                ctx,
                AdminRequest::CameraFree {
                    camera: field(r, "camera"),
                    key,
                    force,
                },
            )
            .await?;
            Ok(f.sentence())
        }
        _ => Err("no such action".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed() {
        assert!(local_path("/servers?id=x"));
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "",
            "/a\r\nSet-Cookie: x",
        ] {
            assert!(!local_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn seat_fields_take_spaces_or_commas() {
        let s = seat_requests("camera=4, lpr=1@SO-1 ").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].order.as_deref(), Some("SO-1"));
        assert!(seat_requests("camera").is_err());
    }
}
