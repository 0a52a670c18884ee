//! The cluster end to end: a real `warden server` and three real `warden agent` processes on
//! loopback. A primary's host dies (agent, shims and cells, kill -9) or its agent freezes (no
//! heartbeats, cells still running): another host takes over with a higher epoch, and a ground
//! truth kept by the workload itself — `epoch monotonic_ns` lines appended every 20 ms to one
//! file — shows no two epochs ever overlapped.

use std::time::{Duration, Instant};

use crate::support::alive;
use crate::support::cluster::{check_no_overlap, ground_truth_spec, Cluster, ControlPlane};
use warden_runtime::view::WorkloadView;

/// Waits (30 s at most) for a running primary on another host with a higher epoch.
fn wait_primary_elsewhere(cluster: &Cluster, id: &str, old_host: &str, old_epoch: u64) -> (WorkloadView, Duration) {
    cluster.wait_primary_elsewhere(id, old_host, old_epoch, Instant::now(), Duration::from_secs(30))
}

#[test]
fn a_dead_host_fails_over_with_a_higher_epoch_and_no_overlap() {
    let mut cluster = Cluster::start(3);
    let truth = cluster.server.shared("truth").join("truth.log");
    let id = cluster.server.run("truth.toml", &ground_truth_spec(&truth));
    let first = cluster.server.wait_for(&id, "running", |v| v.state == "running");
    let (old_host, old_epoch) = (first.host.clone(), first.epoch.expect("a cluster primary runs under a lease epoch"));
    std::thread::sleep(Duration::from_millis(500));

    cluster.agent_mut(&old_host).kill_host();
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
    let cluster = Cluster::start(3);
    let truth = cluster.server.shared("truth").join("truth.log");
    let id = cluster.server.run("truth.toml", &ground_truth_spec(&truth));
    let first = cluster.server.wait_for(&id, "running", |v| v.state == "running");
    let (old_host, old_epoch, old_pid) = (first.host.clone(), first.epoch.unwrap(), first.pid.unwrap());
    std::thread::sleep(Duration::from_millis(500));

    // The agent stops (no heartbeats, no renewals), its cell keeps running: only the shim can
    // stop it in time.
    let agent_pid = cluster.agent(&old_host).pid();
    // SAFETY: kill(2) reads no memory of ours; the pid is the agent child the cluster spawned and
    // still holds (unreaped), so it names that process.
    unsafe { libc::kill(agent_pid as i32, libc::SIGSTOP) };
    let (moved, took) = wait_primary_elsewhere(&cluster, &id, &old_host, old_epoch);
    eprintln!("failover after a frozen agent: {took:?} to {} epoch {:?}", moved.host, moved.epoch);
    assert!(!alive(old_pid), "the old primary was fenced by its shim while its agent was frozen");
    std::thread::sleep(Duration::from_millis(500));
    check_no_overlap(&truth);

    // The agent comes back: it must not resurrect anything, and its host is up again.
    // SAFETY: kill(2) reads no memory of ours; the agent child is stopped, not reaped: still ours.
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

#[test]
fn each_host_runs_one_instance_per_host_and_follows_hosts_joining_and_leaving() {
    let mut cluster = Cluster::start(2);
    let spec = "name = \"node-exporter\"\n[cell]\nargv = [\"sleep\", \"1000\"]\n[placement]\nmode = \"each-host\"\n";
    let path = cluster.server.write_spec("exporter.toml", spec);
    let out = cluster.server.cli_ok(&["run", path.to_str().unwrap(), "--id", "exporter"]);
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 2, "{out}");
    for host in ["h0", "h1"] {
        let view = cluster.server.wait_for(&format!("exporter@{host}"), "running", |v| v.state == "running");
        assert_eq!(view.host, host, "{view:?}");
    }
    assert!(
        cluster.server.cli(&["run", path.to_str().unwrap(), "--id", "exporter"]).status.code() != Some(0),
        "the service id is taken while it runs"
    );

    // A host joins: it gets its instance.
    let root = cluster.server.root.path().to_path_buf();
    let (url, token) = (format!("https://{}", cluster.server.addr()), cluster.server.join_token());
    let mut agent = crate::support::cluster::Agent::new("h2", root.join("agent-h2"));
    let mut command = std::process::Command::new(crate::support::bin());
    command.env("XDG_CONFIG_HOME", cluster.server.config_home());
    agent.spawn(command, &url, &token);
    cluster.agents.push(agent);
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.server.cli(&["status", "exporter@h2"]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "no instance for the host that joined\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let joined = cluster.server.wait_for("exporter@h2", "running on the new host", |v| v.state == "running");
    assert_eq!(joined.host, "h2");

    // A host leaves: its instance is not moved elsewhere (it may run only there), and the others
    // keep running.
    cluster.agent_mut("h1").kill_host();
    cluster.wait_host("h1", "down", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1_500));
    let left = cluster.server.status("exporter@h1");
    assert_ne!(left.state, "running", "{left:?}");
    let list: Vec<WorkloadView> = serde_json::from_str(&cluster.server.cli_ok(&["ps", "-o", "json"])).unwrap();
    let running_on: Vec<&str> = list.iter().filter(|v| v.state == "running").map(|v| v.host.as_str()).collect();
    assert_eq!(running_on.iter().filter(|h| **h == "h0").count(), 1, "{running_on:?}");
    assert_eq!(running_on.iter().filter(|h| **h == "h2").count(), 1, "{running_on:?}");
    assert_eq!(list.len(), 3, "no extra instance for a host that left: {list:?}");
}

#[test]
fn lost_after_rides_out_a_short_disconnect_and_replaces_after_a_long_one() {
    let cluster = Cluster::start(2);
    let truth = cluster.server.shared("truth").join("truth.log");
    let spec = ground_truth_spec(&truth).replace("[placement]\n", "[placement]\nlost_after = \"4s\"\n");
    let id = cluster.server.run("truth.toml", &spec);
    let first = cluster.server.wait_for(&id, "running", |v| v.state == "running");
    let (host, epoch, pid) = (first.host.clone(), first.epoch.unwrap(), first.pid.unwrap());
    std::thread::sleep(Duration::from_millis(500));

    // 2.5 s without heartbeats: the host is declared down (host_ttl 1.5 s), the cell is not
    // written off, and its shim keeps it (its lease lasts lost_after).
    let agent_pid = cluster.agent(&host).pid();
    // SAFETY: kill(2) reads no memory of ours; the pid is the agent child the cluster spawned and
    // still holds (unreaped), so it names that process.
    unsafe { libc::kill(agent_pid as i32, libc::SIGSTOP) };
    cluster.wait_host(&host, "down", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: kill(2) reads no memory of ours; the agent child is stopped, not reaped: still ours.
    unsafe { libc::kill(agent_pid as i32, libc::SIGCONT) };
    cluster.wait_hosts_up(2);
    std::thread::sleep(Duration::from_millis(1_000));
    let after = cluster.server.status(&id);
    assert_eq!((after.host.as_str(), after.epoch, after.pid), (host.as_str(), Some(epoch), Some(pid)), "{after:?}");
    assert!(alive(pid), "the cell rode out the disconnect");
    assert_eq!(after.restarts, 0);

    // A disconnect longer than lost_after: replaced elsewhere, and never two primaries.
    // SAFETY: kill(2) reads no memory of ours; the agent child runs again and is still ours.
    unsafe { libc::kill(agent_pid as i32, libc::SIGSTOP) };
    let stopped_at = Instant::now();
    let (moved, took) = cluster.wait_primary_elsewhere(&id, &host, epoch, Instant::now(), Duration::from_secs(20));
    eprintln!("replaced after {took:?} of silence (lost_after 4 s)");
    assert!(stopped_at.elapsed() >= Duration::from_secs(4), "not before lost_after: {took:?}");
    assert!(!alive(pid), "the old cell was fenced by its shim");
    // SAFETY: kill(2) reads no memory of ours; the agent child is stopped, not reaped: still ours.
    unsafe { libc::kill(agent_pid as i32, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(500));
    check_no_overlap(&truth);
    assert!(moved.epoch.unwrap() > epoch);
}

#[test]
fn logs_of_a_cell_on_an_agent_are_relayed_and_followed() {
    let cluster = Cluster::start(2);
    let spec = "name = \"chatty\"\n[cell]\nargv = [\"sh\", \"-c\", \"i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.1; done\"]\ngraceful_shutdown = \"1s\"\n[placement]\ninstances = 1\n";
    let id = cluster.server.run("chatty.toml", spec);
    let view = cluster.server.wait_for(&id, "running", |v| v.state == "running");
    assert_ne!(view.host, "", "{view:?}");
    std::thread::sleep(Duration::from_millis(600));
    let logs = cluster.server.cli_ok(&["logs", &id]);
    assert!(logs.starts_with("line-1\n") && logs.contains("line-3\n"), "the agent's output, from the start: {logs:?}");

    // Followed: new lines keep coming until the workload is stopped, then the stream ends.
    let mut follow = std::process::Command::new(crate::support::bin())
        .args(["logs", "-f", &id])
        .env("WARDEN_ADDR", cluster.server.addr())
        .env("XDG_CONFIG_HOME", cluster.server.config_home())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    cluster.server.cli_ok(&["stop", &id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "logs -f did not end with the workload");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(follow.stdout.as_mut().unwrap(), &mut out).unwrap();
    let last: u64 = out.lines().last().and_then(|l| l.strip_prefix("line-")).unwrap().parse().unwrap();
    let before: u64 = logs.lines().last().unwrap().strip_prefix("line-").unwrap().parse().unwrap();
    assert!(last > before + 5, "followed past what the first call saw ({before} → {last})");
}
