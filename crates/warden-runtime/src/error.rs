//! What the API answers when a request cannot be done: one enum, each variant saying what
//! failed, and the HTTP status it maps to (`ApiError::status`) decided here, in one place.

use warden_core::cluster::{ClusterError, SubmitRefused, TokenAdminError};
use warden_core::keys::KeyError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (a bad spec, a malformed body): a 400.
    #[error("{0}")]
    BadRequest(String),
    /// What the request names does not exist: a 404.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this (not the owner, not a host): a 403.
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the current state (already ended, ambiguous): a 409.
    #[error("{0}")]
    Conflict(String),
    /// What was asked for is over (a `warden logs` nobody reads any more): a 410.
    #[error("{0}")]
    Gone(String),
    /// warden's own fault (e.g. a corrupt artifact): a 500.
    #[error("{0}")]
    Internal(String),
    /// A host's request the cluster refused (`warden_core::cluster`).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A submission that cannot be accepted as it stands.
    #[error(transparent)]
    Submit(#[from] SubmitRefused),
    /// A `warden keys add|revoke` that cannot be done.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A `warden secret put|rm` that cannot be done.
    #[error(transparent)]
    Secret(#[from] warden_core::secrets::SecretError),
}

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::Forbidden(_) => 403,
            ApiError::Conflict(_) => 409,
            ApiError::Gone(_) => 410,
            ApiError::Internal(_) => 500,
            ApiError::Cluster(error) => match error {
                ClusterError::UnknownHost { .. } => 404,
                ClusterError::WrongKey { .. } | ClusterError::KeyRemoved { .. } => 403,
                ClusterError::JoinToken(_) => 401,
                ClusterError::BadStateUri { .. } | ClusterError::BadHostLabel { .. } => 400,
                ClusterError::LocalNode { .. }
                | ClusterError::HostDown { .. }
                | ClusterError::NotHolder { .. }
                | ClusterError::AcquireRefused { .. } => 409,
            },
            ApiError::Submit(_) => 409,
            ApiError::Key(KeyError::UnknownKey(_)) => 404,
            ApiError::Key(error) if error.is_conflict() => 409,
            ApiError::Key(_) => 400,
            ApiError::Secret(error) => match error {
                warden_core::secrets::SecretError::BadName(_) => 400,
                warden_core::secrets::SecretError::Conflict { .. } => 409,
                warden_core::secrets::SecretError::Unknown { .. } => 404,
            },
        }
    }
}

impl From<TokenAdminError> for ApiError {
    fn from(error: TokenAdminError) -> ApiError {
        match error {
            TokenAdminError::Duplicate(_) => ApiError::Conflict(error.to_string()),
            TokenAdminError::Unknown(_) => ApiError::NotFound(error.to_string()),
            TokenAdminError::BadTtl { .. } | TokenAdminError::NoUses => ApiError::BadRequest(error.to_string()),
        }
    }
}

/// An error's message followed by each source's, joined by `: ` on one line (`cannot fetch
/// checkpoint x: connection refused`): what a user-facing message or a report shows. A source
/// whose words the message already ends with is not repeated (some errors of other crates still
/// print their source themselves).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let words = cause.to_string();
        if !words.is_empty() && !text.ends_with(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot fetch checkpoint {0}")]
    struct Fetch(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot spawn shim: {0}")]
    struct PrintsItsSource(#[source] std::io::Error);

    #[test]
    fn sources_are_joined_once() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(error_chain(&Fetch("sha256:ab", refused())), "cannot fetch checkpoint sha256:ab: connection refused");
        assert_eq!(error_chain(&PrintsItsSource(refused())), "cannot spawn shim: connection refused");
    }
}
