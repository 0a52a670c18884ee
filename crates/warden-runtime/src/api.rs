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
use warden_core::{CloudEvent, Projection, Spec};
use warden_store::Store;

use crate::auth::{verify_request, ReplayGuard};
use crate::engine::{now_ms, ApiError, Command};
use crate::view::{ErrorBody, SubmitRequest, WorkloadView};

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
        .route("/v1/workloads/:id/logs", get(logs))
        .route("/v1/events", get(events))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/v1/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .merge(authenticated)
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
        };
        (status, Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => return ApiError::BadRequest(format!("request body larger than {MAX_BODY_BYTES} bytes")).into_response(),
    };
    let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_default();
    let header = parts.headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let keys = state.authorized_keys.read().expect("keys lock").clone();
    match verify_request(header, parts.method.as_str(), &path_and_query, &bytes, now_ms(), &keys, &state.replays) {
        Ok(principal) => {
            parts.extensions.insert(Caller(principal));
            next.run(Request::from_parts(parts, Body::from(bytes))).await
        }
        Err(e) => (StatusCode::UNAUTHORIZED, Json(ErrorBody { error: e.to_string() })).into_response(),
    }
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
    let (id, max_files) = {
        let shared = state.shared.read().expect("projection lock");
        let id = resolve(&shared, &id)?;
        let max_files = shared.workloads[&id].spec.logs.max_files;
        (id, max_files)
    };
    let dir = state.logs_dir.join(&id);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        for n in (1..=max_files).rev() {
            if let Ok(bytes) = tokio::fs::read(dir.join(format!("output.log.{n}"))).await {
                if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                    return;
                }
            }
        }
        let live = dir.join("output.log");
        let mut offset = 0u64;
        let mut inode = None;
        loop {
            let ended = {
                let shared = state.shared.read().expect("projection lock");
                shared.workloads.get(&id).is_none_or(|w| w.phase.is_terminal())
            };
            if let Ok(meta) = tokio::fs::metadata(&live).await {
                use std::os::unix::fs::MetadataExt;
                if inode.is_some_and(|i| i != meta.ino()) || meta.len() < offset {
                    offset = 0; // rotated: the new live file starts from its beginning
                }
                inode = Some(meta.ino());
                if meta.len() > offset {
                    match read_from(&live, offset).await {
                        Ok(bytes) => {
                            offset += bytes.len() as u64;
                            if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
            if !query.follow || ended {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .expect("valid response"))
}

async fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut bytes = Vec::new();
    file.take(1 << 20).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    workload: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// Journaled events as NDJSON (one CloudEvent per line), or Server-Sent Events when the client
/// asks for `text/event-stream`. With `follow`, the stream stays open for new events.
async fn events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let subject = match &query.workload {
        Some(wanted) => Some(resolve(&state.shared.read().expect("projection lock"), wanted)?),
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
