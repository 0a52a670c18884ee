//! The `Store` port: the journal's trait, and what it hands back (`Head`, `OpenReport`). A leaf
//! of this crate: the backend, the chain checks and the conformance suite all build on it.
//!
//! **Opening a journal: torn writes against damaged history.** Every backend checks the hash
//! chain when it opens a journal, and must tell two things apart:
//!
//! - *A torn last write*: a crash in the middle of an append. That append was never
//!   acknowledged (acknowledgement waits for durability), so dropping it loses nothing anyone
//!   was told about. A backend that *can* produce one must detect it and cut only that
//!   unacknowledged tail, by itself. In SQLite a torn write never reaches a row: the torn WAL
//!   frame is dropped by SQLite's own recovery (see `sqlite`'s module docs).
//! - *Damage to committed history*: a committed row whose hash, body, seq or subject does not
//!   verify, a missing row, a snapshot past the last event. That is disk damage or tampering,
//!   never a crash, and those events were acknowledged. Opening must refuse with
//!   [`StoreError::CorruptHistory`](crate::StoreError::CorruptHistory) naming the first bad seq
//!   and what failed, and change **nothing**: only an operator may discard acknowledged events
//!   (`warden journal repair --truncate-after N`, which saves what it discards and journals
//!   the repair, or a restore from a backup).
//!
//! The conformance suite holds every backend to this (`corrupt_history_is_refused_and_changes_nothing`).

use warden_core::canonical::Artifact;
use warden_core::{CloudEvent, NewEvent};

use crate::error::StoreError;

/// The last event in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// `seq` of the last event; 0 when the journal is empty.
    pub seq: u64,
    /// Hex SHA-256 of that event's canonical bytes (the next event's `prevhash`);
    /// `GENESIS_HASH` when the journal is empty.
    pub hash: String,
}

impl Head {
    /// The head of an empty journal.
    pub fn genesis() -> Head {
        Head { seq: 0, hash: warden_core::event::GENESIS_HASH.to_string() }
    }
}

/// What `open` found: a journal whose chain verified (a damaged one is an error, not a report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// The journal's head: its last committed event.
    pub head: Head,
    /// The first `seq` whose chain was checked; events below it are covered by the latest
    /// snapshot and were trusted. 1 when there is no snapshot.
    pub verified_from_seq: u64,
}

/// The journal port, with its artifact store. Implementations must pass [`conformance::run_all`](crate::conformance::run_all).
pub trait Store: Send + Sync + 'static {
    /// Appends atomically and durably (fsynced before returning) in order; assigns seq (global,
    /// from 1, no gaps) and prevhash. Returns the sealed events.
    fn append(&self, events: Vec<NewEvent>) -> Result<Vec<CloudEvent>, StoreError> {
        self.append_with_artifacts(Vec::new(), events)
    }

    /// Stores `artifacts` and appends `events` (as [`Store::append`]) in one atomic, durable
    /// transaction, so an event never refers to an artifact that was not kept. Artifacts are
    /// immutable: an id already stored is left as it is. Every artifact is checked against its
    /// id first; one that does not match fails the call with [`StoreError::ArtifactMismatch`]
    /// and nothing of it is written. Artifacts with no events are still written; both empty is
    /// a no-op.
    fn append_with_artifacts(&self, artifacts: Vec<Artifact>, events: Vec<NewEvent>) -> Result<Vec<CloudEvent>, StoreError>;

    /// The bytes of the artifact `id`, if stored. They are checked against `id` on every read: a
    /// mismatch is [`StoreError::ArtifactCorrupt`], never the damaged bytes.
    fn get_artifact(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Forgets the artifacts `ids` (those not stored are skipped); how many were there. Only
    /// for artifacts nothing will read again — superseded checkpoint blobs: events may still
    /// name them, as history. Not part of the hash chain, so the journal stays verifiable.
    fn delete_artifacts(&self, ids: Vec<String>) -> Result<usize, StoreError>;

    /// Events with seq > after_seq, ascending, at most `limit`; if `subject` is Some, only
    /// events with that subject.
    fn read_after(&self, after_seq: u64, limit: usize, subject: Option<&str>) -> Result<Vec<CloudEvent>, StoreError>;

    fn head(&self) -> Result<Head, StoreError>;

    /// Stores an opaque projection snapshot taken as of `seq` (replaces older ones; keeps only
    /// the latest 2).
    fn put_snapshot(&self, seq: u64, body: &[u8]) -> Result<(), StoreError>;

    /// The snapshot with the highest `seq`, if any.
    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
}
