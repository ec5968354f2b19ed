//! netkeyd: the licence daemon. Thin: parses flags, sets up logging, starts
//! `netkey::daemon::Daemon`, and stops it on SIGTERM or SIGINT.

use clap::Parser;
use netkey::daemon::{Config, Daemon, SystemClock};
use std::net::SocketAddr;
use std::process::ExitCode;

use netkey::cli::netkeyd::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netkeyd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netkeyd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(file) = &args.restore {
        let bytes =
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let backup = netkey::store::Backup::from_bytes(&bytes)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let hwm = backup.restore_into(&args.state_dir)?;
        println!(
            "restored the backup taken at {} into {} ({} audit records; time high-water mark {hwm}); start netkeyd to serve it",
            backup.taken_at,
            args.state_dir.display(),
            backup.audit.len()
        );
        return Ok(());
    }
    let config = Config {
        listen: args.listen,
        admin_socket: args.admin_socket.clone(),
        state_dir: args.state_dir,
        demo: args.demo,
        no_broadcast: args.no_broadcast,
    };
    let daemon = Daemon::start(config, SystemClock::new()).await?;
    if args.demo {
        let sock = args.admin_socket.display();
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
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    daemon.shutdown().await;
    Ok(())
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
