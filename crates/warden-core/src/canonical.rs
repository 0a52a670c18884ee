//! Canonical JSON bytes and SHA-256 content addresses: what `spec_id`, `prevhash` and artifacts hash.
//!
//! Canonical form is compact JSON with object keys sorted (serde_json's default `Map` is a
//! `BTreeMap`; nothing in this workspace may enable its `preserve_order` feature — a test checks).

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Serializes `value` to canonical JSON bytes: sorted keys, no insignificant whitespace.
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    let tree = serde_json::to_value(value).expect("warden types always serialize to JSON");
    serde_json::to_vec(&tree).expect("a JSON value always serializes")
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The content address `sha256:<hex>` of a value's canonical JSON.
pub fn content_id<T: Serialize>(value: &T) -> String {
    format!("sha256:{}", sha256_hex(&canonical_json(value)))
}

/// An immutable, content-addressed blob: `id` is `sha256:<hex>` of `bytes`. Job manifests and
/// context snapshots are artifacts of their canonical JSON, so equal content has one id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub id: String,
    pub bytes: Vec<u8>,
}

impl Artifact {
    /// The artifact of `bytes` as they are.
    pub fn from_bytes(bytes: Vec<u8>) -> Artifact {
        Artifact { id: format!("sha256:{}", sha256_hex(&bytes)), bytes }
    }

    /// The artifact of a value's canonical JSON; its id equals `content_id(value)`.
    pub fn of_json<T: Serialize>(value: &T) -> Artifact {
        Artifact::from_bytes(canonical_json(value))
    }

    /// Whether `bytes` are what `id` names.
    pub fn verify(id: &str, bytes: &[u8]) -> bool {
        id.strip_prefix("sha256:").is_some_and(|hex| hex == sha256_hex(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_whatever_the_input_order() {
        let value = serde_json::json!({"zeta": 1, "alpha": {"y": 2, "b": 3}});
        assert_eq!(canonical_json(&value), br#"{"alpha":{"b":3,"y":2},"zeta":1}"#.to_vec());
    }

    #[test]
    fn artifact_id_is_the_content_id_and_verifies() {
        let value = serde_json::json!({"rows": 3});
        let artifact = Artifact::of_json(&value);
        assert_eq!(artifact.id, content_id(&value));
        assert!(Artifact::verify(&artifact.id, &artifact.bytes));
        assert!(!Artifact::verify(&artifact.id, b"{\"rows\":4}"));
        assert!(!Artifact::verify("md5:00", &artifact.bytes));
    }
}
