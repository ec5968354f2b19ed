//! netkey-bench: starts a `netkeyd` (or targets one), drives simulated video servers
//! through every phase, runs the redis yardstick, prints a table and writes JSON (and a
//! PNG with `--plot`). Thin: the work is in `netkey::bench`.

use clap::Parser;
use netkey::bench::{self, BenchConfig};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "netkey-bench",
    version,
    about = "Benchmark netkeyd with simulated video servers, beside redis-benchmark",
    long_about = "Starts netkeyd --demo on a temporary state directory (or targets --daemon), \
                  enrols simulated video servers over persistent connections from 127.0.0.x, and \
                  measures each phase: enrol, checkout storm, heartbeats over every server, then \
                  like for like with redis (on as many connections as clients) durable \
                  checkouts and heartbeats, each followed at once by redis-benchmark against \
                  a TLS redis with the same client and request counts (if redis is \
                  installed), then move churn, status queries, restart, reconnect, release, \
                  and redis over plain TCP for reference."
)]
struct Args {
    /// A run of seconds: 200 servers x 10 cameras (the default).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The full scale: 10,000 servers x 100 cameras = 1,000,000 leases.
    #[arg(long)]
    full: bool,
    /// Simulated video servers (overrides the preset).
    #[arg(long)]
    servers: Option<usize>,
    /// Cameras per server (overrides the preset).
    #[arg(long)]
    cameras: Option<usize>,
    /// Requests in flight at once, as redis-benchmark's -c [default: 50].
    #[arg(long)]
    clients: Option<usize>,
    /// Heartbeats in each heartbeat phase (and GETs for redis).
    #[arg(long)]
    heartbeats: Option<usize>,
    /// Durable checkouts of new cameras on as many connections as clients (and durable
    /// SETs for redis).
    #[arg(long)]
    checkouts: Option<usize>,
    /// Times each like-for-like phase and its redis run are made, taking turns (the
    /// cameras checked out are released between rounds) [default: 3 with --full, else 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: Option<u64>,
    /// Camera moves in the move-churn phase.
    #[arg(long)]
    moves: Option<usize>,
    /// Status queries over the admin socket.
    #[arg(long)]
    status_queries: Option<usize>,
    /// The netkeyd binary to start [default: the one beside netkey-bench].
    #[arg(long, value_name = "PATH")]
    netkeyd: Option<PathBuf>,
    /// Benchmark a running daemon instead of starting one (no restart is measured).
    #[arg(long, value_name = "ADDR:PORT", requires = "admin_socket")]
    daemon: Option<SocketAddr>,
    /// The running daemon's admin socket (with --daemon).
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// The running daemon's pid, for its memory figures (with --daemon).
    #[arg(long, value_name = "PID")]
    daemon_pid: Option<u32>,
    /// Skip the redis yardstick.
    #[arg(long)]
    no_redis: bool,
    /// Where to write the JSON report.
    #[arg(long, value_name = "FILE", default_value = "netkey-bench.json")]
    out: PathBuf,
    /// Also draw latency percentiles and throughput per phase to this PNG (python3 with
    /// matplotlib).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let netkeyd = args.netkeyd.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("netkeyd")))
            .unwrap_or_else(|| PathBuf::from("netkeyd"))
    });
    let mut config = if args.full {
        BenchConfig::full(netkeyd)
    } else {
        BenchConfig::quick(netkeyd)
    };
    config.servers = args.servers.unwrap_or(config.servers);
    config.cameras = args.cameras.unwrap_or(config.cameras);
    config.clients = args.clients.unwrap_or(config.clients);
    config.heartbeats = args.heartbeats.unwrap_or(config.heartbeats);
    config.checkouts = args.checkouts.unwrap_or(config.checkouts);
    config.moves = args.moves.unwrap_or(config.moves);
    config.rounds = args.rounds.map_or(config.rounds, |n| n as usize);
    config.status_queries = args.status_queries.unwrap_or(config.status_queries);
    config.daemon = args.daemon;
    config.admin_socket = args.admin_socket.clone();
    config.daemon_pid = args.daemon_pid;
    config.redis = !args.no_redis;
    // One thread drives the load, as redis-benchmark does; the daemon has the rest.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netkey-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On SIGINT or SIGTERM the run is dropped, and with it the guards that stop the
    // netkeyd and redis processes it started.
    let run = async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return Err("cannot watch for SIGTERM and SIGINT".to_string());
        };
        tokio::select! {
            r = bench::run(config) => r.map_err(|e| e.to_string()),
            _ = term.recv() => Err("stopped by SIGTERM".to_string()),
            _ = int.recv() => Err("stopped by SIGINT".to_string()),
        }
    };
    let report = match runtime.block_on(run) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netkey-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    let _ = std::io::stdout().flush();
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("netkey-bench: cannot encode the report: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(&args.out, json + "\n") {
        eprintln!("netkey-bench: cannot write {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    println!("report: {}", args.out.display());
    if let Some(png) = &args.plot {
        match bench::plot(&args.out, png) {
            Ok(()) => println!("plot: {}", png.display()),
            Err(e) => {
                eprintln!("netkey-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if report.errors() > 0 {
        eprintln!("netkey-bench: {} errors (see above)", report.errors());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
