//! `/v1/rollouts`: start, list, watch, pause, resume and undo rollouts.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use warden_core::authz::{Action, Kind, Principal};

use super::authz;
use super::state::{ask, ApiState, Caller};
use crate::clock::now_ms;
use crate::engine::rollouts;
use crate::engine::Command;
use crate::error::ApiError;
use crate::view::{RolloutRequest, RolloutView};

/// `POST /v1/rollouts`: a service's new spec, or a host activation, rolled out by policy.
/// A service's rollout is an operator's of its namespace (the engine checks that the new spec
/// stays in it); a host activation is an admin's.
pub(super) async fn rollout_start(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let request: RolloutRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad rollout request: {e}")))?;
    let action = Action::operate(Kind::Rollout);
    match &request.service {
        None => authz::check_cluster(&principal, action)?,
        Some(service) => {
            let namespace = {
                let shared = state.shared.read().expect("projection lock");
                let member = shared
                    .workloads
                    .values()
                    .find(|w| w.info.consumer_workload_id.as_deref().is_some_and(|id| rollouts::belongs_to(id, service)));
                member.map(|w| w.spec.namespace.clone())
            };
            // A service in a namespace the caller holds no role in is one it cannot see.
            if let Some(namespace) = namespace {
                if !principal.sees(&namespace) {
                    return Err(ApiError::NotFound(format!("no live service {service:?} (the id it was submitted with)")));
                }
                authz::check(&principal, action, &namespace)?;
            }
        }
    }
    // A new spec whose cell asks for root is an admin's, like its submission (a spec that does
    // not parse is refused by the engine, with its line).
    if let (Some(file), Some(toml)) = (&request.spec_file, &request.spec_toml) {
        if let Ok(spec) = warden_core::Spec::parse(file, toml) {
            authz::check_cell_users(
                &principal,
                Kind::Rollout,
                &spec.namespace,
                [("cell.user".to_string(), spec.cell.user.as_ref())],
            )?;
        }
    }
    let view = ask(&state, |reply| Command::RolloutStart { request, caller, reply }).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /v1/rollouts`: newest first.
pub(super) async fn rollout_list(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> Json<Vec<RolloutView>> {
    let shared = state.shared.read().expect("projection lock");
    let now = now_ms();
    let mut views: Vec<RolloutView> = shared
        .rollouts
        .values()
        .filter(|r| authz::sees(&principal, Kind::Rollout, &authz::rollout_scope(&shared, &r.rollout.rollout_id)))
        .map(|r| rollouts::view(r, now))
        .collect();
    views.sort_by(|a, b| b.started_at_ms.cmp(&a.started_at_ms).then_with(|| a.id.cmp(&b.id)));
    Json(views)
}

pub(super) async fn rollout_status(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<RolloutView>, ApiError> {
    let shared = state.shared.read().expect("projection lock");
    let id = rollouts::resolve(&shared, &id)?;
    Ok(Json(rollouts::view(&shared.rollouts[&id], now_ms())))
}

/// `POST /v1/rollouts/:id/pause|resume|undo`.
pub(super) async fn rollout_control(
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
