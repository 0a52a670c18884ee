//! `[replication] mode = "checkpointed"` end to end: a real `warden server` and three real
//! `warden agent` processes on loopback. The workload keeps a counter in its `state_dir`; the
//! agent snapshots it (tar, XChaCha20-Poly1305, sha256-named blob in the server's store), and
//! after its host dies the new cell elsewhere starts from the checkpoint, not from zero. A blob
//! damaged in the server's store is refused on read, and a start that needs it fails loudly.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::cluster::Cluster;
use crate::support::{kill9, signed_client};
use warden_runtime::client::HttpError;

/// The counter a checkpoint holds: the blob read straight from the server's store, decrypted
/// with the workload's key from `<data-dir>/keys`, unpacked.
fn counter_in(cluster: &Cluster, id: &str, state_uri: &str) -> u64 {
    let hex = warden_runtime::checkpoint::blob_hex(state_uri).unwrap_or_else(|| panic!("not a blob: {state_uri}"));
    let conn = raw(&cluster.server.data_dir().join("journal.db"));
    let blob: Vec<u8> =
        conn.query_row("SELECT body FROM artifacts WHERE id = ?1", [format!("sha256:{hex}")], |row| row.get(0)).unwrap();
    let key: [u8; 32] = std::fs::read(cluster.server.data_dir().join("keys").join(id)).unwrap().try_into().unwrap();
    let out = tempfile::tempdir().unwrap();
    warden_runtime::checkpoint::restore(out.path(), &key, id, hex, &blob).unwrap();
    std::fs::read_to_string(out.path().join("counter")).unwrap().trim().parse().unwrap()
}

fn raw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// A workload that reads a counter from `state/counter` at start (0 if absent), appends
/// `epoch start-value` to `starts`, then increments it every 100 ms (written atomically).
fn counter_spec(state: &Path, starts: &Path, interval: &str, restart: &str) -> String {
    format!(
        r#"
name = "counter"
[cell]
argv = ["python3", "-c", '''
import os, time
state = {state:?}
path = os.path.join(state, "counter")
try:
    n = int(open(path).read())
except FileNotFoundError:
    n = 0
with open({starts:?}, "a") as f:
    f.write(f"{{os.environ.get('WARDEN_EPOCH', 'none')}} {{n}}\n")
while True:
    n += 1
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.rename(path + ".tmp", path)
    time.sleep(0.1)
''']
graceful_shutdown = "1s"
[restart]
{restart}
backoff = "50ms"
[replication]
mode = "checkpointed"
state_dir = {state:?}
checkpoint_interval = {interval:?}
[placement]
instances = 1
"#
    )
}

fn starts(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (epoch, n) = line.split_once(' ').unwrap();
            (epoch.to_string(), n.parse().unwrap())
        })
        .collect()
}

#[test]
fn checkpoint_round_trip_across_hosts() {
    let mut cluster = Cluster::start(3);
    let state = cluster.server.shared("rw").join("state");
    let starts_log = cluster.server.shared("rw").join("starts.log");
    let id = cluster.server.run("counter.toml", &counter_spec(&state, &starts_log, "1s", "policy = \"always\""));
    let first = cluster.wait_for(&id, "running", |v| v.state == "running");
    let (old_host, old_epoch) = (first.host.clone(), first.epoch.expect("a cluster primary has an epoch"));

    // Periodic checkpoints: state_uri moves on at least twice.
    let mut seen = Vec::new();
    cluster.wait_for(&id, "two checkpoints", |v| {
        if let Some(uri) = &v.info.state_uri {
            if seen.last() != Some(uri) {
                seen.push(uri.clone());
            }
        }
        seen.len() >= 2
    });
    assert!(seen.iter().all(|uri| uri.starts_with("blob:sha256:")), "{seen:?}");
    // A superseded checkpoint is deleted from the blob store once the next one is journaled.
    let first = warden_runtime::checkpoint::blob_hex(&seen[0]).unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.server.api("GET", &format!("/v1/blobs/{first}"), b"").0 != 404 {
        assert!(Instant::now() < deadline, "superseded checkpoint {first} is still stored");
        std::thread::sleep(Duration::from_millis(50));
    }

    // One on request.
    let before = cluster.server.status(&id).info.state_uri.unwrap();
    cluster.server.cli_ok(&["checkpoint", &id]);
    let taken = cluster.wait_for(&id, "the requested checkpoint", |v| v.info.state_uri.as_ref() != Some(&before));
    let at_checkpoint = counter_in(&cluster, &id, taken.info.state_uri.as_ref().unwrap());
    assert!(at_checkpoint > 0, "the checkpoint holds the counter");
    // A host fetches only the checkpoints of its own cells: the others are refused this one.
    let taken_path =
        format!("/v1/blobs/{}", warden_runtime::checkpoint::blob_hex(taken.info.state_uri.as_ref().unwrap()).unwrap());
    for agent in &cluster.agents {
        let key = warden_runtime::auth::Identity::load(&agent.data_dir.join("host.key")).unwrap();
        let answer = signed_client(&cluster.server.addr(), key).call("GET", &taken_path, b"", None);
        match agent.name == old_host {
            true => assert!(answer.is_ok(), "{}: {answer:?}", agent.name),
            false => assert!(matches!(answer, Err(HttpError::Status { code: 403, .. })), "{}: {answer:?}", agent.name),
        }
    }

    // The primary's host dies, and its disk with it: only the checkpoint can bring the state back.
    cluster.agent_mut(&old_host).kill_host();
    std::fs::remove_dir_all(&state).unwrap();
    let moved = cluster
        .wait_for(&id, "failover", |v| v.state == "running" && v.host != old_host && v.epoch.is_some_and(|e| e > old_epoch));
    let new_epoch = moved.epoch.unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let restored = loop {
        if let Some((_, n)) = starts(&starts_log).into_iter().find(|(epoch, _)| *epoch == new_epoch) {
            break n;
        }
        assert!(Instant::now() < deadline, "the new primary never started: {:?}\n{}", starts(&starts_log), cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("checkpointed {at_checkpoint}, the new primary on {} started from {restored}", moved.host);
    assert!(restored >= at_checkpoint, "started from {restored}, below the checkpoint's {at_checkpoint}");

    // Blobs are content-addressed and only ciphertext: the counter is not in the clear.
    let hex = warden_runtime::checkpoint::blob_hex(taken.info.state_uri.as_ref().unwrap()).unwrap().to_string();
    let conn = raw(&cluster.server.data_dir().join("journal.db"));
    let blob: Vec<u8> =
        conn.query_row("SELECT body FROM artifacts WHERE id = ?1", [format!("sha256:{hex}")], |row| row.get(0)).unwrap();
    assert!(!blob.windows(7).any(|w| w == b"counter"), "the tar's file names must not be readable in the blob");
    // The key is on the server's disk only, never in an event.
    let key: String =
        std::fs::read(cluster.server.data_dir().join("keys").join(&id)).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let events = cluster.server.cli_ok(&["events", "-o", "json"]);
    assert!(!events.contains(&key), "a checkpoint key leaked into the journal");
    assert!(events.contains("dev.warden.workload.checkpointed.v1"));
}

#[test]
fn a_tampered_blob_is_rejected() {
    let cluster = Cluster::start(1);
    let state = cluster.server.shared("rw").join("state");
    let starts_log = cluster.server.shared("rw").join("starts.log");
    // No periodic checkpoint in the test's time: only the requested one.
    let spec = counter_spec(&state, &starts_log, "1h", "policy = \"on-failure\"\nmax_attempts = 1");
    let id = cluster.server.run("counter.toml", &spec);
    let running = cluster.wait_for(&id, "running", |v| v.state == "running");
    std::thread::sleep(Duration::from_millis(300));
    cluster.server.cli_ok(&["checkpoint", &id]);
    let taken = cluster.wait_for(&id, "a checkpoint", |v| v.info.state_uri.is_some());
    let hex = warden_runtime::checkpoint::blob_hex(taken.info.state_uri.as_ref().unwrap()).unwrap().to_string();
    let (code, _) = cluster.server.api("GET", &format!("/v1/blobs/{}", "0".repeat(64)), b"");
    assert_eq!(code, 404);
    // Only hosts store blobs, and only under the sha256 of their bytes.
    let wrong = format!("/v1/blobs/{}", "0".repeat(64));
    assert_eq!(cluster.server.api("PUT", &wrong, b"bytes").0, 403, "an admin key cannot store blobs");
    let host = warden_runtime::auth::Identity::load(&cluster.agents[0].data_dir.join("host.key")).unwrap();
    let answer = signed_client(&cluster.server.addr(), host).call("PUT", &wrong, b"bytes", None);
    assert!(matches!(answer, Err(HttpError::Status { code: 400, .. })), "a blob not named by its hash is refused: {answer:?}");

    // One byte flipped in the server's store.
    let conn = raw(&cluster.server.data_dir().join("journal.db"));
    let mut blob: Vec<u8> =
        conn.query_row("SELECT body FROM artifacts WHERE id = ?1", [format!("sha256:{hex}")], |row| row.get(0)).unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0x01;
    conn.execute("UPDATE artifacts SET body = ?2 WHERE id = ?1", rusqlite::params![format!("sha256:{hex}"), blob]).unwrap();
    drop(conn);
    let (code, body) = cluster.server.api("GET", &format!("/v1/blobs/{hex}"), b"");
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("corrupt"), "{body}");

    // The cell dies; its restart must restore that checkpoint, and cannot.
    kill9(running.pid.unwrap());
    let failed = cluster.wait_for(&id, "the restart to fail", |v| {
        v.last_exit.as_ref().is_some_and(|e| e.exit.reason.contains("checkpoint restore failed"))
    });
    let reason = &failed.last_exit.as_ref().unwrap().exit.reason;
    assert!(reason.contains("corrupt"), "{reason}");
    assert_eq!(starts(&starts_log).len(), 1, "the cell never started again from a damaged or empty state");
    cluster.wait_for(&id, "failed", |v| v.state == "failed");
}
