//! The async client: a request signed in one place (`prepare`), sent, and its answer read whole
//! under a size limit (`call`, `json`, `exchange`) or chunk by chunk (`stream`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::address::ServerAddress;
use super::connection::{reqwest_client, ClientConfig, ClientSetupError};
use super::error::{status_error, timeout_error, transport_error, HttpError};
use crate::auth::Identity;

/// How much of an error status's body becomes its message; the rest is not read.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A signing HTTP client for one control plane. Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    address: ServerAddress,
    base_url: String,
    /// Who signs; `None` sends requests without `Authorization` (health checks, probes).
    identity: Option<Arc<Identity>>,
    max_response_bytes: Option<usize>,
}

/// One request, signed when it was prepared: sending it twice sends the same signature (which
/// the server refuses as a replay).
#[derive(Clone, Debug)]
pub struct Request {
    method: reqwest::Method,
    url: reqwest::Url,
    /// The URL's path and query, exactly as signed and sent.
    path_and_query: String,
    body: Bytes,
    authorization: Option<String>,
}

impl Request {
    pub fn method(&self) -> &str {
        self.method.as_str()
    }

    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The `Authorization` header sent, if the request is signed.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// `METHOD /path?query`, for messages.
    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path_and_query)
    }
}

/// An answer whose status is known and whose body is still to be read.
pub struct Response {
    status: u16,
    inner: reqwest::Response,
    /// `METHOD /path?query` and the server, for messages.
    request: String,
    base_url: String,
    max_bytes: Option<usize>,
}

impl Client {
    /// A client that signs every request with `identity`; `server` as `ServerAddress::parse`
    /// takes it.
    pub fn new(server: &str, identity: Arc<Identity>, config: &ClientConfig) -> Result<Client, ClientSetupError> {
        Client::build(server, Some(identity), config)
    }

    /// A client that signs nothing: for endpoints without authentication, and for asserting
    /// that the others refuse an unsigned request.
    pub fn unsigned(server: &str, config: &ClientConfig) -> Result<Client, ClientSetupError> {
        Client::build(server, None, config)
    }

    fn build(server: &str, identity: Option<Arc<Identity>>, config: &ClientConfig) -> Result<Client, ClientSetupError> {
        let address = ServerAddress::parse(server)?;
        Ok(Client {
            http: reqwest_client(config, &address)?,
            base_url: address.base_url(),
            address,
            identity,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// The same client signing as `identity`, sharing its connections: one pool for many
    /// signers (a bench playing a fleet of hosts).
    pub fn with_identity(&self, identity: Arc<Identity>) -> Client {
        Client { identity: Some(identity), ..self.clone() }
    }

    /// `https://host:port` (or `http://`), for messages.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The server's `host:port`.
    pub fn address(&self) -> &ServerAddress {
        &self.address
    }

    /// The one place a request is built and signed: `Authorization` covers the method, the path
    /// and query as sent, the time and the body (`auth.rs`). A non-empty body is JSON.
    pub fn prepare(&self, method: &str, path_and_query: &str, body: impl Into<Bytes>) -> Result<Request, HttpError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| HttpError::Request(format!("{method:?} is not an HTTP method")))?;
        if !path_and_query.starts_with('/') {
            return Err(HttpError::Request(format!("{path_and_query:?} does not start with /")));
        }
        let url = reqwest::Url::parse(&format!("{}{path_and_query}", self.base_url))
            .map_err(|e| HttpError::Request(format!("{path_and_query:?} is not a path and query: {e}")))?;
        // What the URL normalized is what goes on the wire, so that is what is signed.
        let path_and_query = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let body = body.into();
        let authorization = self.sign(&method, &path_and_query, &body, now_ms());
        Ok(Request { method, url, path_and_query, body, authorization })
    }

    fn sign(&self, method: &reqwest::Method, path_and_query: &str, body: &[u8], ts_ms: u64) -> Option<String> {
        self.identity.as_ref().map(|identity| identity.authorization(method.as_str(), path_and_query, body, ts_ms))
    }

    /// Sends `request`; the answer whatever its status, its body unread. No time limit beyond
    /// the connect timeout: follows and long polls end when the server ends them.
    ///
    /// One retry: a request the server refused as signed before it started (our clock is
    /// behind its; `auth::ReplayGuard`) is signed again with the server's start as its time.
    pub async fn send(&self, request: &Request) -> Result<Response, HttpError> {
        let response = self.send_once(request).await?;
        let not_before = (response.status == 401 && request.authorization.is_some())
            .then(|| response.inner.headers().get(crate::auth::NOT_BEFORE_HEADER)?.to_str().ok()?.parse::<u64>().ok())
            .flatten();
        let Some(not_before) = not_before else { return Ok(response) };
        let ts_ms = now_ms().max(not_before + 1);
        let again = Request {
            authorization: self.sign(&request.method, &request.path_and_query, &request.body, ts_ms),
            ..request.clone()
        };
        self.send_once(&again).await
    }

    async fn send_once(&self, request: &Request) -> Result<Response, HttpError> {
        let mut builder = self.http.request(request.method.clone(), request.url.clone());
        if let Some(authorization) = &request.authorization {
            builder = builder.header(reqwest::header::AUTHORIZATION, authorization);
        }
        if !request.body.is_empty() {
            builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json").body(request.body.clone());
        }
        let inner = builder.send().await.map_err(|e| transport_error(&request.describe(), &self.base_url, &e))?;
        Ok(Response {
            status: inner.status().as_u16(),
            inner,
            request: request.describe(),
            base_url: self.base_url.clone(),
            max_bytes: self.max_response_bytes,
        })
    }

    /// Sends `request` and reads its whole answer, whatever its status, within `timeout`.
    pub async fn exchange(&self, request: &Request, timeout: Option<Duration>) -> Result<(u16, Vec<u8>), HttpError> {
        let exchange = async {
            let response = self.send(request).await?;
            let status = response.status();
            Ok((status, response.bytes().await?))
        };
        match timeout {
            None => exchange.await,
            Some(timeout) => tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(timeout_error(&request.describe(), &self.base_url, timeout))),
        }
    }

    /// One signed request; a 2xx answer's status and body, or why there is none.
    pub async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let request = self.prepare(method, path_and_query, Bytes::copy_from_slice(body))?;
        let (status, answer) = self.exchange(&request, timeout).await?;
        if !(200..300).contains(&status) {
            return Err(status_error(status, &answer));
        }
        Ok((status, answer))
    }

    /// Sends `body` as JSON (or nothing) and decodes a 2xx answer as `T`.
    pub async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<T, HttpError> {
        let (_, answer) = self.call(method, path_and_query, &encode_json(body)?, timeout).await?;
        decode_json(&answer)
    }

    /// One signed request whose 2xx answer is read as it comes (`Response::chunk`): logs and
    /// events that follow, artifacts of any size.
    pub async fn stream(&self, method: &str, path_and_query: &str, body: &[u8]) -> Result<Response, HttpError> {
        let request = self.prepare(method, path_and_query, Bytes::copy_from_slice(body))?;
        self.send(&request).await?.success().await
    }
}

impl Response {
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The answer if its status is 2xx, else the server's error (`ErrorBody`) as `Status`.
    pub async fn success(self) -> Result<Response, HttpError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let status = self.status;
        let body = self.read_up_to(MAX_ERROR_BODY_BYTES, false).await?;
        Err(status_error(status, &body))
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        self.inner.chunk().await.map_err(|e| transport_error(&self.request, &self.base_url, &e))
    }

    /// The whole body, refused (`TooLarge`) past the client's `max_response_bytes`.
    pub async fn bytes(self) -> Result<Vec<u8>, HttpError> {
        match self.max_bytes {
            Some(limit) => self.read_up_to(limit, true).await,
            None => self.read_up_to(usize::MAX, true).await,
        }
    }

    /// Reads up to `limit` bytes of the body: past it, an error if `refuse_more`, else the
    /// first `limit` bytes.
    async fn read_up_to(mut self, limit: usize, refuse_more: bool) -> Result<Vec<u8>, HttpError> {
        let too_large = |response: &Response| HttpError::TooLarge { request: response.request.clone(), limit_bytes: limit };
        if refuse_more && self.inner.content_length().is_some_and(|length| length > limit as u64) {
            return Err(too_large(&self));
        }
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            if body.len() + chunk.len() > limit {
                if refuse_more {
                    return Err(too_large(&self));
                }
                body.extend_from_slice(&chunk[..limit - body.len()]);
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A request body as JSON; nothing for `None`.
pub(super) fn encode_json<B: Serialize>(body: Option<&B>) -> Result<Vec<u8>, HttpError> {
    match body {
        Some(body) => serde_json::to_vec(body).map_err(|e| HttpError::Request(format!("cannot encode the body: {e}"))),
        None => Ok(Vec::new()),
    }
}

/// A 2xx answer as `T`; the error quotes the start of what came instead.
pub(super) fn decode_json<T: DeserializeOwned>(answer: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(answer)
        .map_err(|e| HttpError::Decode(format!("{e}: {}", String::from_utf8_lossy(&answer[..answer.len().min(512)]))))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
