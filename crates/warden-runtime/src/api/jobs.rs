//! `/v1/jobs` and `/v1/artifacts`: start, list, show, cancel runs, their kernel-event history,
//! and content-addressed artifacts.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use tokio::sync::mpsc;
use warden_core::authz::{Action, Kind, Principal};
use warden_core::job::{JobManifest, RunStatus};
use warden_core::{CloudEvent, Projection};
use warden_store::StoreError;

use super::authz;
use super::state::{ask, ApiState, Caller};
use crate::engine::Command;
use crate::error::ApiError;
use crate::view::{JobRunRequest, RunView};

/// Every run status a view or a filter can name; `running` is a run with no `RunCompleted` yet.
pub(super) const RUN_STATUSES: [&str; 4] = ["running", "completed", "failed", "cancelled"];

pub(super) fn run_status(status: Option<RunStatus>) -> &'static str {
    status.map_or("running", RunStatus::as_str)
}

/// A copy of the manifests cache (cheap: the manifests are shared), so no lock is held while
/// the projection's is.
pub(super) fn manifests_snapshot(state: &ApiState) -> std::collections::BTreeMap<String, Arc<JobManifest>> {
    state.manifests.read().expect("manifests lock").clone()
}

/// Resolves a full run id or a unique prefix of one.
pub(super) fn resolve_run(shared: &Projection, wanted: &str) -> Result<String, ApiError> {
    if shared.runs.contains_key(wanted) {
        return Ok(wanted.to_string());
    }
    let matches: Vec<&str> =
        shared.runs.keys().filter(|id| !wanted.is_empty() && id.starts_with(wanted)).map(String::as_str).collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(ApiError::NotFound(format!("no job run {wanted}"))),
        many => Err(ApiError::Conflict(format!("{wanted} is ambiguous: {}", many.join(", ")))),
    }
}

/// The view of the run `wanted` names.
pub(super) fn run_view(state: &ApiState, wanted: &str) -> Result<RunView, ApiError> {
    let manifests = manifests_snapshot(state);
    let shared = state.shared.read().expect("projection lock");
    let run = &shared.runs[&resolve_run(&shared, wanted)?];
    Ok(RunView::of(run, manifests.get(&run.manifest_id).map(Arc::as_ref)))
}

/// `POST /v1/jobs` (an operator of the manifest's namespace).
pub(super) async fn job_run(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let request: JobRunRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")))?;
    let mut manifest =
        JobManifest::parse(&request.file, &request.manifest_toml).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    authz::check(&principal, Action::operate(Kind::Job), &manifest.namespace)?;
    let users = manifest.states.iter().map(|state| (format!("state {:?}: user", state.id), state.cell.user.as_ref()));
    authz::check_cell_users(&principal, Kind::Job, &manifest.namespace, users)?;
    if let Some(workdir) = &request.workdir {
        if !std::path::Path::new(workdir).is_absolute() {
            return Err(ApiError::BadRequest(format!("the default workdir must be an absolute path, not {workdir:?}")));
        }
        manifest = manifest.with_default_workdir(workdir);
    }
    let input = match request.input {
        None => serde_json::Value::Object(Default::default()),
        Some(input @ serde_json::Value::Object(_)) => input,
        Some(_) => return Err(ApiError::BadRequest("the input context must be a JSON object".into())),
    };
    let view = ask(&state, |reply| Command::JobRun { manifest, input, owner: caller, reply }).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize)]
pub(super) struct JobListQuery {
    status: Option<String>,
}

/// `GET /v1/jobs`: the caller's namespaces' runs only.
pub(super) async fn job_list(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<JobListQuery>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    if let Some(wanted) = &query.status {
        if !RUN_STATUSES.contains(&wanted.as_str()) {
            return Err(ApiError::BadRequest(format!("unknown run status {wanted:?}: one of {}", RUN_STATUSES.join(", "))));
        }
    }
    let manifests = manifests_snapshot(&state);
    let shared = state.shared.read().expect("projection lock");
    let mut runs: Vec<_> = shared
        .runs
        .values()
        .filter(|run| query.status.as_deref().is_none_or(|wanted| run_status(run.status) == wanted))
        .filter(|run| authz::sees(&principal, Kind::Job, &authz::run_scope(&shared, &manifests, &run.run_id)))
        .collect();
    runs.sort_by(|a, b| (a.started_at_ms, &a.run_id).cmp(&(b.started_at_ms, &b.run_id)));
    Ok(Json(runs.into_iter().map(|run| RunView::of(run, manifests.get(&run.manifest_id).map(Arc::as_ref))).collect()))
}

pub(super) async fn job_status(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<RunView>, ApiError> {
    Ok(Json(run_view(&state, &id)?))
}

pub(super) async fn job_cancel(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let run_id = resolve_run(&state.shared.read().expect("projection lock"), &id)?;
    Ok(Json(ask(&state, |reply| Command::JobCancel { run_id, caller, reply }).await?))
}

/// The CloudEvents `type` of journaled kernel events.
pub(super) const KERNEL_EVENT_TYPE: &str = "dev.warden.job.kernel.v1";

/// A run's kernel events so far as NDJSON, one per line, flat: the event's `data` (`run_id`,
/// `kind` and the seed's fields) plus the journal's `seq` and `time`. A journal read that fails
/// part-way aborts the response rather than ending it early and looking complete.
pub(super) async fn job_history(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let run_id = resolve_run(&state.shared.read().expect("projection lock"), &id)?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut after = 0;
        loop {
            let store = state.store.clone();
            let subject = run_id.clone();
            let page = match tokio::task::spawn_blocking(move || store.read_after(after, 1000, Some(&subject))).await {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            after = last.seq;
            let mut chunk = String::new();
            for event in page.iter().filter(|e| e.event_type == KERNEL_EVENT_TYPE) {
                chunk.push_str(&flat_kernel_event(event).to_string());
                chunk.push('\n');
            }
            if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .expect("valid response"))
}

/// A journaled kernel event as `history` shows it: its `data` with `seq` and `time` added.
pub(super) fn flat_kernel_event(event: &CloudEvent) -> serde_json::Value {
    let mut flat = match &event.data {
        serde_json::Value::Object(map) => map.clone(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("data".into(), other.clone());
            map
        }
    };
    flat.insert("seq".into(), event.seq.into());
    flat.insert("time".into(), event.time.clone().into());
    serde_json::Value::Object(flat)
}

/// Whether `id` looks like an artifact id: `sha256:` and 64 lowercase hex digits.
pub(super) fn is_artifact_id(id: &str) -> bool {
    id.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// An artifact's bytes, exactly as stored (canonical JSON), verified against its id on read: a
/// corrupt artifact is a 500 naming it, never its damaged bytes.
pub(super) async fn artifact(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if !is_artifact_id(&id) {
        return Err(ApiError::BadRequest(format!("{id:?} is not an artifact id (sha256:<64 lowercase hex digits>)")));
    }
    let store = state.store.clone();
    let wanted = id.clone();
    let bytes = tokio::task::spawn_blocking(move || store.get_artifact(&wanted))
        .await
        .map_err(|e| ApiError::Internal(format!("reading artifact {id}: {e}")))?;
    match bytes {
        Ok(Some(bytes)) => Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response()),
        Ok(None) => Err(ApiError::NotFound(format!("no artifact {id}"))),
        Err(e @ StoreError::ArtifactCorrupt { .. }) => Err(ApiError::Internal(e.to_string())),
        Err(e) => Err(ApiError::Internal(format!("reading artifact {id}: {e}"))),
    }
}
