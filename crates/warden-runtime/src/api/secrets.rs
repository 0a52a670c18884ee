//! `/v1/secrets`: put, list and remove a namespace's secrets. A put's value is sealed here, with
//! the control plane's key, before the request reaches the engine (`secrets.rs`); no route ever
//! answers a value: a put and the listing show names, versions, when and by whom.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use warden_core::authz::{validate_namespace, Action, Kind, Principal};
use warden_core::secrets::{current_version, validate_secret_name, SecretError};

use super::authz;
use super::state::{ask, ApiState};
use crate::engine::Command;
use crate::error::{error_chain, ApiError};
use crate::view::SecretView;

/// How often a put seals again after another put of the same secret raced it.
const PUT_ATTEMPTS: usize = 5;

fn checked(namespace: &str, name: &str) -> Result<(), ApiError> {
    validate_namespace(namespace).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    validate_secret_name(name)?;
    Ok(())
}

/// `PUT /v1/secrets/:namespace/:name` (an operator of the namespace): the body is the value,
/// raw, at most 64 KiB of UTF-8 text. 201 with the new version.
pub(super) async fn secret_put(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<SecretView>), ApiError> {
    checked(&namespace, &name)?;
    crate::secrets::check_value(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Sealed for the version after the durable one; the core refuses it if another put
        // got there first, and then it is sealed again for the next.
        let version = current_version(&state.shared.read().expect("projection lock").secrets, &namespace, &name) + 1;
        let key = state.secrets.clone();
        let (ns, n, value) = (namespace.clone(), name.clone(), body.clone());
        let sealed = tokio::task::spawn_blocking(move || key.seal(&ns, &n, version, &value))
            .await
            .map_err(|e| ApiError::Internal(format!("sealing task failed: {e}")))?
            .map_err(|e| ApiError::Internal(error_chain(&e)))?;
        let put_by = principal.name.clone();
        let (ns, n) = (namespace.clone(), name.clone());
        match ask(&state, |reply| Command::SecretPut { namespace: ns, name: n, version, sealed, put_by, reply }).await {
            Err(ApiError::Secret(SecretError::Conflict { .. })) if attempt < PUT_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            answer => return answer.map(|view| (StatusCode::CREATED, Json(view))),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    namespace: Option<String>,
}

/// `GET /v1/secrets[?namespace=NS]` (viewers): names, versions, when and by whom, in the
/// caller's namespaces (or the one asked for, which the caller must hold).
pub(super) async fn secret_list(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<SecretView>>, ApiError> {
    if let Some(namespace) = &query.namespace {
        validate_namespace(namespace).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        authz::check(&principal, Action::read(Kind::Secret), namespace)?;
    }
    let shared = state.shared.read().expect("projection lock");
    let views = shared
        .secrets
        .iter()
        .filter(|(namespace, _)| query.namespace.as_ref().is_none_or(|wanted| wanted == *namespace))
        .filter(|(namespace, _)| {
            authz::sees(&principal, Kind::Secret, &warden_core::authz::Scope::Namespace(namespace.to_string()))
        })
        .flat_map(|(namespace, names)| names.iter().map(move |(name, record)| SecretView::of(namespace, name, record)))
        .collect();
    Ok(Json(views))
}

/// `DELETE /v1/secrets/:namespace/:name` (an operator of the namespace), 204: cells that refer
/// to it fail their next start.
pub(super) async fn secret_remove(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    checked(&namespace, &name)?;
    let removed_by = principal.name.clone();
    ask(&state, |reply| Command::SecretRemove { namespace, name, removed_by, reply }).await?;
    Ok(StatusCode::NO_CONTENT)
}
