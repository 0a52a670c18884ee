//! The cluster end to end: a real `warden server` and three real `warden agent` processes on
//! loopback. A primary's host dies (agent, shims and cells, kill -9) or its agent freezes (no
//! heartbeats, cells still running): another host takes over with a higher epoch, and a ground
//! truth kept by the workload itself — `epoch monotonic_ns` lines appended every 20 ms to one
//! file — shows no two epochs ever overlapped.

mod support;

use std::time::{Duration, Instant};

use support::alive;
use support::cluster::{check_no_overlap, ground_truth_spec, Cluster};
use warden_runtime::view::WorkloadView;

/// Waits (30 s at most) for a running primary on another host with a higher epoch.
fn wait_primary_elsewhere(cluster: &Cluster, id: &str, old_host: &str, old_epoch: u64) -> (WorkloadView, Duration) {
    cluster.wait_primary_elsewhere(id, old_host, old_epoch, Instant::now(), Duration::from_secs(30))
}

#[test]
fn a_dead_host_fails_over_with_a_higher_epoch_and_no_overlap() {
    let mut cluster = Cluster::start(3);
    let truth = cluster.server.root.path().join("truth.log");
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
