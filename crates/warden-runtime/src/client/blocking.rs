//! The client for sync callers (the CLI, tests, benches): the async `Client` driven by
//! `block_on` on a private runtime, so signing, limits and error decoding stay in one place.
//!
//! The runtime is a current-thread one: the calling thread drives its request and the
//! connection in `block_on`, with no hand-off to a worker thread and back (measured: that hop
//! made the rollout bench's simulated agents cost 0.87 ms of CPU per host instead of 0.47, and
//! through their slower reports the server's group commit batched less). A pooled connection is
//! driven only while some call runs; one the server closed meanwhile is noticed and replaced on
//! the next request. Several threads may share a client: they take turns driving it. Neither
//! may be used, nor dropped, inside an async context (tokio refuses to block a runtime's thread).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::connection::{ClientConfig, ClientSetupError};
use super::error::HttpError;
use super::signed::{decode_json, encode_json, Client, Request, Response};
use crate::auth::Identity;

/// `Client`, blocking. Cloning is cheap and shares the connections and the runtime.
#[derive(Clone)]
pub struct BlockingClient {
    client: Client,
    runtime: Arc<tokio::runtime::Runtime>,
}

/// A 2xx answer read as it comes, as `std::io::Read`.
pub struct BlockingResponse {
    response: Response,
    /// What the last chunk still holds.
    pending: Bytes,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl BlockingClient {
    /// A client that signs every request with `identity` (see `Client::new`).
    pub fn new(server: &str, identity: Arc<Identity>, config: &ClientConfig) -> Result<BlockingClient, ClientSetupError> {
        BlockingClient::wrap(|| Client::new(server, identity, config))
    }

    /// A client that signs nothing (see `Client::unsigned`).
    pub fn unsigned(server: &str, config: &ClientConfig) -> Result<BlockingClient, ClientSetupError> {
        BlockingClient::wrap(|| Client::unsigned(server, config))
    }

    fn wrap(client: impl FnOnce() -> Result<Client, ClientSetupError>) -> Result<BlockingClient, ClientSetupError> {
        // A current-thread runtime: the calling thread drives the request and its connection
        // itself in `block_on`, with no hand-off to a worker thread and back (that hop was most
        // of a request's client-side cost). Threads sharing one client take turns driving it.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ClientSetupError::Runtime)?;
        // reqwest's connector needs the runtime's context when it is built.
        let client = {
            let _entered = runtime.enter();
            client()?
        };
        Ok(BlockingClient { client, runtime: Arc::new(runtime) })
    }

    /// The same client signing as `identity`, sharing its connections and runtime.
    pub fn with_identity(&self, identity: Arc<Identity>) -> BlockingClient {
        BlockingClient { client: self.client.with_identity(identity), runtime: self.runtime.clone() }
    }

    /// The async client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `https://host:port` (or `http://`), for messages.
    pub fn base_url(&self) -> &str {
        self.client.base_url()
    }

    /// See `Client::prepare`.
    pub fn prepare(&self, method: &str, path_and_query: &str, body: impl Into<Bytes>) -> Result<Request, HttpError> {
        self.client.prepare(method, path_and_query, body)
    }

    /// See `Client::exchange`: the whole answer, whatever its status.
    pub fn exchange(&self, request: &Request, timeout: Option<Duration>) -> Result<(u16, Vec<u8>), HttpError> {
        self.runtime.block_on(self.client.exchange(request, timeout))
    }

    /// See `Client::call`: a 2xx answer's status and body, or why there is none.
    pub fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        self.runtime.block_on(self.client.call(method, path_and_query, body, timeout))
    }

    /// See `Client::json`.
    pub fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<T, HttpError> {
        let (_, answer) = self.call(method, path_and_query, &encode_json(body)?, timeout)?;
        decode_json(&answer)
    }

    /// See `Client::stream`: a 2xx answer to read as it comes.
    pub fn stream(&self, method: &str, path_and_query: &str, body: &[u8]) -> Result<BlockingResponse, HttpError> {
        let response = self.runtime.block_on(self.client.stream(method, path_and_query, body))?;
        Ok(BlockingResponse { response, pending: Bytes::new(), runtime: self.runtime.clone() })
    }
}

impl BlockingResponse {
    pub fn status(&self) -> u16 {
        self.response.status()
    }
}

impl Read for BlockingResponse {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            match self.runtime.block_on(self.response.chunk()) {
                Ok(Some(chunk)) => self.pending = chunk,
                Ok(None) => return Ok(0),
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        Ok(n)
    }
}
