//! How a request to the control plane failed, and the one place answers become errors: the
//! server's `ErrorBody` → `HttpError::Status`, reqwest's failures → `HttpError::Transport` (or
//! `HttpError::Refused`, when a connection was refused).

use std::time::Duration;

use crate::view::ErrorBody;

/// Why a request got no usable answer.
///
/// The payloads are flattened text, not chained sources: callers log an error with `{e}` and
/// compare or classify it (`class`), so each cause is written into the message once, in a
/// sentence that names the request and the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request could not be built: a path that does not start with `/`, a method that is
    /// not one, a body that does not encode.
    #[error("cannot build the request: {0}")]
    Request(String),
    /// No answer: cannot connect, connection reset, timed out, or not HTTP.
    #[error("{0}")]
    Transport(String),
    /// The connection was refused: nothing listened at the server's address when it was tried.
    /// Unlike silence, this is positive evidence about the server (see `warden_core::lease`,
    /// "While the control plane is down").
    #[error("{0}")]
    Refused(String),
    /// The server's TLS certificate was refused: not the pinned one, or not signed by the CA.
    #[error("{0}")]
    Certificate(String),
    /// The server answered with an error status; `message` is its `ErrorBody` (or raw text).
    #[error("{message} (HTTP {code})")]
    Status { code: u16, message: String },
    /// The answer is larger than the client's limit: refused, not buffered.
    #[error("the answer to {request} exceeds {limit_bytes} bytes")]
    TooLarge { request: String, limit_bytes: usize },
    /// A 2xx whose body is not the JSON expected.
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl HttpError {
    /// A short name for the kind of failure, so a caller can log each change only once.
    pub fn class(&self) -> String {
        match self {
            HttpError::Transport(_) => "unreachable".into(),
            HttpError::Refused(_) => "refused".into(),
            HttpError::Certificate(_) => "certificate refused".into(),
            HttpError::Status { code, .. } => format!("HTTP {code}"),
            HttpError::Request(_) => "bad request".into(),
            HttpError::TooLarge { .. } | HttpError::Decode(_) => "bad response".into(),
        }
    }
}

/// An error status's body as the error it is: the server's `ErrorBody` message, or the text.
pub(super) fn status_error(code: u16, body: &[u8]) -> HttpError {
    let text = String::from_utf8_lossy(body).into_owned();
    let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
    HttpError::Status { code, message }
}

/// A reqwest failure of `request` (`METHOD /path`) to `base_url`, in one sentence.
pub(super) fn transport_error(request: &str, base_url: &str, error: &reqwest::Error) -> HttpError {
    // reqwest's own message names only the URL; the reason is the innermost source.
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let refused = std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    // A refused certificate is rustls' error, inside the connector's io::Error.
    match rustls_error(error) {
        Some(rustls::Error::General(why)) => {
            return HttpError::Certificate(format!("{request}: {base_url} refused: {why}"));
        }
        Some(e @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)) => {
            return HttpError::Certificate(format!("{request}: {base_url} refused: {e}"));
        }
        _ => {}
    }
    if error.is_connect() && refused {
        return HttpError::Refused(format!(
            "{request}: cannot connect to {base_url}: connection refused (nothing listens there)"
        ));
    }
    let what = if error.is_connect() {
        "cannot connect to"
    } else if error.is_timeout() {
        "timed out waiting for"
    } else {
        "no answer from"
    };
    HttpError::Transport(format!("{request}: {what} {base_url}: {cause}"))
}

/// The rustls error under `error`, if any: found through `source()`, and through the error an
/// `io::Error` wraps (which its `source()` skips).
fn rustls_error(error: &reqwest::Error) -> Option<&rustls::Error> {
    let mut cause: &dyn std::error::Error = error;
    loop {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let wrapped = cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        cause = match wrapped {
            Some(inner) => inner,
            None => cause.source()?,
        };
    }
}

/// The whole exchange took longer than `timeout`.
pub(super) fn timeout_error(request: &str, base_url: &str, timeout: Duration) -> HttpError {
    HttpError::Transport(format!("{request}: no answer from {base_url} within {timeout:?}"))
}
