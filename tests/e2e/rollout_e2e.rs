//! Rollouts end to end: a real control plane and three real agents on loopback, an `each-host`
//! web service whose instances each serve HTTP on their own host's address (hosts are named
//! `127.0.0.11` …, and a cell binds `$WARDEN_HOST`), probed by the agents with
//! `http://{host}:PORT/health`.
//!
//! - a good version converges wave by wave, within `max_in_flight` at every instant of the
//!   event log, each host soaking from its own activation;
//! - a version whose health endpoint fails halts after the canary, rolls it back to the old
//!   spec and quarantines the target;
//! - an agent killed with kill -9 mid-soak and restarted resumes with the same `soak_due_at`;
//! - the control plane killed with kill -9 mid-rollout finishes it after a restart;
//! - a host activation (the nixfleet case: a command per host) converges and can be undone.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cluster::{Cluster, ControlPlane};
use crate::support::{bin, unsigned_client, Warden};
use warden_core::rollout::{HostEvent, HostRolloutState, RolloutEvent};
use warden_core::{CloudEvent, EventData};
use warden_runtime::view::{RolloutRequest, RolloutView};

const HOSTS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

/// A server and three agents named by loopback addresses, all up.
fn start_cluster() -> Cluster {
    let server = Warden::start_with_command("server", &[]);
    let root = server.root.path().to_path_buf();
    let config_home = server.config_home();
    let cluster = Cluster::with_agents(server, &root, HOSTS.iter().map(|h| h.to_string()), |_| {
        let mut command = Command::new(bin());
        command.env("XDG_CONFIG_HOME", &config_home);
        command
    });
    cluster.wait_hosts_up(HOSTS.len());
    cluster
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The web service: answers every GET with its version, 200 when `HEALTH=ok`, else 500.
const SERVER_PY: &str = r#"
import http.server, os
healthy = os.environ["HEALTH"] == "ok"
version = os.environ["VERSION"].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if healthy else 500)
        self.send_header("Content-Length", str(len(version)))
        self.end_headers()
        self.wfile.write(version)
    def log_message(self, *args):
        pass
http.server.HTTPServer.allow_reuse_address = True
http.server.HTTPServer((os.environ["WARDEN_HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"#;

struct Web {
    port: u16,
    script: String,
}

impl Web {
    fn new(cluster: &Cluster) -> Web {
        let script = cluster.server.write_spec("web.py", SERVER_PY);
        Web { port: free_port(), script: script.to_str().unwrap().to_string() }
    }

    fn spec(&self, version: &str, health: &str) -> String {
        self.spec_placed(version, health, "mode = \"each-host\"")
    }

    fn spec_placed(&self, version: &str, health: &str, placement: &str) -> String {
        format!(
            "name = \"web\"\n[cell]\nargv = [\"python3\", \"-u\", {script:?}]\ngraceful_shutdown = \"2s\"\n\
             env = {{ VERSION = {version:?}, HEALTH = {health:?}, PORT = \"{port}\" }}\n\
             [restart]\npolicy = \"always\"\nbackoff = \"200ms\"\n[placement]\n{placement}\n",
            script = self.script,
            port = self.port,
        )
    }

    /// `[1, 2, "100%"]` (cumulative) over the three hosts, one at a time, an enforce HTTP probe.
    fn policy(&self, soak: &str, extra: &str) -> String {
        format!(
            "waves = [1, 2, \"100%\"]\nmax_in_flight = 1\nsoak = {soak:?}\nstall_after = \"20s\"\nactivation_timeout = \"20s\"\n{extra}\n\
             [[probes]]\nname = \"health\"\nhttp = \"http://{{host}}:{port}/health\"\ninterval = \"250ms\"\ntimeout = \"250ms\"\nfailure_threshold = 4\ngrace = \"3s\"\n",
            port = self.port
        )
    }

    /// What `host`'s instance answers, if anything.
    fn version_on(&self, host: &str) -> Option<String> {
        let client = unsigned_client(&format!("http://{host}:{}", self.port));
        let request = client.prepare("GET", "/", Vec::new()).ok()?;
        let (_, body) = client.exchange(&request, Some(Duration::from_millis(500))).ok()?;
        String::from_utf8(body).ok()
    }

    /// Submits v1 on every host and waits until each instance answers.
    fn deploy_v1(&self, cluster: &Cluster) {
        let path = cluster.server.write_spec("web-v1.toml", &self.spec("v1", "ok"));
        cluster.server.cli_ok(&["run", path.to_str().unwrap(), "--id", "web"]);
        for host in HOSTS {
            cluster.server.wait_for(&format!("web@{host}"), "v1 running", |v| v.state == "running");
            wait_until(cluster, &format!("v1 answering on {host}"), Duration::from_secs(20), || {
                self.version_on(host).as_deref() == Some("v1")
            });
        }
    }
}

fn wait_until(cluster: &Cluster, what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `warden rollout start web --spec … --policy …`, by the CLI; the rollout's id.
fn start_service_rollout(cluster: &Cluster, spec: &str, policy: &str) -> String {
    let spec = cluster.server.write_spec("web-next.toml", spec);
    let policy = cluster.server.write_spec("policy.toml", policy);
    let out = cluster.server.cli_ok(&[
        "rollout",
        "start",
        "web",
        "--spec",
        spec.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "-o",
        "json",
    ]);
    let view: RolloutView = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    view.id
}

fn rollout(cluster: &Cluster, id: &str) -> RolloutView {
    serde_json::from_str(&cluster.server.cli_ok(&["rollout", "status", id, "-o", "json"])).unwrap()
}

fn wait_rollout(
    cluster: &Cluster,
    id: &str,
    what: &str,
    within: Duration,
    mut done: impl FnMut(&RolloutView) -> bool,
) -> RolloutView {
    let deadline = Instant::now() + within;
    loop {
        let view = rollout(cluster, id);
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {view:#?}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host_state(view: &RolloutView, host: &str) -> HostRolloutState {
    view.hosts.iter().find(|h| h.hostname == host).unwrap().state
}

/// `warden rollout start --target TARGET --policy …` (a host activation), by the CLI; its id.
fn start_activation(cluster: &Cluster, target: &str, policy: &str) -> String {
    let policy = cluster.server.write_spec("activation.toml", policy);
    let out =
        cluster.server.cli_ok(&["rollout", "start", "--target", target, "--policy", policy.to_str().unwrap(), "-o", "json"]);
    serde_json::from_str::<RolloutView>(&out).unwrap_or_else(|e| panic!("{e}: {out}")).id
}

/// Where the host activations of these tests keep each host's "system" (a file per host).
fn systems_dir(cluster: &Cluster) -> std::path::PathBuf {
    let dir = cluster.server.root.path().join("systems");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// kill -9 of the agent alone: its cells live on under their shims.
fn kill_agent(cluster: &mut Cluster, name: &str) {
    let mut child = cluster.agent_mut(name).child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The agent again, on the same data dir.
fn restart_agent(cluster: &mut Cluster, name: &str) {
    let (url, token) = (format!("https://{}", cluster.server.addr()), cluster.server.join_token());
    let mut command = Command::new(bin());
    command.env("XDG_CONFIG_HOME", cluster.server.config_home());
    cluster.agent_mut(name).spawn(command, &url, &token);
}

/// The rollout's journaled steps, in order: (seq, host or "", event).
fn rollout_events(server: &impl ControlPlane, id: &str) -> Vec<(u64, RolloutEvent)> {
    let out = server.cli_ok(&["events", "-o", "json"]);
    let events: Vec<CloudEvent> = out.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    events
        .iter()
        .filter_map(|event| match event.typed_data().unwrap() {
            EventData::RolloutProgressed { rollout_id, event: step } if rollout_id == id => Some((event.seq, step)),
            _ => None,
        })
        .collect()
}

/// Replays the journal's host steps and checks the budget and the waves at every instant:
/// never more than `max_in_flight` hosts between dispatched and soaking, and no host of a wave
/// dispatched before every host of the waves before it converged.
fn check_budget_and_waves(steps: &[(u64, RolloutEvent)], waves: &[Vec<String>], max_in_flight: usize) {
    let wave_of: BTreeMap<&str, usize> =
        waves.iter().enumerate().flat_map(|(i, hosts)| hosts.iter().map(move |h| (h.as_str(), i))).collect();
    let mut in_flight = std::collections::BTreeSet::new();
    let mut converged = std::collections::BTreeSet::new();
    let mut max_seen = 0;
    for (seq, step) in steps {
        let RolloutEvent::Host { hostname, event } = step else { continue };
        match event {
            HostEvent::Dispatched => {
                let wave = wave_of[hostname.as_str()];
                for earlier in waves[..wave].iter().flatten() {
                    assert!(
                        converged.contains(earlier),
                        "seq {seq}: {hostname} (wave {wave}) dispatched before {earlier} converged"
                    );
                }
                in_flight.insert(hostname.clone());
            }
            HostEvent::Converged | HostEvent::Failed { .. } => {
                in_flight.remove(hostname);
                if *event == HostEvent::Converged {
                    converged.insert(hostname.clone());
                }
            }
            _ => {}
        }
        max_seen = max_seen.max(in_flight.len());
        assert!(in_flight.len() <= max_in_flight, "seq {seq}: {in_flight:?} in flight, max_in_flight = {max_in_flight}");
    }
    assert!(max_seen >= 1, "some host was in flight");
}

#[test]
fn a_good_version_converges_wave_by_wave_within_the_budget() {
    let cluster = start_cluster();
    let web = Web::new(&cluster);
    web.deploy_v1(&cluster);
    let v1 = cluster.server.status("web@127.0.0.11").info.spec_id;
    let id = start_service_rollout(&cluster, &web.spec("v2", "ok"), &web.policy("1s", ""));

    let done = wait_rollout(&cluster, &id, "the rollout to complete", Duration::from_secs(90), |v| v.state == "completed");
    for host in HOSTS {
        assert_eq!(web.version_on(host).as_deref(), Some("v2"), "{host} serves the new version");
        let instance = cluster.server.status(&format!("web@{host}"));
        assert_eq!(instance.info.spec_id, done.target, "{host}: {instance:?}");
        assert_eq!(instance.restarts, 0, "a new version is not a restart: {instance:?}");
    }
    assert_eq!(done.waves.iter().map(|w| w.hosts.len()).collect::<Vec<_>>(), [1, 1, 1]);
    for host in &done.hosts {
        assert_eq!(host.state, HostRolloutState::Converged, "{host:?}");
        let activated = host.activation_completed_at.unwrap();
        assert_eq!(host.soak_due_at, Some(activated + 1000), "soak counted from the host's own activation: {host:?}");
        assert!(host.converged_at.unwrap() >= host.soak_due_at.unwrap(), "{host:?}");
        let health = &host.probes["health"];
        assert!(health.n_passes >= 1 && health.last_pass_at.unwrap() >= host.soak_due_at.unwrap(), "{host:?}");
        assert_eq!(host.previous.as_ref(), Some(&v1), "where a rollback would return it: {host:?}");
    }
    let waves: Vec<Vec<String>> = done.waves.iter().map(|w| w.hosts.clone()).collect();
    check_budget_and_waves(&rollout_events(&cluster.server, &id), &waves, 1);

    // The view a person reads.
    let status = cluster.server.cli_ok(&["rollout", "status", &id]);
    assert!(status.contains("completed"), "{status}");
    let listed = cluster.server.cli_ok(&["rollout", "ls"]);
    assert!(listed.contains(&id), "{listed}");
}

#[test]
fn a_failing_health_endpoint_halts_after_the_canary_and_rolls_it_back() {
    let cluster = start_cluster();
    let web = Web::new(&cluster);
    web.deploy_v1(&cluster);
    let v1 = cluster.server.status("web@127.0.0.11").info.spec_id;
    let bad = web.spec("v2", "broken");
    let policy = web.policy("1s", "on_failure = \"rollback\"");
    let id = start_service_rollout(&cluster, &bad, &policy);

    let view = wait_rollout(&cluster, &id, "the canary to be reverted", Duration::from_secs(60), |v| {
        v.hosts.iter().any(|h| h.state == HostRolloutState::Reverted)
    });
    assert_eq!(view.state, "halted", "{view:#?}");
    assert!(view.quarantined, "{view:#?}");
    let canary = &view.waves[0].hosts[0];
    let reverted = view.hosts.iter().find(|h| h.hostname == *canary).unwrap();
    assert!(reverted.failure.as_deref().unwrap().contains("health"), "{reverted:?}");
    assert_eq!(reverted.current.as_ref(), Some(&v1), "{reverted:?}");
    for host in &view.hosts {
        if host.hostname != *canary {
            assert_eq!(host.state, HostRolloutState::Pending, "only the canary was touched: {host:?}");
        }
    }
    // The canary serves the old version again; nobody else ever left it.
    wait_until(&cluster, "v1 back on the canary", Duration::from_secs(20), || web.version_on(canary).as_deref() == Some("v1"));
    for host in HOSTS {
        assert_eq!(cluster.server.status(&format!("web@{host}")).info.spec_id, v1, "{host}");
    }
    // The probe failures were what failed it: failure_threshold (4) in a row after the grace,
    // and the ones inside the grace were recorded but not counted.
    let steps = rollout_events(&cluster.server, &id);
    let counted = steps
        .iter()
        .filter(|(_, s)| {
            matches!(s, RolloutEvent::Host { event: HostEvent::ProbeRecorded { passed: false, in_grace: false, .. }, .. })
        })
        .count();
    assert_eq!(counted, 4, "{steps:?}");
    let failures = steps
        .iter()
        .filter(|(_, s)| matches!(s, RolloutEvent::Host { event: HostEvent::ProbeRecorded { passed: false, .. }, .. }))
        .count();
    assert!(failures > counted, "some failures fell in the grace: {steps:?}");
    // The same version is refused while quarantined.
    let spec = cluster.server.write_spec("again.toml", &bad);
    let policy = cluster.server.write_spec("again-policy.toml", &policy);
    let again =
        cluster.server.cli(&["rollout", "start", "web", "--spec", spec.to_str().unwrap(), "--policy", policy.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("quarantined"), "{again:?}");
}

#[test]
fn an_agent_killed_mid_soak_resumes_the_same_soak() {
    let mut cluster = start_cluster();
    let web = Web::new(&cluster);
    web.deploy_v1(&cluster);
    let id = start_service_rollout(&cluster, &web.spec("v2", "ok"), &web.policy("6s", ""));
    let soaking = wait_rollout(&cluster, &id, "the canary soaking", Duration::from_secs(30), |v| {
        v.hosts.iter().any(|h| h.state == HostRolloutState::Soaking && h.probes.get("health").is_some_and(|p| p.n_passes > 0))
    });
    let canary = soaking.hosts.iter().find(|h| h.state == HostRolloutState::Soaking).unwrap().clone();
    let due = canary.soak_due_at.unwrap();

    // kill -9 the agent (its cells live on under their shims), then start it again.
    kill_agent(&mut cluster, &canary.hostname);
    let killed_seq = rollout(&cluster, &id).hosts.iter().find(|h| h.hostname == canary.hostname).unwrap().last_event_seq;
    restart_agent(&mut cluster, &canary.hostname);

    let converged = wait_rollout(&cluster, &id, "the canary converged", Duration::from_secs(60), |v| {
        host_state(v, &canary.hostname) == HostRolloutState::Converged
    });
    let after = converged.hosts.iter().find(|h| h.hostname == canary.hostname).unwrap();
    assert_eq!(after.soak_due_at, Some(due), "the soak deadline is not reset: {after:?}");
    assert_eq!(after.activation_completed_at, canary.activation_completed_at);
    assert!(after.last_event_seq > killed_seq, "the restarted agent probed again: {after:?}");
    assert!(after.probes["health"].last_pass_at.unwrap() >= due, "{after:?}");
    let activations = rollout_events(&cluster.server, &id)
        .into_iter()
        .filter(|(_, s)| {
            matches!(s, RolloutEvent::Host { hostname, event: HostEvent::ActivationCompleted { .. } } if *hostname == canary.hostname)
        })
        .count();
    assert_eq!(activations, 1, "activated once");
    wait_rollout(&cluster, &id, "the rollout to complete", Duration::from_secs(90), |v| v.state == "completed");
}

#[test]
fn a_control_plane_killed_mid_rollout_finishes_it_after_a_restart() {
    let mut cluster = start_cluster();
    let web = Web::new(&cluster);
    web.deploy_v1(&cluster);
    let id = start_service_rollout(&cluster, &web.spec("v2", "ok"), &web.policy("2s", ""));
    wait_rollout(&cluster, &id, "the second wave", Duration::from_secs(40), |v| {
        v.wave == 1 && v.hosts.iter().any(|h| h.state.is_in_flight())
    });
    cluster.server.kill9();
    std::thread::sleep(Duration::from_millis(500));
    cluster.server.up();
    let done = wait_rollout(&cluster, &id, "the rollout to complete", Duration::from_secs(90), |v| v.state == "completed");
    for host in HOSTS {
        assert_eq!(web.version_on(host).as_deref(), Some("v2"), "{host}");
    }
    let waves: Vec<Vec<String>> = done.waves.iter().map(|w| w.hosts.clone()).collect();
    check_budget_and_waves(&rollout_events(&cluster.server, &id), &waves, 1);
}

#[test]
fn a_host_activation_runs_its_command_on_each_host_and_undo_reverts_them() {
    let cluster = start_cluster();
    let dir = systems_dir(&cluster);
    let system = |host: &str| std::fs::read_to_string(dir.join(host)).unwrap_or_default().trim().to_string();
    for host in HOSTS {
        std::fs::write(dir.join(host), "system-1\n").unwrap();
    }
    // `current` is the host's own word for what it runs (like `readlink /run/current-system`).
    let policy = format!(
        "waves = [1, \"100%\"]\nmax_in_flight = 2\nsoak = \"500ms\"\n\
         activate = [\"sh\", \"-c\", \"echo {{target}} > {d}/{{host}}\"]\n\
         rollback = [\"sh\", \"-c\", \"echo {{previous}} > {d}/{{host}}\"]\n\
         current = [\"cat\", \"{d}/{{host}}\"]\n\
         [[probes]]\nname = \"booted\"\nexec = [\"grep\", \"-q\", \"system-\", \"{d}/{{host}}\"]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n",
        d = dir.display()
    );
    let id = start_activation(&cluster, "system-2", &policy);
    let done = wait_rollout(&cluster, &id, "the activation to complete", Duration::from_secs(60), |v| v.state == "completed");
    for host in HOSTS {
        assert_eq!(system(host), "system-2", "{host}");
    }
    assert!(done.hosts.iter().all(|h| h.current.as_deref() == Some("system-2")), "{done:#?}");
    assert!(done.hosts.iter().all(|h| h.previous.as_deref() == Some("system-1")), "as the hosts said: {done:#?}");

    // Undo: every host goes back to what it said it ran.
    cluster.server.cli_ok(&["rollout", "undo", &id]);
    let undone = wait_rollout(&cluster, &id, "every host reverted", Duration::from_secs(60), |v| {
        v.hosts.iter().all(|h| h.state == HostRolloutState::Reverted)
    });
    assert_eq!(undone.state, "undone");
    for host in HOSTS {
        assert_eq!(system(host), "system-1", "{host} rolled back");
    }
    assert!(undone.hosts.iter().all(|h| h.current.as_deref() == Some("system-1")), "{undone:#?}");

    // A request that names neither a service nor a target is a 400 with a reason.
    let request =
        RolloutRequest { policy_file: "p.toml".into(), policy_toml: "require_probes = false\n".into(), ..Default::default() };
    let (status, body) = cluster.server.api("POST", "/v1/rollouts", &serde_json::to_vec(&request).unwrap());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("service") && body.contains("target"), "{body}");
}

#[test]
fn a_host_down_in_its_turn_holds_the_wave_until_it_returns() {
    let mut cluster = start_cluster();
    let dir = systems_dir(&cluster);
    let late = HOSTS[2];
    kill_agent(&mut cluster, late);
    cluster.wait_host(late, "down", Duration::from_secs(10));

    let policy = format!(
        "waves = [1, \"100%\"]\nmax_in_flight = 2\nsoak = \"0s\"\nstall_after = \"1s\"\nrequire_probes = false\n\
         activate = [\"sh\", \"-c\", \"echo {{target}} > {d}/{{host}}\"]\nrollback = [\"true\"]\n",
        d = dir.display()
    );
    let id = start_activation(&cluster, "system-3", &policy);
    let blocked = wait_rollout(&cluster, &id, "the down host reported as blocking", Duration::from_secs(30), |v| {
        v.blocked.iter().any(|b| b.host == late && b.reason == "silent")
    });
    assert_eq!(blocked.state, "running", "{blocked:#?}");
    assert_eq!(host_state(&blocked, late), HostRolloutState::Dispatched, "never skipped: {blocked:#?}");
    for host in &HOSTS[..2] {
        assert_eq!(host_state(&blocked, host), HostRolloutState::Converged, "{blocked:#?}");
    }
    let status = cluster.server.cli_ok(&["rollout", "status", &id]);
    assert!(status.contains(late) && status.contains("blocked"), "{status}");

    // It comes back: it picks its order up and the rollout completes.
    restart_agent(&mut cluster, late);
    wait_rollout(&cluster, &id, "the rollout to complete", Duration::from_secs(30), |v| v.state == "completed");
    assert_eq!(std::fs::read_to_string(dir.join(late)).unwrap().trim(), "system-3");
}

#[test]
fn a_paused_rollout_dispatches_nothing_until_resumed() {
    let cluster = start_cluster();
    let dir = systems_dir(&cluster);
    let policy = format!(
        "waves = [1, \"100%\"]\nmax_in_flight = 1\nsoak = \"1s\"\nrequire_probes = false\n\
         activate = [\"sh\", \"-c\", \"echo {{target}} > {d}/{{host}}\"]\nrollback = [\"true\"]\n",
        d = dir.display()
    );
    let id = start_activation(&cluster, "system-4", &policy);
    cluster.server.cli_ok(&["rollout", "pause", &id]);
    let canary = wait_rollout(&cluster, &id, "the canary converged while paused", Duration::from_secs(30), |v| {
        v.hosts.iter().any(|h| h.state == HostRolloutState::Converged)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let paused = rollout(&cluster, &id);
    assert_eq!(paused.state, "paused", "{paused:#?}");
    assert_eq!(paused.wave, 0, "no new wave while paused: {paused:#?}");
    let pending = paused.hosts.iter().filter(|h| h.state == HostRolloutState::Pending).count();
    assert_eq!(pending, 2, "nothing dispatched while paused: {paused:#?}");
    assert_eq!(canary.waves[0].n_converged, 1);

    cluster.server.cli_ok(&["rollout", "resume", &id]);
    wait_rollout(&cluster, &id, "the rollout to complete", Duration::from_secs(30), |v| v.state == "completed");
    // Over: it cannot be paused any more.
    let again = cluster.server.cli(&["rollout", "pause", &id]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("completed"), "{again:?}");
}

#[test]
fn a_service_of_instances_moves_to_the_new_version_host_by_host_in_place() {
    let cluster = start_cluster();
    let web = Web::new(&cluster);
    let path = cluster.server.write_spec("web-v1.toml", &web.spec_placed("v1", "ok", "instances = 3"));
    cluster.server.cli_ok(&["run", path.to_str().unwrap(), "--id", "web"]);
    let mut placed = BTreeMap::new();
    for i in 0..3 {
        let view = cluster.server.wait_for(&format!("web.{i}"), "v1 running", |v| v.state == "running");
        placed.insert(i, view.host.clone());
    }
    let hosts: std::collections::BTreeSet<&String> = placed.values().collect();
    assert_eq!(hosts.len(), 3, "spread one per host: {placed:?}");
    for host in HOSTS {
        wait_until(&cluster, &format!("v1 on {host}"), Duration::from_secs(20), || web.version_on(host).as_deref() == Some("v1"));
    }
    let policy = web
        .policy("500ms", "")
        .replace("waves = [1, 2, \"100%\"]\nmax_in_flight = 1", "waves = [1, \"100%\"]\nmax_in_flight = 2");
    let id = start_service_rollout(&cluster, &web.spec_placed("v2", "ok", "instances = 3"), &policy);
    let done = wait_rollout(&cluster, &id, "the rollout to complete", Duration::from_secs(60), |v| v.state == "completed");
    for (i, host) in &placed {
        let view = cluster.server.status(&format!("web.{i}"));
        assert_eq!(&view.host, host, "web.{i} stayed on its host");
        assert_eq!(view.info.spec_id, done.target);
        assert_eq!(web.version_on(host).as_deref(), Some("v2"), "{host}");
    }
    let waves: Vec<Vec<String>> = done.waves.iter().map(|w| w.hosts.clone()).collect();
    assert_eq!(waves.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2]);
    check_budget_and_waves(&rollout_events(&cluster.server, &id), &waves, 2);
}
