//! A control-plane outage with real processes (issue 14): a `warden server` and four agents on
//! loopback run a plain service, a warm-standby service, a checkpointed one, one that asks to
//! stop when renewals stop (`control_plane_outage = "stop"`) and one on a host that will die. The
//! server is killed (-9) for 30 s; meanwhile that host dies too. Once the server is back: the
//! three that ride outages out were never restarted (same pid, same epoch, no failover, one
//! epoch in their own ground truth), the "stop" one was fenced during the outage and started
//! again under a new epoch, the dead host's workload was replaced elsewhere — and no workload
//! ever had two primaries (each one's own `epoch monotonic_ns` lines).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cluster::{self, check_no_overlap, Cluster};
use crate::support::{alive, bin, Warden};
use warden_runtime::view::WorkloadView;

/// The ground-truth service `name` on hosts tagged `tag`, with more `[placement]` lines and TOML.
fn truth_spec(name: &str, truth: &Path, tag: &str, placement: &str, extra: &str) -> String {
    cluster::truth_spec(name, truth, &format!("tags = [\"{tag}\"]\n{placement}"), extra)
}

/// What must not change for a workload that rides the outage out.
fn identity(view: &WorkloadView) -> (String, Option<u64>, Option<u32>, u32, u32) {
    (view.host.clone(), view.epoch, view.pid, view.restarts, view.failovers)
}

#[test]
fn cells_ride_out_a_30s_control_plane_outage_and_a_host_lost_meanwhile_is_replaced() {
    // h0, h1 run the calm workloads (and the warm standby's slot); h2, h3 the doomed one.
    let server = Warden::start_with_command("server", &[]);
    let root = server.root.path().to_path_buf();
    let config_home = server.config_home();
    let names = ["h0", "h1", "h2", "h3"].map(String::from);
    let mut cluster = Cluster::with_agents(server, &root, names, |name| {
        let mut command = Command::new(bin());
        command.env("XDG_CONFIG_HOME", &config_home);
        command.env("WARDEN_TAGS", if name == "h0" || name == "h1" { "calm" } else { "spare" });
        command
    });
    cluster.wait_hosts_up(4);

    // Cells run as the `warden` user: what they write goes where it may.
    let rw = crate::support::shared_dir(&root, "rw");
    let truth = |name: &str| rw.join(format!("{name}.truth"));
    let state = rw.join("counter-state");
    let plain = cluster.server.run("plain.toml", &truth_spec("plain", &truth("plain"), "calm", "", ""));
    let standby = cluster
        .server
        .run("kv.toml", &truth_spec("kv", &truth("kv"), "calm", "", "[replication]\nmode = \"warm-standby\"\nstandbys = 1\n"));
    let checkpointed = cluster.server.run(
        "counter.toml",
        &truth_spec(
            "counter",
            &truth("counter"),
            "calm",
            "",
            &format!("[replication]\nmode = \"checkpointed\"\nstate_dir = {state:?}\ncheckpoint_interval = \"2s\"\n"),
        ),
    );
    let fast =
        cluster.server.run("fast.toml", &truth_spec("fast", &truth("fast"), "calm", "control_plane_outage = \"stop\"", ""));
    let doomed = cluster.server.run("doomed.toml", &truth_spec("doomed", &truth("doomed"), "spare", "", ""));
    let riders = [&plain, &standby, &checkpointed];
    let rider_names = ["plain", "kv", "counter"];
    for id in riders.iter().copied().chain([&fast, &doomed]) {
        cluster.wait_for(id, "running", |v| v.state == "running" && v.pid.is_some());
    }
    cluster.wait_for(&standby, "its standby armed", |v| v.standbys.len() == 1);
    cluster.server.cli_ok(&["checkpoint", &checkpointed]);
    cluster.wait_for(&checkpointed, "a checkpoint", |v| v.info.state_uri.is_some());
    let before: Vec<WorkloadView> = riders.iter().map(|id| cluster.server.status(id)).collect();
    let fast_before = cluster.server.status(&fast);
    let doomed_before = cluster.server.status(&doomed);
    let n_events_before = cluster.server.events(&[]).len();

    // The only control plane dies for 30 s; 10 s in, the doomed workload's whole host dies too.
    cluster.server.kill9();
    let outage = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    cluster.agent_mut(&doomed_before.host).kill_host();
    std::thread::sleep(Duration::from_secs(20));
    for (view, name) in before.iter().zip(rider_names) {
        assert!(alive(view.pid.unwrap()), "{name} was killed during the outage\n{}", cluster.logs());
    }
    assert!(!alive(fast_before.pid.unwrap()), "control_plane_outage = \"stop\": fenced when renewals stopped");
    cluster.server.up();
    let back = outage.elapsed();

    // The dead host's workload is replaced once the control plane has given hosts their grace.
    let (moved, took) = cluster.wait_primary_elsewhere(
        &doomed,
        &doomed_before.host,
        doomed_before.epoch.unwrap(),
        Instant::now(),
        Duration::from_secs(30),
    );
    eprintln!("outage {back:?}; the lost host's workload replaced on {} {took:?} after the restart", moved.host);
    // "stop" started again, under a new epoch, once the control plane was back.
    let fast_after = cluster.wait_for(&fast, "restarted after the outage", |v| {
        v.state == "running" && v.epoch > fast_before.epoch && v.pid.is_some()
    });
    eprintln!("\"stop\" workload: epoch {:?} → {:?} on {}", fast_before.epoch, fast_after.epoch, fast_after.host);

    // A few more seconds of renewals with the new control plane, then the riders are unchanged.
    std::thread::sleep(Duration::from_secs(3));
    for ((id, was), name) in riders.iter().zip(&before).zip(rider_names) {
        let now = cluster.server.status(id);
        assert_eq!(identity(&now), identity(was), "{name} must ride the outage out\n{}", cluster.logs());
        assert!(alive(now.pid.unwrap()));
        let spans = check_no_overlap(&truth(name));
        assert_eq!(spans.len(), 1, "{name}: one epoch served throughout: {spans:?}");
    }
    assert_eq!(cluster.server.status(&standby).standbys.len(), 1, "the standby is still armed");
    for name in ["fast", "doomed"] {
        let spans = check_no_overlap(&truth(name));
        assert!(spans.len() >= 2, "{name}: a second epoch served: {spans:?}");
    }
    // The journal since the outage: no failover, and no start of a rider's cell.
    let events = cluster.server.events(&[]);
    for event in &events[n_events_before..] {
        let subject = event.subject.as_deref().unwrap_or("");
        let rider = riders.iter().any(|id| subject == id.as_str());
        assert!(
            !(rider && (event.event_type.contains("failover") || event.event_type.contains("lifecycle.started"))),
            "a rider was restarted or failed over: {event:?}"
        );
    }
}
