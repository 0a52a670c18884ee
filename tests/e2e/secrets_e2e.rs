//! Secrets end to end: a value put with `warden secret put` reaches the cell's environment, and
//! nowhere else — not the journal, its WAL, any other file of the data dir, the API's answers,
//! `warden status`/`events`, `/metrics` or warden's own log — across a new version, a kill -9
//! of `warden up` and a restart of the cell; a removed secret fails the next start by name; a
//! viewer lists names but no route returns a value; another namespace's operator can do nothing
//! with them. With agents: only the host that runs the cell gets the value.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warden_runtime::view::SecretView;

use crate::support::cluster::Cluster;
use crate::support::{bin, kill9, unsigned_client, Warden};

fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}-{nanos:x}-{:x}", std::process::id())
}

/// `warden secret put NAME --namespace NS` with `value` on stdin, as `credential` (default: the admin).
fn put(warden: &Warden, credential: Option<&Path>, namespace: &str, name: &str, value: &str) -> std::process::Output {
    let mut command = Command::new(bin());
    if let Some(credential) = credential {
        command.arg("--credential").arg(credential);
    }
    let mut child = command
        .args(["secret", "put", name, "--namespace", namespace, "-o", "json"])
        .env("WARDEN_ADDR", warden.addr())
        .env("XDG_CONFIG_HOME", warden.config_home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{value}\n").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn put_ok(warden: &Warden, namespace: &str, name: &str, value: &str) -> SecretView {
    let out = put(warden, None, namespace, name, value);
    assert!(out.status.success(), "secret put: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_file(path: &Path, expected: &str, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::fs::read_to_string(path).is_ok_and(|text| text == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {path:?} never held the value; it holds {:?}\n{}",
            std::fs::read_to_string(path),
            log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            out.extend(files_under(&path));
        } else if kind.is_file() {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A cell that writes `$DB_PASSWORD` to `out` (outside every data dir) and stays up.
fn spec(name: &str, out: &Path, extra: &str) -> String {
    format!(
        "name = \"{name}\"\n[cell]\nargv = [\"sh\", \"-c\", \"printf %s \\\"$DB_PASSWORD\\\" > {out}.tmp && mv {out}.tmp {out}; exec sleep 300\"]\n\
         env = {{ DB_PASSWORD = {{ secret = \"db-password\" }}, PLAIN = \"visible\" }}\n\
         [restart]\npolicy = \"always\"\nbackoff = \"100ms\"\nbackoff_max = \"500ms\"\n{extra}",
        out = out.display()
    )
}

#[test]
fn a_secret_reaches_the_cells_environment_and_nothing_else() {
    let mut warden = Warden::start();
    let out = warden.shared("out").join("seen-by-the-cell");
    let (first, second) = (marker("first"), marker("second"));

    // A spec naming a secret that does not exist is refused, naming the variable and the secret.
    let spec_path = warden.write_spec("db.toml", &spec("db", &out, ""));
    let refused = warden.cli(&["run", spec_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("400")
            && stderr.contains("DB_PASSWORD")
            && stderr.contains("\"db-password\""),
        "{stderr}"
    );

    assert_eq!(put_ok(&warden, "default", "db-password", &first).version, 1);
    let id = warden.cli_ok(&["run", spec_path.to_str().unwrap()]).lines().last().unwrap().trim().to_string();
    wait_file(&out, &first, "first start", || warden.up_log());
    let pid = warden.wait_for(&id, "running", |v| v.state == "running" && v.pid.is_some()).pid.unwrap();

    // kill -9 of warden: the cell is re-adopted as it runs, with no secret needed.
    warden.kill9();
    warden.up();
    let adopted = warden.wait_for(&id, "re-adopted", |v| v.state == "running");
    assert_eq!(adopted.pid, Some(pid), "re-adopted, not restarted");

    // A new version applies at the cell's next start, here a restart after its crash.
    assert_eq!(put_ok(&warden, "default", "db-password", &second).version, 2);
    std::fs::remove_file(&out).unwrap();
    kill9(pid);
    wait_file(&out, &second, "restart after a crash", || warden.up_log());
    let view = warden.wait_for(&id, "running again", |v| v.state == "running" && v.pid.is_some_and(|p| p != pid));
    let cell_id = view.cell_id.clone().unwrap();
    let config = warden.data_dir().join("cells").join(&cell_id).join("config.json");
    assert!(contains(&std::fs::read(&config).unwrap(), &second), "the cell's own config holds its environment");
    assert_eq!(mode(&config), 0o600);
    let key = warden.data_dir().join("secrets.key");
    assert_eq!((mode(&key), std::fs::metadata(&key).unwrap().len()), (0o600, 32));

    // A job's step gets it the same way; a manifest naming a missing secret is refused.
    let step_out = warden.shared("out").join("seen-by-the-step");
    let manifest = |secret: &str| {
        format!(
            "name = \"uses-secret\"\n[[state]]\nid = \"step\"\nargv = [\"sh\", \"-c\", \"printf %s \\\"$DB_PASSWORD\\\" > {}\"]\n\
             env = {{ DB_PASSWORD = {{ secret = \"{secret}\" }} }}\n",
            step_out.display()
        )
    };
    let job = warden.write_spec("job.toml", &manifest("db-password"));
    warden.cli_ok(&["job", "run", job.to_str().unwrap()]);
    wait_file(&step_out, &second, "a job step", || warden.up_log());
    let missing = warden.write_spec("missing.toml", &manifest("no-such-secret"));
    let refused = warden.cli(&["job", "run", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("400") && stderr.contains("\"no-such-secret\""), "{stderr}");

    // Viewers list names and versions; nobody gets a value; another namespace's operator can
    // neither list, put nor remove this namespace's secrets.
    let viewer = warden.root.path().join("viewer.key");
    let other = warden.root.path().join("other-operator.key");
    warden.cli_ok(&["keys", "add", "viewer", "--role", "viewer", "--out", viewer.to_str().unwrap()]);
    warden.cli_ok(&["keys", "add", "other", "--role", "operator", "--namespace", "other", "--out", other.to_str().unwrap()]);
    let as_key = |credential: &Path, args: &[&str]| {
        let mut all = vec!["--credential", credential.to_str().unwrap()];
        all.extend_from_slice(args);
        warden.cli(&all)
    };
    let listed = as_key(&viewer, &["secret", "ls", "-o", "json"]);
    let listed: Vec<SecretView> = serde_json::from_slice(&listed.stdout).unwrap_or_else(|_| panic!("{listed:?}"));
    assert_eq!(
        listed.iter().map(|s| (s.namespace.as_str(), s.name.as_str(), s.version)).collect::<Vec<_>>(),
        [("default", "db-password", 2)]
    );
    let viewer_put = put(&warden, Some(&viewer), "default", "db-password", "from-a-viewer");
    assert!(String::from_utf8_lossy(&viewer_put.stderr).contains("403"), "{viewer_put:?}");
    for args in [&["secret", "ls", "--namespace", "default"][..], &["secret", "rm", "db-password", "--namespace", "default"]] {
        let answer = as_key(&other, args);
        assert!(!answer.status.success() && String::from_utf8_lossy(&answer.stderr).contains("403"), "{args:?}: {answer:?}");
    }
    let listed_by_other = as_key(&other, &["secret", "ls", "-o", "json"]);
    assert_eq!(String::from_utf8_lossy(&listed_by_other.stdout).trim(), "[]", "{listed_by_other:?}");
    let other_put = put(&warden, Some(&other), "default", "db-password", "from-another-namespace");
    assert!(String::from_utf8_lossy(&other_put.stderr).contains("403"), "{other_put:?}");
    for (method, path) in [("GET", "/v1/secrets/default/db-password"), ("GET", "/v1/secrets/default")] {
        let (code, body) = warden.api(method, path, b"");
        assert!(code == 404 || code == 405, "{method} {path}: {code} {body}");
    }

    // Removed: the cell's next start fails, naming the secret and not its value.
    warden.cli_ok(&["secret", "rm", "db-password"]);
    let pid = view.pid.unwrap();
    kill9(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    let failure = loop {
        let events = warden.cli_ok(&["events", "--workload", &id, "-o", "json"]);
        if let Some(line) = events.lines().find(|l| l.contains("does not exist in namespace") && l.contains("db-password")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no start failure naming the secret:\n{events}\n{}", warden.up_log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(failure.contains("DB_PASSWORD"), "{failure}");
    assert!(warden.status(&id).pid.is_none_or(|p| p != pid));

    // Put again: the next start succeeds with it.
    let third = marker("third");
    let _ = std::fs::remove_file(&out);
    put_ok(&warden, "default", "db-password", &third);
    wait_file(&out, &third, "a start after a new put", || warden.up_log());
    let pid = warden.wait_for(&id, "running with the new secret", |v| v.state == "running" && v.pid.is_some()).pid.unwrap();

    // A backup carries secrets.key: the journal and the key lost, restored, and a start after
    // the restore still opens the secret.
    let backup = warden.root.path().join("data.backup");
    let data = warden.data_dir();
    warden.cli_ok(&["backup", backup.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    warden.kill9();
    kill9(pid);
    let aside = warden.root.path().join("lost");
    std::fs::create_dir_all(&aside).unwrap();
    for name in ["journal.db", "journal.db-wal", "journal.db-shm", "secrets.key"] {
        if data.join(name).exists() {
            std::fs::rename(data.join(name), aside.join(name)).unwrap();
        }
    }
    warden.cli_ok(&["restore", backup.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert_eq!(std::fs::read(&key).unwrap(), std::fs::read(aside.join("secrets.key")).unwrap());
    assert_eq!(mode(&key), 0o600);
    let _ = std::fs::remove_file(&out);
    warden.up();
    wait_file(&out, &third, "a start after a restore", || warden.up_log());

    // Nowhere but in the cell's environment: every file of the data dir (the journal, its WAL,
    // snapshots, logs) but the cells' own 0600 configs and the key, the journal set aside, the
    // backup, every answer, the log.
    let mut leaks = Vec::new();
    let mut searched = files_under(&warden.data_dir());
    searched.extend(files_under(&aside));
    searched.push(backup.clone());
    for file in searched {
        if file.file_name().is_some_and(|n| n == "secrets.key" || n == "config.json") {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap_or_default();
        for value in [&first, &second, &third] {
            if contains(&bytes, value) {
                leaks.push(format!("{} holds {value}", file.display()));
            }
        }
    }
    let journal_files =
        files_under(&warden.data_dir()).into_iter().filter(|f| f.to_string_lossy().contains("journal.db")).count();
    assert!(journal_files >= 1, "the journal was among the files read");
    let answers = [
        ("GET /v1/workloads", warden.api("GET", "/v1/workloads", b"").1),
        ("GET /v1/secrets", warden.api("GET", "/v1/secrets", b"").1),
        ("status", warden.cli_ok(&["status", &id, "-o", "json"])),
        ("ps", warden.cli_ok(&["ps", "--all"])),
        ("events", warden.cli_ok(&["events", "-o", "json"])),
        ("metrics", String::from_utf8(unsigned_client(&warden.addr()).call("GET", "/metrics", b"", None).unwrap().1).unwrap()),
        ("warden's log", warden.up_log()),
    ];
    for (what, text) in &answers {
        for value in [&first, &second, &third] {
            if text.contains(value.as_str()) {
                leaks.push(format!("{what} shows {value}"));
            }
        }
    }
    assert!(leaks.is_empty(), "the secret leaked:\n{}", leaks.join("\n"));
    // What the journal does hold: the reference, and the secret's puts without their values.
    let events = &answers[4].1;
    assert!(events.contains("dev.warden.secret.put.v1") && events.contains("dev.warden.secret.removed.v1"), "{events}");
    assert!(warden.cli_ok(&["status", &id, "-o", "json"]).contains(&id));
    warden.cli_ok(&["stop", &id]);
}

#[test]
fn only_the_host_that_runs_the_cell_gets_the_value() {
    let cluster = Cluster::start(2);
    let warden = &cluster.server;
    let out = warden.shared("out").join("seen-on-the-agent");
    let value = marker("agent");
    put_ok(warden, "default", "db-password", &value);
    let id = warden.run("db.toml", &spec("db", &out, ""));
    wait_file(&out, &value, "start on an agent", || cluster.logs());
    let view = cluster.wait_for(&id, "running on an agent", |v| v.state == "running" && v.cell_id.is_some());
    let (running, idle) = match view.host.as_str() {
        "h0" => (cluster.agent("h0"), cluster.agent("h1")),
        "h1" => (cluster.agent("h1"), cluster.agent("h0")),
        other => panic!("runs on {other}"),
    };
    let config = running.data_dir.join("cells").join(view.cell_id.as_ref().unwrap()).join("config.json");
    assert!(contains(&std::fs::read(&config).unwrap(), &value), "{config:?}");
    assert_eq!(mode(&config), 0o600);
    let mut leaks = Vec::new();
    for (dir, skip_configs) in [(&idle.data_dir, false), (&running.data_dir, true), (&warden.data_dir(), false)] {
        for file in files_under(dir) {
            if skip_configs && file == config {
                continue;
            }
            if file.file_name().is_some_and(|n| n == "secrets.key") {
                continue;
            }
            if contains(&std::fs::read(&file).unwrap_or_default(), &value) {
                leaks.push(file.display().to_string());
            }
        }
    }
    assert!(!files_under(&idle.data_dir).is_empty(), "the idle agent has a data dir to search");
    assert!(leaks.is_empty(), "the value is in {leaks:?}\n{}", cluster.logs());
    assert!(!cluster.logs().contains(&value), "a log shows the value");
    warden.cli_ok(&["stop", &id]);
}
