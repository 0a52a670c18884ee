//! API keys managed at runtime (`warden keys add|ls|revoke`): each is a journaled event, so a
//! key added or revoked takes effect on the next request and survives restarts, with no file
//! to edit. The decisions are pure: `add` and `revoke` check a request against the keys the
//! projection holds and return the one event it makes (the engine records it in its batch).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::authz::{validate_namespace, BadNamespace, Principal, Role, DEFAULT_NAMESPACE};
use crate::event::EventData;

/// A journaled key: its name (unique among live keys), its public key (`ed25519:<hex>`), its
/// role and, for viewers and operators, its namespaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    pub principal: String,
    pub role: Role,
    pub namespaces: Vec<String>,
    pub added_at_ms: u64,
}

impl KeyRecord {
    pub fn as_principal(&self) -> Principal {
        Principal { name: self.name.clone(), role: self.role, namespaces: self.namespaces.clone() }
    }
}

/// What `warden keys add` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRequest {
    pub name: String,
    pub principal: String,
    pub role: Role,
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "key name {0:?} is not valid: 1 to 63 characters, letters, digits, '.', '_' and '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("public key {0:?} is not ed25519:<64 hex digits>")]
    BadPublicKey(String),
    #[error(transparent)]
    BadNamespace(#[from] BadNamespace),
    #[error("an admin key holds every namespace: drop --namespace")]
    AdminWithNamespaces,
    #[error("a key named {0:?} exists already (revoke it first to replace it)")]
    NameTaken(String),
    #[error("that public key is already the key {0:?}")]
    PrincipalTaken(String),
    #[error("no key named {0:?}")]
    UnknownKey(String),
}

impl KeyError {
    /// Whether this is a conflict with existing keys (409) rather than bad input (400) or a
    /// missing key (404).
    pub fn is_conflict(&self) -> bool {
        matches!(self, KeyError::NameTaken(_) | KeyError::PrincipalTaken(_))
    }
}

pub fn validate_key_name(name: &str) -> Result<(), KeyError> {
    let bytes = name.as_bytes();
    let ok = (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(()).ok_or_else(|| KeyError::BadName(name.to_string()))
}

fn validate_principal(principal: &str) -> Result<(), KeyError> {
    let ok = principal
        .strip_prefix("ed25519:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    ok.then_some(()).ok_or_else(|| KeyError::BadPublicKey(principal.to_string()))
}

/// Adds a key: checks `request` against the live `keys` and returns its `KeyAdded`. A viewer or
/// operator named with no namespace gets `default`; namespaces are sorted and deduplicated.
pub fn add(keys: &BTreeMap<String, KeyRecord>, request: KeyRequest) -> Result<EventData, KeyError> {
    validate_key_name(&request.name)?;
    let principal = request.principal.to_ascii_lowercase();
    validate_principal(&principal)?;
    let mut namespaces = request.namespaces;
    for namespace in &namespaces {
        validate_namespace(namespace)?;
    }
    if request.role == Role::Admin && !namespaces.is_empty() {
        return Err(KeyError::AdminWithNamespaces);
    }
    if request.role != Role::Admin && namespaces.is_empty() {
        namespaces.push(DEFAULT_NAMESPACE.to_string());
    }
    namespaces.sort();
    namespaces.dedup();
    if keys.contains_key(&request.name) {
        return Err(KeyError::NameTaken(request.name));
    }
    if let Some(holder) = keys.values().find(|k| k.principal == principal) {
        return Err(KeyError::PrincipalTaken(holder.name.clone()));
    }
    Ok(EventData::KeyAdded { name: request.name, principal, role: request.role, namespaces })
}

/// Revokes the key `name`: its `KeyRevoked`; its next request is refused.
pub fn revoke(keys: &BTreeMap<String, KeyRecord>, name: &str) -> Result<EventData, KeyError> {
    if !keys.contains_key(name) {
        return Err(KeyError::UnknownKey(name.to_string()));
    }
    Ok(EventData::KeyRevoked { name: name.to_string() })
}

/// Folds a key event into the projection's keys.
pub fn apply(keys: &mut BTreeMap<String, KeyRecord>, data: &EventData, at_ms: u64) {
    match data {
        EventData::KeyAdded { name, principal, role, namespaces } => {
            let record = KeyRecord {
                name: name.clone(),
                principal: principal.clone(),
                role: *role,
                namespaces: namespaces.clone(),
                added_at_ms: at_ms,
            };
            keys.insert(name.clone(), record);
        }
        EventData::KeyRevoked { name } => {
            keys.remove(name);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, key_byte: char, role: Role, namespaces: &[&str]) -> KeyRequest {
        KeyRequest {
            name: name.into(),
            principal: format!("ed25519:{}", key_byte.to_string().repeat(64)),
            role,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// Decides and applies, as the engine's batch does.
    fn added(keys: &mut BTreeMap<String, KeyRecord>, request: KeyRequest, at_ms: u64) -> Result<KeyRecord, KeyError> {
        let name = request.name.clone();
        let event = add(keys, request)?;
        apply(keys, &event, at_ms);
        Ok(keys[&name].clone())
    }

    #[test]
    fn an_added_key_is_kept_and_a_revoked_one_is_gone() {
        let mut keys = BTreeMap::new();
        let record = added(&mut keys, request("ci", 'a', Role::Operator, &["b", "a", "b"]), 1_000).unwrap();
        assert_eq!(record.namespaces, ["a", "b"]);
        assert_eq!(record.added_at_ms, 1_000);
        let event = revoke(&keys, "ci").unwrap();
        assert_eq!(event, EventData::KeyRevoked { name: "ci".into() });
        apply(&mut keys, &event, 2_000);
        assert!(keys.is_empty());
        // The name is free again.
        added(&mut keys, request("ci", 'b', Role::Viewer, &[]), 3_000).unwrap();
    }

    #[test]
    fn a_viewer_with_no_namespace_gets_default_and_an_admin_may_name_none() {
        let mut keys = BTreeMap::new();
        assert_eq!(added(&mut keys, request("v", 'a', Role::Viewer, &[]), 0).unwrap().namespaces, [DEFAULT_NAMESPACE]);
        assert_eq!(added(&mut keys, request("root", 'b', Role::Admin, &["a"]), 0), Err(KeyError::AdminWithNamespaces));
        assert!(added(&mut keys, request("root", 'b', Role::Admin, &[]), 0).unwrap().namespaces.is_empty());
    }

    #[test]
    fn names_and_public_keys_are_unique_and_bad_input_is_refused() {
        let mut keys = BTreeMap::new();
        added(&mut keys, request("ci", 'a', Role::Viewer, &["a"]), 0).unwrap();
        assert_eq!(add(&keys, request("ci", 'b', Role::Viewer, &["a"])), Err(KeyError::NameTaken("ci".into())));
        assert_eq!(add(&keys, request("ci2", 'a', Role::Viewer, &["a"])), Err(KeyError::PrincipalTaken("ci".into())));
        assert!(matches!(add(&keys, request("bad name", 'c', Role::Viewer, &[])), Err(KeyError::BadName(_))));
        assert!(matches!(add(&keys, request("x", 'z', Role::Viewer, &[])), Err(KeyError::BadPublicKey(_))));
        assert!(matches!(add(&keys, request("x", 'c', Role::Viewer, &["Team"])), Err(KeyError::BadNamespace(_))));
        assert_eq!(revoke(&keys, "nobody"), Err(KeyError::UnknownKey("nobody".into())));
    }
}
