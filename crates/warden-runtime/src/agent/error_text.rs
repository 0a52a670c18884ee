//! How an agent error is put into words for a report to the control plane (a failed start, a
//! failed activation): its message and each of its sources', joined by `: `, on one line.

use std::error::Error;

/// `error`'s message followed by each source's (`cannot fetch checkpoint x: connection
/// refused`). A source whose words the message already ends with is not repeated: some errors
/// of other crates still print their source themselves.
pub(super) fn error_text(error: &dyn Error) -> String {
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
        assert_eq!(error_text(&Fetch("sha256:ab", refused())), "cannot fetch checkpoint sha256:ab: connection refused");
        assert_eq!(error_text(&PrintsItsSource(refused())), "cannot spawn shim: connection refused");
    }
}
