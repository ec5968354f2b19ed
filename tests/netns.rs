//! Discovery and the licence protocol over a small LAN built from Linux network
//! namespaces, with the real binaries on a port of the test's own (inside the namespaces only):
//!
//! ```text
//!   ns-d 10.203.61.1   ──┐
//!   ns-a 10.203.61.2   ──┼── br0 (ns-lan)
//!   ns-r 10.203.61.254 ──┘
//!   ns-r 10.203.62.254 ───── ns-b 10.203.62.2
//! ```
//!
//! `netkeyd` runs in ns-d. From ns-a, `netkeyctl discover` finds it by broadcast (no
//! default route there, so 255.255.255.255 is unreachable and the subnet broadcast must do
//! the work). ns-b sits behind the router ns-r: broadcast finds nothing, `--to` finds the
//! daemon. Then video servers in ns-a and ns-b enrol and check out cameras over TCP at the
//! address discovery reported. The admin socket is a path, so `netkeyctl --socket` works
//! from the root namespace.
//!
//! Nothing touches the machine's own networks: every link and address is created inside
//! namespaces this test makes (none is connected to the root namespace), and every
//! namespace is deleted when the test ends, even on panic. Needs root and iproute2's `ip`;
//! without them it skips, except under CI=true, where a skip is a failure.

use crate::util::{eventually, Background};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The daemon's port inside the namespaces: not the product's default, so nothing here
/// ever binds that one.
const PORT: u16 = 19_547;

/// The daemon's LAN and the subnet behind the router. Test-only ranges that never leave
/// the namespaces.
const LAN: &str = "10.203.61";
const FAR: &str = "10.203.62";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().unwrap()
}

fn ip_ok(args: &[&str]) -> String {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The namespaces of one test run (named after the test process, so concurrent runs do
/// not collide); each is deleted on drop, which also destroys every link inside it.
struct Namespaces {
    prefix: String,
    made: Vec<String>,
}

impl Namespaces {
    fn new(tag: &str) -> Namespaces {
        Namespaces {
            prefix: format!("netkey-test-{}-{tag}", std::process::id()),
            made: Vec::new(),
        }
    }

    fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn add(&mut self, role: &str) -> Result<(), String> {
        let name = self.name(role);
        let out = ip(&["netns", "add", &name]);
        if !out.status.success() {
            return Err(format!("ip netns add {name}: {}", stderr(&out).trim()));
        }
        self.made.push(name);
        ip_ok(&["-n", &self.name(role), "link", "set", "lo", "up"]);
        Ok(())
    }

    /// `ip -n NS ARGS`, which must succeed.
    fn ip(&self, role: &str, args: &[&str]) -> String {
        let name = self.name(role);
        let mut all = vec!["-n", name.as_str()];
        all.extend_from_slice(args);
        ip_ok(&all)
    }

    /// `ip netns exec NS PROGRAM`: exec, not fork, so the child is PROGRAM itself.
    fn exec(&self, role: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name(role), program]);
        c
    }

    /// An address with its broadcast address (`brd +`) on `dev`, and the link up.
    fn address(&self, role: &str, dev: &str, addr: &str) {
        self.ip(role, &["addr", "add", addr, "broadcast", "+", "dev", dev]);
        self.ip(role, &["link", "set", dev, "up"]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.made.iter().rev() {
            let out = ip(&["netns", "del", name]);
            if !out.status.success() {
                eprintln!("ip netns del {name}: {}", stderr(&out));
            }
        }
    }
}

/// Why this test cannot run here, if it cannot (printed as a skip; a failure under
/// CI=true); otherwise the namespaces of this run, none made yet.
fn namespaces_or_skip(test: &str, tag: &str) -> Option<Namespaces> {
    let why = if !is_root() {
        "it needs root to create network namespaces".to_string()
    } else if Command::new("ip").arg("-V").output().is_err() {
        "iproute2's `ip` is not installed".to_string()
    } else {
        let mut ns = Namespaces::new(tag);
        match ns.add("lan") {
            Ok(()) => return Some(ns),
            Err(e) => format!("cannot create network namespaces ({e})"),
        }
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {why}; CI must run it (as root, with iproute2: apt-get install -y iproute2)"
    );
    eprintln!("skipping {test}: {why}");
    None
}

/// A bridge `br0` in ns-lan and, per (role, host, brd), a namespace with `eth0` on it at
/// `{LAN}.host/24`: with its broadcast address (`brd +`) if `brd`, without one if not.
fn bridge(ns: &mut Namespaces, hosts: &[(&str, u8, bool)]) {
    ns.ip(
        "lan",
        &["link", "add", "br0", "type", "bridge", "forward_delay", "0"],
    );
    ns.ip("lan", &["link", "set", "br0", "up"]);
    for &(role, host, brd) in hosts {
        ns.add(role).unwrap();
        // The bridge port is created in ns-lan, its peer straight in the host's namespace.
        let port = format!("p{role}");
        let peer_ns = ns.name(role);
        ns.ip(
            "lan",
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &peer_ns,
            ],
        );
        ns.ip("lan", &["link", "set", &port, "master", "br0", "up"]);
        let addr = format!("{LAN}.{host}/24");
        if brd {
            ns.address(role, "eth0", &addr);
        } else {
            ns.ip(role, &["addr", "add", &addr, "dev", "eth0"]);
            ns.ip(role, &["link", "set", "eth0", "up"]);
        }
        eventually("the bridge port to forward", || {
            ns.ip("lan", &["-d", "link", "show", "dev", &port])
                .contains("state forwarding")
        });
        eventually("eth0 to come up", || {
            ns.ip(role, &["link", "show", "dev", "eth0"])
                .contains("LOWER_UP")
        });
    }
}

/// ns-b on `{FAR}.0/24` behind the router ns-r (on the bridge already): routes both ways
/// between ns-b and ns-d, forwarding on in ns-r, and nothing else.
fn router(ns: &mut Namespaces) {
    ns.add("b").unwrap();
    let b = ns.name("b");
    ns.ip(
        "r",
        &[
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &b,
        ],
    );
    ns.address("r", "eth1", &format!("{FAR}.254/24"));
    ns.address("b", "eth0", &format!("{FAR}.2/24"));
    let forward = ns
        .exec("r", "sh")
        .args([
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward && cat /proc/sys/net/ipv4/ip_forward",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&forward.stdout).trim(),
        "1",
        "ip_forward in ns-r: {}",
        stderr(&forward)
    );
    ns.ip(
        "b",
        &[
            "route",
            "add",
            &format!("{LAN}.0/24"),
            "via",
            &format!("{FAR}.254"),
        ],
    );
    ns.ip(
        "d",
        &[
            "route",
            "add",
            &format!("{FAR}.0/24"),
            "via",
            &format!("{LAN}.254"),
        ],
    );
    for (role, dev) in [("r", "eth1"), ("b", "eth0")] {
        eventually("the router's links to come up", || {
            ns.ip(role, &["link", "show", "dev", dev])
                .contains("LOWER_UP")
        });
    }
}

/// `netkeyd --demo` in ns-d, killed on drop (fields drop in order: the process, then its
/// directory).
struct NsDaemon {
    _process: Background,
    pid: u32,
    socket: PathBuf,
    id: String,
    dir: tempfile::TempDir,
}

impl NsDaemon {
    /// Starts it with `--listen LISTEN --discovery DISCOVERY` and waits until it answers
    /// on its admin socket.
    fn start(ns: &Namespaces, listen: &str, discovery: &str) -> NsDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let mut child = ns
            .exec("d", env!("CARGO_BIN_EXE_netkeyd"))
            .args(["--demo", "--listen", listen, "--discovery", discovery])
            // An empty configuration file: nothing from the machine's /etc/netkey.
            .args(["--config", "/dev/null", "--log-level", "warn"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--admin-socket")
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let pid = child.id();
        let process = Background(child);
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("netkeyd printed nothing").unwrap();
        assert!(first.contains(&format!("listening on {listen}")), "{first}");
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        // `ip netns exec` execs: the child is netkeyd itself, so the guard stops the daemon.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(comm.trim(), "netkeyd");
        eventually("the admin socket", || socket.exists());
        let status = admin(&socket, &["status"]);
        assert_eq!(status["discovery"], discovery, "{status}");
        NsDaemon {
            _process: process,
            pid,
            id: status["daemon_id"].as_str().unwrap().to_string(),
            socket,
            dir,
        }
    }
}

/// `netkeyctl --socket SOCKET --json ARGS` from the root namespace (Unix socket only).
fn admin(socket: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_netkeyctl"))
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "netkeyctl {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts `netkeyctl --json discover --timeout 2 EXTRA` in a namespace.
fn spawn_discover(ns: &Namespaces, role: &str, extra: &[&str]) -> Child {
    ns.exec(role, env!("CARGO_BIN_EXE_netkeyctl"))
        .args([
            "--json",
            "discover",
            "--timeout",
            "2",
            "--port",
            &PORT.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The `daemons` a discover run reported.
fn daemons(what: &str, child: Child) -> Vec<serde_json::Value> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what}: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["daemons"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {v}"))
        .clone()
}

fn free_cameras(daemon: &serde_json::Value) -> u64 {
    let key = &daemon["keys"][0];
    key["seats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["feature"] == "camera")
        .unwrap_or_else(|| panic!("no camera seats: {daemon}"))["free"]
        .as_u64()
        .unwrap()
}

/// `netkeyctl --json client --state DIR/NAME.json --demo --daemon ADDR ARGS` in a
/// namespace; must succeed.
fn client(
    ns: &Namespaces,
    role: &str,
    dir: &Path,
    daemon: &str,
    args: &[&str],
) -> serde_json::Value {
    let out = ns
        .exec(role, env!("CARGO_BIN_EXE_netkeyctl"))
        .arg("--json")
        .arg("client")
        .arg("--state")
        .arg(dir.join(format!("{role}.json")))
        .args(["--demo", "--daemon", daemon])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client {args:?} in ns-{role}: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The premise of the broadcast cases: without a default route, 255.255.255.255 has no
/// route in `role`, so the client's send to it fails there (ENETUNREACH) and only the
/// subnet broadcast can reach the daemon.
fn assert_no_limited_broadcast_route(ns: &Namespaces, role: &str) {
    let name = ns.name(role);
    let route = ip(&["-n", &name, "route", "get", "255.255.255.255"]);
    assert!(
        !route.status.success() && stderr(&route).contains("unreachable"),
        "ns-{role} has a route for 255.255.255.255: {}",
        String::from_utf8_lossy(&route.stdout)
    );
}

#[test]
fn discovery_and_checkout_across_a_namespace_lan_and_a_router() {
    const TEST: &str = "discovery_and_checkout_across_a_namespace_lan_and_a_router";
    // Declared before the daemon, so dropped after it.
    let Some(mut ns) = namespaces_or_skip(TEST, "main") else {
        return;
    };
    bridge(&mut ns, &[("d", 1, true), ("a", 2, true), ("r", 254, true)]);
    router(&mut ns);
    for role in ["a", "b"] {
        assert_no_limited_broadcast_route(&ns, role);
    }
    let a_brd = ns.ip("a", &["route", "get", &format!("{LAN}.255")]);
    assert!(a_brd.starts_with("broadcast"), "{a_brd}");
    let daemon_ip = format!("{LAN}.1");
    let daemon_at = format!("{daemon_ip}:{PORT}");
    let daemon = NsDaemon::start(&ns, &format!("0.0.0.0:{PORT}"), &format!("0.0.0.0:{PORT}"));

    // Three searches at once: by broadcast from ns-a (same LAN) and from ns-b (behind the
    // router), and by unicast from ns-b.
    let a_broadcast = spawn_discover(&ns, "a", &[]);
    let b_broadcast = spawn_discover(&ns, "b", &[]);
    let b_unicast = spawn_discover(&ns, "b", &["--to", &daemon_ip]);

    let found = daemons("discover in ns-a", a_broadcast);
    assert_eq!(found.len(), 1, "ns-a by broadcast: {found:?}");
    let near = &found[0];
    assert_eq!(near["daemon_id"], daemon.id.as_str(), "{near}");
    assert_eq!(near["address"], daemon_at.as_str(), "{near}");
    assert_eq!(near["from"], daemon_at.as_str(), "{near}");
    assert_eq!(near["keys"][0]["key_id"], "DEMO", "{near}");
    assert_eq!(near["keys"][0]["demo"], true, "{near}");
    assert_eq!(free_cameras(near), 16, "{near}");

    let found = daemons("discover in ns-b", b_broadcast);
    assert!(found.is_empty(), "broadcast crossed the router: {found:?}");

    let found = daemons("discover --to in ns-b", b_unicast);
    assert_eq!(found.len(), 1, "ns-b by unicast: {found:?}");
    let far = &found[0];
    assert_eq!(far["daemon_id"], daemon.id.as_str(), "{far}");
    assert_eq!(far["address"], daemon_at.as_str(), "{far}");
    assert_eq!(far["keys"][0]["key_id"], "DEMO", "{far}");

    // Video servers connect where discovery pointed: on the LAN, and through the router.
    for (role, camera, found) in [("a", "cam-1", near), ("b", "cam-2", far)] {
        let at = found["address"].as_str().unwrap();
        let code = admin(&daemon.socket, &["pool", "code", "Default"])["code"]
            .as_str()
            .unwrap()
            .to_string();
        let dir = daemon.dir.path();
        let enrolled = client(&ns, role, dir, at, &["enrol", &code, "--name", role]);
        assert_eq!(enrolled["key_id"], "DEMO", "{enrolled}");
        assert_eq!(enrolled["daemon_id"], daemon.id.as_str(), "{enrolled}");
        let got = client(&ns, role, dir, at, &["checkout", camera]);
        assert_eq!(got["outcomes"][0]["camera_id"], camera, "{got}");
        assert_eq!(got["outcomes"][0]["granted"], true, "{got}");
    }
    let servers = admin(&daemon.socket, &["server", "list"]);
    for name in ["a", "b"] {
        let s = servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no server {name}: {servers}"));
        assert_eq!(s["cameras"], 1, "{s}");
    }

    // The OFFER follows the seats.
    let found = daemons("discover after checkout", spawn_discover(&ns, "a", &[]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(free_cameras(&found[0]), 14, "{:?}", found[0]);

    // Everything this test made goes away with it.
    let pid = daemon.pid;
    drop(daemon);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "netkeyd still runs"
    );
    let prefix = ns.prefix.clone();
    drop(ns);
    let left = ip_ok(&["netns", "list"]);
    assert!(!left.contains(&prefix), "namespaces left behind: {left}");
}

/// Regression: an address configured without a broadcast address (`ip addr add A/24 dev
/// eth0`, no `brd`) made if-addrs report the interface's own address as its broadcast
/// address, so `discover` sent its DISCOVER to itself and, without a default route for
/// 255.255.255.255, found nothing on its own LAN. The client now computes the subnet
/// broadcast from the netmask.
#[test]
fn discover_finds_the_daemon_from_an_interface_without_a_broadcast_address() {
    const TEST: &str = "discover_finds_the_daemon_from_an_interface_without_a_broadcast_address";
    let Some(mut ns) = namespaces_or_skip(TEST, "nobrd") else {
        return;
    };
    bridge(&mut ns, &[("d", 1, true), ("a", 2, false)]);
    assert_no_limited_broadcast_route(&ns, "a");
    let daemon = NsDaemon::start(&ns, &format!("0.0.0.0:{PORT}"), &format!("0.0.0.0:{PORT}"));
    let found = daemons("discover in ns-a", spawn_discover(&ns, "a", &[]));
    assert_eq!(found.len(), 1, "ns-a (no brd) by broadcast: {found:?}");
    assert_eq!(found[0]["daemon_id"], daemon.id.as_str());
}
