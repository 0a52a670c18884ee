//! Workloads in the engine: a submission (one workload, `instances = N` of them, or one per host
//! for `each-host`, as `warden_core::cluster::submit_targets` decides), a stop by its owner, and
//! `each-host` services following the hosts.

use warden_core::batch::Batch;
use warden_core::cluster::{each_host_missing, submit_targets};
use warden_core::spec::PlacementCount;
use warden_core::workload::Input;
use warden_core::Spec;

use super::command::{send, Pending, Reply};
use crate::checkpoint::Keys;
use crate::clock::random_id;
use crate::error::ApiError;
use crate::view::WorkloadView;

/// Decides a submission; the caller is answered once it is durable.
pub fn submit(
    batch: &mut Batch,
    keys: &Keys,
    spec: Spec,
    owner: String,
    consumer: Option<String>,
    reply: Reply<WorkloadView>,
    pending: &mut Vec<Pending>,
) {
    if let Some(refused) = crate::secrets::missing_secret(batch.live(), &spec.namespace, &spec.cell, "cell.") {
        return send(reply, Err(refused));
    }
    let targets = match submit_targets(batch.live(), &spec, consumer.as_deref(), || random_id("s-")) {
        Ok(targets) => targets,
        Err(refused) => return send(reply, Err(refused.into())),
    };
    let n = targets.len();
    let mut ids = Vec::new();
    for (consumer, pinned) in targets {
        match submit_one(batch, keys, &spec, &owner, consumer, pinned) {
            Some(id) => ids.push(id),
            None => break,
        }
    }
    if ids.len() < n {
        // Every workload decided so far still goes into the journal (its key exists); the
        // caller learns that the submission did not complete.
        return send(reply, Err(ApiError::Internal("cannot create a checkpoint key (see the server's log)".into())));
    }
    let each_host = matches!(spec.placement.as_ref().map(|p| p.count), Some(PlacementCount::EachHost));
    let instances = if n > 1 || each_host { ids.clone() } else { Vec::new() };
    pending.push(Pending::Workload { id: ids[0].clone(), instances, reply });
}

/// Decides one new workload: its checkpoint key first (durably, if it checkpoints), then its
/// submission. `None` if the key cannot be written.
fn submit_one(
    batch: &mut Batch,
    keys: &Keys,
    spec: &Spec,
    owner: &str,
    consumer: Option<String>,
    pinned: Option<String>,
) -> Option<String> {
    let info = spec.workload_info(random_id("w-"), owner.to_string(), consumer, batch.now_ms);
    if spec.replication.checkpoints() {
        if let Err(e) = keys.load_or_create(&info.id) {
            tracing::error!("cannot create the checkpoint key of {}: {e}", info.id);
            return None;
        }
    }
    Some(batch.submit(info, spec.clone(), pinned))
}

/// Stops workload `id` for `caller`.
pub fn stop(batch: &mut Batch, id: String, caller: &str, reply: Reply<WorkloadView>, pending: &mut Vec<Pending>) {
    let Some(workload) = batch.live().workloads.get(&id) else {
        return send(reply, Err(ApiError::NotFound(format!("no workload {id}"))));
    };
    // Who may stop it is `api::authz`'s decision (an operator of its namespace), made before.
    tracing::info!(workload_id = %id, owner = %workload.info.owner, "stop requested by {caller}");
    match batch.advance(&id, &Input::Stop) {
        Ok(()) => pending.push(Pending::Workload { id, instances: Vec::new(), reply }),
        Err(e) => send(reply, Err(ApiError::Conflict(e.to_string()))),
    }
}

/// Gives every host that joined (or came to match) an instance of each `each-host` service.
pub fn follow_each_host(batch: &mut Batch, keys: &Keys) {
    for instance in each_host_missing(batch.live()) {
        tracing::info!(consumer = %instance.consumer_workload_id, "each-host: a new instance for host {}", instance.host);
        let consumer = Some(instance.consumer_workload_id);
        submit_one(batch, keys, &instance.spec, &instance.owner, consumer, Some(instance.host));
    }
}
