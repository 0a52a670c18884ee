//! The one signed HTTP client of the workspace: the CLI, the agent, the tests and the benches
//! all talk to the control plane through it.
//!
//! `Client` (async, on reqwest over hyper) turns (method, path, body, identity) into a signed
//! request in one place (`Client::prepare`), and decodes answers in one place: the server's
//! `ErrorBody` becomes `HttpError::Status`, a failed connection `HttpError::Transport`. The
//! connection itself is configured only in `connection::reqwest_client`: that is where TLS
//! (rustls) plugs in. reqwest rather than bare hyper: pooling, connect timeouts, proxies and
//! rustls are its configuration, not code of ours to keep.
//!
//! Sync callers (the CLI, tests, benches) use `BlockingClient`: the same async `Client` driven by
//! `block_on` on a private current-thread tokio runtime, not reqwest's `blocking` module. reqwest's
//! blocking client is a second client type with its own builder and response; wrapping ours
//! keeps one path for signing, size limits, timeouts and error decoding, and one place to
//! configure the connection.

mod address;
mod blocking;
mod connection;
mod error;
mod signed;

pub use crate::tls::ServerTrust;
pub use address::{ServerAddress, ServerAddressError};
pub use blocking::{BlockingClient, BlockingResponse};
pub use connection::{ClientConfig, ClientSetupError};
pub use error::HttpError;
pub use signed::{Client, Request, Response};

#[cfg(test)]
mod tests;
