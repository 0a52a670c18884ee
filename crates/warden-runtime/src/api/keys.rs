//! `/v1/keys` (admins): add, list and revoke API keys at runtime. Each change is a journaled
//! event (`warden_core::keys`); the set of keys that may sign is refreshed from the journal's
//! projection right after, so a new key works and a revoked one is refused on the next request.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use warden_core::authz::Role;
use warden_core::keys::KeyRequest;

use super::state::{ask, ApiState};
use crate::auth::{parse_principal, principal_of};
use crate::engine::Command;
use crate::error::ApiError;
use crate::view::{KeyAddRequest, KeyView};

/// `POST /v1/keys`: a new key with its role and namespaces (201, the key as journaled).
pub(super) async fn key_add(State(state): State<ApiState>, body: Bytes) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let request: KeyAddRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad key request: {e}")))?;
    let role = Role::parse(&request.role).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(key) = parse_principal(&request.public_key.to_ascii_lowercase()) else {
        return Err(ApiError::BadRequest(format!(
            "public key {:?} is not ed25519:<64 hex digits> of a valid key",
            request.public_key
        )));
    };
    let principal = principal_of(&key);
    if let Some((_, name)) = state.file_admins.iter().find(|(p, n)| *p == principal || *n == request.name) {
        return Err(ApiError::Conflict(format!(
            "the key {name:?} in the data dir's authorized_keys has that name or public key already"
        )));
    }
    let request = KeyRequest { name: request.name, principal, role, namespaces: request.namespaces };
    let view = ask(&state, |reply| Command::KeyAdd { request, reply }).await?;
    refresh_signing_keys(&state);
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /v1/keys`: the `authorized_keys` file's admins, then the journaled keys by name.
pub(super) async fn key_list(State(state): State<ApiState>) -> Json<Vec<KeyView>> {
    let mut views: Vec<KeyView> = state
        .file_admins
        .iter()
        .map(|(principal, name)| KeyView {
            name: name.clone(),
            role: Role::Admin.as_str().into(),
            namespaces: Vec::new(),
            public_key: principal.clone(),
            source: "authorized_keys".into(),
            added_at_ms: None,
        })
        .collect();
    views.extend(state.shared.read().expect("projection lock").keys.values().map(KeyView::of));
    Json(views)
}

/// `POST /v1/keys/:name/revoke` (204): the key's next request is refused.
pub(super) async fn key_revoke(State(state): State<ApiState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    if state.file_admins.iter().any(|(_, n)| *n == name) {
        return Err(ApiError::Conflict(format!(
            "the key {name:?} is in the data dir's authorized_keys, read at start: remove its line there and restart"
        )));
    }
    ask(&state, |reply| Command::KeyRevoke { name, reply }).await?;
    refresh_signing_keys(&state);
    Ok(StatusCode::NO_CONTENT)
}

/// Recomputes the keys that may sign (`ApiState::authorized_keys`) from `authorized_keys` and
/// the projection's journaled keys. The projection is read under the keys' write lock, so of two
/// refreshes racing, the one that writes last read the newest projection.
pub(super) fn refresh_signing_keys(state: &ApiState) {
    let mut keys = state.authorized_keys.write().expect("keys lock");
    let shared = state.shared.read().expect("projection lock");
    let file = state.file_admins.iter().map(|(principal, _)| principal);
    let journaled = shared.keys.values().map(|k| &k.principal);
    *keys = file.chain(journaled).filter_map(|principal| parse_principal(principal)).collect();
}
