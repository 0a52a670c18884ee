//! The client against a small in-process axum server that checks signatures as the API does.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request as AxumRequest, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::any;

use super::*;
use crate::auth::{parse_principal, verify_request, Identity, ReplayGuard};
use crate::view::ErrorBody;

const SECOND: Option<Duration> = Some(Duration::from_secs(5));

#[derive(Clone)]
struct Server {
    keys: Vec<ed25519_dalek::VerifyingKey>,
    replays: Arc<Mutex<ReplayGuard>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `/open/…` answers anyone; everything else checks the signature like the real API does,
/// then answers by path.
async fn handle(State(server): State<Server>, request: AxumRequest) -> AxumResponse {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let header = parts.headers.get("authorization").and_then(|h| h.to_str().ok());
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let caller = if parts.uri.path().starts_with("/open/") {
        "anyone".to_string()
    } else {
        match verify_request(header, parts.method.as_str(), path_and_query, &body, now_ms(), &server.keys, &server.replays) {
            Ok(caller) => caller,
            Err(e) => {
                let mut response = (StatusCode::UNAUTHORIZED, axum::Json(ErrorBody { error: e.to_string() })).into_response();
                if let crate::auth::AuthError::BeforeStart { started_ms, .. } = e {
                    response.headers_mut().insert(crate::auth::NOT_BEFORE_HEADER, started_ms.into());
                }
                return response;
            }
        }
    };
    let chunked = |n: usize, size: usize| {
        let chunks = (0..n).map(move |i| Ok::<_, std::io::Error>(Bytes::from(format!("{i:0size$},"))));
        Body::from_stream(futures_util::stream::iter(chunks)).into_response()
    };
    match parts.uri.path() {
        path if path.starts_with("/echo") || path == "/open/echo" => axum::Json(serde_json::json!({
            "caller": caller,
            "method": parts.method.as_str(),
            "path_and_query": path_and_query,
            "content_type": parts.headers.get("content-type").and_then(|h| h.to_str().ok()),
            "body": String::from_utf8_lossy(&body),
        }))
        .into_response(),
        "/stream" => chunked(50, 1),
        // 64 chunks of 1 KiB, framed chunked: no Content-Length to refuse it by.
        "/big-stream" => chunked(64, 1023),
        "/big" => vec![b'x'; 64 * 1024].into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late".into_response()
        }
        "/text-error" => (StatusCode::BAD_GATEWAY, "upstream is down").into_response(),
        _ => (StatusCode::CONFLICT, axum::Json(ErrorBody { error: "no such thing".into() })).into_response(),
    }
}

/// Serves `handle` on a free loopback port, trusting `identity`, on the current runtime.
async fn serve(identity: &Identity) -> SocketAddr {
    serve_with_guard(identity, ReplayGuard::default()).await
}

/// `serve` with a replay guard of the test's choosing.
async fn serve_with_guard(identity: &Identity, guard: ReplayGuard) -> SocketAddr {
    let state = Server { keys: vec![parse_principal(&identity.principal()).unwrap()], replays: Arc::new(Mutex::new(guard)) };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().fallback(any(handle)).with_state(state);
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Serves `handle` on a runtime of its own, for the blocking client's tests.
fn serve_in_background(identity: &Identity) -> (SocketAddr, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let addr = runtime.block_on(serve(identity));
    (addr, runtime)
}

/// `http://addr`: the test server speaks plain HTTP.
fn http(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn limited(max_response_bytes: usize) -> ClientConfig {
    ClientConfig { max_response_bytes: Some(max_response_bytes), ..ClientConfig::default() }
}

#[tokio::test]
async fn a_client_whose_clock_is_behind_a_freshly_started_server_signs_again_with_its_start() {
    let identity = Arc::new(Identity::generate("h1"));
    // The server started 3 s ahead of our clock: what we sign now is "before its start".
    let started_ms = now_ms() + 3_000;
    let addr = serve_with_guard(&identity, ReplayGuard::started_at(started_ms)).await;
    let client = Client::new(&http(addr), identity.clone(), &ClientConfig::default()).unwrap();
    let answer: serde_json::Value = client.json::<(), _>("GET", "/echo", None, SECOND).await.unwrap();
    assert_eq!(answer["caller"], identity.principal());
}

#[tokio::test]
async fn signed_requests_verify_with_verify_request_for_a_server_given_as_bare_host_port() {
    let identity = Arc::new(Identity::generate("h1"));
    let addr = serve(&identity).await;
    let client = Client::new(&http(addr), identity.clone(), &ClientConfig::default()).unwrap();
    assert_eq!(client.base_url(), format!("http://{addr}"));

    let answer: serde_json::Value =
        client.json("POST", "/echo?after=3", Some(&serde_json::json!({"a": [1, 2]})), SECOND).await.unwrap();
    assert_eq!(answer["caller"], identity.principal());
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["path_and_query"], "/echo?after=3");
    assert_eq!(answer["content_type"], "application/json");
    assert_eq!(answer["body"], r#"{"a":[1,2]}"#);

    let answer: serde_json::Value = client.json::<(), _>("GET", "/echo", None, SECOND).await.unwrap();
    assert_eq!((answer["method"].as_str(), answer["body"].as_str()), (Some("GET"), Some("")));
    assert_eq!(answer["content_type"], serde_json::Value::Null, "an empty body has no content type");

    // Percent-encoded ids are signed as they are sent.
    let answer: serde_json::Value = client.json::<(), _>("DELETE", "/echo/a%2Fb%20c?x=%C3%A9", None, SECOND).await.unwrap();
    assert_eq!(answer["path_and_query"], "/echo/a%2Fb%20c?x=%C3%A9");
}

#[tokio::test]
async fn a_prepared_request_sent_twice_is_refused_as_a_replay() {
    let identity = Arc::new(Identity::generate("h1"));
    let addr = serve(&identity).await;
    let client = Client::new(&format!("http://{addr}/"), identity, &ClientConfig::default()).unwrap();
    let request = client.prepare("GET", "/echo", Bytes::new()).unwrap();
    assert!(request.authorization().is_some_and(|header| header.starts_with("Warden-Ed25519 key=")));
    assert_eq!(client.exchange(&request, SECOND).await.unwrap().0, 200);
    let (code, body) = client.exchange(&request, SECOND).await.unwrap();
    assert_eq!(code, 401);
    assert!(String::from_utf8_lossy(&body).contains("already used"), "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn an_error_body_becomes_a_status_error_with_its_message() {
    let identity = Arc::new(Identity::generate("h1"));
    let addr = serve(&identity).await;
    let client = Client::new(&http(addr), identity, &ClientConfig::default()).unwrap();

    let error = client.call("GET", "/elsewhere", b"", SECOND).await.unwrap_err();
    assert_eq!(error, HttpError::Status { code: 409, message: "no such thing".into() });
    assert_eq!(error.to_string(), "no such thing (HTTP 409)");
    assert_eq!(error.class(), "HTTP 409");
    // Not JSON: the text is the message.
    let error = client.call("GET", "/text-error", b"", SECOND).await.unwrap_err();
    assert_eq!(error, HttpError::Status { code: 502, message: "upstream is down".into() });
    let error = client.stream("GET", "/elsewhere", b"").await.err().unwrap();
    assert_eq!(error, HttpError::Status { code: 409, message: "no such thing".into() });

    let stranger = Client::new(&http(addr), Arc::new(Identity::generate("stranger")), &ClientConfig::default()).unwrap();
    let error = stranger.call("GET", "/echo", b"", SECOND).await.unwrap_err();
    assert!(matches!(&error, HttpError::Status { code: 401, message } if message.contains("not authorized")), "{error:?}");
    let unsigned = Client::unsigned(&http(addr), &ClientConfig::default()).unwrap();
    let error = unsigned.call("GET", "/echo", b"", SECOND).await.unwrap_err();
    assert!(matches!(&error, HttpError::Status { code: 401, message } if message.contains("missing Authorization")));
    let answer: serde_json::Value = unsigned.json::<(), _>("GET", "/open/echo", None, SECOND).await.unwrap();
    assert_eq!(answer["caller"], "anyone");

    // A 2xx that is not the JSON expected.
    let error = client.json::<(), serde_json::Value>("GET", "/stream", None, SECOND).await.unwrap_err();
    assert!(matches!(&error, HttpError::Decode(text) if text.contains("0,1,2")), "{error:?}");
    assert_eq!(error.class(), "bad response");
}

#[tokio::test]
async fn an_answer_over_the_limit_is_refused_whether_or_not_its_length_is_announced() {
    let identity = Arc::new(Identity::generate("h1"));
    let addr = serve(&identity).await;
    let client = Client::new(&http(addr), identity.clone(), &limited(32 * 1024)).unwrap();
    for path in ["/big", "/big-stream"] {
        let error = client.call("GET", path, b"", SECOND).await.unwrap_err();
        assert_eq!(error, HttpError::TooLarge { request: format!("GET {path}"), limit_bytes: 32 * 1024 }, "{path}");
    }
    let roomy = Client::new(&http(addr), identity, &limited(64 * 1024)).unwrap();
    assert_eq!(roomy.call("GET", "/big", b"", SECOND).await.unwrap().1.len(), 64 * 1024);
    assert_eq!(roomy.call("GET", "/big-stream", b"", SECOND).await.unwrap().1.len(), 64 * 1024);
}

#[tokio::test]
async fn a_stream_is_read_chunk_by_chunk_and_not_limited() {
    let identity = Arc::new(Identity::generate("h1"));
    let addr = serve(&identity).await;
    let client = Client::new(&http(addr), identity, &limited(16)).unwrap();
    let mut response = client.stream("GET", "/stream", b"").await.unwrap();
    assert_eq!(response.status(), 200);
    let mut text = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8(text).unwrap(), (0..50).map(|i| format!("{i},")).collect::<String>());
}

#[tokio::test]
async fn no_answer_is_a_transport_error() {
    let identity = Arc::new(Identity::generate("h1"));
    let addr = serve(&identity).await;
    let client = Client::new(&http(addr), identity.clone(), &ClientConfig::default()).unwrap();
    let error = client.call("GET", "/slow", b"", Some(Duration::from_millis(200))).await.unwrap_err();
    assert!(matches!(&error, HttpError::Transport(m) if m.contains("no answer") && m.contains("GET /slow")), "{error:?}");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let nobody = Client::new(&http(closed), identity, &ClientConfig::default()).unwrap();
    let error = nobody.call("GET", "/echo", b"", SECOND).await.unwrap_err();
    assert!(matches!(&error, HttpError::Refused(m) if m.contains("connection refused")), "{error:?}");
    assert_eq!(error.class(), "refused");
}

#[tokio::test]
async fn a_request_that_cannot_be_built_says_why() {
    let identity = Arc::new(Identity::generate("h1"));
    let client = Client::new("http://127.0.0.1:1", identity.clone(), &ClientConfig::default()).unwrap();
    assert!(matches!(client.prepare("GET", "echo", Bytes::new()), Err(HttpError::Request(_))));
    assert!(matches!(client.prepare("GE T", "/echo", Bytes::new()), Err(HttpError::Request(_))));
    assert!(matches!(Client::unsigned("ftp://server", &ClientConfig::default()), Err(ClientSetupError::Address(_))));
    let untrusted = Client::new("127.0.0.1:1", identity, &ClientConfig::default()).err().expect("TLS with nothing trusted");
    assert!(matches!(untrusted, ClientSetupError::NoTrust { .. }), "{untrusted:?}");
    assert!(untrusted.to_string().contains("--ca FILE"), "{untrusted}");
}

#[test]
fn the_blocking_client_signs_decodes_and_streams_the_same_way() {
    let identity = Arc::new(Identity::generate("h1"));
    let (addr, _server) = serve_in_background(&identity);
    let client = BlockingClient::new(&http(addr), identity.clone(), &limited(32 * 1024)).unwrap();

    let answer: serde_json::Value = client.json("PUT", "/echo", Some(&[1, 2]), SECOND).unwrap();
    assert_eq!((answer["caller"].as_str(), answer["body"].as_str()), (Some(identity.principal().as_str()), Some("[1,2]")));
    let error = client.call("GET", "/elsewhere", b"", None).unwrap_err();
    assert_eq!(error, HttpError::Status { code: 409, message: "no such thing".into() });
    assert!(matches!(client.call("GET", "/big", b"", None), Err(HttpError::TooLarge { .. })));

    let mut text = String::new();
    client.stream("GET", "/big-stream", b"").unwrap().read_to_string(&mut text).unwrap();
    assert_eq!(text.len(), 64 * 1024, "a stream is not limited");

    // Shared by threads, as the benches do.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || client.call("GET", "/echo", b"", SECOND).unwrap().0)
        })
        .collect();
    assert!(threads.into_iter().all(|thread| thread.join().unwrap() == 200));
}

/// The listener with TLS (`serve::serve`) and the client pinning its certificate: the pinned
/// certificate is accepted, another pin is refused as a certificate error, plaintext gets no
/// answer, and a CA file naming the certificate is accepted too.
#[tokio::test]
async fn the_client_accepts_exactly_the_pinned_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let listener = crate::serve::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let setup = crate::tls::TlsSetup::Generate { extra_names: Vec::new() };
    let tls = crate::tls::server_tls(dir.path(), addr, "test-host", &setup).unwrap().unwrap();
    let identity = Identity::generate("h1");
    let state = Server { keys: vec![parse_principal(&identity.principal()).unwrap()], replays: Arc::default() };
    let router = axum::Router::new().fallback(any(handle)).with_state(state);
    let limits = crate::serve::Limits::for_fd_limit(1024);
    let gate = Arc::new(crate::serve::Gate::new(limits));
    tokio::spawn(crate::serve::serve(listener, router, gate, Some(tls.config.clone()), std::future::pending()));

    let pinned = ClientConfig { trust: ServerTrust::Pinned(tls.fingerprint.clone()), ..ClientConfig::default() };
    let client = Client::unsigned(&addr.to_string(), &pinned).unwrap();
    assert_eq!(client.base_url(), format!("https://{addr}"));
    assert_eq!(client.call("GET", "/open/echo", b"", SECOND).await.unwrap().0, 200);

    let other =
        ClientConfig { trust: ServerTrust::Pinned(warden_core::fingerprint::Fingerprint::of_der(b"x")), ..pinned.clone() };
    let error = Client::unsigned(&addr.to_string(), &other).unwrap().call("GET", "/open/echo", b"", SECOND).await.unwrap_err();
    assert!(matches!(&error, HttpError::Certificate(m) if m.contains(&tls.fingerprint.to_string())), "{error:?}");

    let plain = Client::unsigned(&http(addr), &ClientConfig::default()).unwrap();
    let error = plain.call("GET", "/open/echo", b"", SECOND).await.unwrap_err();
    assert!(matches!(error, HttpError::Transport(_)), "plaintext to a TLS listener gets no answer: {error:?}");

    let ca = ClientConfig { trust: ServerTrust::ca_file(&tls.cert_path).unwrap(), ..ClientConfig::default() };
    let by_name = Client::unsigned(&format!("localhost:{}", addr.port()), &ca).unwrap();
    assert_eq!(by_name.call("GET", "/open/echo", b"", SECOND).await.unwrap().0, 200, "verified with --ca, by name");
    let probed = crate::tls::probe_fingerprint(&addr.to_string(), "127.0.0.1", Duration::from_secs(5)).await.unwrap();
    assert_eq!(probed, tls.fingerprint);
}
