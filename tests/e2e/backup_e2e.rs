//! `warden backup` and `warden restore` end to end: a backup taken while a load generator keeps
//! submitting workloads, the server killed -9 and its journal lost, the data dir restored from
//! the backup: the chain verifies, long-running cells are re-adopted (same pids, no restarts),
//! a checkpoint's blob and key are back, a cell started after the backup is named and left
//! alone, and broken or foreign backups are refused with messages naming what is wrong.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::cluster::Cluster;
use crate::support::{alive, bin, Warden};
use warden_runtime::view::SubmitRequest;

const SLEEPER: &str = "name = \"sleeper\"\n[cell]\nargv = [\"sleep\", \"1000\"]\n";
const BLIP: &str = "name = \"blip\"\n[cell]\nargv = [\"true\"]\n[restart]\npolicy = \"never\"\n";

/// A counter kept in `state/counter` (incremented every 50 ms), checkpointed on request only
/// (the interval is long), on an agent: `warden up`'s own node does not checkpoint.
fn counter_spec(state: &Path) -> String {
    format!(
        r#"
name = "counter"
[cell]
argv = ["python3", "-c", '''
import os, time
path = os.path.join({state:?}, "counter")
n = 0
while True:
    n += 1
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.rename(path + ".tmp", path)
    time.sleep(0.05)
''']
[replication]
mode = "checkpointed"
state_dir = {state:?}
checkpoint_interval = "1h"
[placement]
instances = 1
"#
    )
}

/// Runs `warden` with `args` (no server needed); (success, stdout, stderr).
fn local_cli(config_home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).env("XDG_CONFIG_HOME", config_home).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn refused(config_home: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = local_cli(config_home, args);
    assert!(!ok, "`warden {}` should have been refused: {stdout}", args.join(" "));
    stderr
}

/// The counter a checkpoint holds: the blob from the (restored) journal, decrypted with the
/// workload's key from the (restored) `<data-dir>/keys`.
fn counter_in(data_dir: &Path, id: &str, state_uri: &str) -> u64 {
    let hex = warden_runtime::checkpoint::blob_hex(state_uri).unwrap_or_else(|| panic!("not a blob: {state_uri}"));
    let conn = rusqlite::Connection::open(data_dir.join("journal.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let blob: Vec<u8> =
        conn.query_row("SELECT body FROM artifacts WHERE id = ?1", [format!("sha256:{hex}")], |row| row.get(0)).unwrap();
    let key: [u8; 32] = std::fs::read(data_dir.join("keys").join(id)).unwrap().try_into().unwrap();
    let out = tempfile::tempdir().unwrap();
    warden_runtime::checkpoint::restore(out.path(), &key, id, hex, &blob).unwrap();
    std::fs::read_to_string(out.path().join("counter")).unwrap().trim().parse().unwrap()
}

fn copy_with(from: &Path, to: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(from).unwrap();
    change(&mut bytes);
    std::fs::write(to, bytes).unwrap();
}

#[test]
fn a_backup_under_load_restores_a_verified_journal_that_readopts_its_cells() {
    let server = Warden::start();
    let root = server.root.path().to_path_buf();
    let config_home = server.config_home();
    let mut cluster = Cluster::with_agents(server, &root, ["h0".to_string()], |_| {
        let mut command = Command::new(bin());
        command.env("XDG_CONFIG_HOME", &config_home);
        command
    });
    cluster.wait_hosts_up(1);
    let data_dir = cluster.server.data_dir();
    let data = data_dir.to_str().unwrap().to_string();
    let server_pub = data_dir.join("server.pub");

    // Long-running cells on `warden up`'s own node, and a checkpointed one on the agent.
    let sleepers: Vec<String> = (0..3).map(|i| cluster.server.run(&format!("sleeper{i}.toml"), SLEEPER)).collect();
    let state = crate::support::shared_dir(&root, "rw").join("state");
    std::fs::create_dir_all(&state).unwrap();
    let counter = cluster.server.run("counter.toml", &counter_spec(&state));
    let placed = cluster.wait_for(&counter, "running on h0", |v| v.state == "running");
    assert_eq!(placed.host, "h0");
    std::thread::sleep(Duration::from_millis(300));
    cluster.server.cli_ok(&["checkpoint", &counter]);
    let checkpointed = cluster.wait_for(&counter, "a checkpoint", |v| v.info.state_uri.is_some());
    let state_uri = checkpointed.info.state_uri.clone().unwrap();
    let before: Vec<(String, u32)> = sleepers
        .iter()
        .map(|id| {
            let view = cluster.wait_for(id, "running", |v| v.state == "running");
            (id.clone(), view.pid.expect("a running cell has a pid"))
        })
        .collect();

    // The backup, taken while a load generator keeps submitting through the API. A backup
    // counts as taken under load if submissions were acknowledged while `warden backup` ran;
    // it is retried (a few times at most) until one was.
    let backup = root.join("warden.backup");
    let backup_arg = backup.to_str().unwrap();
    let stop = AtomicBool::new(false);
    let submitted = AtomicUsize::new(0);
    let mut overlapped = 0;
    let client = cluster.server.client();
    let submit = SubmitRequest { file: "blip.toml".into(), spec_toml: BLIP.into(), consumer_workload_id: None };
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _: serde_json::Value = client.json("POST", "/v1/workloads", Some(&submit), None).unwrap();
                submitted.fetch_add(1, Ordering::Relaxed);
            }
        });
        while submitted.load(Ordering::Relaxed) < 50 {
            std::thread::sleep(Duration::from_millis(10));
        }
        for _ in 0..5 {
            let before = submitted.load(Ordering::Relaxed);
            let (ok, stdout, stderr) = local_cli(&config_home, &["backup", backup_arg, "--data-dir", &data]);
            assert!(ok, "warden backup failed: {stderr}");
            assert!(stdout.contains("signed by ed25519:"), "{stdout}");
            overlapped = submitted.load(Ordering::Relaxed) - before;
            if overlapped > 0 {
                break;
            }
        }
        // And some after the cut, which the restored journal will not have.
        let after = submitted.load(Ordering::Relaxed) + 5;
        while submitted.load(Ordering::Relaxed) < after {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap();
    });
    eprintln!(
        "{} submissions by the load generator, {overlapped} acknowledged while the backup ran",
        submitted.load(Ordering::Relaxed)
    );
    assert!(overlapped > 0, "no submission was acknowledged while any backup ran");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600, "a backup holds secrets");

    // Offline, anywhere: verified against the pinned key; never on the backup's own word.
    let (ok, stdout, stderr) =
        local_cli(&config_home, &["events", "verify", "--backup", backup_arg, "--key-file", server_pub.to_str().unwrap()]);
    assert!(ok && stdout.starts_with("ok: backup taken "), "{stdout}{stderr}");
    let no_key = refused(&config_home, &["events", "verify", "--backup", backup_arg]);
    assert!(no_key.contains("a backup never vouches for its own key"), "{no_key}");

    // A cell started after the backup: unknown to the restored journal.
    let late = cluster.server.run("late.toml", SLEEPER);
    let late_pid = cluster.wait_for(&late, "running", |v| v.state == "running").pid.unwrap();

    // The disk loses the journal and the TLS certificate while the server runs.
    cluster.server.kill9();
    let aside = root.join("lost");
    std::fs::create_dir_all(&aside).unwrap();
    for name in ["journal.db", "journal.db-wal", "journal.db-shm"] {
        if data_dir.join(name).exists() {
            std::fs::rename(data_dir.join(name), aside.join(name)).unwrap();
        }
    }
    let fingerprint = || std::fs::read_to_string(data_dir.join("tls/fingerprint")).unwrap();
    let pin_before = fingerprint();
    std::fs::rename(data_dir.join("tls"), aside.join("tls")).unwrap();

    // Broken and foreign backups are refused, and leave nothing behind.
    let flipped = root.join("flipped.backup");
    copy_with(&backup, &flipped, |bytes| {
        // A byte inside the fourth event's id.
        let line_start = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(3).unwrap().0 + 1;
        let at = line_start + bytes[line_start..].windows(6).position(|w| w == b"\"id\":\"").unwrap() + 6;
        bytes[at] ^= 0x01;
    });
    let cut = root.join("cut.backup");
    copy_with(&backup, &cut, |bytes| bytes.truncate(bytes.len() * 2 / 3));
    let flipped_error = refused(&config_home, &["restore", flipped.to_str().unwrap(), "--data-dir", &data]);
    assert!(
        flipped_error.contains("restore refused: line 6: event 5: prevhash does not match event 4's hash"),
        "{flipped_error}"
    );
    let cut_error = refused(&config_home, &["restore", cut.to_str().unwrap(), "--data-dir", &data]);
    assert!(cut_error.contains("restore refused: truncated: the backup ends at line "), "{cut_error}");
    let other = warden_runtime::auth::Identity::generate("other").principal();
    let foreign = refused(&config_home, &["events", "verify", "--backup", backup_arg, "--key", &other]);
    assert!(foreign.contains(&format!("not by the trusted server key {other}: it is another server's backup")), "{foreign}");
    let foreign = refused(&config_home, &["restore", backup_arg, "--data-dir", &data, "--key", &other]);
    assert!(foreign.contains("it is another server's backup"), "{foreign}");
    let not_a_backup = refused(&config_home, &["restore", server_pub.to_str().unwrap(), "--data-dir", &data]);
    assert!(not_a_backup.contains("not a warden backup"), "{not_a_backup}");
    assert!(!data_dir.join("journal.db").exists(), "a refused restore wrote a journal");

    // The restore, into the same data dir (its own server.pub is the key to trust).
    let (ok, stdout, stderr) = local_cli(&config_home, &["restore", backup_arg, "--data-dir", &data]);
    assert!(ok, "warden restore failed: {stdout}{stderr}");
    let again = refused(&config_home, &["restore", backup_arg, "--data-dir", &data]);
    assert!(again.contains("already has a journal"), "{again}");

    cluster.server.up();
    assert_eq!(fingerprint(), pin_before, "the backup carries the TLS certificate: the agents' pins still hold");
    let verified = cluster.server.cli_ok(&["events", "verify", "--key-file", server_pub.to_str().unwrap()]);
    assert!(verified.starts_with("ok: "), "{verified}");
    let events = cluster.server.events(&[]);
    let restored = events.iter().find(|e| e.event_type == "dev.warden.journal.restored.v1").expect("the restore is journaled");
    assert_eq!(restored.data["head_seq"].as_u64(), Some(restored.seq - 1), "the first event after the backup's");
    assert!(!events.iter().any(|e| e.subject.as_deref() == Some(late.as_str())), "the late workload is after the cut");

    // The long-running cells: re-adopted, the same processes, never restarted.
    for (id, pid) in &before {
        let view = cluster.server.status(id);
        assert_eq!((view.state.as_str(), view.pid, view.restarts), ("running", Some(*pid), 0), "{id}");
    }
    // The cell the journal never heard of: named in the log, left running.
    let log = cluster.server.up_log();
    assert!(log.contains(&format!("cell {late}.1 (pid {late_pid}) is running, but the journal has no record of it")), "{log}");
    assert!(alive(late_pid), "an unknown cell is left to the operator, not killed");
    crate::support::kill9(late_pid);

    // The checkpoint: its blob is in the restored journal, fetchable, and its key decrypts it.
    let view = cluster.wait_for(&counter, "running again", |v| v.state == "running");
    assert_eq!(view.info.state_uri.as_deref(), Some(state_uri.as_str()));
    let hex = warden_runtime::checkpoint::blob_hex(&state_uri).unwrap().to_string();
    let client = cluster.server.client();
    let request = client.prepare("GET", &format!("/v1/blobs/{hex}"), Vec::new()).unwrap();
    let (code, blob) = client.exchange(&request, None).unwrap();
    assert_eq!((code, warden_core::canonical::sha256_hex(&blob)), (200, hex.clone()), "the blob is served as stored");
    assert!(counter_in(&data_dir, &counter, &state_uri) > 0, "the checkpoint holds the counter");

    // After the restore the server carries on: a new workload runs, the chain still verifies.
    let fresh = cluster.server.run("fresh.toml", SLEEPER);
    cluster.wait_for(&fresh, "running", |v| v.state == "running");
    let verified = cluster.server.cli_ok(&["events", "verify", "--key-file", server_pub.to_str().unwrap()]);
    assert!(verified.starts_with("ok: "), "{verified}");
}
