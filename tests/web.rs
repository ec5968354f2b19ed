//! The web console against the real daemon over loopback plain HTTP: no session, no
//! access; login with a one-time URL; cookie attributes; a foreign Host header, a forged
//! cross-site POST and a missing or wrong CSRF token refused; actions done through the
//! forms; /metrics parsed as Prometheus text and agreeing with `status`. And, with a
//! daemon run in-process and connections handed to `serve_http` by hand: plain HTTP
//! from another machine refused, the Secure cookie over HTTPS, wrong passwords refused
//! and rate limited.

use crate::util::*;
use std::io::{Read, Write};
use std::net::TcpStream;

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of the hidden CSRF field of the page.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in {}", self.body));
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

/// Parses a whole HTTP/1.1 response (the test asked for `Connection: close`).
fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("no header end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

fn raw_request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}

struct Browser<'a> {
    d: &'a DaemonProcess,
    cookie: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(d: &'a DaemonProcess) -> Self {
        Browser { d, cookie: None }
    }

    fn send(&self, method: &str, path: &str, extra: &[(&str, &str)], body: &str) -> Resp {
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        let cookie;
        if let Some(c) = &self.cookie {
            cookie = format!("netkey_session={c}");
            headers.push(("Cookie", &cookie));
        }
        let has_host = extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        let host = if has_host { "" } else { self.d.addr.as_str() };
        let mut req = raw_request(method, path, host, &headers, body);
        if has_host {
            req = req.replacen("Host: \r\n", "", 1);
        }
        let mut s = TcpStream::connect(&self.d.addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        parse(&raw)
    }

    fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], "")
    }

    fn post(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send("POST", path, &[], &body)
    }

    /// Logs in with a fresh one-time URL from `netkeyctl console`.
    fn login(&mut self) -> Resp {
        let url = self.d.json(&["console"])["url"]
            .as_str()
            .unwrap()
            .to_string();
        let path = &url[url.find("/login").unwrap()..];
        let r = self.get(path);
        assert_eq!(r.status, 303, "{r:?}");
        let set = r.header("set-cookie").expect("no cookie").to_string();
        let id = set
            .strip_prefix("netkey_session=")
            .and_then(|v| v.split(';').next())
            .unwrap();
        self.cookie = Some(id.to_string());
        r
    }

    /// An action through its form: the CSRF token from `page`, then the flash message
    /// on the page the browser is sent back to.
    fn act(&self, page: &str, action: &str, form: &[(&str, &str)]) -> String {
        let csrf = self.get(page).csrf();
        let mut fields = vec![("csrf", csrf.as_str()), ("back", page)];
        fields.extend_from_slice(form);
        let r = self.post(action, &fields);
        assert_eq!(r.status, 303, "{action}: {r:?}");
        assert_eq!(r.header("location"), Some(page));
        let back = self.get(page);
        let at = back.body.find("class=\"flash").expect("no flash message");
        let msg = &back.body[at..];
        let msg = &msg[msg.find('>').unwrap() + 1..];
        msg[..msg.find("</p>").unwrap()].to_string()
    }
}

#[test]
fn no_session_no_access_and_a_one_time_url_logs_in_once() {
    let d = DaemonProcess::start_demo();
    let mut b = Browser::new(&d);
    for page in [
        "/", "/pools", "/servers", "/cameras", "/keys", "/audit", "/usage",
    ] {
        let r = b.get(page);
        assert_eq!(r.status, 303, "{page} without a session: {r:?}");
        assert_eq!(r.header("location"), Some("/login"));
    }
    let r = b.post("/pools/create", &[("name", "X"), ("seats", "camera=1")]);
    assert_eq!(r.status, 403, "an action without a session");
    let login = b.get("/login");
    assert_eq!(login.status, 200);
    assert!(login.body.contains("netkeyctl console"));
    let r = b.get("/login?token=0123456789abcdef");
    assert_eq!(r.status, 403, "a made-up token");

    let url = d.json(&["console"])["url"].as_str().unwrap().to_string();
    let path = url[url.find("/login").unwrap()..].to_string();
    let r = b.get(&path);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/"));
    let cookie = r.header("set-cookie").unwrap();
    let attrs: Vec<&str> = cookie.split("; ").collect();
    assert!(
        attrs[0].starts_with("netkey_session=") && attrs[0].len() == 15 + 64,
        "{cookie}"
    );
    for a in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(&a), "cookie lacks {a}: {cookie}");
    }
    assert!(
        !attrs.contains(&"Secure"),
        "plain HTTP cookie marked Secure: {cookie}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    // The URL works once.
    assert_eq!(b.get(&path).status, 403, "a used token logged in again");

    b.cookie = Some(attrs[0]["netkey_session=".len()..].to_string());
    let overview = b.get("/");
    assert_eq!(overview.status, 200, "{overview:?}");
    assert!(overview.body.contains("Key DEMO"), "{}", overview.body);
    assert!(overview.body.contains("DEMO mode"));
    assert!(overview.body.contains("<svg class=\"bar\""));
    let csp = overview.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    for page in [
        "/pools",
        "/servers",
        "/cameras",
        "/keys",
        "/audit",
        "/usage",
        "/usage?span=30d",
    ] {
        let r = b.get(page);
        assert_eq!(r.status, 200, "{page}: {r:?}");
    }
    let css = b.get("/static/style.css");
    assert_eq!(css.header("content-type"), Some("text/css"));
    assert_eq!(b.get("/nowhere").status, 404);

    // Log out: the session is gone.
    let csrf = b.get("/").csrf();
    let r = b.post("/logout", &[("csrf", &csrf)]);
    assert_eq!(r.status, 303);
    assert_eq!(b.get("/").status, 303);
    b.login();
    assert_eq!(b.get("/").status, 200);
}

#[test]
fn foreign_hosts_forged_posts_and_bad_csrf_tokens_are_refused() {
    let d = DaemonProcess::start_demo();
    let mut b = Browser::new(&d);
    b.login();
    let port = d.addr.rsplit(':').next().unwrap().to_string();
    // DNS rebinding: a page of evil.example whose name now points at 127.0.0.1.
    let evil = format!("evil.example:{port}");
    let r = b.send("GET", "/", &[("Host", &evil)], "");
    assert_eq!(r.status, 421, "{r:?}");
    let r = b.send("GET", "/metrics", &[("Host", &evil)], "");
    assert_eq!(r.status, 421, "metrics for a foreign host: {r:?}");
    let local = format!("localhost:{port}");
    assert_eq!(b.send("GET", "/", &[("Host", &local)], "").status, 200);

    let pools_before = d.json(&["pool", "list"]);
    let csrf = b.get("/pools").csrf();
    let form = |token: &str| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("csrf", token),
                ("name", "Forged"),
                ("key", "DEMO"),
                ("seats", "camera=1"),
                ("back", "/pools"),
            ])
            .finish()
    };
    // A cross-site form post carries the victim's cookie only without SameSite=Strict;
    // even so, its Origin gives it away...
    let r = b.send(
        "POST",
        "/pools/create",
        &[("Origin", "http://evil.example")],
        &form(&csrf),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("cross-site"));
    let r = b.send(
        "POST",
        "/pools/create",
        &[("Sec-Fetch-Site", "cross-site")],
        &form(&csrf),
    );
    assert_eq!(r.status, 403, "{r:?}");
    // ...and without the page's CSRF token nothing happens either.
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("name", "Forged"), ("seats", "camera=1")])
        .finish();
    let r = b.send("POST", "/pools/create", &[], &body);
    assert_eq!(r.status, 403, "no token: {r:?}");
    assert!(r.body.contains("CSRF"));
    let r = b.send("POST", "/pools/create", &[], &form(&"0".repeat(64)));
    assert_eq!(r.status, 403, "wrong token: {r:?}");
    // Another session's token is wrong too.
    let mut other = Browser::new(&d);
    other.login();
    let r = other.send("POST", "/pools/create", &[], &form(&csrf));
    assert_eq!(r.status, 403, "a token of another session: {r:?}");
    assert_eq!(
        d.json(&["pool", "list"]),
        pools_before,
        "a refused POST changed pools"
    );
    // The same form with the right token, from the same origin, works.
    let origin = format!("http://{}", d.addr);
    let r = b.send(
        "POST",
        "/pools/create",
        &[("Origin", &origin)],
        &form(&csrf),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(
        d.json(&["pool", "show", "Forged"])["pool"]["pool"],
        "DEMO/Forged"
    );
}

#[test]
fn every_action_of_the_walkthrough_works_through_the_forms() {
    let d = DaemonProcess::start_demo();
    let mut b = Browser::new(&d);
    b.login();
    // Pools: create by sales order, move seats, make a code.
    let msg = b.act(
        "/pools",
        "/pools/create",
        &[
            ("name", "West"),
            ("key", "DEMO"),
            ("seats", "camera=5@DEMO-CAM, lpr=1"),
        ],
    );
    assert_eq!(
        msg,
        "pool DEMO/West created: 5 camera of DEMO-CAM, 1 lpr of DEMO-LPR"
    );
    let msg = b.act(
        "/pools",
        "/pools/move",
        &[
            ("from", "DEMO/West"),
            ("to", "DEMO/Default"),
            ("seats", "camera=1"),
        ],
    );
    assert!(
        msg.starts_with("seats moved from DEMO/West to DEMO/Default"),
        "{msg}"
    );
    let msg = b.act(
        "/pools",
        "/pools/move",
        &[
            ("from", "DEMO/West"),
            ("to", "DEMO/Default"),
            ("seats", "camera=9"),
        ],
    );
    assert!(
        msg.contains("holds 4 unexpired camera seats; 9 asked"),
        "{msg}"
    );
    let msg = b.act("/pools", "/pools/code", &[("pool", "DEMO/West")]);
    let code: String = msg
        .split("DEMO/West: ")
        .nth(1)
        .unwrap()
        .chars()
        .take(8)
        .collect();
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{msg}");

    // A server enrolled with that code appears with its cameras.
    let en = d.client("vs", &["enrol", &code, "--name", "Dock"]);
    assert!(
        en.status.success(),
        "{}",
        String::from_utf8_lossy(&en.stderr)
    );
    let co = d.client("vs", &["checkout", "cam-1", "cam-2"]);
    assert!(co.status.success());
    let servers = b.get("/servers");
    assert!(servers.body.contains("Dock") && servers.body.contains("DEMO/West"));
    let id = d.json(&["server", "list"])[0]["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    let page = format!("/server?id={id}");
    let show = b.get(&page);
    assert_eq!(show.status, 200);
    assert!(
        show.body.contains("cam-1") && show.body.contains("cam-2"),
        "{}",
        show.body
    );
    let cams = b.get("/cameras?pool=DEMO/West&feature=camera");
    assert!(cams.body.contains("cam-2"));

    // Rename, free a camera (the server is not connected: it stays counted as
    // revoking), free one by force, then kick.
    let msg = b.act(
        &page,
        "/servers/rename",
        &[("server", &id), ("name", "Dock East")],
    );
    assert_eq!(
        msg,
        format!("server {id} is now called &quot;Dock East&quot;")
    );
    let msg = b.act(
        &page,
        "/cameras/free",
        &[("camera", "cam-1"), ("key", "DEMO")],
    );
    assert!(
        msg.contains("camera cam-1") && msg.contains("revoking"),
        "{msg}"
    );
    let msg = b.act(
        &page,
        "/cameras/free",
        &[("camera", "cam-2"), ("key", "DEMO"), ("force", "1")],
    );
    assert!(msg.contains("freed by force"), "{msg}");
    let msg = b.act("/servers", "/servers/kick", &[("server", &id)]);
    assert!(msg.contains("kicked"), "{msg}");
    assert_eq!(d.camera_in_use(), 1, "cam-1 still counted as revoking");
    let msg = b.act(
        "/servers",
        "/servers/kick",
        &[("server", &id), ("force", "1")],
    );
    assert!(msg.contains("kicked"), "{msg}");

    // Delete the pool once its server is gone; the audit page shows it all.
    let msg = b.act("/pools", "/pools/delete", &[("pool", "DEMO/West")]);
    assert!(
        msg == "pool DEMO/West deleted; its seats are back in DEMO/Default"
            || msg.contains("still"),
        "{msg}"
    );
    let audit = b.get("/audit?action=pool_created");
    assert!(audit.body.contains("DEMO/West"), "{}", audit.body);
    assert!(
        !audit.body.contains("<td>granted</td>"),
        "the action filter let other records through"
    );
    let audit = b.get("/audit?q=cam-2");
    assert!(audit.body.contains("forced_overlap"));
}

#[test]
fn names_chosen_by_video_servers_are_shown_as_text_not_markup() {
    let d = DaemonProcess::start_demo();
    let evil = "<script>alert(1)</script>";
    assert!(d
        .client("x", &["enrol", &d.code(), "--name", evil])
        .status
        .success());
    assert!(d.client("x", &["checkout", "<img src=x>"]).status.success());
    let mut b = Browser::new(&d);
    b.login();
    for page in ["/servers", "/cameras", "/audit"] {
        let body = b.get(page).body;
        assert!(
            !body.contains("<script>") && !body.contains("<img"),
            "{page}: {body}"
        );
        assert!(
            body.contains("&lt;script&gt;") || body.contains("&lt;img"),
            "{page}"
        );
    }
}

#[test]
fn metrics_parse_as_prometheus_text_and_match_status() {
    let d = DaemonProcess::start_demo();
    let code = d.code();
    assert!(d
        .client("m", &["enrol", &code, "--name", "M"])
        .status
        .success());
    assert!(d
        .client("m", &["checkout", "c1", "c2", "c3", "--module", "lpr"])
        .status
        .success());
    d.ctl_ok(&["pool", "create", "Side", "camera=2"]);
    let over = d.client(
        "m",
        &[
            "checkout", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12", "c13", "c14",
            "c15",
        ],
    );
    // 16 seats, 2 of them in pool Side: 11 more fit in Default, the 12th is refused.
    assert!(!over.status.success(), "the 15th camera must be refused");
    // The client has exited; its connection's end reaches the core task on its own time.
    eventually("the video server to be seen as silent", || {
        d.json(&["status"])["servers_live"] == 0
    });
    let b = Browser::new(&d);
    let r = b.get("/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let lines = r.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("not Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?}"));
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    let status = d.json(&["status"]);
    for key in status["keys"].as_array().unwrap() {
        let k = key["key_id"].as_str().unwrap();
        for s in key["seats"].as_array().unwrap() {
            let f = s["feature"].as_str().unwrap();
            let labels = [("key", k), ("feature", f)];
            assert_eq!(
                value("netkey_key_seats_in_use", &labels),
                s["in_use"].as_f64().unwrap()
            );
            assert_eq!(
                value("netkey_key_seats_allocated", &labels),
                s["total"].as_f64().unwrap()
            );
            assert_eq!(
                value("netkey_key_seats_revoking", &labels),
                s["revoking"].as_f64().unwrap()
            );
        }
    }
    for p in d.json(&["pool", "list"]).as_array().unwrap() {
        for s in p["seats"].as_array().unwrap() {
            let labels = [
                ("key", p["key_id"].as_str().unwrap()),
                ("pool", p["name"].as_str().unwrap()),
                ("feature", s["feature"].as_str().unwrap()),
            ];
            assert_eq!(
                value("netkey_pool_seats_in_use", &labels),
                s["in_use"].as_f64().unwrap()
            );
            assert_eq!(
                value("netkey_pool_seats_allocated", &labels),
                s["total"].as_f64().unwrap()
            );
        }
    }
    assert_eq!(
        value("netkey_cameras_licensed", &[]),
        status["cameras"].as_f64().unwrap()
    );
    assert_eq!(value("netkey_servers", &[("state", "silent")]), 1.0);
    assert_eq!(value("netkey_servers", &[("state", "live")]), 0.0);
    assert_eq!(value("netkey_grants_total", &[]), 14.0);
    assert_eq!(status["cameras"], 14);
    assert!(value("netkey_refusals_total", &[("reason", "NoSeats")]) >= 1.0);
    assert_eq!(
        value("netkey_audit_records", &[]),
        status["audit_head"]["count"].as_f64().unwrap()
    );
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "netkey_heartbeat_latency_seconds")
        .expect("no heartbeat histogram");
    assert!(
        matches!(hist.value, prometheus_parse::Value::Histogram(_)),
        "{hist:?}"
    );
}

#[test]
fn metrics_can_require_a_session_even_on_loopback() {
    let d = DaemonProcess::start_demo_with(&["--metrics-need-session"]);
    let mut b = Browser::new(&d);
    assert_eq!(b.get("/metrics").status, 401);
    b.login();
    assert_eq!(b.get("/metrics").status, 200);
}

#[test]
fn a_configured_console_host_name_is_answered() {
    let d = DaemonProcess::start_demo_with(&["--console-host", "licences.example.lan"]);
    let mut b = Browser::new(&d);
    b.login();
    let port = d.addr.rsplit(':').next().unwrap().to_string();
    let r = b.send(
        "GET",
        "/",
        &[("Host", &format!("licences.example.lan:{port}"))],
        "",
    );
    assert_eq!(r.status, 200);
    let r = b.send(
        "GET",
        "/",
        &[("Host", &format!("other.example.lan:{port}"))],
        "",
    );
    assert_eq!(r.status, 421);
}

// ---- in-process: connections handed to serve_http as the TLS layer will ----

mod in_process {
    use super::parse;
    use netkey::daemon::{Config, Daemon, ManualClock};
    use netkey::proto::admin::AdminRequest;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn daemon(dir: &tempfile::TempDir) -> Daemon {
        let clock = ManualClock::new(netkey::core::Timestamp(1_800_000_000_000));
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_socket: dir.path().join("admin.sock"),
            state_dir: dir.path().join("state"),
            demo: true,
            no_broadcast: true,
            listener: None,
            discovery: None,
            peers: Vec::new(),
            console: Default::default(),
            ..Config::default()
        };
        Daemon::start(config, clock).await.unwrap()
    }

    /// One request over an in-memory stream, as if from `peer`, inside TLS if `secure`.
    async fn exchange(d: &Daemon, peer: &str, secure: bool, request: String) -> super::Resp {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let peer: SocketAddr = peer.parse().unwrap();
        let task = tokio::spawn(netkey::web::serve_http(server, peer, secure, d.web()));
        client.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        client.read_to_end(&mut raw).await.unwrap();
        task.await.unwrap();
        parse(&raw)
    }

    async fn token(d: &Daemon) -> String {
        let url = d
            .web()
            .admin
            .handle(AdminRequest::ConsoleLogin)
            .await
            .ok
            .unwrap()["url"]
            .as_str()
            .unwrap()
            .to_string();
        url[url.find("token=").unwrap() + 6..].to_string()
    }

    #[tokio::test]
    async fn plain_http_from_another_machine_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(&dir).await;
        let t = token(&d).await;
        let own = d.local_addr().to_string();
        let req = super::raw_request("GET", &format!("/login?token={t}"), &own, &[], "");
        let r = exchange(&d, "192.0.2.10:40000", false, req.clone()).await;
        assert_eq!(r.status, 403, "{r:?}");
        assert!(r.body.contains("https://"), "{}", r.body);
        // The same request from loopback logs in (the token was not used up).
        let r = exchange(&d, "127.0.0.1:40000", false, req).await;
        assert_eq!(r.status, 303, "{r:?}");
        d.shutdown().await;
    }

    #[tokio::test]
    async fn over_https_the_cookie_is_secure_and_wrong_passwords_are_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(&dir).await;
        let remote = "192.0.2.20:50000";
        let own = d.local_addr().to_string();
        let host = own.as_str();
        let t = token(&d).await;
        let r = exchange(
            &d,
            remote,
            true,
            super::raw_request("GET", &format!("/login?token={t}"), host, &[], ""),
        )
        .await;
        assert_eq!(r.status, 303, "{r:?}");
        let cookie = r.header("set-cookie").unwrap();
        for a in ["HttpOnly", "SameSite=Strict", "Secure"] {
            assert!(
                cookie.split("; ").any(|x| x == a),
                "cookie lacks {a}: {cookie}"
            );
        }
        // No password set: password logins are refused.
        let login = |pw: &str| {
            let body = format!("password={pw}");
            super::raw_request("POST", "/login", host, &[], &body)
        };
        let r = exchange(&d, remote, true, login("whatever-it-is")).await;
        assert_eq!(r.status, 401);
        assert!(r.body.contains("no console password is set"));
        let set = d
            .web()
            .admin
            .handle(AdminRequest::ConsolePassword {
                password: Some("the right console password".into()),
            })
            .await;
        assert!(set.error.is_none(), "{set:?}");
        let r = exchange(&d, remote, true, login("the+right+console+password")).await;
        assert_eq!(r.status, 303, "{r:?}");
        assert!(r.header("set-cookie").unwrap().contains("Secure"));
        // Wrong passwords: refused, then the source is made to wait.
        let mut statuses = Vec::new();
        for _ in 0..7 {
            statuses.push(exchange(&d, remote, true, login("wrong")).await.status);
        }
        assert_eq!(&statuses[..6], &[401; 6], "{statuses:?}");
        assert_eq!(statuses[6], 429, "{statuses:?}");
        let r = exchange(&d, remote, true, login("the+right+console+password")).await;
        assert_eq!(
            r.status, 429,
            "a blocked source may not try even the right one"
        );
        assert!(r.body.contains("too many failed logins"));
        // Another source is not blocked.
        let r = exchange(
            &d,
            "192.0.2.21:50000",
            true,
            login("the+right+console+password"),
        )
        .await;
        assert_eq!(r.status, 303);
        d.shutdown().await;
    }

    #[tokio::test]
    async fn usage_samples_follow_the_daemons_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(netkey::core::Timestamp(1_800_000_000_000));
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_socket: dir.path().join("admin.sock"),
            state_dir: dir.path().join("state"),
            demo: true,
            no_broadcast: true,
            listener: None,
            discovery: None,
            peers: Vec::new(),
            console: Default::default(),
            ..Config::default()
        };
        let d = Daemon::start(config, clock.clone()).await.unwrap();
        let api = d.web().admin.clone();
        let usage = |api: netkey::daemon::admin::AdminApi| async move {
            let r = api.handle(AdminRequest::Usage { since: None }).await;
            r.ok.unwrap()["samples"].as_array().unwrap().len()
        };
        assert_eq!(usage(api.clone()).await, 1, "a sample at start");
        for _ in 0..3 {
            clock.advance(300_000);
            // Any request makes the owner task look at the clock.
            api.handle(AdminRequest::Status).await;
        }
        assert_eq!(usage(api.clone()).await, 4);
        let r = api
            .handle(AdminRequest::Usage { since: None })
            .await
            .ok
            .unwrap();
        let row = &r["samples"][3]["rows"][0];
        assert_eq!(row["key_id"], "DEMO");
        assert_eq!(row["total"], 16);
        assert_eq!(r["sample_interval_secs"], 300);
        d.shutdown().await;
    }
}

// ---- a real browser, where one is installed ----

/// Debian's headless Chromium, if installed (the suite does not depend on it).
fn chromium() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
        .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `args` (a fresh profile, no network chatter),
/// killed if it takes over a minute.
fn run_chromium(
    bin: &std::path::Path,
    profile: &std::path::Path,
    args: &[&str],
    url: &str,
) -> Vec<u8> {
    let mut child = std::process::Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let child = Background(child);
    let start = std::time::Instant::now();
    let mut child = child;
    loop {
        if child.0.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "chromium hung"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    reader.join().unwrap()
}

#[test]
fn a_browser_logs_in_with_the_one_time_url_and_sees_the_server_and_its_cameras() {
    let Some(bin) = chromium() else {
        eprintln!("skipped: no chromium installed (apt-get install chromium); the HTTP tests above cover the console");
        return;
    };
    let d = DaemonProcess::start_demo();
    let mut b = Browser::new(&d);
    b.login();
    b.act(
        "/pools",
        "/pools/create",
        &[
            ("name", "West"),
            ("key", "DEMO"),
            ("seats", "camera=6 lpr=2"),
        ],
    );
    let code = d.json(&["pool", "code", "West"])["code"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(d
        .client("dock", &["enrol", &code, "--name", "Dock recorder"])
        .status
        .success());
    assert!(d
        .client("dock", &["checkout", "dock-1", "dock-2", "dock-3"])
        .status
        .success());
    assert!(d
        .client("gate", &["enrol", &d.code(), "--name", "Gate recorder"])
        .status
        .success());
    assert!(d
        .client("gate", &["checkout", "gate-1", "gate-2", "--module", "lpr"])
        .status
        .success());
    b.act(
        "/cameras",
        "/cameras/free",
        &[("camera", "dock-3"), ("key", "DEMO")],
    );

    let profile = tempfile::tempdir().unwrap();
    let login = |next: &str| {
        let url = d.json(&["console"])["url"].as_str().unwrap().to_string();
        format!("{url}&next={next}")
    };
    // The browser follows the one-time URL, keeps the cookie, and renders the page.
    let dom = String::from_utf8(run_chromium(
        &bin,
        profile.path(),
        &["--dump-dom"],
        &login("/servers"),
    ))
    .unwrap();
    assert!(
        dom.contains("Dock recorder") && dom.contains("Gate recorder"),
        "{dom}"
    );
    assert!(dom.contains("DEMO/West"));
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    for (name, page) in [
        ("overview", "/"),
        ("servers", "/servers"),
        ("pools", "/pools"),
    ] {
        let file = shots.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&file);
        let shot = format!("--screenshot={}", file.display());
        run_chromium(&bin, profile.path(), &[&shot], &login(page));
        let png = std::fs::read(&file).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}: no screenshot"
        );
        eprintln!("screenshot of {page}: {}", file.display());
    }
}
