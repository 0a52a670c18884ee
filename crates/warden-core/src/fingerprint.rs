//! A TLS certificate's fingerprint, `sha256:<hex>` of the leaf certificate's DER: what agents and
//! the CLI pin instead of trusting a certificate authority, and what a join token carries.

use crate::canonical::sha256_hex;

/// `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    hex: String,
}

impl Fingerprint {
    /// The fingerprint of a certificate given as DER.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint { hex: sha256_hex(der) }
    }

    /// `sha256:<64 hex>` (or the 64 hex digits alone), any case; `None` if it is not that.
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let text = text.trim();
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Fingerprint { hex: hex.to_ascii_lowercase() })
    }

    /// The 64 hex digits, without `sha256:`.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_reads_back_as_written_and_nothing_else_parses() {
        let fingerprint = Fingerprint::of_der(b"certificate");
        assert_eq!(Fingerprint::parse(&fingerprint.to_string()), Some(fingerprint.clone()));
        assert_eq!(Fingerprint::parse(&fingerprint.hex().to_ascii_uppercase()), Some(fingerprint.clone()));
        assert!(fingerprint.to_string().starts_with("sha256:") && fingerprint.hex().len() == 64);
        assert_eq!(Fingerprint::parse("sha256:abc"), None);
        assert_eq!(Fingerprint::parse(&format!("md5:{}", fingerprint.hex())), None);
        assert_eq!(Fingerprint::parse(&"g".repeat(64)), None);
    }
}
