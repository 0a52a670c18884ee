//! Secrets (`warden secret put|ls|rm`): named values in a namespace that a spec's `env` refers
//! to (`{ secret = "db-password" }`). The core never sees a value: the runtime seals it with the
//! control plane's key before a put reaches the engine, and the journal, the projection and every
//! answer hold only the sealed bytes and who put which version when. Decisions are pure: `put`
//! and `remove` check a request against the projection's secrets and return the one event it
//! makes; `apply` folds it in; `first_missing` says which variable of a spec names a secret that
//! does not exist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::EventData;
use crate::spec::CellSpec;

/// The largest value a secret may hold.
pub const MAX_SECRET_BYTES: usize = 64 << 10;

/// A secret as journaled: its version (1 for the first put, one more for each put after), the
/// value sealed by the control plane (base64 of nonce ‖ ciphertext; the associated data binds
/// namespace, name and version), and who put it when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub version: u64,
    pub sealed: String,
    pub put_at_ms: u64,
    pub put_by: String,
}

/// Live secrets: namespace → name → record. Removed ones are gone.
pub type Secrets = BTreeMap<String, BTreeMap<String, SecretRecord>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret name {0:?} is not valid: {rule}", rule = crate::spec::SECRET_NAME_RULE)]
    BadName(String),
    #[error("secret {name:?} in namespace {namespace:?} changed meanwhile (now version {current}); put it again")]
    Conflict { namespace: String, name: String, current: u64 },
    #[error("no secret {name:?} in namespace {namespace:?}")]
    Unknown { namespace: String, name: String },
}

/// `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn validate_secret_name(name: &str) -> Result<(), SecretError> {
    crate::spec::is_secret_name(name).then_some(()).ok_or_else(|| SecretError::BadName(name.to_string()))
}

/// The version a secret has now (0: none).
pub fn current_version(secrets: &Secrets, namespace: &str, name: &str) -> u64 {
    secrets.get(namespace).and_then(|names| names.get(name)).map_or(0, |record| record.version)
}

/// A put of `version`, sealed for that version by the runtime: it must be the one after the
/// current version (a put that raced another is refused; the caller seals again).
pub fn put(
    secrets: &Secrets,
    namespace: &str,
    name: &str,
    version: u64,
    sealed: String,
    put_by: &str,
) -> Result<EventData, SecretError> {
    validate_secret_name(name)?;
    let current = current_version(secrets, namespace, name);
    if version != current + 1 {
        return Err(SecretError::Conflict { namespace: namespace.into(), name: name.into(), current });
    }
    Ok(EventData::SecretPut { namespace: namespace.into(), name: name.into(), version, sealed, put_by: put_by.into() })
}

/// Removes a secret: cells that refer to it fail their next start.
pub fn remove(secrets: &Secrets, namespace: &str, name: &str, removed_by: &str) -> Result<EventData, SecretError> {
    if current_version(secrets, namespace, name) == 0 {
        return Err(SecretError::Unknown { namespace: namespace.into(), name: name.into() });
    }
    Ok(EventData::SecretRemoved { namespace: namespace.into(), name: name.into(), removed_by: removed_by.into() })
}

/// Folds a secret event into the projection's secrets.
pub fn apply(secrets: &mut Secrets, data: &EventData, at_ms: u64) {
    match data {
        EventData::SecretPut { namespace, name, version, sealed, put_by } => {
            let record = SecretRecord { version: *version, sealed: sealed.clone(), put_at_ms: at_ms, put_by: put_by.clone() };
            secrets.entry(namespace.clone()).or_default().insert(name.clone(), record);
        }
        EventData::SecretRemoved { namespace, name, .. } => {
            if let Some(names) = secrets.get_mut(namespace) {
                names.remove(name);
                if names.is_empty() {
                    secrets.remove(namespace);
                }
            }
        }
        _ => {}
    }
}

/// The first variable of `cell` whose secret does not exist in `namespace`: (variable, secret).
pub fn first_missing<'a>(secrets: &Secrets, namespace: &str, cell: &'a CellSpec) -> Option<(&'a str, &'a str)> {
    cell.secret_env
        .iter()
        .find(|(_, secret)| current_version(secrets, namespace, secret) == 0)
        .map(|(variable, secret)| (variable.as_str(), secret.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_applied(secrets: &mut Secrets, name: &str, version: u64, at_ms: u64) -> Result<(), SecretError> {
        let event = put(secrets, "team", name, version, format!("sealed-{version}"), "ci")?;
        apply(secrets, &event, at_ms);
        Ok(())
    }

    #[test]
    fn versions_count_up_and_a_racing_put_is_refused() {
        let mut secrets = Secrets::new();
        put_applied(&mut secrets, "db-password", 1, 10).unwrap();
        put_applied(&mut secrets, "db-password", 2, 20).unwrap();
        let record = &secrets["team"]["db-password"];
        assert_eq!((record.version, record.sealed.as_str(), record.put_at_ms, record.put_by.as_str()), (2, "sealed-2", 20, "ci"));
        assert_eq!(
            put_applied(&mut secrets, "db-password", 2, 30),
            Err(SecretError::Conflict { namespace: "team".into(), name: "db-password".into(), current: 2 })
        );
        assert_eq!(current_version(&secrets, "other", "db-password"), 0, "a secret lives in its namespace only");
    }

    #[test]
    fn a_removed_secret_is_gone_and_unknown_ones_cannot_be_removed() {
        let mut secrets = Secrets::new();
        put_applied(&mut secrets, "token", 1, 10).unwrap();
        let removed = remove(&secrets, "team", "token", "ci").unwrap();
        apply(&mut secrets, &removed, 20);
        assert!(secrets.is_empty());
        assert_eq!(
            remove(&secrets, "team", "token", "ci"),
            Err(SecretError::Unknown { namespace: "team".into(), name: "token".into() })
        );
    }

    #[test]
    fn secret_names_are_lowercase_dns_like() {
        for good in ["a", "db-password", "0.x_y", &"a".repeat(63)] {
            assert_eq!(validate_secret_name(good), Ok(()), "{good}");
        }
        for bad in ["", "-a", ".a", "A", "db password", "db/x", &"a".repeat(64)] {
            assert!(validate_secret_name(bad).is_err(), "{bad}");
        }
    }
}
