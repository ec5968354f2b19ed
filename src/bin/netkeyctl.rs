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
use netkey::cli::table::Table;
use netkey::core::time::relative;

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
            let over = if s.overdraft > 0 {
                format!(" ({} over)", s.overdraft)
            } else {
                String::new()
            };
            format!("{} {}/{}{rev}{over}", s.feature, s.in_use, s.total)
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
                    "{}  daemon {} (identity {}){}",
                    s.software,
                    s.daemon_id,
                    s.identity,
                    if s.demo { "  DEMO mode" } else { "" }
                );
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
                if let Some(c) = &s.clock {
                    if let Some(mark) = c.rollback {
                        out!("CLOCK ROLLBACK: the wall clock ({}) is behind the high-water mark {mark}: new checkouts are refused until it passes the mark or a vendor reset token is installed (netkeyctl key clock-reset FILE); renewals go on", c.wall);
                    }
                }
                print_keys(&s.keys);
                for k in &s.keys {
                    print_key_warnings(k);
                }
            }
        }
        Command::Key(KeyCmd::List) => {
            let keys: Vec<KeyView> = admin(socket, &AdminRequest::KeyList)?;
            if json {
                print_json(&keys)?;
            } else if keys.is_empty() {
                out!("no keys installed (netkeyctl key install FILE)");
            } else {
                for k in &keys {
                    print_key_details(k);
                }
            }
        }
        Command::Key(KeyCmd::Install { file }) => {
            let text = read_file(&file)?;
            let k: KeyInstalled = admin(socket, &AdminRequest::KeyInstall { key: text })?;
            if json {
                print_json(&k)?;
            } else {
                match k.replaced {
                    Some(old) => out!(
                        "key {} revision {} replaces revision {old} in place (pools and leases kept); {}{}",
                        k.key_id,
                        k.revision,
                        k.binding,
                        demo_mark(k.demo)
                    ),
                    None => out!(
                        "key {} revision {} installed; {}{}",
                        k.key_id,
                        k.revision,
                        k.binding,
                        demo_mark(k.demo)
                    ),
                }
            }
        }
        Command::Key(KeyCmd::Request { out }) => {
            let d: SignedDocument = admin(socket, &AdminRequest::KeyRequest)?;
            write_signed(&out, &d, json)?;
        }
        Command::Key(KeyCmd::Return { key_id, out, force }) => {
            let d: SignedDocument = admin(socket, &AdminRequest::KeyReturn { key: key_id, force })?;
            write_signed(&out, &d, json)?;
        }
        Command::Key(KeyCmd::Report { key_id, out }) => {
            let d: SignedDocument = admin(socket, &AdminRequest::KeyReport { key: key_id })?;
            write_signed(&out, &d, json)?;
        }
        Command::Key(KeyCmd::ClockReset { file }) => {
            let text = read_file(&file)?;
            let r: ClockResetDone = admin(socket, &AdminRequest::KeyClockReset { token: text })?;
            if json {
                print_json(&r)?;
            } else {
                out!(
                    "clock rollback cleared: the mark {} is forgotten; the daemon's time is the wall clock again ({})",
                    r.cleared,
                    r.now
                );
            }
        }
        Command::Pool(PoolCmd::List) => {
            let pools: Vec<PoolView> = admin(socket, &AdminRequest::PoolList)?;
            if json {
                print_json(&pools)?;
            } else {
                print_pools(&pools);
            }
        }
        Command::Pool(PoolCmd::Show { pool }) => {
            let d: PoolDetail = admin(socket, &AdminRequest::PoolShow { pool })?;
            if json {
                print_json(&d)?;
            } else {
                print_pools(std::slice::from_ref(&d.pool));
                let now = Timestamp::from_system_time(std::time::SystemTime::now());
                let mut t = Table::new(&["SALES ORDER", "FEATURE", ">SEATS", "UNTIL"]);
                for e in &d.pool.entries {
                    t.row(vec![
                        e.order.clone(),
                        e.feature.clone(),
                        e.seats.to_string(),
                        format!(
                            "{} ({}){}",
                            e.not_after,
                            relative(now, e.not_after),
                            if e.expired { " EXPIRED" } else { "" }
                        ),
                    ]);
                }
                out!("");
                print_table(&t);
                out!("");
                print_servers(&d.servers);
            }
        }
        Command::Pool(PoolCmd::Create { name, key, seats }) => {
            let seats = parse_seats(&seats)?;
            let c: PoolChanged = admin(socket, &AdminRequest::PoolCreate { name, key, seats })?;
            if json {
                print_json(&c)?;
            } else {
                out!("pool {} created{}", c.to, c.moved_suffix());
            }
        }
        Command::Pool(PoolCmd::Move { from, to, seats }) => {
            let seats = parse_seats(&seats)?;
            let c: PoolChanged = admin(socket, &AdminRequest::PoolMove { from, to, seats })?;
            if json {
                print_json(&c)?;
            } else {
                out!(
                    "seats moved from {} to {}{}",
                    c.from,
                    c.to,
                    c.moved_suffix()
                );
            }
        }
        Command::Pool(PoolCmd::Delete { pool }) => {
            let c: PoolChanged = admin(socket, &AdminRequest::PoolDelete { pool })?;
            if json {
                print_json(&c)?;
            } else {
                out!("pool {} deleted; its seats are back in {}", c.from, c.to);
            }
        }
        Command::Console {
            set_password,
            clear_password,
        } => return console(socket, json, set_password, clear_password),
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
            } else {
                out!("{}", k.sentence());
            }
        }
        Command::Camera(CameraCmd::List {
            server,
            pool,
            feature,
        }) => {
            let cams: Vec<CameraView> = admin(
                socket,
                &AdminRequest::CameraList {
                    server,
                    pool,
                    feature,
                },
            )?;
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
                out!("{}", f.sentence());
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
            let mut t = Table::new(&[">#", "AT", "ACTION", "WHO", "DETAIL"]);
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
                t.row(vec![
                    r.index.to_string(),
                    r.at.to_string(),
                    r.action.clone(),
                    who,
                    r.detail.clone(),
                ]);
            }
            print_table(&t);
            out!("head: {}", export.head);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn now() -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now())
}

fn print_table(t: &Table) {
    for line in t.lines() {
        out!("{line}");
    }
}

fn parse_seats(seats: &[String]) -> Fallible<Vec<netkey::core::SeatRequest>> {
    seats
        .iter()
        .map(|s| netkey::core::SeatRequest::parse(s))
        .collect()
}

fn console(
    socket: &PathBuf,
    json: bool,
    set_password: bool,
    clear_password: bool,
) -> Fallible<ExitCode> {
    if set_password || clear_password {
        let password = if set_password {
            Some(read_password()?)
        } else {
            None
        };
        let v: serde_json::Value = admin(socket, &AdminRequest::ConsolePassword { password })?;
        if json {
            print_json(&v)?;
        } else if set_password {
            out!("console password set (stored hashed): remote browsers log in with it over HTTPS");
        } else {
            out!("console password removed: only one-time URLs from `netkeyctl console` log in");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let c: ConsoleUrl = admin(socket, &AdminRequest::ConsoleLogin)?;
    if json {
        print_json(&c)?;
    } else {
        out!("{}", c.url);
        eprintln!(
            "one-time login URL for a browser on this machine, valid until {} (once)",
            c.expires_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One line from standard input; on a terminal, asked for twice without echo.
fn read_password() -> Fallible<String> {
    use std::io::IsTerminal as _;
    let tty = std::io::stdin().is_terminal();
    let read = |prompt: &str| -> Fallible<String> {
        if tty {
            eprint!("{prompt}");
            let _ = std::process::Command::new("stty").arg("-echo").status();
        }
        let mut line = String::new();
        let r = std::io::stdin().read_line(&mut line);
        if tty {
            let _ = std::process::Command::new("stty").arg("echo").status();
            eprintln!();
        }
        r.map_err(|e| format!("cannot read the password: {e}"))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let first = read("new console password: ")?;
    if tty && read("again: ")? != first {
        return Err("the two passwords differ".into());
    }
    if first.is_empty() {
        return Err("no password given on standard input".into());
    }
    Ok(first)
}

fn print_keys(keys: &[KeyView]) {
    let now = now();
    let mut t = Table::new(&[
        "KEY",
        "KIND",
        ">REV",
        "CUSTOMER",
        "EXPIRES",
        "SEATS (in use/total)",
    ]);
    for k in keys {
        t.row(vec![
            format!("{}{}", k.key_id, demo_mark(k.demo)),
            format!("{:?}", k.kind).to_lowercase(),
            k.revision.to_string(),
            k.customer.clone(),
            format!("{} ({})", k.expires_at, relative(now, k.expires_at)),
            seats_line(&k.seats),
        ]);
    }
    print_table(&t);
}

fn print_pools(pools: &[PoolView]) {
    let mut t = Table::new(&[
        "POOL",
        ">SERVERS",
        "FEATURE",
        ">ALLOCATED",
        ">IN USE",
        ">REVOKING",
        ">FREE",
    ]);
    for p in pools {
        let name = format!("{}{}", p.pool, demo_mark(p.demo));
        if p.seats.is_empty() {
            t.row(vec![name.clone(), p.servers.to_string()]);
        }
        for (i, s) in p.seats.iter().enumerate() {
            let first = i == 0;
            t.row(vec![
                if first { name.clone() } else { String::new() },
                if first {
                    p.servers.to_string()
                } else {
                    String::new()
                },
                s.feature.clone(),
                s.total.to_string(),
                s.in_use.to_string(),
                s.revoking.to_string(),
                s.free.to_string(),
            ]);
        }
    }
    print_table(&t);
}

fn read_file(path: &std::path::Path) -> Fallible<String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Writes a document signed by the daemon to `out` and says what it is.
fn write_signed(out: &std::path::Path, d: &SignedDocument, json: bool) -> Fallible<()> {
    write_private(out, d.text.as_bytes())?;
    if json {
        print_json(&serde_json::json!({"out": out, "summary": d.summary}))
    } else {
        out!("{} -> {}", d.summary, out.display());
        Ok(())
    }
}

/// Problems and expiry warnings of one key, one line each (in `status`).
fn print_key_warnings(k: &KeyView) {
    if let Some(p) = &k.problem {
        out!("KEY {} NOT SERVED: {p}", k.key_id);
    }
    for e in k.entries.iter().filter(|e| e.state == "expiring") {
        out!(
            "key {} entry {} ({} {}) expires at {} ({} day{} left)",
            k.key_id,
            e.order,
            e.feature,
            e.count,
            e.not_after,
            e.days_left,
            if e.days_left == 1 { "" } else { "s" }
        );
    }
    if k.overdraft.in_use > 0 {
        out!(
            "key {} is over its allocation by {} seat{} (overdraft)",
            k.key_id,
            k.overdraft.in_use,
            if k.overdraft.in_use == 1 { "" } else { "s" }
        );
    }
}

/// One key in full (`key list`): docs/KEYS.md explains every line.
fn print_key_details(k: &KeyView) {
    out!(
        "KEY {}  {}  revision {}  customer {:?}  issued {}{}",
        k.key_id,
        format!("{:?}", k.kind).to_lowercase(),
        k.revision,
        k.customer,
        k.issued_at,
        demo_mark(k.demo)
    );
    match &k.problem {
        Some(p) => out!("  state:     {} ({p})", k.state.to_uppercase()),
        None => out!("  state:     {}", k.state),
    }
    out!("  binding:   {}", k.binding);
    for (i, e) in k.entries.iter().enumerate() {
        let state = match e.state.as_str() {
            "expired" => "expired".to_string(),
            "expiring" => format!(
                "EXPIRING in {} day{}",
                e.days_left,
                if e.days_left == 1 { "" } else { "s" }
            ),
            _ => format!("valid ({} days left)", e.days_left),
        };
        out!(
            "  {:<11}{:<12} {:<10} x{:<5} until {}  {state}",
            if i == 0 { "entries:" } else { "" },
            e.order,
            e.feature,
            e.count,
            e.not_after
        );
    }
    out!("  seats:     {}", seats_line(&k.seats));
    let o = &k.overdraft;
    if o.seats == 0 {
        out!("  overdraft: none");
    } else {
        out!(
            "  overdraft: {} of {} seats in use{}; {}.{:02} of {} hours used in the last 30 days{}",
            o.in_use,
            o.seats,
            o.over_since
                .map(|t| format!(" since {t}"))
                .unwrap_or_default(),
            o.minutes_used / 60,
            (o.minutes_used % 60) * 100 / 60,
            o.hours_allowed,
            if o.spent {
                " (SPENT: no overdraft until hours free up)"
            } else {
                ""
            }
        );
    }
}

fn print_servers(servers: &[ServerView]) {
    if servers.is_empty() {
        out!("no video server is enrolled here");
        return;
    }
    let now = now();
    let mut t = Table::new(&[
        "NAME",
        "SERVER",
        "POOL",
        "KEY",
        ">CAMERAS",
        "LICENCES",
        "LAST CHECK-IN",
        "VERSION",
        "STATE",
    ]);
    for s in servers {
        let mut state = s.state.clone();
        if s.state != "live" {
            if let Some(end) = s.reservation_end {
                state.push_str(&format!(" (reservation ends {})", relative(now, end)));
            }
        }
        t.row(vec![
            s.name.clone(),
            s.server_id.clone(),
            s.pool.clone(),
            s.key_id.clone(),
            if s.revoking > 0 {
                format!("{} +{} revoking", s.cameras, s.revoking)
            } else {
                s.cameras.to_string()
            },
            s.seats
                .iter()
                .map(|u| format!("{} {}", u.in_use, u.feature))
                .collect::<Vec<_>>()
                .join(", "),
            relative(now, s.last_checkin),
            s.version.clone(),
            state,
        ]);
    }
    print_table(&t);
}

fn print_cameras(cams: &[CameraView]) {
    let now = now();
    let mut t = Table::new(&[
        "CAMERA",
        "KEY",
        "POOL",
        "SERVER",
        "STATE",
        ">EPOCH",
        "SINCE",
        "LAST RENEWAL",
        "FEATURES",
        "NOTES",
    ]);
    for c in cams {
        let features: Vec<String> = c.features.iter().map(|(f, n)| format!("{f}={n}")).collect();
        let since = c
            .granted_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        out!(
            "{:<20} {:<16} {:<18} {:<9} {:>5}  {:<21} {}{}{}",
            c.camera_id,
            c.key_id,
            c.server_id,
            c.state,
            c.epoch,
            since,
            features.join(","),
            if c.legacy { " legacy" } else { "" },
            if c.overdraft { " OVERDRAFT" } else { "" },
        );
        let mut notes = Vec::new();
        if let Some(u) = c.newly_added_until {
            notes.push(format!("newly added until {}", relative(now, u)));
        }
        if let Some(u) = c.revoking_until {
            notes.push(format!(
                "counted until acknowledged, at most {}",
                relative(now, u)
            ));
        }
        if c.contested {
            notes.push("CameraContested: moved repeatedly".into());
        }
        if c.legacy {
            notes.push("legacy".into());
        }
        t.row(vec![
            c.camera_id.clone(),
            c.key_id.clone(),
            c.pool.clone(),
            if c.server_name.is_empty() {
                c.server_id.clone()
            } else {
                format!("{} ({})", c.server_name, c.server_id)
            },
            c.state.clone(),
            c.epoch.to_string(),
            c.granted_at
                .map(|t| relative(now, t))
                .unwrap_or_else(|| "-".into()),
            relative(now, c.last_renewal),
            features.join(","),
            notes.join("; "),
        ]);
    }
    print_table(&t);
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
