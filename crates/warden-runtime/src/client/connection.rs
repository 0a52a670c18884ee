//! The one place an HTTP connection is configured: timeouts, pooling, proxies, and TLS (rustls,
//! trusting a pinned fingerprint or a CA file, `crate::tls::ServerTrust`).

use std::time::Duration;

use super::address::{ServerAddress, ServerAddressError};
use crate::tls::{ServerTrust, TlsError};

/// How a client connects and how much it accepts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long a TCP connect may take before the request fails as unreachable.
    pub connect_timeout: Duration,
    /// The largest answer read whole (`call`, `json`, `exchange`); `None` for no limit.
    /// Streamed answers (`stream`) are the caller's to bound.
    pub max_response_bytes: Option<usize>,
    /// Idle keep-alive connections kept per server; 0 opens a fresh connection per request.
    pub idle_connections_per_host: usize,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Which server certificate `https://` accepts; with `ServerTrust::Nobody`, only `http://`
    /// addresses can be used.
    pub trust: ServerTrust,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: None,
            idle_connections_per_host: 8,
            user_agent: concat!("warden/", env!("CARGO_PKG_VERSION")).to_string(),
            trust: ServerTrust::Nobody,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error(transparent)]
    Address(#[from] ServerAddressError),
    #[error("cannot set up the HTTP client")]
    Connection(#[source] reqwest::Error),
    #[error("cannot start the HTTP client's runtime")]
    Runtime(#[source] std::io::Error),
    #[error(
        "{base_url} is served over TLS, and no certificate is trusted for it: pin its fingerprint or pass --ca FILE \
         (or write http:// for a server started with --insecure-http)"
    )]
    NoTrust { base_url: String },
    #[error("cannot set up TLS")]
    Tls(#[from] TlsError),
}

/// The reqwest client every `Client` sends through, to `address`.
pub(super) fn reqwest_client(config: &ClientConfig, address: &ServerAddress) -> Result<reqwest::Client, ClientSetupError> {
    let mut builder = reqwest::Client::builder();
    match crate::tls::client_config(&config.trust)? {
        Some(tls) => builder = builder.use_preconfigured_tls(tls),
        None if address.tls() => return Err(ClientSetupError::NoTrust { base_url: address.base_url() }),
        None => builder = builder.use_preconfigured_tls(crate::tls::trusts_nobody()),
    }
    builder
        .connect_timeout(config.connect_timeout)
        .pool_max_idle_per_host(config.idle_connections_per_host)
        // Sooner than the server closes an idle connection (`serve::Limits::header_read_timeout`,
        // 30 s), so a pooled connection is not reused just as the server closes it.
        .pool_idle_timeout(Duration::from_secs(20))
        .user_agent(config.user_agent.clone())
        // Requests go straight to the control plane, as they did before reqwest: an
        // `HTTP_PROXY` meant for the outside world must not see signed requests.
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .map_err(ClientSetupError::Connection)
}
