//! A journal's tables exactly as SQLite stores them (untyped `Value`s, so damaged rows compare
//! too): what the store tests compare to show what a call changed, and what it did not.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::Connection;

/// Every row of every table, in key order.
#[derive(Debug, PartialEq)]
pub struct Stored {
    /// (seq, subject, hash, body)
    pub events: Vec<(Value, Value, Value, Value)>,
    /// (id, body)
    pub artifacts: Vec<(Value, Value)>,
    /// (seq, body)
    pub snapshots: Vec<(Value, Value)>,
}

pub fn stored(path: &Path) -> Stored {
    let conn = Connection::open(path).unwrap();
    let pairs = |sql: &str| -> Vec<(Value, Value)> {
        conn.prepare(sql).unwrap().query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    };
    let mut events = conn.prepare("SELECT seq, subject, hash, body FROM events ORDER BY seq").unwrap();
    let events =
        events.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().collect::<Result<_, _>>().unwrap();
    Stored {
        events,
        artifacts: pairs("SELECT id, body FROM artifacts ORDER BY id"),
        snapshots: pairs("SELECT seq, body FROM snapshots ORDER BY seq"),
    }
}
