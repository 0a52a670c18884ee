//! Warm standbys end to end: a real `warden server` and three real `warden agent` processes on
//! loopback. A `warm-standby` workload gets its slots armed on the other hosts, each with the
//! latest checkpoint already fetched; when the primary's host dies (kill -9: agent, shims,
//! cells), a standby wins the lease and serves from the state it staged — even though the
//! control plane's copy of that checkpoint was damaged meanwhile — with no two epochs ever
//! overlapping, and the slots are armed again so a second failure is covered too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cluster::{check_no_overlap, Cluster, ControlPlane};
use crate::support::{bin, Warden};
use warden_runtime::view::WorkloadView;

/// Appends `epoch monotonic_ns` every 20 ms to `truth` (the failover ground truth), counts in
/// `state_dir/counter`, and logs `epoch counter-at-start` to `starts` once per start. Its
/// periodic checkpoints are an hour apart: the tests take theirs with `warden checkpoint`.
fn standby_spec(truth: &Path, state: &Path, starts: &Path, standbys: u32) -> String {
    format!(
        r#"
name = "kv"
[cell]
argv = ["python3", "-c", '''
import os, time
state = {state:?}
path = os.path.join(state, "counter")
epoch = os.environ.get("WARDEN_EPOCH", "none")
try:
    n = int(open(path).read())
except FileNotFoundError:
    n = 0
with open({starts:?}, "a") as f:
    f.write(f"{{epoch}} {{n}}\n")
while True:
    n += 1
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.rename(path + ".tmp", path)
    with open({truth:?}, "a") as f:
        f.write(f"{{epoch}} {{time.monotonic_ns()}}\n")
    time.sleep(0.02)
''']
graceful_shutdown = "1s"
[restart]
policy = "on-failure"
max_attempts = 1
backoff = "5s"
[replication]
mode = "warm-standby"
standbys = {standbys}
state_dir = {state:?}
checkpoint_interval = "1h"
[placement]
instances = 1
"#
    )
}

/// `epoch counter` lines of the starts log.
fn starts(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(' ').and_then(|(e, n)| Some((e.to_string(), n.parse().ok()?))))
        .collect()
}

/// The counter the cell of `epoch` started from (waiting up to 5 s for it to start).
fn counter_at_start(starts_log: &Path, epoch: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some((_, n)) = starts(starts_log).into_iter().find(|(e, _)| *e == epoch.to_string()) {
            return n;
        }
        assert!(Instant::now() < deadline, "the cell of epoch {epoch} never started: {:?}", starts(starts_log));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cluster of `n_agents` running the `kv` workload with `standbys` slots, once they are armed:
/// the cluster, the ground truth, state dir and starts log, the workload id and its view.
struct Kv {
    cluster: Cluster,
    truth: PathBuf,
    state: PathBuf,
    starts_log: PathBuf,
    id: String,
    armed: WorkloadView,
}

fn armed_kv(n_agents: usize, standbys: u32) -> Kv {
    let cluster = Cluster::start(n_agents);
    let root = cluster.server.root.path().to_path_buf();
    let rw = crate::support::shared_dir(&root, "rw");
    let (truth, state, starts_log) = (rw.join("truth.log"), rw.join("state"), rw.join("starts.log"));
    let id = cluster.server.run("kv.toml", &standby_spec(&truth, &state, &starts_log, standbys));
    let armed = cluster.wait_for(&id, "armed standbys", |v| v.state == "running" && v.standbys.len() == standbys as usize);
    Kv { cluster, truth, state, starts_log, id, armed }
}

fn respawn(cluster: &mut Cluster, name: &str) {
    let (url, token, config_home) =
        (format!("https://{}", cluster.server.addr()), cluster.server.join_token(), cluster.server.config_home());
    let mut command = Command::new(bin());
    command.env("XDG_CONFIG_HOME", config_home);
    cluster.agent_mut(name).spawn(command, &url, &token);
}

#[test]
fn a_warm_standby_takes_over_a_dead_host_from_the_state_it_staged() {
    let Kv { mut cluster, truth, state, starts_log, id, armed } = armed_kv(3, 2);

    // Armed: a slot on each other host, naming the primary and each other.
    let (primary, epoch) = (armed.host.clone(), armed.epoch.expect("a primary has an epoch"));
    let slot_hosts: Vec<String> = armed.standbys.iter().map(|s| s.host.clone()).collect();
    for (i, slot) in armed.standbys.iter().enumerate() {
        assert_eq!(slot.standby_index, i);
        assert_eq!(slot.standby_count, 2);
        assert_eq!(slot.primary, primary);
        assert_ne!(slot.host, primary);
        assert_eq!(slot.spec_id, armed.info.spec_id);
        assert_eq!(slot.owner, armed.info.owner);
        assert_eq!(slot.workload_id, id);
        assert_eq!(slot.peer_standbys, slot_hosts.iter().filter(|h| **h != slot.host).cloned().collect::<Vec<_>>());
    }

    // A checkpoint (the only one: the periodic ones are an hour apart), fetched ahead of time
    // by both standbys.
    std::thread::sleep(Duration::from_millis(300));
    cluster.server.cli_ok(&["checkpoint", &id]);
    let checkpointed = cluster.wait_for(&id, "a checkpoint", |v| v.info.state_uri.is_some());
    let uri = checkpointed.info.state_uri.clone().unwrap();
    let hex = warden_runtime::checkpoint::blob_hex(&uri).unwrap().to_string();
    // What the standbys hold: the counter in that checkpoint.
    let staged_counter = staged_counter(&cluster, &id, &hex, &slot_hosts);

    // No more checkpoints reach the control plane from here on (the primary dies first), and its
    // copy of the latest is damaged: only a standby's own copy can carry the state over.
    let conn = rusqlite::Connection::open(cluster.server.data_dir().join("journal.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    cluster.agent_mut(&primary).kill_host();
    let killed_at = Instant::now();
    std::fs::remove_dir_all(&state).unwrap();
    let current = cluster.server.status(&id).info.state_uri.unwrap();
    let current_hex = warden_runtime::checkpoint::blob_hex(&current).unwrap().to_string();
    let mut blob: Vec<u8> =
        conn.query_row("SELECT body FROM artifacts WHERE id = ?1", [format!("sha256:{current_hex}")], |row| row.get(0)).unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0x01;
    conn.execute("UPDATE artifacts SET body = ?2 WHERE id = ?1", rusqlite::params![format!("sha256:{current_hex}"), blob])
        .unwrap();
    drop(conn);

    let (moved, took) = cluster.wait_primary_elsewhere(&id, &primary, epoch, killed_at, Duration::from_secs(20));
    eprintln!("warm-standby failover: {took:?}, to {} at epoch {:?}", moved.host, moved.epoch);
    assert!(slot_hosts.contains(&moved.host), "a standby took over, not a cold host: {moved:?}");
    assert_eq!((moved.failovers, moved.restarts), (1, 0), "a failover is not a restart: {moved:?}");
    let restored = counter_at_start(&starts_log, moved.epoch.unwrap());
    assert!(restored >= staged_counter, "started from {restored}, below the staged checkpoint's {staged_counter}");
    assert_eq!(current_hex, hex, "the checkpoint the standby staged was the latest one");

    // Re-armed on the one host left, naming the new primary; then on the dead host once it is back.
    let rearmed = cluster.wait_for(&id, "a standby re-armed", |v| {
        v.standbys.len() == 1 && v.standbys[0].primary == moved.host && v.standbys[0].host != moved.host
    });
    assert!(slot_hosts.contains(&rearmed.standbys[0].host));
    respawn(&mut cluster, &primary);
    cluster.wait_for(&id, "two standbys again", |v| v.standbys.len() == 2 && v.standbys.iter().any(|s| s.host == primary));

    // A second failure is covered too: the new primary dies, another standby serves.
    std::thread::sleep(Duration::from_millis(300));
    let second_primary = moved.host.clone();
    cluster.agent_mut(&second_primary).kill_host();
    let (third, took) =
        cluster.wait_primary_elsewhere(&id, &second_primary, moved.epoch.unwrap(), Instant::now(), Duration::from_secs(20));
    eprintln!("second failover: {took:?}, to {} at epoch {:?}", third.host, third.epoch);
    assert_eq!(third.failovers, 2);
    // The control plane's copy was damaged, so the standby re-armed on the returning host could
    // not stage it; the one that did goes first, whatever the indices.
    assert_eq!(third.host, rearmed.standbys[0].host, "the warm standby won: {third:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    std::thread::sleep(Duration::from_millis(300));
    let spans = check_no_overlap(&truth);
    assert!(spans.len() >= 3, "three epochs served: {spans:?}");
    let events = cluster.server.cli_ok(&["events", "-o", "json"]);
    for kind in ["dev.warden.standby.armed.v1", "dev.warden.workload.failover.v1", "dev.warden.standby.released.v1"] {
        assert!(events.contains(kind), "no {kind} in the journal");
    }
}

#[test]
fn standbys_need_other_hosts_and_the_lowest_index_wins() {
    // One host only: the workload runs, with no host to arm a standby on.
    let server = Warden::start_with_command("server", &[]);
    let root = server.root.path().to_path_buf();
    let config_home = server.config_home();
    let mut cluster = Cluster::with_agents(server, &root, ["a".to_string()], |_| {
        let mut command = Command::new(bin());
        command.env("XDG_CONFIG_HOME", &config_home);
        command
    });
    cluster.wait_hosts_up(1);
    let rw = crate::support::shared_dir(&root, "rw");
    let (truth, state, starts_log) = (rw.join("truth.log"), rw.join("state"), rw.join("starts.log"));
    let id = cluster.server.run("kv.toml", &standby_spec(&truth, &state, &starts_log, 2));
    let alone = cluster.wait_for(&id, "running", |v| v.state == "running");
    std::thread::sleep(Duration::from_millis(500));
    assert!(cluster.server.status(&id).standbys.is_empty(), "no standby on the primary's own host: {alone:?}");

    // Two hosts join: both get a slot, indices 0 and 1.
    let token = cluster.server.join_token();
    let url = format!("https://{}", cluster.server.addr());
    for name in ["b", "c"] {
        let mut agent = crate::support::cluster::Agent::new(name, root.join(format!("agent-{name}")));
        let mut command = Command::new(bin());
        command.env("XDG_CONFIG_HOME", &config_home);
        agent.spawn(command, &url, &token);
        cluster.agents.push(agent);
    }
    let armed = cluster.wait_for(&id, "two standbys", |v| v.standbys.len() == 2);
    let first = armed.standbys.iter().find(|s| s.standby_index == 0).unwrap().host.clone();

    // The primary dies: both standbys are told; index 0 asks at once, index 1 a promotion delay
    // later and loses the compare-and-swap.
    std::thread::sleep(Duration::from_millis(1_500));
    cluster.agent_mut("a").kill_host();
    let (moved, took) = cluster.wait_primary_elsewhere(&id, "a", armed.epoch.unwrap(), Instant::now(), Duration::from_secs(20));
    eprintln!("failover to index 0 ({first}): {took:?}");
    assert_eq!(moved.host, first, "the lowest index won: {moved:?}");
    std::thread::sleep(Duration::from_millis(800));
    let logs = cluster.logs();
    assert!(logs.contains("did not win the lease"), "index 1 asked and lost:\n{logs}");
    check_no_overlap(&truth);
}

#[test]
fn draining_the_primary_hands_over_its_final_state_without_waiting_for_the_lease() {
    let Kv { cluster, truth, starts_log, id, armed, .. } = armed_kv(3, 1);
    let (primary, epoch, standby) = (armed.host.clone(), armed.epoch.unwrap(), armed.standbys[0].host.clone());
    std::thread::sleep(Duration::from_millis(500));

    // No checkpoint was ever taken (they are an hour apart): only the eviction's final one can
    // carry the counter over.
    assert!(cluster.server.status(&id).info.state_uri.is_none());
    let drained_at = Instant::now();
    cluster.server.cli_ok(&["hosts", "drain", &primary]);
    let (moved, took) = cluster.wait_primary_elsewhere(&id, &primary, epoch, drained_at, Duration::from_secs(10));
    eprintln!("drain handover: {took:?} to {} (the lease would have taken 1.8 s to expire)", moved.host);
    assert_eq!(moved.host, standby, "the standby took over: {moved:?}");
    assert_eq!((moved.failovers, moved.restarts), (1, 0));

    let restored = counter_at_start(&starts_log, moved.epoch.unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let spans = check_no_overlap(&truth);
    let old_lines = spans[&epoch].lines as u64;
    // The old primary bumps the counter, then writes its line: a SIGTERM in between leaves one
    // more in the counter than in the lines.
    assert!(restored == old_lines || restored == old_lines + 1, "restored {restored}, the old primary wrote {old_lines} lines");

    let events = cluster.server.cli_ok(&["events", "-o", "json"]);
    assert!(events.contains("dev.warden.lease.revoked.v1"), "the handover was a revocation, not an expiry");
    let hosts = cluster.server.hosts();
    assert_eq!(hosts.iter().find(|h| h.name == primary).unwrap().state, "draining", "{hosts:?}");
    // The drained host gets no standby; undrained, it may again.
    let third = ["h0", "h1", "h2"].into_iter().find(|h| *h != primary && *h != standby).unwrap();
    cluster.wait_for(&id, "the standby re-armed on the third host", |v| v.standbys.len() == 1 && v.standbys[0].host == third);
    cluster.server.cli_ok(&["hosts", "undrain", &primary]);
    assert_eq!(cluster.server.hosts().iter().find(|h| h.name == primary).unwrap().state, "up");
}

/// A hot standby: runs at once; as a standby it only notes its pid, and on SIGUSR1 reads its
/// epoch from the role file and starts serving (the ground-truth lines).
fn hot_spec(truth: &Path, pids: &Path) -> String {
    format!(
        r#"
name = "hot"
[cell]
argv = ["python3", "-c", '''
import os, signal, time
role = os.environ.get("WARDEN_ROLE", "primary")
with open({pids:?}, "a") as f:
    f.write(f"{{role}} {{os.getpid()}}\n")
if role == "standby":
    promoted = []
    signal.signal(signal.SIGUSR1, lambda *_: promoted.append(1))
    while not promoted:
        time.sleep(0.005)
    epoch = open(os.environ["WARDEN_ROLE_FILE"]).read().split()[1]
else:
    epoch = os.environ["WARDEN_EPOCH"]
while True:
    with open({truth:?}, "a") as f:
        f.write(f"{{epoch}} {{time.monotonic_ns()}}\n")
    time.sleep(0.02)
''']
graceful_shutdown = "1s"
[replication]
mode = "warm-standby"
standbys = 1
hot = true
[placement]
instances = 1
"#
    )
}

#[test]
fn a_hot_standby_is_promoted_in_place() {
    let mut cluster = Cluster::start(3);
    let root = cluster.server.root.path().to_path_buf();
    let rw = crate::support::shared_dir(&root, "rw");
    let (truth, pids) = (rw.join("truth.log"), rw.join("pids.log"));
    let id = cluster.server.run("hot.toml", &hot_spec(&truth, &pids));
    let armed = cluster.wait_for(&id, "an armed hot standby", |v| v.state == "running" && v.standbys.len() == 1);
    let (primary, epoch, standby) = (armed.host.clone(), armed.epoch.unwrap(), armed.standbys[0].host.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    let standby_pid = loop {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        if let Some(pid) = text.lines().find_map(|l| l.strip_prefix("standby ")) {
            break pid.trim().parse::<u32>().unwrap();
        }
        assert!(Instant::now() < deadline, "the hot standby never ran: {text}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));

    cluster.agent_mut(&primary).kill_host();
    let (moved, took) = cluster.wait_primary_elsewhere(&id, &primary, epoch, Instant::now(), Duration::from_secs(20));
    eprintln!("hot failover: {took:?} to {} at epoch {:?}", moved.host, moved.epoch);
    assert_eq!(moved.host, standby);
    std::thread::sleep(Duration::from_millis(300));
    let spans = check_no_overlap(&truth);
    assert!(spans.contains_key(&moved.epoch.unwrap()), "the promoted standby serves under the new epoch: {spans:?}");
    // Promoted in place: the process that served is the one that waited as the standby.
    let text = std::fs::read_to_string(&pids).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("primary ")).count(), 1, "no cold start: {text}");
    let cell = std::fs::read_to_string(format!("/proc/{standby_pid}/cmdline")).unwrap_or_default();
    assert!(cell.contains("python3"), "the standby process {standby_pid} still runs, as the primary");
    // A new hot standby is armed on the host left.
    let rearmed = cluster.wait_for(&id, "a new hot standby", |v| v.standbys.len() == 1 && v.standbys[0].primary == moved.host);
    assert_ne!(rearmed.standbys[0].host, moved.host);
}

/// Waits (10 s at most) until every host of `slot_hosts` has staged the checkpoint `hex` of
/// `id`; the counter in it (decrypted with the control plane's key into `<root>/peek-<hex>`).
fn staged_counter(cluster: &Cluster, id: &str, hex: &str, slot_hosts: &[String]) -> u64 {
    let staged = |host: &str| cluster.agent(host).data_dir.join("standbys").join(format!("{id}.{hex}.blob"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !slot_hosts.iter().all(|h| staged(h).exists()) {
        assert!(Instant::now() < deadline, "the standbys never fetched blob {hex}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let key = std::fs::read(cluster.server.data_dir().join("keys").join(id)).unwrap();
    let dir = cluster.server.root.path().join(format!("peek-{hex}"));
    // A slot re-armed meanwhile stages the blob afresh (the file is replaced, and for a moment
    // absent): read whichever host's copy is there, until the deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let blob = loop {
        if let Some(blob) = slot_hosts.iter().find_map(|h| std::fs::read(staged(h)).ok()) {
            break blob;
        }
        assert!(Instant::now() < deadline, "the staged blob {hex} vanished from every slot\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    warden_runtime::checkpoint::restore(&dir, &key.try_into().unwrap(), id, hex, &blob).unwrap();
    std::fs::read_to_string(dir.join("counter")).unwrap().trim().parse().unwrap()
}

#[test]
fn a_control_plane_restart_mid_failover_still_promotes_one_standby() {
    let Kv { mut cluster, truth, starts_log, id, armed, .. } = armed_kv(3, 2);
    let (primary, epoch) = (armed.host.clone(), armed.epoch.expect("a primary has an epoch"));
    let slot_hosts: Vec<String> = armed.standbys.iter().map(|s| s.host.clone()).collect();

    std::thread::sleep(Duration::from_millis(300));
    cluster.server.cli_ok(&["checkpoint", &id]);
    let checkpointed = cluster.wait_for(&id, "a checkpoint", |v| v.info.state_uri.is_some());
    let uri = checkpointed.info.state_uri.clone().unwrap();
    let hex = warden_runtime::checkpoint::blob_hex(&uri).unwrap().to_string();
    let checkpoint_counter = staged_counter(&cluster, &id, &hex, &slot_hosts);

    // The primary's host dies; 300 ms later, before the control plane could notice (host_ttl is
    // 1.5 s), so does the control plane. It comes back a second later on the same data dir and
    // address; the agents left reconnect by themselves.
    let port = cluster.server.port;
    cluster.agent_mut(&primary).kill_host();
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    cluster.server.kill9();
    let server_killed = killed_at.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let restarting = Instant::now();
    cluster.server.up();
    let (restarted, restart_took) = (killed_at.elapsed(), restarting.elapsed());
    assert_eq!(cluster.server.port, port, "the agents reconnect to the same address");

    // The restarted control plane gives every host a 5 s grace and counts the lease as renewed
    // at start-up, so this takes longer than a failover it saw from the start.
    let (moved, took) = cluster.wait_primary_elsewhere(&id, &primary, epoch, killed_at, Duration::from_secs(15));
    let after_restart = took.saturating_sub(restarted);
    eprintln!(
        "control plane killed {server_killed:?} after the host, back after {restarted:?} (up in {restart_took:?}); \
         failover {took:?} after the host died, {after_restart:?} after the restart, to {} at epoch {:?}",
        moved.host, moved.epoch
    );
    let new_epoch = moved.epoch.unwrap();
    assert!(slot_hosts.contains(&moved.host), "a standby took over, not a cold host: {moved:?}");
    assert_eq!((moved.failovers, moved.restarts), (1, 0), "one failover, no restart: {moved:?}");
    let restored = counter_at_start(&starts_log, new_epoch);
    assert!(restored >= checkpoint_counter, "started from {restored}, below the checkpoint's {checkpoint_counter}");

    // No second promotion: two seconds on, still the same primary, and the ground truth holds
    // the old epoch and exactly one more.
    std::thread::sleep(Duration::from_secs(2));
    let later = cluster.server.status(&id);
    assert_eq!((later.host.as_str(), later.epoch, later.failovers), (moved.host.as_str(), Some(new_epoch), 1), "{later:?}");
    let spans = check_no_overlap(&truth);
    assert_eq!(spans.keys().copied().collect::<Vec<_>>(), vec![epoch, new_epoch], "one new epoch served: {spans:?}");
    let starts_seen = starts(&starts_log);
    assert_eq!(starts_seen.len(), 2, "two starts, the primary's and the promoted standby's: {starts_seen:?}");
    let events = cluster.server.cli_ok(&["events", "-o", "json"]);
    assert_eq!(events.matches("dev.warden.workload.failover.v1").count(), 1, "one failover journaled");
}

#[test]
fn an_agent_that_lost_its_slot_is_armed_again() {
    let Kv { mut cluster, id, armed, .. } = armed_kv(2, 1);
    let standby = armed.standbys[0].host.clone();
    let slot_file = cluster.agent(&standby).data_dir.join("standbys").join(format!("{id}.json"));
    assert!(slot_file.exists(), "the slot is kept on the standby's disk");

    // The standby's agent stops and comes back without its slot (a wiped disk, an Arm lost in
    // a control-plane restart: the same to the agent). Its first heartbeat says what it keeps.
    let agent = cluster.agent_mut(&standby);
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(slot_file.parent().unwrap()).unwrap();
    respawn(&mut cluster, &standby);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !slot_file.exists() {
        assert!(Instant::now() < deadline, "the slot was not armed again\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}
