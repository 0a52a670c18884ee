//! One batch of decisions: every event is recorded into the live projection and the outgoing
//! list in one call, so what is journaled is exactly what the projection already shows.
//!
//! The control plane decides a batch of inputs at a time (workload reports, API calls, host
//! heartbeats, timers), then journals all of the batch's events in one append and only then acts
//! on its effects and orders. `Batch` is that unit: the core's decisions (`cluster`, the workload
//! machine through [`Batch::advance`]) and the runtime's glue (jobs, rollouts) all write into it,
//! and nothing but [`Batch::record`] and [`Batch::advance`] changes the projection it holds.

use crate::canonical::Artifact;
use crate::event::EventData;
use crate::projection::{AdvanceError, Projection};
use crate::standby::StandbySlot;
use crate::types::WorkloadInfo;
use crate::workload::{Decision, Effect, Input};
use crate::Spec;

/// What the control plane tells one host, carried out once the batch is durable. The runtime
/// renders each into its wire command (adding what it knows: specs, checkpoint keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// A warm-standby workload's new cell is waiting for one of its standbys to win the lease.
    Promote { host: String, workload_id: String, cell_id: String, expected_epoch: u64 },
    /// A drained host evicts its primary and gives the lease up (`LeaseRevocation`).
    Evict { host: String, workload_id: String, cell_id: String, epoch: u64, grace_ms: u64 },
    /// Stop a cell (SIGTERM to its group, or SIGKILL with `kill`).
    Signal { host: String, cell_id: String, kill: bool },
    /// Forget an ended cell's files.
    Remove { host: String, cell_id: String },
    /// Stage (or re-stage) a standby slot: the spec, the latest checkpoint.
    Arm { host: String, workload_id: String, slot: StandbySlot },
    /// Drop a standby slot.
    Disarm { host: String, workload_id: String },
    /// The host's part in a rollout changed: send it its current order.
    Rollout { host: String, rollout_id: String },
}

/// A report the core chose not to act on (stale, for an old cell): logged by the runtime, never
/// an error to the sender, who cannot do anything about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    pub workload_id: String,
    pub error: AdvanceError,
}

/// The decisions of one batch, against the live projection.
#[derive(Debug)]
pub struct Batch<'p> {
    live: &'p mut Projection,
    pub now_ms: u64,
    /// Events to journal, in the order they were applied to the projection (replay must
    /// rebuild it exactly).
    pub events: Vec<EventData>,
    /// Cells to start or signal, once the events are durable.
    pub effects: Vec<Effect>,
    /// What hosts are told, once the events are durable.
    pub orders: Vec<Order>,
    /// Immutable artifacts (manifests, contexts) written in the same append as the events.
    pub artifacts: Vec<Artifact>,
    /// Checkpoint blobs (`sha256:<hex>`) a newer durable checkpoint replaced: deleted after.
    pub superseded_blobs: Vec<String>,
    /// Job runs that ended: their attempt directories go once the end is durable.
    pub finished_runs: Vec<String>,
    /// Reports not acted on, for the log.
    pub ignored: Vec<Ignored>,
}

impl<'p> Batch<'p> {
    pub fn new(live: &'p mut Projection, now_ms: u64) -> Batch<'p> {
        Batch {
            live,
            now_ms,
            events: Vec::new(),
            effects: Vec::new(),
            orders: Vec::new(),
            artifacts: Vec::new(),
            superseded_blobs: Vec::new(),
            finished_runs: Vec::new(),
            ignored: Vec::new(),
        }
    }

    /// The projection as this batch has left it so far.
    pub fn live(&self) -> &Projection {
        self.live
    }

    /// Applies `data` to the projection and queues it for the journal.
    pub fn record(&mut self, data: EventData) {
        self.live.apply_data(&data, self.now_ms);
        self.events.push(data);
    }

    /// Steps workload `workload_id` with `input` (and ticks it until quiet): its events are
    /// recorded, its effects queued.
    pub fn advance(&mut self, workload_id: &str, input: &Input) -> Result<(), AdvanceError> {
        let decision = self.live.advance(workload_id, input, self.now_ms)?;
        self.take(decision);
        Ok(())
    }

    /// [`Batch::advance`] for a report that may be stale: not acting on it is noted, not failed.
    pub fn advance_report(&mut self, workload_id: &str, input: &Input) {
        if let Err(error) = self.advance(workload_id, input) {
            self.ignored.push(Ignored { workload_id: workload_id.to_string(), error });
        }
    }

    /// Accepts a new workload (pinned to a host for `each-host` instances); its id.
    pub fn submit(&mut self, info: WorkloadInfo, spec: Spec, pinned_host: Option<String>) -> String {
        let id = info.id.clone();
        let decision = self.live.submit_pinned(info, spec, pinned_host, self.now_ms);
        self.take(decision);
        id
    }

    /// Adds an artifact to the append, once.
    pub fn artifact(&mut self, artifact: Artifact) -> String {
        let id = artifact.id.clone();
        if !self.artifacts.iter().any(|a| a.id == id) {
            self.artifacts.push(artifact);
        }
        id
    }

    pub fn order(&mut self, order: Order) {
        self.orders.push(order);
    }

    /// Whether this batch has anything to journal.
    pub fn has_writes(&self) -> bool {
        !self.events.is_empty() || !self.artifacts.is_empty()
    }

    /// The events of a decision the projection has already applied.
    fn take(&mut self, decision: Decision) {
        self.events.extend(decision.events);
        self.effects.extend(decision.effects);
    }
}
