//! `EtcdStore`: the `Store` port on etcd — opening (the chain check), reads bounded by the head,
//! and the hand-off of every write to the writer thread.

use std::sync::{Arc, Mutex, PoisonError};

use etcd_client::GetOptions;
use warden_core::canonical::Artifact;
use warden_core::{CloudEvent, NewEvent};
use warden_store::group_commit::GroupCommit;
use warden_store::{Head, OpenReport, Store, StoreError, StoreOperation};

use crate::conn::{backend, Etcd, Fence};
use crate::layout::{chunk_key, Manifest, SnapshotPointer};
use crate::open::check_at_open;
use crate::writer::{Writer, GROUP_CAP};

/// How many events one read of `read_after` takes from etcd.
const READ_PAGE: usize = 1000;

/// The journal in etcd. See the crate docs. Like the runtime's blocking HTTP client it drives a
/// private tokio runtime, so it must not be used, nor dropped, inside an async context (call it
/// from blocking threads, as the runtime calls every `Store`).
pub struct EtcdStore {
    etcd: Arc<Etcd>,
    writer: GroupCommit,
    /// Advanced by the writer after each head move, before it replies. Reads trust only event
    /// keys up to it.
    head: Arc<Mutex<Head>>,
    torn_cut: u64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("journal", &self.etcd.name).finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`), opens the journal under
    /// `prefix` (empty the first time), verifies its chain from the latest snapshot up to the
    /// head, cuts a torn tail past the head, and starts the writer. Damaged committed history is
    /// [`StoreError::CorruptHistory`] naming the first bad seq, and then nothing was changed.
    /// With a `fence`, every write also compares the fence key's create revision, and fails
    /// with [`StoreError::Fenced`] once it changed.
    pub fn open(endpoints: &[String], prefix: &str, fence: Option<Fence>) -> Result<(EtcdStore, OpenReport), StoreError> {
        if prefix.is_empty() || !prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(backend(
                StoreOperation::Open,
                std::io::Error::other(format!("etcd prefix {prefix:?} must start with / and not end with one")),
            ));
        }
        let etcd = Arc::new(Etcd::connect(endpoints, prefix, fence)?);
        let opened = etcd.block_on(check_at_open(&etcd))?;
        let head = Arc::new(Mutex::new(opened.report.head.clone()));
        let writer = Writer {
            etcd: Arc::clone(&etcd),
            head: opened.report.head.clone(),
            head_revision: opened.head_revision,
            shared_head: Arc::clone(&head),
            resync: false,
        };
        let writer = GroupCommit::start("warden-etcd-journal", writer, GROUP_CAP)?;
        let store = EtcdStore { etcd, writer, head, torn_cut: opened.torn_cut };
        Ok((store, opened.report))
    }

    /// The prefix every key of this journal is under.
    pub fn etcd_prefix(&self) -> &str {
        self.etcd.layout.prefix()
    }

    /// How many event keys past the head `open` deleted: a torn append that was never
    /// acknowledged (0 almost always).
    pub fn torn_events_cut(&self) -> u64 {
        self.torn_cut
    }

    /// The value stored as chunks under `chunks` and described by the manifest at `manifest`,
    /// if that manifest is there.
    fn read_chunked(&self, op: StoreOperation, manifest: &str, chunks: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.etcd.block_on(async {
            let Some(kv) = self.etcd.get(op, manifest, None).await?.into_iter().next() else {
                return Ok(None);
            };
            let manifest: Manifest = serde_json::from_slice(kv.value())
                .map_err(|e| StoreError::Corrupt { seq: 0, reason: format!("{manifest} is not a manifest ({e})") })?;
            let mut bytes = Vec::with_capacity(usize::try_from(manifest.size).unwrap_or(0));
            // One chunk per read: a chunk is up to 1 MiB, and answers have a size limit.
            for index in 0..manifest.chunks {
                let key = chunk_key(chunks, index);
                match self.etcd.get(op, &key, None).await?.into_iter().next() {
                    Some(kv) => bytes.extend_from_slice(kv.value()),
                    None => return Err(StoreError::Corrupt { seq: 0, reason: format!("{key} is missing") }),
                }
            }
            Ok(Some(bytes))
        })
    }
}

impl Store for EtcdStore {
    fn append_with_artifacts(&self, artifacts: Vec<Artifact>, events: Vec<NewEvent>) -> Result<Vec<CloudEvent>, StoreError> {
        self.writer.append(artifacts, events)
    }

    fn get_artifact(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let layout = &self.etcd.layout;
        let bytes = self.read_chunked(StoreOperation::ReadArtifact, &layout.artifact_manifest(id), &layout.artifact_chunks(id));
        match bytes {
            Ok(Some(bytes)) if !Artifact::verify(id, &bytes) => Err(StoreError::ArtifactCorrupt { id: id.to_owned() }),
            Err(StoreError::Corrupt { .. }) => Err(StoreError::ArtifactCorrupt { id: id.to_owned() }),
            other => other,
        }
    }

    fn delete_artifacts(&self, ids: Vec<String>) -> Result<usize, StoreError> {
        self.writer.delete_artifacts(ids)
    }

    fn read_after(&self, after_seq: u64, limit: usize, subject: Option<&str>) -> Result<Vec<CloudEvent>, StoreError> {
        let head = self.head()?.seq;
        if limit == 0 || after_seq >= head {
            return Ok(Vec::new());
        }
        let op = StoreOperation::ReadEvents;
        let layout = &self.etcd.layout;
        // Only keys up to the head: past it is an append that is not acknowledged (yet, or ever).
        let end = layout.event(head + 1);
        let mut out = Vec::new();
        let mut cursor = after_seq;
        self.etcd.block_on(async {
            while out.len() < limit && cursor < head {
                let page = if subject.is_some() { READ_PAGE } else { READ_PAGE.min(limit - out.len()) };
                let options = GetOptions::new().with_range(end.clone()).with_limit(page as i64);
                let kvs = self.etcd.get(op, &layout.event(cursor + 1), Some(options)).await?;
                let Some(last) = kvs.last() else { break };
                cursor = layout.seq_of(last.key()).unwrap_or(head);
                for kv in &kvs {
                    let seq = layout.seq_of(kv.key()).unwrap_or(0);
                    let event: CloudEvent =
                        serde_json::from_slice(kv.value()).map_err(|source| StoreError::Undecodable { seq, source })?;
                    if event.seq != seq {
                        return Err(StoreError::Corrupt { seq, reason: format!("body says seq {}", event.seq) });
                    }
                    if subject.is_none_or(|subject| event.subject.as_deref() == Some(subject)) && out.len() < limit {
                        out.push(event);
                    }
                }
            }
            Ok(out)
        })
    }

    fn head(&self) -> Result<Head, StoreError> {
        Ok(self.head.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    fn put_snapshot(&self, seq: u64, body: &[u8]) -> Result<(), StoreError> {
        self.writer.put_snapshot(seq, body)
    }

    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let op = StoreOperation::ReadSnapshot;
        let layout = &self.etcd.layout;
        let pointer = self.etcd.block_on(self.etcd.get(op, &layout.snapshot_pointer(), None))?;
        let Some(kv) = pointer.first() else { return Ok(None) };
        let seq = serde_json::from_slice::<SnapshotPointer>(kv.value())
            .map_err(|e| StoreError::Corrupt { seq: 0, reason: format!("the snapshot pointer is not one ({e})") })?
            .seq;
        match self.read_chunked(op, &layout.snapshot_manifest(seq), &layout.snapshot_chunks(seq))? {
            Some(body) => Ok(Some((seq, body))),
            None => Err(StoreError::Corrupt { seq, reason: format!("the snapshot as of seq {seq} is missing") }),
        }
    }
}
