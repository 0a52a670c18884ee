//! Hosts and agents in the engine: their requests go to the core's cluster decisions
//! (`warden_core::cluster::ClusterState`), and what it decides for a host — an `Order`, or a cell
//! to start there — is rendered into the agent protocol's commands (with the spec, the lease, the
//! checkpoint key) and queued for the agent's long poll once the batch is durable.

use warden_core::batch::{Batch, Order};
use warden_core::cluster::ClusterState;
use warden_core::{Projection, Workload};

use super::command::{send, Pending, Reply};
use super::rollouts;
use crate::checkpoint::Keys;
use crate::cluster::Queues;
use crate::error::ApiError;
use crate::proto::{
    AcquireRequest, CheckpointPlan, CommandKind, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatResponse, RevokeRequest,
    RolloutReport, StartLease,
};

/// A host enrolls with a join token (checked here, by the core, on the engine's clock);
/// answered once its enrollment and the token's use are durable.
pub fn enroll(
    cluster: &mut ClusterState,
    batch: &mut Batch,
    request: EnrollRequest,
    principal: String,
    reply: Reply<EnrollResponse>,
    pending: &mut Vec<Pending>,
) {
    let (name, token, channel, tags) = (&request.name, &request.join_token, request.channel.clone(), request.tags.clone());
    if let Err(e) = cluster.enroll_with_join_token(batch, name, &principal, token, channel, tags) {
        tracing::warn!(host = %request.name, "enrollment refused: {e}");
        return send(reply, Err(e.into()));
    }
    let config = cluster.config;
    let response = EnrollResponse {
        host: request.name,
        principal,
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        host_ttl_ms: config.host_ttl_ms,
        lease: config.lease,
    };
    pending.push(Pending::Enrolled { response, reply });
}

/// An agent's heartbeat; answered once the reports it acknowledges are durable.
pub fn heartbeat(
    cluster: &mut ClusterState,
    batch: &mut Batch,
    queues: &Queues,
    principal: &str,
    heartbeat: Heartbeat,
    reply: Reply<HeartbeatResponse>,
    pending: &mut Vec<Pending>,
) {
    let answer = match cluster.heartbeat(batch, principal, &heartbeat) {
        Ok(answer) => answer,
        Err(e) => return send(reply, Err(e.into())),
    };
    let response = HeartbeatResponse {
        acked_reports_through: answer.acked_reports_through,
        renewed: answer.renewed,
        incarnation: queues.incarnation.clone(),
        send_inventory: answer.send_inventory,
        // With the inventory (the first heartbeat after either side restarted): every rollout
        // order of the host, so an agent that lost its memory resumes.
        rollouts: match heartbeat.inventory {
            Some(_) => rollouts::orders_for_host(batch.live(), &heartbeat.host),
            None => Vec::new(),
        },
    };
    pending.push(Pending::Heartbeat { response, reply });
}

/// A host's report on its part in a rollout, checked to come from that host.
pub fn rollout_report(
    cluster: &mut ClusterState,
    batch: &mut Batch,
    principal: &str,
    report: RolloutReport,
    reply: Reply<crate::proto::RolloutReportResponse>,
    pending: &mut Vec<Pending>,
) {
    let host = report.host.clone();
    let outcome = cluster
        .check_host(batch.live(), &host, principal)
        .map_err(ApiError::from)
        .and_then(|()| rollouts::report(batch, &report));
    match outcome {
        Ok(outcome) => {
            cluster.seen(&host, batch.now_ms);
            pending.push(Pending::RolloutReported { rollout_id: report.rollout_id, host, outcome, reply });
        }
        Err(error) => send(reply, Err(error)),
    }
}

/// An operator's drain (or undrain) of `host`.
pub fn drain(
    cluster: &mut ClusterState,
    batch: &mut Batch,
    host: &str,
    drain: bool,
    reply: Reply<()>,
    pending: &mut Vec<Pending>,
) {
    match cluster.drain(batch, host, drain) {
        Ok(()) => pending.push(Pending::Done { reply }),
        Err(e) => send(reply, Err(e.into())),
    }
}

/// An admin's removal of `host`: answered once durable; from then on its key is refused.
pub fn remove(
    cluster: &mut ClusterState,
    batch: &mut Batch,
    host: &str,
    caller: &str,
    reply: Reply<()>,
    pending: &mut Vec<Pending>,
) {
    match cluster.remove_host(batch, host, caller) {
        Ok(()) => {
            tracing::info!(host, "host removed: its cells are written off and its key refused from now on");
            pending.push(Pending::Done { reply })
        }
        Err(e) => send(reply, Err(e.into())),
    }
}

/// A drained holder's revocation.
pub fn revoke(
    cluster: &mut ClusterState,
    batch: &mut Batch,
    principal: &str,
    request: &RevokeRequest,
    reply: Reply<()>,
    pending: &mut Vec<Pending>,
) {
    match cluster.revoke(batch, principal, request) {
        Ok(()) => pending.push(Pending::Done { reply }),
        Err(e) => send(reply, Err(e.into())),
    }
}

/// A standby's bid for a lease; on a win the grant is answered once durable.
pub fn acquire(
    cluster: &mut ClusterState,
    batch: &mut Batch,
    principal: &str,
    request: &AcquireRequest,
    reply: Reply<crate::proto::AcquireResponse>,
    pending: &mut Vec<Pending>,
) {
    match cluster.acquire(batch, principal, request) {
        Ok(epoch) => {
            tracing::info!(workload_id = %request.workload_id, host = %request.host, epoch, "a standby won the lease");
            pending.push(Pending::Acquired { epoch, reply });
        }
        Err(e) => send(reply, Err(e.into())),
    }
}

/// Renders the core's decisions for agents into their commands and queues them.
pub struct Dispatch<'a> {
    pub live: &'a Projection,
    pub cluster: &'a ClusterState,
    pub queues: &'a Queues,
    pub keys: &'a Keys,
    pub secrets: &'a crate::secrets::SecretKey,
}

impl Dispatch<'_> {
    /// Queues one order (a durable decision) for its host.
    pub fn order(&self, order: Order) {
        match order {
            Order::Promote { host, workload_id, cell_id, expected_epoch } => {
                self.queues.push(&host, CommandKind::Promote { workload_id, cell_id, expected_epoch })
            }
            Order::Evict { host, workload_id, cell_id, epoch, grace_ms } => {
                self.queues.push(&host, CommandKind::Evict { workload_id, cell_id, epoch, grace_ms })
            }
            Order::Signal { host, cell_id, kill } => self.queues.push(&host, CommandKind::Signal { cell_id, kill }),
            Order::Remove { host, cell_id } => {
                // Only an inventory names a cell the journal does not: a stale primary, or one
                // started after the backup a restore came from. Never stopped without a word.
                tracing::warn!(
                    "host {host} has cell {cell_id}, which the journal does not know: the agent stops it if it runs and removes it"
                );
                self.queues.push(&host, CommandKind::Remove { cell_id })
            }
            Order::Arm { host, workload_id, slot } => {
                // A slot released again in this same batch is not armed.
                let Some(workload) = self.live.workloads.get(&workload_id) else { return };
                match self.arm_command(workload, slot) {
                    Ok(arm) => self.queues.push(&host, arm),
                    // The slot stays unarmed on the host; a failover then starts the cell cold,
                    // whose start fails with the same reason.
                    Err(error) => {
                        tracing::warn!(%workload_id, "standby on {host} not armed: {}", crate::error::error_chain(&error))
                    }
                }
            }
            Order::Disarm { host, workload_id } => self.queues.push(&host, CommandKind::Disarm { workload_id }),
            Order::Rollout { host, rollout_id } => {
                if let Some(order) = rollouts::order(self.live, &rollout_id, &host) {
                    self.queues.push(&host, CommandKind::Rollout { order });
                }
            }
        }
    }

    /// Queues the `Start` of `cell_id` on `host`, under the workload's lease. The cell's
    /// secrets are opened here and go to this host alone, in this command's environment;
    /// if one cannot be, nothing is queued and the caller fails the start with the reason.
    pub fn start(&self, host: &str, workload: &Workload, cell_id: String) -> Result<(), crate::secrets::ResolveError> {
        let mut cell = workload.spec.cell.clone();
        cell.env.extend(self.secrets.resolve(&self.live.secrets, &workload.spec.namespace, &cell)?);
        // The cell learns its host, e.g. to bind its address or name its metrics.
        cell.env.insert("WARDEN_HOST".into(), host.to_string());
        let default_ttl_ms = self.cluster.config.lease.ttl_ms;
        let start = CommandKind::Start {
            workload_id: workload.id().to_string(),
            cell_id,
            cell,
            logs: workload.spec.logs,
            lease: workload.epoch.map(|epoch| {
                let ttl_ms = self.cluster.lease_timing(workload).ttl_ms;
                let outage = workload.spec.placement.as_ref().map(|p| p.control_plane_outage).unwrap_or_default();
                StartLease { epoch, ttl_ms: (ttl_ms != default_ttl_ms).then_some(ttl_ms), outage }
            }),
            checkpoint: self.checkpoint_plan(workload),
            spec_id: Some(workload.info.spec_id.clone()),
        };
        self.queues.push(host, start);
        Ok(())
    }

    /// What a standby host stages: the cell (with its secrets: a hot standby runs at once),
    /// its logs, the checkpoint to fetch ahead of time.
    fn arm_command(
        &self,
        workload: &Workload,
        slot: warden_core::standby::StandbySlot,
    ) -> Result<CommandKind, crate::secrets::ResolveError> {
        let mut cell = workload.spec.cell.clone();
        cell.env.extend(self.secrets.resolve(&self.live.secrets, &workload.spec.namespace, &cell)?);
        Ok(CommandKind::Arm {
            workload_id: workload.id().to_string(),
            slot,
            cell,
            logs: workload.spec.logs,
            promotion_delay_ms: workload.spec.replication.promotion_delay(),
            checkpoint: self.checkpoint_plan(workload),
            hot: workload.spec.replication.hot,
        })
    }

    /// What a `Start` of a checkpointed workload carries: where its state lives, its key, and
    /// the latest checkpoint to restore, so any respawn (here or elsewhere) starts from it.
    fn checkpoint_plan(&self, workload: &Workload) -> Option<CheckpointPlan> {
        let replication = &workload.spec.replication;
        if !replication.checkpoints() {
            return None;
        }
        let state_dir = replication.state_dir.clone()?;
        let key_hex = match self.keys.load_or_create(workload.id()) {
            Ok(key) => hex::encode(key),
            Err(e) => {
                // An empty key makes the agent refuse the start (a failed start, with a reason)
                // rather than run the cell from an empty state or without checkpoints.
                tracing::error!(workload_id = %workload.id(), "cannot read the checkpoint key: {e}");
                String::new()
            }
        };
        Some(CheckpointPlan {
            state_dir,
            interval_ms: replication.checkpoint_interval_ms.unwrap_or(warden_core::spec::DEFAULT_CHECKPOINT_INTERVAL_MS),
            key_hex,
            restore: workload.info.state_uri.clone(),
        })
    }
}
