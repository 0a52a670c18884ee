//! The store's connection to etcd: the client, the private tokio runtime that drives it for
//! synchronous callers, the fence every write carries, and guarded transactions with retries.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, KvClient, Txn, TxnOp, TxnOpResponse};
use warden_store::{StoreError, StoreOperation, ETCD_JOURNAL_SCHEME};

use crate::layout::{HeadRecord, Layout};

/// A write fence: every write the store makes also compares `key`'s create revision, so once
/// the key is deleted or created again (another process won an election) this store's writes
/// fail with [`StoreError::Fenced`] and are not retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub create_revision: i64,
}

/// How long a request (one attempt) may take before it is given up on and retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long transient failures (a member down, a leader election in etcd) are retried before an
/// operation fails: longer than an etcd leader election with default timeouts (1 s).
const RETRY_FOR: Duration = Duration::from_secs(10);

/// Decoding limit for answers: a page of events or one chunk, with room.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The client, its runtime, the journal's keys and the fence; shared by the store's readers and
/// its writer thread.
pub(crate) struct Etcd {
    /// `Some` until dropped (see the `Drop` impl).
    runtime: Option<tokio::runtime::Runtime>,
    /// `Some` once connected (in `connect`).
    client: Option<Client>,
    pub layout: Layout,
    pub fence: Option<Fence>,
    /// `etcd://<endpoints><prefix>`, for messages.
    pub name: String,
}

impl Drop for Etcd {
    /// Dropping a runtime blocks until its tasks end, which panics inside an async context (the
    /// server drops its store there when it stops): let its threads go in the background.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What a guarded transaction found.
pub(crate) enum Outcome {
    /// Its compares held and its operations were applied, at this etcd revision.
    Applied { revision: i64 },
    /// The head key was not at the compared revision: this is what it holds now (`None`: no
    /// head key) and its mod revision.
    HeadMoved { head: Option<HeadRecord>, mod_revision: i64 },
}

impl Etcd {
    pub(crate) fn connect(endpoints: &[String], prefix: &str, fence: Option<Fence>) -> Result<Etcd, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("warden-etcd")
            .enable_all()
            .build()
            .map_err(|e| backend(StoreOperation::Open, e))?;
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let name = format!("{ETCD_JOURNAL_SCHEME}{}{prefix}", endpoints.join(","));
        let mut etcd = Etcd { runtime: Some(runtime), client: None, layout: Layout::new(prefix), fence, name };
        let client = etcd.block_on(Client::connect(endpoints, Some(options))).map_err(|e| backend(StoreOperation::Open, e))?;
        etcd.client = Some(client);
        Ok(etcd)
    }

    /// Runs `future` to completion on the store's runtime, from any thread: the `Store` trait is
    /// synchronous, and the server calls it both from plain threads and from its own async code
    /// (loading the journal at start). A runtime may not be blocked on from inside another, so
    /// there the wait happens on a short-lived thread of its own (tens of microseconds, next to
    /// an etcd round trip).
    pub(crate) fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let runtime = self.runtime.as_ref().expect("the runtime lives as long as the store");
        if tokio::runtime::Handle::try_current().is_err() {
            return runtime.block_on(future);
        }
        std::thread::scope(|scope| match scope.spawn(|| runtime.block_on(future)).join() {
            Ok(output) => output,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }

    pub(crate) fn kv(&self) -> KvClient {
        self.client.as_ref().expect("connected").kv_client().max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    /// The name a `CorruptHistory` carries.
    pub(crate) fn journal(&self) -> PathBuf {
        PathBuf::from(&self.name)
    }

    /// A get, retried while etcd is briefly unavailable.
    pub(crate) async fn get(
        &self,
        operation: StoreOperation,
        key: &str,
        options: Option<GetOptions>,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let kv = self.kv();
        retrying(operation, || {
            let mut kv = kv.clone();
            let options = options.clone();
            let key = key.to_owned();
            async move { kv.get(key, options).await.map(|mut answer| answer.take_kvs()) }
        })
        .await
    }

    /// How many keys a count-only get finds.
    pub(crate) async fn get_count(&self, operation: StoreOperation, key: &str, options: GetOptions) -> Result<u64, StoreError> {
        let kv = self.kv();
        retrying(operation, || {
            let mut kv = kv.clone();
            let options = options.clone();
            let key = key.to_owned();
            async move { kv.get(key, Some(options)).await.map(|answer| u64::try_from(answer.count()).unwrap_or(0)) }
        })
        .await
    }

    /// The head key's record and mod revision (0 when there is none: etcd compares a missing
    /// key's mod revision as 0).
    pub(crate) async fn read_head(&self, operation: StoreOperation) -> Result<(Option<HeadRecord>, i64), StoreError> {
        let kvs = self.get(operation, &self.layout.head(), None).await?;
        match kvs.first() {
            None => Ok((None, 0)),
            Some(kv) => Ok((Some(parse_head(kv.value())?), kv.mod_revision())),
        }
    }

    /// Runs `ops` in one transaction guarded by the fence and, with `head_revision`, by the
    /// head key's mod revision still being that. Transient failures are retried (the compares
    /// make a retry of an applied transaction fail instead of applying twice; the caller reads
    /// the head in [`Outcome::HeadMoved`] to tell its own applied write from another's).
    pub(crate) async fn guarded_txn(
        &self,
        operation: StoreOperation,
        head_revision: Option<i64>,
        ops: Vec<TxnOp>,
    ) -> Result<Outcome, StoreError> {
        let head_key = self.layout.head();
        let mut compares = Vec::new();
        if let Some(revision) = head_revision {
            compares.push(Compare::mod_revision(head_key.clone(), CompareOp::Equal, revision));
        }
        let mut otherwise = vec![TxnOp::get(head_key.clone(), None)];
        if let Some(fence) = &self.fence {
            compares.push(Compare::create_revision(fence.key.clone(), CompareOp::Equal, fence.create_revision));
            otherwise.push(TxnOp::get(fence.key.clone(), None));
        }
        let txn = Txn::new().when(compares).and_then(ops).or_else(otherwise);
        let kv = self.kv();
        let answer = retrying(operation, || {
            let mut kv = kv.clone();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await?;
        if answer.succeeded() {
            let revision = answer.header().map_or(0, |header| header.revision());
            return Ok(Outcome::Applied { revision });
        }
        let responses = answer.op_responses();
        let first_kv = |index: usize| match responses.get(index) {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().cloned(),
            _ => None,
        };
        if let Some(fence) = &self.fence {
            let holds = first_kv(1).is_some_and(|kv| kv.create_revision() == fence.create_revision);
            if !holds {
                return Err(StoreError::Fenced { key: fence.key.clone(), create_revision: fence.create_revision });
            }
        }
        match first_kv(0) {
            None => Ok(Outcome::HeadMoved { head: None, mod_revision: 0 }),
            Some(kv) => Ok(Outcome::HeadMoved { head: Some(parse_head(kv.value())?), mod_revision: kv.mod_revision() }),
        }
    }
}

/// The head key's value, or why it is not one (damage: the head is only written by the store).
pub(crate) fn parse_head(value: &[u8]) -> Result<HeadRecord, StoreError> {
    serde_json::from_slice(value)
        .map_err(|source| StoreError::Corrupt { seq: 0, reason: format!("the head key does not hold a head record ({source})") })
}

/// An etcd failure while the store did `operation`.
pub(crate) fn backend(operation: StoreOperation, error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend { operation, backend: "etcd", source: Arc::new(error) }
}

/// Whether `error` may go away by itself (a member down, no leader for a moment, a timeout),
/// so the request is worth sending again. "database space exceeded" and the like are not.
fn transient(error: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    match error {
        Error::TransportError(_) | Error::IoError(_) => true,
        // gRPC codes: CANCELLED 1, UNKNOWN 2, DEADLINE_EXCEEDED 4, UNAVAILABLE 14.
        Error::GRpcStatus(status) => {
            matches!(i32::from(status.code()), 1 | 2 | 4 | 14) && !status.message().contains("space exceeded")
        }
        _ => false,
    }
}

/// Runs `attempt` until it succeeds, fails for good, or transient failures last [`RETRY_FOR`].
async fn retrying<T, F, Fut>(operation: StoreOperation, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(50);
    loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if !transient(&error) || Instant::now() >= deadline => return Err(backend(operation, error)),
            Err(elapsed) if Instant::now() >= deadline => return Err(backend(operation, elapsed)),
            _ => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
