//! Roles and namespaces against the real server: every route of the router's rule table
//! (`warden_runtime::api::authz::rules()`) × every role × its own namespace and another, and a
//! viewer and an operator of namespace "b" who see nothing of namespace "a".
//!
//! The expected minimum role of each route is written here, apart from the table: a route the
//! router gains without a line here fails this test, and a route without a rule fails every test
//! (the router panics at build).

use std::path::PathBuf;

use warden_core::authz::Role;
use warden_runtime::api::authz::{rules, Access, Rule, Target};
use warden_runtime::auth::Identity;
use warden_runtime::view::{JobRunRequest, KeyAddRequest, RolloutRequest, RunView, SubmitRequest, WorkloadView};

use crate::support::{signed_client, Warden};

/// The least role each role route needs (in the resource's namespace, or cluster-wide).
const LEAST_ROLE: &[(&str, &str, Role)] = &[
    ("POST", "/v1/workloads", Role::Operator),
    ("GET", "/v1/workloads", Role::Viewer),
    ("GET", "/v1/workloads/:id", Role::Viewer),
    ("POST", "/v1/workloads/:id/stop", Role::Operator),
    ("POST", "/v1/workloads/:id/checkpoint", Role::Operator),
    ("GET", "/v1/workloads/:id/logs", Role::Operator),
    ("GET", "/v1/events", Role::Viewer),
    ("GET", "/v1/events/head", Role::Viewer),
    ("POST", "/v1/jobs", Role::Operator),
    ("GET", "/v1/jobs", Role::Viewer),
    ("GET", "/v1/jobs/:id", Role::Viewer),
    ("GET", "/v1/jobs/:id/history", Role::Viewer),
    ("POST", "/v1/jobs/:id/cancel", Role::Operator),
    ("GET", "/v1/artifacts/:id", Role::Viewer),
    ("GET", "/v1/hosts", Role::Admin),
    ("POST", "/v1/hosts/:name/drain", Role::Admin),
    ("POST", "/v1/hosts/:name/remove", Role::Admin),
    ("POST", "/v1/tokens", Role::Admin),
    ("GET", "/v1/tokens", Role::Admin),
    ("POST", "/v1/tokens/:id/revoke", Role::Admin),
    ("POST", "/v1/rollouts", Role::Operator),
    ("GET", "/v1/rollouts", Role::Viewer),
    ("GET", "/v1/rollouts/:id", Role::Viewer),
    ("POST", "/v1/rollouts/:id/:control", Role::Operator),
    ("POST", "/v1/keys", Role::Admin),
    ("GET", "/v1/keys", Role::Admin),
    ("POST", "/v1/keys/:name/revoke", Role::Admin),
    ("PUT", "/v1/secrets/:namespace/:name", Role::Operator),
    ("GET", "/v1/secrets", Role::Viewer),
    ("DELETE", "/v1/secrets/:namespace/:name", Role::Operator),
];

const SPEC_A: &str =
    "name = \"svc\"\nnamespace = \"a\"\n[cell]\nargv = [\"sleep\", \"300\"]\nenv = { MARKER = \"only-in-namespace-a\" }\n";
const JOB_A: &str = "name = \"etl\"\nnamespace = \"a\"\n[[state]]\nid = \"wait\"\nargv = [\"sleep\", \"300\"]\n";

struct Caller {
    name: &'static str,
    role: Role,
    /// Whether the caller holds a role in namespace "a" (admins hold every namespace).
    own: bool,
    credential: PathBuf,
}

struct Matrix {
    warden: Warden,
    callers: Vec<Caller>,
    workload_id: String,
    run_id: String,
    manifest_id: String,
}

impl Matrix {
    fn start() -> Matrix {
        let warden = Warden::start();
        let mut callers = vec![Caller {
            name: "admin",
            role: Role::Admin,
            own: true,
            credential: warden.config_home().join("warden/admin.key"),
        }];
        for (name, role, namespace) in [
            ("viewer-a", Role::Viewer, "a"),
            ("operator-a", Role::Operator, "a"),
            ("viewer-b", Role::Viewer, "b"),
            ("operator-b", Role::Operator, "b"),
        ] {
            let credential = warden.root.path().join(format!("{name}.key"));
            let out = credential.to_str().unwrap();
            warden.cli_ok(&["keys", "add", name, "--role", role.as_str(), "--namespace", namespace, "--out", out]);
            callers.push(Caller { name, role, own: namespace == "a", credential });
        }
        let operator_a = callers[2].credential.to_str().unwrap().to_string();
        let spec = warden.write_spec("svc-a.toml", SPEC_A);
        let run = warden.cli_ok(&["--credential", &operator_a, "run", spec.to_str().unwrap(), "--id", "svc-a"]);
        let workload_id = run.lines().last().unwrap().trim().to_string();
        let manifest = warden.write_spec("job-a.toml", JOB_A);
        let job = warden.cli_ok(&["--credential", &operator_a, "job", "run", manifest.to_str().unwrap(), "-o", "json"]);
        let run: RunView = serde_json::from_str(job.lines().last().unwrap()).unwrap();
        assert_eq!(run.namespace, "a");
        Matrix { warden, callers, workload_id, run_id: run.run_id, manifest_id: run.manifest_id }
    }

    fn call(&self, caller: &Caller, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let client = signed_client(&self.warden.addr(), Identity::load(&caller.credential).unwrap());
        let request = client.prepare(method, path, body.to_vec()).unwrap();
        let (code, answer) = client.exchange(&request, None).unwrap();
        (code, String::from_utf8_lossy(&answer).into_owned())
    }

    /// The concrete request for `rule`: its path with the namespace-"a" resources filled in, and a
    /// body that would be accepted (`n` keeps names unique across calls).
    fn request(&self, rule: &Rule, n: usize) -> (String, Vec<u8>) {
        let id = match rule.path {
            p if p.starts_with("/v1/workloads/") => self.workload_id.clone(),
            p if p.starts_with("/v1/jobs/") => self.run_id.clone(),
            p if p.starts_with("/v1/artifacts/") => self.manifest_id.clone(),
            // Rollouts need agents to probe; there is none in namespace "a" (see the report).
            _ => "r-none".into(),
        };
        let path = rule
            .path
            // Before `:name`, which is a prefix of it: secrets are named in namespace "a".
            .replace(":namespace/:name", &format!("a/secret-{n}"))
            .replace(":id", &id)
            .replace(":control", "pause")
            .replace(":name/revoke", &format!("nobody-{n}/revoke"))
            .replace(":name", "nohost")
            .replace(":hex", &"0".repeat(64))
            .replace(":request", "none");
        let body = match (rule.method, rule.path) {
            ("POST", "/v1/workloads") => serde_json::to_vec(&SubmitRequest {
                file: "m.toml".into(),
                spec_toml: SPEC_A.replace("\"svc\"", &format!("\"m{n}\"")),
                consumer_workload_id: None,
            })
            .unwrap(),
            ("POST", "/v1/jobs") => serde_json::to_vec(&JobRunRequest {
                file: "j.toml".into(),
                manifest_toml: JOB_A.to_string(),
                workdir: None,
                input: None,
            })
            .unwrap(),
            ("POST", "/v1/rollouts") => serde_json::to_vec(&RolloutRequest {
                service: Some("svc-a".into()),
                spec_file: Some("v2.toml".into()),
                spec_toml: Some(SPEC_A.replace("300", "301")),
                policy_file: "p.toml".into(),
                policy_toml: "require_probes = false\n".into(),
                ..Default::default()
            })
            .unwrap(),
            ("POST", "/v1/keys") => serde_json::to_vec(&KeyAddRequest {
                name: format!("extra-{n}"),
                role: "viewer".into(),
                namespaces: vec!["a".into()],
                public_key: Identity::generate("extra").principal(),
            })
            .unwrap(),
            ("POST", "/v1/hosts/:name/drain") => br#"{"drain": false}"#.to_vec(),
            ("PUT", "/v1/secrets/:namespace/:name") => b"a value".to_vec(),
            ("POST", "/v1/agents/heartbeat" | "/v1/agents/acquire" | "/v1/agents/revoke" | "/v1/agents/rollout") => {
                b"{}".to_vec()
            }
            _ => Vec::new(),
        };
        (path, body)
    }
}

/// What a caller must be answered on a route.
#[derive(Debug, PartialEq)]
enum Expect {
    /// Authorized: no 401 or 403, no 5xx, and no 404 where the resource exists.
    Allowed { exists: bool },
    /// Refused for the role: 403.
    Forbidden,
    /// In a namespace the caller holds no role in: 404, as if it did not exist.
    Hidden,
    /// Not the caller's kind of route at all (agents'): 401.
    Unauthenticated,
    /// 403 or 404: the body names another namespace.
    Refused,
}

fn expect(rule: &Rule, caller: &Caller) -> Option<Expect> {
    let least =
        |rule: &Rule| {
            LEAST_ROLE.iter().find(|(m, p, _)| *m == rule.method && *p == rule.path).map(|(_, _, role)| *role).unwrap_or_else(
                || panic!("{} {} has no expected role in authz_matrix::LEAST_ROLE: add one", rule.method, rule.path),
            )
        };
    Some(match rule.access {
        Access::Public => return None,
        Access::Host => Expect::Unauthenticated,
        Access::HostOrAdmin if caller.role == Role::Admin && rule.method == "GET" => Expect::Allowed { exists: false },
        Access::HostOrAdmin => Expect::Forbidden,
        Access::Role { target, .. } => {
            let least = least(rule);
            let exists = matches!(target, Target::Workload | Target::Job | Target::Artifact);
            let in_namespace = matches!(target, Target::Workload | Target::Job | Target::Rollout | Target::Artifact);
            match () {
                _ if caller.role == Role::Admin => Expect::Allowed { exists },
                _ if least == Role::Admin || target == Target::Cluster => Expect::Forbidden,
                _ if target == Target::OwnNamespaces => Expect::Allowed { exists: false },
                _ if !caller.own && in_namespace => Expect::Hidden,
                _ if !caller.own => Expect::Refused,
                _ if caller.role >= least => Expect::Allowed { exists },
                // No rollout exists here (they need agents): too small a role may hear 404 first.
                _ if target == Target::Rollout => Expect::Refused,
                _ => Expect::Forbidden,
            }
        }
    })
}

fn check(expected: &Expect, code: u16) -> bool {
    match expected {
        Expect::Allowed { exists } => code < 500 && code != 401 && code != 403 && !(*exists && code == 404),
        Expect::Forbidden => code == 403,
        Expect::Hidden => code == 404,
        Expect::Unauthenticated => code == 401,
        Expect::Refused => code == 403 || code == 404,
    }
}

#[test]
fn every_route_answers_every_role_in_its_own_and_another_namespace_as_the_rules_say() {
    let matrix = Matrix::start();
    for (method, path, _) in LEAST_ROLE {
        assert!(rules().iter().any(|r| r.method == *method && r.path == *path), "{method} {path} is no route any more");
    }
    let mut failures = Vec::new();
    let mut n_checked = 0;
    // Least privilege first: the admin's calls (revoking, adding keys) come after everyone else's.
    for caller in matrix.callers.iter().rev() {
        for (n, rule) in rules().iter().enumerate() {
            let Some(expected) = expect(rule, caller) else { continue };
            let (path, body) = matrix.request(rule, n);
            let (code, answer) = matrix.call(caller, rule.method, &path, &body);
            n_checked += 1;
            if !check(&expected, code) {
                failures.push(format!("{} {path} as {}: expected {expected:?}, got {code} {answer}", rule.method, caller.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {n_checked} answers wrong:\n{}", failures.len(), failures.join("\n"));
    assert!(n_checked >= 5 * 30, "only {n_checked} calls checked");
}

#[test]
fn a_viewer_or_operator_of_another_namespace_sees_nothing_of_namespace_a_and_a_revoked_key_is_refused() {
    let mut matrix = Matrix::start();
    let (workload_id, run_id) = (matrix.workload_id.clone(), matrix.run_id.clone());
    let as_caller = |matrix: &Matrix, name: &str, args: &[&str]| {
        let caller = matrix.callers.iter().find(|c| c.name == name).unwrap();
        let mut all = vec!["--credential", caller.credential.to_str().unwrap()];
        all.extend_from_slice(args);
        matrix.warden.cli(&all)
    };
    for name in ["viewer-b", "operator-b"] {
        let ps = as_caller(&matrix, name, &["ps", "--all", "-o", "json"]);
        assert!(ps.status.success(), "{ps:?}");
        let views: Vec<WorkloadView> = serde_json::from_slice(&ps.stdout).unwrap();
        assert!(views.is_empty(), "{name} lists {views:?}");
        let jobs = as_caller(&matrix, name, &["job", "ls", "-o", "json"]);
        assert_eq!(String::from_utf8_lossy(&jobs.stdout).trim(), "[]", "{name}: {jobs:?}");
        let events = as_caller(&matrix, name, &["events", "-o", "json"]);
        assert!(events.status.success(), "{events:?}");
        let text = String::from_utf8_lossy(&events.stdout);
        for secret in [workload_id.as_str(), run_id.as_str(), "only-in-namespace-a", "operator-a"] {
            assert!(!text.contains(secret), "{name}'s events show {secret}: {text}");
        }
        for args in
            [&["status", workload_id.as_str()][..], &["logs", &workload_id], &["stop", &workload_id], &["job", "status", &run_id]]
        {
            let out = as_caller(&matrix, name, args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && stderr.contains("404"), "{name} {args:?}: {stderr}");
        }
        let events = as_caller(&matrix, name, &["events", "--workload", &workload_id]);
        assert!(String::from_utf8_lossy(&events.stderr).contains("404"), "{events:?}");
    }
    // Followed, too: a new workload in "a" never shows in viewer-b's stream; one in "b" does.
    let viewer_b = matrix.callers.iter().find(|c| c.name == "viewer-b").unwrap().credential.clone();
    let mut follow = std::process::Command::new(crate::support::bin())
        .args(["--credential", viewer_b.to_str().unwrap(), "events", "--follow", "-o", "json"])
        .env("WARDEN_ADDR", matrix.warden.addr())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let spec_a = matrix.warden.write_spec("late-a.toml", &SPEC_A.replace("\"svc\"", "\"late\""));
    let late_a = matrix.warden.cli_ok(&["run", spec_a.to_str().unwrap()]).trim().to_string();
    let spec_b = matrix.warden.write_spec("late-b.toml", &SPEC_A.replace("\"a\"", "\"b\""));
    let late_b = matrix.warden.cli_ok(&["run", spec_b.to_str().unwrap()]).trim().to_string();
    let mut seen = Vec::new();
    while !seen.iter().any(|line: &String| line.contains(&late_b)) {
        let line = lines.recv_timeout(std::time::Duration::from_secs(20)).expect("viewer-b's follow shows b's new workload");
        seen.push(line);
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(!seen.iter().any(|line| line.contains(&late_a) || line.contains(&workload_id)), "{seen:?}");
    matrix.warden.cli_ok(&["stop", &late_a]);
    matrix.warden.cli_ok(&["stop", &late_b]);

    // The same namespace's viewer sees it, and the admin sees everything.
    let ps = as_caller(&matrix, "viewer-a", &["ps", "-o", "json"]);
    let views: Vec<WorkloadView> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(views.iter().any(|v| v.info.id == workload_id && v.namespace == "a"), "{views:?}");
    assert!(matrix.warden.events(&[]).iter().any(|e| e.event_type == "dev.warden.key.added.v1"));

    // A new identity is written 0600; names and public keys are unique; only admins manage keys.
    use std::os::unix::fs::PermissionsExt;
    let credential = &matrix.callers.iter().find(|c| c.name == "viewer-a").unwrap().credential;
    assert_eq!(std::fs::metadata(credential).unwrap().permissions().mode() & 0o777, 0o600);
    let refused_key = matrix.warden.root.path().join("never-written.key");
    let again = matrix.warden.cli(&["keys", "add", "viewer-a", "--role", "viewer", "--out", refused_key.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"), "{again:?}");
    assert!(!refused_key.exists(), "a refused key leaves no credential behind");
    let escalate = as_caller(
        &matrix,
        "operator-a",
        &["keys", "add", "me", "--role", "admin", "--public-key", &Identity::generate("x").principal()],
    );
    assert!(String::from_utf8_lossy(&escalate.stderr).contains("403"), "{escalate:?}");

    // Revoked: refused on the next request, and still after a restart; the others still work.
    matrix.warden.cli_ok(&["keys", "revoke", "operator-a"]);
    let refused = as_caller(&matrix, "operator-a", &["ps"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{refused:?}");
    matrix.warden.kill9();
    matrix.warden.up();
    let refused = as_caller(&matrix, "operator-a", &["ps"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{refused:?}");
    let ps = as_caller(&matrix, "viewer-a", &["ps", "-o", "json"]);
    let views: Vec<WorkloadView> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(views.iter().any(|v| v.info.id == workload_id), "{views:?}");
    let keys = matrix.warden.cli_ok(&["keys", "ls"]);
    assert!(keys.contains("viewer-a") && !keys.contains("operator-a"), "{keys}");
    matrix.warden.cli_ok(&["stop", &workload_id]);
}

/// Running a cell as root is an admin's decision: an operator of the namespace may submit,
/// run jobs and roll out there, but not with `user = "root"` (or uid 0, or gid 0) — a 403 that
/// names the field — while the admin's same request is accepted.
#[test]
fn a_cell_that_asks_for_root_takes_the_admin_role() {
    let matrix = Matrix::start();
    let (operator, admin) = (&matrix.callers[2], &matrix.callers[0]);
    assert_eq!((operator.name, admin.name), ("operator-a", "admin"));
    let rooted = |user: &str, n: usize| SPEC_A.replace("\"svc\"", &format!("\"root{n}\"")) + &format!("user = \"{user}\"\n");
    for (n, user) in ["root", "0", "1000:0"].into_iter().enumerate() {
        let body =
            serde_json::to_vec(&SubmitRequest { file: "r.toml".into(), spec_toml: rooted(user, n), consumer_workload_id: None })
                .unwrap();
        let (code, answer) = matrix.call(operator, "POST", "/v1/workloads", &body);
        assert_eq!(code, 403, "{user}: {answer}");
        assert!(answer.contains(&format!("cell.user = \\\"{user}\\\"")) && answer.contains("only an admin"), "{answer}");
    }
    // Not root: the operator's own business.
    let body =
        serde_json::to_vec(&SubmitRequest { file: "n.toml".into(), spec_toml: rooted("nobody", 9), consumer_workload_id: None })
            .unwrap();
    let (code, answer) = matrix.call(operator, "POST", "/v1/workloads", &body);
    assert_eq!(code, 201, "{answer}");

    let job = serde_json::to_vec(&JobRunRequest {
        file: "j.toml".into(),
        manifest_toml: JOB_A.to_string() + "user = \"root\"\n",
        workdir: None,
        input: None,
    })
    .unwrap();
    let (code, answer) = matrix.call(operator, "POST", "/v1/jobs", &job);
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("state \\\"wait\\\": user"), "{answer}");

    let rollout = serde_json::to_vec(&RolloutRequest {
        service: Some("svc-a".into()),
        spec_file: Some("v2.toml".into()),
        spec_toml: Some(SPEC_A.to_string() + "user = \"root\"\n"),
        policy_file: "p.toml".into(),
        policy_toml: "require_probes = false\n".into(),
        ..Default::default()
    })
    .unwrap();
    let (code, answer) = matrix.call(operator, "POST", "/v1/rollouts", &rollout);
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("cell.user"), "{answer}");

    // The admin may.
    let body =
        serde_json::to_vec(&SubmitRequest { file: "r.toml".into(), spec_toml: rooted("root", 7), consumer_workload_id: None })
            .unwrap();
    let (code, answer) = matrix.call(admin, "POST", "/v1/workloads", &body);
    assert_eq!(code, 201, "{answer}");
    let (code, answer) = matrix.call(admin, "POST", "/v1/jobs", &job);
    assert_eq!(code, 201, "{answer}");
}
