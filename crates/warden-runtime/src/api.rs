//! The HTTP/JSON API under `/v1/`: every request but `/v1/health` is signed by an authorized key.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use warden_core::job::{JobManifest, RunStatus};
use warden_core::{CloudEvent, Projection, Spec};
use warden_store::{Store, StoreError};

use crate::auth::{verify_request, ReplayGuard};
use crate::clock::now_ms;
use crate::cluster::Queues;
use crate::engine::rollouts;
use crate::engine::{Command, Manifests};
use crate::error::ApiError;
use crate::proto::{
    AcquireRequest, AcquireResponse, Commands, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatResponse, RevokeRequest,
    RolloutReport, RolloutReportResponse,
};
use crate::view::{ErrorBody, HostView, JobRunRequest, RolloutRequest, RolloutView, RunView, SubmitRequest, WorkloadView};

#[derive(Clone)]
pub struct ApiState {
    pub commands: mpsc::UnboundedSender<Command>,
    pub shared: Arc<RwLock<Projection>>,
    pub events: broadcast::Sender<Arc<CloudEvent>>,
    pub store: Arc<dyn Store>,
    pub authorized_keys: Arc<RwLock<Vec<VerifyingKey>>>,
    pub replays: Arc<std::sync::Mutex<ReplayGuard>>,
    pub host: String,
    pub logs_dir: PathBuf,
    /// Job manifests by id, for run views (written by the engine).
    pub manifests: Manifests,
    /// Agents' command queues (long-polled) and last heartbeats.
    pub queues: Arc<Queues>,
    /// What `POST /v1/agents/enroll` must present (`<data-dir>/join-token`).
    pub join_token: Arc<String>,
    /// Signs the journal's chain head (`<data-dir>/server.key`).
    pub server_key: Arc<crate::auth::Identity>,
}

/// The authenticated caller's principal (`ed25519:<hex>`).
#[derive(Clone)]
struct Caller(String);

const MAX_BODY_BYTES: usize = 4 << 20;

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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let keys = state.authorized_keys.read().expect("keys lock").clone();
    pass_if_signed(&state, request, next, &keys).await
}

/// Like `authenticate`, for agents: the key must be an enrolled host's.
async fn authenticate_host(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let key = header.and_then(|header| enrolled_host_key(&state, header));
    pass_if_signed(&state, request, next, key.as_slice()).await
}

/// The key the `Authorization` header names, if it is an enrolled host's. Only that one key is
/// decoded (decoding every host's on every request made each agent request cost O(hosts):
/// at 1,000 hosts, three quarters of the control plane's CPU in the rollout bench).
fn enrolled_host_key(state: &ApiState, header: &str) -> Option<VerifyingKey> {
    let key = crate::auth::header_key(header)?;
    let principal = crate::auth::principal_of(&key);
    let shared = state.shared.read().expect("projection lock");
    shared.hosts.values().any(|h| h.principal == principal).then_some(key)
}

/// Runs the request on if it is signed by one of `keys` (the caller's principal goes along as
/// `Caller`); 401 otherwise.
async fn pass_if_signed(state: &ApiState, request: Request, next: Next, keys: &[VerifyingKey]) -> Response {
    match signed_by(state, request, MAX_BODY_BYTES, |_| keys.to_vec()).await {
        Ok((mut parts, bytes, principal)) => {
            parts.extensions.insert(Caller(principal));
            next.run(Request::from_parts(parts, Body::from(bytes))).await
        }
        Err(response) => response,
    }
}

/// Reads the body (at most `limit` bytes) and checks the signature against the keys `keys`
/// picks given the `Authorization` header (enrollment trusts the key the header names).
async fn signed_by(
    state: &ApiState,
    request: Request,
    limit: usize,
    keys: impl FnOnce(Option<&str>) -> Vec<VerifyingKey>,
) -> Result<(axum::http::request::Parts, Bytes, String), Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::BadRequest(format!("request body larger than {limit} bytes")).into_response())?;
    let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_default();
    let header = parts.headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let keys = keys(header);
    match verify_request(header, parts.method.as_str(), &path_and_query, &bytes, now_ms(), &keys, &state.replays) {
        Ok(principal) => Ok((parts, bytes, principal)),
        Err(e) => Err((StatusCode::UNAUTHORIZED, Json(ErrorBody { error: e.to_string() })).into_response()),
    }
}

/// Who called a blob route.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlobRole {
    Host,
    Admin,
}

/// Like `authenticate`, for `/v1/blobs`: an enrolled host's key or an authorized (admin) key,
/// and bodies up to `MAX_BLOB_BYTES`.
async fn authenticate_blobs(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, crate::checkpoint::MAX_BLOB_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let max = crate::checkpoint::MAX_BLOB_BYTES;
            return ApiError::BadRequest(format!("blob larger than {max} bytes")).into_response();
        }
    };
    let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_default();
    let header = parts.headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let hosts: Vec<VerifyingKey> = header.and_then(|header| enrolled_host_key(&state, header)).into_iter().collect();
    let admins = state.authorized_keys.read().expect("keys lock").clone();
    let mut keys = hosts.clone();
    keys.extend(admins);
    match verify_request(header, parts.method.as_str(), &path_and_query, &bytes, now_ms(), &keys, &state.replays) {
        Ok(principal) => {
            let is_host = crate::auth::parse_principal(&principal).is_some_and(|key| hosts.contains(&key));
            parts.extensions.insert(if is_host { BlobRole::Host } else { BlobRole::Admin });
            parts.extensions.insert(Caller(principal));
            next.run(Request::from_parts(parts, Body::from(bytes))).await
        }
        Err(e) => (StatusCode::UNAUTHORIZED, Json(ErrorBody { error: e.to_string() })).into_response(),
    }
}

/// `PUT /v1/blobs/<sha256hex>` (hosts only): stores the body as the artifact `sha256:<hex>`;
/// the body must hash to its name. Idempotent (artifacts are immutable).
async fn blob_put(
    State(state): State<ApiState>,
    Extension(role): Extension<BlobRole>,
    Path(hex): Path<String>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    if role != BlobRole::Host {
        return Err(ApiError::Forbidden("only hosts store blobs".into()));
    }
    if !crate::checkpoint::is_sha256_hex(&hex) {
        return Err(ApiError::BadRequest(format!("{hex:?} is not a sha256 (64 lowercase hex digits)")));
    }
    // Already read (and limited) by `authenticate_blobs`.
    let bytes = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::BadRequest(format!("cannot read the blob: {e}")))?;
    let actual = warden_core::canonical::sha256_hex(&bytes);
    if actual != hex {
        return Err(ApiError::BadRequest(format!("the blob's sha256 is {actual}, not {hex}")));
    }
    let artifact = warden_core::canonical::Artifact { id: format!("sha256:{hex}"), bytes: bytes.to_vec() };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.append_with_artifacts(vec![artifact], Vec::new())).await {
        Ok(Ok(_)) => Ok(StatusCode::CREATED),
        Ok(Err(e)) => Err(ApiError::Internal(format!("storing blob {hex}: {e}"))),
        Err(e) => Err(ApiError::Internal(format!("storing blob {hex}: {e}"))),
    }
}

/// `GET /v1/blobs/<sha256hex>` (hosts and admins): the bytes, checked against their name on
/// every read (a mismatch is a 500, never the damaged bytes).
async fn blob_get(State(state): State<ApiState>, Path(hex): Path<String>) -> Result<Response, ApiError> {
    if !crate::checkpoint::is_sha256_hex(&hex) {
        return Err(ApiError::BadRequest(format!("{hex:?} is not a sha256 (64 lowercase hex digits)")));
    }
    let id = format!("sha256:{hex}");
    let store = state.store.clone();
    let wanted = id.clone();
    let bytes = tokio::task::spawn_blocking(move || store.get_artifact(&wanted))
        .await
        .map_err(|e| ApiError::Internal(format!("reading blob {hex}: {e}")))?;
    match bytes {
        Ok(Some(bytes)) if warden_core::canonical::sha256_hex(&bytes) == hex => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        Ok(Some(_)) => Err(ApiError::Internal(format!("blob {hex} is corrupt: its bytes do not hash to its name"))),
        Ok(None) => Err(ApiError::NotFound(format!("no blob {hex}"))),
        Err(e @ StoreError::ArtifactCorrupt { .. }) => Err(ApiError::Internal(e.to_string())),
        Err(e) => Err(ApiError::Internal(format!("reading blob {hex}: {e}"))),
    }
}

/// `POST /v1/workloads/:id/checkpoint` (its owner): the agent running the checkpointed
/// workload's cell takes a checkpoint now; `state_uri` changes once it is stored (202).
async fn checkpoint_now(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<WorkloadView>), ApiError> {
    let shared = state.shared.read().expect("projection lock");
    let id = resolve(&shared, &id)?;
    let workload = &shared.workloads[&id];
    if workload.info.owner != caller {
        return Err(ApiError::Forbidden(format!("workload {id} belongs to {}", workload.info.owner)));
    }
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

/// `POST /v1/agents/enroll`: signed by the key being enrolled, and carrying the join token.
async fn agent_enroll(State(state): State<ApiState>, request: Request) -> Result<Json<EnrollResponse>, Response> {
    let unauthorized = |why: String| (StatusCode::UNAUTHORIZED, Json(ErrorBody { error: why })).into_response();
    // Self-signed: the key being enrolled signs; the join token is what authorizes it.
    let (_, bytes, principal) =
        signed_by(&state, request, MAX_BODY_BYTES, |header| header.and_then(crate::auth::header_key).into_iter().collect())
            .await?;
    let request: EnrollRequest =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")).into_response())?;
    if !crate::auth::constant_time_eq(request.join_token.as_bytes(), state.join_token.as_bytes()) {
        return Err(unauthorized("wrong join token (see <data-dir>/join-token on the server)".into()));
    }
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

async fn agent_heartbeat(
    State(state): State<ApiState>,
    Extension(Caller(principal)): Extension<Caller>,
    body: Bytes,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let heartbeat: Heartbeat = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad heartbeat: {e}")))?;
    state.queues.heartbeat_seen(&heartbeat.host, now_ms());
    Ok(Json(ask(&state, |reply| Command::Heartbeat { principal, heartbeat, reply }).await?))
}

/// `POST /v1/agents/revoke`: a drained host gives up the lease of a primary it evicted.
async fn agent_revoke(
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
struct DrainRequest {
    drain: bool,
}

/// `POST /v1/hosts/:name/drain` `{"drain": true|false}`: drain a host, or take it back.
async fn drain_host(State(state): State<ApiState>, Path(name): Path<String>, body: Bytes) -> Result<StatusCode, ApiError> {
    let request: DrainRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad drain request: {e}")))?;
    ask(&state, |reply| Command::Drain { host: name, drain: request.drain, reply }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/rollouts`: a service's new spec, or a host activation, rolled out by policy.
async fn rollout_start(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let request: RolloutRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad rollout request: {e}")))?;
    let view = ask(&state, |reply| Command::RolloutStart { request, caller, reply }).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /v1/rollouts`: newest first.
async fn rollout_list(State(state): State<ApiState>) -> Json<Vec<RolloutView>> {
    let shared = state.shared.read().expect("projection lock");
    let now = now_ms();
    let mut views: Vec<RolloutView> = shared.rollouts.values().map(|r| rollouts::view(r, now)).collect();
    views.sort_by(|a, b| b.started_at_ms.cmp(&a.started_at_ms).then_with(|| a.id.cmp(&b.id)));
    Json(views)
}

async fn rollout_status(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<RolloutView>, ApiError> {
    let shared = state.shared.read().expect("projection lock");
    let id = rollouts::resolve(&shared, &id)?;
    Ok(Json(rollouts::view(&shared.rollouts[&id], now_ms())))
}

/// `POST /v1/rollouts/:id/pause|resume|undo`.
async fn rollout_control(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path((id, control)): Path<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    let control = match control.as_str() {
        "pause" => rollouts::Control::Pause,
        "resume" => rollouts::Control::Resume,
        "undo" => rollouts::Control::Undo,
        other => return Err(ApiError::NotFound(format!("no rollout action {other:?} (pause, resume, undo)"))),
    };
    let id = rollouts::resolve(&state.shared.read().expect("projection lock"), &id)?;
    Ok(Json(ask(&state, |reply| Command::RolloutControl { id, control, caller, reply }).await?))
}

/// `POST /v1/agents/rollout`: a host's report on its part in a rollout.
async fn agent_rollout(
    State(state): State<ApiState>,
    Extension(Caller(principal)): Extension<Caller>,
    body: Bytes,
) -> Result<Json<RolloutReportResponse>, ApiError> {
    let report: RolloutReport =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad rollout report: {e}")))?;
    Ok(Json(ask(&state, |reply| Command::RolloutReport { principal, report, reply }).await?))
}

/// `POST /v1/agents/acquire`: a standby's bid for a lease; 409 when it lost.
async fn agent_acquire(
    State(state): State<ApiState>,
    Extension(Caller(principal)): Extension<Caller>,
    body: Bytes,
) -> Result<Json<AcquireResponse>, ApiError> {
    let request: AcquireRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad acquire request: {e}")))?;
    Ok(Json(ask(&state, |reply| Command::Acquire { principal, request, reply }).await?))
}

#[derive(Deserialize)]
struct CommandsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    incarnation: Option<String>,
    /// How long to hold the request when nothing is queued (ms, at most 20 s).
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// `GET /v1/agents/commands`: the caller's queued commands, waiting for some if there are none.
async fn agent_commands(
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
async fn hosts(State(state): State<ApiState>) -> Json<Vec<HostView>> {
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

async fn ask<T>(state: &ApiState, make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Command) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    state.commands.send(make(reply)).map_err(|_| ApiError::Conflict("the engine is shutting down".into()))?;
    answer.await.map_err(|_| ApiError::Conflict("the engine is shutting down".into()))?
}

async fn submit(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<(StatusCode, Json<WorkloadView>), ApiError> {
    let request: SubmitRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")))?;
    let spec = Spec::parse(&request.file, &request.spec_toml).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let view =
        ask(&state, |reply| Command::Submit { spec, owner: caller, consumer_workload_id: request.consumer_workload_id, reply })
            .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list(State(state): State<ApiState>, Query(query): Query<ListQuery>) -> Json<Vec<WorkloadView>> {
    let shared = state.shared.read().expect("projection lock");
    let mut views: Vec<WorkloadView> = shared
        .workloads
        .values()
        .filter(|w| query.all || !w.phase.is_terminal())
        .map(|w| WorkloadView::of(w, &state.host))
        .collect();
    views.sort_by_key(|v| v.info.vmid);
    Json(views)
}

/// Resolves a full id, a unique id prefix, or a `consumer_workload_id`.
fn resolve(shared: &Projection, wanted: &str) -> Result<String, ApiError> {
    if shared.workloads.contains_key(wanted) {
        return Ok(wanted.to_string());
    }
    let mut matches: Vec<&str> = shared
        .workloads
        .values()
        .filter(|w| w.id().starts_with(wanted) || w.info.consumer_workload_id.as_deref() == Some(wanted))
        .map(|w| w.id())
        .collect();
    matches.dedup();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(ApiError::NotFound(format!("no workload {wanted}"))),
        many => Err(ApiError::Conflict(format!("{wanted} is ambiguous: {}", many.join(", ")))),
    }
}

async fn status(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<WorkloadView>, ApiError> {
    let shared = state.shared.read().expect("projection lock");
    let id = resolve(&shared, &id)?;
    Ok(Json(WorkloadView::of(&shared.workloads[&id], &state.host)))
}

async fn stop(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<WorkloadView>, ApiError> {
    let id = resolve(&state.shared.read().expect("projection lock"), &id)?;
    Ok(Json(ask(&state, |reply| Command::Stop { id, caller, reply }).await?))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// The workload's output: rotated files oldest first, then the live file; with `follow`, new
/// output as it is written, across rotations, until the workload has ended.
async fn logs(
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

/// How long an agent has to start sending a `warden logs` it was asked for.
const REMOTE_LOGS_ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct AgentLogsQuery {
    #[serde(default)]
    done: bool,
}

/// `POST /v1/agents/logs/:request`: a chunk of a cell's output for a `warden logs` (and, with
/// `done`, its end); 410 once nobody reads it any more.
async fn agent_logs(
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

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    workload: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// What `?workload=` names: a workload (full id, unique prefix or consumer id), or else a job run
/// (full id or unique prefix), whose kernel events have the run id as their subject. A step
/// workload's id starts with its run's id, so a run is tried before workload prefixes.
fn resolve_subject(shared: &Projection, wanted: &str) -> Result<String, ApiError> {
    if shared.workloads.contains_key(wanted) {
        return Ok(wanted.to_string());
    }
    match resolve_run(shared, wanted) {
        Ok(run_id) => Ok(run_id),
        Err(ApiError::Conflict(e)) => Err(ApiError::Conflict(e)),
        Err(_) => resolve(shared, wanted),
    }
}

/// Journaled events as NDJSON (one CloudEvent per line), or Server-Sent Events when the client
/// asks for `text/event-stream`. With `follow`, the stream stays open for new events.
async fn events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let subject = match &query.workload {
        Some(wanted) => Some(resolve_subject(&state.shared.read().expect("projection lock"), wanted)?),
        None => None,
    };
    let sse = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    let frame = move |event: &CloudEvent| -> Bytes {
        let json = serde_json::to_string(event).expect("event serializes");
        Bytes::from(if sse { format!("id: {}\ndata: {json}\n\n", event.seq) } else { format!("{json}\n") })
    };
    // Subscribe before reading the backlog, so nothing is missed between the two.
    let mut live = state.events.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut last_sent = query.after;
        loop {
            // Backlog (or catch-up after lagging behind the broadcast) from the journal.
            loop {
                let store = state.store.clone();
                let subject = subject.clone();
                let page = tokio::task::spawn_blocking(move || store.read_after(last_sent, 1000, subject.as_deref())).await;
                let page = match page {
                    Ok(Ok(page)) => page,
                    _ => return,
                };
                let Some(last) = page.last() else { break };
                last_sent = last.seq;
                for event in &page {
                    if tx.send(Ok(frame(event))).await.is_err() {
                        return;
                    }
                }
            }
            if !query.follow {
                return;
            }
            loop {
                match live.recv().await {
                    Ok(event) => {
                        if event.seq <= last_sent || subject.as_deref().is_some_and(|s| event.subject.as_deref() != Some(s)) {
                            last_sent = last_sent.max(event.seq);
                            continue;
                        }
                        last_sent = event.seq;
                        if tx.send(Ok(frame(&event))).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    let content_type = if sse { "text/event-stream" } else { "application/x-ndjson" };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .expect("valid response"))
}

/// `GET /v1/events/head`: the journal's last durable event (seq and hash), signed now with the
/// server key (`warden_store::SignedHead`). The head comes from the store, which moves it only
/// after the append's fsync, so only durable events are ever signed; `GET /v1/events` read
/// afterwards returns at least every event up to it.
async fn events_head(State(state): State<ApiState>) -> Result<Json<warden_store::SignedHead>, ApiError> {
    let store = state.store.clone();
    let head = match tokio::task::spawn_blocking(move || store.head()).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return Err(ApiError::Internal(format!("reading the journal head: {e}"))),
        Err(e) => return Err(ApiError::Internal(format!("reading the journal head: {e}"))),
    };
    Ok(Json(state.server_key.sign_chain_head(&head, now_ms())))
}

/// Prometheus text exposition: workloads by state, restarts, and the journal head.
async fn metrics(State(state): State<ApiState>) -> Response {
    use std::fmt::Write;
    let shared = state.shared.read().expect("projection lock");
    let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
    for name in ["pending", "starting", "running", "exited", "backoff", "stopping", "completed", "failed", "stopped", "expired"] {
        by_state.insert(name, 0);
    }
    let mut restarts = 0u64;
    for workload in shared.workloads.values() {
        *by_state.entry(workload.phase.name()).or_default() += 1;
        restarts += u64::from(workload.restarts());
    }
    let mut out = String::new();
    out.push_str("# HELP warden_workloads Workloads by lifecycle state.\n# TYPE warden_workloads gauge\n");
    for (name, count) in by_state {
        let _ = writeln!(out, "warden_workloads{{state=\"{name}\"}} {count}");
    }
    out.push_str("# HELP warden_cell_restarts_total Cells started again after an earlier run of the same workload.\n");
    out.push_str("# TYPE warden_cell_restarts_total counter\n");
    let _ = writeln!(out, "warden_cell_restarts_total {restarts}");
    out.push_str(
        "# HELP warden_journal_head_seq Sequence number of the last durable event.\n# TYPE warden_journal_head_seq gauge\n",
    );
    let _ = writeln!(out, "warden_journal_head_seq {}", shared.last_seq);
    let mut runs = std::collections::BTreeMap::<&str, u64>::new();
    for name in RUN_STATUSES {
        runs.insert(name, 0);
    }
    for run in shared.runs.values() {
        *runs.entry(run_status(run.status)).or_default() += 1;
    }
    out.push_str("# HELP warden_job_runs Job runs by status.\n# TYPE warden_job_runs gauge\n");
    for (name, count) in runs {
        let _ = writeln!(out, "warden_job_runs{{status=\"{name}\"}} {count}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Every run status a view or a filter can name; `running` is a run with no `RunCompleted` yet.
const RUN_STATUSES: [&str; 4] = ["running", "completed", "failed", "cancelled"];

fn run_status(status: Option<RunStatus>) -> &'static str {
    status.map_or("running", RunStatus::as_str)
}

/// A copy of the manifests cache (cheap: the manifests are shared), so no lock is held while
/// the projection's is.
fn manifests_snapshot(state: &ApiState) -> std::collections::BTreeMap<String, Arc<JobManifest>> {
    state.manifests.read().expect("manifests lock").clone()
}

/// Resolves a full run id or a unique prefix of one.
fn resolve_run(shared: &Projection, wanted: &str) -> Result<String, ApiError> {
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
fn run_view(state: &ApiState, wanted: &str) -> Result<RunView, ApiError> {
    let manifests = manifests_snapshot(state);
    let shared = state.shared.read().expect("projection lock");
    let run = &shared.runs[&resolve_run(&shared, wanted)?];
    Ok(RunView::of(run, manifests.get(&run.manifest_id).map(Arc::as_ref)))
}

async fn job_run(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let request: JobRunRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")))?;
    let mut manifest =
        JobManifest::parse(&request.file, &request.manifest_toml).map_err(|e| ApiError::BadRequest(e.to_string()))?;
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
struct JobListQuery {
    status: Option<String>,
}

async fn job_list(State(state): State<ApiState>, Query(query): Query<JobListQuery>) -> Result<Json<Vec<RunView>>, ApiError> {
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
        .collect();
    runs.sort_by(|a, b| (a.started_at_ms, &a.run_id).cmp(&(b.started_at_ms, &b.run_id)));
    Ok(Json(runs.into_iter().map(|run| RunView::of(run, manifests.get(&run.manifest_id).map(Arc::as_ref))).collect()))
}

async fn job_status(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<RunView>, ApiError> {
    Ok(Json(run_view(&state, &id)?))
}

async fn job_cancel(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let run_id = resolve_run(&state.shared.read().expect("projection lock"), &id)?;
    Ok(Json(ask(&state, |reply| Command::JobCancel { run_id, caller, reply }).await?))
}

/// The CloudEvents `type` of journaled kernel events.
const KERNEL_EVENT_TYPE: &str = "dev.warden.job.kernel.v1";

/// A run's kernel events so far as NDJSON, one per line, flat: the event's `data` (`run_id`,
/// `kind` and the seed's fields) plus the journal's `seq` and `time`. A journal read that fails
/// part-way aborts the response rather than ending it early and looking complete.
async fn job_history(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
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
fn flat_kernel_event(event: &CloudEvent) -> serde_json::Value {
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
fn is_artifact_id(id: &str) -> bool {
    id.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// An artifact's bytes, exactly as stored (canonical JSON), verified against its id on read: a
/// corrupt artifact is a 500 naming it, never its damaged bytes.
async fn artifact(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
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
