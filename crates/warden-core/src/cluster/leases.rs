//! Leases on the control plane's side: a holder's renewal, a drained holder's revocation, and a
//! standby's bid for the lease of a workload whose new cell waits for one (`crate::lease` has the
//! rules and the safety argument; this applies them to the journaled lease and its in-memory
//! expiry).

use crate::batch::Batch;
use crate::event::EventData;
use crate::lease::acquire;
use crate::projection::Projection;
use crate::workload::{Effect, Input, Phase};

use super::messages::{AcquireRequest, LeaseClaim, RevokeRequest};
use super::reports::{blob_artifact_id, blob_hex};
use super::state::{AcquireRefused, ClusterError, ClusterState};

impl ClusterState {
    /// Renews `host`'s claim if the lease is still its own *and* the workload's current cell is
    /// the one on that host: a host declared down has had its cell written off, so its renewals
    /// are refused even before the lease expires, and its shim fences the cell.
    pub fn renew(&mut self, projection: &Projection, host: &str, claim: &LeaseClaim, now_ms: u64) -> bool {
        let Some(workload) = projection.workloads.get(&claim.workload_id) else { return false };
        let current = workload.current_host() == Some(host) && workload.epoch == Some(claim.epoch);
        let Some(lease) = self.lease(projection, &claim.workload_id) else { return false };
        let timing = self.lease_timing(workload);
        match (current, crate::lease::renew(&lease, host, claim.epoch, now_ms, &timing)) {
            (true, Ok(renewed)) => {
                self.lease_expiry.insert(claim.workload_id.clone(), renewed.expires_at_ms);
                true
            }
            _ => false,
        }
    }

    /// A `LeaseRevocation`: the holder evicted its primary and gives the lease up (checked:
    /// signed by the host holding that epoch, for the workload's current cell there). The
    /// workload treats it as the loss of the host: a warm-standby workload fails over at once.
    pub fn revoke(&mut self, batch: &mut Batch, principal: &str, request: &RevokeRequest) -> Result<(), ClusterError> {
        self.authenticate(batch.live(), &request.host, principal)?;
        let live = batch.live();
        let holds = live
            .leases
            .get(&request.workload_id)
            .is_some_and(|l| l.epoch == request.epoch && l.holder.as_deref() == Some(request.host.as_str()));
        let current = live.workloads.get(&request.workload_id).is_some_and(|w| {
            w.phase.cell_id() == Some(request.cell_id.as_str()) && w.current_host() == Some(request.host.as_str())
        });
        if !holds || !current {
            return Err(ClusterError::NotHolder {
                host: request.host.clone(),
                workload_id: request.workload_id.clone(),
                cell_id: request.cell_id.clone(),
                epoch: request.epoch,
            });
        }
        if let Some(uri) = request.state_uri.as_deref().filter(|uri| blob_hex(uri).is_none()) {
            return Err(ClusterError::BadStateUri { uri: uri.to_string() });
        }
        // The final checkpoint's own report may have come first: then it is the current one.
        let previous = live.workloads[&request.workload_id].info.state_uri.as_deref();
        if let (Some(new), Some(previous)) = (&request.state_uri, previous) {
            if new != previous {
                batch.superseded_blobs.extend(blob_artifact_id(previous));
            }
        }
        let reason = format!("evicted from drained host {}", request.host);
        batch.record(EventData::LeaseRevoked {
            workload_id: request.workload_id.clone(),
            epoch: request.epoch,
            host: request.host.clone(),
            state_uri: request.state_uri.clone(),
            reason: reason.clone(),
        });
        let input = Input::HostLost { cell_id: request.cell_id.clone(), host: Some(request.host.clone()), reason };
        batch.advance_report(&request.workload_id, &input);
        Ok(())
    }

    /// A standby on `request.host` bids for the lease to run `request.cell_id`: granted
    /// (compare-and-swap on `expected_epoch`) only for the cell being offered, to a host that is
    /// up and holds a slot, while nobody else may still run the primary. On a win, the grant, the
    /// placement and the slot's release (the standby is the primary now) are recorded and the
    /// cell's start queued; the new epoch is returned.
    pub fn acquire(&mut self, batch: &mut Batch, principal: &str, request: &AcquireRequest) -> Result<u64, ClusterError> {
        let host = request.host.as_str();
        if !self.authenticate(batch.live(), host, principal)?.up {
            return Err(ClusterError::HostDown { host: host.to_string() });
        }
        self.seen(host, batch.now_ms);
        let refused = |refused: AcquireRefused| ClusterError::AcquireRefused {
            host: host.to_string(),
            workload_id: request.workload_id.clone(),
            refused,
        };
        let Some(workload) = batch.live().workloads.get(&request.workload_id) else {
            return Err(refused(AcquireRefused::UnknownWorkload(request.workload_id.clone())));
        };
        let offered = matches!(&workload.phase, Phase::Starting { cell_id, .. } if *cell_id == request.cell_id)
            && workload.placed_cell.as_deref() != Some(request.cell_id.as_str());
        if !offered {
            return Err(refused(AcquireRefused::NotOffered(request.cell_id.clone())));
        }
        let Some(slot) = workload.standbys.iter().find(|slot| slot.host == host) else {
            return Err(refused(AcquireRefused::NoSlot));
        };
        // Offered before the host was drained: a drained host takes no new cells.
        if batch.live().hosts.get(host).is_some_and(|h| h.draining) {
            return Err(refused(AcquireRefused::Drained));
        }
        // A hot standby is promoted in place: its running cell becomes the workload's.
        let adopts = match &request.hot_cell {
            Some(cell) if workload.spec.replication.hot && *cell == slot.hot_cell_id(workload.id()) => Some(cell.clone()),
            Some(cell) => return Err(refused(AcquireRefused::NotHotStandby(cell.clone()))),
            None => None,
        };
        let current = self.lease(batch.live(), &request.workload_id);
        let timing = self.lease_timing(workload);
        let lease = acquire(current.as_ref(), &request.workload_id, host, request.expected_epoch, batch.now_ms, &timing)
            .map_err(|e| refused(AcquireRefused::Lease(e)))?;
        self.lease_expiry.insert(request.workload_id.clone(), lease.expires_at_ms);
        let key = (request.workload_id.clone(), request.cell_id.clone());
        self.promoting.remove(&key);
        self.deferred.remove(&key);
        batch.record(EventData::LeaseGranted {
            workload_id: request.workload_id.clone(),
            epoch: lease.epoch,
            host: host.to_string(),
        });
        batch.record(EventData::CellPlaced {
            workload_id: request.workload_id.clone(),
            cell_id: request.cell_id.clone(),
            host: host.to_string(),
            epoch: Some(lease.epoch),
            adopts,
        });
        batch.record(EventData::StandbyReleased {
            workload_id: request.workload_id.clone(),
            host: host.to_string(),
            reason: format!("promoted to primary at epoch {}", lease.epoch),
        });
        let cell_id = batch.live().workloads[&request.workload_id].phase.cell_id().unwrap_or(&request.cell_id).to_string();
        batch.effects.push(Effect::StartCell { workload_id: request.workload_id.clone(), cell_id });
        Ok(lease.epoch)
    }
}
