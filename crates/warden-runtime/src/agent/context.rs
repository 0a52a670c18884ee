//! The agent's shared context: what every part of it (the executor, standbys, checkpoints,
//! rollout workers) works on — the table of this host's cells, the cell backend, the report
//! outbox, the lease timing and the channel lease claims go out on, and the control plane once
//! it is known. Cheap to clone: all clones share one state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::{mpsc, oneshot};
use warden_cell::{CellConfig, ProcessBackend, ShimExe, StartedCell};
use warden_core::lease::LeaseTiming;
use warden_store::queue::DurableQueue;

use super::cell_table::{Entry, Tracked};
use super::http::Http;
use super::outbox::Outbox;
use crate::proto::{LeaseClaim, ReportEvent};

/// `CLOCK_BOOTTIME` in milliseconds: the agent's clock for leases (see `warden_cell::Fence`).
pub fn boottime_ms() -> u64 {
    warden_cell::boottime_ns() / 1_000_000
}

/// A lease claim for the heartbeat loop to send at once. The answer is `Some(sent_at_ms)`, the
/// `CLOCK_BOOTTIME` reading when the heartbeat that carried the claim was sent, if the control
/// plane renewed it; `None` if it refused (or the agent is shutting down).
pub struct ClaimRequest {
    pub claim: LeaseClaim,
    pub reply: oneshot::Sender<Option<u64>>,
}

/// Why a cell could not be started by its shim.
#[derive(Debug, thiserror::Error)]
pub enum SpawnCellError {
    #[error(transparent)]
    Start(warden_cell::StartError),
    #[error("start task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// See the module docs.
#[derive(Clone)]
pub(super) struct AgentContext {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<ProcessBackend>,
    cells_dir: PathBuf,
    logs_dir: PathBuf,
    outbox: Outbox,
    timing: LeaseTiming,
    claims: mpsc::UnboundedSender<ClaimRequest>,
    cells: Mutex<BTreeMap<String, Entry>>,
    /// The control plane (checkpoints are stored and fetched there, standbys bid there, logs
    /// and rollout reports go there) and this host's name there. Set once by the agent; absent
    /// in tests that run without a control plane, where checkpointed starts fail.
    control_plane: OnceLock<(Arc<Http>, String)>,
}

impl AgentContext {
    pub(super) fn new(
        cells_dir: PathBuf,
        logs_dir: PathBuf,
        shim: ShimExe,
        queue: Arc<DurableQueue>,
        timing: LeaseTiming,
        claims: mpsc::UnboundedSender<ClaimRequest>,
    ) -> AgentContext {
        let backend = Arc::new(ProcessBackend::new(cells_dir.clone(), shim));
        AgentContext {
            inner: Arc::new(Inner {
                backend,
                cells_dir,
                logs_dir,
                outbox: Outbox::new(queue),
                timing,
                claims,
                cells: Mutex::new(BTreeMap::new()),
                control_plane: OnceLock::new(),
            }),
        }
    }

    pub(super) fn set_control_plane(&self, http: Arc<Http>, host: &str) {
        let _ = self.inner.control_plane.set((http, host.to_string()));
    }

    /// The control plane's client and this host's name there, once set.
    pub(super) fn control_plane(&self) -> Option<(Arc<Http>, String)> {
        self.inner.control_plane.get().cloned()
    }

    pub(super) fn cells_dir(&self) -> &Path {
        &self.inner.cells_dir
    }

    pub(super) fn logs_dir(&self) -> &Path {
        &self.inner.logs_dir
    }

    /// `<data-dir>/standbys`, next to the cells dir: armed slots and their cached checkpoints.
    pub(super) fn standby_dir(&self) -> PathBuf {
        self.inner.cells_dir.with_file_name("standbys")
    }

    pub(super) fn backend(&self) -> &Arc<ProcessBackend> {
        &self.inner.backend
    }

    pub(super) fn queue(&self) -> &Arc<DurableQueue> {
        self.inner.outbox.queue()
    }

    pub(super) fn timing(&self) -> &LeaseTiming {
        &self.inner.timing
    }

    /// The lease timing of a cell whose workload has its own ttl (`lost_after`), if it has.
    pub(super) fn timing_for(&self, ttl_ms: Option<u64>) -> LeaseTiming {
        let mut timing = self.inner.timing;
        if let Some(ttl) = ttl_ms {
            timing.ttl_ms = timing.ttl_ms.max(ttl);
        }
        timing
    }

    /// Queues a report durably and wakes the heartbeat loop (see `outbox.rs`).
    pub(super) async fn report(&self, workload_id: String, cell_id: String, event: ReportEvent) {
        self.inner.outbox.push(workload_id, cell_id, event).await
    }

    /// Resolves once a report was queued since the last call (a permit is kept if nobody waits).
    pub(super) async fn report_pushed(&self) {
        self.inner.outbox.pushed().await
    }

    pub(super) fn cells(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.cells.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The workload of a cell in the table (empty if it is not there).
    pub(super) fn workload_id_of(&self, cell_id: &str) -> String {
        self.cells().get(cell_id).map(|entry| entry.workload_id.clone()).unwrap_or_default()
    }

    /// Whether the cell is in the table and runs.
    pub(super) fn is_running(&self, cell_id: &str) -> bool {
        self.cells().get(cell_id).is_some_and(Entry::is_running)
    }

    /// The spec (`spec_id`) workload `workload_id`'s running cell here runs: `None` if no cell of
    /// it runs here (cells still starting or already ended do not count), if its `Start` named
    /// no spec, or if several run and do not agree.
    pub(super) fn running_spec(&self, workload_id: &str) -> Option<String> {
        let specs = self.running_specs(workload_id);
        let first = specs.first()?.clone()?;
        specs.iter().all(|spec| spec.as_deref() == Some(first.as_str())).then_some(first)
    }

    /// The spec of every running cell of `workload_id` here (normally one; two while a
    /// replacement overlaps the cell it replaces), `None` for a cell whose `Start` named none.
    pub(super) fn running_specs(&self, workload_id: &str) -> Vec<Option<String>> {
        self.cells()
            .values()
            .filter(|entry| entry.workload_id == workload_id && matches!(entry.state, Tracked::Running(_)))
            .map(|entry| entry.spec_id.clone())
            .collect()
    }

    /// Sends a claim to the heartbeat loop and waits for its answer: the send time if renewed.
    pub(super) async fn claim(&self, claim: LeaseClaim) -> Option<u64> {
        let (reply, answer) = oneshot::channel();
        self.inner.claims.send(ClaimRequest { claim, reply }).ok()?;
        answer.await.ok().flatten()
    }

    /// Starts a cell under its shim (its log dir created first).
    pub(super) async fn spawn_cell(&self, config: CellConfig) -> Result<StartedCell, SpawnCellError> {
        if let Some(dir) = config.log_path.parent() {
            let _ = tokio::fs::create_dir_all(dir).await;
        }
        let backend = self.inner.backend.clone();
        match tokio::task::spawn_blocking(move || backend.start(&config)).await {
            Ok(result) => result.map_err(SpawnCellError::Start),
            Err(e) => Err(SpawnCellError::Task(e)),
        }
    }
}
