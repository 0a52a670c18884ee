//! API keys managed at runtime (`warden keys add|ls|revoke`): each is a journaled event, so a
//! key added or revoked takes effect on the next request and survives restarts, with no file
//! to edit. The decisions are pure: `add` and `revoke` check a request against the keys the
//! projection holds and record the one event it makes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::authz::{validate_namespace, BadNamespace, Principal, Role, DEFAULT_NAMESPACE};
use crate::batch::Batch;
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

/// Adds a key: checks `request` against the live keys and records `KeyAdded`. A viewer or
/// operator named with no namespace gets `default`; namespaces are sorted and deduplicated.
pub fn add(batch: &mut Batch, request: KeyRequest) -> Result<KeyRecord, KeyError> {
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
    let keys = &batch.live().keys;
    if keys.contains_key(&request.name) {
        return Err(KeyError::NameTaken(request.name));
    }
    if let Some(holder) = keys.values().find(|k| k.principal == principal) {
        return Err(KeyError::PrincipalTaken(holder.name.clone()));
    }
    batch.record(EventData::KeyAdded { name: request.name.clone(), principal, role: request.role, namespaces });
    Ok(batch.live().keys[&request.name].clone())
}

/// Revokes the key `name`: records `KeyRevoked`; its next request is refused.
pub fn revoke(batch: &mut Batch, name: &str) -> Result<(), KeyError> {
    if !batch.live().keys.contains_key(name) {
        return Err(KeyError::UnknownKey(name.to_string()));
    }
    batch.record(EventData::KeyRevoked { name: name.to_string() });
    Ok(())
}

/// Folds a key event into the projection's keys.
pub(crate) fn apply(keys: &mut BTreeMap<String, KeyRecord>, data: &EventData, at_ms: u64) {
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
    use crate::Projection;

    fn request(name: &str, key_byte: char, role: Role, namespaces: &[&str]) -> KeyRequest {
        KeyRequest {
            name: name.into(),
            principal: format!("ed25519:{}", key_byte.to_string().repeat(64)),
            role,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn an_added_key_is_in_the_projection_and_a_revoked_one_is_gone_after_replay_too() {
        let mut live = Projection::default();
        let mut batch = Batch::new(&mut live, 1_000);
        let record = add(&mut batch, request("ci", 'a', Role::Operator, &["b", "a", "b"])).unwrap();
        assert_eq!(record.namespaces, ["a", "b"]);
        assert_eq!(record.added_at_ms, 1_000);
        let events = batch.events.clone();
        let mut replayed = Projection::default();
        for event in &events {
            replayed.apply_data(event, 1_000);
        }
        assert_eq!(replayed.keys, live.keys);

        let mut batch = Batch::new(&mut live, 2_000);
        revoke(&mut batch, "ci").unwrap();
        assert_eq!(batch.events, [EventData::KeyRevoked { name: "ci".into() }]);
        assert!(live.keys.is_empty());
    }

    #[test]
    fn a_viewer_with_no_namespace_gets_default_and_an_admin_may_name_none() {
        let mut live = Projection::default();
        let mut batch = Batch::new(&mut live, 0);
        assert_eq!(add(&mut batch, request("v", 'a', Role::Viewer, &[])).unwrap().namespaces, [DEFAULT_NAMESPACE]);
        assert_eq!(add(&mut batch, request("root", 'b', Role::Admin, &["a"])), Err(KeyError::AdminWithNamespaces));
        assert!(add(&mut batch, request("root", 'b', Role::Admin, &[])).unwrap().namespaces.is_empty());
    }

    #[test]
    fn names_and_public_keys_are_unique_and_bad_input_records_nothing() {
        let mut live = Projection::default();
        let mut batch = Batch::new(&mut live, 0);
        add(&mut batch, request("ci", 'a', Role::Viewer, &["a"])).unwrap();
        assert_eq!(add(&mut batch, request("ci", 'b', Role::Viewer, &["a"])), Err(KeyError::NameTaken("ci".into())));
        assert_eq!(add(&mut batch, request("ci2", 'a', Role::Viewer, &["a"])), Err(KeyError::PrincipalTaken("ci".into())));
        assert!(matches!(add(&mut batch, request("bad name", 'c', Role::Viewer, &[])), Err(KeyError::BadName(_))));
        assert!(matches!(add(&mut batch, request("x", 'z', Role::Viewer, &[])), Err(KeyError::BadPublicKey(_))));
        assert!(matches!(add(&mut batch, request("x", 'c', Role::Viewer, &["Team"])), Err(KeyError::BadNamespace(_))));
        assert_eq!(revoke(&mut batch, "nobody"), Err(KeyError::UnknownKey("nobody".into())));
        assert_eq!(batch.events.len(), 1);
    }
}
