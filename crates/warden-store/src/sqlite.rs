//! `SqliteStore`: the journal in one SQLite file, written by a single group-committing thread.
//!
//! Durability comes from SQLite itself: `journal_mode=WAL` with `synchronous=FULL` fsyncs the
//! WAL on every commit, so an acknowledged append survives a crash or power loss. Throughput
//! comes from group commit: one writer thread owns the write connection, takes every append
//! already queued, writes them in one transaction and pays for one fsync for all of them.
//! Reads go through a second connection, which WAL lets run alongside the writer.
//!
//! Artifacts live in their own table, keyed by content id, and are inserted by the same writer in
//! the same transaction as the events of the append that carries them.
//!
//! **A torn last write is SQLite's to cut; damaged history is the operator's.** A commit is
//! atomic: a crash in the middle of one leaves a torn frame at the end of the WAL, and SQLite's
//! recovery at the next open drops it (every WAL frame carries a checksum chained from the WAL
//! header and the header's salts, and only frames up to the last valid commit frame count). So
//! the previous commit is the head, and the torn append was never acknowledged, since the
//! acknowledgement waits for the commit's fsync. That is this store's "torn last write, cut
//! automatically", and it never shows up as a bad row. A committed row that fails the chain
//! check (`history::check_at_open`) is therefore damage or tampering: `open` refuses with
//! `StoreError::CorruptHistory` and changes nothing; `repair` holds the operator's tools.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Rows, TransactionBehavior};
use warden_core::canonical::{sha256_hex, Artifact};
use warden_core::{CloudEvent, NewEvent};

use crate::error::{During, StoreError, StoreOperation};
use crate::group_commit::{Backend, GroupCommit, Pending};
use crate::history::{check_at_open, from_sql, to_sql};
use crate::port::{Head, OpenReport, Store};

/// Bumped when the schema changes, so an older warden refuses a journal it cannot read.
/// Still 1 with the `artifacts` table: that table is additive (`CREATE TABLE IF NOT EXISTS`), so
/// an older journal gains it on open, and nothing about the existing tables changed.
pub(crate) const SCHEMA_VERSION: i64 = 1;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    subject TEXT,
    hash    TEXT NOT NULL,
    body    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_subject_seq ON events (subject, seq);
CREATE TABLE IF NOT EXISTS snapshots (
    seq  INTEGER PRIMARY KEY,
    body BLOB
);
CREATE TABLE IF NOT EXISTS artifacts (
    id   TEXT PRIMARY KEY,
    body BLOB NOT NULL
) WITHOUT ROWID;
";

/// The most rows (events and artifacts) one group commit takes from the queue. Bounds the
/// latency of the appenders at the front of the queue and the size of one transaction; a single
/// larger batch is still written whole, since an append is atomic.
const GROUP_CAP: usize = 4096;

/// How many snapshots are kept: the latest, and one to fall back on.
const KEEP_SNAPSHOTS: i64 = 2;

/// Checkpoints briefly lock out readers; wait for them rather than fail.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite journal. See the module docs.
#[derive(Debug)]
pub struct SqliteStore {
    writer: GroupCommit,
    reader: Mutex<Connection>,
    /// Advanced by the writer after each commit, before it replies.
    head: Arc<Mutex<Head>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the journal at `path`, verifies the hash chain after the latest
    /// snapshot, and starts the writer thread. A chain that does not verify is
    /// [`StoreError::CorruptHistory`], and then nothing was changed (see the module docs).
    pub fn open(path: &Path) -> Result<(SqliteStore, OpenReport), StoreError> {
        make_private(path).during(StoreOperation::Open)?;
        let mut conn = Connection::open(path).during(StoreOperation::Open)?;
        configure_writer(&conn)?;
        migrate(&mut conn)?;
        let report = check_at_open(&conn, path)?;

        // Opened after the writer switched the file to WAL (a persistent mode), so it reads
        // alongside the writer instead of blocking it.
        let reader = Connection::open(path).during(StoreOperation::Open)?;
        reader.busy_timeout(BUSY_TIMEOUT).during(StoreOperation::Open)?;
        reader.pragma_update(None, "query_only", true).during(StoreOperation::Open)?;

        let head = Arc::new(Mutex::new(report.head.clone()));
        let writer = Writer { conn, head: report.head.clone(), shared_head: Arc::clone(&head) };
        let writer = GroupCommit::start("warden-journal", writer, GROUP_CAP)?;

        let store = SqliteStore { writer, reader: Mutex::new(reader), head };
        Ok((store, report))
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while reading leaves the connection usable: every read is one statement.
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for SqliteStore {
    fn append_with_artifacts(&self, artifacts: Vec<Artifact>, events: Vec<NewEvent>) -> Result<Vec<CloudEvent>, StoreError> {
        self.writer.append(artifacts, events)
    }

    fn get_artifact(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let op = StoreOperation::ReadArtifact;
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT body FROM artifacts WHERE id = ?1").during(op)?;
        let mut rows = stmt.query([id]).during(op)?;
        let Some(row) = rows.next().during(op)? else {
            return Ok(None);
        };
        let corrupt = || StoreError::ArtifactCorrupt { id: id.to_owned() };
        // SQLite does not enforce column types; a body that became TEXT is still checked by content.
        let bytes = match row.get_ref(0).during(op)? {
            ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes,
            _ => return Err(corrupt()),
        };
        if !Artifact::verify(id, bytes) {
            return Err(corrupt());
        }
        Ok(Some(bytes.to_vec()))
    }

    fn read_after(&self, after_seq: u64, limit: usize, subject: Option<&str>) -> Result<Vec<CloudEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = to_sql(after_seq);
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let op = StoreOperation::ReadEvents;
        let conn = self.reader();
        let mut out = Vec::with_capacity(limit.min(1024));
        match subject {
            None => {
                let mut stmt =
                    conn.prepare_cached("SELECT seq, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2").during(op)?;
                collect_events(stmt.query(params![after, limit_sql]).during(op)?, &mut out)?;
            }
            Some(subject) => {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT seq, body FROM events WHERE subject = ?3 AND seq > ?1 \
                         ORDER BY seq LIMIT ?2",
                    )
                    .during(op)?;
                collect_events(stmt.query(params![after, limit_sql, subject]).during(op)?, &mut out)?;
            }
        }
        Ok(out)
    }

    fn head(&self) -> Result<Head, StoreError> {
        Ok(self.head.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    fn put_snapshot(&self, seq: u64, body: &[u8]) -> Result<(), StoreError> {
        self.writer.put_snapshot(seq, body)
    }

    fn delete_artifacts(&self, ids: Vec<String>) -> Result<usize, StoreError> {
        self.writer.delete_artifacts(ids)
    }

    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let op = StoreOperation::ReadSnapshot;
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT seq, body FROM snapshots ORDER BY seq DESC LIMIT 1").during(op)?;
        let found = stmt
            .query_row([], |row| Ok((from_sql(row.get(0)?), row.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default())))
            .optional()
            .during(op)?;
        Ok(found)
    }
}

/// The thread that owns the write connection.
struct Writer {
    conn: Connection,
    /// The last committed event; only the writer changes it, so it needs no lock here.
    head: Head,
    shared_head: Arc<Mutex<Head>>,
}

impl Backend for Writer {
    /// Writes `group` in one transaction and answers every waiter in it: all succeed or all fail.
    fn commit_group(&mut self, group: Vec<Pending>) {
        // `seal` panics only on an event that cannot serialize; that must fail this group, not
        // kill the writer (and with it every later append).
        match catch_unwind(AssertUnwindSafe(|| self.write_group(&group))) {
            Ok(Ok((sealed, head))) => {
                *self.shared_head.lock().unwrap_or_else(PoisonError::into_inner) = head.clone();
                self.head = head;
                for (pending, events) in group.into_iter().zip(sealed) {
                    let _ = pending.reply.send(Ok(events));
                }
            }
            Ok(Err(error)) => {
                let error = Arc::new(error);
                for pending in group {
                    let _ = pending.reply.send(Err(StoreError::Append(Arc::clone(&error))));
                }
            }
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                for pending in group {
                    let _ = pending.reply.send(Err(StoreError::WriterPanicked(message.clone())));
                }
            }
        }
    }

    fn delete_artifacts(&mut self, ids: &[String]) -> Result<usize, StoreError> {
        let delete = |conn: &mut Connection| -> rusqlite::Result<usize> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut deleted = 0;
            for id in ids {
                deleted += tx.prepare_cached("DELETE FROM artifacts WHERE id = ?1")?.execute([id])?;
            }
            tx.commit()?;
            Ok(deleted)
        };
        delete(&mut self.conn).during(StoreOperation::DeleteArtifacts)
    }

    fn put_snapshot(&mut self, seq: u64, body: &[u8]) -> Result<(), StoreError> {
        // A snapshot past the head would describe events that do not exist, and open would
        // anchor the chain check on a row that is not there.
        if seq > self.head.seq {
            return Err(StoreError::SnapshotAhead { seq, head: self.head.seq });
        }
        let put = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached("INSERT OR REPLACE INTO snapshots (seq, body) VALUES (?1, ?2)")?
                .execute(params![to_sql(seq), body])?;
            tx.prepare_cached(
                "DELETE FROM snapshots WHERE seq NOT IN \
                 (SELECT seq FROM snapshots ORDER BY seq DESC LIMIT ?1)",
            )?
            .execute([KEEP_SNAPSHOTS])?;
            tx.commit()
        };
        put(&mut self.conn).during(StoreOperation::PutSnapshot)
    }
}

impl Writer {
    /// Inserts every artifact of `group`, seals and inserts every event after `self.head`, and
    /// commits: each append's artifacts go in before its events, in the same transaction. Does
    /// not touch `self.head`: on error the transaction rolls back and the head stays where it was.
    fn write_group(&mut self, group: &[Pending]) -> rusqlite::Result<(Vec<Vec<CloudEvent>>, Head)> {
        if !self.conn.is_autocommit() {
            // Only after a panic whose unwinding failed to roll back; start from a clean state.
            self.conn.execute_batch("ROLLBACK")?;
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut seq = self.head.seq;
        let mut prev_hash = self.head.hash.clone();
        let mut sealed_groups = Vec::with_capacity(group.len());
        {
            // Plain INSERT, not INSERT OR REPLACE: if anything else ever wrote this file, a
            // duplicate seq fails the group instead of overwriting the chain.
            let mut insert = tx.prepare_cached("INSERT INTO events (seq, subject, hash, body) VALUES (?1, ?2, ?3, ?4)")?;
            // Artifacts are immutable and content-addressed: an id already stored names the same
            // bytes, so it is left as it is.
            let mut insert_artifact = tx.prepare_cached("INSERT OR IGNORE INTO artifacts (id, body) VALUES (?1, ?2)")?;
            for pending in group {
                for artifact in &pending.artifacts {
                    insert_artifact.execute(params![artifact.id, artifact.bytes])?;
                }
                let mut sealed = Vec::with_capacity(pending.events.len());
                for new in &pending.events {
                    seq += 1;
                    let event = CloudEvent::seal(new, seq, &prev_hash);
                    let body = event.canonical_bytes();
                    let hash = sha256_hex(&body);
                    insert.execute(params![to_sql(seq), event.subject, hash, body])?;
                    prev_hash = hash;
                    sealed.push(event);
                }
                sealed_groups.push(sealed);
            }
        }
        // With synchronous=FULL this is the fsync; nobody hears back before it returns.
        tx.commit()?;
        Ok((sealed_groups, Head { seq, hash: prev_hash }))
    }
}

pub(crate) fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    let op = StoreOperation::Open;
    conn.busy_timeout(BUSY_TIMEOUT).during(op)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).during(op)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal(mode));
    }
    // FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and an
    // acknowledged event must never be lost.
    conn.pragma_update(None, "synchronous", "FULL").during(op)
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let op = StoreOperation::Open;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).during(op)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaVersion(version));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).during(op)?;
    tx.execute_batch(SCHEMA).during(op)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION).during(op)?;
    tx.commit().during(op)
}

fn collect_events(mut rows: Rows<'_>, out: &mut Vec<CloudEvent>) -> Result<(), StoreError> {
    let op = StoreOperation::ReadEvents;
    while let Some(row) = rows.next().during(op)? {
        let seq = from_sql(row.get(0).during(op)?);
        let event: CloudEvent = match row.get_ref(1).during(op)? {
            ValueRef::Blob(bytes) | ValueRef::Text(bytes) => {
                serde_json::from_slice(bytes).map_err(|source| StoreError::Undecodable { seq, source })?
            }
            _ => return Err(StoreError::Corrupt { seq, reason: "body is not a blob".into() }),
        };
        if event.seq != seq {
            return Err(StoreError::Corrupt { seq, reason: format!("body says seq {}", event.seq) });
        }
        out.push(event);
    }
    Ok(())
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic".to_string()
    }
}

/// Makes a SQLite file and its `-wal` and `-shm` readable by their owner only (0600): creates
/// the file empty with that mode if it is missing (SQLite takes an empty file as a new
/// database, and creates its `-wal` and `-shm` with the database file's mode), and tightens
/// them if they exist (data dirs of older versions had them 0644). Fails as SQLite's
/// "cannot open" would, naming the file.
pub fn make_private(path: &Path) -> rusqlite::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |name: &std::ffi::OsStr, e: std::io::Error| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("cannot make {} readable by its owner only (0600): {e}", Path::new(name).display())),
        )
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed(path.as_os_str(), e))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(&name, e)),
            _ => {}
        }
    }
    Ok(())
}
