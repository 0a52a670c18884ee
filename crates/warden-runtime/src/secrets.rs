//! Secrets' values on the control plane: its key (`<data-dir>/secrets.key`), sealing a value
//! before a put reaches the engine, and opening it again when a cell that refers to it starts.
//!
//! ```text
//! PUT /v1/secrets/ns/name ─▶ XChaCha20-Poly1305(secrets.key, nonce,
//!                              aad = "warden-secret/v1\n<ns>\n<name>\n<version>") ─▶ base64(nonce ‖ ciphertext)
//!                         ─▶ `secret.put` {namespace, name, version, sealed} in the journal
//! a cell starts           ─▶ the spec's `secret_env` (variable → name) resolved against the
//!                              projection's sealed values, opened here, added to that cell's env
//! ```
//!
//! **The key** is 32 random bytes, created (durably, mode 0600) by the first put and read by
//! the control plane alone: agents never hold it; a host receives only the opened values of the
//! cells placed on it, in their `Start` command. The associated data binds namespace, name and
//! version, so a sealed value cannot be replayed under another name or namespace. Nothing here
//! logs or formats a value: errors name the variable, the secret and the namespace only.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use warden_core::secrets::{Secrets, MAX_SECRET_BYTES};
use warden_core::spec::CellSpec;

const NONCE_LEN: usize = 24;

/// The control plane's secrets key, read (or created) at first need and then kept in memory.
#[derive(Debug)]
pub struct SecretKey {
    path: PathBuf,
    key: Mutex<Option<[u8; 32]>>,
}

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("cannot read or create the secrets key {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secrets key {} is not 32 bytes", path.display())]
    BadKey { path: PathBuf },
    #[error("there is no secrets key at {} (was the data dir restored without it?)", path.display())]
    Missing { path: PathBuf },
    #[error("secret {name:?} version {version} in namespace {namespace:?} does not open with this control plane's secrets key")]
    Undecryptable { namespace: String, name: String, version: u64 },
}

/// Why the secrets of a cell could not be resolved: its start fails with this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("env {variable}: secret {name:?} does not exist in namespace {namespace:?} (removed?); put it with `warden secret put {name} --namespace {namespace}`")]
    Missing { variable: String, name: String, namespace: String },
    #[error("env {variable}: secret {name:?} is not valid UTF-8 without NUL bytes")]
    NotText { variable: String, name: String },
    #[error("env {variable}: secret {name:?} cannot be opened")]
    Key {
        variable: String,
        name: String,
        #[source]
        source: SecretKeyError,
    },
}

/// Why a value cannot be a secret (checked before it is sealed).
#[derive(Debug, thiserror::Error)]
pub enum BadValue {
    #[error("a secret's value is at most {MAX_SECRET_BYTES} bytes, got {0}")]
    TooLarge(usize),
    #[error("a secret's value becomes an environment variable: it must be UTF-8 text without NUL bytes")]
    NotText,
}

/// A value a cell's environment can carry.
pub fn check_value(value: &[u8]) -> Result<(), BadValue> {
    if value.len() > MAX_SECRET_BYTES {
        return Err(BadValue::TooLarge(value.len()));
    }
    match std::str::from_utf8(value) {
        Ok(text) if !text.contains('\0') => Ok(()),
        _ => Err(BadValue::NotText),
    }
}

fn associated_data(namespace: &str, name: &str, version: u64) -> Vec<u8> {
    format!("warden-secret/v1\n{namespace}\n{name}\n{version}").into_bytes()
}

impl SecretKey {
    pub fn new(path: PathBuf) -> SecretKey {
        SecretKey { path, key: Mutex::new(None) }
    }

    /// The key; created first if `create` and there is none (temp file, fsync, rename, fsync of
    /// the dir: a put is journaled only after its key is durable).
    fn key(&self, create: bool) -> Result<[u8; 32], SecretKeyError> {
        let mut cached = self.key.lock().expect("secrets key lock");
        if let Some(key) = *cached {
            return Ok(key);
        }
        let io = |source| SecretKeyError::Io { path: self.path.clone(), source };
        let key = match std::fs::read(&self.path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes).map_err(|_| SecretKeyError::BadKey { path: self.path.clone() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key: [u8; 32] = rand::random();
                let tmp = self.path.with_extension("key.tmp");
                let mut file =
                    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
                file.write_all(&key).map_err(io)?;
                file.sync_all().map_err(io)?;
                std::fs::rename(&tmp, &self.path).map_err(io)?;
                if let Some(dir) = self.path.parent() {
                    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                }
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretKeyError::Missing { path: self.path.clone() })
            }
            Err(e) => return Err(io(e)),
        };
        *cached = Some(key);
        Ok(key)
    }

    /// `value` sealed as version `version` of `namespace`/`name`: base64 of nonce ‖ ciphertext.
    pub fn seal(&self, namespace: &str, name: &str, version: u64, value: &[u8]) -> Result<String, SecretKeyError> {
        let key = self.key(true)?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = associated_data(namespace, name, version);
        let ciphertext = XChaCha20Poly1305::new(&key.into())
            .encrypt(&nonce.into(), Payload { msg: value, aad: &aad })
            .expect("XChaCha20-Poly1305 takes any message below 256 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// The value a [`seal`](Self::seal) sealed for exactly this namespace, name and version.
    pub fn open(&self, namespace: &str, name: &str, version: u64, sealed: &str) -> Result<Vec<u8>, SecretKeyError> {
        let key = self.key(false)?;
        let undecryptable =
            || SecretKeyError::Undecryptable { namespace: namespace.to_string(), name: name.to_string(), version };
        let bytes = base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|_| undecryptable())?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(undecryptable());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        let aad = associated_data(namespace, name, version);
        XChaCha20Poly1305::new(&key.into())
            .decrypt(&nonce.into(), Payload { msg: ciphertext, aad: &aad })
            .map_err(|_| undecryptable())
    }

    /// The environment `cell`'s secret references stand for, in `namespace`: variable → value.
    /// Called only when a cell starts, for that cell alone.
    pub fn resolve(&self, secrets: &Secrets, namespace: &str, cell: &CellSpec) -> Result<BTreeMap<String, String>, ResolveError> {
        let mut env = BTreeMap::new();
        for (variable, name) in &cell.secret_env {
            let Some(record) = secrets.get(namespace).and_then(|names| names.get(name)) else {
                return Err(ResolveError::Missing {
                    variable: variable.clone(),
                    name: name.clone(),
                    namespace: namespace.to_string(),
                });
            };
            let value = self.open(namespace, name, record.version, &record.sealed).map_err(|source| ResolveError::Key {
                variable: variable.clone(),
                name: name.clone(),
                source,
            })?;
            let text = String::from_utf8(value)
                .ok()
                .filter(|text| !text.contains('\0'))
                .ok_or_else(|| ResolveError::NotText { variable: variable.clone(), name: name.clone() })?;
            env.insert(variable.clone(), text);
        }
        Ok(env)
    }
}

/// A refusal (400) if `cell` refers to a secret that does not exist in `namespace`, naming the
/// variable (`prefix` says where it sits: `cell.` in a spec) and the secret.
pub fn missing_secret(
    live: &warden_core::Projection,
    namespace: &str,
    cell: &warden_core::spec::CellSpec,
    prefix: &str,
) -> Option<crate::error::ApiError> {
    let (variable, name) = warden_core::secrets::first_missing(&live.secrets, namespace, cell)?;
    Some(crate::error::ApiError::BadRequest(format!(
        "{prefix}env.{variable} refers to secret {name:?}, which does not exist in namespace {namespace:?}: \
         put it first (`warden secret put {name} --namespace {namespace}`)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::secrets::SecretRecord;

    fn cell_with(secret_env: &[(&str, &str)]) -> CellSpec {
        let spec = warden_core::Spec::parse("s.toml", "name='s'\n[cell]\nargv=['true']\n").unwrap();
        let mut cell = spec.cell;
        cell.secret_env = secret_env.iter().map(|(v, n)| (v.to_string(), n.to_string())).collect();
        cell
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_own_namespace_name_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::new(dir.path().join("secrets.key"));
        let sealed = key.seal("team", "db-password", 1, b"hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open("team", "db-password", 1, &sealed).unwrap(), b"hunter2");
        for (namespace, name, version) in [("other", "db-password", 1), ("team", "api-token", 1), ("team", "db-password", 2)] {
            assert!(key.open(namespace, name, version, &sealed).is_err(), "{namespace}/{name}/{version}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secrets.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another control plane's key (a new data dir) opens nothing.
        let other = SecretKey::new(dir.path().join("other.key"));
        other.seal("x", "y", 1, b"z").unwrap();
        assert!(other.open("team", "db-password", 1, &sealed).is_err());
    }

    #[test]
    fn resolving_names_the_variable_and_secret_never_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::new(dir.path().join("secrets.key"));
        let mut secrets = Secrets::new();
        let record = SecretRecord {
            version: 3,
            sealed: key.seal("team", "db-password", 3, b"s3cret-value").unwrap(),
            put_at_ms: 0,
            put_by: "ci".into(),
        };
        secrets.entry("team".into()).or_default().insert("db-password".into(), record);
        let env = key.resolve(&secrets, "team", &cell_with(&[("DB_PASSWORD", "db-password")])).unwrap();
        assert_eq!(env, BTreeMap::from([("DB_PASSWORD".to_string(), "s3cret-value".to_string())]));
        let missing = key.resolve(&secrets, "other", &cell_with(&[("DB_PASSWORD", "db-password")])).unwrap_err();
        let message = crate::error::error_chain(&missing);
        assert!(
            message.starts_with("env DB_PASSWORD: secret \"db-password\" does not exist in namespace \"other\""),
            "{message}"
        );
        // A key that cannot open it (a data dir restored without secrets.key) says so, by name.
        let fresh = SecretKey::new(dir.path().join("absent.key"));
        let error = crate::error::error_chain(&fresh.resolve(&secrets, "team", &cell_with(&[("P", "db-password")])).unwrap_err());
        assert!(error.contains("secret \"db-password\" cannot be opened") && !error.contains("s3cret"), "{error}");
    }

    #[test]
    fn values_are_text_of_at_most_64_kib() {
        assert!(check_value(b"ok").is_ok());
        assert!(matches!(check_value(&vec![b'a'; MAX_SECRET_BYTES + 1]), Err(BadValue::TooLarge(_))));
        assert!(matches!(check_value(b"a\0b"), Err(BadValue::NotText)));
        assert!(matches!(check_value(&[0xff, 0xfe]), Err(BadValue::NotText)));
    }
}
