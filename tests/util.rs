//! Helpers: a real `netkeyd` process that is killed when dropped, and `netkeyctl` runs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct DaemonProcess {
    pub child: Child,
    pub addr: String,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    /// Extra flags, given again at each restart.
    pub flags: Vec<String>,
}

impl DaemonProcess {
    /// Starts `netkeyd --demo` on a free loopback port with a temporary state dir.
    pub fn start_demo() -> DaemonProcess {
        Self::start_demo_with(&[])
    }

    /// Starts `netkeyd --demo` on `dir/state`, which may hold state already.
    pub fn start_with_state(dir: tempfile::TempDir) -> DaemonProcess {
        Self::start_in(dir, &[])
    }

    /// Starts `netkeyd --demo` with extra flags.
    pub fn start_demo_with(extra: &[&str]) -> DaemonProcess {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> DaemonProcess {
        let socket = dir.path().join("admin.sock");
        let (child, addr) = spawn_demo_with(&dir.path().join("state"), &socket, extra);
        DaemonProcess {
            child,
            addr,
            socket,
            dir,
            flags: extra.iter().map(|f| f.to_string()).collect(),
        }
    }

    /// The UDP address discovery answers on.
    pub fn discovery(&self) -> String {
        self.json(&["status"])["discovery"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// SIGKILL, then start again on the same state directory (on a new port).
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.start_again();
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    pub fn start_again(&mut self) {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        let (child, addr) = spawn_demo_with(&self.state_dir(), &self.socket, &flags);
        self.child = child;
        self.addr = addr;
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_netkeyctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// `netkeyctl ARGS` that must succeed; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "netkeyctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ctl_ok(&a)).unwrap()
    }

    pub fn code(&self) -> String {
        self.json(&["pool", "code", "Default"])["code"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn state(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.json"))
    }

    /// `netkeyctl client --state NAME.json --demo --daemon ADDR ARGS`.
    pub fn client(&self, name: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_netkeyctl"))
            .arg("client")
            .arg("--state")
            .arg(self.state(name))
            .args(["--demo", "--daemon", &self.addr])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn camera_in_use(&self) -> u64 {
        let s = self.json(&["status"]);
        s["keys"][0]["seats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["feature"] == "camera")
            .unwrap()["in_use"]
            .as_u64()
            .unwrap()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A background process killed on drop.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` until it is true; the bound is generous, since this waits for processes to
/// start, not for time to pass in the system under test.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Spawns `netkeyd --demo` on `state` and reads its address from the first line it prints.
pub fn spawn_demo(state: &Path, socket: &Path) -> (Child, String) {
    spawn_demo_with(state, socket, &[])
}

/// `spawn_demo` with extra flags.
pub fn spawn_demo_with(state: &Path, socket: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_netkeyd"))
        .args([
            "--demo",
            "--no-broadcast",
            "--listen",
            "127.0.0.1:0",
            "--discovery",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        .arg("--state-dir")
        .arg(state)
        .arg("--admin-socket")
        .arg(socket)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("netkeyd printed nothing").unwrap();
    // "netkeyd DEMO mode: listening on 127.0.0.1:PORT, daemon id ..."
    let addr = first
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_string();
    // Keep draining stdout so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// A TLS 1.3 connection speaking ALPN `netkey/1` with a fresh identity, over `tcp`, for
/// tests that write raw frames inside TLS.
pub fn tls_connect(
    tcp: &std::net::TcpStream,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let identity = netkey::identity::Identity::generate();
    let config = netkey::tls::licence_client_config(&identity).expect("client config");
    let name = rustls::pki_types::ServerName::try_from(netkey::tls::SERVER_NAME).expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let mut stream = rustls::StreamOwned::new(conn, tcp.try_clone().expect("clone"));
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake with the daemon");
    }
    stream
}
