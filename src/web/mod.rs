//! The web console on the daemon's TCP port: HTTP/1.1 (hyper) over TLS from anywhere, or
//! plain from loopback only. Pages are rendered on the server (HTML with inline SVG
//! charts, one stylesheet served from the binary, no script), and every button and form
//! makes an admin API request (`daemon::admin::AdminApi`), the same ones `netkeyctl`
//! makes. Safety: every page needs a session (one-time URL from `netkeyctl console`, or
//! the console password over HTTPS); sessions live in HttpOnly SameSite=Strict cookies
//! (Secure over HTTPS); every action carries the session's CSRF token; a Host header
//! that is not localhost, a loopback address or a configured name is refused (DNS
//! rebinding).

mod actions;
mod auth;
mod chart;
mod pages;
mod prom;

pub use auth::{Console, Flash, LoginError, LOGIN_TOKEN_TTL};

use crate::daemon::admin::AdminApi;
use crate::proto::admin::{AdminReply, AdminRequest};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// The largest request body read (forms are small).
const MAX_BODY: usize = 64 * 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this long, however busy: keep-alive is a convenience.
const MAX_CONNECTION: Duration = Duration::from_secs(600);
pub const SESSION_COOKIE: &str = "netkey_session";

/// Console settings from `netkeyd`'s configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Host names (or addresses) the console answers to besides localhost and loopback
    /// addresses: the names administrators type to reach it over HTTPS.
    pub hosts: Vec<String>,
    /// Whether `/metrics` needs a session even from loopback (by default a scraper on
    /// this machine reads it without one; from elsewhere it always needs one).
    pub metrics_need_session: bool,
}

/// What the console needs: the admin API, its logins and sessions, its settings.
#[derive(Debug)]
pub struct WebContext {
    pub admin: AdminApi,
    pub console: Arc<Console>,
    pub config: ConsoleConfig,
    pub shutdown: CancellationToken,
}

/// The console's address for a browser on this machine, from the licence port's.
pub fn loopback_base(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.ip().is_unspecified() || a.ip().is_loopback() => {
            format!("http://127.0.0.1:{}", a.port())
        }
        Ok(SocketAddr::V6(a)) if a.ip().is_unspecified() || a.ip().is_loopback() => {
            format!("http://[::1]:{}", a.port())
        }
        // Bound to one LAN address: loopback cannot reach it, and plain HTTP is only for
        // loopback, so the browser must use HTTPS there.
        Ok(a) => format!("https://{a}"),
        Err(_) => format!("http://{listen}"),
    }
}

/// Whether a new connection's first byte starts an HTTP request (a method's first
/// letter); the licence protocol starts with a length prefix, TLS with 0x16.
pub fn looks_like_http(first: u8) -> bool {
    first.is_ascii_uppercase()
}

/// Serves one HTTP/1.1 connection (plain from loopback, or inside TLS when `secure`).
pub async fn serve_http<S>(stream: S, peer: SocketAddr, secure: bool, ctx: Arc<WebContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let shutdown = ctx.shutdown.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, secure, &ctx).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %peer, "web console connection: {e}");
            }
        }
        _ = tokio::time::sleep(MAX_CONNECTION) => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

/// One request, as the console sees it.
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub form: HashMap<String, String>,
    pub peer: SocketAddr,
    pub secure: bool,
    pub session: Option<auth::Session>,
    pub flash: Option<Flash>,
}

fn params(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

/// Whether a Host header names this console: localhost, a loopback address, or a
/// configured name. Anything else may be DNS rebinding.
pub fn host_allowed(host: &str, config: &ConsoleConfig) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    if name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    config
        .hosts
        .iter()
        .any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

fn cookie(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn html(body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

pub(crate) fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Headers every answer carries: no caching, no framing, no referrer (a one-time login
/// URL must not leak), and a policy that allows nothing but our own stylesheet.
fn harden(r: &mut Response<Full<Bytes>>) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    secure: bool,
    ctx: &WebContext,
) -> Response<Full<Bytes>> {
    let mut r = route(req, peer, secure, ctx).await;
    harden(&mut r);
    r
}

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    secure: bool,
    ctx: &WebContext,
) -> Response<Full<Bytes>> {
    if !secure && !peer.ip().is_loopback() {
        return text(
            StatusCode::FORBIDDEN,
            "the web console answers plain HTTP on loopback only; use https:// on this port\n",
        );
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !host_allowed(&host, &ctx.config) {
        tracing::warn!(peer = %peer, host = %host, "web console request for a foreign host name refused");
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "this host name is not one the console answers to (add it with --console-host)\n",
        );
    }
    let origin = format!("{}://{host}", if secure { "https" } else { "http" });
    let now = Instant::now();
    let session = cookie(&req, SESSION_COOKIE).and_then(|id| ctx.console.session(&id, now));
    let (session, flash) = match session {
        Some((s, f)) => (Some(s), f),
        None => (None, None),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = params(req.uri().query().unwrap_or(""));

    // Cross-site POSTs never reach an action: the browser says where a request comes
    // from (Origin, Sec-Fetch-Site); the CSRF token below is the second lock.
    if method == Method::POST {
        let headers = req.headers();
        let cross_origin = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .is_some_and(|o| o != origin);
        let cross_site = headers
            .get("sec-fetch-site")
            .and_then(|o| o.to_str().ok())
            .is_some_and(|s| s != "same-origin" && s != "none");
        if cross_origin || cross_site {
            return text(StatusCode::FORBIDDEN, "cross-site request refused\n");
        }
    }
    let form = if method == Method::POST {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => params(&String::from_utf8_lossy(&b.to_bytes())),
            Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        }
    } else {
        HashMap::new()
    };
    let r = Req {
        method,
        path,
        query,
        form,
        peer,
        secure,
        session,
        flash,
    };

    // What needs no session.
    match (&r.method, r.path.as_str()) {
        (&Method::GET, "/static/style.css") => return pages::stylesheet(),
        (&Method::GET, "/login") => return login_get(&r, ctx),
        (&Method::POST, "/login") => return login_post(&r, ctx).await,
        (&Method::GET, "/metrics") => {
            let open = r.peer.ip().is_loopback() && !ctx.config.metrics_need_session;
            if open || r.session.is_some() {
                return prom::metrics(ctx).await;
            }
            return text(StatusCode::UNAUTHORIZED, "log in to the console first\n");
        }
        _ => {}
    }
    let Some(session) = r.session.clone() else {
        return if r.method == Method::GET {
            redirect("/login")
        } else {
            text(StatusCode::FORBIDDEN, "no session: log in first\n")
        };
    };
    if r.method == Method::POST {
        let token = r.form.get("csrf").map(String::as_str).unwrap_or("");
        if !auth::same_token(token, &session.csrf) {
            tracing::warn!(peer = %r.peer, path = %r.path, "web console action without a valid CSRF token refused");
            return text(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token: reload the page and try again\n",
            );
        }
        if r.path == "/logout" {
            ctx.console.close_session(&session.id);
            let mut resp = redirect("/login");
            set_cookie(&mut resp, "", r.secure, true);
            return resp;
        }
        return actions::action(&r, &session, ctx).await;
    }
    if r.method == Method::GET {
        return pages::page(&r, &session, ctx).await;
    }
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

fn set_cookie(resp: &mut Response<Full<Bytes>>, id: &str, secure: bool, expire: bool) {
    let mut c = format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if expire {
        c.push_str("; Max-Age=0");
    }
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn logged_in(r: &Req, ctx: &WebContext) -> Response<Full<Bytes>> {
    let session = ctx.console.open_session(Instant::now());
    tracing::info!(peer = %r.peer, "web console login");
    // `next` (a page of this console) lets a login link open a given page.
    let next = r
        .query
        .get("next")
        .filter(|n| actions::local_path(n))
        .map(String::as_str)
        .unwrap_or("/");
    let mut resp = redirect(next);
    set_cookie(&mut resp, &session.id, r.secure, false);
    resp
}

fn login_get(r: &Req, ctx: &WebContext) -> Response<Full<Bytes>> {
    if let Some(token) = r.query.get("token") {
        if ctx.console.redeem_login_token(token, Instant::now()) {
            return logged_in(r, ctx);
        }
        tracing::warn!(peer = %r.peer, "web console login with an unknown or used token");
        let mut resp = html(pages::login_page(
            r,
            ctx,
            Some("this login link is not valid (used already, or older than 5 minutes): run `netkeyctl console` again"),
        ));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        return resp;
    }
    html(pages::login_page(r, ctx, None))
}

async fn login_post(r: &Req, ctx: &WebContext) -> Response<Full<Bytes>> {
    let password = r.form.get("password").cloned().unwrap_or_default();
    let console = ctx.console.clone();
    let ip = r.peer.ip();
    let checked =
        tokio::task::spawn_blocking(move || console.check_password(ip, &password, Instant::now()))
            .await
            .unwrap_or(Err(LoginError::Wrong));
    match checked {
        Ok(()) => logged_in(r, ctx),
        Err(e) => {
            tracing::warn!(peer = %r.peer, "web console login refused: {e}");
            let status = match e {
                LoginError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::UNAUTHORIZED,
            };
            let mut resp = html(pages::login_page(r, ctx, Some(&e.to_string())));
            *resp.status_mut() = status;
            resp
        }
    }
}

/// Asks the admin API and reads the answer as `T`.
pub(crate) async fn ask<T: DeserializeOwned>(
    ctx: &WebContext,
    req: AdminRequest,
) -> Result<T, String> {
    let AdminReply { ok, error } = ctx.admin.handle(req).await;
    match (ok, error) {
        (_, Some(e)) => Err(e),
        (Some(v), None) => serde_json::from_value(v).map_err(|e| format!("internal: {e}")),
        (None, None) => Err("empty answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_allowed_are_loopback_localhost_and_configured_ones() {
        let config = ConsoleConfig {
            hosts: vec!["licences.example.lan".into()],
            metrics_need_session: false,
        };
        for ok in [
            "localhost",
            "localhost:8947",
            "127.0.0.1:8947",
            "127.0.0.9",
            "[::1]:8947",
            "LICENCES.example.lan:8947",
            "licences.example.lan.",
        ] {
            assert!(host_allowed(ok, &config), "{ok} refused");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8947",
            "192.168.1.10:8947",
            "[fe80::1]:8947",
            "localhost.evil.example",
            "licences.example.lan.evil",
        ] {
            assert!(!host_allowed(bad, &config), "{bad} allowed");
        }
    }

    #[test]
    fn the_login_url_points_at_loopback() {
        assert_eq!(loopback_base("0.0.0.0:8947"), "http://127.0.0.1:8947");
        assert_eq!(loopback_base("127.0.0.1:4000"), "http://127.0.0.1:4000");
        assert_eq!(loopback_base("[::]:8947"), "http://[::1]:8947");
        assert_eq!(loopback_base("192.0.2.1:8947"), "https://192.0.2.1:8947");
    }

    #[test]
    fn http_is_told_apart_from_the_licence_protocol_and_tls() {
        assert!(looks_like_http(b'G'));
        assert!(looks_like_http(b'P'));
        assert!(!looks_like_http(0x16));
        assert!(!looks_like_http(0x00));
    }
}
