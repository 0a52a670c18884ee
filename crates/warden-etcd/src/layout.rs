//! Where `EtcdStore` keeps what, under its prefix: the key of every event, of the head, of
//! artifact and snapshot chunks, and the small JSON records (head, manifests) stored there.
//! A leaf: the writer, the open-time check and the store all name keys through it.

use serde::{Deserialize, Serialize};
use warden_store::Head;

/// The most bytes one artifact or snapshot chunk holds: well under etcd's default 1.5 MiB
/// request limit (`--max-request-bytes`), so a chunk and its key always fit one request.
pub(crate) const CHUNK_BYTES: usize = 1024 * 1024;

/// The most operations one transaction carries: under etcd's default `--max-txn-ops` of 128.
pub(crate) const TXN_OPS: usize = 120;

/// The most value-and-key bytes one transaction carries: one full chunk plus room, under the
/// 1.5 MiB request limit.
pub(crate) const TXN_BYTES: usize = CHUNK_BYTES + 256 * 1024;

/// The keys of one journal: everything lives under `prefix`, one warden cluster per prefix.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    prefix: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Layout {
        Layout { prefix: prefix.to_owned() }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/head`: the last acknowledged event, a [`HeadRecord`].
    pub(crate) fn head(&self) -> String {
        format!("{}/head", self.prefix)
    }

    /// `<prefix>/e/<seq, zero-padded to 20>`: the event's canonical bytes, exactly what SQLite
    /// stores as its body. Zero-padding makes key order seq order.
    pub(crate) fn event(&self, seq: u64) -> String {
        format!("{}/e/{seq:020}", self.prefix)
    }

    /// Where event keys start; every event key is in `[events_start, events_end)`.
    pub(crate) fn events_start(&self) -> String {
        format!("{}/e/", self.prefix)
    }

    /// Just past every event key (`/` + 1 is `0`).
    pub(crate) fn events_end(&self) -> String {
        format!("{}/e0", self.prefix)
    }

    /// The seq an event key names, if it is one.
    pub(crate) fn seq_of(&self, key: &[u8]) -> Option<u64> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(&self.events_start())?.parse().ok()
    }

    /// `<prefix>/a/<id>/m`: the artifact's [`Manifest`], written after its chunks.
    pub(crate) fn artifact_manifest(&self, id: &str) -> String {
        format!("{}/a/{id}/m", self.prefix)
    }

    /// `<prefix>/a/<id>/c/`: the artifact's chunks are this plus a zero-padded index.
    pub(crate) fn artifact_chunks(&self, id: &str) -> String {
        format!("{}/a/{id}/c/", self.prefix)
    }

    /// `<prefix>/snapshot`: a [`SnapshotPointer`] to the latest snapshot.
    pub(crate) fn snapshot_pointer(&self) -> String {
        format!("{}/snapshot", self.prefix)
    }

    /// Every snapshot key starts with this: `<prefix>/s/`.
    pub(crate) fn snapshots(&self) -> String {
        format!("{}/s/", self.prefix)
    }

    /// `<prefix>/s/<seq>/`: the keys of the snapshot as of `seq`.
    pub(crate) fn snapshot(&self, seq: u64) -> String {
        format!("{}/s/{seq:020}/", self.prefix)
    }

    /// The seq a snapshot key belongs to.
    pub(crate) fn snapshot_seq_of(&self, key: &[u8]) -> Option<u64> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(&self.snapshots())?.split('/').next()?.parse().ok()
    }

    /// `<prefix>/s/<seq>/m`: the snapshot's [`Manifest`], written after its chunks.
    pub(crate) fn snapshot_manifest(&self, seq: u64) -> String {
        format!("{}m", self.snapshot(seq))
    }

    /// `<prefix>/s/<seq>/c/`: the snapshot's chunks are this plus a zero-padded index.
    pub(crate) fn snapshot_chunks(&self, seq: u64) -> String {
        format!("{}c/", self.snapshot(seq))
    }
}

/// The key of chunk `index` under `chunks` (an artifact's or a snapshot's).
pub(crate) fn chunk_key(chunks: &str, index: usize) -> String {
    format!("{chunks}{index:06}")
}

/// The value of `<prefix>/head`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeadRecord {
    pub seq: u64,
    pub hash: String,
}

impl From<&Head> for HeadRecord {
    fn from(head: &Head) -> HeadRecord {
        HeadRecord { seq: head.seq, hash: head.hash.clone() }
    }
}

impl From<HeadRecord> for Head {
    fn from(record: HeadRecord) -> Head {
        Head { seq: record.seq, hash: record.hash }
    }
}

/// What a chunked value (an artifact, a snapshot) is: written after its chunks, so a manifest
/// is only ever there once every chunk it counts is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub size: u64,
    pub chunks: usize,
}

/// The value of `<prefix>/snapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotPointer {
    pub seq: u64,
}

/// `bytes` cut into chunks of at most [`CHUNK_BYTES`] (none for no bytes).
pub(crate) fn chunks_of(bytes: &[u8]) -> std::slice::Chunks<'_, u8> {
    bytes.chunks(CHUNK_BYTES)
}
