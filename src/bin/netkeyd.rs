//! netkeyd: the licence daemon. Thin: parses flags, sets up logging, starts
//! `netkey::daemon::Daemon`, and stops it on SIGTERM or SIGINT.

use clap::Parser;
use netkey::daemon::{Config, Daemon, SystemClock};
use std::net::SocketAddr;
use std::process::ExitCode;

use netkey::cli::netkeyd::Args;

/// jemalloc, as redis uses, instead of glibc's malloc. At a million leases the core's
/// small allocations leave glibc's heap fragmented: every larger request (a TLS record
/// buffer, a journal batch) first consolidates its fast bins and walks the free chunks,
/// and `_int_malloc`, `unlink_chunk`, `malloc_consolidate` and `_int_free` together took
/// 20 % of the event loop's samples during durable checkouts. netkey-bench at the full
/// scale (1,000,000 leases), netkeyd's CPU per durable checkout: 27-30 us with glibc,
/// 19-21 us with jemalloc, and 43.8-44.3k checkouts/s against 29.9-35.0k; resident memory
/// 178 bytes per lease live (167 with glibc), a peak of 516 MiB (515).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.write_host_ids {
        return match write_host_ids(path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("netkeyd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (settings, config_file) = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("netkeyd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        match &config_file {
            Some(p) => println!("# effective settings: {} plus flags", p.display()),
            None => println!("# effective settings: defaults plus flags (no configuration file)"),
        }
        match toml::to_string(&settings) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("netkeyd: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    init_logging(&settings.log_level);
    // Each video server holds one connection: allow as many descriptors as the hard
    // limit (systemd's LimitNOFILE) permits, not the shell's soft default of 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < settings.limits.max_connections + 64 => tracing::warn!(
            open_files = n,
            max_connections = settings.limits.max_connections,
            "the open-file limit is below limits.max_connections; raise LimitNOFILE"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    // One event loop serves the connections and the core, as redis does: a request never
    // crosses a thread. netkey-bench measured it ahead of a worker per CPU plus a thread
    // for the core at 10,000 servers in heartbeats, the checkout storm, release and
    // reconnect, with less CPU per request (docs/bench.json). The journal's syncs run
    // on the loop, as redis's do (see `daemon::owner::apply`); checkpoints, snapshots and
    // what else blocks run on blocking threads.
    // TOKIO_WORKER_THREADS=N asks for N workers instead (the core then has a thread of
    // its own), for hosts where TLS handshakes after a restart of a very large fleet
    // should use more than one CPU.
    // Named, so an operator's `top -H` or a profile tells the daemon's threads apart.
    let mut builder = match std::env::var_os("TOKIO_WORKER_THREADS") {
        Some(_) => tokio::runtime::Builder::new_multi_thread(),
        None => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().thread_name("netkeyd").build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netkeyd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("netkeyd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Under systemd (JOURNAL_STREAM set) events go to the journal with their fields as
/// journal fields (SERVER_ID, CAMERA_ID, KEY_ID, POOL, REASON, ...); on a terminal, a
/// readable line each.
fn init_logging(level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journal) = tracing_journald::layer() {
            let journal = journal
                .with_field_prefix(None)
                .with_syslog_identifier("netkeyd".into());
            tracing_subscriber::registry()
                .with(filter)
                .with(journal)
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

async fn run(
    args: Args,
    settings: netkey::cli::netkeyd::Settings,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(file) = &args.restore {
        let bytes =
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let backup = netkey::store::Backup::from_bytes(&bytes)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let hwm = backup.restore_into(&settings.state_dir)?;
        println!(
            "restored the backup taken at {} into {} ({} audit records; time high-water mark {hwm}); start netkeyd to serve it",
            backup.taken_at,
            settings.state_dir.display(),
            backup.audit.len()
        );
        return Ok(());
    }
    let vendor_keys = settings.vendor_public_keys()?;
    if vendor_keys.is_empty() && !settings.demo {
        tracing::warn!("no vendor keys are configured (vendor_keys in the configuration file): no key can be installed");
    }
    let config = Config {
        listen: settings.listen,
        admin_socket: settings.admin_socket.clone(),
        state_dir: settings.state_dir.clone(),
        demo: settings.demo,
        no_broadcast: settings.no_broadcast,
        listener: None,
        discovery: Some(settings.discovery),
        peers: settings.peers.clone(),
        limits: settings.limits.clone(),
        vendor_keys,
        host: netkey::key::HostSource::System,
        console: netkey::web::ConsoleConfig {
            hosts: settings.console_hosts.clone(),
            metrics_need_session: settings.metrics_need_session,
        },
        snapshot_every: args.snapshot_every,
    };
    let daemon = Daemon::start(config, SystemClock::new()).await?;
    notify_ready(&daemon).await;
    if settings.demo {
        let sock = settings.admin_socket.display();
        let ctl = sibling("netkeyctl");
        println!(
            "netkeyd DEMO mode: listening on {}, daemon id {}",
            daemon.local_addr(),
            daemon.daemon_id()
        );
        println!("Connect a video server:");
        println!("  CODE=$({ctl} --socket {sock} pool code Default)");
        println!(
            "  {ctl} client --state /tmp/vs1.json --demo --daemon {} enrol $CODE --name vs1",
            connect_addr(daemon.local_addr())
        );
        println!("  {ctl} client --state /tmp/vs1.json --demo run cam-1 cam-2 cam-3");
        println!("Watch it: {ctl} --socket {sock} status");
        println!("Or in a browser on this machine: open the URL that {ctl} --socket {sock} console prints");
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    daemon.shutdown().await;
    Ok(())
}

/// The unit's privileged start step: the values the service user cannot read itself
/// (the board UUID is root's alone; the sandbox hides block devices), written for it to
/// a file it owns in its runtime directory.
fn write_host_ids(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let values = netkey::key::HostValues::collect(std::path::Path::new("/"));
    let text = serde_json::to_vec_pretty(&values.handover()).map_err(|e| e.to_string())?;
    netkey::files::write_private_atomic(path, &text)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // Owned like the directory it is in (the service's runtime directory).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| format!("cannot hand {} to the service user: {e}", path.display()))?;
    }
    Ok(())
}

/// Tells systemd (Type=notify) that the listeners are bound and the state is loaded.
async fn notify_ready(daemon: &Daemon) {
    let status = daemon.status_line().await;
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
}

/// `netkeyctl` next to this binary when it is there (as after `cargo build`), else the
/// bare name for one on PATH.
fn sibling(name: &str) -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| name.to_string())
}

/// The address a client on this host should use (0.0.0.0 is not connectable).
fn connect_addr(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], a.port()))
    } else {
        a
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
