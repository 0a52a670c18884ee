//! `/v1/blobs`: checkpoint blobs, content-addressed, stored by hosts, fetched by admins and by
//! the hosts whose cells they belong to.

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use warden_store::StoreError;

use super::authn::BlobRole;
use super::state::{ApiState, Caller};
use crate::error::ApiError;

/// `PUT /v1/blobs/<sha256hex>` (hosts only): stores the body as the artifact `sha256:<hex>`;
/// the body must hash to its name. Idempotent (artifacts are immutable).
pub(super) async fn blob_put(
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

/// `GET /v1/blobs/<sha256hex>` (admins, and hosts for the checkpoints of the cells placed on
/// them or standing by there): the bytes, checked against their name on every read (a mismatch
/// is a 500, never the damaged bytes).
pub(super) async fn blob_get(
    State(state): State<ApiState>,
    Extension(role): Extension<BlobRole>,
    Extension(Caller(principal)): Extension<Caller>,
    Path(hex): Path<String>,
) -> Result<Response, ApiError> {
    if !crate::checkpoint::is_sha256_hex(&hex) {
        return Err(ApiError::BadRequest(format!("{hex:?} is not a sha256 (64 lowercase hex digits)")));
    }
    if role == BlobRole::Host {
        let shared = state.shared.read().expect("projection lock");
        let host = shared.hosts.values().find(|h| h.principal == principal).map(|h| h.name.as_str());
        if !host.is_some_and(|host| warden_core::cluster::host_may_fetch_blob(&shared, host, &hex)) {
            return Err(ApiError::Forbidden(format!(
                "blob {hex} is not the checkpoint of a cell placed on, or standing by on, host {}",
                host.unwrap_or("?")
            )));
        }
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
