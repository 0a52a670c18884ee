//! The leases of this host's fenced cells, as the heartbeat carries them: the renewals to send,
//! and a heartbeat's answers applied (a renewed lease's deadline moved and handed to the cell's
//! shim, a refused one's cell killed), or a heartbeat that found no control plane at all (its
//! connection refused: the cells that ride outages out are renewed by that evidence, see
//! `warden_core::lease`, "While the control plane is down"). See `executor.rs` for why deadlines
//! count from the send.

use super::cell_table::Tracked;
use super::context::AgentContext;
use warden_core::lease::{HeldLease, OutagePolicy};

use crate::proto::LeaseClaim;

/// A renewal to send with a heartbeat: the claim, and the cell it keeps alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub cell_id: String,
    pub claim: LeaseClaim,
}

/// The leases to renew with the next heartbeat: one per fenced cell that runs (or is being
/// started) and whose lease was not lost.
pub(super) fn renewals(context: &AgentContext) -> Vec<Renewal> {
    context
        .cells()
        .iter()
        .filter(|(_, entry)| !matches!(entry.state, Tracked::Exited(_)))
        .filter_map(|(cell_id, entry)| {
            let held = entry.lease?;
            Some(Renewal {
                cell_id: cell_id.clone(),
                claim: LeaseClaim { workload_id: entry.workload_id.clone(), epoch: held.epoch },
            })
        })
        .collect()
}

/// Applies a heartbeat's answers to its `renewals` (same order), the heartbeat having been
/// sent at `sent_at_ms` on `CLOCK_BOOTTIME`: a renewed lease's deadline is extended and
/// written to the cell's `lease.json`; a refused one is dropped and its cell killed.
pub(super) async fn apply_renewals(context: &AgentContext, renewals: &[Renewal], answers: &[bool], sent_at_ms: u64) {
    let mut extend = Vec::new();
    let mut kill = Vec::new();
    {
        let mut cells = context.cells();
        for (renewal, &renewed) in renewals.iter().zip(answers) {
            let Some(entry) = cells.get_mut(&renewal.cell_id) else { continue };
            let timing = context.timing_for(entry.lease_ttl_ms);
            let Some(held) = entry.lease.as_mut().filter(|held| held.epoch == renewal.claim.epoch) else { continue };
            if renewed {
                held.extend(sent_at_ms, &timing);
                extend.push((renewal.cell_id.clone(), *held));
            } else {
                tracing::warn!(
                    cell_id = %renewal.cell_id,
                    "the control plane refused lease epoch {} of {}: killing the cell",
                    held.epoch,
                    renewal.claim.workload_id
                );
                entry.lease = None;
                match entry.state {
                    Tracked::Running(_) => kill.push(renewal.cell_id.clone()),
                    Tracked::Starting => entry.lease_lost = true,
                    Tracked::Exited(_) => {}
                }
            }
        }
    }
    hand_to_shims(context, extend, kill).await;
}

/// A heartbeat sent at `sent_at_ms` found no control plane: its connection was refused at
/// `received_at_ms` (both on `CLOCK_BOOTTIME`). Every renewal it carried for a cell that rides
/// outages out, and whose fence had not passed, counts as answered for that send; the others
/// are left to their fences. How many fences moved.
pub(super) async fn no_control_plane(
    context: &AgentContext,
    renewals: &[Renewal],
    sent_at_ms: u64,
    received_at_ms: u64,
) -> usize {
    let mut extend = Vec::new();
    {
        let mut cells = context.cells();
        for renewal in renewals {
            let Some(entry) = cells.get_mut(&renewal.cell_id) else { continue };
            if entry.lease_outage == OutagePolicy::Stop {
                continue;
            }
            let timing = context.timing_for(entry.lease_ttl_ms);
            let Some(held) = entry.lease.as_mut().filter(|held| held.epoch == renewal.claim.epoch) else { continue };
            if held.no_control_plane(sent_at_ms, received_at_ms, &timing) {
                extend.push((renewal.cell_id.clone(), *held));
            }
        }
    }
    let moved = extend.len();
    hand_to_shims(context, extend, Vec::new()).await;
    moved
}

/// Writes the moved fences to the cells' `lease.json` (where their shims read them) and kills
/// the cells whose leases were refused.
async fn hand_to_shims(context: &AgentContext, extend: Vec<(String, HeldLease)>, kill: Vec<String>) {
    if extend.is_empty() && kill.is_empty() {
        return;
    }
    let backend = context.backend().clone();
    let done = tokio::task::spawn_blocking(move || {
        for (cell_id, held) in extend {
            match backend.renew_lease(&cell_id, held.epoch, held.deadline_ms.saturating_mul(1_000_000)) {
                // Not created yet (the start is writing its first lease) or already removed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(%cell_id, "cannot renew the lease file: {e}"),
                Ok(()) => {}
            }
        }
        for cell_id in kill {
            if let Err(e) = backend.signal(&cell_id, true) {
                tracing::warn!(%cell_id, "cannot kill the cell that lost its lease: {e}");
            }
        }
    });
    let _ = done.await;
}
