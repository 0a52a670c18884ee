//! The store's one writer thread: group commit of appends into etcd transactions that move the
//! head, chunked artifacts and snapshots, and artifact deletion — all in request order, so an
//! append never names an artifact a concurrent delete removed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use etcd_client::{DeleteOptions, GetOptions, TxnOp};
use warden_core::CloudEvent;
use warden_store::group_commit::{Backend, Pending};
use warden_store::{Head, StoreError, StoreOperation};

use crate::conn::{Etcd, Outcome};
use crate::layout::{chunk_key, chunks_of, HeadRecord, Manifest, SnapshotPointer, TXN_BYTES, TXN_OPS};

/// The most events and artifacts one group commit takes from the queue; a single larger append
/// is still written whole (in several transactions, the head moved by the last).
pub(crate) const GROUP_CAP: usize = 1024;

/// How many snapshots are kept: the latest, and one to fall back on.
const KEEP_SNAPSHOTS: usize = 2;

pub(crate) struct Writer {
    pub etcd: Arc<Etcd>,
    /// The last acknowledged event.
    pub head: Head,
    /// The head key's mod revision when this writer last saw it (0: no head key yet). Every
    /// append compares it, so an append lands only on the head it was sealed after.
    pub head_revision: i64,
    pub shared_head: Arc<Mutex<Head>>,
    /// The last group failed in a way that may have left its head move applied: read the head
    /// again before the next one.
    pub resync: bool,
}

impl Backend for Writer {
    /// Writes `group` and answers every waiter in it: all succeed or all fail.
    fn commit_group(&mut self, group: Vec<Pending>) {
        let etcd = Arc::clone(&self.etcd);
        match etcd.block_on(self.write_group(&group)) {
            Ok(sealed) => {
                *self.shared_head.lock().unwrap_or_else(PoisonError::into_inner) = self.head.clone();
                for (pending, events) in group.into_iter().zip(sealed) {
                    let _ = pending.reply.send(Ok(events));
                }
            }
            Err(error) => {
                // The outcome of the last transaction may be unknown (etcd unreachable): read
                // the head again before the next group.
                self.resync = matches!(error, StoreError::Backend { .. });
                for pending in group {
                    let _ = pending.reply.send(Err(duplicate(&error)));
                }
            }
        }
    }

    fn put_snapshot(&mut self, seq: u64, body: &[u8]) -> Result<(), StoreError> {
        let etcd = Arc::clone(&self.etcd);
        etcd.block_on(self.write_snapshot(seq, body))
    }

    fn delete_artifacts(&mut self, ids: &[String]) -> Result<usize, StoreError> {
        let etcd = Arc::clone(&self.etcd);
        etcd.block_on(self.remove_artifacts(ids))
    }
}

impl Writer {
    /// Seals the group's events after `self.head`, writes its artifacts (chunks, then
    /// manifests) and its events, and moves the head in the last transaction. Every transaction
    /// compares the head's mod revision with `self.head_revision` (and the fence), so none of
    /// it lands once another writer moved the head. Until the head moves, readers see nothing of
    /// the group: event keys past the head are not trusted (and `open` cuts them).
    async fn write_group(&mut self, group: &[Pending]) -> Result<Vec<Vec<CloudEvent>>, StoreError> {
        let op = StoreOperation::Append;
        if self.resync {
            let (found, mod_revision) = self.etcd.read_head(op).await?;
            // Still our head: nothing of the failed group was acknowledged to anyone, and the
            // event keys it may have left past the head are overwritten below. Another head
            // fails the compare below, as it must.
            if found.as_ref() == Some(&HeadRecord::from(&self.head)) || (found.is_none() && self.head.seq == 0) {
                self.head_revision = mod_revision;
            }
            self.resync = false;
        }
        let layout = &self.etcd.layout;
        let mut ops: Vec<(TxnOp, usize)> = Vec::new();
        let mut seen = HashSet::new();
        for artifact in group.iter().flat_map(|pending| &pending.artifacts) {
            if !seen.insert(artifact.id.as_str()) {
                continue;
            }
            // Artifacts are immutable: one already stored is left as it is.
            let manifest_key = layout.artifact_manifest(&artifact.id);
            if !self.etcd.get(op, &manifest_key, Some(GetOptions::new().with_keys_only())).await?.is_empty() {
                continue;
            }
            let _ = push_chunked(&mut ops, &layout.artifact_chunks(&artifact.id), &manifest_key, &artifact.bytes);
        }
        let mut head = self.head.clone();
        let mut sealed = Vec::with_capacity(group.len());
        for pending in group {
            let mut events = Vec::with_capacity(pending.events.len());
            for new in &pending.events {
                let event = CloudEvent::seal(new, head.seq + 1, &head.hash);
                let body = event.canonical_bytes();
                head = Head { seq: event.seq, hash: event.hash() };
                let key = layout.event(event.seq);
                ops.push((TxnOp::put(key.clone(), body.clone(), None), key.len() + body.len()));
                events.push(event);
            }
            sealed.push(events);
        }
        let moves_head = head.seq != self.head.seq;
        let record = HeadRecord::from(&head);
        if moves_head {
            let value = serde_json::to_vec(&record).expect("a head record serializes");
            let key = layout.head();
            ops.push((TxnOp::put(key.clone(), value.clone(), None), key.len() + value.len()));
        }
        let txns = split(ops);
        let n_txns = txns.len();
        for (index, txn) in txns.into_iter().enumerate() {
            let last = index + 1 == n_txns;
            match self.etcd.guarded_txn(op, Some(self.head_revision), txn).await? {
                Outcome::Applied { revision } => {
                    if last && moves_head {
                        self.head_revision = revision;
                    }
                }
                // An earlier attempt of this very transaction was applied but its answer lost.
                Outcome::HeadMoved { head: Some(found), mod_revision } if last && moves_head && found == record => {
                    self.head_revision = mod_revision;
                }
                Outcome::HeadMoved { head: found, .. } => {
                    return Err(StoreError::HeadMoved {
                        expected_seq: self.head.seq,
                        found_seq: found.map_or(0, |found| found.seq),
                    });
                }
            }
        }
        self.head = head;
        Ok(sealed)
    }

    async fn write_snapshot(&self, seq: u64, body: &[u8]) -> Result<(), StoreError> {
        // A snapshot past the head would describe events that do not exist.
        if seq > self.head.seq {
            return Err(StoreError::SnapshotAhead { seq, head: self.head.seq });
        }
        let op = StoreOperation::PutSnapshot;
        let layout = self.etcd.layout.clone();
        let pointer = self.etcd.get(op, &layout.snapshot_pointer(), None).await?;
        let latest = pointer.first().and_then(|kv| serde_json::from_slice::<SnapshotPointer>(kv.value()).ok());
        let chunks = layout.snapshot_chunks(seq);
        let mut ops = Vec::new();
        let n_chunks = push_chunked(&mut ops, &chunks, &layout.snapshot_manifest(seq), body);
        // The same seq again replaces the body: the chunks are overwritten, and those past the
        // new count go (a range that does not overlap the puts, which etcd would refuse).
        let past = DeleteOptions::new().with_range(format!("{}0", chunks.trim_end_matches('/')));
        ops.insert(0, (TxnOp::delete(chunk_key(&chunks, n_chunks), Some(past)), 0));
        if latest.as_ref().is_none_or(|latest| latest.seq <= seq) {
            let value = serde_json::to_vec(&SnapshotPointer { seq }).expect("a pointer serializes");
            ops.push((TxnOp::put(layout.snapshot_pointer(), value.clone(), None), value.len()));
        }
        self.fenced_txns(op, ops).await?;

        // Keep the latest two: every older snapshot's keys go.
        let keys = self.etcd.get(op, &layout.snapshots(), Some(GetOptions::new().with_prefix().with_keys_only())).await?;
        let mut seqs: Vec<u64> = keys.iter().filter_map(|kv| layout.snapshot_seq_of(kv.key())).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let n_old = seqs.len().saturating_sub(KEEP_SNAPSHOTS);
        let deletes = seqs[..n_old]
            .iter()
            .map(|&old| (TxnOp::delete(layout.snapshot(old), Some(DeleteOptions::new().with_prefix())), 0))
            .collect();
        self.fenced_txns(op, deletes).await
    }

    async fn remove_artifacts(&self, ids: &[String]) -> Result<usize, StoreError> {
        let op = StoreOperation::DeleteArtifacts;
        let layout = self.etcd.layout.clone();
        let mut deleted = 0;
        for id in ids.iter().collect::<HashSet<_>>() {
            let manifest = layout.artifact_manifest(id);
            if self.etcd.get(op, &manifest, Some(GetOptions::new().with_keys_only())).await?.is_empty() {
                continue;
            }
            // The manifest first: an artifact is there exactly when its manifest is.
            let ops = vec![
                (TxnOp::delete(manifest, None), 0),
                (TxnOp::delete(layout.artifact_chunks(id), Some(DeleteOptions::new().with_prefix())), 0),
            ];
            self.fenced_txns(op, ops).await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Runs `ops` in as many transactions as they need, each guarded by the fence only (they do
    /// not touch the chain).
    async fn fenced_txns(&self, op: StoreOperation, ops: Vec<(TxnOp, usize)>) -> Result<(), StoreError> {
        for txn in split(ops) {
            match self.etcd.guarded_txn(op, None, txn).await? {
                Outcome::Applied { .. } => {}
                // Without a head compare only the fence can fail, and that is an error already.
                Outcome::HeadMoved { .. } => unreachable!("a transaction without a head compare failed its compare"),
            }
        }
        Ok(())
    }
}

/// Puts `bytes` as chunks under `chunks`, then its [`Manifest`] at `manifest` (last, so a
/// manifest is only there once every chunk is).
fn push_chunked(ops: &mut Vec<(TxnOp, usize)>, chunks: &str, manifest: &str, bytes: &[u8]) -> usize {
    let mut n_chunks = 0;
    for (index, chunk) in chunks_of(bytes).enumerate() {
        let key = chunk_key(chunks, index);
        ops.push((TxnOp::put(key.clone(), chunk.to_vec(), None), key.len() + chunk.len()));
        n_chunks += 1;
    }
    let value = serde_json::to_vec(&Manifest { size: bytes.len() as u64, chunks: n_chunks }).expect("a manifest serializes");
    ops.push((TxnOp::put(manifest.to_owned(), value.clone(), None), manifest.len() + value.len()));
    n_chunks
}

/// `ops`, in order, cut into transactions of at most [`TXN_OPS`] operations and [`TXN_BYTES`]
/// bytes (a single larger operation goes alone).
fn split(ops: Vec<(TxnOp, usize)>) -> Vec<Vec<TxnOp>> {
    let mut txns = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for (op, size) in ops {
        if !current.is_empty() && (current.len() == TXN_OPS || bytes + size > TXN_BYTES) {
            txns.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(op);
        bytes += size;
    }
    if !current.is_empty() {
        txns.push(current);
    }
    txns
}

/// The same failure for every waiter of a group (`StoreError` is not `Clone`: SQLite's errors are not).
fn duplicate(error: &StoreError) -> StoreError {
    match error {
        StoreError::Backend { operation, backend, source } => {
            StoreError::Backend { operation: *operation, backend, source: Arc::clone(source) }
        }
        StoreError::Fenced { key, create_revision } => StoreError::Fenced { key: key.clone(), create_revision: *create_revision },
        StoreError::HeadMoved { expected_seq, found_seq } => {
            StoreError::HeadMoved { expected_seq: *expected_seq, found_seq: *found_seq }
        }
        StoreError::Corrupt { seq, reason } => StoreError::Corrupt { seq: *seq, reason: reason.clone() },
        other => StoreError::Backend {
            operation: StoreOperation::Append,
            backend: "etcd",
            source: Arc::new(std::io::Error::other(other.to_string())),
        },
    }
}
