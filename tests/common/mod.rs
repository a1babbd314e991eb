//! The test harness: a real `nats-server` and real `steward` processes, each in a temporary
//! folder of its own. Tests read like the seed's examples: start a broker, start nodes,
//! append to inmsg.txt, wait for a file to say something.
#![allow(dead_code)]

pub mod proxy;
pub mod raw;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Ports handed out by [`free_port`]: below the kernel's ephemeral range (32768 and up on
/// Linux), so that no outgoing connection (a node's to its broker) can be given one as its
/// source port before the server it was picked for binds it.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port nothing listens on, for a server a test is about to start. Never the same
/// twice in one run (the tests run in parallel threads of one process, each picking ports);
/// runs in other processes start elsewhere in the range, and a port one of them holds is
/// skipped.
pub fn free_port() -> u16 {
    static NEXT: Mutex<u16> = Mutex::new(0);
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    if *next == 0 {
        let span = u64::from(PORTS.end - PORTS.start);
        *next = PORTS.start + (u64::from(std::process::id()) * 7919 % span) as u16;
    }
    loop {
        let port = *next;
        *next = if port + 1 < PORTS.end {
            port + 1
        } else {
            PORTS.start
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Tests that mount filesystems (a tmpfs, ext4 on a loop device) hold this while they run,
/// so they run one at a time: loop devices are claimed from one table, and each fills a
/// disk under time limits that another's load could stretch. Every other test runs beside
/// them.
pub fn serial() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    // A test that failed holding it says nothing about the next one.
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn wait_port(port: u16, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() != up {
        assert!(
            Instant::now() < deadline,
            "port {port} did not come {}",
            if up { "up" } else { "down" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `ok` holds (up to [`WAIT`]), looking every 25 ms; fails the test naming
/// `what` otherwise.
/// `steward ARGS` (a client subcommand: `send`, `status`, `keys`) on `node`'s data folder,
/// as an operator on that machine runs it.
pub fn steward(node: &Node, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_steward"))
        .arg(format!("--dataFolder={}", node.data().display()))
        .args(args)
        .env_remove("STEWARD_CONFIG")
        .output()
        .unwrap()
}

pub fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// GETs `path` from an HTTP server on loopback `port`; the whole response, or "" if nothing
/// answers.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// A nats-server on a free loopback port, with its monitoring endpoint on another (for
/// what the broker saw: connections, bytes delivered), killed on drop.
pub struct NatsServer {
    pub port: u16,
    /// The monitoring port (`-m`): `/varz`, `/connz`, `/routez`.
    pub monitor: u16,
    child: Option<Child>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> NatsServer {
        NatsServer::start_with_env(extra, &[])
    }

    /// One that takes messages of at most `bytes` (its `max_payload`; NATS's default is
    /// 1 MiB): for what a node does with a message or a result larger than its broker takes.
    pub fn with_max_payload(bytes: usize) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, format!("max_payload: {bytes}\n")).unwrap();
        NatsServer::start_with(&["-c", conf.to_str().unwrap()])
    }

    /// With arguments and environment variables (a config file may refer to `$VAR`s).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> NatsServer {
        let mut s = NatsServer {
            port: 0,
            monitor: 0,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        // A port another process took since it was picked: pick again.
        for _ in 0..5 {
            (s.port, s.monitor) = (free_port(), free_port());
            if s.try_start() {
                return s;
            }
        }
        panic!("nats-server would not start (tried five pairs of ports)");
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): clients see the connection drop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            wait_port(self.port, false);
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "nats-server would not start again on port {}",
            self.port
        );
    }

    /// Starts the server on its port; false if it exited (port taken) before listening.
    fn try_start(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (apt-get install nats-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || TcpStream::connect(("127.0.0.1", self.monitor)).is_err()
        {
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        true
    }

    /// A page of the monitoring endpoint (e.g. `/connz?state=closed`) as JSON; `null` if
    /// the server does not answer.
    pub fn monitor(&self, path: &str) -> serde_json::Value {
        let page = http_get(self.monitor, path);
        let body = page.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
    }

    /// The broker's view of the client connection named `steward <node>`, if it is open.
    pub fn connection_of(&self, node: &str) -> Option<serde_json::Value> {
        let name = format!("steward {node}");
        self.monitor("/connz?limit=1000")["connections"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name.as_str())
            .cloned()
    }

    /// How many client connections the broker has closed (refused ones included: a failed
    /// TLS handshake, wrong credentials).
    pub fn closed_connections(&self) -> u64 {
        self.monitor("/connz?state=closed&limit=1")["total"]
            .as_u64()
            .unwrap_or(0)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nats_server_binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| {
        for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
            if Path::new(p).exists() {
                return p.to_string();
            }
        }
        "nats-server".to_string()
    })
}

/// A cluster of nats-servers joined by routes on loopback.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start(n: usize) -> NatsCluster {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let route_urls: Vec<String> = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let servers = (0..n)
            .map(|i| {
                let cluster = format!("nats://127.0.0.1:{}", routes[i]);
                let others: Vec<&str> = route_urls
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, u)| u.as_str())
                    .collect();
                let others = others.join(",");
                NatsServer::start_with(&[
                    "--cluster_name",
                    "steward-test",
                    "--cluster",
                    &cluster,
                    "--routes",
                    &others,
                ])
            })
            .collect();
        let cluster = NatsCluster { servers };
        // Routes take a moment to form; wait until every server sees the others.
        wait_until("cluster routes formed", || {
            cluster
                .servers
                .iter()
                .all(|s| s.monitor("/routez")["num_routes"].as_u64().unwrap_or(0) >= n as u64 - 1)
        });
        cluster
    }

    /// Every server's address, comma-separated, for `--brokerAddress`.
    pub fn addresses(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.address())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Which server a node is connected to (by its client name), if any.
    pub fn server_of(&self, node: &str) -> Option<usize> {
        (0..self.servers.len()).find(|&i| self.servers[i].connection_of(node).is_some())
    }
}

/// A test node's seed, made from its name, so that any node can be trusted by name alone.
/// (Test keys only: a real node makes a random one on first start.)
pub fn seed_of(name: &str) -> String {
    let mut raw = [0u8; 32];
    for (i, b) in name.bytes().chain(*b"/steward-test-key").enumerate() {
        raw[i % 32] = raw[i % 32].wrapping_mul(31).wrapping_add(b);
    }
    nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, raw)
        .unwrap()
        .seed()
        .unwrap()
}

/// The public key of [`seed_of`]`(name)`.
pub fn key_of(name: &str) -> String {
    nkeys::KeyPair::from_seed(&seed_of(name))
        .unwrap()
        .public_key()
}

/// The test fleet: every node trusts these names' test keys, as an operator would with
/// `steward keys trust NODE KEY` (or central's `steward keys distribute`) when setting the
/// fleet up. Any other name (`intruder`, `nobody`) is a stranger to all.
pub const FLEET: [&str; 11] = [
    "central", "ship1", "ship2", "ship3", "ship4", "ship5", "ship6", "ship7", "ship8", "ship9",
    "ops",
];

/// Gives node `name` its test key, and makes it trust the fleet's keys.
pub fn install_keys(data: &Path, name: &str) {
    use std::os::unix::fs::PermissionsExt;
    let keys = data.join("keys");
    fs::create_dir_all(&keys).unwrap();
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(keys.join("node.seed"), seed_of(name)).unwrap();
    fs::set_permissions(keys.join("node.seed"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(keys.join("node.pub"), key_of(name)).unwrap();
    let lines: String = FLEET
        .iter()
        .map(|n| format!("{n} {}\n", key_of(n)))
        .collect();
    fs::write(keys.join("trusted.txt"), lines).unwrap();
}

/// libfaketime, to preload into a node whose clock a test sets (the `faketime` program
/// would stand between the test and the node: a signal to it does not reach steward).
pub fn libfaketime() -> PathBuf {
    fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime is needed (apt-get install faketime; .ci/run installs it)")
}

/// A running `steward` node with its own data folder, killed on drop.
pub struct Node {
    pub name: String,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    /// A program the node runs under (e.g. `faketime -f -30d`), if any.
    wrapper: Vec<String>,
    child: Option<Child>,
    pub prom_port: u16,
    ready: Ready,
}

/// How a test knows a node has started.
#[derive(Clone, Copy, PartialEq)]
enum Ready {
    /// Connected, and every method's subscriber subscribed (its process table says so):
    /// what is sent to it now reaches it.
    Listening,
    /// Running: its metrics endpoint answers. For a node that cannot reach its broker (not
    /// up yet, or turning it away).
    Running,
}

impl Node {
    /// Starts node `name` against `broker` with quick test defaults; `extra` flags override.
    /// Returns once the node is connected and listening (see [`Node::wait_listening`]).
    pub fn start(name: &str, broker: &str, extra: &[&str]) -> Node {
        Node::start_under(&[], name, broker, extra)
    }

    /// As [`Node::start`], for a node that cannot connect to `broker` (it is not up yet, or
    /// turns the node away): returns once the node runs (its metrics answer).
    pub fn start_unconnected(name: &str, broker: &str, extra: &[&str]) -> Node {
        Node::prepare_ready_by(&[], name, broker, extra, Ready::Running).started()
    }

    /// As [`Node::start`], run under `wrapper` (e.g. `["env", "LD_PRELOAD=…", …]`).
    pub fn start_under(wrapper: &[&str], name: &str, broker: &str, extra: &[&str]) -> Node {
        Node::prepare(wrapper, name, broker, extra).started()
    }

    /// A prepared node, started.
    fn started(mut self) -> Node {
        self.restart();
        self
    }

    /// A node with its data folder and keys in place, not started yet (start it with
    /// [`Node::restart`]): for a test that puts something under its data folder first.
    pub fn prepare(wrapper: &[&str], name: &str, broker: &str, extra: &[&str]) -> Node {
        Node::prepare_ready_by(wrapper, name, broker, extra, Ready::Listening)
    }

    fn prepare_ready_by(
        wrapper: &[&str],
        name: &str,
        broker: &str,
        extra: &[&str],
        ready: Ready,
    ) -> Node {
        let prom_port = free_port();
        let mut args = vec![
            format!("--node={name}"),
            format!("--brokerAddress={broker}"),
            format!("--promHostAndPort=127.0.0.1:{prom_port}"),
            "--helloInterval=1".to_string(),
            "--defaultMessageTimeout=5".to_string(),
            "--defaultMessageRetries=5".to_string(),
        ];
        if name == "central" {
            args.push("--centralErrorLogger".into());
        }
        // Flags given by the test replace the defaults above.
        let flag = |a: &str| a.split('=').next().unwrap_or_default().to_string();
        args.retain(|a| !extra.iter().any(|e| flag(e) == flag(a)));
        args.extend(extra.iter().map(|s| s.to_string()));
        let dir = tempfile::tempdir().unwrap();
        // As an operator should have it (steward warns about a folder others can read).
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        install_keys(dir.path(), name);
        Node {
            name: name.to_string(),
            dir,
            args,
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            child: None,
            prom_port,
            ready,
        }
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    /// Makes this node trust `name`'s test key (as `steward keys trust` would).
    pub fn trust(&self, name: &str) {
        steward::keys::trust(&self.path("keys"), name, &key_of(name)).unwrap();
    }

    /// Makes this node trust only `names` (and itself): a node set up by hand, before
    /// central distributed anything. The running agent picks it up at once.
    pub fn trust_only(&self, names: &[&str]) {
        let lines: String = names
            .iter()
            .map(|n| format!("{n} {}\n", key_of(n)))
            .collect();
        fs::write(self.path("keys/trusted.txt"), lines).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts the node again (after `kill9` or `terminate`), same folder and flags; returns
    /// when it is ready as it was the first time (listening, or running).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let steward = env!("CARGO_BIN_EXE_steward").to_string();
        let mut argv = self.wrapper.clone();
        argv.push(steward);
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .args(&self.args)
            .arg(format!("--dataFolder={}", self.dir.path().display()))
            .env("RUST_LOG", "debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        // (A socket the last run left does not answer: the table is this run's.)
        let ready = |node: &Node| match node.ready {
            Ready::Listening => listening(&node.status()),
            Ready::Running => TcpStream::connect(("127.0.0.1", node.prom_port)).is_ok(),
        };
        while !ready(self) {
            assert!(
                self.is_running(),
                "{} exited at start:\n{}",
                self.name,
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "{} did not start:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        // Beside the data folder, so the data folder holds only what steward wrote.
        PathBuf::from(format!("{}.log", self.dir.path().display()))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (systemd's stop) and returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe_kill(c.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends signal `sig` to the running node (as `kill -<sig>` would).
    pub fn signal(&self, sig: i32) {
        unsafe_kill(self.pid(), sig);
    }

    /// Waits until every thread of the node is stopped (`T` in `/proc/<pid>/task/*/stat`),
    /// after a SIGSTOP.
    pub fn wait_stopped(&self) {
        let tasks = format!("/proc/{}/task", self.pid());
        let stopped = || {
            fs::read_dir(&tasks).is_ok_and(|d| {
                d.filter_map(Result::ok).all(|t| {
                    fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
                        // The state follows the command name, which is in parentheses.
                        s.rsplit_once(") ")
                            .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
                    })
                })
            })
        };
        let deadline = Instant::now() + WAIT;
        while !stopped() {
            assert!(Instant::now() < deadline, "{}: never stopped", self.name);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resident memory of the running node, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Waits up to `limit` for the node to exit on its own; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        let c = self.child.as_mut()?;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} still runs after {limit:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process table, as `steward status` prints it: through the control socket, with
    /// the same request. "" while the socket does not answer.
    pub fn status(&self) -> String {
        steward::control_client::process_table(&self.path("steward.sock")).unwrap_or_default()
    }

    /// Waits until the process table satisfies `ok`, and returns it.
    pub fn wait_status(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let table = self.status();
            if ok(&table) {
                return table;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the process table never {what}:\n{table}\n--- log of {} ---\n{}",
                self.name,
                self.name,
                tail(&self.log(), 60)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until every method's subscriber is subscribed (its row in the process table
    /// says "listening on"), as [`Node::start`] does: for a node started unconnected.
    /// (What is sent before the receiver listens is lost: a NACK kind for good, an ACK
    /// kind until its sender's next attempt.)
    pub fn wait_listening(&self) {
        self.wait_status("showed every subscriber listening", listening);
    }

    /// Waits until none of the node's handlers is busy (the process table's "handlers
    /// busy: 0"): every message its subscribers had taken by now has been handled to the
    /// end, its effects written and its answer sent.
    pub fn wait_idle(&self) {
        self.wait_status("showed every handler idle", |table| {
            table
                .lines()
                .next()
                .is_some_and(|l| l.ends_with("handlers busy: 0"))
        });
    }

    /// Sends messages (inmsg.txt's JSON) through the control socket and waits until each
    /// has finished, as `steward send` does; returns each one's id and outcome ("acked",
    /// "published", "refused", "failed").
    pub fn send_and_wait(&self, messages: &str) -> Vec<(String, String)> {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        self.wait_status("answered", |table| table.starts_with("node "));
        let mut s = UnixStream::connect(self.path("steward.sock")).unwrap();
        s.set_read_timeout(Some(2 * WAIT)).unwrap();
        s.write_all(format!("WAIT\n{messages}").as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let ended: Vec<(String, String)> = answer
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                let outcome = v["progress"]["finished"]["outcome"].as_str()?.to_string();
                Some((v["id"].as_str()?.to_string(), outcome))
            })
            .collect();
        assert!(
            !ended.is_empty(),
            "{}: nothing finished:\n{answer}",
            self.name
        );
        ended
    }

    /// Appends to inmsg.txt exactly as `cat myfile.json >> inmsg.txt` does.
    pub fn append_inmsg(&self, text: &str) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("inmsg.txt"))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// Waits until `rel` satisfies `ok`, and returns its content.
    pub fn wait_until(&self, rel: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.read(rel);
            if ok(&text) {
                return text;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: {rel} never {what}; it holds:\n{text}\n--- log of {} ---\n{}",
                    self.name,
                    self.name,
                    tail(&self.log(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until `rel` contains `needle`, and returns its content.
    pub fn wait_for(&self, rel: &str, needle: &str) -> String {
        self.wait_until(rel, &format!("contained {needle:?}"), |t| {
            t.contains(needle)
        })
    }

    /// Waits until `rel` has `n` lines (or more); returns it.
    pub fn wait_lines(&self, rel: &str, n: usize) -> String {
        self.wait_until(rel, &format!("held {n} lines"), |t| t.lines().count() >= n)
    }

    /// Waits until `rel` has `n` occurrences of `needle`.
    pub fn wait_count(&self, rel: &str, needle: &str, n: usize) -> String {
        self.wait_until(rel, &format!("held {n} × {needle:?}"), |t| {
            t.matches(needle).count() >= n
        })
    }

    /// The node's `/metrics` page, over real HTTP.
    pub fn metrics(&self) -> String {
        let page = http_get(self.prom_port, "/metrics");
        assert!(
            page.starts_with("HTTP/1.1 200"),
            "{}: /metrics did not answer: {page:?}",
            self.name
        );
        page
    }

    /// One metric's value from /metrics over real HTTP (0 if absent): its name and labels
    /// exactly as the page has them, e.g. `steward_messages_acked_total{method="CLICommand"}`.
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// The sum of metric `name` over every series whose labels include all of `labels`
    /// (each as the page has it, e.g. `outcome="refused"`).
    pub fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| {
                series.split('{').next() == Some(name) && labels.iter().all(|x| series.contains(x))
            })
            .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
            .sum()
    }

    /// Waits until `value()` (read from this node's metrics) satisfies `ok`; returns it.
    pub fn wait_metric(
        &self,
        what: &str,
        value: impl Fn(&Node) -> f64,
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = value(self);
            if ok(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never {what} (at {v})\n--- log of {} ---\n{}",
                self.name,
                self.name,
                tail(&self.log(), 60)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Messages for `method` this node has refused (`steward_messages_received_total`).
    pub fn refused(&self, method: &str) -> f64 {
        self.metric(&format!(
            "steward_messages_received_total{{method=\"{method}\",outcome=\"refused\"}}"
        ))
    }

    /// Waits until this node has refused `n` messages for `method` in all and is done
    /// handling them (refusals logged, reported, and answered where they are answered).
    pub fn wait_refused(&self, method: &str, n: usize) {
        self.wait_metric(
            &format!("refused {n} {method} message(s)"),
            |node| node.refused(method),
            |v| v >= n as f64,
        );
        self.wait_idle();
    }

    /// Waits until the inbox is done with everything appended so far: inmsg.txt empty or
    /// gone, and no taken file (`inmsg.taking-*`) left, so all of it was journaled or
    /// rejected.
    pub fn wait_taken(&self) {
        self.wait_until("", "had every append taken", |_| {
            let taking = fs::read_dir(self.data())
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("inmsg.taking-"));
            self.read("inmsg.txt").is_empty() && !taking
        });
    }
}

/// Whether a process table shows every method's subscriber listening.
fn listening(table: &str) -> bool {
    let subscribers: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("subscriber "))
        .collect();
    [
        "CLICommand",
        "TextLogging",
        "Hello",
        "ErrorLog",
        "TrustedKeys",
    ]
    .iter()
    .all(|m| subscribers.iter().any(|l| l.contains(&format!(" {m} "))))
        && subscribers.iter().all(|l| l.contains("listening on "))
}

/// What [`settle`] sends: a TextLogging line it leaves in the receiver's log.
pub const SETTLED: &str = "settled";

/// Proves that nothing `from` sent `to` for `method` (CLICommand or TextLogging) is still
/// on its way or being handled, so that what has not happened by now (a second run, a
/// line logged twice) will not: one more message on the same subject, which the sender's
/// publisher sends only after every earlier one has finished, and which reaches the
/// receiver's subscriber after every earlier attempt, comes back acked; then the
/// receiver's handlers are seen idle, so whatever it took before that has been handled
/// to the end. The message runs `true` (CLICommand) or logs [`SETTLED`] (TextLogging).
/// Returns its id.
pub fn settle(from: &Node, to: &Node, method: &str) -> String {
    let message = match method {
        "CLICommand" => command(&to.name, &["true"]),
        "TextLogging" => text_log(&to.name, &format!("{SETTLED}\n")),
        _ => panic!("settle: no last message for {method}"),
    };
    let ended = from.send_and_wait(&message);
    let (id, outcome) = &ended[0];
    assert_eq!(
        outcome, "acked",
        "{}: the last {method} to {}",
        from.name, to.name
    );
    to.wait_idle();
    id.clone()
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, tail(&self.log(), 80));
        }
        let _ = fs::remove_file(self.log_path());
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn unsafe_kill(pid: u32, sig: i32) {
    // Through kill(1), to keep the tests free of unsafe code.
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// One CLICommand message, in the seed's JSON form.
/// Appends `text` to the file at `path` (its folder made if need be), as a program
/// writing its log does, or as a power cut leaves part of a record.
pub fn append_to(path: &Path, text: &str) {
    use std::io::Write;
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

pub fn command(to: &str, argv: &[&str]) -> String {
    let data: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[{{\"toNode\":\"{to}\",\"data\":[{}],\"commandOrEvent\":\"CommandACK\",\"method\":\"CLICommand\"}}]\n",
        data.join(",")
    )
}

/// A small tmpfs mounted over a folder (root only), unmounted on drop: a disk that fills.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "16m") over `dir`; `None` unless running as root.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let id = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&id.stdout).trim() != "0" {
            return None;
        }
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .ok()?
            .success();
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Fills the filesystem to the last byte; returns the filler, to remove to free it.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut f = fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        while f.write_all(&small[..1]).is_ok() {}
        filler
    }

    /// Fills the disk but for `bytes` (below steward's free-space floor, not full); the
    /// filler, to remove for room again.
    pub fn leave_free(&self, bytes: u64) -> PathBuf {
        let filler = self.fill();
        let f = fs::OpenOptions::new().write(true).open(&filler).unwrap();
        f.set_len(f.metadata().unwrap().len() - bytes).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the node may still hold files there.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One TextLogging event, in the seed's JSON form.
pub fn text_log(to: &str, text: &str) -> String {
    format!(
        "[{{\"toNode\":\"{to}\",\"data\":[{text:?}],\"commandOrEvent\":\"EventACK\",\"method\":\"TextLogging\"}}]\n"
    )
}

/// TextLogging events to `to`, one per number in `range`, each the line `{label}{i}`.
pub fn text_logs(to: &str, range: std::ops::Range<usize>, label: &str) -> String {
    range
        .map(|i| text_log(to, &format!("{label}{i}\n")))
        .collect()
}

/// Prints a test's counts the way every delivery test reports them.
pub fn report(test: &str, sent: usize, delivered: usize, duplicates: usize) {
    let lost = sent.saturating_sub(delivered);
    eprintln!("[{test}] sent={sent} delivered={delivered} duplicates={duplicates} lost={lost}");
}

/// An ext4 filesystem in a sparse image file, loop-mounted over a folder (root only): a
/// disk whose power can be cut. Unlike kill -9, which keeps the page cache, a cut here
/// loses everything not yet synced, as a real one would. Unmounted and detached on drop.
pub struct Ext4 {
    dir: PathBuf,
    image: PathBuf,
    /// Holds the image (on /dev/shm where there is one, so the "disk" under the loop device
    /// is not itself slow).
    _images: tempfile::TempDir,
}

/// What a power cut did to the canaries: a file fsync'd when the filesystem was made, and
/// one written without fsync just before the cut.
#[derive(Debug)]
pub struct Cut {
    pub synced_kept: bool,
    pub unsynced_dropped: bool,
}

/// `EXT4_IOC_SHUTDOWN`, `_IOR('X', 125, __u32)` (xfstests' "godown"), and its flag that
/// skips flushing the filesystem's journal: what was not yet committed is gone.
const EXT4_IOC_SHUTDOWN: u64 = 0x8004_587D;
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
const SYNCED_CANARY: &str = "powercut-canary.synced";
const UNSYNCED_CANARY: &str = "powercut-canary.unsynced";

impl Ext4 {
    /// Makes an ext4 filesystem of `size` (as `truncate -s` takes it, e.g. "256M") in a
    /// sparse image and mounts it over `dir`, private (0700); `None` unless running as root
    /// with `mkfs.ext4` and loop devices.
    pub fn mount(dir: &Path, size: &str) -> Option<Ext4> {
        let shm = Path::new("/dev/shm");
        Ext4::mount_in(dir, size, shm.is_dir().then_some(shm))
    }

    /// As [`Ext4::mount`], with the image in `images` (a small tmpfs: once that is full,
    /// the filesystem's writes reach a disk that cannot take them, and fsync fails with
    /// EIO, as on a dying SD card).
    pub fn mount_in(dir: &Path, size: &str, images: Option<&Path>) -> Option<Ext4> {
        let id = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&id.stdout).trim() != "0" {
            return None;
        }
        let images = match images {
            Some(at) => tempfile::tempdir_in(at).ok()?,
            None => tempfile::tempdir().ok()?,
        };
        let image = images.path().join("disk.img");
        let run = |cmd: &mut Command| cmd.status().map(|s| s.success()).unwrap_or(false);
        let made = run(Command::new("truncate").args(["-s", size]).arg(&image))
            && run(Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&image)
                .stdout(Stdio::null()));
        if !made {
            eprintln!("ext4: cannot make a filesystem (is mkfs.ext4 installed?)");
            return None;
        }
        let disk = Ext4 {
            dir: dir.to_path_buf(),
            image,
            _images: images,
        };
        if !disk.mount_image() {
            eprintln!("ext4: cannot loop-mount {}", disk.image.display());
            return None;
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
        // The data folder holds only what steward writes, and the canary.
        let _ = fs::remove_dir(dir.join("lost+found"));
        let mut canary = fs::File::create(dir.join(SYNCED_CANARY)).unwrap();
        std::io::Write::write_all(&mut canary, b"synced\n").unwrap();
        canary.sync_all().unwrap();
        Some(disk)
    }

    fn mount_image(&self) -> bool {
        Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&self.image)
            .arg(&self.dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Unmounts (the node stopped), checks and repairs the filesystem (as a boot would),
    /// and mounts it again: the journal replay keeps only what was committed.
    pub fn remount(&self) {
        // Whatever the node started there (a command) may hold the mount a moment longer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("umount")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "cannot unmount {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&self.image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            self.mount_image(),
            "cannot mount {} again",
            self.image.display()
        );
    }

    /// Makes everything written to the filesystem so far durable (`sync -f`): for what a
    /// test puts there itself (keys), which a cut would otherwise take.
    pub fn sync(&self) {
        assert!(Command::new("sync")
            .arg("-f")
            .arg(&self.dir)
            .status()
            .unwrap()
            .success());
    }

    /// Cuts the power under `node`: shuts the filesystem down without flushing its
    /// journal, kills the node (-9), unmounts, and mounts again (the journal replay keeps
    /// only what was committed). Start the node again with [`Node::restart`].
    pub fn power_cut(&self, node: &mut Node) -> Cut {
        use std::os::fd::AsRawFd;
        fs::write(self.dir.join(UNSYNCED_CANARY), "unsynced\n").unwrap();
        // Nothing of the node runs after a real cut. Left running, a thread whose fdatasync
        // straddles EXT4_IOC_SHUTDOWN is told it succeeded although ext4 dropped the data
        // (it stays silent about write-back errors once shut down), and acts on it: a test
        // artefact, not a power cut. Frozen first, such a thread never returns to act.
        node.signal(libc::SIGSTOP);
        node.wait_stopped();
        let root = fs::File::open(&self.dir).unwrap();
        let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: an ioctl on an open descriptor, with a pointer to a u32 that outlives the
        // call, as EXT4_IOC_SHUTDOWN expects. (No tool in a standard install does this:
        // xfs_io's "shutdown" and xfstests' godown are not there.)
        let rc = unsafe {
            libc::ioctl(
                root.as_raw_fd(),
                EXT4_IOC_SHUTDOWN as _,
                &flags as *const u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "EXT4_IOC_SHUTDOWN: {}",
            std::io::Error::last_os_error()
        );
        drop(root);
        node.kill9();
        self.remount();
        let cut = Cut {
            synced_kept: fs::read_to_string(self.dir.join(SYNCED_CANARY))
                .ok()
                .as_deref()
                == Some("synced\n"),
            unsynced_dropped: fs::read_to_string(self.dir.join(UNSYNCED_CANARY))
                .map_or(true, |t| t != "unsynced\n"),
        };
        let _ = fs::remove_file(self.dir.join(UNSYNCED_CANARY));
        cut
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        // Lazily if the node still runs there: the loop device (set to clear itself) is
        // detached once the last file is closed.
        let busy = !Command::new("umount")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if busy {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if let Ok(out) = Command::new("losetup").arg("-j").arg(&self.image).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dev) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", dev]).status();
                }
            }
        }
    }
}
