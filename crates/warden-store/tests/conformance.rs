//! Runs the `Store` conformance suite against `SqliteStore`, each check on a fresh journal file.

use std::path::PathBuf;

use tempfile::TempDir;
use warden_store::conformance::{self, Damageable};
use warden_store::{Head, SqliteStore, StoreError};

/// A fresh journal in its own temporary directory; keep the directory alive as long as the store.
fn fresh() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = SqliteStore::open(&dir.path().join("journal.db")).unwrap();
    assert_eq!(report.head, Head::genesis());
    assert_eq!(report.verified_from_seq, 1);
    (store, dir)
}

#[test]
fn sqlite_store_passes_the_conformance_suite() {
    let mut dirs = Vec::new();
    conformance::run_all(&mut || {
        let (store, dir) = fresh();
        dirs.push(dir);
        store
    });
}

// The same checks one by one, so a failure names itself in the test list.

#[test]
fn empty_store_is_at_genesis() {
    conformance::empty_store_is_at_genesis(&fresh().0);
}

#[test]
fn seq_starts_at_one_without_gaps() {
    conformance::seq_starts_at_one_without_gaps(&fresh().0);
}

#[test]
fn prevhash_chains() {
    conformance::prevhash_chains(&fresh().0);
}

#[test]
fn sealed_events_carry_what_was_appended() {
    conformance::sealed_events_carry_what_was_appended(&fresh().0);
}

#[test]
fn empty_append_is_a_no_op() {
    conformance::empty_append_is_a_no_op(&fresh().0);
}

#[test]
fn concurrent_appends_are_contiguous() {
    conformance::concurrent_appends_are_contiguous(&fresh().0);
}

#[test]
fn read_after_limit_and_subject() {
    conformance::read_after_limit_and_subject(&fresh().0);
}

#[test]
fn snapshot_round_trip() {
    conformance::snapshot_round_trip(&fresh().0);
}

#[test]
fn sealed_events_equal_read_back() {
    conformance::sealed_events_equal_read_back(&fresh().0);
}

#[test]
fn artifacts_round_trip_and_are_immutable() {
    conformance::artifacts_round_trip_and_are_immutable(&fresh().0);
}

/// One journal file, damaged with plain SQL while no store has it open.
struct SqliteJournal {
    _dir: TempDir,
    path: PathBuf,
}

impl Damageable for SqliteJournal {
    type Store = SqliteStore;

    fn open(&mut self) -> Result<SqliteStore, StoreError> {
        SqliteStore::open(&self.path).map(|(store, _)| store)
    }

    fn flip_bit_in_event(&mut self, seq: u64) {
        let conn = rusqlite::Connection::open(&self.path).unwrap();
        let mut body: Vec<u8> = conn.query_row("SELECT body FROM events WHERE seq = ?1", [seq], |row| row.get(0)).unwrap();
        let middle = body.len() / 2;
        body[middle] ^= 0x01;
        conn.execute("UPDATE events SET body = ?2 WHERE seq = ?1", rusqlite::params![seq, body]).unwrap();
    }
}

#[test]
fn corrupt_history_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    conformance::corrupt_history_is_refused_and_changes_nothing(&mut SqliteJournal { _dir: dir, path });
}
