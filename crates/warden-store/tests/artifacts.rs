//! `SqliteStore` artifacts beyond the port's contract: damage on disk is caught on read, artifacts
//! share their events' transaction, and they survive reopening.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use tempfile::TempDir;
use warden_core::canonical::Artifact;
use warden_core::event::GENESIS_HASH;
use warden_store::conformance::sample_event;
use warden_store::{verify_chain, SqliteStore, Store, StoreError};

fn journal() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    (dir, path)
}

fn raw(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    conn
}

fn read_all(store: &SqliteStore) -> Vec<warden_core::CloudEvent> {
    store.read_after(0, usize::MAX, None).unwrap()
}

fn assert_corrupt(store: &SqliteStore, id: &str) {
    match store.get_artifact(id) {
        Err(StoreError::ArtifactCorrupt { id: reported }) => assert_eq!(reported, id),
        other => panic!("expected ArtifactCorrupt for {id}, got {other:?}"),
    }
}

#[test]
fn a_corrupted_artifact_body_is_reported_not_returned() {
    let (_dir, path) = journal();
    let manifest = Artifact::of_json(&serde_json::json!({"job": "j-1", "rows": 3}));
    let context = Artifact::from_bytes(b"context snapshot".to_vec());
    let (store, _) = SqliteStore::open(&path).unwrap();
    let written = store
        .append_with_artifacts(vec![manifest.clone(), context.clone()], vec![sample_event(1, Some("w-1")), sample_event(2, None)])
        .unwrap();
    assert_eq!(store.get_artifact(&manifest.id).unwrap(), Some(manifest.bytes.clone()));

    // Flip the content behind the store's back, while it is open.
    let conn = raw(&path);
    let n = conn
        .execute("UPDATE artifacts SET body = ?2 WHERE id = ?1", params![manifest.id, br#"{"job":"j-1","rows":4}"#.to_vec()])
        .unwrap();
    assert_eq!(n, 1);
    assert_corrupt(&store, &manifest.id);
    // The other artifact and the events are untouched.
    assert_eq!(store.get_artifact(&context.id).unwrap(), Some(context.bytes.clone()));
    assert_eq!(read_all(&store), written);

    // Writing the artifact again is a no-op: immutable, so it does not heal the damage either.
    store.append_with_artifacts(vec![manifest.clone()], Vec::new()).unwrap();
    assert_corrupt(&store, &manifest.id);

    // A body that is no longer a blob at all, or a truncated one, is corrupt too.
    conn.execute("UPDATE artifacts SET body = 42 WHERE id = ?1", [&context.id]).unwrap();
    assert_corrupt(&store, &context.id);
    conn.execute("UPDATE artifacts SET body = ?2 WHERE id = ?1", params![context.id, b"context".to_vec()]).unwrap();
    assert_corrupt(&store, &context.id);
    drop(store);

    // Artifacts are not part of the chain: reopening finds the chain intact, keeps every event
    // and still refuses the damaged bytes.
    let (store, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.head.seq, 2);
    assert_eq!(read_all(&store), written);
    assert_corrupt(&store, &manifest.id);
    assert_corrupt(&store, &context.id);
    let next = store.append(vec![sample_event(3, None)]).unwrap();
    assert_eq!(next[0].seq, 3);
    assert_eq!(next[0].prevhash, written[1].hash());
    assert_eq!(verify_chain(&read_all(&store), GENESIS_HASH), Ok(()));
}

#[test]
fn artifacts_survive_reopen_in_the_documented_table() {
    let (_dir, path) = journal();
    let artifacts: Vec<Artifact> = (0..20u8).map(|n| Artifact::from_bytes(vec![n; usize::from(n)])).collect();
    let written = {
        let (store, _) = SqliteStore::open(&path).unwrap();
        store.append_with_artifacts(artifacts.clone(), vec![sample_event(1, None)]).unwrap()
    };
    let (store, _) = SqliteStore::open(&path).unwrap();
    assert_eq!(read_all(&store), written);
    for artifact in &artifacts {
        assert_eq!(store.get_artifact(&artifact.id).unwrap(), Some(artifact.bytes.clone()));
    }

    let conn = raw(&path);
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM artifacts", [], |row| row.get(0)).unwrap();
    assert_eq!(n, 20);
    let sql: String = conn
        .query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'artifacts'", [], |row| row.get(0))
        .unwrap();
    assert!(sql.contains("WITHOUT ROWID"), "{sql}");
    let (id, body): (String, Vec<u8>) = conn
        .query_row("SELECT id, body FROM artifacts WHERE id = ?1", [&artifacts[7].id], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    assert!(id.starts_with("sha256:"));
    assert_eq!(body, artifacts[7].bytes);
}

#[test]
fn a_journal_from_before_artifacts_gains_the_table_on_open() {
    let (_dir, path) = journal();
    let written = {
        let (store, _) = SqliteStore::open(&path).unwrap();
        store.append(vec![sample_event(1, None), sample_event(2, Some("w-1"))]).unwrap()
    };
    // As an older warden left it: same schema version, no artifacts table.
    raw(&path).execute_batch("DROP TABLE artifacts").unwrap();

    let (store, _) = SqliteStore::open(&path).unwrap();
    assert_eq!(read_all(&store), written);
    let manifest = Artifact::from_bytes(b"manifest".to_vec());
    assert_eq!(store.get_artifact(&manifest.id).unwrap(), None);
    let next = store.append_with_artifacts(vec![manifest.clone()], vec![sample_event(3, None)]).unwrap();
    assert_eq!(next[0].seq, 3);
    assert_eq!(store.get_artifact(&manifest.id).unwrap(), Some(manifest.bytes));
}

#[test]
fn a_failed_group_commit_writes_none_of_its_artifacts() {
    let (_dir, path) = journal();
    let (store, _) = SqliteStore::open(&path).unwrap();
    let first = store.append(vec![sample_event(1, None)]).unwrap();
    let head = store.head().unwrap();

    // Another writer takes seq 2 behind the store's back, so the next append's event insert
    // fails after its artifact was inserted: the transaction rolls back both.
    let conn = raw(&path);
    conn.execute("INSERT INTO events (seq, subject, hash, body) VALUES (2, NULL, 'x', x'00')", []).unwrap();
    let manifest = Artifact::from_bytes(b"refers to seq 2".to_vec());
    let failed = store.append_with_artifacts(vec![manifest.clone()], vec![sample_event(2, None)]);
    assert!(matches!(failed, Err(StoreError::Append(_))), "{failed:?}");
    assert_eq!(store.head().unwrap(), head);
    assert_eq!(store.get_artifact(&manifest.id).unwrap(), None);

    conn.execute("DELETE FROM events WHERE seq = 2", []).unwrap();
    let next = store.append_with_artifacts(vec![manifest.clone()], vec![sample_event(2, None)]).unwrap();
    assert_eq!(next[0].seq, 2);
    assert_eq!(next[0].prevhash, first[0].hash());
    assert_eq!(store.get_artifact(&manifest.id).unwrap(), Some(manifest.bytes));
}

#[test]
fn a_mismatched_artifact_fails_only_its_own_call() {
    let (_dir, path) = journal();
    let (store, _) = SqliteStore::open(&path).unwrap();
    let bad = Artifact { id: Artifact::from_bytes(b"a".to_vec()).id, bytes: b"b".to_vec() };
    std::thread::scope(|scope| {
        let store = &store;
        let good: Vec<_> = (0..8u64)
            .map(|t| {
                scope.spawn(move || {
                    let artifact = Artifact::from_bytes(format!("good {t}").into_bytes());
                    for k in 0..20 {
                        store.append_with_artifacts(vec![artifact.clone()], vec![sample_event(t * 1_000 + k, None)]).unwrap();
                    }
                    artifact
                })
            })
            .collect();
        for _ in 0..50 {
            let refused = store.append_with_artifacts(vec![bad.clone()], vec![sample_event(99_999, None)]);
            assert!(matches!(refused, Err(StoreError::ArtifactMismatch { .. })), "{refused:?}");
        }
        for handle in good {
            let artifact = handle.join().unwrap();
            assert_eq!(store.get_artifact(&artifact.id).unwrap(), Some(artifact.bytes));
        }
    });
    let all = read_all(&store);
    assert_eq!(all.len(), 160);
    assert!(all.iter().all(|e| e.id != "evt-99999"));
    assert_eq!(verify_chain(&all, GENESIS_HASH), Ok(()));
    assert_eq!(store.get_artifact(&bad.id).unwrap(), None);
}
