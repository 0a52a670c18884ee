//! Who is calling: every request but health, metrics and enrollment is signed by an authorized
//! key (an operator), an enrolled host's key (an agent), or, for blobs, either.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ed25519_dalek::VerifyingKey;
use std::time::Duration;

use super::state::{ApiState, Caller, MAX_BODY_BYTES};
use crate::auth::{AuthError, Claim};
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
            vouch(state, &parts);
            parts.extensions.insert(Caller(principal));
            next.run(Request::from_parts(parts, Body::from(bytes))).await
        }
        Err(response) => response,
    }
}

/// The caller's address is known from now on (`serve::Gate`): it signed with an authorized or
/// an enrolled key. Not for enrollment, which any key signs for itself.
fn vouch(state: &ApiState, parts: &axum::http::request::Parts) {
    if let Some(crate::serve::Peer(peer)) = parts.extensions.get() {
        state.gate.vouch(peer.ip(), std::time::Instant::now());
    }
}

/// How long a body (at most `limit` bytes) may take to arrive once the headers are
/// authenticated: a minute per 4 MiB, at least a minute (a slow sender holds a connection and
/// its buffer no longer than that).
fn body_deadline(limit: usize) -> Duration {
    Duration::from_secs(60 * (limit / MAX_BODY_BYTES).max(1) as u64)
}

/// Authenticates the request in two steps: the `Authorization` header first (well formed, its
/// time within the skew and after the server's start, its key one of those `keys` picks given
/// the header — enrollment trusts the key the header names), and only then the body, read
/// whole (at most `limit` bytes, within `body_deadline`) and checked against the signature.
/// An unauthenticated body is never read: the answer goes out and the connection closes.
pub(super) async fn signed_by(
    state: &ApiState,
    request: Request,
    limit: usize,
    keys: impl FnOnce(Option<&str>) -> Vec<VerifyingKey>,
) -> Result<(axum::http::request::Parts, Bytes, String), Response> {
    let (parts, body) = request.into_parts();
    let header = parts.headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let claim = Claim::parse(header).map_err(unauthorized)?;
    let caller = claim.check(now_ms(), &keys(header), &state.replays).map_err(unauthorized)?;
    let too_large = || {
        (StatusCode::PAYLOAD_TOO_LARGE, Json(ErrorBody { error: format!("request body larger than {limit} bytes") }))
            .into_response()
    };
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = match tokio::time::timeout(body_deadline(limit), axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return Err(too_large()),
        Err(_) => {
            let secs = body_deadline(limit).as_secs();
            return Err(ApiError::BadRequest(format!("request body not received within {secs} s")).into_response());
        }
    };
    let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_default();
    let principal =
        claim.verify(&caller, parts.method.as_str(), &path_and_query, &bytes, now_ms(), &state.replays).map_err(unauthorized)?;
    Ok((parts, bytes, principal))
}

fn unauthorized(e: AuthError) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, Json(ErrorBody { error: e.to_string() })).into_response();
    // Signed before the server started: say when that was, so a client whose clock is behind
    // can sign again with a time the server takes (`client::signed`).
    if let AuthError::BeforeStart { started_ms, .. } = e {
        response.headers_mut().insert(crate::auth::NOT_BEFORE_HEADER, started_ms.into());
    }
    response
}

/// Who called a blob route.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BlobRole {
    Host,
    Admin,
}

/// Like `authenticate`, for `/v1/blobs`: an enrolled host's key or an authorized (admin) key,
/// and bodies up to `MAX_BLOB_BYTES` (the one route with a larger limit than `MAX_BODY_BYTES`;
/// still only read once the header is authenticated).
pub(super) async fn authenticate_blobs(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let hosts: Vec<VerifyingKey> = header.and_then(|header| enrolled_host_key(&state, header)).into_iter().collect();
    let admins = state.authorized_keys.read().expect("keys lock").clone();
    let mut keys = hosts.clone();
    keys.extend(admins);
    match signed_by(&state, request, crate::checkpoint::MAX_BLOB_BYTES, |_| keys).await {
        Ok((mut parts, bytes, principal)) => {
            vouch(&state, &parts);
            let is_host = crate::auth::parse_principal(&principal).is_some_and(|key| hosts.contains(&key));
            parts.extensions.insert(if is_host { BlobRole::Host } else { BlobRole::Admin });
            parts.extensions.insert(Caller(principal));
            next.run(Request::from_parts(parts, Body::from(bytes))).await
        }
        Err(response) => response,
    }
}
