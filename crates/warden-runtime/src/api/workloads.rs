//! `/v1/workloads`: submit, list, show, stop, checkpoint, and follow a workload's logs.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use tokio::sync::mpsc;
use warden_core::authz::{Action, Kind, Principal};
use warden_core::{Projection, Spec};

use super::agents::REMOTE_LOGS_ANSWER_WITHIN;
use super::authz;
use super::state::{ask, ApiState, Caller};
use crate::engine::Command;
use crate::error::ApiError;
use crate::view::{SubmitRequest, WorkloadView};

/// `POST /v1/workloads/:id/checkpoint` (an operator of its namespace): the agent running the checkpointed
/// workload's cell takes a checkpoint now; `state_uri` changes once it is stored (202).
pub(super) async fn checkpoint_now(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<WorkloadView>), ApiError> {
    let shared = state.shared.read().expect("projection lock");
    let id = resolve(&shared, &id)?;
    let workload = &shared.workloads[&id];
    if !workload.spec.replication.checkpoints() {
        return Err(ApiError::Conflict(format!(
            "workload {id} keeps no checkpoints ([replication] mode = \"checkpointed\" or \"warm-standby\", with state_dir)"
        )));
    }
    let (Some(cell), Some(host)) = (workload.phase.running_cell(), workload.current_host()) else {
        return Err(ApiError::Conflict(format!("workload {id} has no running cell to checkpoint")));
    };
    if host == state.host {
        return Err(ApiError::Conflict(format!("workload {id} runs on the control plane's own node, which does not checkpoint")));
    }
    state.queues.push(host, crate::proto::CommandKind::Checkpoint { cell_id: cell.cell_id.clone() });
    Ok((StatusCode::ACCEPTED, Json(WorkloadView::of(workload, &state.host))))
}

/// `POST /v1/workloads` (an operator of the spec's namespace).
pub(super) async fn submit(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<WorkloadView>), ApiError> {
    let request: SubmitRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")))?;
    let spec = Spec::parse(&request.file, &request.spec_toml).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    authz::check(&principal, Action::operate(Kind::Workload), &spec.namespace)?;
    authz::check_cell_users(&principal, Kind::Workload, &spec.namespace, [("cell.user".to_string(), spec.cell.user.as_ref())])?;
    let view =
        ask(&state, |reply| Command::Submit { spec, owner: caller, consumer_workload_id: request.consumer_workload_id, reply })
            .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /v1/workloads`: the caller's namespaces' workloads only.
pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> Json<Vec<WorkloadView>> {
    let shared = state.shared.read().expect("projection lock");
    let mut views: Vec<WorkloadView> = shared
        .workloads
        .values()
        .filter(|w| query.all || !w.phase.is_terminal())
        .filter(|w| principal.sees(&w.spec.namespace))
        .map(|w| WorkloadView::of(w, &state.host))
        .collect();
    views.sort_by_key(|v| v.info.vmid);
    Json(views)
}

/// Resolves what the user typed (see [`Projection::find_workloads`]) to one workload id.
pub(super) fn resolve(shared: &Projection, wanted: &str) -> Result<String, ApiError> {
    let matches: Vec<&str> = shared.find_workloads(wanted).into_iter().map(|w| w.id()).collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(ApiError::NotFound(format!("no workload {wanted}"))),
        many => Err(ApiError::Conflict(format!("{wanted} is ambiguous: {}", many.join(", ")))),
    }
}

pub(super) async fn status(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<WorkloadView>, ApiError> {
    let shared = state.shared.read().expect("projection lock");
    let id = resolve(&shared, &id)?;
    Ok(Json(WorkloadView::of(&shared.workloads[&id], &state.host)))
}

pub(super) async fn stop(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<WorkloadView>, ApiError> {
    let id = resolve(&state.shared.read().expect("projection lock"), &id)?;
    Ok(Json(ask(&state, |reply| Command::Stop { id, caller, reply }).await?))
}

#[derive(Deserialize)]
pub(super) struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// The workload's output: rotated files oldest first, then the live file; with `follow`, new
/// output as it is written, across rotations, until the workload has ended.
pub(super) async fn logs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let (id, max_files, remote) = {
        let shared = state.shared.read().expect("projection lock");
        let id = resolve(&shared, &id)?;
        let workload = &shared.workloads[&id];
        // The latest cell's host has its output (an earlier host's is not fetched).
        let remote = workload.host.clone().filter(|h| shared.hosts.contains_key(h));
        (id, workload.spec.logs.max_files, remote)
    };
    let (tx, rx) = mpsc::channel::<crate::logs::Chunk>(16);
    match remote {
        Some(host) => {
            let request_id = state.queues.open_logs(&host, tx);
            let command = crate::proto::CommandKind::Logs {
                request_id: request_id.clone(),
                workload_id: id,
                max_files,
                follow: query.follow,
            };
            state.queues.push(&host, command);
            // A host that does not answer (down, partitioned) must not hold the caller forever.
            let queues = state.queues.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REMOTE_LOGS_ANSWER_WITHIN).await;
                if let Some(session) = queues.log_session(&request_id) {
                    if !session.answered.load(std::sync::atomic::Ordering::Relaxed) {
                        let why = format!("host {} did not send the logs within {REMOTE_LOGS_ANSWER_WITHIN:?}", session.host);
                        let _ = session.tx.send(Err(std::io::Error::other(why))).await;
                        queues.close_logs(&request_id);
                    }
                }
            });
        }
        None => {
            let dir = state.logs_dir.join(&id);
            let shared = state.shared.clone();
            let ended = move || shared.read().expect("projection lock").workloads.get(&id).is_none_or(|w| w.phase.is_terminal());
            tokio::spawn(crate::logs::tail(dir, max_files, query.follow, ended, tx));
        }
    }
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .expect("valid response"))
}
