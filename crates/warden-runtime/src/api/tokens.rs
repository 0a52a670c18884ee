//! `/v1/tokens`: join tokens, made, listed and revoked by operators. A new token's secret is
//! drawn here, sent back once in the answer to its creator, and reaches the engine (and the
//! journal) only as its SHA-256.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use warden_core::canonical::sha256_hex;
use warden_core::cluster::{format_join_token, DEFAULT_JOIN_TOKEN_TTL_MS};

use super::state::{ask, ApiState, Caller};
use crate::clock::now_ms;
use crate::engine::Command;
use crate::error::ApiError;
use crate::view::{TokenCreated, TokenRequest, TokenView};

/// `POST /v1/tokens` `{"ttl_ms"?, "max_uses"?}`: a new join token, its secret shown this once.
pub(super) async fn token_create(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<Json<TokenCreated>, ApiError> {
    let request: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad token request: {e}")))?
    };
    Ok(Json(create_with(&state.commands, request, caller, state.tls_pin.as_ref()).await?))
}

/// Creates a join token through the engine's command channel; also how `warden up` makes its
/// first one, before it serves. The token carries `pin`, the server certificate's fingerprint.
pub(crate) async fn create_with(
    commands: &tokio::sync::mpsc::UnboundedSender<Command>,
    request: TokenRequest,
    caller: String,
    pin: Option<&warden_core::fingerprint::Fingerprint>,
) -> Result<TokenCreated, ApiError> {
    let (token_id, secret) = crate::auth::generate_join_token();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = Command::TokenCreate {
        token_id: token_id.clone(),
        secret_sha256: sha256_hex(secret.as_bytes()),
        ttl_ms: request.ttl_ms.unwrap_or(DEFAULT_JOIN_TOKEN_TTL_MS),
        max_uses: request.max_uses,
        caller,
        reply,
    };
    let gone = || ApiError::Conflict("the engine is shutting down".into());
    commands.send(command).map_err(|_| gone())?;
    let view = answer.await.map_err(|_| gone())??;
    Ok(TokenCreated { token: format_join_token(&token_id, &secret, pin), view })
}

/// `GET /v1/tokens`: every join token, newest last, without secrets.
pub(super) async fn token_list(State(state): State<ApiState>) -> Json<Vec<TokenView>> {
    let now = now_ms();
    let shared = state.shared.read().expect("projection lock");
    let mut views: Vec<TokenView> = shared.join_tokens.values().map(|t| TokenView::of(t, now)).collect();
    views.sort_by(|a, b| (a.created_at_ms, &a.token_id).cmp(&(b.created_at_ms, &b.token_id)));
    Json(views)
}

/// `POST /v1/tokens/:id/revoke`: the token enrolls no host any more.
pub(super) async fn token_revoke(
    State(state): State<ApiState>,
    Path(token_id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    Ok(Json(ask(&state, |reply| Command::TokenRevoke { token_id, reply }).await?))
}
