//! `/v1/rollouts`: start, list, watch, pause, resume and undo rollouts.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::state::{ask, ApiState, Caller};
use crate::clock::now_ms;
use crate::engine::rollouts;
use crate::engine::Command;
use crate::error::ApiError;
use crate::view::{RolloutRequest, RolloutView};

/// `POST /v1/rollouts`: a service's new spec, or a host activation, rolled out by policy.
pub(super) async fn rollout_start(
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
pub(super) async fn rollout_list(State(state): State<ApiState>) -> Json<Vec<RolloutView>> {
    let shared = state.shared.read().expect("projection lock");
    let now = now_ms();
    let mut views: Vec<RolloutView> = shared.rollouts.values().map(|r| rollouts::view(r, now)).collect();
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
