//! The `Store` port — warden's append-only, hash-chained event journal — and its embedded SQLite backend.
//!
//! The journal is the source of truth: every state change is an event appended here before it is
//! acted on, and state after a crash is a fold over what the journal kept. So a `Store` must
//! (a) never acknowledge an append before it is durable, (b) hand out `seq` values that are
//! global, start at 1 and have no gaps, and (c) chain every event to the one before it
//! (`prevhash`), so damaged or tampered history is detected when the journal is opened again
//! (and refused: see `port`'s docs on torn writes against damaged history).
//!
//! Next to the journal the store keeps immutable, content-addressed artifacts (job manifests,
//! context snapshots): written in the same transaction as the events that refer to them, so an
//! event never names an artifact that was not kept, and checked against their id on every read.
//!
//! The store is synchronous on purpose: durability means waiting on fsync, which is blocking
//! work; the runtime calls it from a blocking thread.

pub mod backup;
pub mod chain;
pub mod conformance;
pub mod error;
pub mod group_commit;
mod history;
pub mod port;
pub mod queue;
pub mod repair;
pub mod sqlite;

pub use chain::{
    check_stored_event, verify_chain, verify_signed_chain, BrokenEvent, ChainError, ChainVerifier, SignedHead, Verified,
};
pub use error::{StoreError, StoreOperation, ETCD_JOURNAL_SCHEME};
pub use port::{Head, OpenReport, Store};
pub use repair::{ChainCheck, Damage, DiscardedRow, OfflineJournal, RepairError, TruncatePlan};
pub use sqlite::SqliteStore;
