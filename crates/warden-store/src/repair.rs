//! The operator's tools for a damaged SQLite journal, run with the server stopped (`warden
//! journal verify|repair`): the whole chain checked from seq 1, and a truncation after a seq,
//! journaled as an event in the same transaction.
//!
//! `SqliteStore::open` refuses damaged history and changes nothing (see `port`'s docs); these
//! are the only code that discards committed events, and only on an operator's word. A repair
//! goes in two steps so nothing is lost for good: [`OfflineJournal::plan_truncate_after`]
//! verifies 1..=N and reads every row it would discard (raw, damaged ones included), the caller
//! saves them, and only then [`OfflineJournal::truncate_after`] deletes them, drops the
//! snapshots past N, and seals the caller's repair event as seq N+1, in one transaction.

use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use warden_core::canonical::sha256_hex;
use warden_core::{CloudEvent, NewEvent};

use crate::error::{During, StoreError, StoreOperation};
use crate::history::{find_damage, from_sql, latest_snapshot_seq, stored_from, to_sql};
use crate::port::Head;
use crate::sqlite::{configure_writer, SCHEMA_VERSION};

/// Why a repair was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("{} is not a warden journal (it has no journal schema)", path.display())]
    NotAJournal { path: PathBuf },

    #[error(
        "the journal's chain verifies from seq 1 to its last event {last_seq}: there is nothing to repair \
         (`repair` discards damaged history only; to go back in time, restore a backup)"
    )]
    NothingToRepair { last_seq: u64 },

    #[error(
        "the chain is already broken at event {seq} ({reason}), which --truncate-after {truncate_after} would keep: \
         truncate after {} or earlier",
        seq - 1
    )]
    BrokenBefore { seq: u64, reason: String, truncate_after: u64 },

    #[error("the journal changed between its check and the truncation (is something else writing to it?); nothing was changed")]
    Changed,
}

/// Where the chain stops verifying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The first seq the chain cannot vouch for (a missing row's seq, for a gap).
    pub seq: u64,
    /// What is wrong there, e.g. `event 17: hash mismatch`.
    pub reason: String,
    /// How many events are stored from `seq` on.
    pub n_from_seq: u64,
}

/// The whole chain, checked from seq 1 (`warden journal verify`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainCheck {
    /// Rows in the journal.
    pub n_events: u64,
    /// The highest seq stored (0: none).
    pub last_seq: u64,
    /// The last event of the chain that verified from genesis (genesis if none did).
    pub verified_through: Head,
    /// `None`: every event from 1 to `last_seq` verified, and no snapshot is past it.
    pub damage: Option<Damage>,
    pub latest_snapshot_seq: Option<u64>,
}

/// One stored row as it is, for the file a repair saves: every column as JSON (text as a
/// string, bytes that are not UTF-8 as `{"hex": …}`, a column that lost its type as what it
/// now is), so damaged rows are kept as faithfully as good ones.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiscardedRow {
    pub seq: u64,
    pub subject: serde_json::Value,
    pub hash: serde_json::Value,
    pub body: serde_json::Value,
}

/// What [`OfflineJournal::truncate_after`] will do, checked and read by
/// [`OfflineJournal::plan_truncate_after`].
#[derive(Clone, Debug, PartialEq)]
pub struct TruncatePlan {
    /// N: events 1..=N are kept; they verified from genesis.
    pub truncate_after: u64,
    /// Event N (genesis for N = 0): the repair event's `prevhash`.
    pub keep_head: Head,
    /// The first damage found after N.
    pub damage: Damage,
    /// Every row after N, in seq order.
    pub discarded: Vec<DiscardedRow>,
    /// Snapshots past N, which describe discarded events and are dropped.
    pub n_snapshots_dropped: u64,
}

/// A journal opened by an operator's tool, not by a server: no writer thread, no check at open.
/// The caller holds the data dir's lock, so no server writes meanwhile.
pub struct OfflineJournal {
    conn: Connection,
}

impl OfflineJournal {
    /// Opens the existing journal at `path` (never creates one).
    pub fn open(path: &Path) -> Result<OfflineJournal, RepairError> {
        let op = StoreOperation::Repair;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).during(op)?;
        // WAL and synchronous=FULL, as the server writes: the truncation is durable when it returns.
        configure_writer(&conn)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).during(op)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaVersion(version).into());
        }
        if version == 0 {
            return Err(RepairError::NotAJournal { path: path.to_path_buf() });
        }
        Ok(OfflineJournal { conn })
    }

    /// Checks the whole chain from seq 1, ignoring snapshots (at open only the events after the
    /// latest snapshot are checked; damage before it shows here).
    pub fn check(&self) -> Result<ChainCheck, StoreError> {
        let op = StoreOperation::Repair;
        // One read transaction: the counts and the walk see the same journal.
        let tx = self.conn.unchecked_transaction().during(op)?;
        let (verified_through, damage) = find_damage(&tx, Head::genesis()).during(op)?;
        let damage = match damage {
            Some((seq, reason)) => Some(Damage { seq, reason, n_from_seq: stored_from(&tx, seq).during(op)?.0 }),
            None => None,
        };
        let (n_events, last_seq) = stored_from(&tx, 0).during(op)?;
        let latest_snapshot_seq = latest_snapshot_seq(&tx).during(op)?;
        Ok(ChainCheck { n_events, last_seq, verified_through, damage, latest_snapshot_seq })
    }

    /// Checks that truncating after `truncate_after` repairs the journal (events 1..=N verify,
    /// and there is damage after N) and reads every row it would discard.
    pub fn plan_truncate_after(&self, truncate_after: u64) -> Result<TruncatePlan, RepairError> {
        let op = StoreOperation::Repair;
        let check = self.check()?;
        let Some(damage) = check.damage else {
            return Err(RepairError::NothingToRepair { last_seq: check.last_seq });
        };
        if damage.seq <= truncate_after {
            return Err(RepairError::BrokenBefore { seq: damage.seq, reason: damage.reason, truncate_after });
        }
        // 1..damage.seq-1 verified from genesis, and N is below damage.seq: N's stored hash is
        // the chain's.
        let keep_head = head_at(&self.conn, truncate_after)?;
        let mut discarded = Vec::new();
        let mut stmt = self.conn.prepare("SELECT seq, subject, hash, body FROM events WHERE seq > ?1 ORDER BY seq").during(op)?;
        let mut rows = stmt.query([to_sql(truncate_after)]).during(op)?;
        while let Some(row) = rows.next().during(op)? {
            discarded.push(DiscardedRow {
                seq: from_sql(row.get(0).during(op)?),
                subject: column_json(row.get_ref(1).during(op)?),
                hash: column_json(row.get_ref(2).during(op)?),
                body: column_json(row.get_ref(3).during(op)?),
            });
        }
        let n_snapshots_dropped: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM snapshots WHERE seq > ?1", [to_sql(truncate_after)], |row| row.get(0))
            .during(op)?;
        Ok(TruncatePlan { truncate_after, keep_head, damage, discarded, n_snapshots_dropped: from_sql(n_snapshots_dropped) })
    }

    /// Carries out `plan` in one durable transaction: deletes every event after N and every
    /// snapshot past N, and appends `repair` (the operator's `JournalRepaired`) as seq N+1,
    /// chained to event N. Refuses, changing nothing, if the journal is no longer what `plan`
    /// read. Returns the sealed repair event.
    pub fn truncate_after(&mut self, plan: &TruncatePlan, repair: &NewEvent) -> Result<CloudEvent, RepairError> {
        let op = StoreOperation::Repair;
        let n = plan.truncate_after;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).during(op)?;
        let head_now = head_at(&tx, n)?;
        let (n_after_now, _) = stored_from(&tx, n + 1).during(op)?;
        let last_now: Option<i64> = tx.query_row("SELECT MAX(seq) FROM events", [], |row| row.get(0)).during(op)?;
        let last_planned = plan.discarded.last().map_or(n, |row| row.seq);
        if head_now != plan.keep_head
            || n_after_now != plan.discarded.len() as u64
            || last_now.map_or(0, from_sql).max(n) != last_planned
        {
            return Err(RepairError::Changed);
        }
        tx.execute("DELETE FROM events WHERE seq > ?1", [to_sql(n)]).during(op)?;
        tx.execute("DELETE FROM snapshots WHERE seq > ?1", [to_sql(n)]).during(op)?;
        let sealed = CloudEvent::seal(repair, n + 1, &plan.keep_head.hash);
        let body = sealed.canonical_bytes();
        tx.execute(
            "INSERT INTO events (seq, subject, hash, body) VALUES (?1, ?2, ?3, ?4)",
            params![to_sql(n + 1), sealed.subject, sha256_hex(&body), body],
        )
        .during(op)?;
        // With synchronous=FULL this is the fsync.
        tx.commit().during(op)?;
        Ok(sealed)
    }
}

/// Event `seq`'s stored hash as a head (genesis for 0); a missing or non-text hash reads as "".
fn head_at(conn: &Connection, seq: u64) -> Result<Head, StoreError> {
    if seq == 0 {
        return Ok(Head::genesis());
    }
    let hash: Option<String> = conn
        .query_row("SELECT CAST(hash AS TEXT) FROM events WHERE seq = ?1", [to_sql(seq)], |row| row.get(0))
        .optional()
        .during(StoreOperation::Repair)?
        .flatten();
    Ok(Head { seq, hash: hash.unwrap_or_default() })
}

/// A column as JSON, as faithfully as it is stored.
fn column_json(value: ValueRef<'_>) -> serde_json::Value {
    match value {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(n) => n.into(),
        ValueRef::Real(x) => x.into(),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text.into(),
            Err(_) => serde_json::json!({ "hex": hex::encode(bytes) }),
        },
    }
}
