//! The agent's report outbox: what happened to this host's cells, queued durably in
//! `<data-dir>/reports.db` until a heartbeat's answer acknowledges it, and the agent's exit when
//! that queue fails (a fact must never be lost).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use warden_store::queue::{DurableQueue, QueueError};

use crate::proto::{Report, ReportEvent};

/// Most reports sent in one heartbeat; more are sent by the heartbeats right after.
pub const MAX_REPORTS_PER_HEARTBEAT: usize = 256;

/// A report as queued: `Report` without its `seq`, which the queue assigns.
#[derive(Serialize, Deserialize)]
struct Queued {
    workload_id: String,
    cell_id: String,
    event: ReportEvent,
}

/// Up to `limit` queued reports, oldest first, numbered by the queue. A body that no longer
/// decodes is skipped (and acknowledged with the ones after it).
pub fn pending_reports(queue: &DurableQueue, limit: usize) -> Result<Vec<Report>, QueueError> {
    Ok(queue
        .pending(limit)?
        .into_iter()
        .filter_map(|(seq, body)| match serde_json::from_slice::<Queued>(&body) {
            Ok(q) => Some(Report { seq, workload_id: q.workload_id, cell_id: q.cell_id, event: q.event }),
            Err(e) => {
                tracing::warn!("report {seq} in the queue is unreadable and is skipped: {e}");
                None
            }
        })
        .collect())
}

/// The durable queue of reports, and the bell the heartbeat loop waits on to send them at once.
pub(super) struct Outbox {
    queue: Arc<DurableQueue>,
    /// Notified whenever a report was queued, so it can be sent at once.
    pushed: Notify,
}

impl Outbox {
    pub(super) fn new(queue: Arc<DurableQueue>) -> Outbox {
        Outbox { queue, pushed: Notify::new() }
    }

    pub(super) fn queue(&self) -> &Arc<DurableQueue> {
        &self.queue
    }

    /// Resolves once a report was queued since the last call (a permit is kept if nobody waits).
    pub(super) async fn pushed(&self) {
        self.pushed.notified().await
    }

    /// Queues a report durably, then wakes the heartbeat loop to send it. A queue that cannot
    /// be written is fatal: the fact would be lost, and a restart re-derives it from the cells.
    pub(super) async fn push(&self, workload_id: String, cell_id: String, event: ReportEvent) {
        let body = serde_json::to_vec(&Queued { workload_id, cell_id: cell_id.clone(), event }).expect("report serializes");
        let queue = self.queue.clone();
        match tokio::task::spawn_blocking(move || queue.push(&body)).await {
            Ok(Ok(_seq)) => self.pushed.notify_one(),
            Ok(Err(e)) => fatal(&format!("cannot queue a report about cell {cell_id}: {e}")),
            Err(e) => fatal(&format!("the task queueing a report about cell {cell_id} failed: {e}")),
        }
    }
}

/// The report queue cannot be written or read: exit (70, like the engine's journal failures)
/// rather than lose a fact. The next start re-adopts the cells and reports what they did.
pub(super) fn fatal(message: &str) -> ! {
    tracing::error!("fatal: {message}");
    eprintln!("warden agent: fatal: {message}; exiting so the next start re-adopts the cells");
    std::process::exit(70)
}
