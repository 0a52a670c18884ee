//! The agent's side of the signed HTTP/JSON API: one request per connection, HTTP/1.1 over
//! tokio, every request signed with the host key (`auth.rs`).
//!
//! Deliberately small: the control plane is warden's own axum server, so this speaks exactly what
//! it needs — a request with `Content-Length` and `Connection: close`, and a response framed by
//! `Content-Length`, chunked encoding, or the end of the connection. No TLS (requests are
//! signed, not encrypted), no redirects, no keep-alive. A fresh connection per request also means
//! a heartbeat never waits behind a long poll.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::Identity;
use crate::view::ErrorBody;

/// No answer of the control plane is larger (the largest is a checkpoint blob); anything larger
/// is refused, not buffered.
const MAX_RESPONSE_BYTES: usize = crate::checkpoint::MAX_BLOB_BYTES + (1 << 20);

/// warden's default port, for a server given as a bare `host` (`paths::DEFAULT_ADDR`).
const DEFAULT_PORT: u16 = 7480;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// No answer: cannot connect, connection reset, timed out, or not HTTP.
    #[error("{0}")]
    Transport(String),
    /// The server answered with an error status; `message` is its `ErrorBody` (or raw text).
    #[error("{message} (HTTP {code})")]
    Status { code: u16, message: String },
    /// A 2xx whose body is not the JSON expected.
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl HttpError {
    /// A short name for the kind of failure, so a caller can log each change only once.
    pub fn class(&self) -> String {
        match self {
            HttpError::Transport(_) => "unreachable".into(),
            HttpError::Status { code, .. } => format!("HTTP {code}"),
            HttpError::Decode(_) => "bad response".into(),
        }
    }
}

/// A signing HTTP client for one control plane.
pub struct Http {
    /// `host:port`, as connected to and sent in `Host`.
    authority: String,
    identity: Arc<Identity>,
}

impl Http {
    /// `server` is `http://host[:port]` (port 80 if omitted) or `host[:port]` (port 7480 if
    /// omitted), with nothing after the authority but an optional `/`.
    pub fn new(server: &str, identity: Arc<Identity>) -> Result<Http, String> {
        Ok(Http { authority: parse_server(server)?, identity })
    }

    /// `http://host:port`, for messages.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// Sends `body` as JSON (or nothing) and decodes a 2xx answer as `T`.
    pub async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, HttpError> {
        let bytes = match body {
            Some(body) => serde_json::to_vec(body).map_err(|e| HttpError::Decode(format!("cannot encode request: {e}")))?,
            None => Vec::new(),
        };
        let (_, answer) = self.call(method, path_and_query, &bytes, timeout).await?;
        serde_json::from_slice(&answer)
            .map_err(|e| HttpError::Decode(format!("{e}: {}", String::from_utf8_lossy(&answer[..answer.len().min(512)]))))
    }

    /// One signed request; a 2xx answer's status and body, or why there is none.
    pub async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let exchange = self.exchange(method, path_and_query, body);
        let (code, answer) = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(HttpError::Transport(format!(
                    "{method} {path_and_query}: no answer from {} within {timeout:?}",
                    self.base_url()
                )))
            }
        };
        if (200..300).contains(&code) {
            return Ok((code, answer));
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
        Err(HttpError::Status { code, message })
    }

    async fn exchange(&self, method: &str, path_and_query: &str, body: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
        let transport = |what: &str, e: std::io::Error| HttpError::Transport(format!("{what} {}: {e}", self.base_url()));
        let mut stream = TcpStream::connect(&self.authority).await.map_err(|e| transport("cannot connect to", e))?;
        let _ = stream.set_nodelay(true);
        let authorization = self.identity.authorization(method, path_and_query, body, crate::engine::now_ms());
        let mut request = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nAuthorization: {authorization}\r\nUser-Agent: warden-agent\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.authority,
            body.len()
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        stream.write_all(&bytes).await.map_err(|e| transport("cannot send to", e))?;

        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| transport("reading the answer of", e))?;
            if n > 0 {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE_BYTES {
                    return Err(HttpError::Transport(format!(
                        "answer of {} exceeds {MAX_RESPONSE_BYTES} bytes",
                        self.base_url()
                    )));
                }
            }
            if n == 0 && buf.is_empty() {
                return Err(HttpError::Transport(format!("{} closed the connection without an answer", self.base_url())));
            }
            match parse_response(&buf, n == 0) {
                Ok(Some(response)) => return Ok(response),
                Ok(None) if n == 0 => unreachable!("parse_response decides at end of stream"),
                Ok(None) => continue,
                Err(e) => return Err(HttpError::Transport(format!("malformed answer from {}: {e}", self.base_url()))),
            }
        }
    }
}

fn parse_server(server: &str) -> Result<String, String> {
    let server = server.trim();
    let (rest, default_port) = if let Some(rest) = server.strip_prefix("http://") {
        (rest, 80)
    } else if server.starts_with("https://") {
        return Err(format!("{server}: https is not supported by the agent; use http:// (every request is signed)"));
    } else if server.contains("://") {
        return Err(format!("{server}: only http:// URLs are supported"));
    } else {
        (server, DEFAULT_PORT)
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains('/') || authority.contains('@') || authority.contains('?') {
        return Err(format!("{server}: expected http://HOST[:PORT] or HOST[:PORT], with no path"));
    }
    // `host:port`, `[v6]:port`, or a host without a port.
    let has_port = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        let port = authority.rsplit_once(':').map(|(_, port)| port).unwrap_or_default();
        port.parse::<u16>().map_err(|_| format!("{server}: {port:?} is not a port"))?;
        Ok(authority.to_string())
    } else {
        Ok(format!("{authority}:{default_port}"))
    }
}

/// A whole response in `buf`: `Some((status, body))`; `None` if more bytes are needed (only
/// when `eof` is false); an error if it cannot be one.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if eof { Err("the connection closed before the headers ended".into()) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "headers are not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.splitn(3, ' ');
    let (version, code) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") {
        return Err(format!("status line {status_line:?}"));
    }
    let code: u16 = code.parse().map_err(|_| format!("status line {status_line:?}"))?;
    let (mut content_length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().map_err(|_| format!("Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().split(',').any(|coding| coding.trim() == "chunked");
        }
    }
    let body = &buf[head_end + 4..];
    if code / 100 == 1 {
        return Err(format!("unexpected interim status {code}"));
    }
    if chunked {
        return match dechunk(body)? {
            Some(body) => Ok(Some((code, body))),
            None if eof => Err("the connection closed inside a chunked body".into()),
            None => Ok(None),
        };
    }
    if code == 204 || code == 304 {
        return Ok(Some((code, Vec::new())));
    }
    match content_length {
        Some(len) if body.len() >= len => Ok(Some((code, body[..len].to_vec()))),
        Some(len) if eof => Err(format!("the body ended after {} of {len} bytes", body.len())),
        Some(_) => Ok(None),
        None if eof => Ok(Some((code, body.to_vec()))),
        None => Ok(None),
    }
}

/// A chunked body decoded, or `None` while its last chunk has not arrived yet.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else { return Ok(None) };
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "chunk size is not text".to_string())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            return Ok(if data.starts_with(b"\r\n") || find(data, b"\r\n\r\n").is_some() { Some(body) } else { None });
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err("a chunk does not end with CRLF".into());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{verify_request, ReplayGuard};
    use axum::body::{Body, Bytes};
    use axum::extract::{Request, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::any;
    use std::sync::Mutex;

    #[test]
    fn server_addresses() {
        assert_eq!(parse_server("http://10.0.0.1:7480").unwrap(), "10.0.0.1:7480");
        assert_eq!(parse_server("http://server/").unwrap(), "server:80");
        assert_eq!(parse_server("server").unwrap(), "server:7480");
        assert_eq!(parse_server("127.0.0.1:9000").unwrap(), "127.0.0.1:9000");
        assert_eq!(parse_server("[::1]:9000").unwrap(), "[::1]:9000");
        assert_eq!(parse_server("http://[::1]").unwrap(), "[::1]:80");
        assert!(parse_server("https://server").unwrap_err().contains("https is not supported"));
        assert!(parse_server("http://server/prefix").is_err());
        assert!(parse_server("server:http").is_err());
        assert!(parse_server("").is_err());
    }

    #[test]
    fn responses_framed_every_way() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(ok, false).unwrap(), Some((200, b"hello".to_vec())));
        assert_eq!(parse_response(&ok[..ok.len() - 1], false).unwrap(), None);
        assert!(parse_response(&ok[..ok.len() - 1], true).is_err(), "a short body at EOF is an error");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, false).unwrap(), Some((200, b"abcde".to_vec())));
        for cut in 40..chunked.len() {
            assert_eq!(parse_response(&chunked[..cut], false).unwrap(), None, "cut at {cut}");
        }
        let until_close = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert_eq!(parse_response(until_close, false).unwrap(), None);
        assert_eq!(parse_response(until_close, true).unwrap(), Some((404, b"nope".to_vec())));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200", true).is_err());
    }

    #[derive(Clone)]
    struct Server {
        keys: Vec<ed25519_dalek::VerifyingKey>,
        replays: Arc<Mutex<ReplayGuard>>,
    }

    /// Checks the signature like the real API does, then answers by path.
    async fn handle(State(server): State<Server>, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let header = parts.headers.get("authorization").and_then(|h| h.to_str().ok());
        let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let caller = match verify_request(
            header,
            parts.method.as_str(),
            path_and_query,
            &body,
            crate::engine::now_ms(),
            &server.keys,
            &server.replays,
        ) {
            Ok(caller) => caller,
            Err(e) => return (StatusCode::UNAUTHORIZED, axum::Json(ErrorBody { error: e.to_string() })).into_response(),
        };
        match parts.uri.path() {
            "/echo" => axum::Json(serde_json::json!({
                "caller": caller,
                "method": parts.method.as_str(),
                "query": parts.uri.query(),
                "body": String::from_utf8_lossy(&body),
            }))
            .into_response(),
            "/stream" => {
                let chunks = (0..50).map(|i| Ok::<_, std::io::Error>(Bytes::from(format!("{i},"))));
                Body::from_stream(futures_util::stream::iter(chunks)).into_response()
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late".into_response()
            }
            _ => (StatusCode::CONFLICT, axum::Json(ErrorBody { error: "no such thing".into() })).into_response(),
        }
    }

    #[tokio::test]
    async fn signed_requests_against_axum() {
        let identity = Arc::new(Identity::generate("h1"));
        let stranger = Arc::new(Identity::generate("stranger"));
        let state = Server {
            keys: vec![{
                let principal = identity.principal();
                let bytes: [u8; 32] = hex::decode(principal.strip_prefix("ed25519:").unwrap()).unwrap().try_into().unwrap();
                ed25519_dalek::VerifyingKey::from_bytes(&bytes).unwrap()
            }],
            replays: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().fallback(any(handle)).with_state(state);
        tokio::spawn(async move { axum::serve(listener, router).await });

        let http = Http::new(&format!("http://{addr}"), identity.clone()).unwrap();
        let second = Duration::from_secs(5);
        let answer: serde_json::Value =
            http.json("POST", "/echo?after=3", Some(&serde_json::json!({"a": [1, 2]})), second).await.unwrap();
        assert_eq!(answer["caller"], identity.principal());
        assert_eq!(answer["method"], "POST");
        assert_eq!(answer["query"], "after=3");
        assert_eq!(answer["body"], r#"{"a":[1,2]}"#);
        let answer: serde_json::Value = http.json::<(), _>("GET", "/echo", None, second).await.unwrap();
        assert_eq!((answer["method"].as_str(), answer["body"].as_str()), (Some("GET"), Some("")));

        let (code, body) = http.call("GET", "/stream", b"", second).await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(String::from_utf8(body).unwrap(), (0..50).map(|i| format!("{i},")).collect::<String>());

        let error = http.call("GET", "/elsewhere", b"", second).await.unwrap_err();
        assert_eq!(error, HttpError::Status { code: 409, message: "no such thing".into() });
        let error = http.json::<(), serde_json::Value>("GET", "/stream", None, second).await.unwrap_err();
        assert!(matches!(error, HttpError::Decode(_)), "{error:?}");

        let unknown = Http::new(&addr.to_string(), stranger).unwrap();
        let error = unknown.call("GET", "/echo", b"", second).await.unwrap_err();
        assert!(matches!(&error, HttpError::Status { code: 401, message } if message.contains("not authorized")), "{error:?}");

        let error = http.call("GET", "/slow", b"", Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(&error, HttpError::Transport(m) if m.contains("no answer")), "{error:?}");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let nobody = Http::new(&closed.to_string(), identity).unwrap();
        let error = nobody.call("GET", "/echo", b"", second).await.unwrap_err();
        assert_eq!(error.class(), "unreachable", "{error:?}");
    }
}
