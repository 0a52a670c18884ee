//! The one writer thread every `Store` backend runs, and its front door: appends from any thread
//! are queued and taken in groups (one transaction, one fsync or etcd round trip, for all of
//! them), snapshots and artifact deletions go through the same queue so they stay in request
//! order, and every waiter is answered. A backend supplies only how a group, a snapshot and a
//! deletion are written ([`Backend`]).

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use warden_core::canonical::Artifact;
use warden_core::{CloudEvent, NewEvent};

use crate::error::StoreError;

pub type AppendReply = Result<Vec<CloudEvent>, StoreError>;

/// One `append_with_artifacts` call waiting for its group commit. Its artifacts were already
/// checked against their ids, so none of them can fail the group.
pub struct Pending {
    pub artifacts: Vec<Artifact>,
    pub events: Vec<NewEvent>,
    pub reply: SyncSender<AppendReply>,
}

impl Pending {
    /// What this append counts towards a group's cap.
    fn n_rows(&self) -> usize {
        self.artifacts.len() + self.events.len()
    }
}

enum Request {
    Append(Pending),
    // Snapshots and deletions go through the writer too: one writing connection, and an append
    // never names an artifact a concurrent deletion removed.
    Snapshot { seq: u64, body: Vec<u8>, reply: SyncSender<Result<(), StoreError>> },
    DeleteArtifacts { ids: Vec<String>, reply: SyncSender<Result<usize, StoreError>> },
}

/// How a backend writes; called on the writer thread only, in request order.
pub trait Backend: Send + 'static {
    /// Writes `group` atomically and answers every waiter in it: all succeed or all fail.
    fn commit_group(&mut self, group: Vec<Pending>);
    fn put_snapshot(&mut self, seq: u64, body: &[u8]) -> Result<(), StoreError>;
    fn delete_artifacts(&mut self, ids: &[String]) -> Result<usize, StoreError>;
}

/// The queue to the writer thread; dropping it closes the queue and waits for the thread.
#[derive(Debug)]
pub struct GroupCommit {
    /// `None` only while dropping: closing the channel is what stops the writer.
    requests: Option<Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the writer thread `name`, which takes at most `group_cap` rows (events and
    /// artifacts) per group; a single larger append is still written whole.
    pub fn start(name: &str, backend: impl Backend, group_cap: usize) -> Result<GroupCommit, StoreError> {
        let (requests, queue) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(backend, queue, group_cap))
            .map_err(StoreError::Spawn)?;
        Ok(GroupCommit { requests: Some(requests), writer: Some(writer) })
    }

    /// `Store::append_with_artifacts`: waits for the group this append joins to be written.
    pub fn append(&self, artifacts: Vec<Artifact>, events: Vec<NewEvent>) -> AppendReply {
        if artifacts.is_empty() && events.is_empty() {
            return Ok(Vec::new());
        }
        // Checked here, not in the writer, so a bad artifact fails only its own call and not the
        // group commit it would have joined.
        if let Some(bad) = artifacts.iter().find(|a| !Artifact::verify(&a.id, &a.bytes)) {
            return Err(StoreError::ArtifactMismatch { id: bad.id.clone() });
        }
        self.ask(|reply| Request::Append(Pending { artifacts, events, reply }))
    }

    pub fn put_snapshot(&self, seq: u64, body: &[u8]) -> Result<(), StoreError> {
        self.ask(|reply| Request::Snapshot { seq, body: body.to_vec(), reply })
    }

    pub fn delete_artifacts(&self, ids: Vec<String>) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.ask(|reply| Request::DeleteArtifacts { ids, reply })
    }

    fn ask<T>(&self, request: impl FnOnce(SyncSender<Result<T, StoreError>>) -> Request) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.requests.as_ref().ok_or(StoreError::Closed)?.send(request(reply)).map_err(|_| StoreError::Closed)?;
        // The writer dropping `reply` unanswered means it is gone.
        answer.recv().map_err(|_| StoreError::Closed)?
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the channel tells the writer to stop; `&mut self` means no append is in flight.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn run(mut backend: impl Backend, queue: Receiver<Request>, group_cap: usize) {
    // A snapshot or deletion found while draining ends the group; it is handled next, in order.
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match queue.recv() {
                Ok(request) => request,
                Err(_) => return, // every sender is gone: the store was dropped
            },
        };
        match first {
            Request::Snapshot { seq, body, reply } => {
                let _ = reply.send(backend.put_snapshot(seq, &body));
            }
            Request::DeleteArtifacts { ids, reply } => {
                let _ = reply.send(backend.delete_artifacts(&ids));
            }
            Request::Append(pending) => {
                let mut n_rows = pending.n_rows();
                let mut group = vec![pending];
                // Take what is already queued, without waiting for more: appenders that arrive
                // during this commit form the next group.
                while n_rows < group_cap {
                    match queue.try_recv() {
                        Ok(Request::Append(pending)) => {
                            n_rows += pending.n_rows();
                            group.push(pending);
                        }
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                backend.commit_group(group);
            }
        }
    }
}
