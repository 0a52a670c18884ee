//! The store's error (`StoreError`) and what the store was doing when SQLite failed
//! (`StoreOperation`): a leaf, shared by the port and its backend.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// What the store was doing when SQLite failed: the first half of a [`StoreError::Sqlite`]'s
/// message (`could not read events: …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOperation {
    /// Opening the file, setting it up (WAL, `synchronous=FULL`) or migrating its schema.
    Open,
    /// Checking the hash chain at open (which never changes anything).
    VerifyChain,
    /// An operator's `warden journal verify|repair`: the whole chain checked from seq 1, and a
    /// truncation after a seq with the repair journaled.
    Repair,
    ReadEvents,
    ReadArtifact,
    DeleteArtifacts,
    PutSnapshot,
    ReadSnapshot,
    /// Writing a journal rebuilt from a backup (`backup::import`).
    Restore,
    /// Appending events (a backend other than SQLite, which reports append failures as
    /// [`StoreError::Append`]).
    Append,
}

impl fmt::Display for StoreOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreOperation::Open => "open the journal",
            StoreOperation::VerifyChain => "check the journal's hash chain",
            StoreOperation::Repair => "repair the journal",
            StoreOperation::ReadEvents => "read events",
            StoreOperation::ReadArtifact => "read an artifact",
            StoreOperation::DeleteArtifacts => "delete artifacts",
            StoreOperation::PutSnapshot => "store a snapshot",
            StoreOperation::ReadSnapshot => "read the latest snapshot",
            StoreOperation::Restore => "write the restored journal",
            StoreOperation::Append => "append to the journal",
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

    /// Opening found committed history that does not verify: a row whose hash, body, seq or
    /// subject is wrong, a missing row, or a snapshot past the last event. Committed rows cannot
    /// be torn (see `sqlite`'s module docs), so this is damage or tampering, and the store
    /// changed nothing: only an operator may discard acknowledged events.
    #[error("{}", corrupt_history_text(journal, *seq, reason, *last_seq, *n_from_seq))]
    CorruptHistory {
        /// The journal's file; for a journal in etcd, `etcd://<endpoints>/<prefix>` (see
        /// [`ETCD_JOURNAL_SCHEME`]).
        journal: PathBuf,
        /// The first seq the chain cannot vouch for (a missing row's seq, for a gap).
        seq: u64,
        /// What is wrong there, e.g. `event 17: hash mismatch`.
        reason: String,
        /// The highest seq stored (below `seq` when rows past the end are gone).
        last_seq: u64,
        /// How many committed events are stored from `seq` on: what a truncation would discard.
        n_from_seq: u64,
    },

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

    /// A backend other than SQLite (etcd) failed while the store did `operation`; shared, because
    /// every waiter of a group commit gets the same error. For an append, nothing of it was
    /// acknowledged (and readers see nothing of it).
    #[error("could not {operation}: {backend} failed: {source}")]
    Backend { operation: StoreOperation, backend: &'static str, source: Arc<dyn std::error::Error + Send + Sync> },

    /// A write was refused because this store's fence no longer holds: the fence key is gone or
    /// was created again (another process became the writer). Never retried: the caller must stop
    /// writing.
    #[error("fenced: write refused because {key} is no longer at create revision {create_revision} (another writer took over)")]
    Fenced { key: String, create_revision: i64 },

    /// The journal's head moved under this store (another writer appended): its append was
    /// refused and nothing of it was acknowledged.
    #[error(
        "the journal's head moved under this store (expected seq {expected_seq}, found seq {found_seq}): another writer appended"
    )]
    HeadMoved { expected_seq: u64, found_seq: u64 },

    /// The store is shutting down, or its writer thread is gone.
    #[error("the store is closed")]
    Closed,
}

/// How a [`StoreError::CorruptHistory`]'s `journal` starts when the journal is in etcd.
pub const ETCD_JOURNAL_SCHEME: &str = "etcd://";

/// What an operator reads when `warden up` refuses a damaged journal: where, what, what is at
/// stake, and the two ways out.
fn corrupt_history_text(journal: &std::path::Path, seq: u64, reason: &str, last_seq: u64, n_from_seq: u64) -> String {
    if journal.to_str().is_some_and(|j| j.starts_with(ETCD_JOURNAL_SCHEME)) {
        return format!(
            "journal {} is damaged: {reason}; {}. Committed history in etcd is never torn (an append is \
             acknowledged only once etcd moved the head past it), so this is damage or tampering: nothing was \
             changed and warden will not write to this journal until an operator decides. Restore it from a \
             backup (`warden restore`)",
            journal.display(),
            at_stake_text(seq, last_seq, n_from_seq),
        );
    }
    let data_dir = journal.parent().map_or_else(|| ".".into(), |dir| dir.display().to_string());
    let at_stake = at_stake_text(seq, last_seq, n_from_seq);
    format!(
        "journal {} is damaged: {reason}; {at_stake}. Committed history cannot be torn by a crash, so \
         this is disk damage or tampering: nothing was changed and warden will not write to this journal until an \
         operator decides. Either restore the data dir from a backup (`warden restore`), or discard event {seq} and \
         everything after it with `warden journal repair --data-dir {data_dir} --truncate-after {}` (it saves what \
         it discards to a file beside the journal and journals the repair); `warden journal verify --data-dir \
         {data_dir}` checks the whole chain",
        journal.display(),
        seq.saturating_sub(1),
    )
}

/// What a truncation before `seq` would discard.
fn at_stake_text(seq: u64, last_seq: u64, n_from_seq: u64) -> String {
    match n_from_seq {
        0 => format!("no event from {seq} on is left (the last is {last_seq})"),
        1 => format!("1 committed event is stored from seq {seq} to {last_seq}"),
        n => format!("{n} committed events are stored from seq {seq} to {last_seq}"),
    }
}
