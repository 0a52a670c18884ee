//! Durable jobs end to end: the real `warden` binary runs multi-step jobs, is killed with SIGKILL
//! in the middle of one (together with the step's cell), and finishes it after a restart without
//! redoing completed work.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{assert_contiguous_chain, kill9, rootfs, Warden};
use serde_json::{json, Value};

/// A step that adds `key = value` to its context with python3 (what a real step would do: read
/// WARDEN_CONTEXT, change it, leave it there). Has both quote kinds: use it in a `'''` string.
fn set(key: &str, value: &str) -> String {
    format!(
        "python3 -c 'import json,os; p=os.environ[\"WARDEN_CONTEXT\"]; c=json.load(open(p)); c[\"{key}\"]={value}; json.dump(c, open(p, \"w\"))'"
    )
}

fn job_run(warden: &Warden, manifest: &Path, extra: &[&str]) -> String {
    let mut args = vec!["job", "run", manifest.to_str().unwrap()];
    args.extend_from_slice(extra);
    let stdout = warden.cli_ok(&args);
    stdout.lines().last().expect("job run prints the run id last").trim().to_string()
}

fn job_status(warden: &Warden, run: &str) -> Value {
    serde_json::from_str(&warden.cli_ok(&["job", "status", run, "-o", "json"])).unwrap()
}

fn wait_run(warden: &Warden, run: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = job_status(warden, run);
        if view["status"] == status {
            return view;
        }
        assert!(view["status"] == "running", "run ended {} instead of {status}: {view:#}\n{}", view["status"], warden.up_log());
        assert!(Instant::now() < deadline, "run not {status} in time: {view:#}\n{}", warden.up_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn history(warden: &Warden, run: &str) -> Vec<Value> {
    warden.cli_ok(&["job", "history", run, "-o", "json"]).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn of_kind<'a>(history: &'a [Value], kind: &str, state: &str) -> Vec<&'a Value> {
    history.iter().filter(|e| e["kind"] == kind && e["state_id"] == state).collect()
}

fn wait_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_job_killed_mid_step_with_its_cell_resumes_from_the_last_completed_state() {
    let mut warden = Warden::start();
    // The manifest's dir is the steps' workdir, where they leave files: the `warden` user's to write.
    let dir = warden.shared("rw");
    let effects = dir.join("side-effects.log");
    let manifest = dir.join("etl.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
name = "etl"

[[state]]
id = "extract"
argv = ["sh", "-c", '''echo extract >> {effects} && {extract}''']

[[state]]
id = "transform"
depends_on = ["extract"]
retry = {{ max_attempts = 2, backoff = "100ms" }}
argv = ["sh", "-c", '''echo transform $WARDEN_ATTEMPT >> {effects}; if [ $WARDEN_ATTEMPT = 0 ]; then echo $$ > transform.pid; exec sleep 1000; fi; {transform}''']

[[state]]
id = "load"
depends_on = ["transform"]
argv = ["sh", "-c", '''echo load >> {effects} && {load}''']
"#,
            effects = effects.display(),
            extract = set("rows", "3"),
            transform = set("transformed", "True"),
            load = set("loaded", "True"),
        ),
    )
    .unwrap();
    let input = warden.write_spec("input.json", r#"{"source": "s3://bucket/day"}"#);
    let run = job_run(&warden, &manifest, &["--input", input.to_str().unwrap()]);
    assert!(run.starts_with("r-"), "{run}");

    // State 2 is running: kill warden and state 2's cell, both with SIGKILL.
    let pid: u32 = wait_file(&dir.join("transform.pid")).trim().parse().unwrap();
    warden.kill9();
    kill9(pid);
    warden.up();

    let done = wait_run(&warden, &run, "completed");
    assert_eq!(
        std::fs::read_to_string(&effects).unwrap(),
        "extract\ntransform 0\ntransform 1\nload\n",
        "extract ran exactly once; transform was retried once"
    );

    let history = history(&warden, &run);
    let extract_ctx = of_kind(&history, "StateCompleted", "extract")[0]["context_snapshot_id"].clone();
    let entered = of_kind(&history, "StateEntered", "transform");
    assert_eq!(entered.iter().map(|e| e["attempt"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1]);
    for attempt in &entered {
        assert_eq!(attempt["base_snapshot_id"], extract_ctx, "every attempt starts from extract's context: {attempt}");
    }
    let failed = of_kind(&history, "StateFailed", "transform");
    assert_eq!(failed.len(), 1, "the interrupted attempt is closed by StateFailed: {history:#?}");
    assert_eq!(failed[0]["error"]["code"], "orphaned", "{}", failed[0]);
    assert_eq!(failed[0]["error"]["retryable"], true);
    let seq_of = |e: &Value| e["seq"].as_u64().unwrap();
    assert!(seq_of(entered[0]) < seq_of(failed[0]) && seq_of(failed[0]) < seq_of(entered[1]));
    assert_eq!(of_kind(&history, "StateEntered", "extract").len(), 1, "completed states are never entered again");
    assert_eq!(history.first().unwrap()["kind"], "RunStarted");
    let last = history.last().unwrap();
    assert_eq!((last["kind"].as_str(), last["status"].as_str()), (Some("RunCompleted"), Some("completed")));
    assert_eq!(last["final_snapshot_id"], done["final_snapshot_id"]);

    // The final context is an artifact, content-addressed and readable.
    let final_id = done["final_snapshot_id"].as_str().unwrap();
    let bytes = warden.cli_ok(&["artifact", "get", final_id]);
    let context: Value = serde_json::from_str(&bytes).unwrap();
    assert_eq!(context, json!({"source": "s3://bucket/day", "rows": 3, "transformed": true, "loaded": true}));

    // Kernel events are journal events too, in one unbroken chain.
    let events = warden.events(&[]);
    assert_contiguous_chain(&events);
    let kernel = events.iter().filter(|e| e.event_type == "dev.warden.job.kernel.v1").count();
    assert_eq!(kernel, history.len());
}

#[test]
fn parallel_branches_join_on_merged_contexts_and_timeouts_fail_the_run_within_budget() {
    let warden = Warden::start();
    let manifest = warden.write_spec(
        "diamond.toml",
        &format!(
            r#"
name = "diamond"
[[state]]
id = "left"
argv = ["sh", "-c", '''{left}''']
[[state]]
id = "right"
argv = ["sh", "-c", '''{right}''']
[[state]]
id = "join"
depends_on = ["left", "right"]
argv = ["sh", "-c", '''{join}''']
"#,
            left = set("left", "1"),
            right = set("right", "2"),
            join = set("joined", "True"),
        ),
    );
    let run = job_run(&warden, &manifest, &[]);
    let done = wait_run(&warden, &run, "completed");
    let h = history(&warden, &run);
    let join_base = of_kind(&h, "StateEntered", "join")[0]["base_snapshot_id"].as_str().unwrap().to_string();
    let base: Value = serde_json::from_str(&warden.cli_ok(&["artifact", "get", &join_base])).unwrap();
    assert_eq!(base, json!({"left": 1, "right": 2}), "the join starts from both branches' contexts");
    let final_context: Value =
        serde_json::from_str(&warden.cli_ok(&["artifact", "get", done["final_snapshot_id"].as_str().unwrap()])).unwrap();
    assert_eq!(final_context, json!({"left": 1, "right": 2, "joined": true}));

    let slow = warden.write_spec(
        "slow.toml",
        r#"
name = "slow"
[[state]]
id = "hang"
argv = ["sleep", "1000"]
timeout = "300ms"
retry = { max_attempts = 1, backoff = "50ms" }
"#,
    );
    let run = job_run(&warden, &slow, &[]);
    let failed = wait_run(&warden, &run, "failed");
    let h = history(&warden, &run);
    let failures = of_kind(&h, "StateFailed", "hang");
    assert_eq!(failures.len(), 2, "1 + max_attempts attempts, each timed out: {h:#?}");
    assert!(failures.iter().all(|f| f["error"]["code"] == "timeout"), "{failures:#?}");
    assert_eq!(failed["states"][0]["status"], "failed");
}

#[test]
fn a_cancelled_run_stops_its_step_and_bad_manifests_name_their_line() {
    let warden = Warden::start();
    let manifest = warden.write_spec("wait.toml", "name = \"wait\"\n[[state]]\nid = \"w\"\nargv = [\"sleep\", \"1000\"]\n");
    let run = job_run(&warden, &manifest, &[]);
    let running = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = job_status(&warden, &run);
            if view["states"][0]["status"] == "running" {
                break view;
            }
            assert!(Instant::now() < deadline, "{view:#}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let step = running["states"][0]["workload_id"].as_str().unwrap().to_string();
    warden.wait_for(&step, "running", |v| v.state == "running");
    warden.cli_ok(&["job", "cancel", &run]);
    assert_eq!(job_status(&warden, &run)["status"], "cancelled");
    warden.wait_for(&step, "stopped", |v| v.state == "stopped");
    let h = history(&warden, &run);
    assert_eq!(of_kind(&h, "StateFailed", "w")[0]["error"]["code"], "cancelled");
    let out = warden.cli(&["job", "cancel", &run]);
    assert!(!out.status.success(), "a finished run cannot be cancelled again");

    let cyclic = warden.write_spec(
        "cyclic.toml",
        "name = \"c\"\n[[state]]\nid = \"a\"\nargv = [\"true\"]\ndepends_on = [\"b\"]\n[[state]]\nid = \"b\"\nargv = [\"true\"]\ndepends_on = [\"a\"]\n",
    );
    let out = warden.cli(&["job", "run", cyclic.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cyclic.toml:9: cycle: a -> b -> a"), "{stderr}");

    // The server checks too: a bad manifest sent around the CLI is a 400 naming the line.
    let body = json!({"file": "x.toml", "manifest_toml": "name = \"x\"\n[[state]]\nid = \"a\"\nargv = []\n"});
    let (code, text) = warden.api("POST", "/v1/jobs", body.to_string().as_bytes());
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("x.toml:4"), "{text}");
    let (code, _) = warden.api("GET", "/v1/artifacts/sha256:0000", b"");
    assert_eq!(code, 400);
    let missing = format!("/v1/artifacts/sha256:{}", "0".repeat(64));
    assert_eq!(warden.api("GET", &missing, b"").0, 404);
}

#[test]
fn steps_get_their_context_in_every_isolation_mode() {
    rootfs::ensure_packages();
    let warden = Warden::start();
    let rootfs = rootfs::build(&warden.root.path().join("bundle-src"));
    // busybox has no python: each step appends a key with sed, which is enough to prove the file
    // it was handed is the run's context and what it leaves behind is the next state's base.
    let append = |key: &str| format!(r#"sed -i 's/}}$/,"{key}":1}}/' $WARDEN_CONTEXT"#);
    let manifest = warden.write_spec(
        "modes.toml",
        &format!(
            r#"
name = "modes"
[[state]]
id = "process"
argv = ["sh", "-c", '''{process}''']
[[state]]
id = "cell"
depends_on = ["process"]
isolation = "cell"
network = "none"
argv = ["sh", "-c", '''test $$ = 2 && {cell}''']
[[state]]
id = "oci"
depends_on = ["cell"]
isolation = "oci"
rootfs = "{rootfs}"
argv = ["sh", "-c", '''test $$ = 1 && test "$WARDEN_CONTEXT" = /run/warden/job/context.json && {oci}''']
"#,
            process = append("process"),
            cell = append("cell"),
            oci = append("oci"),
            rootfs = rootfs.display(),
        ),
    );
    let input = warden.write_spec("in.json", r#"{"start": 0}"#);
    let run = job_run(&warden, &manifest, &["--input", input.to_str().unwrap()]);
    let done = wait_run(&warden, &run, "completed");
    let context: Value =
        serde_json::from_str(&warden.cli_ok(&["artifact", "get", done["final_snapshot_id"].as_str().unwrap()])).unwrap();
    assert_eq!(context, json!({"start": 0, "process": 1, "cell": 1, "oci": 1}));
    let types: Vec<String> =
        ["process", "cell", "oci"].iter().map(|state| warden.status(&format!("{run}.{state}.0")).info.workload_type).collect();
    assert_eq!(types, ["process", "cell", "oci"]);
    let run_dir = warden.data_dir().join("jobs").join(&run);
    let deadline = Instant::now() + Duration::from_secs(10);
    while run_dir.exists() {
        assert!(Instant::now() < deadline, "a finished run's attempt directories are removed: {}", run_dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// kill -9 of `warden up` at random moments while a job runs: cells outlive the supervisor and
/// are re-adopted, so every state runs exactly once and no attempt fails, however often warden
/// dies. The seed is printed so a failure can be replayed.
#[test]
fn repeated_kill9_of_warden_never_runs_a_step_twice() {
    const STATES: usize = 8;
    const KILLS: usize = 8;
    let mut warden = Warden::start();
    let effects = warden.shared("rw").join("effects.log");
    let mut manifest = String::from("name = \"crashy\"\n");
    for i in 0..STATES {
        // Two parallel branches (even and odd states), each a chain.
        let depends = if i >= 2 { format!("depends_on = [\"s{}\"]\n", i - 2) } else { String::new() };
        let script = format!("sleep 0.{}; echo s{i} >> {}; {}", 1 + i % 3, effects.display(), set(&format!("s{i}"), "1"));
        manifest.push_str(&format!("[[state]]\nid = \"s{i}\"\n{depends}argv = [\"sh\", \"-c\", '''{script}''']\n"));
    }
    let path = warden.write_spec("crashy.toml", &manifest);
    let run = job_run(&warden, &path, &[]);

    let mut seed = warden_runtime::engine::now_ms() | 1;
    eprintln!("jobs crash test seed: {seed}");
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(50 + next() % 250));
        warden.kill9();
        std::thread::sleep(Duration::from_millis(next() % 150));
        warden.up();
    }
    let done = wait_run(&warden, &run, "completed");
    let mut ran: Vec<String> = std::fs::read_to_string(&effects).unwrap().lines().map(str::to_owned).collect();
    ran.sort();
    let expected: Vec<String> = (0..STATES).map(|i| format!("s{i}")).collect();
    assert_eq!(ran, expected, "every state ran exactly once");
    let h = history(&warden, &run);
    assert!(h.iter().all(|e| e["kind"] != "StateFailed"), "no attempt failed: {h:#?}");
    assert_eq!(h.iter().filter(|e| e["kind"] == "StateEntered").count(), STATES);
    let context: Value =
        serde_json::from_str(&warden.cli_ok(&["artifact", "get", done["final_snapshot_id"].as_str().unwrap()])).unwrap();
    // The two sinks' contexts merged: each branch carried its own keys forward.
    let keys: Vec<&String> = context.as_object().unwrap().keys().collect();
    assert_eq!(keys, expected.iter().collect::<Vec<_>>(), "{context}");
    assert_contiguous_chain(&warden.events(&[]));
}

/// A retry's backoff is journaled: a restart during it neither forgets the timer nor restarts it.
#[test]
fn a_backoff_pending_across_a_restart_keeps_its_deadline() {
    let mut warden = Warden::start();
    let manifest = warden.write_spec(
        "flaky.toml",
        r#"
name = "flaky"
[[state]]
id = "flaky"
retry = { max_attempts = 1, backoff = "2s" }
argv = ["sh", "-c", "test $WARDEN_ATTEMPT = 1"]
"#,
    );
    let run = job_run(&warden, &manifest, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let not_before = loop {
        if let Some(e) = history(&warden, &run).iter().find(|e| e["kind"] == "RetryScheduled") {
            break e["not_before_ms"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "no retry scheduled");
        std::thread::sleep(Duration::from_millis(20));
    };
    warden.kill9();
    // Down for half the backoff: a timer restarted at start-up would fire ~1 s late.
    std::thread::sleep(Duration::from_millis(1_000));
    warden.up();
    wait_run(&warden, &run, "completed");
    let h = history(&warden, &run);
    assert_eq!(h.iter().filter(|e| e["kind"] == "RetryScheduled").count(), 1, "scheduled once: {h:#?}");
    let entered = of_kind(&h, "StateEntered", "flaky");
    let retry_at = time_ms(entered[1]["time"].as_str().unwrap());
    assert!(retry_at >= not_before, "the retry waited for its backoff: {retry_at} < {not_before}");
    assert!(retry_at < not_before + 600, "the restart did not start the backoff again: {retry_at} vs {not_before}");
}

fn time_ms(rfc3339: &str) -> u64 {
    warden_core::time::parse_rfc3339_ms(rfc3339).unwrap()
}
