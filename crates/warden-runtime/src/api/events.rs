//! `/v1/events` (the journal, followed), `/v1/events/head` (the signed chain head) and `/metrics`.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use warden_core::authz::{Kind, Principal, Role, Scope};
use warden_core::{CloudEvent, Projection};

use super::authz;
use super::jobs::{resolve_run, run_status, RUN_STATUSES};
use super::state::ApiState;
use super::workloads::resolve;
use crate::clock::now_ms;
use crate::error::ApiError;

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    after: u64,
    workload: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// What `?workload=` names: a workload (full id, unique prefix or consumer id), or else a job run
/// (full id or unique prefix), whose kernel events have the run id as their subject. A step
/// workload's id starts with its run's id, so a run is tried before workload prefixes.
pub(super) fn resolve_subject(shared: &Projection, wanted: &str) -> Result<String, ApiError> {
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
/// asks for `text/event-stream`. With `follow`, the stream stays open for new events. Only the
/// events of the caller's namespaces are sent (`authz::event_scope`); cluster events (hosts,
/// keys, the journal's own) only to admins.
pub(super) async fn events(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let subject = match &query.workload {
        Some(wanted) => Some(visible_subject(&state, &principal, wanted)?),
        None => None,
    };
    let principal = Arc::new(principal);
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
                let visible = visible_events(&state, &principal, &page);
                for event in page.iter().zip(visible).filter_map(|(event, visible)| visible.then_some(event)) {
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
                        if !visible_events(&state, &principal, std::slice::from_ref(&event))[0] {
                            continue;
                        }
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

/// What `?workload=` names, if the caller may see it; else "no workload", as if it did not exist
/// (and an ambiguous prefix is not spelled out to a non-admin, since it may name hidden ids).
fn visible_subject(state: &ApiState, principal: &Principal, wanted: &str) -> Result<String, ApiError> {
    let not_found = || ApiError::NotFound(format!("no workload {wanted}"));
    let manifests = super::jobs::manifests_snapshot(state);
    let shared = state.shared.read().expect("projection lock");
    let subject = match resolve_subject(&shared, wanted) {
        Ok(subject) => subject,
        Err(ApiError::Conflict(_)) if principal.role != Role::Admin => {
            return Err(ApiError::Conflict(format!("{wanted} is ambiguous; give more of the id")))
        }
        Err(e) => return Err(e),
    };
    let scope = match shared.workloads.get(&subject) {
        Some(w) => Scope::Namespace(w.spec.namespace.clone()),
        None => authz::run_scope(&shared, &manifests, &subject),
    };
    authz::sees(principal, Kind::Event, &scope).then_some(subject).ok_or_else(not_found)
}

/// Which of `events` the caller may see (all of them, for an admin).
fn visible_events(state: &ApiState, principal: &Principal, events: &[impl std::borrow::Borrow<CloudEvent>]) -> Vec<bool> {
    if principal.role == Role::Admin {
        return vec![true; events.len()];
    }
    // Projection, then manifests: the order the engine's answers take them in (`Pending::answer`),
    // and no copy of the manifests per event of a followed stream.
    let shared = state.shared.read().expect("projection lock");
    let manifests = state.manifests.read().expect("manifests lock");
    events
        .iter()
        .map(|event| authz::sees(principal, Kind::Event, &authz::event_scope(&shared, &manifests, event.borrow())))
        .collect()
}

/// `GET /v1/events/head`: the journal's last durable event (seq and hash), signed now with the
/// server key (`warden_store::SignedHead`). The head comes from the store, which moves it only
/// after the append's fsync, so only durable events are ever signed; `GET /v1/events` read
/// afterwards returns at least every event up to it.
pub(super) async fn events_head(State(state): State<ApiState>) -> Result<Json<warden_store::SignedHead>, ApiError> {
    let store = state.store.clone();
    let head = match tokio::task::spawn_blocking(move || store.head()).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return Err(ApiError::Internal(format!("reading the journal head: {e}"))),
        Err(e) => return Err(ApiError::Internal(format!("reading the journal head: {e}"))),
    };
    Ok(Json(state.server_key.sign_chain_head(&head, now_ms())))
}

/// Prometheus text exposition: workloads by state, restarts, and the journal head.
pub(super) async fn metrics(State(state): State<ApiState>) -> Response {
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
