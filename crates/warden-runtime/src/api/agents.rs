//! `/v1/agents/*` and `/v1/hosts`: what agents call (enroll, heartbeat, commands, revoke, acquire,
//! logs, rollout reports) and what operators see and do of hosts.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::authn::signed_by;
use super::state::{ask, ApiState, Caller, MAX_BODY_BYTES};
use crate::clock::now_ms;
use crate::engine::Command;
use crate::error::ApiError;
use crate::proto::{
    AcquireRequest, AcquireResponse, Commands, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatResponse, RevokeRequest,
    RolloutReport, RolloutReportResponse,
};
use crate::view::HostView;

/// `POST /v1/agents/enroll`: signed by the key being enrolled, and carrying a join token, which
/// the engine checks (expiry on its clock, uses, revocation) and records the use of.
pub(super) async fn agent_enroll(State(state): State<ApiState>, request: Request) -> Result<Json<EnrollResponse>, Response> {
    // Self-signed: the key being enrolled signs; the join token is what authorizes it.
    let (_, bytes, principal) =
        signed_by(&state, request, MAX_BODY_BYTES, |header| header.and_then(crate::auth::header_key).into_iter().collect())
            .await?;
    let request: EnrollRequest =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")).into_response())?;
    let name_ok = !request.name.is_empty()
        && request.name.len() <= 63
        && request.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !name_ok {
        return Err(ApiError::BadRequest(format!(
            "host name must be 1-63 of a-z, A-Z, 0-9, '-', '_', '.'; got {:?}",
            request.name
        ))
        .into_response());
    }
    ask(&state, |reply| Command::Enroll { request, principal, reply }).await.map(Json).map_err(IntoResponse::into_response)
}

pub(super) async fn agent_heartbeat(
    State(state): State<ApiState>,
    Extension(Caller(principal)): Extension<Caller>,
    body: Bytes,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let heartbeat: Heartbeat = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad heartbeat: {e}")))?;
    state.queues.heartbeat_seen(&heartbeat.host, now_ms());
    Ok(Json(ask(&state, |reply| Command::Heartbeat { principal, heartbeat, reply }).await?))
}

/// `POST /v1/agents/revoke`: a drained host gives up the lease of a primary it evicted.
pub(super) async fn agent_revoke(
    State(state): State<ApiState>,
    Extension(Caller(principal)): Extension<Caller>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let request: RevokeRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad revoke request: {e}")))?;
    ask(&state, |reply| Command::Revoke { principal, request, reply }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct DrainRequest {
    drain: bool,
}

/// `POST /v1/hosts/:name/drain` `{"drain": true|false}`: drain a host, or take it back.
pub(super) async fn drain_host(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let request: DrainRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad drain request: {e}")))?;
    ask(&state, |reply| Command::Drain { host: name, drain: request.drain, reply }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/hosts/:name/remove`: the host's cells are written off at once (restarted or failed
/// over elsewhere) and its key is refused on every route from then on.
pub(super) async fn remove_host(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    ask(&state, |reply| Command::HostRemove { host: name, caller, reply }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/agents/rollout`: a host's report on its part in a rollout.
pub(super) async fn agent_rollout(
    State(state): State<ApiState>,
    Extension(Caller(principal)): Extension<Caller>,
    body: Bytes,
) -> Result<Json<RolloutReportResponse>, ApiError> {
    let report: RolloutReport =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad rollout report: {e}")))?;
    Ok(Json(ask(&state, |reply| Command::RolloutReport { principal, report, reply }).await?))
}

/// `POST /v1/agents/acquire`: a standby's bid for a lease; 409 when it lost.
pub(super) async fn agent_acquire(
    State(state): State<ApiState>,
    Extension(Caller(principal)): Extension<Caller>,
    body: Bytes,
) -> Result<Json<AcquireResponse>, ApiError> {
    let request: AcquireRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad acquire request: {e}")))?;
    Ok(Json(ask(&state, |reply| Command::Acquire { principal, request, reply }).await?))
}

#[derive(Deserialize)]
pub(super) struct CommandsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    incarnation: Option<String>,
    /// How long to hold the request when nothing is queued (ms, at most 20 s).
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// `GET /v1/agents/commands`: the caller's queued commands, waiting for some if there are none.
pub(super) async fn agent_commands(
    State(state): State<ApiState>,
    Extension(Caller(principal)): Extension<Caller>,
    Query(query): Query<CommandsQuery>,
) -> Result<Json<Commands>, ApiError> {
    let host = {
        let shared = state.shared.read().expect("projection lock");
        shared.hosts.values().find(|h| h.principal == principal).map(|h| h.name.clone())
    }
    .ok_or_else(|| ApiError::Forbidden("not an enrolled host".into()))?;
    // Numbering restarts with every control-plane incarnation: an agent still counting the old
    // one's commands gets everything queued now.
    let after = if query.incarnation.as_deref() == Some(state.queues.incarnation.as_str()) { query.after } else { 0 };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms.unwrap_or(20_000).min(20_000));
    loop {
        let (commands, notify) = state.queues.after(&host, after);
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Checked again after registering, so a push in between is not missed.
        let commands = if commands.is_empty() { state.queues.after(&host, after).0 } else { commands };
        if !commands.is_empty() {
            return Ok(Json(Commands { incarnation: state.queues.incarnation.clone(), commands }));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(Json(Commands { incarnation: state.queues.incarnation.clone(), commands: Vec::new() }));
        }
    }
}

/// `GET /v1/hosts`: every enrolled host, its state, last heartbeat and live cells.
pub(super) async fn hosts(State(state): State<ApiState>) -> Json<Vec<HostView>> {
    let shared = state.shared.read().expect("projection lock");
    let views = shared
        .hosts
        .values()
        .map(|h| HostView {
            name: h.name.clone(),
            state: match (h.up, h.draining) {
                (true, false) => "up",
                (true, true) => "draining",
                (false, _) => "down",
            }
            .to_string(),
            channel: h.channel.clone(),
            tags: h.tags.clone(),
            principal: h.principal.clone(),
            last_heartbeat_ms: state.queues.last_heartbeat(&h.name),
            since_ms: h.since_ms,
            cells: shared
                .workloads
                .values()
                .filter(|w| w.current_host() == Some(h.name.as_str()))
                .map(|w| w.id().to_string())
                .collect(),
        })
        .collect();
    Json(views)
}

/// How long an agent has to start sending a `warden logs` it was asked for.
pub(super) const REMOTE_LOGS_ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
pub(super) struct AgentLogsQuery {
    #[serde(default)]
    done: bool,
}

/// `POST /v1/agents/logs/:request`: a chunk of a cell's output for a `warden logs` (and, with
/// `done`, its end); 410 once nobody reads it any more.
pub(super) async fn agent_logs(
    State(state): State<ApiState>,
    Extension(Caller(principal)): Extension<Caller>,
    Path(request_id): Path<String>,
    Query(query): Query<AgentLogsQuery>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let Some(session) = state.queues.log_session(&request_id) else {
        return Err(ApiError::Gone(format!("no one reads logs {request_id} any more")));
    };
    let principal_of_host = state.shared.read().expect("projection lock").hosts.get(&session.host).map(|h| h.principal.clone());
    if principal_of_host.as_deref() != Some(principal.as_str()) {
        return Err(ApiError::Forbidden(format!("logs {request_id} were asked of host {}", session.host)));
    }
    session.answered.store(true, std::sync::atomic::Ordering::Relaxed);
    if !body.is_empty() && session.tx.send(Ok(body)).await.is_err() {
        state.queues.close_logs(&request_id);
        return Err(ApiError::Gone(format!("no one reads logs {request_id} any more")));
    }
    if query.done {
        state.queues.close_logs(&request_id);
    }
    Ok(StatusCode::NO_CONTENT)
}
