//! A rollout's probes while the host soaks: `http` (a GET whose status must be the expected
//! one), `tcp` (a connection must open) and `exec` (a command must exit 0), each run on its own
//! interval and bounded by its own timeout; a probe without a result in time has failed.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use warden_core::rollout::{ProbeKind, ProbeMode, ProbeSpec};

use super::command::{run_command, CommandError, OutputLog};
use super::substitutions::Substitutions;
use crate::error::error_chain;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeError {
    /// No result within the probe's timeout.
    #[error("{action}: no result within {timeout_ms} ms")]
    NoResult { action: String, timeout_ms: u128 },
    #[error(transparent)]
    Url(#[from] ProbeUrlError),
    #[error("GET {url}: cannot set up the HTTP client")]
    Client {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}")]
    Get {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status}, expected {expected}")]
    WrongStatus { url: String, status: u16, expected: u16 },
    #[error("connect to {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Exec(CommandError),
}

/// An `http` probe's URL the agent cannot GET.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeUrlError {
    #[error("{url}: https is not supported by the agent's probes (it speaks no TLS); probe an http:// URL, or use a tcp or exec probe")]
    Https { url: String },
    #[error("{url}: not an http:// URL")]
    NotHttp { url: String },
    #[error("{url}: expected http://HOST[:PORT][/PATH]")]
    Unparsable {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("{url}: expected http://HOST[:PORT][/PATH]")]
    UserInfo { url: String },
}

/// One probe's result, as the worker reports it.
#[derive(Clone, Debug)]
pub(super) struct ProbeOutcome {
    pub(super) probe: String,
    pub(super) passed: bool,
    pub(super) mode: ProbeMode,
    /// Unix ms when it was taken, by this host's clock.
    pub(super) at: u64,
}

/// Runs `spec` every `interval_ms` (the first at once), each run bounded by `timeout_ms`, and
/// sends each result; ends when the worker stops listening.
pub(super) async fn probe_every(
    spec: ProbeSpec,
    substitutions: Substitutions,
    label: String,
    results: mpsc::Sender<ProbeOutcome>,
) {
    let mut ticks = tokio::time::interval(Duration::from_millis(spec.interval_ms.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(spec.timeout_ms.max(1));
    let mut last_passed = None;
    loop {
        ticks.tick().await;
        let result = run_probe(&spec.kind, &substitutions, timeout, &label).await;
        let passed = result.is_ok();
        // Each change is logged at info, the same result again only at debug.
        match (&result, last_passed == Some(passed)) {
            (Ok(()), false) => tracing::info!("{label}: passes"),
            (Err(e), false) => tracing::info!("{label}: fails: {}", error_chain(e)),
            (Ok(()), true) => tracing::debug!("{label}: passes"),
            (Err(e), true) => tracing::debug!("{label}: fails: {}", error_chain(e)),
        }
        last_passed = Some(passed);
        let outcome = ProbeOutcome { probe: spec.name.clone(), passed, mode: spec.mode, at: unix_ms() };
        if results.send(outcome).await.is_err() {
            return;
        }
    }
}

/// The wall clock in Unix ms, for a result's `at`.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs a probe once, at most `timeout`; `Err` says why it failed.
pub(super) async fn run_probe(
    kind: &ProbeKind,
    substitutions: &Substitutions,
    timeout: Duration,
    label: &str,
) -> Result<(), ProbeError> {
    let no_result = |action: String| move |_| ProbeError::NoResult { action, timeout_ms: timeout.as_millis() };
    match kind {
        ProbeKind::Http { url, expect_status } => {
            let url = substitutions.apply(url);
            let status = tokio::time::timeout(timeout, http_status(&url)).await.map_err(no_result(format!("GET {url}")))??;
            if status == *expect_status {
                Ok(())
            } else {
                Err(ProbeError::WrongStatus { url, status, expected: *expect_status })
            }
        }
        ProbeKind::Tcp { address } => {
            let address = substitutions.apply(address);
            let connect = TcpStream::connect(&address);
            match tokio::time::timeout(timeout, connect).await.map_err(no_result(format!("connect to {address}")))? {
                Ok(_) => Ok(()),
                Err(source) => Err(ProbeError::Connect { address, source }),
            }
        }
        ProbeKind::Exec { argv } => run_command(substitutions.apply_all(argv), timeout, label.to_string(), OutputLog::Debug)
            .await
            .map_err(ProbeError::Exec),
    }
}

/// The status of a plain HTTP/1.1 GET of `url` (`http://host[:port][/path][?query]`), on a new
/// connection that is closed after the answer's head, redirects not followed and no proxy
/// asked: the probe is about the service itself, now. The agent speaks no TLS: an `https://`
/// URL is refused with an error saying so.
async fn http_status(url: &str) -> Result<u16, ProbeError> {
    let target = probe_url(url)?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(crate::tls::trusts_nobody())
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .user_agent("warden-agent-probe")
        .build()
        .map_err(|source| ProbeError::Client { url: url.to_string(), source })?;
    let answer = client
        .get(target)
        .header(reqwest::header::CONNECTION, "close")
        .send()
        .await
        .map_err(|source| ProbeError::Get { url: url.to_string(), source })?;
    Ok(answer.status().as_u16())
}

/// `url` as a URL to GET: `http://host[:port][/path][?query]`, without user info; a fragment is
/// dropped (it is never sent).
fn probe_url(url: &str) -> Result<url::Url, ProbeUrlError> {
    if !url.starts_with("http://") {
        return Err(if url.starts_with("https://") {
            ProbeUrlError::Https { url: url.to_string() }
        } else {
            ProbeUrlError::NotHttp { url: url.to_string() }
        });
    }
    let mut parsed = url::Url::parse(url).map_err(|source| ProbeUrlError::Unparsable { url: url.to_string(), source })?;
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.host().is_none() {
        return Err(ProbeUrlError::UserInfo { url: url.to_string() });
    }
    parsed.set_fragment(None);
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn substitutions() -> Substitutions {
        Substitutions { host: "h1".into(), target: "v2".into(), previous: Some("v1".into()) }
    }

    #[test]
    fn http_urls() {
        let url = |url: &str| probe_url(url).unwrap().to_string();
        assert_eq!(url("http://h:8080/health?x=1"), "http://h:8080/health?x=1");
        assert_eq!(url("http://h"), "http://h/");
        assert_eq!(url("http://h?ready"), "http://h/?ready");
        assert_eq!(url("http://[::1]:9/x#frag"), "http://[::1]:9/x");
        assert!(probe_url("https://h/").unwrap_err().to_string().contains("https is not supported"));
        assert!(probe_url("ftp://h/").is_err());
        assert!(probe_url("http://user@h/").is_err());
    }

    /// A tiny HTTP server: `/ok` answers 200, anything else 500; `/hang` never answers;
    /// `/moved` redirects to `/ok` (which a probe does not follow).
    async fn http_server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let request = String::from_utf8_lossy(&request);
                    let path = request.split(' ').nth(1).unwrap_or_default().to_string();
                    let lower = request.to_ascii_lowercase();
                    assert!(lower.contains(&format!("host: {addr}\r\n")), "{request}");
                    if path == "/hang" {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let status = match path.as_str() {
                        "/ok" => "200 OK",
                        "/moved" => "302 Found\r\nLocation: /ok",
                        _ => "500 Internal Server Error",
                    };
                    let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    async fn probe(kind: ProbeKind, timeout_ms: u64) -> Result<(), String> {
        run_probe(&kind, &substitutions(), Duration::from_millis(timeout_ms), "test probe").await.map_err(|e| error_chain(&e))
    }

    #[tokio::test]
    async fn http_probes() {
        let addr = http_server().await;
        let http = |path: &str, expect_status| ProbeKind::Http { url: format!("http://{addr}{path}"), expect_status };
        probe(http("/ok", 200), 2_000).await.unwrap();
        let error = probe(http("/broken", 200), 2_000).await.unwrap_err();
        assert!(error.contains("HTTP 500, expected 200"), "{error}");
        probe(http("/broken", 500), 2_000).await.unwrap();
        // Placeholders in the URL: `{target}` is `v2` here, which is not a path that answers 200.
        let error = probe(http("/{target}", 200), 2_000).await.unwrap_err();
        assert!(error.contains("/v2"), "{error}");
        // The status of the URL itself: a redirect is not followed.
        probe(http("/moved", 302), 2_000).await.unwrap();

        let started = std::time::Instant::now();
        let error = probe(http("/hang", 200), 300).await.unwrap_err();
        assert!(error.contains("no result within 300 ms"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let error = probe(ProbeKind::Http { url: "https://127.0.0.1:1/".into(), expect_status: 200 }, 1_000).await.unwrap_err();
        assert!(error.contains("https is not supported"), "{error}");
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let error = probe(ProbeKind::Http { url: format!("http://{closed}/"), expect_status: 200 }, 2_000).await.unwrap_err();
        assert!(error.contains(&format!("GET http://{closed}/")), "{error}");
    }

    #[tokio::test]
    async fn tcp_probes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        probe(ProbeKind::Tcp { address: open.to_string() }, 2_000).await.unwrap();
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let error = probe(ProbeKind::Tcp { address: closed.to_string() }, 2_000).await.unwrap_err();
        assert!(error.contains(&format!("connect to {closed}")), "{error}");
    }

    #[tokio::test]
    async fn exec_probes() {
        let exec = |argv: &[&str]| ProbeKind::Exec { argv: argv.iter().map(|a| a.to_string()).collect() };
        probe(exec(&["true"]), 2_000).await.unwrap();
        let error = probe(exec(&["false"]), 2_000).await.unwrap_err();
        assert!(error.contains("exited with code 1"), "{error}");
        let error =
            probe(exec(&["sh", "-c", "echo first >&2; echo 'why: {host} {target}' >&2; exit 3"]), 2_000).await.unwrap_err();
        assert!(error.contains("exited with code 3: why: h1 v2"), "{error}");
        let error = probe(exec(&["sh", "-c", "echo only stdout; exit 4"]), 2_000).await.unwrap_err();
        assert!(error.ends_with("exited with code 4: only stdout"), "{error}");
        let error = probe(exec(&["sh", "-c", "kill -9 $$"]), 2_000).await.unwrap_err();
        assert!(error.contains("killed by signal 9"), "{error}");
        let error = probe(exec(&["/nonexistent/probe"]), 2_000).await.unwrap_err();
        assert!(error.contains("cannot run \"/nonexistent/probe\""), "{error}");
    }
}
