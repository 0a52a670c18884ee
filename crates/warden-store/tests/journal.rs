//! `SqliteStore` beyond the port's contract: durability across reopen; the chain check at open,
//! which refuses damaged committed history and changes nothing; the operator's repair
//! (`OfflineJournal`); and a torn last write, which SQLite's WAL recovery cuts by itself.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use tempfile::TempDir;
use warden_core::canonical::sha256_hex;
use warden_core::event::GENESIS_HASH;
use warden_core::{CloudEvent, EventData, NewEvent};
use warden_store::conformance::sample_event;

#[path = "support/stored.rs"]
mod stored;
use stored::stored;
use warden_store::{
    verify_chain, Head, OfflineJournal, RepairError, SqliteStore, Store, StoreError, StoreOperation, TruncatePlan,
};

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

/// Reopens a damaged journal: open refuses, naming `seq`, `reason` and how many events are
/// stored from there, tells the operator both ways out, and changes no row.
fn reopen_expecting_refusal(path: &Path, seq: u64, reason: &str, n_from_seq: u64) -> StoreError {
    let before = stored(path);
    let error = SqliteStore::open(path).expect_err("a damaged journal must not open");
    match &error {
        StoreError::CorruptHistory { journal, seq: found_seq, reason: found_reason, n_from_seq: found_n, .. } => {
            assert_eq!(journal, path);
            assert_eq!((*found_seq, found_reason.as_str(), *found_n), (seq, reason, n_from_seq));
        }
        other => panic!("expected CorruptHistory, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&format!("is damaged: {reason}; ")), "{message}");
    assert!(
        message.contains(&format!(
            "warden journal repair --data-dir {} --truncate-after {}",
            path.parent().unwrap().display(),
            seq - 1
        )),
        "{message}"
    );
    assert!(message.contains("`warden restore`"), "{message}");
    assert_eq!(stored(path), before, "a refused open changed the journal");
    error
}

/// Flips one bit in the middle of event `seq`'s stored body.
fn flip_bit(path: &Path, seq: u64) {
    let conn = raw(path);
    let mut body = stored_body(&conn, seq);
    let middle = body.len() / 2;
    body[middle] ^= 0x01;
    set_body(&conn, seq, &body);
}

/// The operator's repair event, as `warden journal repair` writes it.
fn repair_event(plan: &TruncatePlan) -> NewEvent {
    NewEvent {
        id: "evt-repair".into(),
        source: "/warden/journal-repair".into(),
        time_ms: 1_800_000_000_000,
        subject: None,
        data: EventData::JournalRepaired {
            truncated_after: plan.truncate_after,
            n_discarded: plan.discarded.len() as u64,
            first_bad_seq: plan.damage.seq,
            reason: plan.damage.reason.clone(),
            saved_to: "journal.discarded.jsonl".into(),
            operator: "test".into(),
        },
    }
}

/// Truncates after `n` offline, as `warden journal repair --truncate-after n` does.
fn repair(path: &Path, n: u64) -> (TruncatePlan, CloudEvent) {
    let mut journal = OfflineJournal::open(path).unwrap();
    let plan = journal.plan_truncate_after(n).unwrap();
    let sealed = journal.truncate_after(&plan, &repair_event(&plan)).unwrap();
    (plan, sealed)
}

#[test]
fn reopen_keeps_head_events_and_snapshot() {
    let (_dir, path) = journal();
    let written = write_events(&path, 100);
    {
        let (store, report) = SqliteStore::open(&path).unwrap();
        assert_eq!(report.head, head_of(&written[99]));
        store.put_snapshot(60, b"projection@60").unwrap();
    }

    let (store, report) = SqliteStore::open(&path).unwrap();
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
fn a_flipped_bit_in_committed_history_is_refused_and_nothing_is_cut() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    flip_bit(&path, 45);
    reopen_expecting_refusal(&path, 45, "event 45: hash mismatch", 6);
    // Refused again: nothing was cut the first time.
    reopen_expecting_refusal(&path, 45, "event 45: hash mismatch", 6);

    // Flipped back, the journal is exactly what was written.
    flip_bit(&path, 45);
    let (store, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.head, head_of(&written[49]));
    assert_eq!(read_all(&store), written);
}

#[test]
fn changed_data_in_a_body_is_refused() {
    let (_dir, path) = journal();
    write_events(&path, 50);
    {
        let conn = raw(&path);
        let mut event: CloudEvent = serde_json::from_slice(&stored_body(&conn, 45)).unwrap();
        event.data = serde_json::json!({"truncated_after": 1, "n_discarded": 999});
        set_body(&conn, 45, &event.canonical_bytes());
    }
    reopen_expecting_refusal(&path, 45, "event 45: hash mismatch", 6);
}

#[test]
fn a_rewritten_event_with_a_fresh_hash_is_caught_by_the_next_prevhash() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    let mut rewritten: CloudEvent = written[44].clone();
    rewritten.id = "rewritten".into();
    set_body_and_hash(&raw(&path), 45, &rewritten.canonical_bytes());
    // Event 45 is self-consistent now (it still points at 44); its successor no longer points
    // at it, so the damage is found at 46: the chain cannot tell a rewritten event from a
    // genuine one until something points at it.
    reopen_expecting_refusal(&path, 46, "event 46: prevhash does not match event 45", 5);
}

#[test]
fn a_body_cut_short_with_a_matching_hash_is_refused() {
    let (_dir, path) = journal();
    write_events(&path, 10);
    {
        let conn = raw(&path);
        let body = stored_body(&conn, 8);
        set_body_and_hash(&conn, 8, &body[..body.len() - 5]);
    }
    let error = SqliteStore::open(&path).unwrap_err();
    let StoreError::CorruptHistory { seq, reason, n_from_seq, last_seq, .. } = error else { panic!("{error:?}") };
    assert_eq!((seq, n_from_seq, last_seq), (8, 3, 10));
    assert!(reason.starts_with("event 8: body is not an event"), "{reason}");
}

#[test]
fn a_body_claiming_another_seq_is_refused() {
    let (_dir, path) = journal();
    write_events(&path, 50);
    {
        let conn = raw(&path);
        let body_46 = stored_body(&conn, 46);
        set_body_and_hash(&conn, 45, &body_46);
    }
    reopen_expecting_refusal(&path, 45, "event 45: body says seq 46", 6);
}

#[test]
fn a_non_canonical_body_is_refused() {
    let (_dir, path) = journal();
    write_events(&path, 50);
    {
        let conn = raw(&path);
        let event: CloudEvent = serde_json::from_slice(&stored_body(&conn, 45)).unwrap();
        set_body_and_hash(&conn, 45, &serde_json::to_vec_pretty(&event).unwrap());
    }
    reopen_expecting_refusal(&path, 45, "event 45: body is not in canonical form", 6);
}

#[test]
fn a_wrong_first_prevhash_is_refused_at_event_1() {
    let (_dir, path) = journal();
    write_events(&path, 5);
    {
        let conn = raw(&path);
        let mut event: CloudEvent = serde_json::from_slice(&stored_body(&conn, 1)).unwrap();
        event.prevhash = "f".repeat(64);
        set_body_and_hash(&conn, 1, &event.canonical_bytes());
    }
    reopen_expecting_refusal(&path, 1, "event 1: prevhash is not the genesis hash", 5);
}

#[test]
fn a_deleted_middle_row_is_refused_at_the_gap() {
    let (_dir, path) = journal();
    write_events(&path, 50);
    raw(&path).execute("DELETE FROM events WHERE seq = 42", []).unwrap();
    // Rows 43..=50 are stored from the missing 42 on.
    reopen_expecting_refusal(&path, 42, "gap: expected 42, found 43", 8);
}

#[test]
fn a_changed_subject_column_is_refused() {
    let (_dir, path) = journal();
    write_events(&path, 20);
    raw(&path).execute("UPDATE events SET subject = 'w-other' WHERE seq = 12", []).unwrap();
    reopen_expecting_refusal(&path, 12, "event 12: subject column does not match the body", 9);
}

#[test]
fn rows_deleted_from_the_end_are_refused_when_a_snapshot_proves_they_were_there() {
    let (_dir, path) = journal();
    write_events(&path, 50);
    {
        let (store, _) = SqliteStore::open(&path).unwrap();
        store.put_snapshot(30, b"at 30").unwrap();
        store.put_snapshot(48, b"at 48").unwrap();
    }
    raw(&path).execute("DELETE FROM events WHERE seq >= 48", []).unwrap();
    reopen_expecting_refusal(
        &path,
        48,
        "the latest snapshot is as of seq 48, past the last event 47: committed events after it are gone",
        0,
    );

    // The repair keeps 1..=47, drops the snapshot that describes events no longer there, and
    // journals itself as 48.
    let (plan, sealed) = repair(&path, 47);
    assert!(plan.discarded.is_empty());
    assert_eq!(plan.n_snapshots_dropped, 1);
    assert_eq!(sealed.seq, 48);
    let (store, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.head, head_of(&sealed));
    assert_eq!(store.latest_snapshot().unwrap(), Some((30, b"at 30".to_vec())));
}

#[test]
fn open_checks_only_after_the_latest_snapshot_and_the_offline_check_covers_all_of_it() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    {
        let (store, _) = SqliteStore::open(&path).unwrap();
        store.put_snapshot(40, b"at 40").unwrap();
    }
    flip_bit(&path, 10);
    // Event 10 is covered by the snapshot and trusted at open; the check starts at 41.
    let (store, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.verified_from_seq, 41);
    assert_eq!(report.head, head_of(&written[49]));
    drop(store);

    // `warden journal verify` walks from seq 1 and finds it.
    let check = OfflineJournal::open(&path).unwrap().check().unwrap();
    assert_eq!((check.n_events, check.last_seq, check.latest_snapshot_seq), (50, 50, Some(40)));
    assert_eq!(check.verified_through, head_of(&written[8]));
    let damage = check.damage.unwrap();
    assert_eq!((damage.seq, damage.reason.as_str(), damage.n_from_seq), (10, "event 10: hash mismatch", 41));

    // Damage after the snapshot is refused at open.
    flip_bit(&path, 10);
    flip_bit(&path, 45);
    reopen_expecting_refusal(&path, 45, "event 45: hash mismatch", 6);
}

#[test]
fn a_repair_saves_every_discarded_row_truncates_and_the_chain_verifies_again() {
    let (_dir, path) = journal();
    let written = write_events(&path, 50);
    {
        let (store, _) = SqliteStore::open(&path).unwrap();
        store.put_snapshot(30, b"at 30").unwrap();
        store.put_snapshot(43, b"at 43").unwrap();
    }
    flip_bit(&path, 45);
    let damaged_body = stored_body(&raw(&path), 45);
    reopen_expecting_refusal(&path, 45, "event 45: hash mismatch", 6);

    // Further back than the damage, past the snapshot at 43, which goes with the events it covers.
    let (plan, sealed) = repair(&path, 42);
    assert_eq!(plan.damage.seq, 45);
    assert_eq!(plan.keep_head, head_of(&written[41]));
    assert_eq!(plan.n_snapshots_dropped, 1);
    // Every discarded row is kept as stored, the damaged one included.
    assert_eq!(plan.discarded.iter().map(|row| row.seq).collect::<Vec<_>>(), (43..=50).collect::<Vec<_>>());
    assert_eq!(plan.discarded[2].body, serde_json::Value::String(String::from_utf8(damaged_body).unwrap()));
    assert_eq!(plan.discarded[3].body, serde_json::Value::String(String::from_utf8(written[45].canonical_bytes()).unwrap()));
    assert_eq!(plan.discarded[3].hash, serde_json::Value::String(written[45].hash()));

    // The repair event is seq 43, chained to 42, and says what was done.
    assert_eq!((sealed.seq, sealed.prevhash.as_str()), (43, written[41].hash().as_str()));
    assert_eq!(sealed.event_type, "dev.warden.journal.repaired.v1");
    let EventData::JournalRepaired { truncated_after, n_discarded, first_bad_seq, reason, .. } = sealed.typed_data().unwrap()
    else {
        panic!("{sealed:?}")
    };
    assert_eq!((truncated_after, n_discarded, first_bad_seq, reason.as_str()), (42, 8, 45, "event 45: hash mismatch"));

    let (store, report) = SqliteStore::open(&path).unwrap();
    assert_eq!(report.head, head_of(&sealed));
    let mut expected = written[..42].to_vec();
    expected.push(sealed.clone());
    let all = read_all(&store);
    assert_eq!(all, expected);
    assert_eq!(verify_chain(&all, GENESIS_HASH), Ok(()));
    assert_eq!(store.latest_snapshot().unwrap(), Some((30, b"at 30".to_vec())));
    assert_eq!(store.append(vec![sample_event(9_999, None)]).unwrap()[0].seq, 44);
    drop(store);
    assert_eq!(OfflineJournal::open(&path).unwrap().check().unwrap().damage, None);
}

#[test]
fn a_repair_of_a_gap_and_of_event_1() {
    let (_dir, path) = journal();
    write_events(&path, 50);
    raw(&path).execute("DELETE FROM events WHERE seq = 42", []).unwrap();
    let (plan, sealed) = repair(&path, 41);
    assert_eq!(plan.discarded.len(), 8);
    assert_eq!(sealed.seq, 42);
    let (store, _) = SqliteStore::open(&path).unwrap();
    assert_eq!(verify_chain(&read_all(&store), GENESIS_HASH), Ok(()));
    drop(store);

    let (_dir, path) = journal();
    write_events(&path, 5);
    flip_bit(&path, 1);
    let (plan, sealed) = repair(&path, 0);
    assert_eq!((plan.discarded.len(), plan.keep_head.clone()), (5, Head::genesis()));
    assert_eq!((sealed.seq, sealed.prevhash.as_str()), (1, GENESIS_HASH));
    let (store, _) = SqliteStore::open(&path).unwrap();
    assert_eq!(read_all(&store), vec![sealed]);
}

#[test]
fn a_repair_refuses_to_keep_damage_or_to_cut_a_sound_journal() {
    let (_dir, path) = journal();
    write_events(&path, 20);
    let journal = OfflineJournal::open(&path).unwrap();
    assert!(matches!(journal.plan_truncate_after(5), Err(RepairError::NothingToRepair { last_seq: 20 })));
    drop(journal);

    flip_bit(&path, 12);
    let before = stored(&path);
    let journal = OfflineJournal::open(&path).unwrap();
    for n in [12, 15, 30] {
        match journal.plan_truncate_after(n) {
            Err(error @ RepairError::BrokenBefore { seq: 12, .. }) => {
                assert!(error.to_string().contains("truncate after 11 or earlier"), "{error}");
            }
            other => panic!("--truncate-after {n}: expected BrokenBefore at 12, got {other:?}"),
        }
    }
    // Further back than needed is the operator's call.
    assert_eq!(journal.plan_truncate_after(8).unwrap().discarded.len(), 12);
    drop(journal);
    assert_eq!(stored(&path), before);
}

#[test]
fn a_repair_whose_journal_changed_after_the_check_changes_nothing() {
    let (_dir, path) = journal();
    write_events(&path, 20);
    flip_bit(&path, 12);
    let mut journal = OfflineJournal::open(&path).unwrap();
    let plan = journal.plan_truncate_after(11).unwrap();
    raw(&path).execute("DELETE FROM events WHERE seq = 20", []).unwrap();
    let before = stored(&path);
    assert!(matches!(journal.truncate_after(&plan, &repair_event(&plan)), Err(RepairError::Changed)));
    drop(journal);
    assert_eq!(stored(&path), before);
}

#[test]
fn the_offline_tools_open_only_an_existing_journal() {
    let (dir, path) = journal();
    assert!(matches!(
        OfflineJournal::open(&path),
        Err(RepairError::Store(StoreError::Sqlite { operation: StoreOperation::Repair, .. }))
    ));
    assert!(!path.exists(), "the offline tools created a journal");
    let other = dir.path().join("other.db");
    Connection::open(&other).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
    assert!(matches!(OfflineJournal::open(&other), Err(RepairError::NotAJournal { .. })));
}

/// A crash in the middle of a commit leaves a torn frame at the end of the WAL. SQLite's own
/// recovery drops it, and with it the commit it ended: the previous commit is the head, the
/// chain verifies, and nothing is reported as damage. This is the torn last write this store
/// can produce, and the only one it cuts.
#[test]
fn a_torn_last_wal_frame_is_dropped_by_sqlite_and_is_not_damage() {
    let (dir, path) = journal();
    let (store, _) = SqliteStore::open(&path).unwrap();
    let mut written = Vec::new();
    for n in 1..=20 {
        // One commit each.
        written.extend(store.append(vec![sample_event(n, Some("w-torn"))]).unwrap());
    }
    // The files as a crash would leave them: taken while the store is open, so nothing is
    // checkpointed (dropping the store would checkpoint and remove the WAL).
    let crashed = dir.path().join("crashed");
    std::fs::create_dir(&crashed).unwrap();
    let copy = crashed.join("journal.db");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::copy(path.with_extension("db-wal"), copy.with_extension("db-wal")).unwrap();
    drop(store);

    // Tear the WAL's last frame (the last commit's commit frame) in the middle.
    let wal_path = copy.with_extension("db-wal");
    let wal = std::fs::read(&wal_path).unwrap();
    let page_size = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
    let frame_size = 24 + page_size;
    assert!(wal.len() > 32 + frame_size && (wal.len() - 32).is_multiple_of(frame_size), "WAL of {} bytes", wal.len());
    std::fs::write(&wal_path, &wal[..wal.len() - frame_size / 2]).unwrap();

    let (store, report) = SqliteStore::open(&copy).expect("a torn last write is not damage");
    assert_eq!(report.head, head_of(&written[18]), "the torn commit (event 20) is gone, event 19 is the head");
    let all = read_all(&store);
    assert_eq!(all, written[..19]);
    assert_eq!(verify_chain(&all, GENESIS_HASH), Ok(()));
    assert_eq!(store.append(vec![sample_event(99, None)]).unwrap()[0].seq, 20);
    drop(store);
    assert_eq!(OfflineJournal::open(&copy).unwrap().check().unwrap().damage, None);
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
