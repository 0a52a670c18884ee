//! `[replication] mode = "checkpointed"` end to end: a real `warden server` and three real
//! `warden agent` processes on loopback. The workload keeps a counter in its `state_dir`; the
//! agent snapshots it (tar, XChaCha20-Poly1305, sha256-named blob in the server's store), and
//! after its host dies the new cell elsewhere starts from the checkpoint, not from zero. A blob
//! damaged in the server's store is refused on read, and a start that needs it fails loudly.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{bin, kill9, Warden};
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
            agent.spawn(&cluster.server, &token);
            cluster.agents.push(agent);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hosts: Vec<HostView> = serde_json::from_str(&cluster.server.cli_ok(&["hosts", "-o", "json"])).unwrap();
            if hosts.iter().filter(|h| h.state == "up").count() >= n_agents {
                break;
            }
            assert!(Instant::now() < deadline, "hosts not up: {hosts:?}\n{}", cluster.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents.iter_mut().find(|a| a.name == name).unwrap()
    }

    fn logs(&self) -> String {
        let mut out = format!("--- server\n{}", self.server.up_log());
        for agent in &self.agents {
            let log = std::fs::read_to_string(agent.data_dir.join("agent.log")).unwrap_or_default();
            out += &format!("\n--- {}\n{log}", agent.name);
        }
        out
    }

    fn wait_for(&self, id: &str, what: &str, mut pred: impl FnMut(&WorkloadView) -> bool) -> WorkloadView {
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

    /// The counter a checkpoint holds: the blob read straight from the server's store, decrypted
    /// with the workload's key from `<data-dir>/keys`, unpacked.
    fn counter_in(&self, id: &str, state_uri: &str) -> u64 {
        let hex = warden_runtime::checkpoint::blob_hex(state_uri).unwrap_or_else(|| panic!("not a blob: {state_uri}"));
        let conn = raw(&self.server.data_dir().join("journal.db"));
        let blob: Vec<u8> =
            conn.query_row("SELECT body FROM artifacts WHERE id = ?1", [format!("sha256:{hex}")], |row| row.get(0)).unwrap();
        let key: [u8; 32] = std::fs::read(self.server.data_dir().join("keys").join(id)).unwrap().try_into().unwrap();
        let out = tempfile::tempdir().unwrap();
        warden_runtime::checkpoint::restore(out.path(), &key, id, hex, &blob).unwrap();
        std::fs::read_to_string(out.path().join("counter")).unwrap().trim().parse().unwrap()
    }
}

impl Agent {
    fn spawn(&mut self, server: &Warden, token: &str) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir.join("agent.log")).unwrap();
        let child = Command::new(bin())
            .args(["agent", "--server", &format!("http://{}", server.addr()), "--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            .args(["--join-token", token])
            .env("XDG_CONFIG_HOME", server.config_home())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
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
            let Ok(text) = std::fs::read_to_string(entry.path().join(file)) else { continue };
            let pid = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("pid").and_then(|p| p.as_u64()).or_else(|| v.get("shim_pid").and_then(|p| p.as_u64())));
            if let Some(pid) = pid {
                // SAFETY: sending signals; no memory involved.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                kill9(pid as u32);
            }
        }
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for proc_entry in procs.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(cells))) {
            kill9(pid);
        }
    }
}

fn raw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// A workload that reads a counter from `state/counter` at start (0 if absent), appends
/// `epoch start-value` to `starts`, then increments it every 100 ms (written atomically).
fn counter_spec(state: &Path, starts: &Path, interval: &str, restart: &str) -> String {
    format!(
        r#"
name = "counter"
[cell]
argv = ["python3", "-c", '''
import os, time
state = {state:?}
path = os.path.join(state, "counter")
try:
    n = int(open(path).read())
except FileNotFoundError:
    n = 0
with open({starts:?}, "a") as f:
    f.write(f"{{os.environ.get('WARDEN_EPOCH', 'none')}} {{n}}\n")
while True:
    n += 1
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.rename(path + ".tmp", path)
    time.sleep(0.1)
''']
graceful_shutdown = "1s"
[restart]
{restart}
backoff = "50ms"
[replication]
mode = "checkpointed"
state_dir = {state:?}
checkpoint_interval = {interval:?}
[placement]
instances = 1
"#
    )
}

fn starts(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (epoch, n) = line.split_once(' ').unwrap();
            (epoch.to_string(), n.parse().unwrap())
        })
        .collect()
}

#[test]
fn checkpoint_round_trip_across_hosts() {
    let mut cluster = Cluster::start(3);
    let state = cluster.server.root.path().join("state");
    let starts_log = cluster.server.root.path().join("starts.log");
    let id = cluster.server.run("counter.toml", &counter_spec(&state, &starts_log, "1s", "policy = \"always\""));
    let first = cluster.wait_for(&id, "running", |v| v.state == "running");
    let (old_host, old_epoch) = (first.host.clone(), first.epoch.expect("a cluster primary has an epoch"));

    // Periodic checkpoints: state_uri moves on at least twice.
    let mut seen = Vec::new();
    cluster.wait_for(&id, "two checkpoints", |v| {
        if let Some(uri) = &v.info.state_uri {
            if seen.last() != Some(uri) {
                seen.push(uri.clone());
            }
        }
        seen.len() >= 2
    });
    assert!(seen.iter().all(|uri| uri.starts_with("blob:sha256:")), "{seen:?}");

    // One on request.
    let before = cluster.server.status(&id).info.state_uri.unwrap();
    cluster.server.cli_ok(&["checkpoint", &id]);
    let taken = cluster.wait_for(&id, "the requested checkpoint", |v| v.info.state_uri.as_ref() != Some(&before));
    let at_checkpoint = cluster.counter_in(&id, taken.info.state_uri.as_ref().unwrap());
    assert!(at_checkpoint > 0, "the checkpoint holds the counter");

    // The primary's host dies, and its disk with it: only the checkpoint can bring the state back.
    cluster.agent(&old_host).kill_host();
    std::fs::remove_dir_all(&state).unwrap();
    let moved = cluster
        .wait_for(&id, "failover", |v| v.state == "running" && v.host != old_host && v.epoch.is_some_and(|e| e > old_epoch));
    let new_epoch = moved.epoch.unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let restored = loop {
        if let Some((_, n)) = starts(&starts_log).into_iter().find(|(epoch, _)| *epoch == new_epoch) {
            break n;
        }
        assert!(Instant::now() < deadline, "the new primary never started: {:?}\n{}", starts(&starts_log), cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("checkpointed {at_checkpoint}, the new primary on {} started from {restored}", moved.host);
    assert!(restored >= at_checkpoint, "started from {restored}, below the checkpoint's {at_checkpoint}");

    // Blobs are content-addressed and only ciphertext: the counter is not in the clear.
    let hex = warden_runtime::checkpoint::blob_hex(taken.info.state_uri.as_ref().unwrap()).unwrap().to_string();
    let conn = raw(&cluster.server.data_dir().join("journal.db"));
    let blob: Vec<u8> =
        conn.query_row("SELECT body FROM artifacts WHERE id = ?1", [format!("sha256:{hex}")], |row| row.get(0)).unwrap();
    assert!(!blob.windows(7).any(|w| w == b"counter"), "the tar's file names must not be readable in the blob");
    // The key is on the server's disk only, never in an event.
    let key: String =
        std::fs::read(cluster.server.data_dir().join("keys").join(&id)).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let events = cluster.server.cli_ok(&["events", "-o", "json"]);
    assert!(!events.contains(&key), "a checkpoint key leaked into the journal");
    assert!(events.contains("dev.warden.workload.checkpointed.v1"));
}

#[test]
fn a_tampered_blob_is_rejected() {
    let cluster = Cluster::start(1);
    let state = cluster.server.root.path().join("state");
    let starts_log = cluster.server.root.path().join("starts.log");
    // No periodic checkpoint in the test's time: only the requested one.
    let spec = counter_spec(&state, &starts_log, "1h", "policy = \"on-failure\"\nmax_attempts = 1");
    let id = cluster.server.run("counter.toml", &spec);
    let running = cluster.wait_for(&id, "running", |v| v.state == "running");
    std::thread::sleep(Duration::from_millis(300));
    cluster.server.cli_ok(&["checkpoint", &id]);
    let taken = cluster.wait_for(&id, "a checkpoint", |v| v.info.state_uri.is_some());
    let hex = warden_runtime::checkpoint::blob_hex(taken.info.state_uri.as_ref().unwrap()).unwrap().to_string();
    let (code, _) = cluster.server.api("GET", &format!("/v1/blobs/{}", "0".repeat(64)), b"");
    assert_eq!(code, 404);
    // Only hosts store blobs, and only under the sha256 of their bytes.
    let wrong = format!("/v1/blobs/{}", "0".repeat(64));
    assert_eq!(cluster.server.api("PUT", &wrong, b"bytes").0, 403, "an admin key cannot store blobs");
    let host = warden_runtime::auth::Identity::load(&cluster.agents[0].data_dir.join("host.key")).unwrap();
    let header = host.authorization("PUT", &wrong, b"bytes", warden_runtime::engine::now_ms());
    let answer = ureq::request("PUT", &format!("http://{}{wrong}", cluster.server.addr()))
        .set("Authorization", &header)
        .send_bytes(b"bytes");
    assert!(matches!(answer, Err(ureq::Error::Status(400, _))), "a blob not named by its hash is refused: {answer:?}");

    // One byte flipped in the server's store.
    let conn = raw(&cluster.server.data_dir().join("journal.db"));
    let mut blob: Vec<u8> =
        conn.query_row("SELECT body FROM artifacts WHERE id = ?1", [format!("sha256:{hex}")], |row| row.get(0)).unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0x01;
    conn.execute("UPDATE artifacts SET body = ?2 WHERE id = ?1", rusqlite::params![format!("sha256:{hex}"), blob]).unwrap();
    drop(conn);
    let (code, body) = cluster.server.api("GET", &format!("/v1/blobs/{hex}"), b"");
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("corrupt"), "{body}");

    // The cell dies; its restart must restore that checkpoint, and cannot.
    kill9(running.pid.unwrap());
    let failed = cluster.wait_for(&id, "the restart to fail", |v| {
        v.last_exit.as_ref().is_some_and(|e| e.exit.reason.contains("checkpoint restore failed"))
    });
    let reason = &failed.last_exit.as_ref().unwrap().exit.reason;
    assert!(reason.contains("corrupt"), "{reason}");
    assert_eq!(starts(&starts_log).len(), 1, "the cell never started again from a damaged or empty state");
    cluster.wait_for(&id, "failed", |v| v.state == "failed");
}
