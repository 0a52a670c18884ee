//! A real cluster for tests: a control plane and N real `warden agent` processes, each with its
//! own data dir; teardown kills every agent, shim and cell. Also the ground truth the failover
//! tests share: a workload appending `epoch monotonic_ns` lines, and the check that no two
//! epochs overlapped.
//!
//! How an agent is launched (a plain child, or one entering a network namespace) and which
//! server address it uses are the caller's: see [`Cluster::with_agents`] and [`Agent::spawn`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::RwLockReadGuard;
use std::time::{Duration, Instant};

use warden_runtime::view::{HostView, WorkloadView};

use super::{bin, kill9, not_beside_heavy, Warden};

/// What a cluster needs of its control plane: where it listens, its data dir, its CLI and log.
pub trait ControlPlane {
    /// `IP:PORT`, as agents and the CLI reach it.
    fn addr(&self) -> String;
    fn data_dir(&self) -> PathBuf;
    /// Runs the CLI and returns stdout, panicking with stderr on failure.
    fn cli_ok(&self, args: &[&str]) -> String;
    /// The server's own log.
    fn log(&self) -> String;

    fn join_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("join-token")).unwrap().trim().to_string()
    }

    fn status(&self, id: &str) -> WorkloadView {
        serde_json::from_str(&self.cli_ok(&["status", id, "-o", "json"])).unwrap()
    }

    fn hosts(&self) -> Vec<HostView> {
        serde_json::from_str(&self.cli_ok(&["hosts", "-o", "json"])).unwrap()
    }
}

impl ControlPlane for Warden {
    fn addr(&self) -> String {
        Warden::addr(self)
    }

    fn data_dir(&self) -> PathBuf {
        Warden::data_dir(self)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        Warden::cli_ok(self, args)
    }

    fn log(&self) -> String {
        self.up_log()
    }
}

/// One `warden agent` process: a host of the cluster.
pub struct Agent {
    /// The warden host name.
    pub name: String,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
}

impl Agent {
    pub fn new(name: &str, data_dir: PathBuf) -> Agent {
        Agent { name: name.to_string(), data_dir, child: None }
    }

    /// Starts `warden agent` against `server_url`, enrolling with `token` (given in
    /// `WARDEN_JOIN_TOKEN`), its stderr appended to
    /// `<data-dir>/agent.log`. `command` is the process to launch, prepared by the caller (its
    /// environment, a namespace to enter): usually `Command::new(bin())`.
    pub fn spawn(&mut self, mut command: Command, server_url: &str, token: &str) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir.join("agent.log")).unwrap();
        let child = command
            .args(["agent", "--server", server_url, "--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            // Never in argv: every user of the host can read a command line.
            .env("WARDEN_JOIN_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("agent.log")).unwrap_or_default()
    }

    /// The whole host dies: the agent, every shim and every cell.
    pub fn kill_host(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        kill_cells_under(&self.data_dir.join("cells"));
    }
}

/// A control plane and its agents. Dropping it kills every agent and every shim and cell under
/// their data dirs, then the control plane (dropped as a field).
pub struct Cluster<S: ControlPlane = Warden> {
    pub server: S,
    pub agents: Vec<Agent>,
    /// An agent's heading in [`Cluster::logs`]: its name unless told otherwise.
    pub agent_label: Box<dyn Fn(&Agent) -> String>,
    /// Keeps the kill -9 stress test from running beside this cluster's timed failovers
    /// ([`super::not_beside_heavy`]), or, for a cluster that is itself heavy
    /// ([`Cluster::start_heavy`]), every other cluster; declared last, so released after the
    /// agents are gone.
    _not_beside_heavy: HeavyGuard,
}

impl Cluster<Warden> {
    /// A `warden server` on loopback and agents `h0`, `h1`, … as plain children; waits until
    /// every host is up.
    pub fn start(n_agents: usize) -> Cluster {
        let server = Warden::start_with_command("server", &[]);
        let root = server.root.path().to_path_buf();
        let config_home = server.config_home();
        let names = (0..n_agents).map(|i| format!("h{i}"));
        let cluster = Cluster::with_agents(server, &root, names, |_| {
            let mut command = Command::new(bin());
            command.env("XDG_CONFIG_HOME", &config_home);
            command
        });
        cluster.wait_hosts_up(n_agents);
        cluster
    }
}

/// Which side of [`super::heavy`] a cluster is on.
enum HeavyGuard {
    Beside(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Heavy(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>, #[allow(dead_code)] super::Alone),
}

impl Cluster<Warden> {
    /// Like [`Cluster::start`], for a test that loads the machine itself (an attack of
    /// thousands of connections, timed): no other test's server beside it.
    pub fn start_heavy(n_agents: usize) -> Cluster {
        // The cluster tests first, then every other test's server: the attack test measures
        // latencies that a neighbour on this 2-core machine would add to.
        let heavy = super::heavy();
        let alone = super::alone();
        let server = Warden::start_with_command("server", &[]);
        let root = server.root.path().to_path_buf();
        let config_home = server.config_home();
        let (token, url) = (server.join_token(), format!("https://{}", server.addr()));
        let mut cluster = Cluster {
            server,
            agents: Vec::new(),
            agent_label: Box::new(|agent| agent.name.clone()),
            _not_beside_heavy: HeavyGuard::Heavy(heavy, alone),
        };
        for i in 0..n_agents {
            let name = format!("h{i}");
            let mut command = Command::new(bin());
            command.env("XDG_CONFIG_HOME", &config_home);
            let mut agent = Agent::new(&name, root.join(format!("agent-{name}")));
            agent.spawn(command, &url, &token);
            cluster.agents.push(agent);
        }
        cluster.wait_hosts_up(n_agents);
        cluster
    }
}

impl<S: ControlPlane> Cluster<S> {
    /// One agent a name, its data dir `<root>/agent-NAME`, launched from `launch(name)` (see
    /// [`Agent::spawn`]) against `https://` + the server's address. Does not wait for them.
    pub fn with_agents(
        server: S,
        root: &Path,
        names: impl IntoIterator<Item = String>,
        mut launch: impl FnMut(&str) -> Command,
    ) -> Cluster<S> {
        let (token, url) = (server.join_token(), format!("https://{}", server.addr()));
        let mut cluster = Cluster {
            server,
            agents: Vec::new(),
            agent_label: Box::new(|agent| agent.name.clone()),
            _not_beside_heavy: HeavyGuard::Beside(not_beside_heavy()),
        };
        for name in names {
            let mut agent = Agent::new(&name, root.join(format!("agent-{name}")));
            agent.spawn(launch(&name), &url, &token);
            cluster.agents.push(agent);
        }
        cluster
    }

    pub fn hosts(&self) -> Vec<HostView> {
        self.server.hosts()
    }

    pub fn host_state(&self, name: &str) -> Option<String> {
        self.server.hosts().into_iter().find(|h| h.name == name).map(|h| h.state)
    }

    /// Waits (30 s at most) until at least `n` hosts are up.
    pub fn wait_hosts_up(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hosts = self.hosts();
            if hosts.iter().filter(|h| h.state == "up").count() >= n {
                return;
            }
            assert!(Instant::now() < deadline, "hosts not up: {hosts:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `warden hosts` shows `name` in `state`; how long that took.
    pub fn wait_host(&self, name: &str, state: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.host_state(name).as_deref() == Some(state) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "host {name} not {state} after {within:?}: {:?}\n{}",
                self.server.hosts(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (30 s at most) until the workload's status satisfies `pred`.
    pub fn wait_for(&self, id: &str, what: &str, mut pred: impl FnMut(&WorkloadView) -> bool) -> WorkloadView {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = self.server.status(id);
            if pred(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last status: {view:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits for a running primary (with a pid) on another host than `old_host`, with a higher
    /// epoch, at most `within` after `since`; it and how long after `since` it showed.
    pub fn wait_primary_elsewhere(
        &self,
        id: &str,
        old_host: &str,
        old_epoch: u64,
        since: Instant,
        within: Duration,
    ) -> (WorkloadView, Duration) {
        loop {
            let view = self.server.status(id);
            if view.state == "running" && view.host != old_host && view.epoch.is_some_and(|e| e > old_epoch) && view.pid.is_some()
            {
                return (view, since.elapsed());
            }
            assert!(
                since.elapsed() < within,
                "no failover within {within:?}: {view:?}\nhosts: {:?}\n{}",
                self.server.hosts(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn agent(&self, name: &str) -> &Agent {
        self.agents.iter().find(|a| a.name == name).unwrap_or_else(|| panic!("no agent {name:?}"))
    }

    pub fn agent_mut(&mut self, name: &str) -> &mut Agent {
        self.agents.iter_mut().find(|a| a.name == name).unwrap_or_else(|| panic!("no agent {name:?}"))
    }

    /// The server's log and every agent's, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = format!("--- server\n{}", self.server.log());
        for agent in &self.agents {
            out += &format!("\n--- {}\n{}", (self.agent_label)(agent), agent.log());
        }
        out
    }
}

impl<S: ControlPlane> Drop for Cluster<S> {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            if let Some(mut child) = agent.child.take() {
                // A frozen agent must run again to die.
                // SAFETY: kill(2) reads no memory of ours; the pid is our unreaped child's.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                let _ = child.kill();
                let _ = child.wait();
            }
            kill_cells_under(&agent.data_dir.join("cells"));
        }
    }
}

/// SIGKILL every shim and cell process of a cells dir (pids from the cells' pid files and locks).
pub fn kill_cells_under(cells: &Path) {
    let Ok(entries) = std::fs::read_dir(cells) else { return };
    for entry in entries.flatten() {
        for file in ["pid.json", "shim.pid"] {
            let Ok(text) = std::fs::read_to_string(entry.path().join(file)) else { continue };
            let pid = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("pid").and_then(|p| p.as_u64()).or_else(|| v.get("shim_pid").and_then(|p| p.as_u64())));
            if let Some(pid) = pid {
                // The cell's process group, then the process itself.
                // SAFETY: kill(2) takes plain integers and reads no memory of ours; the pids come
                // from this cluster's own cells' pid files.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                kill9(pid as u32);
            }
        }
    }
    // Shims hold `lock`; whoever holds it is a shim of this host.
    for pid in pids_holding_files_under(cells) {
        kill9(pid);
    }
}

/// Every process with an open file under `dir`.
pub fn pids_holding_files_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return pids };
    for proc_entry in procs.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir))) {
            pids.push(pid);
        }
    }
    pids
}

// ---------------------------------------------------------------------------------------------
// The ground truth.

/// A workload that appends `epoch monotonic_ns` every 20 ms to `truth`.
pub fn ground_truth_spec(truth: &Path) -> String {
    truth_spec("truth", truth, "", "")
}

/// The ground-truth workload named `name`, with more `[placement]` lines (`placement`) and more
/// TOML after it (`extra`: `[replication]`, …).
pub fn truth_spec(name: &str, truth: &Path, placement: &str, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
[cell]
argv = ["python3", "-c", '''
import os, time
path = {truth:?}
epoch = os.environ.get("WARDEN_EPOCH", "none")
while True:
    with open(path, "a") as f:
        f.write(f"{{epoch}} {{time.monotonic_ns()}}\n")
    time.sleep(0.02)
''']
graceful_shutdown = "1s"
[restart]
policy = "always"
backoff = "50ms"
[placement]
instances = 1
{placement}
{extra}
"#
    )
}

/// One epoch's lines: the first and last `monotonic_ns`, and how many.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub first: u64,
    pub last: u64,
    pub lines: usize,
}

/// Epoch → its span, from the complete lines only (the file is read while cells append to it:
/// an unterminated last line may be cut short, and a cut number would read as an earlier time).
pub fn truth_spans(truth: &Path) -> BTreeMap<u64, Span> {
    let text = std::fs::read_to_string(truth).unwrap_or_else(|e| panic!("{}: {e}", truth.display()));
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    let mut spans = BTreeMap::new();
    for line in complete.lines() {
        let mut parts = line.split_whitespace();
        let (Some(epoch), Some(ns)) = (parts.next(), parts.next()) else { panic!("malformed ground-truth line {line:?}") };
        let (Ok(epoch), Ok(ns)) = (epoch.parse::<u64>(), ns.parse::<u64>()) else {
            panic!("a primary ran without a lease epoch: {line:?}")
        };
        let span = spans.entry(epoch).or_insert(Span { first: ns, last: ns, lines: 0 });
        span.first = span.first.min(ns);
        span.last = span.last.max(ns);
        span.lines += 1;
    }
    spans
}

/// The spans; panics if two epochs' intervals overlap.
pub fn check_no_overlap(truth: &Path) -> BTreeMap<u64, Span> {
    let spans = truth_spans(truth);
    let ordered: Vec<(&u64, &Span)> = spans.iter().collect();
    for pair in ordered.windows(2) {
        let ((e1, s1), (e2, s2)) = (pair[0], pair[1]);
        assert!(
            s1.last < s2.first,
            "epochs {e1} and {e2} overlapped: {e1} wrote until {}, {e2} from {} ({} ms of two primaries)",
            s1.last,
            s2.first,
            (s1.last - s2.first) / 1_000_000
        );
    }
    spans
}
