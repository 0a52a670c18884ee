//! `DurableQueue`: a small, durable FIFO of opaque messages — the agent's outbound report queue.
//!
//! A cluster agent learns facts about its cells (started, failed to start, exited) that only it
//! knows; it pushes each one here *before* anything else happens with it, and sends what is
//! pending to the control plane with its next heartbeat. Only when an answer acknowledges a
//! sequence number (`acked_reports_through`) are the messages up to it dropped. So a fact
//! survives a crash of the agent, of the control plane, or of the link between them, and is
//! delivered at least once; the sequence number lets the receiver drop repeats.
//!
//! One table in one SQLite file, `journal_mode=WAL` with `synchronous=FULL`: a `push` that
//! returned is on disk (the WAL is fsynced on every commit) and survives a power cut. Sequence
//! numbers start at 1 and are never handed out twice, not even after every message was
//! acknowledged and the file reopened (`AUTOINCREMENT`: SQLite keeps the high-water mark), so the
//! receiver may treat "seq ≤ the last one I journaled" as "already seen".
//!
//! Synchronous, like the rest of this crate: `push` waits for an fsync. Callers on an async
//! runtime call it from a blocking thread.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection};

/// Bumped when the schema changes, so an older agent refuses a queue it cannot read.
const SCHEMA_VERSION: i64 = 1;

/// `AUTOINCREMENT`, not a plain `INTEGER PRIMARY KEY`: the latter reuses the largest rowid once
/// it was deleted, and a reused seq would read as "already acknowledged" to the receiver.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL
);
";

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the queue was doing when SQLite failed: the first half of a [`QueueError::Sqlite`]'s
/// message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueOperation {
    /// Opening the file, setting it up (WAL, `synchronous=FULL`) or creating its table.
    Open,
    Push,
    ReadPending,
    AckThrough,
    Count,
}

impl fmt::Display for QueueOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueOperation::Open => "open the queue file",
            QueueOperation::Push => "push a message",
            QueueOperation::ReadPending => "read the pending messages",
            QueueOperation::AckThrough => "drop the acknowledged messages",
            QueueOperation::Count => "count the pending messages",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// SQLite failed while the queue did `operation`.
    #[error("could not {operation}: the queue's SQLite database failed")]
    Sqlite {
        operation: QueueOperation,
        #[source]
        source: rusqlite::Error,
    },
    #[error("queue file is in journal mode {0:?} and cannot be switched to WAL")]
    NoWal(String),
    #[error("queue file has schema version {0}, newer than this warden understands")]
    SchemaVersion(i64),
}

/// A durable FIFO of byte strings, numbered from 1; see the module docs.
pub struct DurableQueue {
    conn: Mutex<Connection>,
}

impl DurableQueue {
    /// Opens (creating if needed) the queue file at `path`.
    pub fn open(path: &Path) -> Result<DurableQueue, QueueError> {
        let op = QueueOperation::Open;
        crate::sqlite::make_private(path).during(op)?;
        let mut conn = Connection::open(path).during(op)?;
        conn.busy_timeout(BUSY_TIMEOUT).during(op)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).during(op)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(QueueError::NoWal(mode));
        }
        // FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a
        // pushed message must never be lost.
        conn.pragma_update(None, "synchronous", "FULL").during(op)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).during(op)?;
        if version > SCHEMA_VERSION {
            return Err(QueueError::SchemaVersion(version));
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).during(op)?;
        tx.execute_batch(SCHEMA).during(op)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).during(op)?;
        tx.commit().during(op)?;
        Ok(DurableQueue { conn: Mutex::new(conn) })
    }

    /// Appends one message and returns its sequence number once it is durable. Numbers start
    /// at 1, grow by one per push, and are never reused.
    pub fn push(&self, body: &[u8]) -> Result<u64, QueueError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.execute("INSERT INTO queue (body) VALUES (?1)", params![body]).during(QueueOperation::Push)?;
        Ok(conn.last_insert_rowid() as u64)
    }

    /// Up to `limit` messages not yet acknowledged, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, QueueError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let read = || -> rusqlite::Result<Vec<(u64, Vec<u8>)>> {
            let mut statement = conn.prepare_cached("SELECT seq, body FROM queue ORDER BY seq LIMIT ?1")?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows =
                statement.query_map(params![limit], |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, Vec<u8>>(1)?)))?;
            rows.collect()
        };
        read().during(QueueOperation::ReadPending)
    }

    /// Drops every message with `seq` ≤ `seq`, durably. Idempotent; acknowledging beyond the
    /// last message pushed drops everything (and does not move the numbering).
    pub fn ack_through(&self, seq: u64) -> Result<(), QueueError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.execute("DELETE FROM queue WHERE seq <= ?1", params![i64::try_from(seq).unwrap_or(i64::MAX)])
            .during(QueueOperation::AckThrough)?;
        Ok(())
    }

    /// How many messages are waiting.
    pub fn len(&self) -> Result<u64, QueueError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let n = conn.query_row("SELECT COUNT(*) FROM queue", [], |row| row.get::<_, i64>(0)).during(QueueOperation::Count)?;
        Ok(n as u64)
    }

    pub fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len()? == 0)
    }
}

/// Tags a SQLite failure with what the queue was doing.
trait During<T> {
    fn during(self, operation: QueueOperation) -> Result<T, QueueError>;
}

impl<T> During<T> for rusqlite::Result<T> {
    fn during(self, operation: QueueOperation) -> Result<T, QueueError> {
        self.map_err(|source| QueueError::Sqlite { operation, source })
    }
}
