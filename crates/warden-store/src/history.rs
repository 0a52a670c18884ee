//! Walking a SQLite journal's committed history: the check `SqliteStore::open` runs after the
//! latest snapshot (refusing damage, changing nothing), and the walk from seq 1 the operator's
//! tools in `repair` run. Reads only: nothing here writes.

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row};

use crate::chain::{check_row, BrokenRow, StoredRow};
use crate::error::{During, StoreError, StoreOperation};
use crate::port::{Head, OpenReport};

/// The chain walked over stored rows: how far it verified, and where it broke, if it did.
struct Walk {
    /// The last row that verified (the anchor if none did).
    last_good: Head,
    /// The seq the chain needed next but could not have (a missing row's seq, for a gap), and why.
    broken: Option<(u64, BrokenRow)>,
}

/// Walks the rows after `anchor` in seq order, and stops at the first row that is not the event
/// the chain needs next.
fn walk_chain(conn: &Connection, anchor: Head) -> rusqlite::Result<Walk> {
    let mut last_good = anchor;
    let mut stmt = conn.prepare("SELECT seq, subject, hash, body FROM events WHERE seq > ?1 ORDER BY seq")?;
    let mut rows = stmt.query([to_sql(last_good.seq)])?;
    while let Some(row) = rows.next()? {
        let seq = from_sql(row.get(0)?);
        let expected = last_good.seq + 1;
        let verdict = if seq != expected {
            Err(BrokenRow::Gap { expected, found: seq })
        } else {
            stored_row(seq, row)?
                .and_then(|stored| check_row(expected, &last_good.hash, &stored).map(|()| stored.hash.to_owned()))
        };
        match verdict {
            Ok(hash) => last_good = Head { seq, hash },
            Err(why) => return Ok(Walk { last_good, broken: Some((expected, why)) }),
        }
    }
    Ok(Walk { last_good, broken: None })
}

/// Checks the chain after the latest snapshot, and that no snapshot is past the last event.
/// Changes nothing: damage is [`StoreError::CorruptHistory`], for an operator to decide on.
pub(crate) fn check_at_open(conn: &Connection, journal: &Path) -> Result<OpenReport, StoreError> {
    let op = StoreOperation::VerifyChain;
    let anchor = chain_anchor(conn).during(op)?;
    let verified_from_seq = anchor.seq + 1;
    let (head, damage) = find_damage(conn, anchor).during(op)?;
    if let Some((seq, reason)) = damage {
        let (n_from_seq, last_seq) = stored_from(conn, seq).during(op)?;
        return Err(StoreError::CorruptHistory { journal: journal.to_path_buf(), seq, reason, last_seq, n_from_seq });
    }
    Ok(OpenReport { head, verified_from_seq })
}

/// Walks the chain after `anchor` to the end: the last event that verified, and the first seq
/// the chain cannot vouch for with why, if there is one.
///
/// **Snapshots past the last event are damage, never dropped.** `put_snapshot` refuses a seq
/// past the head, and a snapshot is committed after the events it covers, so one past the last
/// stored event proves that committed events at the end are gone (a torn write cannot do that:
/// SQLite's WAL recovery keeps a prefix of commits, and the snapshot's commit came after its
/// events'). It is also the only evidence of that loss, which deleting it would erase.
pub(crate) fn find_damage(conn: &Connection, anchor: Head) -> rusqlite::Result<(Head, Option<(u64, String)>)> {
    let walk = walk_chain(conn, anchor)?;
    let head = walk.last_good;
    if let Some((seq, why)) = walk.broken {
        return Ok((head, Some((seq, why.reason()))));
    }
    if let Some(snapshot) = latest_snapshot_seq(conn)?.filter(|&seq| seq > head.seq) {
        let reason = format!(
            "the latest snapshot is as of seq {snapshot}, past the last event {}: committed events after it are gone",
            head.seq
        );
        let seq = head.seq + 1;
        return Ok((head, Some((seq, reason))));
    }
    Ok((head, None))
}

/// How many events are stored from `seq` on, and the highest seq stored (0: none).
pub(crate) fn stored_from(conn: &Connection, seq: u64) -> rusqlite::Result<(u64, u64)> {
    let (n_from_seq, last_seq): (i64, Option<i64>) =
        conn.query_row("SELECT COUNT(*), (SELECT MAX(seq) FROM events) FROM events WHERE seq >= ?1", [to_sql(seq)], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    Ok((from_sql(n_from_seq), last_seq.map_or(0, from_sql)))
}

/// The highest snapshot seq, if any.
pub(crate) fn latest_snapshot_seq(conn: &Connection) -> rusqlite::Result<Option<u64>> {
    let seq: Option<i64> = conn.query_row("SELECT MAX(seq) FROM snapshots", [], |row| row.get(0))?;
    Ok(seq.map(from_sql))
}

/// Where the chain check starts: the latest snapshot's event, whose stored hash is trusted, or
/// genesis. If the snapshot's event is missing the whole journal is checked instead (and the
/// snapshot is then past the last good event, which is refused).
fn chain_anchor(conn: &Connection) -> rusqlite::Result<Head> {
    let Some(snapshot) = latest_snapshot_seq(conn)?.filter(|&seq| seq > 0) else {
        return Ok(Head::genesis());
    };
    let hash: Option<String> = conn
        .query_row("SELECT hash FROM events WHERE seq = ?1", [to_sql(snapshot)], |row| row.get(0))
        .optional()
        // A hash that is not even text is damage; let the full check find it.
        .or_else(|error| match error {
            rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..) => Ok(None),
            other => Err(other),
        })?;
    Ok(match hash {
        Some(hash) => Head { seq: snapshot, hash },
        None => Head::genesis(),
    })
}

/// The columns of a row as `check_row` wants them, or why they cannot be (wrong types).
pub(crate) fn stored_row<'r>(seq: u64, row: &'r Row<'_>) -> rusqlite::Result<Result<StoredRow<'r>, BrokenRow>> {
    let subject = match row.get_ref(1)? {
        ValueRef::Null => None,
        ValueRef::Text(text) => match std::str::from_utf8(text) {
            Ok(text) => Some(text),
            Err(_) => return Ok(Err(BrokenRow::SubjectNotUtf8 { seq })),
        },
        _ => return Ok(Err(BrokenRow::SubjectNotText { seq })),
    };
    let hash = match row.get_ref(2)? {
        ValueRef::Text(text) => std::str::from_utf8(text).unwrap_or(""),
        _ => return Ok(Err(BrokenRow::HashMismatch { seq })),
    };
    // SQLite does not enforce column types; a body that became TEXT is still checked by content.
    let body = match row.get_ref(3)? {
        ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes,
        _ => return Ok(Err(BrokenRow::BodyNotBlob { seq })),
    };
    Ok(Ok(StoredRow { seq, subject, hash, body }))
}

/// SQLite integers are i64; seqs never get near `i64::MAX`, and a larger bound means "all".
pub(crate) fn to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Every stored seq is positive (rows are only read with `seq > n >= 0`).
pub(crate) fn from_sql(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}
