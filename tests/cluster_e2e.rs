//! The cluster end to end: a real `warden server` and three real `warden agent` processes on
//! loopback. A primary's host dies (agent, shims and cells, kill -9) or its agent freezes (no
//! heartbeats, cells still running): another host takes over with a higher epoch, and a ground
//! truth kept by the workload itself — `epoch monotonic_ns` lines appended every 20 ms to one
//! file — shows no two epochs ever overlapped.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{alive, bin, kill9, Warden};
use warden_runtime::view::{HostView, WorkloadView};

struct Cluster {
    server: Warden,
    agents: Vec<Agent>,
}

struct Agent {
    name: String,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl Cluster {
    fn start(n_agents: usize) -> Cluster {
        let server = Warden::start_with_command("server", &[]);
        let token = std::fs::read_to_string(server.data_dir().join("join-token")).unwrap().trim().to_string();
        let mut cluster = Cluster { server, agents: Vec::new() };
        for i in 0..n_agents {
            let name = format!("h{i}");
            let data_dir = cluster.server.root.path().join(format!("agent-{name}"));
            let mut agent = Agent { name, data_dir, child: None };
            agent.spawn(&cluster.server, Some(&token));
            cluster.agents.push(agent);
        }
        cluster.wait_hosts_up(n_agents);
        cluster
    }

    fn hosts(&self) -> Vec<HostView> {
        serde_json::from_str(&self.server.cli_ok(&["hosts", "-o", "json"])).unwrap()
    }

    fn wait_hosts_up(&self, n: usize) {
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

    fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents.iter_mut().find(|a| a.name == name).unwrap()
    }

    fn logs(&self) -> String {
        let mut out = format!("--- server\n{}", self.server.up_log());
        for agent in &self.agents {
            out += &format!(
                "\n--- {}\n{}",
                agent.name,
                std::fs::read_to_string(agent.data_dir.join("agent.log")).unwrap_or_default()
            );
        }
        out
    }
}

impl Agent {
    fn spawn(&mut self, server: &Warden, token: Option<&str>) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir.join("agent.log")).unwrap();
        let mut command = Command::new(bin());
        command
            .args(["agent", "--server", &format!("http://{}", server.addr()), "--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            .env("XDG_CONFIG_HOME", server.config_home())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(token) = token {
            command.args(["--join-token", token]);
        }
        self.child = Some(command.spawn().unwrap());
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The whole host dies: the agent, every shim and every cell.
    fn kill_host(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        kill_cells_under(&self.data_dir.join("cells"));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            if let Some(mut child) = agent.child.take() {
                // SAFETY: signalling a child we own.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                let _ = child.kill();
                let _ = child.wait();
            }
            kill_cells_under(&agent.data_dir.join("cells"));
        }
    }
}

/// SIGKILL every shim and cell process of a cells dir (pids from the cells' pid files and locks).
fn kill_cells_under(cells: &Path) {
    let Ok(entries) = std::fs::read_dir(cells) else { return };
    for entry in entries.flatten() {
        for file in ["pid.json", "shim.pid"] {
            if let Ok(text) = std::fs::read_to_string(entry.path().join(file)) {
                if let Some(pid) = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("pid").and_then(|p| p.as_u64()).or_else(|| v.get("shim_pid").and_then(|p| p.as_u64())))
                {
                    // The cell's process group, then the process itself.
                    // SAFETY: sending signals; no memory involved.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                    kill9(pid as u32);
                }
            }
        }
    }
    // Shims hold `lock`; whoever holds it is a shim of this host.
    for pid in pids_holding_locks_under(cells) {
        kill9(pid);
    }
}

fn pids_holding_locks_under(cells: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return pids };
    for proc_entry in procs.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(cells))) {
            pids.push(pid);
        }
    }
    pids
}

/// A workload that appends `epoch monotonic_ns` every 20 ms to `truth`.
fn ground_truth_spec(truth: &Path) -> String {
    format!(
        r#"
name = "truth"
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
"#
    )
}

/// Epoch → (first, last) monotonic ns; panics if two epochs' intervals overlap.
fn check_no_overlap(truth: &Path) -> Vec<(u64, u64, u64)> {
    let text = std::fs::read_to_string(truth).unwrap();
    let mut spans: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
    // Only complete lines: the last one may be half-written, and a cut-off timestamp would
    // read as an early time.
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    for line in complete.lines() {
        let mut parts = line.split_whitespace();
        let (Some(epoch), Some(ns)) = (parts.next(), parts.next()) else { continue };
        let (Ok(epoch), Ok(ns)) = (epoch.parse::<u64>(), ns.parse::<u64>()) else {
            panic!("a primary ran without a lease epoch: {line:?}")
        };
        let span = spans.entry(epoch).or_insert((ns, ns));
        span.0 = span.0.min(ns);
        span.1 = span.1.max(ns);
    }
    let spans: Vec<(u64, u64, u64)> = spans.into_iter().map(|(e, (a, b))| (e, a, b)).collect();
    for pair in spans.windows(2) {
        let ((e1, _, end1), (e2, start2, _)) = (pair[0], pair[1]);
        assert!(end1 < start2, "epochs {e1} and {e2} overlapped: {e1} wrote until {end1}, {e2} from {start2}");
    }
    spans
}

fn wait_primary_elsewhere(cluster: &Cluster, id: &str, old_host: &str, old_epoch: u64) -> (WorkloadView, Duration) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        let view = cluster.server.status(id);
        if view.state == "running" && view.host != old_host && view.epoch.is_some_and(|e| e > old_epoch) {
            return (view, started.elapsed());
        }
        assert!(Instant::now() < deadline, "no failover: {view:?}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_dead_host_fails_over_with_a_higher_epoch_and_no_overlap() {
    let mut cluster = Cluster::start(3);
    let truth = cluster.server.root.path().join("truth.log");
    let id = cluster.server.run("truth.toml", &ground_truth_spec(&truth));
    let first = cluster.server.wait_for(&id, "running", |v| v.state == "running");
    let (old_host, old_epoch) = (first.host.clone(), first.epoch.expect("a cluster primary runs under a lease epoch"));
    std::thread::sleep(Duration::from_millis(500));

    cluster.agent(&old_host).kill_host();
    let (moved, took) = wait_primary_elsewhere(&cluster, &id, &old_host, old_epoch);
    eprintln!("failover after host loss: {took:?} to {} epoch {:?}", moved.host, moved.epoch);
    std::thread::sleep(Duration::from_millis(500));
    let spans = check_no_overlap(&truth);
    assert!(spans.len() >= 2, "both epochs wrote: {spans:?}");
    let hosts = cluster.hosts();
    assert_eq!(hosts.iter().find(|h| h.name == old_host).unwrap().state, "down", "{hosts:?}");
}

#[test]
fn a_frozen_agent_is_fenced_by_its_shim_before_the_new_primary_starts() {
    let mut cluster = Cluster::start(3);
    let truth = cluster.server.root.path().join("truth.log");
    let id = cluster.server.run("truth.toml", &ground_truth_spec(&truth));
    let first = cluster.server.wait_for(&id, "running", |v| v.state == "running");
    let (old_host, old_epoch, old_pid) = (first.host.clone(), first.epoch.unwrap(), first.pid.unwrap());
    std::thread::sleep(Duration::from_millis(500));

    // The agent stops (no heartbeats, no renewals), its cell keeps running: only the shim can
    // stop it in time.
    let agent_pid = cluster.agent(&old_host).pid();
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(agent_pid as i32, libc::SIGSTOP) };
    let (moved, took) = wait_primary_elsewhere(&cluster, &id, &old_host, old_epoch);
    eprintln!("failover after a frozen agent: {took:?} to {} epoch {:?}", moved.host, moved.epoch);
    assert!(!alive(old_pid), "the old primary was fenced by its shim while its agent was frozen");
    std::thread::sleep(Duration::from_millis(500));
    check_no_overlap(&truth);

    // The agent comes back: it must not resurrect anything, and its host is up again.
    // SAFETY: as above.
    unsafe { libc::kill(agent_pid as i32, libc::SIGCONT) };
    cluster.wait_hosts_up(3);
    std::thread::sleep(Duration::from_millis(1_000));
    check_no_overlap(&truth);
    let now = cluster.server.status(&id);
    assert_eq!((now.host.as_str(), now.epoch), (moved.host.as_str(), moved.epoch), "the new primary stays");
}

#[test]
fn instances_spread_over_matching_hosts_and_each_runs_under_its_own_lease() {
    let cluster = Cluster::start(3);
    let spec = "name = \"web\"\n[cell]\nargv = [\"sleep\", \"1000\"]\n[placement]\ninstances = 3\n";
    let path = cluster.server.write_spec("web.toml", spec);
    let out = cluster.server.cli_ok(&["run", path.to_str().unwrap()]);
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 3, "{out}");
    let mut hosts: Vec<String> = ids
        .iter()
        .map(|id| {
            let view = cluster.server.wait_for(id, "running", |v| v.state == "running");
            assert!(view.epoch.is_some(), "{view:?}");
            view.host
        })
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["h0", "h1", "h2"], "one instance per host");

    // A placement no host admits waits, visibly, instead of failing or landing anywhere.
    let picky = cluster.server.run("gpu.toml", "name = \"gpu\"\n[cell]\nargv = [\"true\"]\n[placement]\ntags = [\"gpu\"]\n");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(cluster.server.status(&picky).state, "starting");
}
