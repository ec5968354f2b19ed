//! The console's pages (GET) and actions (POST). Pages read through admin requests and
//! render HTML; actions turn a form into an admin request, put its answer in the
//! session's flash message and send the browser back where it came from.

use super::auth::Session;
use super::chart;
use super::{ask, html, text, Req, WebContext};
use crate::core::time::{relative, DAY};
use crate::core::{CameraView, KeyView, PoolView, SeatUsage, ServerView, Timestamp};
use crate::proto::admin::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use std::fmt::Write as _;

/// Warn this long before a key or entry expires.
const EXPIRY_WARNING_MS: u64 = 30 * DAY;
const AUDIT_ROWS: usize = 500;

const STYLE: &str = include_str!("style.css");

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A query-string component.
fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn stylesheet() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(STYLE.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    r
}

const NAV: [(&str, &str); 7] = [
    ("/", "Overview"),
    ("/pools", "Pools"),
    ("/servers", "Servers"),
    ("/cameras", "Cameras"),
    ("/keys", "Keys"),
    ("/audit", "Audit log"),
    ("/usage", "Usage"),
];

fn layout(
    title: &str,
    r: &Req,
    session: Option<&Session>,
    status: Option<&Status>,
    body: &str,
) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} - netkey</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>",
        esc(title)
    );
    o.push_str("<header><span class=\"brand\">netkey</span>");
    if let Some(session) = session {
        o.push_str("<nav>");
        for (href, name) in NAV {
            let current = if r.path == href {
                " class=\"current\""
            } else {
                ""
            };
            let _ = write!(o, "<a href=\"{href}\"{current}>{name}</a>");
        }
        o.push_str("</nav>");
        let _ = write!(
            o,
            "<form method=\"post\" action=\"/logout\" class=\"logout\">{}<button>Log out</button></form>",
            csrf(session)
        );
    }
    o.push_str("</header>");
    if status.is_some_and(|s| s.demo) {
        o.push_str("<div class=\"demo\">DEMO mode: built-in demo vendor and DEMO key; not for production video servers</div>");
    }
    o.push_str("<main>");
    if let Some(f) = &r.flash {
        let _ = write!(
            o,
            "<p class=\"flash {}\" role=\"status\">{}</p>",
            if f.ok { "ok" } else { "error" },
            esc(&f.text)
        );
    }
    let _ = write!(o, "<h1>{}</h1>{body}</main></body></html>", esc(title));
    o
}

fn csrf(session: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&session.csrf)
    )
}

/// The opening of a form that posts an action and comes back to `back`.
fn form(session: &Session, action: &str, back: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{action}\" class=\"{class}\">{}<input type=\"hidden\" name=\"back\" value=\"{}\">",
        csrf(session),
        esc(back)
    )
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
        esc(value)
    )
}

/// Where this page is, to come back to after an action.
fn here(r: &Req) -> String {
    let mut q: Vec<(&String, &String)> = r.query.iter().collect();
    q.sort();
    if q.is_empty() {
        r.path.clone()
    } else {
        let qs: Vec<String> = q
            .into_iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        format!("{}?{}", r.path, qs.join("&"))
    }
}

pub fn login_page(r: &Req, ctx: &WebContext, error: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(e) = error {
        let _ = write!(body, "<p class=\"flash error\">{}</p>", esc(e));
    }
    body.push_str(
        "<p>On the daemon's machine, run <code>netkeyctl console</code> and open the one-time \
         URL it prints.</p>",
    );
    if ctx.console.has_password() {
        body.push_str(
            "<form method=\"post\" action=\"/login\" class=\"login\"><label>Console password \
             <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label> \
             <button>Log in</button></form>",
        );
    } else {
        body.push_str(
            "<p>From other machines, log in over HTTPS with the console password, once an \
             administrator has set one with <code>netkeyctl console --set-password</code>.</p>",
        );
    }
    layout("Log in", r, None, None, &body)
}

pub(super) fn not_found() -> Response<Full<Bytes>> {
    text(StatusCode::NOT_FOUND, "no such page\n")
}

fn failed(r: &Req, session: &Session, status: Option<&Status>, e: &str) -> Response<Full<Bytes>> {
    let mut resp = html(layout(
        "Error",
        r,
        Some(session),
        status,
        &format!("<p class=\"flash error\">{}</p>", esc(e)),
    ));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

pub async fn page(r: &Req, session: &Session, ctx: &WebContext) -> Response<Full<Bytes>> {
    let status: Status = match ask(ctx, AdminRequest::Status).await {
        Ok(s) => s,
        Err(e) => return failed(r, session, None, &e),
    };
    let built = match r.path.as_str() {
        "/" => overview(r, session, ctx, &status).await,
        "/pools" => pools(r, session, ctx, &status).await,
        "/pool" => pool(r, session, ctx, &status).await,
        "/servers" => servers(r, session, ctx, &status).await,
        "/server" => server(r, session, ctx, &status).await,
        "/cameras" => cameras(r, session, ctx, &status).await,
        "/keys" => keys(ctx, &status).await,
        "/audit" => audit(r, ctx, &status).await,
        "/usage" => usage(r, ctx, &status).await,
        _ => return not_found(),
    };
    let title = NAV
        .iter()
        .find(|(p, _)| *p == r.path)
        .map(|(_, t)| t.to_string())
        .unwrap_or_else(|| match r.path.as_str() {
            "/pool" => format!("Pool {}", r.query.get("pool").cloned().unwrap_or_default()),
            "/server" => format!("Server {}", r.query.get("id").cloned().unwrap_or_default()),
            _ => String::new(),
        });
    match built {
        Ok(body) => html(layout(&title, r, Some(session), Some(&status), &body)),
        Err(e) => failed(r, session, Some(&status), &e),
    }
}

fn seat_table(seats: &[SeatUsage], servers: Option<u64>) -> String {
    let mut o = String::from(
        "<table class=\"seats\"><tr><th>Feature</th><th></th><th>In use</th><th>Allocated</th>\
         <th>Revoking</th><th>Free</th></tr>",
    );
    for s in seats {
        let over = if s.in_use > s.total {
            " <span class=\"warn\">over the allocation: nothing is granted until use is back under</span>"
        } else {
            ""
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}{over}</td></tr>",
            esc(&s.feature),
            chart::bar(s.in_use, s.revoking, s.total),
            s.in_use,
            s.total,
            s.revoking,
            s.free
        );
    }
    o.push_str("</table>");
    if let Some(n) = servers {
        let _ = write!(
            o,
            "<p class=\"muted\">{n} video server{} enrolled</p>",
            plural(n)
        );
    }
    o
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn when(now: Timestamp, t: Timestamp) -> String {
    format!(
        "<time datetime=\"{0}\" title=\"{0}\">{1}</time>",
        esc(&t.rfc3339()),
        esc(&relative(now, t))
    )
}

async fn overview(
    _r: &Req,
    _session: &Session,
    ctx: &WebContext,
    status: &Status,
) -> Result<String, String> {
    let pools: Vec<PoolView> = ask(ctx, AdminRequest::PoolList).await?;
    let cams: Vec<CameraView> = ask(
        ctx,
        AdminRequest::CameraList {
            server: None,
            pool: None,
            feature: None,
        },
    )
    .await?;
    let now = status.now;
    let mut o = String::new();
    let mut warnings: Vec<String> = Vec::new();
    if let Some(e) = &status.store_error {
        warnings.push(format!(
            "The state store is failing ({e}): changes are refused; leases are renewed in memory."
        ));
    }
    for d in &status.duplicate_keys {
        warnings.push(format!(
            "DuplicateKey: key {} is also offered by daemon {} at {}. A key belongs on one daemon only.",
            d.key_id, d.other_daemon, d.other_address
        ));
    }
    for k in &status.keys {
        if k.expires_at <= now {
            warnings.push(format!("Key {} has expired.", k.key_id));
        } else if k.expires_at.since(now) < EXPIRY_WARNING_MS {
            warnings.push(format!(
                "Key {} expires {} ({}).",
                k.key_id,
                relative(now, k.expires_at),
                k.expires_at
            ));
        }
        for s in k.seats.iter().filter(|s| s.in_use > s.total) {
            warnings.push(format!(
                "Key {}: {} {} in use of {} allocated (the allocation shrank); nothing is granted until use is back under.",
                k.key_id, s.in_use, s.feature, s.total
            ));
        }
    }
    for p in &pools {
        for e in p
            .entries
            .iter()
            .filter(|e| !e.expired && e.not_after.since(now) < EXPIRY_WARNING_MS)
        {
            warnings.push(format!(
                "Sales order {}: {} {} seats of pool {} expire {} ({}).",
                e.order,
                e.seats,
                e.feature,
                p.pool,
                relative(now, e.not_after),
                e.not_after
            ));
        }
    }
    let contested: Vec<&CameraView> = cams.iter().filter(|c| c.contested).collect();
    if !contested.is_empty() {
        warnings.push(format!(
            "CameraContested: {} moved between servers repeatedly (two servers may both be configured to record {}).",
            contested
                .iter()
                .map(|c| c.camera_id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if contested.len() == 1 { "it" } else { "them" }
        ));
    }
    if !warnings.is_empty() {
        o.push_str("<ul class=\"warnings\">");
        for w in &warnings {
            let _ = write!(o, "<li>{}</li>", esc(w));
        }
        o.push_str("</ul>");
    }
    let _ = write!(
        o,
        "<p class=\"muted\">{} &middot; daemon {} &middot; listening on {} &middot; up since {} &middot; \
         {} video server{} ({} live) &middot; {} camera{} licensed &middot; audit log {} records</p>",
        esc(&status.software),
        esc(&status.daemon_id),
        esc(&status.listen),
        when(now, status.started_at),
        status.servers,
        plural(status.servers),
        status.servers_live,
        status.cameras,
        plural(status.cameras),
        status.audit_head.count
    );
    if status.keys.is_empty() {
        o.push_str("<p>No key is installed.</p>");
    }
    for k in &status.keys {
        let _ = write!(
            o,
            "<section class=\"key\"><h2>Key {}{} <span class=\"muted\">revision {} &middot; {} &middot; expires {}</span></h2>",
            esc(&k.key_id),
            if k.demo { " <span class=\"badge\">DEMO</span>" } else { "" },
            k.revision,
            esc(&k.customer),
            when(now, k.expires_at)
        );
        o.push_str(&seat_table(&k.seats, None));
        o.push_str("</section>");
    }
    Ok(o)
}

fn pool_options(pools: &[PoolView], selected: Option<&str>) -> String {
    pools
        .iter()
        .map(|p| {
            let sel = if selected == Some(p.pool.as_str()) {
                " selected"
            } else {
                ""
            };
            format!("<option value=\"{0}\"{sel}>{0}</option>", esc(&p.pool))
        })
        .collect()
}

fn entries_table(now: Timestamp, p: &PoolView) -> String {
    if p.entries.is_empty() {
        return "<p class=\"muted\">holds no seats</p>".into();
    }
    let mut o = String::from(
        "<table class=\"entries\"><tr><th>Sales order</th><th>Feature</th><th>Seats</th><th>Until</th></tr>",
    );
    for e in &p.entries {
        let _ = write!(
            o,
            "<tr{}><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}{}</td></tr>",
            if e.expired { " class=\"expired\"" } else { "" },
            esc(&e.order),
            esc(&e.feature),
            e.seats,
            when(now, e.not_after),
            if e.expired { " (expired)" } else { "" }
        );
    }
    o.push_str("</table>");
    o
}

async fn pools(
    r: &Req,
    session: &Session,
    ctx: &WebContext,
    status: &Status,
) -> Result<String, String> {
    let pools: Vec<PoolView> = ask(ctx, AdminRequest::PoolList).await?;
    let back = here(r);
    let now = status.now;
    let mut o = String::new();
    for p in &pools {
        let _ = write!(
            o,
            "<section class=\"pool\"><h2><a href=\"/pool?pool={}\">{}</a>{}</h2>",
            enc(&p.pool),
            esc(&p.pool),
            if p.demo {
                " <span class=\"badge\">DEMO</span>"
            } else {
                ""
            }
        );
        o.push_str(&seat_table(&p.seats, Some(p.servers)));
        o.push_str(&entries_table(now, p));
        o.push_str("<div class=\"actions\">");
        o.push_str(&form(session, "/pools/code", &back, "inline"));
        let _ = write!(
            o,
            "{}<button>New enrolment code</button></form>",
            hidden("pool", &p.pool)
        );
        if p.name != crate::core::DEFAULT_POOL {
            o.push_str(&form(session, "/pools/delete", &back, "inline"));
            let _ = write!(
                o,
                "{}<button class=\"danger\">Delete pool</button></form>",
                hidden("pool", &p.pool)
            );
        }
        o.push_str("</div></section>");
    }
    let keys: Vec<String> = status.keys.iter().map(|k| k.key_id.clone()).collect();
    o.push_str("<section><h2>Create a pool</h2>");
    o.push_str(&form(session, "/pools/create", &back, "stacked"));
    let _ = write!(
        o,
        "<label>Name <input name=\"name\" required maxlength=\"64\"></label>\
         <label>Key <select name=\"key\">{}</select></label>\
         <label>Seats from Default <input name=\"seats\" placeholder=\"camera=4 lpr=1@SO-1001\"></label>\
         <button>Create pool</button></form>\
         <p class=\"muted\">Only unused seats move. <code>FEATURE=N</code> takes seats from the \
         entries that expire last; <code>FEATURE=N@ORDER</code> from that sales order.</p></section>",
        keys.iter()
            .map(|k| format!("<option>{}</option>", esc(k)))
            .collect::<String>()
    );
    o.push_str("<section><h2>Move seats between pools</h2>");
    o.push_str(&form(session, "/pools/move", &back, "stacked"));
    let _ = write!(
        o,
        "<label>From <select name=\"from\">{0}</select></label>\
         <label>To <select name=\"to\">{0}</select></label>\
         <label>Seats <input name=\"seats\" required placeholder=\"camera=2\"></label>\
         <button>Move seats</button></form></section>",
        pool_options(&pools, None)
    );
    Ok(o)
}

async fn pool(
    r: &Req,
    session: &Session,
    ctx: &WebContext,
    status: &Status,
) -> Result<String, String> {
    let name = r.query.get("pool").cloned().unwrap_or_default();
    let d: PoolDetail = ask(ctx, AdminRequest::PoolShow { pool: name }).await?;
    let back = here(r);
    let mut o = seat_table(&d.pool.seats, Some(d.pool.servers));
    o.push_str(&entries_table(status.now, &d.pool));
    o.push_str("<div class=\"actions\">");
    o.push_str(&form(session, "/pools/code", &back, "inline"));
    let _ = write!(
        o,
        "{}<button>New enrolment code</button></form></div>",
        hidden("pool", &d.pool.pool)
    );
    o.push_str("<h2>Video servers</h2>");
    let all: Vec<PoolView> = ask(ctx, AdminRequest::PoolList).await?;
    o.push_str(&server_table(r, session, status.now, &d.servers, &all));
    Ok(o)
}

fn seats_text(seats: &[SeatUsage]) -> String {
    seats
        .iter()
        .map(|s| format!("{} {}", s.in_use, s.feature))
        .collect::<Vec<_>>()
        .join(", ")
}

fn server_state(now: Timestamp, s: &ServerView) -> String {
    let mut o = format!(
        "<span class=\"state {}\">{}</span>",
        esc(&s.state.replace(' ', "-")),
        esc(&s.state)
    );
    if s.state != "live" {
        if let Some(end) = s.reservation_end {
            let _ = write!(
                o,
                " <span class=\"muted\">reservation ends {}</span>",
                when(now, end)
            );
        }
    }
    o
}

fn server_table(
    r: &Req,
    session: &Session,
    now: Timestamp,
    servers: &[ServerView],
    pools: &[PoolView],
) -> String {
    if servers.is_empty() {
        return "<p class=\"muted\">No video server.</p>".into();
    }
    let back = here(r);
    let mut o = String::from(
        "<table class=\"servers\"><tr><th>Name</th><th>Pool</th><th>Key</th><th>Cameras</th>\
         <th>Licences</th><th>Last check-in</th><th>Version</th><th>State</th><th>Actions</th></tr>",
    );
    for s in servers {
        let _ = write!(
            o,
            "<tr><td><a href=\"/server?id={}\">{}</a><br><span class=\"muted id\">{}</span></td>\
             <td>{}</td><td>{}</td><td class=\"num\">{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"actions\">",
            enc(&s.server_id),
            esc(&s.name),
            esc(&s.server_id),
            esc(&s.pool),
            esc(&s.key_id),
            s.cameras,
            if s.revoking > 0 {
                format!(" <span class=\"muted\">+{} revoking</span>", s.revoking)
            } else {
                String::new()
            },
            esc(&seats_text(&s.seats)),
            when(now, s.last_checkin),
            esc(&s.version),
            server_state(now, s)
        );
        o.push_str(&form(session, "/servers/rename", &back, "inline"));
        let _ = write!(
            o,
            "{}<input name=\"name\" required maxlength=\"128\" value=\"{}\" aria-label=\"new name\"><button>Rename</button></form>",
            hidden("server", &s.server_id),
            esc(&s.name)
        );
        o.push_str(&form(session, "/servers/move", &back, "inline"));
        let _ = write!(
            o,
            "{}<select name=\"pool\" aria-label=\"pool\">{}</select><button>Move</button></form>",
            hidden("server", &s.server_id),
            pool_options(pools, Some(&s.pool))
        );
        o.push_str(&form(session, "/servers/kick", &back, "inline"));
        let _ = write!(
            o,
            "{}<label class=\"check\"><input type=\"checkbox\" name=\"force\" value=\"1\"> force</label><button class=\"danger\">Kick</button></form></td></tr>",
            hidden("server", &s.server_id)
        );
    }
    o.push_str("</table>");
    o
}

async fn servers(
    r: &Req,
    session: &Session,
    ctx: &WebContext,
    status: &Status,
) -> Result<String, String> {
    let servers: Vec<ServerView> = ask(ctx, AdminRequest::ServerList).await?;
    let pools: Vec<PoolView> = ask(ctx, AdminRequest::PoolList).await?;
    let mut o = server_table(r, session, status.now, &servers, &pools);
    o.push_str(
        "<p class=\"muted\"><b>live</b>: connected. <b>silent</b>: not connected, licensed by its \
         offline grace. <b>reservation ending</b>: silent past its grace; its seats come back \
         at the time shown. A kick revokes every camera except newly added ones; the server \
         is forgotten once it holds nothing. <b>force</b> frees the seats at once (an \
         audited overlap).</p>",
    );
    Ok(o)
}

async fn server(
    r: &Req,
    session: &Session,
    ctx: &WebContext,
    status: &Status,
) -> Result<String, String> {
    let id = r.query.get("id").cloned().unwrap_or_default();
    let d: ServerDetail = ask(ctx, AdminRequest::ServerShow { server: id }).await?;
    let pools: Vec<PoolView> = ask(ctx, AdminRequest::PoolList).await?;
    let mut o = server_table(
        r,
        session,
        status.now,
        std::slice::from_ref(&d.server),
        &pools,
    );
    o.push_str("<h2>Cameras</h2>");
    o.push_str(&camera_table(r, session, status.now, &d.cameras));
    Ok(o)
}

fn camera_table(r: &Req, session: &Session, now: Timestamp, cams: &[CameraView]) -> String {
    if cams.is_empty() {
        return "<p class=\"muted\">No camera.</p>".into();
    }
    let back = here(r);
    let mut o = String::from(
        "<table class=\"cameras\"><tr><th>Camera</th><th>Key</th><th>Server</th><th>Features</th>\
         <th>Epoch</th><th>Since</th><th>Last renewal</th><th>Newly added until</th><th>State</th><th>Actions</th></tr>",
    );
    for c in cams {
        let features: Vec<String> = c.features.iter().map(|(f, n)| format!("{f}={n}")).collect();
        let state = match (c.state.as_str(), c.revoking_until) {
            ("revoking", Some(u)) => {
                format!("revoking until acknowledged, at most {}", relative(now, u))
            }
            (s, _) => s.to_string(),
        };
        let _ = write!(
            o,
            "<tr><td>{}{}{}</td><td>{}</td><td><a href=\"/server?id={}\">{}</a></td><td>{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"actions\">",
            esc(&c.camera_id),
            if c.contested {
                " <span class=\"badge warn\" title=\"moved between servers repeatedly\">CameraContested</span>"
            } else {
                ""
            },
            if c.legacy { " <span class=\"badge\">legacy</span>" } else { "" },
            esc(&c.key_id),
            enc(&c.server_id),
            esc(if c.server_name.is_empty() {
                &c.server_id
            } else {
                &c.server_name
            }),
            esc(&features.join(", ")),
            c.epoch,
            c.granted_at.map(|t| when(now, t)).unwrap_or_else(|| "-".into()),
            when(now, c.last_renewal),
            c.newly_added_until
                .map(|t| when(now, t))
                .unwrap_or_else(|| "-".into()),
            esc(&state)
        );
        if c.state == "held" {
            o.push_str(&form(session, "/cameras/free", &back, "inline"));
            let _ = write!(
                o,
                "{}{}<label class=\"check\"><input type=\"checkbox\" name=\"force\" value=\"1\"> force</label><button class=\"danger\">Free</button></form>",
                hidden("camera", &c.camera_id),
                hidden("key", &c.key_id)
            );
        }
        o.push_str("</td></tr>");
    }
    o.push_str("</table>");
    o
}

async fn cameras(
    r: &Req,
    session: &Session,
    ctx: &WebContext,
    status: &Status,
) -> Result<String, String> {
    let pick = |k: &str| r.query.get(k).filter(|v| !v.is_empty()).cloned();
    let (server, pool, feature) = (pick("server"), pick("pool"), pick("feature"));
    let cams: Vec<CameraView> = ask(
        ctx,
        AdminRequest::CameraList {
            server: server.clone(),
            pool: pool.clone(),
            feature: feature.clone(),
        },
    )
    .await?;
    let mut o = format!(
        "<form method=\"get\" action=\"/cameras\" class=\"filters\">\
         <label>Server <input name=\"server\" value=\"{}\"></label>\
         <label>Pool <input name=\"pool\" value=\"{}\"></label>\
         <label>Feature <input name=\"feature\" value=\"{}\"></label><button>Filter</button></form>",
        esc(&server.unwrap_or_default()),
        esc(&pool.unwrap_or_default()),
        esc(&feature.unwrap_or_default())
    );
    let contested = cams.iter().filter(|c| c.contested).count();
    if contested > 0 {
        let _ = write!(
            o,
            "<ul class=\"warnings\"><li>CameraContested: {contested} camera{} moved between servers \
             repeatedly; check that only one video server is configured to record {}.</li></ul>",
            plural(contested as u64),
            if contested == 1 { "it" } else { "each" }
        );
    }
    o.push_str(&camera_table(r, session, status.now, &cams));
    o.push_str(
        "<p class=\"muted\">Freeing tells the holder to stop; its seat returns when it \
         acknowledges (or its reservation ends). Newly added cameras cannot be freed before \
         their revocation period ends, even with <b>force</b>.</p>",
    );
    Ok(o)
}

async fn keys(ctx: &WebContext, status: &Status) -> Result<String, String> {
    let keys: Vec<KeyView> = ask(ctx, AdminRequest::KeyList).await?;
    let pools: Vec<PoolView> = ask(ctx, AdminRequest::PoolList).await?;
    let now = status.now;
    let mut o = String::new();
    if keys.is_empty() {
        o.push_str("<p>No key is installed.</p>");
    }
    for k in &keys {
        let _ = write!(
            o,
            "<section class=\"key\"><h2>{}{}</h2><table class=\"facts\">\
             <tr><th>Kind</th><td>{}</td></tr><tr><th>Revision</th><td>{}</td></tr>\
             <tr><th>Customer</th><td>{}</td></tr><tr><th>Expires</th><td>{}</td></tr>\
             <tr><th>Heartbeat interval</th><td>{} s</td></tr><tr><th>Offline grace</th><td>{}</td></tr></table>",
            esc(&k.key_id),
            if k.demo { " <span class=\"badge\">DEMO</span>" } else { "" },
            esc(&format!("{:?}", k.kind).to_lowercase()),
            k.revision,
            esc(&k.customer),
            when(now, k.expires_at),
            k.heartbeat_interval_secs,
            esc(&crate::core::time::human_span(k.offline_grace_secs * 1000))
        );
        o.push_str(&seat_table(&k.seats, None));
        o.push_str("<h3>Sales orders by pool</h3><table class=\"entries\"><tr><th>Pool</th><th>Sales order</th><th>Feature</th><th>Seats</th><th>Until</th></tr>");
        for p in pools.iter().filter(|p| p.key_id == k.key_id) {
            for e in &p.entries {
                let _ = write!(
                    o,
                    "<tr{}><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                    if e.expired { " class=\"expired\"" } else { "" },
                    esc(&p.pool),
                    esc(&e.order),
                    esc(&e.feature),
                    e.seats,
                    when(now, e.not_after)
                );
            }
        }
        o.push_str("</table></section>");
    }
    Ok(o)
}

async fn audit(r: &Req, ctx: &WebContext, status: &Status) -> Result<String, String> {
    let pick = |k: &str| r.query.get(k).filter(|v| !v.is_empty()).cloned();
    // Without a Since, the last 30 days: a long-lived log is large, and the page is for
    // looking things up (`netkeyctl audit` exports all of it).
    let since = match pick("since") {
        Some(s) => Timestamp::parse_rfc3339(&s)?,
        None => status.now.minus(30 * DAY),
    };
    let since = Some(since);
    let (action, q) = (pick("action"), pick("q"));
    let export: AuditExport = ask(ctx, AdminRequest::Audit { since }).await?;
    let mut actions: Vec<&str> = export.records.iter().map(|r| r.action.as_str()).collect();
    actions.sort();
    actions.dedup();
    let matches = |rec: &crate::store::AuditRecord| {
        action.as_ref().is_none_or(|a| rec.action == *a)
            && q.as_ref().is_none_or(|q| {
                let q = q.to_lowercase();
                [
                    rec.key_id.as_deref(),
                    rec.server_id.as_deref(),
                    rec.camera_id.as_deref(),
                    rec.pool.as_deref(),
                    Some(rec.detail.as_str()),
                ]
                .into_iter()
                .flatten()
                .any(|f| f.to_lowercase().contains(&q))
            })
    };
    let rows: Vec<&crate::store::AuditRecord> =
        export.records.iter().rev().filter(|r| matches(r)).collect();
    let mut o = format!(
        "<form method=\"get\" action=\"/audit\" class=\"filters\">\
         <label>Since <input name=\"since\" placeholder=\"2026-11-01T00:00:00Z\" value=\"{}\"></label>\
         <label>Action <select name=\"action\"><option value=\"\">any</option>{}</select></label>\
         <label>Server, camera, pool, key or text <input name=\"q\" value=\"{}\"></label>\
         <button>Filter</button></form>",
        esc(&r.query.get("since").cloned().unwrap_or_default()),
        actions
            .iter()
            .map(|a| format!(
                "<option{}>{}</option>",
                if action.as_deref() == Some(*a) { " selected" } else { "" },
                esc(a)
            ))
            .collect::<String>(),
        esc(&q.clone().unwrap_or_default())
    );
    let _ = write!(
        o,
        "<p class=\"muted\">{} of {} records since {} match{}; head: {} records, hash <code>{}</code> \
         (<code>netkeyctl audit verify</code> checks the chain).</p>",
        rows.len(),
        export.records.len(),
        esc(&since.map(|t| t.rfc3339()).unwrap_or_default()),
        if rows.len() > AUDIT_ROWS {
            format!(", the newest {AUDIT_ROWS} shown")
        } else {
            String::new()
        },
        export.head.count,
        crate::hex(&export.head.hash)
    );
    o.push_str("<table class=\"audit\"><tr><th>#</th><th>At</th><th>Action</th><th>Key</th><th>Pool</th><th>Server</th><th>Camera</th><th>Detail</th></tr>");
    for rec in rows.iter().take(AUDIT_ROWS) {
        let opt = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
        let _ = write!(
            o,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            rec.index,
            esc(&rec.at.rfc3339()),
            esc(&rec.action),
            opt(&rec.key_id),
            opt(&rec.pool),
            opt(&rec.server_id),
            opt(&rec.camera_id),
            esc(&rec.detail)
        );
    }
    o.push_str("</table>");
    Ok(o)
}

async fn usage(r: &Req, ctx: &WebContext, status: &Status) -> Result<String, String> {
    let long = r.query.get("span").is_some_and(|s| s == "30d");
    let span = if long { 30 * DAY } else { DAY };
    let now = status.now;
    let from = now.minus(span);
    let h: UsageHistory = ask(ctx, AdminRequest::Usage { since: Some(from) }).await?;
    let mut o = format!(
        "<p class=\"tabs\"><a href=\"/usage?span=24h\"{}>Last 24 hours</a> <a href=\"/usage?span=30d\"{}>Last 30 days</a></p>\
         <p class=\"muted\">Seats in use per feature (solid) and allocated (dashed), sampled every {} minutes.</p>",
        if long { "" } else { " class=\"current\"" },
        if long { " class=\"current\"" } else { "" },
        h.sample_interval_secs / 60
    );
    for k in &status.keys {
        for s in &k.seats {
            let mut points = chart::series(&h.samples, &k.key_id, &s.feature);
            // The chart ends with the present, not with the last sample.
            points.push((now, s.in_use, s.total));
            let points = chart::downsample(&points, from, now, 360);
            let title = format!("{} {}", k.key_id, s.feature);
            let _ = write!(
                o,
                "<section class=\"usage\"><h2>{} <span class=\"muted\">now {} in use of {}</span></h2>{}</section>",
                esc(&title),
                s.in_use,
                s.total,
                chart::usage_chart(&title, &points, from, now)
            );
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}
