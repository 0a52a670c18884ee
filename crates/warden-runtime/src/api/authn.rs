//! Who is calling: every request but health, metrics and enrollment is signed by an authorized
//! key (an operator), an enrolled host's key (an agent), or, for blobs, either.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ed25519_dalek::VerifyingKey;

use super::state::{ApiState, Caller, MAX_BODY_BYTES};
use crate::auth::verify_request;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::view::ErrorBody;

pub(super) async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let keys = state.authorized_keys.read().expect("keys lock").clone();
    pass_if_signed(&state, request, next, &keys).await
}

/// Like `authenticate`, for agents: the key must be an enrolled host's.
pub(super) async fn authenticate_host(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let key = header.and_then(|header| enrolled_host_key(&state, header));
    pass_if_signed(&state, request, next, key.as_slice()).await
}

/// The key the `Authorization` header names, if it is an enrolled host's. Only that one key is
/// decoded (decoding every host's on every request made each agent request cost O(hosts):
/// at 1,000 hosts, three quarters of the control plane's CPU in the rollout bench).
pub(super) fn enrolled_host_key(state: &ApiState, header: &str) -> Option<VerifyingKey> {
    let key = crate::auth::header_key(header)?;
    let principal = crate::auth::principal_of(&key);
    let shared = state.shared.read().expect("projection lock");
    shared.hosts.values().any(|h| h.principal == principal).then_some(key)
}

/// Runs the request on if it is signed by one of `keys` (the caller's principal goes along as
/// `Caller`); 401 otherwise.
pub(super) async fn pass_if_signed(state: &ApiState, request: Request, next: Next, keys: &[VerifyingKey]) -> Response {
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
pub(super) async fn signed_by(
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
pub(super) enum BlobRole {
    Host,
    Admin,
}

/// Like `authenticate`, for `/v1/blobs`: an enrolled host's key or an authorized (admin) key,
/// and bodies up to `MAX_BLOB_BYTES`.
pub(super) async fn authenticate_blobs(State(state): State<ApiState>, request: Request, next: Next) -> Response {
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
