//! The store's error (`StoreError`) and what the store was doing when SQLite failed
//! (`StoreOperation`): a leaf, shared by the port and its backend.

use std::fmt;
use std::sync::Arc;

/// What the store was doing when SQLite failed: the first half of a [`StoreError::Sqlite`]'s
/// message (`could not read events: …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOperation {
    /// Opening the file, setting it up (WAL, `synchronous=FULL`) or migrating its schema.
    Open,
    /// Checking the hash chain at open, and cutting a broken tail.
    VerifyChain,
    ReadEvents,
    ReadArtifact,
    DeleteArtifacts,
    PutSnapshot,
    ReadSnapshot,
    /// Writing a journal rebuilt from a backup (`backup::import`).
    Restore,
}

impl fmt::Display for StoreOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreOperation::Open => "open the journal",
            StoreOperation::VerifyChain => "check the journal's hash chain",
            StoreOperation::ReadEvents => "read events",
            StoreOperation::ReadArtifact => "read an artifact",
            StoreOperation::DeleteArtifacts => "delete artifacts",
            StoreOperation::PutSnapshot => "store a snapshot",
            StoreOperation::ReadSnapshot => "read the latest snapshot",
            StoreOperation::Restore => "write the restored journal",
        })
    }
}

/// Tags a SQLite failure with what the store was doing.
pub(crate) trait During<T> {
    fn during(self, operation: StoreOperation) -> Result<T, StoreError>;
}

impl<T> During<T> for rusqlite::Result<T> {
    fn during(self, operation: StoreOperation) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { operation, source })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed while the store did `operation`.
    #[error("could not {operation}: the journal's SQLite database failed")]
    Sqlite {
        operation: StoreOperation,
        #[source]
        source: rusqlite::Error,
    },

    /// The group commit this append was part of failed; none of the group's events were written.
    /// Shared because every waiter in the group gets the same error.
    #[error("append failed and nothing in its group commit was written")]
    Append(#[source] Arc<rusqlite::Error>),

    /// The writer thread panicked while writing this append's group; nothing in it was written.
    #[error("the journal writer panicked, nothing in its group commit was written: {0}")]
    WriterPanicked(String),

    #[error("journal is corrupt at event {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },

    /// A stored event whose body does not decode as an event (damage on disk).
    #[error("journal is corrupt at event {seq}: its body is not an event")]
    Undecodable {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },

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

    #[error("could not start the journal writer thread")]
    Spawn(#[source] std::io::Error),

    /// The store is shutting down, or its writer thread is gone.
    #[error("the store is closed")]
    Closed,
}
