//! A host's heartbeat: the host is alive; its reports become workload inputs (a checkpoint is
//! accepted, a lease whose cell ended is released); its lease claims are renewed or refused; its
//! inventory and standby slots are reconciled with what the journal says it has.

use crate::batch::{Batch, Order};
use crate::event::EventData;
use crate::projection::Projection;
use crate::types::CellExit;
use crate::workload::{Input, Phase};

use super::messages::{Heartbeat, InventoryCell, InventoryState, Report, ReportEvent};
use super::state::{ClusterError, ClusterState};

/// What the control plane answers a heartbeat (the runtime adds its incarnation and orders).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// Every report with `seq` ≤ this is journaled once the batch is.
    pub acked_reports_through: u64,
    /// One answer per lease claim, in order.
    pub renewed: Vec<bool>,
    /// The control plane wants the host's inventory.
    pub send_inventory: bool,
}

/// The sha256 hex a `state_uri` names, if it names a checkpoint blob (`blob:sha256:<hex>`).
pub fn blob_hex(state_uri: &str) -> Option<&str> {
    state_uri
        .strip_prefix("blob:sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Whether `host` may fetch the checkpoint blob `hex`: only if it is the latest checkpoint of a
/// workload whose current cell is placed there or which keeps a standby slot there (to restore
/// a start, or to fetch it ahead of a failover). A host sees no other workload's state.
pub fn host_may_fetch_blob(projection: &Projection, host: &str, hex: &str) -> bool {
    projection.workloads.values().any(|w| {
        w.info.state_uri.as_deref().and_then(blob_hex) == Some(hex)
            && (w.current_host() == Some(host) || w.standbys.iter().any(|slot| slot.host == host))
    })
}

/// The blob store's artifact id of a `blob:sha256:<hex>` state uri.
pub(super) fn blob_artifact_id(state_uri: &str) -> Option<String> {
    blob_hex(state_uri).map(|hex| format!("sha256:{hex}"))
}

/// The exit of a cell nobody saw end.
fn lost_exit(reason: String) -> CellExit {
    CellExit { exit_code: None, signal: None, reason, terminal_state: None }
}

impl ClusterState {
    /// Takes a heartbeat signed by `principal`.
    pub fn heartbeat(
        &mut self,
        batch: &mut Batch,
        principal: &str,
        heartbeat: &Heartbeat,
    ) -> Result<HeartbeatAnswer, ClusterError> {
        let host = heartbeat.host.as_str();
        if !self.authenticate(batch.live(), host, principal)?.up {
            batch.record(EventData::HostUp { host: host.to_string() });
        }
        self.seen(host, batch.now_ms);
        let acked = heartbeat.reports.iter().map(|report| report.seq).max().unwrap_or(0);
        for report in &heartbeat.reports {
            self.take_report(batch, host, report);
        }
        let renewed = heartbeat.renew.iter().map(|claim| self.renew(batch.live(), host, claim, batch.now_ms)).collect();
        if let Some(inventory) = &heartbeat.inventory {
            self.want_inventory.remove(host);
            self.reconcile_inventory(batch, host, inventory);
        }
        if let Some(armed) = &heartbeat.standbys {
            reconcile_standbys(batch, host, armed);
        }
        Ok(HeartbeatAnswer { acked_reports_through: acked, renewed, send_inventory: self.wants_inventory(host) })
    }

    /// One report: only the workload's current cell, on this host, counts; anything else is
    /// history.
    fn take_report(&mut self, batch: &mut Batch, host: &str, report: &Report) {
        let Some(workload) = batch.live().workloads.get(&report.workload_id) else { return };
        if workload.phase.cell_id() != Some(report.cell_id.as_str()) || workload.current_host() != Some(host) {
            return;
        }
        let epoch = workload.epoch;
        let input = match &report.event {
            ReportEvent::Checkpointed { state_uri, size_bytes } => {
                // Accepted if it names a blob and is new; the one it replaces can go once this is
                // durable (only the current cell's reports move `state_uri`, and it started).
                if blob_hex(state_uri).is_some() && workload.info.state_uri.as_deref() != Some(state_uri) {
                    batch.superseded_blobs.extend(workload.info.state_uri.as_deref().and_then(blob_artifact_id));
                    batch.record(EventData::CheckpointTaken {
                        workload_id: report.workload_id.clone(),
                        cell_id: report.cell_id.clone(),
                        state_uri: state_uri.clone(),
                        size_bytes: *size_bytes,
                    });
                    // The standbys fetch the newest checkpoint ahead of a failover.
                    let workload = &batch.live().workloads[&report.workload_id];
                    let arms: Vec<Order> = workload
                        .standbys
                        .iter()
                        .map(|slot| Order::Arm {
                            host: slot.host.clone(),
                            workload_id: workload.id().to_string(),
                            slot: slot.clone(),
                        })
                        .collect();
                    batch.orders.extend(arms);
                }
                return;
            }
            ReportEvent::Started { pid, pid_start_time } => {
                Input::CellStarted { cell_id: report.cell_id.clone(), pid: *pid, pid_start_time: *pid_start_time }
            }
            ReportEvent::StartFailed { error } => {
                Input::CellStartFailed { cell_id: report.cell_id.clone(), error: error.clone() }
            }
            ReportEvent::Exited { exit } => Input::CellExited { cell_id: report.cell_id.clone(), exit: exit.clone() },
        };
        let ended = !matches!(report.event, ReportEvent::Started { .. });
        batch.advance_report(&report.workload_id, &input);
        // The holder says its cell is gone: the lease may go to the next cell at once.
        if let (true, Some(epoch)) = (ended, epoch) {
            let held = batch
                .live()
                .leases
                .get(&report.workload_id)
                .is_some_and(|l| l.epoch == epoch && l.holder.as_deref() == Some(host));
            if held {
                batch.record(EventData::LeaseReleased { workload_id: report.workload_id.clone(), epoch });
            }
        }
    }

    /// What the host has against what the journal says it should have.
    fn reconcile_inventory(&mut self, batch: &mut Batch, host: &str, inventory: &[InventoryCell]) {
        let on_host: Vec<(String, String)> = batch
            .live()
            .workloads
            .values()
            .filter(|w| w.current_host() == Some(host))
            .filter_map(|w| w.phase.cell_id().map(|cell| (w.id().to_string(), cell.to_string())))
            .collect();
        for (workload_id, cell_id) in &on_host {
            let found = inventory.iter().find(|c| c.cell_id == *cell_id);
            let phase = batch.live().workloads[workload_id].phase.clone();
            match (found.map(|c| &c.state), &phase) {
                (Some(InventoryState::Running { pid, pid_start_time }), Phase::Starting { .. }) => {
                    let input = Input::CellStarted { cell_id: cell_id.clone(), pid: *pid, pid_start_time: *pid_start_time };
                    batch.advance_report(workload_id, &input);
                }
                (Some(InventoryState::Running { .. }), Phase::Stopping { escalated, .. }) => {
                    batch.order(Order::Signal { host: host.to_string(), cell_id: cell_id.clone(), kill: *escalated });
                }
                (Some(InventoryState::Running { .. }), _) => {}
                (Some(InventoryState::Exited { exit }), _) => {
                    let input = Input::CellExited { cell_id: cell_id.clone(), exit: exit.clone() };
                    batch.advance_report(workload_id, &input);
                }
                (None, Phase::Starting { .. }) => batch
                    .effects
                    .push(crate::workload::Effect::StartCell { workload_id: workload_id.clone(), cell_id: cell_id.clone() }),
                (None, _) => {
                    let exit = lost_exit(format!("host {host} no longer has the cell"));
                    batch.advance_report(workload_id, &Input::CellExited { cell_id: cell_id.clone(), exit });
                }
            }
        }
        // Cells the journal does not expect there (a host back from a partition after its
        // workload moved on): kill them and clean up. Hot standbys of slots armed there are
        // expected.
        let hot: Vec<String> = batch
            .live()
            .workloads
            .values()
            .filter(|w| w.spec.replication.hot)
            .flat_map(|w| w.standbys.iter().filter(|s| s.host == host).map(|s| s.hot_cell_id(w.id())))
            .collect();
        for cell in inventory {
            if !on_host.iter().any(|(_, c)| *c == cell.cell_id) && !hot.contains(&cell.cell_id) {
                if matches!(cell.state, InventoryState::Running { .. }) {
                    batch.order(Order::Signal { host: host.to_string(), cell_id: cell.cell_id.clone(), kill: true });
                }
                batch.order(Order::Remove { host: host.to_string(), cell_id: cell.cell_id.clone() });
            }
        }
    }
}

/// The slots a host keeps against the journal's: `Arm` what it lacks, `Disarm` what it keeps but
/// should not.
fn reconcile_standbys(batch: &mut Batch, host: &str, armed: &[String]) {
    let mut orders = Vec::new();
    for w in batch.live().workloads.values() {
        if let Some(slot) = w.standbys.iter().find(|s| s.host == host) {
            if !armed.iter().any(|a| a == w.id()) {
                orders.push(Order::Arm { host: host.to_string(), workload_id: w.id().to_string(), slot: slot.clone() });
            }
        }
    }
    for workload_id in armed {
        let kept = batch.live().workloads.get(workload_id).is_some_and(|w| w.standbys.iter().any(|s| s.host == host));
        if !kept {
            orders.push(Order::Disarm { host: host.to_string(), workload_id: workload_id.clone() });
        }
    }
    batch.orders.extend(orders);
}
