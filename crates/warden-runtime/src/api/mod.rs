//! The HTTP/JSON API under `/v1/`: every request but `/v1/health`, `/metrics` and enrollment is
//! signed by an authorized key. This file is the route table: which handler answers what, behind
//! which authentication; each area's handlers are in their own room.

mod agents;
mod authn;
mod blobs;
mod events;
mod jobs;
mod keys;
mod rollouts;
mod state;
mod workloads;

use axum::middleware::{self};
use axum::routing::{get, post};
use axum::{Json, Router};

use agents::{
    agent_acquire, agent_commands, agent_enroll, agent_heartbeat, agent_logs, agent_revoke, agent_rollout, drain_host, hosts,
};
use authn::{authenticate, authenticate_blobs, authenticate_host};
use blobs::{blob_get, blob_put};
use events::{events, events_head, metrics};
use jobs::{artifact, job_cancel, job_history, job_list, job_run, job_status};
use keys::{key_add, key_list, key_revoke};
use rollouts::{rollout_control, rollout_list, rollout_start, rollout_status};
use workloads::{checkpoint_now, list, logs, status, stop, submit};

pub use state::ApiState;

pub fn router(state: ApiState) -> Router {
    let authenticated = Router::new()
        .route("/v1/workloads", post(submit).get(list))
        .route("/v1/workloads/:id", get(status))
        .route("/v1/workloads/:id/stop", post(stop))
        .route("/v1/workloads/:id/checkpoint", post(checkpoint_now))
        .route("/v1/workloads/:id/logs", get(logs))
        .route("/v1/events", get(events))
        .route("/v1/events/head", get(events_head))
        .route("/v1/jobs", post(job_run).get(job_list))
        .route("/v1/jobs/:id", get(job_status))
        .route("/v1/jobs/:id/history", get(job_history))
        .route("/v1/jobs/:id/cancel", post(job_cancel))
        .route("/v1/artifacts/:id", get(artifact))
        .route("/v1/hosts", get(hosts))
        .route("/v1/hosts/:name/drain", post(drain_host))
        .route("/v1/rollouts", post(rollout_start).get(rollout_list))
        .route("/v1/rollouts/:id", get(rollout_status))
        .route("/v1/rollouts/:id/:control", post(rollout_control))
        .route("/v1/keys", post(key_add).get(key_list))
        .route("/v1/keys/:name/revoke", post(key_revoke))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    // Agents sign with their host keys, which may call nothing but these.
    let agents = Router::new()
        .route("/v1/agents/heartbeat", post(agent_heartbeat))
        .route("/v1/agents/acquire", post(agent_acquire))
        .route("/v1/agents/revoke", post(agent_revoke))
        .route("/v1/agents/logs/:request", post(agent_logs))
        .route("/v1/agents/commands", get(agent_commands))
        .route("/v1/agents/rollout", post(agent_rollout))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate_host));
    // Checkpoint blobs: hosts store and fetch them, admins may fetch them; bodies up to
    // MAX_BLOB_BYTES (only here: everything else keeps MAX_BODY_BYTES).
    let blobs = Router::new()
        .route("/v1/blobs/:hex", axum::routing::put(blob_put).get(blob_get))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate_blobs));
    Router::new()
        .route("/v1/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .route("/v1/agents/enroll", post(agent_enroll))
        .merge(authenticated)
        .merge(agents)
        .merge(blobs)
        .with_state(state)
}
