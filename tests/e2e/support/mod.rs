//! A real `warden up` for tests: its own data dir, config dir and port; kill -9 and restart.

pub mod cluster;
#[path = "../../../crates/warden-cell/tests/support/rootfs.rs"]
#[allow(dead_code)] // shared with the cell crate's OCI tests; not every helper is used here
pub mod rootfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use warden_core::fingerprint::Fingerprint;
use warden_core::CloudEvent;
use warden_runtime::auth::Identity;
use warden_runtime::client::{BlockingClient, ClientConfig, ServerTrust};
use warden_runtime::view::WorkloadView;

/// A workload that crashes (exit 3) and is given up after two retries.
pub const CRASHER: &str = r#"
name = "crasher"
[cell]
argv = ["sh", "-c", "echo run; exit 3"]
[restart]
policy = "on-failure"
max_attempts = 2
backoff = "10ms"
backoff_max = "40ms"
"#;

/// The kill -9 stress test (`crash`: six clients and a server killed and restarted at random)
/// loads the machine as no other test does, and the cluster tests (failovers, leases and link
/// blips measured against deadlines of a few seconds) fail beside it on a 2-core machine. Before
/// the suite was one binary each file ran alone; now a neighbour may come from any module. The
/// heavy test holds this for writing; every [`cluster::Cluster`] holds it for reading, so cluster
/// tests still run beside one another and beside everything else.
static HEAVY: RwLock<()> = RwLock::new(());

/// For the heavy test: waits until no cluster test runs, and keeps them waiting while held.
pub fn heavy() -> RwLockWriteGuard<'static, ()> {
    // A test that panicked while holding it leaves nothing behind that the next one could trip on.
    HEAVY.write().unwrap_or_else(PoisonError::into_inner)
}

/// For a timing-sensitive test: waits while the heavy test runs.
pub fn not_beside_heavy() -> RwLockReadGuard<'static, ()> {
    HEAVY.read().unwrap_or_else(PoisonError::into_inner)
}

/// A test whose assertion is a latency on this 2-core machine (the attack test's "answers within
/// a second") runs with no other warden server beside it: it holds [`alone`], which waits until
/// every running [`Warden`] of other tests is gone and keeps new ones waiting. Not an `RwLock`: a
/// test that starts a second server while the alone test waits must not deadlock, so a thread
/// that already runs a server never waits to start another, and the alone test's own thread
/// never waits at all.
static RUNNING: Mutex<Gate> = Mutex::new(Gate { running: 0, alone: false, alone_waiting: false });
static RUNNING_CHANGED: Condvar = Condvar::new();

struct Gate {
    running: usize,
    alone: bool,
    alone_waiting: bool,
}

thread_local! {
    /// This thread's running servers, or `usize::MAX` while it holds [`Alone`].
    static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn gate() -> std::sync::MutexGuard<'static, Gate> {
    RUNNING.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Running(bool);

impl Running {
    fn enter() -> Running {
        let mine = MINE.get();
        if mine == usize::MAX {
            return Running(false);
        }
        let mut gate = gate();
        while gate.alone || (gate.alone_waiting && mine == 0) {
            gate = RUNNING_CHANGED.wait(gate).unwrap_or_else(PoisonError::into_inner);
        }
        gate.running += 1;
        MINE.set(mine + 1);
        Running(true)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0 {
            gate().running -= 1;
            MINE.set(MINE.get().saturating_sub(1));
            RUNNING_CHANGED.notify_all();
        }
    }
}

/// Held by a test that must run with no other test's server beside it (see [`RUNNING`]).
pub struct Alone;

pub fn alone() -> Alone {
    let mut gate = gate();
    gate.alone_waiting = true;
    while gate.running > 0 || gate.alone {
        gate = RUNNING_CHANGED.wait(gate).unwrap_or_else(PoisonError::into_inner);
    }
    (gate.alone, gate.alone_waiting) = (true, false);
    MINE.set(usize::MAX);
    Alone
}

impl Drop for Alone {
    fn drop(&mut self) {
        gate().alone = false;
        MINE.set(0);
        RUNNING_CHANGED.notify_all();
    }
}

pub struct Warden {
    pub root: tempfile::TempDir,
    pub port: u16,
    pub server: Option<Child>,
    /// Extra arguments for `warden up`.
    pub up_args: Vec<String>,
    /// `up` (the all-in-one) or `server` (control plane only).
    pub command: &'static str,
    /// Counts this server as running, so that a test that must run alone waits for it.
    _running: Running,
}

/// `root/name`, mode 1777 (like /tmp: anyone writes, only the owner removes), with `root` made
/// passable (0755): where a test's cells, which run as the `warden` user, leave their marks.
pub fn shared_dir(root: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_warden")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Warden {
    pub fn start() -> Warden {
        Warden::start_with(&[])
    }

    pub fn start_with(up_args: &[&str]) -> Warden {
        Warden::start_with_command("up", up_args)
    }

    /// `warden <command>` (`up` or `server`) with extra arguments.
    pub fn start_with_command(command: &'static str, up_args: &[&str]) -> Warden {
        let up_args = up_args.iter().map(|a| a.to_string()).collect();
        let running = Running::enter();
        let mut warden =
            Warden { root: tempfile::tempdir().unwrap(), port: free_port(), server: None, up_args, command, _running: running };
        warden.up();
        warden
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// A directory cells may write to: they run as the unprivileged `warden` user, and the
    /// test's temp dir is root's, 0700. See [`shared_dir`].
    pub fn shared(&self, name: &str) -> PathBuf {
        shared_dir(self.root.path(), name)
    }

    pub fn config_home(&self) -> PathBuf {
        self.root.path().join("config")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How clients reach it: `addr()` (TLS), or `http://` + `addr()` with `--insecure-http`.
    pub fn url(&self) -> String {
        if self.up_args.iter().any(|a| a == "--insecure-http") {
            format!("http://{}", self.addr())
        } else {
            self.addr()
        }
    }

    /// `warden <command>` on this data dir and port, its stderr appended to `up.log`.
    fn spawn_server(&self) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.root.path().join("up.log")).unwrap();
        Command::new(bin())
            .args([self.command, "--listen", &self.addr(), "--data-dir"])
            .arg(self.data_dir())
            .args(&self.up_args)
            .env("XDG_CONFIG_HOME", self.config_home())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Starts `warden up` and waits until it answers.
    pub fn up(&mut self) {
        assert!(self.server.is_none(), "already up");
        self.server = Some(self.spawn_server());
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut health = None;
        while Instant::now() < deadline {
            if answers_health_once_pinned(&self.url(), &self.data_dir(), &mut health) {
                return;
            }
            if let Some(status) = self.server.as_mut().unwrap().try_wait().unwrap() {
                panic!("warden up exited with {status}: {}", self.up_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("warden up did not answer within 20s: {}", self.up_log());
    }

    /// Starts `warden up` expecting it to refuse to start: waits for it to exit, asserts that
    /// it failed without ever answering, and returns what it logged.
    pub fn up_fails(&mut self) -> String {
        assert!(self.server.is_none(), "already up");
        let logged_before = self.up_log().len();
        let mut child = self.spawn_server();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut health = None;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(!status.success(), "warden up exited with success: {}", self.up_log());
                return self.up_log()[logged_before..].to_string();
            }
            if answers_health_once_pinned(&self.url(), &self.data_dir(), &mut health) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("warden up started when it should have refused: {}", self.up_log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("warden up neither started nor exited within 20s: {}", self.up_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn up_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("up.log")).unwrap_or_default()
    }

    /// SIGKILL the server, the way a crash would.
    pub fn kill9(&mut self) {
        let mut child = self.server.take().expect("server is up");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Runs the `warden` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin()).args(args).env("WARDEN_ADDR", self.url()).env("XDG_CONFIG_HOME", self.config_home()).output().unwrap()
    }

    /// Runs the CLI and returns stdout, panicking with stderr on failure.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "warden {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn write_spec(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `warden run SPEC`, returning the id from the last line.
    pub fn run(&self, spec_name: &str, text: &str) -> String {
        let path = self.write_spec(spec_name, text);
        let stdout = self.cli_ok(&["run", path.to_str().unwrap()]);
        stdout.lines().last().expect("run prints the id").trim().to_string()
    }

    pub fn status(&self, id: &str) -> WorkloadView {
        serde_json::from_str(&self.cli_ok(&["status", id, "-o", "json"])).unwrap()
    }

    pub fn wait_for(&self, id: &str, what: &str, mut pred: impl FnMut(&WorkloadView) -> bool) -> WorkloadView {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = self.status(id);
            if pred(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last status: {view:?}\n{}", self.up_log());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn events(&self, extra: &[&str]) -> Vec<CloudEvent> {
        let mut args = vec!["events", "-o", "json"];
        args.extend_from_slice(extra);
        self.cli_ok(&args).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    pub fn identity(&self) -> Identity {
        Identity::load(&self.config_home().join("warden/admin.key")).unwrap()
    }

    /// The API client, signing as the admin (what the CLI signs with).
    pub fn client(&self) -> BlockingClient {
        signed_client(&self.url(), self.identity())
    }

    /// A signed HTTP request straight to the API, for what the CLI would refuse to send: the
    /// status and the body, whatever the status.
    pub fn api(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let client = self.client();
        let request = client.prepare(method, path, body.to_vec()).unwrap();
        let (code, answer) = client.exchange(&request, None).unwrap();
        (code, String::from_utf8(answer).unwrap())
    }
}

/// The certificate fingerprints of the servers the tests started, by `host:port`: the tests'
/// clients trust these, as agents trust the pin in their join token.
static PINS: Mutex<BTreeMap<String, Fingerprint>> = Mutex::new(BTreeMap::new());

/// Trusts, for `addr`, the certificate whose fingerprint the server on `data_dir` wrote
/// (`<data-dir>/tls/fingerprint`); `false` while it has not written one yet.
pub fn learn_pin(addr: &str, data_dir: &Path) -> bool {
    let Some(pin) = std::fs::read_to_string(data_dir.join("tls/fingerprint")).ok().and_then(|t| Fingerprint::parse(&t)) else {
        return false;
    };
    PINS.lock().unwrap_or_else(PoisonError::into_inner).insert(addr.trim_start_matches("https://").to_string(), pin);
    true
}

/// How the tests' clients connect to `addr`: with the pin the tests learnt for it (`learn_pin`),
/// or in plain HTTP for an explicit `http://` (a workload's own port, `--insecure-http`).
pub fn client_config(addr: &str) -> ClientConfig {
    if addr.starts_with("http://") {
        return ClientConfig::default();
    }
    let authority = addr.trim_start_matches("https://");
    let pin = PINS.lock().unwrap_or_else(PoisonError::into_inner).get(authority).cloned();
    let pin = pin.unwrap_or_else(|| panic!("no certificate pinned for {addr}: no server the tests started listens there"));
    ClientConfig { trust: ServerTrust::Pinned(pin), ..ClientConfig::default() }
}

/// A TLS connection over `tcp` to the server at `addr`, trusting the pin the tests learnt for it:
/// for tests that write raw HTTP bytes. The handshake happens on the first write or read.
pub fn tls_over(tcp: std::net::TcpStream, addr: &str) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let config = warden_runtime::tls::client_config(&client_config(addr).trust).unwrap().expect("a pinned server");
    let name = rustls::pki_types::ServerName::try_from("warden").unwrap();
    rustls::StreamOwned::new(rustls::ClientConnection::new(Arc::new(config), name).unwrap(), tcp)
}

/// Whether the server at `addr` (data dir `data_dir`) answers its health check, once it wrote
/// its certificate's fingerprint; `health` keeps the client between calls.
pub fn answers_health_once_pinned(addr: &str, data_dir: &Path, health: &mut Option<BlockingClient>) -> bool {
    if health.is_none() && (addr.starts_with("http://") || learn_pin(addr, data_dir)) {
        *health = Some(unsigned_client(addr));
    }
    health.as_ref().is_some_and(answers_health)
}

/// The workspace's client for the server at `addr`, signing with `identity`.
pub fn signed_client(addr: &str, identity: Identity) -> BlockingClient {
    BlockingClient::new(addr, Arc::new(identity), &client_config(addr)).unwrap()
}

/// The workspace's client for `addr`, signing nothing: health, metrics, workloads' own HTTP.
pub fn unsigned_client(addr: &str) -> BlockingClient {
    BlockingClient::unsigned(addr, &client_config(addr)).unwrap()
}

/// Whether the server behind `client` answers `GET /v1/health` (within a second).
pub fn answers_health(client: &BlockingClient) -> bool {
    client.call("GET", "/v1/health", b"", Some(Duration::from_secs(1))).is_ok()
}

/// Every event from 1 to the head is there, and each carries its predecessor's hash.
pub fn assert_contiguous_chain(events: &[CloudEvent]) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.seq, i as u64 + 1, "seq gap before event {}", event.seq);
        if i > 0 {
            assert_eq!(event.prevhash, events[i - 1].hash(), "prevhash of event {} does not match", event.seq);
        }
    }
}

pub fn alive(pid: u32) -> bool {
    // A zombie is not alive for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

pub fn kill9(pid: u32) {
    // SAFETY: kill(2) takes plain integers and reads no memory of ours.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

impl Drop for Warden {
    /// Tears down whatever the test left: the server, then every cell's shim and process group.
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_cells(&self.data_dir().join("cells"));
    }
}

fn kill_cells(cells: &Path) {
    let Ok(entries) = std::fs::read_dir(cells) else { return };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("pid.json")) else { continue };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        for (key, group) in [("pid", true), ("shim_pid", false)] {
            if let Some(pid) = json[key].as_u64() {
                // SAFETY: kill(2) takes plain integers and reads no memory of ours; the pids come
                // from this test's own cells' pid files.
                unsafe { libc::kill(if group { -(pid as i32) } else { pid as i32 }, libc::SIGKILL) };
            }
        }
    }
}
