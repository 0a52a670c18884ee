//! The `Store` port: the journal's trait, and what it hands back (`Head`, `OpenReport`,
//! `TailRepair`). A leaf of this crate: the backend, the chain checks and the conformance suite
//! all build on it.

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

/// What opening the journal cut off because the chain broke there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailRepair {
    /// The first `seq` no longer in the journal: the next append gets this `seq`.
    pub discarded_from_seq: u64,
    /// How many rows were deleted (with a gap, fewer than `head - discarded_from_seq + 1`).
    pub n_discarded: u64,
    /// Why the chain broke there, e.g. `event 42: hash mismatch`.
    pub reason: String,
}

/// What `open` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// The journal's head after any repair.
    pub head: Head,
    /// `Some` when a corrupt or torn tail was cut off.
    pub repaired: Option<TailRepair>,
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
