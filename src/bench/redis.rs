//! The yardstick: a throwaway `redis-server` on free loopback ports, TLS with mutual
//! authentication (a certificate made here with rcgen) beside plain TCP, AOF with
//! `appendfsync always`, and `redis-benchmark` with the same client and request counts
//! as netkey's like-for-like phases, no pipelining. GET stands beside heartbeats, durable
//! SET beside checkouts.

use super::report::RedisRun;
use super::{BenchError, POLL};
use base64::Engine as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The two programs, found on PATH.
#[derive(Debug)]
pub struct Yardstick {
    server: PathBuf,
    benchmark: PathBuf,
}

/// A child process killed when dropped.
#[derive(Debug)]
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The certificate files redis and redis-benchmark use, absolute paths.
#[derive(Debug)]
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A throwaway CA and one certificate for 127.0.0.1 that serves both ends (server and
/// client authentication), so redis checks client certificates as netkey will.
fn make_certs(dir: &Path) -> Result<Certs, BenchError> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let e = |e: rcgen::Error| BenchError::Redis(format!("cannot make a certificate: {e}"));
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "netkey-bench throwaway CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().map_err(e)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(e)?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "netkey-bench");
    let cert = params.signed_by(&key, &issuer).map_err(e)?;
    let certs = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let write = |p: &Path, text: String| {
        std::fs::write(p, text).map_err(BenchError::io(format!("cannot write {}", p.display())))
    };
    write(&certs.ca, pem("CERTIFICATE", ca_cert.der()))?;
    write(&certs.cert, pem("CERTIFICATE", cert.der()))?;
    write(&certs.key, pem("PRIVATE KEY", key.serialized_der()))?;
    Ok(certs)
}

fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(BenchError::io("cannot find a free loopback port"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(BenchError::io("cannot find a free loopback port"))
}

/// PING on the plain port until PONG: redis binds its TLS port in the same step, and
/// `redis-benchmark --tls` against a port not yet up spins instead of failing.
async fn wait_ready(port: u16, server: &mut Child, log: &Path) -> Result<(), BenchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(mut s) =
            tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await
        {
            let mut buf = [0u8; 16];
            if s.write_all(b"PING\r\n").await.is_ok() {
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                {
                    if buf[..n].starts_with(b"+PONG") {
                        return Ok(());
                    }
                }
            }
        }
        if let Ok(Some(status)) = server.try_wait() {
            return Err(BenchError::Redis(format!(
                "redis-server exited ({status}); see {}",
                log.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(BenchError::Redis(format!(
                "redis-server did not answer within {READY_TIMEOUT:?}; see {}",
                log.display()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

impl Yardstick {
    pub fn find() -> Option<Yardstick> {
        Some(Yardstick {
            server: on_path("redis-server")?,
            benchmark: on_path("redis-benchmark")?,
        })
    }

    /// Starts redis on free loopback ports, TLS and plain TCP, for `clients` connections.
    /// It stays up, idle, until the `Running` is dropped, so each measurement can be taken
    /// right after the netkey phase it stands beside: minutes apart, a shared machine's
    /// load moves enough to tilt the ratio either way.
    pub async fn start(&self, tmp: &Path, clients: usize) -> Result<Running, BenchError> {
        let dir = std::path::absolute(tmp.join("redis"))
            .map_err(BenchError::io("cannot name the redis directory"))?;
        std::fs::create_dir_all(&dir)
            .map_err(BenchError::io(format!("cannot make {}", dir.display())))?;
        let certs = make_certs(&dir)?;
        let (tcp, tls) = (free_port()?, free_port()?);
        let log = dir.join("redis.log");
        let mut server = Guard(
            Command::new(&self.server)
                .args(["--bind", "127.0.0.1", "--port", &tcp.to_string()])
                .args(["--tls-port", &tls.to_string()])
                .arg("--tls-cert-file")
                .arg(&certs.cert)
                .arg("--tls-key-file")
                .arg(&certs.key)
                .arg("--tls-ca-cert-file")
                .arg(&certs.ca)
                .args(["--tls-auth-clients", "yes"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(&log)
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--save", "", "--daemonize", "no"])
                .args(["--maxclients", &(clients + 64).to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(BenchError::io("cannot start redis-server"))?,
        );
        wait_ready(tcp, &mut server.0, &log).await?;
        Ok(Running {
            server,
            benchmark: self.benchmark.clone(),
            certs,
            tcp,
            tls,
            clients,
        })
    }
}

/// A redis-server started by `Yardstick::start`, stopped when dropped.
#[derive(Debug)]
pub struct Running {
    server: Guard,
    benchmark: PathBuf,
    certs: Certs,
    tcp: u16,
    tls: u16,
    clients: usize,
}

impl Running {
    /// `requests` of `test` (SET, durable with `appendfsync always`, or GET) over TLS or
    /// plain TCP, no pipelining, with redis's CPU time per request.
    pub async fn run(
        &self,
        test: &str,
        tls: bool,
        requests: usize,
    ) -> Result<RedisRun, BenchError> {
        let (port, certs) = match tls {
            true => (self.tls, Some(&self.certs)),
            false => (self.tcp, None),
        };
        let (run, used) = super::daemon::with_cpu(
            Some(self.server.0.id()),
            self.bench(port, certs, test, requests),
        )
        .await;
        let mut run = run?;
        run.server_cpu_us_per_op = super::daemon::cpu_per_op(used, run.requests as u64);
        Ok(run)
    }

    async fn bench(
        &self,
        port: u16,
        tls: Option<&Certs>,
        test: &str,
        requests: usize,
    ) -> Result<RedisRun, BenchError> {
        let clients = self.clients;
        let mut cmd = Command::new(&self.benchmark);
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
            .args(["-P", "1", "-r", "1000000", "--csv", "--precision", "3"])
            .args(["-t", &test.to_lowercase()]);
        if let Some(c) = tls {
            cmd.arg("--tls")
                .arg("--cacert")
                .arg(&c.ca)
                .arg("--cert")
                .arg(&c.cert)
                .arg("--key")
                .arg(&c.key);
        }
        let out = output_within_limit(cmd, requests).await?;
        let transport = if tls.is_some() { "tls" } else { "tcp" };
        parse_csv(&out, test).map(|(ops, p50, p99, max)| RedisRun {
            test: test.to_string(),
            transport: transport.to_string(),
            durable: test == "SET",
            clients,
            requests,
            ops_per_sec: ops,
            p50_us: p50 * 1e3,
            p99_us: p99 * 1e3,
            max_us: max * 1e3,
            server_cpu_us_per_op: None,
        })
    }
}

/// Runs redis-benchmark with a time limit (a lost server must not hang the run) and
/// returns its standard output.
async fn output_within_limit(mut cmd: Command, requests: usize) -> Result<String, BenchError> {
    let limit = Duration::from_secs(60 + requests as u64 / 500);
    let tmp =
        tempfile::NamedTempFile::new().map_err(BenchError::io("cannot make a temporary file"))?;
    let file = tmp
        .reopen()
        .map_err(BenchError::io("cannot make a temporary file"))?;
    let mut child = Guard(
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .map_err(BenchError::io("cannot start redis-benchmark"))?,
    );
    let t = Instant::now();
    loop {
        match child.0.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => {
                return Err(BenchError::Redis(format!(
                    "redis-benchmark failed ({status})"
                )))
            }
            Ok(None) if t.elapsed() > limit => {
                return Err(BenchError::Redis(format!(
                    "redis-benchmark did not finish within {limit:?}"
                )))
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                return Err(BenchError::Redis(format!(
                    "cannot watch redis-benchmark: {e}"
                )))
            }
        }
    }
    std::fs::read_to_string(tmp.path())
        .map_err(BenchError::io("cannot read redis-benchmark's output"))
}

/// Reads `redis-benchmark --csv`: a header naming the columns, then one line per test.
/// Returns requests/s and the p50, p99 and max latencies in milliseconds.
fn parse_csv(text: &str, test: &str) -> Result<(f64, f64, f64, f64), BenchError> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|l| {
            l.split(',')
                .map(|f| f.trim().trim_matches('"').to_string())
                .collect()
        })
        .collect();
    let header = rows
        .iter()
        .find(|r| r.first().is_some_and(|f| f == "test"))
        .ok_or_else(|| BenchError::Redis(format!("no CSV header in {text:?}")))?;
    let row = rows
        .iter()
        .find(|r| r.first().is_some_and(|f| f == test))
        .ok_or_else(|| BenchError::Redis(format!("no {test} line in {text:?}")))?;
    let col = |name: &str| -> Result<f64, BenchError> {
        let i = header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| BenchError::Redis(format!("no column {name} in {text:?}")))?;
        row.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| BenchError::Redis(format!("no number in column {name} of {text:?}")))
    };
    Ok((
        col("rps")?,
        col("p50_latency_ms")?,
        col("p99_latency_ms")?,
        col("max_latency_ms")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"12345.68\",\"3.900\",\"0.100\",\"3.800\",\"5.100\",\"6.000\",\"10.100\"\n";
        let (rps, p50, p99, max) = parse_csv(text, "SET").unwrap();
        assert_eq!((rps, p50, p99, max), (12345.68, 3.8, 6.0, 10.1));
        assert!(parse_csv(text, "GET").is_err());
    }

    #[test]
    fn pem_wraps_base64_at_64_columns() {
        let p = pem("CERTIFICATE", &[7u8; 100]);
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(*lines.last().unwrap(), "-----END CERTIFICATE-----");
        let body: String = lines[1..lines.len() - 1].concat();
        let back = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        assert_eq!(back, vec![7u8; 100]);
    }
}
