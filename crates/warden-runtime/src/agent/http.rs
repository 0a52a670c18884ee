//! The agent's side of the signed HTTP/JSON API: the workspace's one client (`crate::client`),
//! signing with the host key, under the agent's limits.
//!
//! A fresh connection per request (no idle keep-alive), as the agent always had: a connection
//! is never reused across a control plane's restart, and a heartbeat never waits behind a long
//! poll. No answer larger than a checkpoint blob is read.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::Identity;
use crate::client::{Client, ClientConfig, ClientSetupError, ServerTrust};

pub use crate::client::HttpError;

/// No answer of the control plane is larger (the largest is a checkpoint blob); anything larger
/// is refused, not buffered.
const MAX_RESPONSE_BYTES: usize = crate::checkpoint::MAX_BLOB_BYTES + (1 << 20);

/// A signing HTTP client for one control plane.
pub struct Http {
    client: Client,
}

impl Http {
    /// `server` as `ServerAddress::parse` takes it; over TLS, only a server `trust` accepts.
    pub fn new(server: &str, identity: Arc<Identity>, trust: ServerTrust) -> Result<Http, ClientSetupError> {
        let config = ClientConfig {
            trust,
            max_response_bytes: Some(MAX_RESPONSE_BYTES),
            idle_connections_per_host: 0,
            user_agent: concat!("warden-agent/", env!("CARGO_PKG_VERSION")).to_string(),
            ..ClientConfig::default()
        };
        let client = Client::new(server, identity, &config)?;
        Ok(Http { client })
    }

    /// `https://host:port` (or `http://`), for messages.
    pub fn base_url(&self) -> &str {
        self.client.base_url()
    }

    /// The client underneath, for what `json` and `call` do not cover (streams).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends `body` as JSON (or nothing) and decodes a 2xx answer as `T`.
    pub async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, HttpError> {
        self.client.json(method, path_and_query, body, Some(timeout)).await
    }

    /// One signed request; a 2xx answer's status and body, or why there is none.
    pub async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        self.client.call(method, path_and_query, body, Some(timeout)).await
    }
}
