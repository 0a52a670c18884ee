//! The `Store` port — warden's append-only, hash-chained event journal — and its embedded SQLite backend.
//!
//! The journal is the source of truth: every state change is an event appended here before it is
//! acted on, and state after a crash is a fold over what the journal kept. So a `Store` must
//! (a) never acknowledge an append before it is durable, (b) hand out `seq` values that are
//! global, start at 1 and have no gaps, and (c) chain every event to the one before it
//! (`prevhash`), so a torn or tampered tail is detected when the journal is opened again.
//!
//! Next to the journal the store keeps immutable, content-addressed artifacts (job manifests,
//! context snapshots): written in the same transaction as the events that refer to them, so an
//! event never names an artifact that was not kept, and checked against their id on every read.
//!
//! The store is synchronous on purpose: durability means waiting on fsync, which is blocking
//! work; the runtime calls it from a blocking thread.

pub mod chain;
pub mod conformance;
pub mod queue;
pub mod sqlite;

use std::sync::Arc;

use warden_core::canonical::Artifact;
use warden_core::{CloudEvent, NewEvent};

pub use chain::{verify_chain, verify_signed_chain, ChainError, ChainVerifier, SignedHead, Verified};
pub use sqlite::SqliteStore;

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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The group commit this append was part of failed; none of the group's events were written.
    /// Shared because every waiter in the group gets the same error.
    #[error("append failed and nothing in its group commit was written: {0}")]
    Append(#[source] Arc<rusqlite::Error>),

    /// The writer thread panicked while writing this append's group; nothing in it was written.
    #[error("the journal writer panicked, nothing in its group commit was written: {0}")]
    WriterPanicked(String),

    #[error("journal is corrupt at event {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },

    /// A snapshot can only describe events that are in the journal.
    #[error("snapshot as of seq {seq} is ahead of the journal head {head}")]
    SnapshotAhead { seq: u64, head: u64 },

    /// An artifact handed to `append_with_artifacts` whose id is not the hash of its bytes; that
    /// call wrote nothing.
    #[error("artifact {id} does not match its bytes: its id must be sha256:<hex of the bytes>")]
    ArtifactMismatch { id: String },

    /// A stored artifact whose bytes no longer hash to its id (damage on disk); never returned.
    #[error("artifact {id} is corrupt: its bytes do not hash to its id")]
    ArtifactCorrupt { id: String },

    #[error("could not put the journal in WAL mode (journal_mode is {0:?})")]
    NoWal(String),

    #[error("journal schema version {0} is newer than this warden understands")]
    SchemaVersion(i64),

    #[error("could not start the journal writer thread: {0}")]
    Spawn(#[source] std::io::Error),

    /// The store is shutting down, or its writer thread is gone.
    #[error("the store is closed")]
    Closed,
}

/// The journal port, with its artifact store. Implementations must pass [`conformance::run_all`].
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
