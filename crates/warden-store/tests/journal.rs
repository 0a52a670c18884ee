//! `SqliteStore` beyond the port's contract: durability across reopen, and the chain check at
//! open that finds a corrupt, torn or gapped tail and cuts it off.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use tempfile::TempDir;
use warden_core::canonical::sha256_hex;
use warden_core::event::GENESIS_HASH;
use warden_core::CloudEvent;
use warden_store::conformance::sample_event;
use warden_store::{verify_chain, Head, SqliteStore, Store, StoreError, StoreOperation, TailRepair};

fn journal() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    (dir, path)
}

/// Opens `path`, appends `n` events in batches of up to 7, and closes it again.
fn write_events(path: &Path, n: u64) -> Vec<CloudEvent> {
    let (store, _) = SqliteStore::open(path).unwrap();
    let mut sealed = Vec::new();
    let mut next = 1;
    while next <= n {
        let len = (1 + next % 7).min(n - next + 1);
        let subject = if next % 2 == 0 { Some("w-even") } else { None };
        let batch = (next..next + len).map(|k| sample_event(k, subject)).collect();
        sealed.extend(store.append(batch).unwrap());
        next += len;
    }
    sealed
}

fn read_all(store: &SqliteStore) -> Vec<CloudEvent> {
    store.read_after(0, usize::MAX, None).unwrap()
}

fn raw(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    conn
}

fn stored_body(conn: &Connection, seq: u64) -> Vec<u8> {
    conn.query_row("SELECT body FROM events WHERE seq = ?1", [seq], |row| row.get(0)).unwrap()
}

fn set_body(conn: &Connection, seq: u64, body: &[u8]) {
    let n = conn.execute("UPDATE events SET body = ?2 WHERE seq = ?1", params![seq, body]).unwrap();
    assert_eq!(n, 1);
}

/// Replaces the body and makes the stored hash match it, as a careful tamperer would.
fn set_body_and_hash(conn: &Connection, seq: u64, body: &[u8]) {
    let n = conn.execute("UPDATE events SET body = ?2, hash = ?3 WHERE seq = ?1", params![seq, body, sha256_hex(body)]).unwrap();
    assert_eq!(n, 1);
}

fn head_of(event: &CloudEvent) -> Head {
    Head { seq: event.seq, hash: event.hash() }
}

/// Reopens a damaged journal and checks the cut: `kept` events survive untouched, the rest are
/// gone, and the chain continues from the last good event.
fn reopen_expecting_cut(path: &Path, original: &[CloudEvent], kept: usize, n_discarded: u64, reason: &str) -> SqliteStore {
    let (store, report) = SqliteStore::open(path).unwrap();
    let discarded_from_seq = kept as u64 + 1;
    assert_eq!(report.repaired, Some(TailRepair { discarded_from_seq, n_discarded, reason: reason.to_string() }));
    let expected_head = if kept == 0 { Head::genesis() } else { head_of(&original[kept - 1]) };
    assert_eq!(report.head, expected_head);
    assert_eq!(store.head().unwrap(), expected_head);
    assert_eq!(read_all(&store), original[..kept]);

    let next = store.append(vec![sample_event(9_999, None)]).unwrap();
    assert_eq!(next[0].seq, discarded_from_seq);
    assert_eq!(next[0].prevhash, expected_head.hash);
    let all = read_all(&store);
    assert_eq!(verify_chain(&all, GENESIS_HASH), Ok(()));
    store
}

#[test]
fn reopen_keeps_head_events_and_snapshot() {
    let (_dir, path) = journal();
    let written = write_events(&path, 100);
    {
        let (store, report) = SqliteStore::open(&path).unwrap();
        assert_eq!(report.repaired, None);
        assert_eq!(report.head, head_of(&written[99]));
        store.put_snapshot(60, b"projection@60").unwrap();
    }

    let (store, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.repaired, None);
    assert_eq!(report.head, head_of(&written[99]));
    assert_eq!(report.verified_from_seq, 61);
    assert_eq!(store.head().unwrap(), report.head);
    assert_eq!(read_all(&store), written);
    assert_eq!(store.latest_snapshot().unwrap(), Some((60, b"projection@60".to_vec())));
    assert_eq!(
        store.read_after(0, usize::MAX, Some("w-even")).unwrap(),
        written.iter().filter(|e| e.subject.is_some()).cloned().collect::<Vec<_>>()
    );

    let next = store.append(vec![sample_event(101, None)]).unwrap();
    assert_eq!(next[0].seq, 101);
    assert_eq!(next[0].prevhash, written[99].hash());
}

#[test]
fn reopening_an_empty_journal_is_at_genesis() {
    let (_dir, path) = journal();
    drop(SqliteStore::open(&path).unwrap());
    let (store, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.head, Head::genesis());
    assert_eq!(report.repaired, None);
    assert_eq!(store.append(vec![sample_event(1, None)]).unwrap()[0].seq, 1);
}

#[test]
fn journal_is_in_wal_mode_with_the_documented_schema() {
    let (_dir, path) = journal();
    write_events(&path, 3);
    let conn = raw(&path);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let (subject, hash, body): (Option<String>, String, Vec<u8>) = conn
        .query_row("SELECT subject, hash, body FROM events WHERE seq = 2", [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap();
    let event: CloudEvent = serde_json::from_slice(&body).unwrap();
    assert_eq!(body, event.canonical_bytes());
    assert_eq!(hash, sha256_hex(&body));
    assert_eq!(subject, event.subject);
    let index: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'", [], |row| row.get(0))
        .unwrap();
    assert_eq!(index, 1);
}

#[test]
fn flipped_byte_in_a_body_cuts_the_journal_there() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    {
        let conn = raw(&path);
        let mut body = stored_body(&conn, 45);
        let middle = body.len() / 2;
        body[middle] ^= 0x01;
        set_body(&conn, 45, &body);
    }
    drop(reopen_expecting_cut(&path, &written, 44, 6, "event 45: hash mismatch"));

    // Repaired for good: the next open finds nothing to cut.
    let (_, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.repaired, None);
    assert_eq!(report.head.seq, 45);
}

#[test]
fn changed_data_in_a_body_cuts_the_journal_there() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    {
        let conn = raw(&path);
        let mut event: CloudEvent = serde_json::from_slice(&stored_body(&conn, 45)).unwrap();
        event.data = serde_json::json!({"discarded_from_seq": 1, "n_discarded": 999, "reason": "x"});
        set_body(&conn, 45, &event.canonical_bytes());
    }
    reopen_expecting_cut(&path, &written, 44, 6, "event 45: hash mismatch");
}

#[test]
fn a_rewritten_event_with_a_fresh_hash_is_caught_by_the_next_prevhash() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    let mut rewritten: CloudEvent = written[44].clone();
    rewritten.id = "rewritten".into();
    set_body_and_hash(&raw(&path), 45, &rewritten.canonical_bytes());

    // Event 45 is self-consistent now (it still points at 44); its successor no longer points
    // at it, so the cut is at 46 and the rewritten 45 stays: the chain cannot tell a rewritten
    // last event from a genuine one.
    let (store, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(
        report.repaired,
        Some(TailRepair { discarded_from_seq: 46, n_discarded: 5, reason: "event 46: prevhash does not match event 45".into() })
    );
    assert_eq!(report.head, head_of(&rewritten));
    let mut expected = written[..44].to_vec();
    expected.push(rewritten);
    assert_eq!(read_all(&store), expected);
}

#[test]
fn a_torn_last_event_is_cut() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    {
        let conn = raw(&path);
        let body = stored_body(&conn, 50);
        set_body(&conn, 50, &body[..body.len() / 3]);
    }
    reopen_expecting_cut(&path, &written, 49, 1, "event 50: hash mismatch");
}

#[test]
fn a_torn_body_with_a_matching_hash_is_cut() {
    let (_dir, path) = journal();
    let written = write_events(&path, 10);
    {
        let conn = raw(&path);
        let body = stored_body(&conn, 8);
        set_body_and_hash(&conn, 8, &body[..body.len() - 5]);
    }
    let (_, report) = SqliteStore::open(&path).unwrap();
    let repair = report.repaired.unwrap();
    assert_eq!(repair.discarded_from_seq, 8);
    assert_eq!(repair.n_discarded, 3);
    assert!(repair.reason.starts_with("event 8: body is not an event"), "{}", repair.reason);
    assert_eq!(report.head, head_of(&written[6]));
}

#[test]
fn a_body_claiming_another_seq_is_cut() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    {
        let conn = raw(&path);
        let body_46 = stored_body(&conn, 46);
        set_body_and_hash(&conn, 45, &body_46);
    }
    reopen_expecting_cut(&path, &written, 44, 6, "event 45: body says seq 46");
}

#[test]
fn a_non_canonical_body_is_cut() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    {
        let conn = raw(&path);
        let event: CloudEvent = serde_json::from_slice(&stored_body(&conn, 45)).unwrap();
        set_body_and_hash(&conn, 45, &serde_json::to_vec_pretty(&event).unwrap());
    }
    reopen_expecting_cut(&path, &written, 44, 6, "event 45: body is not in canonical form");
}

#[test]
fn a_wrong_first_prevhash_cuts_everything() {
    let (_dir, path) = journal();
    let written = write_events(&path, 5);
    {
        let conn = raw(&path);
        let mut event: CloudEvent = serde_json::from_slice(&stored_body(&conn, 1)).unwrap();
        event.prevhash = "f".repeat(64);
        set_body_and_hash(&conn, 1, &event.canonical_bytes());
    }
    reopen_expecting_cut(&path, &written, 0, 5, "event 1: prevhash is not the genesis hash");
}

#[test]
fn a_deleted_middle_row_is_cut_at_the_gap() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    raw(&path).execute("DELETE FROM events WHERE seq = 42", []).unwrap();
    // Rows 43..=50 are deleted (8 of them); the next append fills seq 42.
    reopen_expecting_cut(&path, &written, 41, 8, "gap: expected 42, found 43");
}

#[test]
fn a_changed_subject_column_is_cut() {
    let (_dir, path) = journal();
    let written = write_events(&path, 20);
    raw(&path).execute("UPDATE events SET subject = 'w-other' WHERE seq = 12", []).unwrap();
    reopen_expecting_cut(&path, &written, 11, 9, "event 12: subject column does not match the body");
}

#[test]
fn only_events_after_the_latest_snapshot_are_verified() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    {
        let (store, _) = SqliteStore::open(&path).unwrap();
        store.put_snapshot(40, b"at 40").unwrap();
    }
    {
        let conn = raw(&path);
        let mut body = stored_body(&conn, 10);
        body[5] ^= 0x01;
        set_body(&conn, 10, &body);
    }
    // Event 10 is covered by the snapshot and trusted; the check starts at 41.
    let (_, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.verified_from_seq, 41);
    assert_eq!(report.repaired, None);
    assert_eq!(report.head, head_of(&written[49]));

    {
        let conn = raw(&path);
        let mut body = stored_body(&conn, 45);
        body[5] ^= 0x01;
        set_body(&conn, 45, &body);
    }
    let (_, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.verified_from_seq, 41);
    assert_eq!(report.repaired.unwrap().discarded_from_seq, 45);
    assert_eq!(report.head, head_of(&written[43]));
}

#[test]
fn snapshots_past_the_cut_are_dropped() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    {
        let (store, _) = SqliteStore::open(&path).unwrap();
        store.put_snapshot(30, b"at 30").unwrap();
        store.put_snapshot(48, b"at 48").unwrap();
    }
    {
        let conn = raw(&path);
        let mut body = stored_body(&conn, 49);
        body[5] ^= 0x01;
        set_body(&conn, 49, &body);
    }
    let store = reopen_expecting_cut(&path, &written, 48, 2, "event 49: hash mismatch");
    assert_eq!(store.latest_snapshot().unwrap(), Some((48, b"at 48".to_vec())));
    drop(store);

    // Now the latest snapshot's own event goes: the chain cannot be anchored there, so all of it
    // is checked, and the snapshot, which describes events no longer there, is dropped.
    raw(&path).execute("DELETE FROM events WHERE seq = 48", []).unwrap();
    let (store, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.verified_from_seq, 1);
    let repair = report.repaired.unwrap();
    assert_eq!(repair.discarded_from_seq, 48);
    assert_eq!(repair.n_discarded, 1);
    assert_eq!(repair.reason, "gap: expected 48, found 49");
    assert_eq!(report.head, head_of(&written[46]));
    assert_eq!(store.latest_snapshot().unwrap(), Some((30, b"at 30".to_vec())));
}

#[test]
fn only_the_latest_two_snapshots_are_kept() {
    let (_dir, path) = journal();
    write_events(&path, 10);
    {
        let (store, _) = SqliteStore::open(&path).unwrap();
        for seq in [2, 5, 7, 9] {
            store.put_snapshot(seq, format!("at {seq}").as_bytes()).unwrap();
        }
        assert_eq!(store.latest_snapshot().unwrap(), Some((9, b"at 9".to_vec())));
    }
    let kept: Vec<i64> = raw(&path)
        .prepare("SELECT seq FROM snapshots ORDER BY seq")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kept, vec![7, 9]);
}

#[test]
fn a_snapshot_ahead_of_the_head_is_refused() {
    let (_dir, path) = journal();
    let (store, _) = SqliteStore::open(&path).unwrap();
    store.append(vec![sample_event(1, None)]).unwrap();
    assert!(matches!(store.put_snapshot(2, b"future"), Err(StoreError::SnapshotAhead { seq: 2, head: 1 })));
    assert_eq!(store.latest_snapshot().unwrap(), None);
    store.put_snapshot(1, b"now").unwrap();
}

#[test]
fn a_failed_group_commit_does_not_advance_the_head() {
    let (_dir, path) = journal();
    let (store, _) = SqliteStore::open(&path).unwrap();
    let first = store.append(vec![sample_event(1, None)]).unwrap();
    let head = store.head().unwrap();

    // Another writer takes seq 2 behind the store's back: the store's insert of seq 2 fails
    // instead of overwriting it, and the whole batch is rolled back.
    let conn = raw(&path);
    conn.execute("INSERT INTO events (seq, subject, hash, body) VALUES (2, NULL, 'x', x'00')", []).unwrap();
    let failed = store.append(vec![sample_event(2, None), sample_event(3, None)]);
    assert!(matches!(failed, Err(StoreError::Append(_))), "{failed:?}");
    assert_eq!(store.head().unwrap(), head);
    assert_eq!(store.read_after(0, 1, None).unwrap(), first);

    conn.execute("DELETE FROM events WHERE seq = 2", []).unwrap();
    let next = store.append(vec![sample_event(2, None)]).unwrap();
    assert_eq!(next[0].seq, 2);
    assert_eq!(next[0].prevhash, first[0].hash());
    assert_eq!(read_all(&store).len(), 2);
}

#[test]
fn open_fails_cleanly_where_there_is_no_directory() {
    let (dir, _) = journal();
    let missing = dir.path().join("no-such-dir").join("journal.db");
    assert!(matches!(SqliteStore::open(&missing), Err(StoreError::Sqlite { operation: StoreOperation::Open, .. })));
}
