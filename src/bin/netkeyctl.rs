//! netkeyctl: the administrator's tool (over the admin socket) and a video server from
//! the shell (`netkeyctl client ...`, over the licence protocol). Exit 0 on success;
//! otherwise one line on stderr saying why, and a non-zero status.

use clap::Parser;
use netkey::client::{Client, ClientEvent, Trust, VideoServer};
use netkey::core::Timestamp;
use netkey::core::{
    CameraOutcome, CameraView, CheckoutItem, KeyView, PoolView, SeatUsage, ServerView,
};
use netkey::key::VendorPublicKey;
use netkey::proto::admin::*;
use netkey::proto::AuditHead;
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use netkey::cli::netkeyctl::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let result = match cli.command {
        Command::Client(args) => run_client(args, json),
        other => run_admin(&cli.socket, json, other),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netkeyctl: {e}");
            ExitCode::FAILURE
        }
    }
}

type Fallible<T> = Result<T, String>;

/// `println!` that ends quietly when stdout is closed (`netkeyctl ... | head`).
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// `print!` that ends quietly when stdout is closed.
#[macro_export]
macro_rules! out_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if write!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

fn admin<T: DeserializeOwned>(socket: &PathBuf, req: &AdminRequest) -> Fallible<T> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach netkeyd's admin socket {}: {e} (is netkeyd running? see --socket)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("admin socket: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("admin socket: {e}"))?;
    let reply: AdminReply = serde_json::from_str(&answer)
        .map_err(|e| format!("unreadable answer from netkeyd: {e}"))?;
    match (reply.ok, reply.error) {
        (_, Some(e)) => Err(e),
        (Some(v), None) => {
            serde_json::from_value(v).map_err(|e| format!("unexpected answer from netkeyd: {e}"))
        }
        (None, None) => Err("empty answer from netkeyd".into()),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Fallible<()> {
    out!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn demo_mark(demo: bool) -> &'static str {
    if demo {
        " [DEMO]"
    } else {
        ""
    }
}

fn seats_line(seats: &[SeatUsage]) -> String {
    seats
        .iter()
        .map(|s| {
            let rev = if s.revoking > 0 {
                format!(" ({} revoking)", s.revoking)
            } else {
                String::new()
            };
            format!("{} {}/{}{rev}", s.feature, s.in_use, s.total)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn run_admin(socket: &PathBuf, json: bool, command: Command) -> Fallible<ExitCode> {
    match command {
        Command::Status => {
            let s: Status = admin(socket, &AdminRequest::Status)?;
            if json {
                print_json(&s)?;
            } else {
                out!(
                    "{}  daemon {}{}",
                    s.software,
                    s.daemon_id,
                    if s.demo { "  DEMO mode" } else { "" }
                );
                out!("identity {}", s.identity);
                out!("listening on {}, up since {}", s.listen, s.started_at);
                out!(
                    "video servers: {} ({} live), cameras licensed: {}",
                    s.servers,
                    s.servers_live,
                    s.cameras
                );
                out!("audit log: {}", s.audit_head);
                if let Some(d) = &s.discovery {
                    out!("discovery on UDP {d}");
                }
                for d in &s.duplicate_keys {
                    out!(
                        "DuplicateKey: key {} is also offered by daemon {} at {}",
                        d.key_id,
                        d.other_daemon,
                        d.other_address
                    );
                }
                if let Some(e) = &s.store_error {
                    out!("STATE STORE FAILING: {e} (changes are refused; leases are renewed in memory)");
                }
                print_keys(&s.keys);
            }
        }
        Command::Key(KeyCmd::List) => {
            let keys: Vec<KeyView> = admin(socket, &AdminRequest::KeyList)?;
            if json {
                print_json(&keys)?;
            } else {
                print_keys(&keys);
            }
        }
        Command::Pool(PoolCmd::List) => {
            let pools: Vec<PoolView> = admin(socket, &AdminRequest::PoolList)?;
            if json {
                print_json(&pools)?;
            } else {
                out!("{:<24} {:>7}  SEATS (in use/total)", "POOL", "SERVERS");
                for p in pools {
                    out!(
                        "{:<24} {:>7}  {}{}",
                        p.pool,
                        p.servers,
                        seats_line(&p.seats),
                        demo_mark(p.demo)
                    );
                }
            }
        }
        Command::Pool(PoolCmd::Show { pool }) => {
            let d: PoolDetail = admin(socket, &AdminRequest::PoolShow { pool })?;
            if json {
                print_json(&d)?;
            } else {
                out!("pool {}{}", d.pool.pool, demo_mark(d.pool.demo));
                for s in &d.pool.seats {
                    out!(
                        "  {:<10} in use {:>5}  revoking {:>4}  free {:>5}  total {:>5}",
                        s.feature,
                        s.in_use,
                        s.revoking,
                        s.free,
                        s.total
                    );
                }
                print_servers(&d.servers);
            }
        }
        Command::Pool(PoolCmd::Code { pool }) => {
            let c: CodeIssued = admin(socket, &AdminRequest::PoolCode { pool })?;
            if json {
                print_json(&c)?;
            } else {
                out!("{}", c.code);
                eprintln!(
                    "one-time enrolment code for pool {}, valid until {}",
                    c.pool, c.expires_at
                );
            }
        }
        Command::Server(ServerCmd::List) => {
            let servers: Vec<ServerView> = admin(socket, &AdminRequest::ServerList)?;
            if json {
                print_json(&servers)?;
            } else {
                print_servers(&servers);
            }
        }
        Command::Server(ServerCmd::Show { id }) => {
            let d: ServerDetail = admin(socket, &AdminRequest::ServerShow { server: id })?;
            if json {
                print_json(&d)?;
            } else {
                print_servers(std::slice::from_ref(&d.server));
                print_cameras(&d.cameras);
            }
        }
        Command::Server(ServerCmd::Rename { id, name }) => {
            let v: serde_json::Value = admin(
                socket,
                &AdminRequest::ServerRename {
                    server: id.clone(),
                    name: name.clone(),
                },
            )?;
            if json {
                print_json(&v)?;
            } else {
                out!("server {id} is now called {name:?}");
            }
        }
        Command::Server(ServerCmd::Move { id, pool }) => {
            let v: serde_json::Value = admin(
                socket,
                &AdminRequest::ServerMove {
                    server: id.clone(),
                    pool,
                },
            )?;
            if json {
                print_json(&v)?;
            } else {
                out!(
                    "server {id} moved to pool {}",
                    v.get("pool").and_then(|p| p.as_str()).unwrap_or("?")
                );
            }
        }
        Command::Server(ServerCmd::Kick { id, force }) => {
            let k: KickResult = admin(socket, &AdminRequest::ServerKick { server: id, force })?;
            if json {
                print_json(&k)?;
            } else if k.forgotten {
                out!("server {} kicked and forgotten", k.server_id);
            } else {
                let mut parts = Vec::new();
                if !k.revoking.is_empty() {
                    parts.push(format!(
                        "{} cameras revoking until it acknowledges or its reservation ends ({})",
                        k.revoking.len(),
                        k.revoking.join(", ")
                    ));
                }
                if !k.kept_newly_added.is_empty() {
                    parts.push(format!(
                        "{} newly added cameras kept ({})",
                        k.kept_newly_added.len(),
                        k.kept_newly_added.join(", ")
                    ));
                }
                out!(
                    "server {} kicked; not forgotten yet: {}",
                    k.server_id,
                    parts.join("; ")
                );
            }
        }
        Command::Camera(CameraCmd::List { server, pool }) => {
            let cams: Vec<CameraView> = admin(socket, &AdminRequest::CameraList { server, pool })?;
            if json {
                print_json(&cams)?;
            } else {
                print_cameras(&cams);
            }
        }
        Command::Camera(CameraCmd::Free { camera, key, force }) => {
            let f: FreeResult = admin(socket, &AdminRequest::CameraFree { camera, key, force })?;
            if json {
                print_json(&f)?;
            } else {
                let what = match f.state.as_str() {
                    "freed" => "freed: the holder acknowledged and the seat is back",
                    "forced" => "freed by force: the seat is back now; the holder is told when it next connects (audited overlap)",
                    _ => "revoking: the seat returns when the holder acknowledges or its reservation ends",
                };
                out!("camera {} on server {}: {what}", f.camera_id, f.server_id);
            }
        }
        Command::Audit(args) => return audit(socket, json, args),
        Command::Discover { timeout, port, to } => return discover(json, timeout, port, to),
        Command::Backup { out } => {
            use base64::Engine as _;
            let b: BackupFile = admin(socket, &AdminRequest::Backup)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&b.data)
                .map_err(|e| format!("backup data from netkeyd is not base64: {e}"))?;
            write_private(&out, &bytes)?;
            if json {
                print_json(
                    &serde_json::json!({"out": out, "bytes": bytes.len(), "taken_at": b.taken_at}),
                )?;
            } else {
                out!(
                    "backup of {} bytes taken at {} written to {}",
                    bytes.len(),
                    b.taken_at,
                    out.display()
                );
            }
        }
        Command::Client(_) => unreachable!("handled by run_client"),
    }
    Ok(ExitCode::SUCCESS)
}

fn discover(json: bool, timeout: f64, port: u16, to: Vec<String>) -> Fallible<ExitCode> {
    use netkey::discovery::{discover, Search};
    let mut targets = Vec::new();
    for t in &to {
        let with_port = if t.contains(':') {
            t.clone()
        } else {
            format!("{t}:{port}")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
            .map_err(|e| format!("--to {t}: {e}"))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| format!("--to {t}: no IPv4 address"))?;
        targets.push(addr);
    }
    if !(0.05..=60.0).contains(&timeout) {
        return Err("--timeout is between 0.05 and 60 seconds".into());
    }
    let search = Search {
        broadcast_port: targets.is_empty().then_some(port),
        to: targets,
        key_id: None,
        timeout: std::time::Duration::from_secs_f64(timeout),
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let found = runtime
        .block_on(discover(&search))
        .map_err(|e| format!("discovery: {e}"))?;
    // A key id offered by two daemons is a copy too many.
    let mut owners: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        Default::default();
    for f in &found {
        for k in &f.offer.keys {
            owners
                .entry(k.key_id.as_str())
                .or_default()
                .insert(f.offer.daemon_id.as_str());
        }
    }
    let duplicated = |key: &str| owners.get(key).is_some_and(|d| d.len() > 1);
    if json {
        let rows: Vec<_> = found
            .iter()
            .map(|f| {
                let keys: Vec<_> = f
                    .offer
                    .keys
                    .iter()
                    .map(|k| {
                        let seats: Vec<_> = k
                            .seats
                            .iter()
                            .map(|(feature, free, total)| serde_json::json!({"feature": feature, "free": free, "total": total, "in_use": total.saturating_sub(*free)}))
                            .collect();
                        serde_json::json!({"key_id": k.key_id, "demo": k.demo, "seats": seats, "duplicate": duplicated(&k.key_id)})
                    })
                    .collect();
                serde_json::json!({"address": f.connect.to_string(), "from": f.from.to_string(), "daemon_id": f.offer.daemon_id, "identity": f.offer.tls_identity, "software": f.offer.software, "keys": keys, "truncated": f.offer.truncated})
            })
            .collect();
        print_json(&serde_json::json!({"daemons": rows}))?;
    } else if found.is_empty() {
        out!("no licence daemon answered within {timeout} s");
    } else {
        out!("{:<22} {:<22} KEYS (free/total)", "ADDRESS", "DAEMON");
        for f in &found {
            let keys: Vec<String> = f
                .offer
                .keys
                .iter()
                .map(|k| {
                    let seats: Vec<String> = k
                        .seats
                        .iter()
                        .map(|(feat, free, total)| format!("{feat} {free}/{total}"))
                        .collect();
                    format!(
                        "{}{} {}{}",
                        k.key_id,
                        if k.demo { " [DEMO]" } else { "" },
                        seats.join(", "),
                        if duplicated(&k.key_id) {
                            " DUPLICATE: offered by another daemon too"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            out!(
                "{:<22} {:<22} {}{}",
                f.connect.to_string(),
                f.offer.daemon_id,
                keys.join("; "),
                if f.offer.truncated {
                    " (more keys not listed)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Fallible<()> {
    netkey::client::write_private_atomic(path, bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads an audit head from an earlier export (`head`), a client state file
/// (`audit_head`), or a bare `{count, hash}`.
fn read_anchor(path: &PathBuf) -> Fallible<AuditHead> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let head = v.get("head").or_else(|| v.get("audit_head")).unwrap_or(&v);
    serde_json::from_value(head.clone()).map_err(|_| {
        format!(
            "{} holds no audit head (an `audit --format json` export or a client state file)",
            path.display()
        )
    })
}

fn audit(socket: &PathBuf, json: bool, args: AuditArgs) -> Fallible<ExitCode> {
    let since = args
        .since
        .as_deref()
        .map(Timestamp::parse_rfc3339)
        .transpose()
        .map_err(|e| format!("--since: {e}"))?;
    if let Some(AuditCmd::Verify { anchor }) = args.verify {
        let export: AuditExport = admin(socket, &AdminRequest::Audit { since: None })?;
        let anchor = anchor.as_ref().map(read_anchor).transpose()?;
        let head =
            netkey::store::audit::verify(&export.records, anchor).map_err(|e| e.to_string())?;
        if head != export.head {
            return Err(format!(
                "the daemon reports head {} but its records chain to {head}",
                export.head
            ));
        }
        if json {
            print_json(&serde_json::json!({"intact": true, "head": head, "anchor": anchor}))?;
        } else {
            match anchor {
                Some(a) => out!("audit log intact: {head}; it extends the anchor ({a})"),
                None => out!("audit log intact: {head}"),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let export: AuditExport = admin(socket, &AdminRequest::Audit { since })?;
    match args.format.as_deref() {
        Some("json") => print_json(&export)?,
        Some("csv") => {
            out_raw!("{}", netkey::store::audit::to_csv(&export.records));
            out!(
                "# head,{},{}",
                export.head.count,
                netkey::store::audit::hex(&export.head.hash)
            );
        }
        Some(other) => return Err(format!("--format {other}: use csv or json")),
        None if json => print_json(&export)?,
        None => {
            for r in &export.records {
                let who = [
                    r.key_id.as_deref(),
                    r.pool.as_deref(),
                    r.server_id.as_deref(),
                    r.camera_id.as_deref(),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
                out!(
                    "{:>6} {} {:<18} {who} {}",
                    r.index,
                    r.at,
                    r.action,
                    r.detail
                );
            }
            out!("head: {}", export.head);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_keys(keys: &[KeyView]) {
    out!(
        "{:<16} {:<8} {:>4}  {:<22} {:<21} SEATS (in use/total)",
        "KEY",
        "KIND",
        "REV",
        "CUSTOMER",
        "EXPIRES"
    );
    for k in keys {
        out!(
            "{:<16} {:<8} {:>4}  {:<22} {:<21} {}{}",
            k.key_id,
            format!("{:?}", k.kind).to_lowercase(),
            k.revision,
            k.customer,
            k.expires_at.to_string(),
            seats_line(&k.seats),
            demo_mark(k.demo)
        );
    }
}

fn print_servers(servers: &[ServerView]) {
    out!(
        "{:<18} {:<16} {:<18} {:>7}  {:<8} {:<21} LICENCES",
        "SERVER",
        "NAME",
        "POOL",
        "CAMERAS",
        "STATE",
        "LAST CHECK-IN"
    );
    for s in servers {
        out!(
            "{:<18} {:<16} {:<18} {:>7}  {:<8} {:<21} {}",
            s.server_id,
            s.name,
            s.pool,
            s.cameras,
            s.state,
            s.last_checkin.to_string(),
            seats_line(&s.seats)
        );
    }
}

fn print_cameras(cams: &[CameraView]) {
    out!(
        "{:<20} {:<16} {:<18} {:<9} {:>5}  {:<21} FEATURES",
        "CAMERA",
        "KEY",
        "SERVER",
        "STATE",
        "EPOCH",
        "SINCE"
    );
    for c in cams {
        let features: Vec<String> = c.features.iter().map(|(f, n)| format!("{f}={n}")).collect();
        let since = c
            .granted_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        out!(
            "{:<20} {:<16} {:<18} {:<9} {:>5}  {:<21} {}{}",
            c.camera_id,
            c.key_id,
            c.server_id,
            c.state,
            c.epoch,
            since,
            features.join(","),
            if c.legacy { " legacy" } else { "" }
        );
    }
}

fn run_client(args: ClientArgs, json: bool) -> Fallible<ExitCode> {
    let trust = if args.demo {
        Trust::Demo
    } else if !args.vendor_key.is_empty() {
        let mut keys = Vec::new();
        for path in &args.vendor_key {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            keys.push(
                VendorPublicKey::from_text(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            );
        }
        Trust::Vendors(keys)
    } else {
        return Err(
            "say whom to trust: --demo, or --vendor-key FILE for each vendor public key".into(),
        );
    };
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(client_command(args, trust, json))
}

async fn client_command(args: ClientArgs, trust: Trust, json: bool) -> Fallible<ExitCode> {
    let demo = matches!(trust, Trust::Demo);
    let mut client =
        Client::open(&args.state, trust, args.daemon.clone()).map_err(|e| e.to_string())?;
    if let Some(pin) = &args.pin {
        client.pin(pin);
    }
    match args.command {
        ClientCmd::Enrol {
            code,
            name,
            version,
        } => {
            let b = client
                .enrol(&code, &name, &version)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                print_json(&serde_json::json!({
                    "server_id": b.server_id, "key_id": b.key_id, "pool": b.pool, "demo": b.demo,
                    "daemon_id": client.state().map(|s| s.daemon_id.clone()),
                }))?;
            } else {
                out!(
                    "enrolled as server {} in pool {} (key {}){}",
                    b.server_id,
                    b.pool,
                    b.key_id,
                    if b.demo || demo { " DEMO" } else { "" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCmd::Checkout {
            cameras,
            class,
            modules,
            device_version,
        } => {
            let items = cameras
                .iter()
                .map(|c| CheckoutItem {
                    camera: c.clone(),
                    class: class.clone(),
                    modules: modules.clone(),
                    device_version: device_version.clone(),
                    epoch: None,
                })
                .collect();
            let outcomes = client.checkout(items).await.map_err(|e| e.to_string())?;
            let mut refused = Vec::new();
            let mut rows = Vec::new();
            for (camera, outcome) in &outcomes {
                match outcome {
                    CameraOutcome::Granted {
                        epoch,
                        features,
                        legacy,
                        renewed,
                    } => {
                        rows.push(serde_json::json!({"camera_id": camera, "granted": true, "epoch": epoch, "features": features, "legacy": legacy, "renewed": renewed}));
                        if !json {
                            out!(
                                "{} {camera} (epoch {epoch}){}",
                                if *renewed { "holding" } else { "granted" },
                                if *legacy { " legacy" } else { "" }
                            );
                        }
                    }
                    CameraOutcome::Refused(r) => {
                        rows.push(serde_json::json!({"camera_id": camera, "granted": false, "refusal": r, "reason": r.to_string()}));
                        refused.push(format!("{camera}: {r}"));
                    }
                    CameraOutcome::AwaitingHolder { holder } => {
                        refused.push(format!("{camera}: still held by {holder}"));
                    }
                }
            }
            if json {
                print_json(&serde_json::json!({"outcomes": rows}))?;
            }
            if refused.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(format!("refused {}", refused.join("; ")))
            }
        }
        ClientCmd::Release { cameras } => {
            let out = client.release(cameras).await.map_err(|e| e.to_string())?;
            let mut problems = Vec::new();
            for (camera, refusal) in &out {
                match refusal {
                    None if !json => out!("released {camera}"),
                    None => {}
                    Some(r) => problems.push(format!("{camera}: {r}")),
                }
            }
            if json {
                let rows: Vec<_> = out.iter().map(|(c, r)| serde_json::json!({"camera_id": c, "released": r.is_none(), "reason": r.as_ref().map(|r| r.to_string())})).collect();
                print_json(&serde_json::json!({"released": rows}))?;
            }
            if problems.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(format!("not released {}", problems.join("; ")))
            }
        }
        ClientCmd::Status => {
            let contact = client.refresh().await;
            let state = client
                .state()
                .ok_or("not enrolled: run `client enrol CODE --name NAME` first")?;
            if json {
                let cams: Vec<_> = state
                    .cameras
                    .iter()
                    .map(|(c, h)| serde_json::json!({"camera_id": c, "epoch": h.epoch}))
                    .collect();
                print_json(&serde_json::json!({
                    "server_id": state.server_id, "name": state.name, "daemon_id": state.daemon_id,
                    "daemon_addr": state.daemon_addr, "key_id": state.key_id, "pool": state.pool, "demo": state.demo,
                    "connected": contact.is_ok(), "error": contact.as_ref().err().map(|e| e.to_string()),
                    "deadline": state.deadline, "cameras": cams,
                }))?;
            } else {
                out!(
                    "server {} ({}) in pool {}{}",
                    state.server_id,
                    state.name,
                    state.pool,
                    demo_mark(state.demo)
                );
                out!(
                    "daemon {} at {}: {}",
                    state.daemon_id,
                    state.daemon_addr,
                    match &contact {
                        Ok(_) => "reachable".to_string(),
                        Err(e) => e.to_string(),
                    }
                );
                if let Ok(events) = &contact {
                    for e in events {
                        out!("{e}");
                    }
                }
                if let Some(d) = state.deadline {
                    out!("licensed without contact until {d}");
                }
                for (c, h) in &state.cameras {
                    out!("  {c} (epoch {})", h.epoch);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCmd::Run { cameras } => {
            let mut wanted: Vec<CheckoutItem> =
                cameras.iter().map(|c| CheckoutItem::camera(c)).collect();
            if let Some(s) = client.state() {
                for (c, h) in &s.cameras {
                    if !cameras.contains(c) {
                        wanted.push(CheckoutItem {
                            camera: c.clone(),
                            class: h.class.clone(),
                            modules: h.modules.clone(),
                            device_version: h.device_version.clone(),
                            epoch: None,
                        });
                    }
                }
            }
            let shutdown = tokio_util::sync::CancellationToken::new();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<ClientEvent>(1024);
            let server = VideoServer::new(client, wanted);
            let stop = shutdown.clone();
            let task = tokio::spawn(server.run(tx, stop));
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| e.to_string())?;
            let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| e.to_string())?;
            loop {
                tokio::select! {
                    e = rx.recv() => match e {
                        Some(e) => {
                            if json {
                                let mut v = serde_json::to_value(&e).unwrap_or_default();
                                if let Some(o) = v.as_object_mut() {
                                    o.insert("text".into(), e.to_string().into());
                                }
                                out!("{v}");
                            } else {
                                out!("{e}");
                            }
                        }
                        None => break,
                    },
                    _ = term.recv() => { shutdown.cancel(); }
                    _ = int.recv() => { shutdown.cancel(); }
                }
            }
            match task.await {
                Ok(Ok(())) => Ok(ExitCode::SUCCESS),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}
