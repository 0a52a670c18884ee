//! What every API handler shares: the state the router is built with, the authenticated caller,
//! and `ask`, which hands a request to the engine and waits for its answer.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ed25519_dalek::VerifyingKey;
use tokio::sync::{broadcast, mpsc, oneshot};
use warden_core::{CloudEvent, Projection};
use warden_store::Store;

use crate::auth::ReplayGuard;
use crate::cluster::Queues;
use crate::engine::{Command, Manifests};
use crate::error::ApiError;
use crate::view::ErrorBody;

#[derive(Clone)]
pub struct ApiState {
    pub commands: mpsc::UnboundedSender<Command>,
    pub shared: Arc<RwLock<Projection>>,
    pub events: broadcast::Sender<Arc<CloudEvent>>,
    pub store: Arc<dyn Store>,
    /// Every key that may sign API requests: `file_admins`' and the journaled keys'
    /// (`warden keys`); kept in step by `keys::refresh_signing_keys`. What each may do is
    /// `authz`'s business.
    pub authorized_keys: Arc<RwLock<Vec<VerifyingKey>>>,
    /// The keys in `<data-dir>/authorized_keys` as (principal, name), read at start: admins.
    pub file_admins: Arc<Vec<(String, String)>>,
    pub replays: Arc<std::sync::Mutex<ReplayGuard>>,
    /// The listener's connection caps; authenticated callers' addresses are vouched for here.
    pub gate: Arc<crate::serve::Gate>,
    pub host: String,
    pub logs_dir: PathBuf,
    /// Job manifests by id, for run views (written by the engine).
    pub manifests: Manifests,
    /// Agents' command queues (long-polled) and last heartbeats.
    pub queues: Arc<Queues>,
    /// Signs the journal's chain head (`<data-dir>/server.key`).
    pub server_key: Arc<crate::auth::Identity>,
    /// Seals secrets' values before a put reaches the engine (`<data-dir>/secrets.key`).
    pub secrets: Arc<crate::secrets::SecretKey>,
    /// The TLS certificate's fingerprint, carried by the join tokens made here; `None` on plain
    /// HTTP (`--insecure-http`).
    pub tls_pin: Option<warden_core::fingerprint::Fingerprint>,
}

/// The authenticated caller's principal (`ed25519:<hex>`).
#[derive(Clone)]
pub(super) struct Caller(pub(super) String);

pub(super) const MAX_BODY_BYTES: usize = 4 << 20;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

pub(super) async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Command,
) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    state.commands.send(make(reply)).map_err(|_| ApiError::Conflict("the engine is shutting down".into()))?;
    answer.await.map_err(|_| ApiError::Conflict("the engine is shutting down".into()))?
}
