//! Join tokens and host removal end to end: a real `warden server`, real `warden agent`
//! processes. An expired, used-up or revoked token enrolls nothing; no token ever shows in an
//! agent's command line, the server's banner or the journal; a removed host's reports are
//! refused and its workload runs elsewhere under a higher epoch.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use warden_runtime::auth::Identity;
use warden_runtime::view::TokenView;

use crate::support::cluster::{check_no_overlap, ground_truth_spec, Cluster, ControlPlane};
use crate::support::{bin, signed_client};

/// `warden agent NAME` on the data dir `<root>/dir-NAME`, joining with `token` through `how`
/// (`env`: WARDEN_JOIN_TOKEN, `file`: --join-token-file, `argv`: --join-token); the child and
/// its data dir.
fn spawn_agent(cluster: &Cluster, name: &str, how: &str, token: &str) -> (Child, PathBuf) {
    let root = cluster.server.root.path();
    let data_dir = root.join(format!("dir-{name}"));
    std::fs::create_dir_all(&data_dir).unwrap();
    let log = std::fs::File::create(data_dir.join("agent.log")).unwrap();
    let mut command = Command::new(bin());
    command
        .args(["agent", "--server", &format!("https://{}", cluster.server.addr()), "--name", name, "--data-dir"])
        .arg(&data_dir)
        .env("XDG_CONFIG_HOME", cluster.server.config_home())
        .env_remove("WARDEN_JOIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(log);
    match how {
        "env" => command.env("WARDEN_JOIN_TOKEN", token),
        "file" => {
            let file = root.join(format!("token-{name}"));
            std::fs::write(&file, token).unwrap();
            command.arg("--join-token-file").arg(file)
        }
        "argv" => command.args(["--join-token", token]),
        other => panic!("no way {other:?}"),
    };
    (command.spawn().unwrap(), data_dir)
}

/// Waits (20 s at most) for an agent that should be refused to exit; its status and log.
fn refused(mut child: Child, data_dir: &Path) -> (ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, std::fs::read_to_string(data_dir.join("agent.log")).unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent still running: {}", std::fs::read_to_string(data_dir.join("agent.log")).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn create_token(cluster: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["tokens", "create"];
    all.extend_from_slice(args);
    cluster.server.cli_ok(&all).trim().to_string()
}

fn token_id(token: &str) -> String {
    warden_core::cluster::parse_join_token(token).expect("a join token").0.to_string()
}

#[test]
fn expired_used_up_and_revoked_join_tokens_enroll_nothing_and_no_token_is_ever_in_argv() {
    let cluster = Cluster::start(1);
    let first_token = cluster.server.join_token();
    // The first start's token is in a 0600 file, not in the banner.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cluster.server.data_dir().join("join-token")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(!cluster.server.log().contains(&first_token), "the banner shows the token:\n{}", cluster.server.log());
    assert!(cluster.server.log().contains("--join-token-file"), "{}", cluster.server.log());

    // Nobody on the host can read the token from the agent's command line.
    let agent_pid = cluster.agents[0].pid();
    let cmdline = std::fs::read(format!("/proc/{agent_pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&first_token[4..]), "token in argv");
    let ps = Command::new("ps").args(["axww", "-o", "args"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ps.stdout).contains(&first_token[4..]), "token in ps");
    // Given on the command line, it is refused before anything is sent.
    let (child, dir) = spawn_agent(&cluster, "argv", "argv", &first_token);
    let (status, log) = refused(child, &dir);
    assert!(!status.success() && log.contains("--join-token is refused") && log.contains("/proc"), "{log}");

    // Expired, on the server's clock.
    let short = create_token(&cluster, &["--ttl", "2s"]);
    std::thread::sleep(Duration::from_millis(2_500));
    let (child, dir) = spawn_agent(&cluster, "late", "env", &short);
    let (status, log) = refused(child, &dir);
    assert!(!status.success() && log.contains("has expired") && log.contains("HTTP 401"), "{log}");

    // Single use: the first host enrolls, the second is refused.
    let once = create_token(&cluster, &["--uses", "1"]);
    let (mut first, _) = spawn_agent(&cluster, "once-a", "file", &once);
    cluster.wait_host("once-a", "up", Duration::from_secs(20));
    let (child, dir) = spawn_agent(&cluster, "once-b", "file", &once);
    let (status, log) = refused(child, &dir);
    assert!(!status.success() && log.contains("is used up") && log.contains("HTTP 401"), "{log}");
    first.kill().unwrap();
    first.wait().unwrap();

    // Revoked.
    let revoked = create_token(&cluster, &[]);
    cluster.server.cli_ok(&["tokens", "revoke", &token_id(&revoked)]);
    let (child, dir) = spawn_agent(&cluster, "revoked", "env", &revoked);
    let (status, log) = refused(child, &dir);
    assert!(!status.success() && log.contains("was revoked"), "{log}");
    // A made-up token too (with the server's real certificate pin: only the secret is wrong).
    let pin = warden_core::cluster::join_token_pin(&once).expect("a TLS server's token carries its pin");
    let forged = format!("wjt_{}_{}_{}", token_id(&once), "0".repeat(64), pin.hex());
    let (child, dir) = spawn_agent(&cluster, "forger", "env", &forged);
    let (status, log) = refused(child, &dir);
    assert!(!status.success() && log.contains("wrong join token"), "{log}");

    let hosts: Vec<String> = cluster.hosts().into_iter().map(|h| h.name).collect();
    assert_eq!(hosts, ["h0", "once-a"], "only the hosts with a live token enrolled");
    let tokens: Vec<TokenView> = serde_json::from_str(&cluster.server.cli_ok(&["tokens", "ls", "-o", "json"])).unwrap();
    let state_of = |token: &str| tokens.iter().find(|t| t.token_id == token_id(token)).unwrap().state.clone();
    assert_eq!(
        [state_of(&first_token), state_of(&short), state_of(&once), state_of(&revoked)],
        ["live", "expired", "used-up", "revoked"].map(String::from)
    );
    // The journal has the tokens' hashes, never their secrets.
    let events = cluster.server.cli_ok(&["events", "-o", "json"]);
    let mut journal = std::fs::read(cluster.server.data_dir().join("journal.db")).unwrap();
    journal.extend(std::fs::read(cluster.server.data_dir().join("journal.db-wal")).unwrap_or_default());
    for token in [&first_token, &short, &once, &revoked] {
        let (_, secret) = warden_core::cluster::parse_join_token(token).unwrap();
        assert!(!events.contains(secret), "a token's secret in the events");
        assert!(!String::from_utf8_lossy(&journal).contains(secret), "a token's secret in the journal or its WAL");
    }
}

#[test]
fn a_removed_hosts_reports_are_refused_and_its_workload_runs_elsewhere_with_a_higher_epoch() {
    let cluster = Cluster::start(2);
    let truth = cluster.server.shared("truth").join("truth.log");
    let id = cluster.server.run("truth.toml", &ground_truth_spec(&truth));
    let first = cluster.server.wait_for(&id, "running", |v| v.state == "running");
    let (old_host, old_epoch) = (first.host.clone(), first.epoch.expect("a cluster primary runs under a lease epoch"));
    // The agent got its token in WARDEN_JOIN_TOKEN and dropped it: its cells do not inherit it.
    let environ = std::fs::read(format!("/proc/{}/environ", first.pid.unwrap())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("WARDEN_EPOCH=") && !environ.contains("WARDEN_JOIN_TOKEN"), "{environ}");
    std::thread::sleep(Duration::from_millis(300));

    cluster.server.cli_ok(&["hosts", "remove", &old_host]);
    let (moved, took) = cluster.wait_primary_elsewhere(&id, &old_host, old_epoch, Instant::now(), Duration::from_secs(30));
    eprintln!("running again {took:?} after the removal, on {} epoch {:?}", moved.host, moved.epoch);
    assert!(cluster.hosts().iter().all(|h| h.name != old_host), "{:?}", cluster.hosts());

    // The removed host's agent still runs and still signs with its key: every report is refused.
    let key = Identity::load(&cluster.agent(&old_host).data_dir.join("host.key")).unwrap();
    let client = signed_client(&cluster.server.addr(), key);
    let heartbeat = serde_json::to_vec(&serde_json::json!({ "host": old_host })).unwrap();
    for (method, path, body) in
        [("POST", "/v1/agents/heartbeat", heartbeat.clone()), ("GET", "/v1/agents/commands?wait_ms=0", Vec::new())]
    {
        let request = client.prepare(method, path, body).unwrap();
        let (code, answer) = client.exchange(&request, None).unwrap();
        assert_eq!(code, 401, "{method} {path}: {}", String::from_utf8_lossy(&answer));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.agent(&old_host).log().contains("is not authorized") {
        assert!(Instant::now() < deadline, "{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its old cell was fenced by its shim (it could renew nothing): the epochs never overlapped.
    std::thread::sleep(Duration::from_millis(500));
    check_no_overlap(&truth);

    // Nor can its key enroll again, even with a live token (the agent lost its enrollment but
    // kept its key).
    let data_dir = cluster.server.root.path().join(format!("dir-{old_host}"));
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::copy(cluster.agent(&old_host).data_dir.join("host.key"), data_dir.join("host.key")).unwrap();
    let (child, dir) = spawn_agent(&cluster, &old_host, "env", &create_token(&cluster, &[]));
    let (status, log) = refused(child, &dir);
    assert!(!status.success() && log.contains("was removed") && log.contains("HTTP 403"), "{log}");
}
