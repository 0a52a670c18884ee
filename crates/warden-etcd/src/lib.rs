//! `EtcdStore`: warden's journal on an etcd cluster — a second implementation of the `Store`
//! port, held to the same conformance suite as `SqliteStore`. `warden up|server --store
//! etcd://…` (a binary built with `--features etcd`) keeps its journal here; leader election
//! and standby servers are a later slice (the [`Fence`] is their hook).
//!
//! **Keys**, under a prefix (one warden cluster per prefix):
//!
//! - `<prefix>/e/<seq, zero-padded to 20>`: one key per event; its value is exactly what
//!   SQLite stores for it (the canonical event JSON), so the hash chain and `seq` are the same.
//! - `<prefix>/head`: `{seq, hash}` of the last acknowledged event.
//! - `<prefix>/a/<id>/c/<n>`: an artifact's chunks (at most 1 MiB each, under etcd's 1.5 MiB
//!   request limit), and `<prefix>/a/<id>/m` its manifest (size, chunk count), written last.
//! - `<prefix>/s/<seq>/c/<n>` and `<prefix>/s/<seq>/m`: a snapshot, chunked the same way;
//!   `<prefix>/snapshot` points at the latest. The latest two are kept.
//!
//! **Appends**: one writer thread group-commits appends from every thread (like SQLite's). An
//! append is acknowledged only when a transaction that compares the head key's `mod_revision`
//! (unchanged since the writer read it) and moves the head succeeds. A group too large for one
//! transaction (etcd's default limit is 128 operations and 1.5 MiB) writes its artifacts and
//! event keys in earlier transactions guarded by the same compare, and moves the head in the
//! last: readers and `open` trust only event keys up to the head, so keys past it are a torn,
//! unacknowledged tail. `open` deletes them (the only thing it may cut), and the next append
//! overwrites them anyway. A transient failure (a member down, an etcd leader election) is
//! retried for up to 10 s; the compares make a retry of an applied transaction fail instead of
//! applying twice, and the writer then recognises its own head. With a [`Fence`] every write
//! also compares the fence key's `create_revision`, and a failure because of it is
//! `StoreError::Fenced`, not retried — the hook for leader election's fencing.
//!
//! When etcd stays unreachable past the retries, the append fails though its last transaction
//! may have landed. The writer then reads the head again before the next group: if it is still
//! its own, nothing happened; if the failed append did land, later appends fail with
//! `StoreError::HeadMoved` (the engine exits 70 on the first failure anyway, and a reopen
//! finds the events). Artifacts of a failed group may stay behind, unnamed by any event: they
//! are content-addressed and immutable, like artifacts appended with no events.
//!
//! **Open** verifies the chain from the latest snapshot (or seq 1) up to the head with the
//! checks SQLite's open runs (`warden_store::check_stored_event`). Damaged committed history —
//! a changed event value, an event key missing below the head, a snapshot past the head — is
//! `StoreError::CorruptHistory` naming the first bad seq, and changes nothing. Since the value is
//! the canonical bytes alone, a changed value that still parses is caught by the next event's
//! `prevhash` (or by the head key), and that next link tells which of the two events changed.
//!
//! **Space.** etcd keeps every revision of every key until it is compacted, in a database
//! limited by `--quota-backend-bytes` (2 GiB by default). An event costs about
//! [`MEASURED_BYTES_PER_EVENT`] bytes of etcd's database — measured by the `bytes_per_event`
//! test (455–495 bytes over runs) for events of 325 bytes of JSON appended in groups of 8: the
//! value, its key, the head key's new revision per group, bbolt's overhead. So the default quota
//! holds roughly 2 GiB / 480 ≈ 4.4 million such events (proportionally fewer for bigger events).
//! Events are never deleted (backups and `verify` read from seq 1);
//! compacting old revisions reclaims the head key's superseded revisions and deleted
//! snapshots and artifacts. This store does not compact by itself yet (compaction is
//! cluster-wide, and a later slice's standbys watch from their head): run etcd with
//! `--auto-compaction-retention`. At the quota etcd raises its `NOSPACE` alarm and answers every write
//! with "mvcc: database space exceeded": appends fail (not retried), and the engine exits 70 as
//! for any journal I/O failure. The operator then compacts and defragments etcd (`etcdctl
//! compact`, `etcdctl defrag`, `etcdctl alarm disarm`) or raises `--quota-backend-bytes`.

mod conn;
mod layout;
mod open;
mod store;
mod writer;

pub use conn::Fence;
pub use store::EtcdStore;

/// Bytes of etcd's database per journal event, as measured by the `bytes_per_event` test (and
/// checked there to stay within 2x of this figure): what the crate docs' capacity estimate uses.
pub const MEASURED_BYTES_PER_EVENT: u64 = 480;
