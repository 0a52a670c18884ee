//! End to end: the real `warden` binary, started as a user would, killed with SIGKILL, restarted.

use std::time::Duration;

use crate::support::{alive, assert_contiguous_chain, kill9, signed_client, unsigned_client, Warden, CRASHER};
use warden_runtime::client::HttpError;

#[test]
fn crashing_workload_runs_one_plus_max_attempts_times_then_fails() {
    let warden = Warden::start();
    let id = warden.run("crasher.toml", CRASHER);
    let view = warden.wait_for(&id, "failed", |v| v.state == "failed");
    assert_eq!(view.runs, 3, "1 + max_attempts runs");
    assert_eq!(view.restarts, 2);
    assert!(view.reason.as_deref().unwrap().contains("gave up after 3 consecutive failures"), "{view:?}");

    let events = warden.events(&["--workload", &id]);
    let started: Vec<_> = events.iter().filter(|e| e.event_type == "dev.warden.lifecycle.started.v1").collect();
    let destroyed: Vec<_> = events.iter().filter(|e| e.event_type == "dev.warden.lifecycle.destroyed.v1").collect();
    assert_eq!(started.len(), 3);
    assert_eq!(destroyed.len(), 3);
    for event in &started {
        for field in ["cell_id", "vmid", "pid", "spec_id"] {
            assert!(event.data.get(field).is_some(), "started lacks {field}: {:?}", event.data);
        }
    }
    for event in &destroyed {
        assert_eq!(event.data["exit_code"], 3);
        assert_eq!(event.data["outcome"], "failed");
        assert!(event.data.get("terminal_state").is_none(), "the process backend omits terminal_state");
    }
    let delays: Vec<u64> = events
        .iter()
        .filter(|e| e.event_type == "dev.warden.workload.backoff.v1")
        .map(|e| e.data["delay_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(delays, vec![10, 20], "exponential backoff");
    assert_eq!(events.last().unwrap().event_type, "dev.warden.workload.failed.v1");

    let logs = warden.cli_ok(&["logs", &id]);
    assert_eq!(logs.matches("run").count(), 3, "every run's output is in the log: {logs:?}");

    // By name too, as `nomad job status NAME`: the latest of that name when none is live, then
    // the live one once it runs again; two live ones of one name are an ambiguity naming both.
    let by_name = warden.cli_ok(&["status", "crasher", "-o", "json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&by_name).unwrap()["id"], id.as_str(), "{by_name}");
    let again = warden.run("crasher-again.toml", &CRASHER.replace("echo run; exit 3", "exec sleep 1000"));
    let by_name = warden.cli_ok(&["status", "crasher", "-o", "json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&by_name).unwrap()["id"], again.as_str(), "the live one: {by_name}");
    let third = warden.run("crasher-third.toml", &CRASHER.replace("echo run; exit 3", "exec sleep 1000"));
    let ambiguous = warden.cli(&["stop", "crasher"]);
    let stderr = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(!ambiguous.status.success() && stderr.contains(&again) && stderr.contains(&third), "{stderr}");
    warden.cli_ok(&["stop", &again]);
    warden.cli_ok(&["stop", &third]);
}

const SLEEPER: &str = r#"
name = "sleeper"
[cell]
argv = ["sh", "-c", "echo up $$; exec sleep 1000"]
graceful_shutdown = "2s"
[restart]
policy = "on-failure"
max_attempts = 3
backoff = "10ms"
"#;

#[test]
fn running_workload_survives_kill9_of_the_supervisor_and_is_readopted() {
    let mut warden = Warden::start();
    let id = warden.run("sleeper.toml", SLEEPER);
    let before = warden.wait_for(&id, "running", |v| v.state == "running");
    let pid = before.pid.unwrap();

    warden.kill9();
    assert!(alive(pid), "the cell outlives the supervisor");
    warden.up();

    let after = warden.status(&id);
    assert_eq!(after.state, "running");
    assert_eq!(after.pid, Some(pid), "re-adopted with the same pid, not started again");
    assert_eq!(after.runs, 1);
    assert!(warden.up_log().contains("cells re-adopted 1"), "{}", warden.up_log());
    assert!(warden.up_log().contains("cgroups      cgroup v"), "the cgroup layout is logged at start: {}", warden.up_log());

    // Killed while supervised by the new process: restarted by policy.
    kill9(pid);
    let restarted = warden.wait_for(&id, "restart", |v| v.state == "running" && v.pid != Some(pid));
    assert_eq!(restarted.restarts, 1);
    let events = warden.events(&[]);
    assert_contiguous_chain(&events);
    let destroyed = events.iter().find(|e| e.event_type == "dev.warden.lifecycle.destroyed.v1").unwrap();
    assert_eq!(destroyed.data["signal"], 9);
    assert!(destroyed.data.get("exit_code").is_none(), "no exit code when killed by a signal");

    // Stop: SIGTERM to the process group, and the workload ends `stopped`.
    let new_pid = restarted.pid.unwrap();
    warden.cli_ok(&["stop", &id]);
    let stopped = warden.wait_for(&id, "stopped", |v| v.state == "stopped");
    assert_eq!(stopped.pid, None);
    assert!(!alive(new_pid));
    let last = warden.events(&["--workload", &id]);
    let destroyed = last.iter().rev().find(|e| e.event_type == "dev.warden.lifecycle.destroyed.v1").unwrap();
    assert_eq!(destroyed.data["signal"], 15, "stopped by SIGTERM within the grace period");
}

#[test]
fn a_cell_that_exits_while_the_supervisor_is_down_is_restarted_by_policy_on_return() {
    let mut warden = Warden::start();
    let id = warden.run("sleeper.toml", SLEEPER);
    let pid = warden.wait_for(&id, "running", |v| v.state == "running").pid.unwrap();
    warden.kill9();
    kill9(pid);
    std::thread::sleep(Duration::from_millis(200));
    warden.up();
    let view = warden.wait_for(&id, "restart after the missed exit", |v| v.state == "running" && v.pid != Some(pid));
    assert_eq!(view.runs, 2, "the missed exit was learned and the cell restarted once");
    let events = warden.events(&["--workload", &id]);
    let destroyed = events.iter().find(|e| e.event_type == "dev.warden.lifecycle.destroyed.v1").unwrap();
    assert_eq!(destroyed.data["signal"], 9, "the true exit status, recorded by the shim while warden was down");
    assert_contiguous_chain(&warden.events(&[]));
    warden.cli_ok(&["stop", &id]);
}

#[test]
fn bad_specs_and_bad_requests_are_rejected_clearly() {
    let warden = Warden::start();
    let path = warden.write_spec("bad.toml", "name = \"x\"\n[cell]\nargv = [\"true\"]\nargz = 1\n");
    let out = warden.cli(&["run", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:4:") && stderr.contains("argz"), "{stderr}");

    // The server validates too: a bad spec over the API is a 400 naming file and line.
    let body = serde_json::json!({"file": "api.toml", "spec_toml": "name = \"x\"\n[cell]\nargv = []\n"});
    let (code, text) = warden.api("POST", "/v1/workloads", body.to_string().as_bytes());
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("api.toml:3:"), "{text}");
    let (code, _) = warden.api("POST", "/v1/workloads", b"not json");
    assert_eq!(code, 400);
    let (code, text) = warden.api("GET", "/v1/workloads/w-nope", b"");
    assert_eq!(code, 404, "{text}");

    // Unauthenticated and forged requests are refused.
    let err = unsigned_client(&warden.addr()).call("GET", "/v1/workloads", b"", None).unwrap_err();
    assert!(matches!(err, HttpError::Status { code: 401, .. }), "{err:?}");
    let stranger = signed_client(&warden.addr(), warden_runtime::auth::Identity::generate("stranger"));
    let err = stranger.call("GET", "/v1/workloads", b"", None).unwrap_err();
    assert!(matches!(err, HttpError::Status { code: 401, .. }), "{err:?}");

    // A captured request sent again verbatim is refused.
    let client = warden.client();
    let request = client.prepare("GET", "/v1/workloads", Vec::new()).unwrap();
    assert_eq!(client.exchange(&request, None).unwrap().0, 200);
    assert_eq!(client.exchange(&request, None).unwrap().0, 401);

    // Nothing was stored by any of that: the journal holds only the first start's join token.
    let events = warden.events(&[]);
    assert!(events.iter().all(|e| e.event_type == "dev.warden.host.token.created.v1"), "{events:?}");
}

#[test]
fn ttl_expires_a_workload_and_status_shows_every_field() {
    let warden = Warden::start();
    let id = warden.run(
        "ttl.toml",
        "name = \"short\"\nttl = \"1s\"\n[cell]\nargv = [\"sleep\", \"1000\"]\n[replication]\nmode = \"checkpointed\"\nstate_dir = \"/var/lib/short\"\n",
    );
    let json: serde_json::Value = serde_json::from_str(&warden.cli_ok(&["status", &id, "-o", "json"])).unwrap();
    for field in [
        "vmid",
        "workload_type",
        "spec_id",
        "created_at",
        "expires_at",
        "owner",
        "replication",
        "restart_policy",
        "state_uri",
        "consumer_workload_id",
        "state",
        "restarts",
        "pid",
        "host",
    ] {
        assert!(json.get(field).is_some(), "status -o json lacks {field}: {json}");
    }
    assert_eq!(json["replication"], "checkpointed");
    assert!(json["owner"].as_str().unwrap().starts_with("ed25519:"));
    assert!(json["spec_id"].as_str().unwrap().starts_with("sha256:"));
    let view = warden.wait_for(&id, "expired", |v| v.state == "expired");
    assert_eq!(view.pid, None);
    let events = warden.events(&["--workload", &id]);
    assert_eq!(events.last().unwrap().event_type, "dev.warden.workload.expired.v1");

    let (_, metrics) = unsigned_client(&warden.addr()).call("GET", "/metrics", b"", None).unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("warden_workloads{state=\"expired\"} 1"), "{metrics}");
    assert!(metrics.contains(&format!("warden_journal_head_seq {}", warden.events(&[]).len())), "{metrics}");
}
