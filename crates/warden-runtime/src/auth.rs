//! Ed25519 identities and signed requests: who is calling, proven on every request.
//!
//! A caller signs `METHOD \n PATH?QUERY \n unix_ms \n nonce \n sha256(body)` with its key and sends
//! `Authorization: Warden-Ed25519 key=<hex>,ts=<unix_ms>,nonce=<hex>,sig=<hex>`. The server accepts
//! keys listed in `<data-dir>/authorized_keys` and timestamps within `MAX_CLOCK_SKEW_MS`, and
//! refuses a signature it has already seen in that window (the nonce keeps two identical requests
//! in the same millisecond apart). The caller's
//! public key (`ed25519:<hex>`) is its identity, and becomes the `owner` of what it submits.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use warden_core::canonical::sha256_hex;

pub const AUTH_SCHEME: &str = "Warden-Ed25519";
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// On a 401 for a request signed before the server started: the start, in unix ms.
pub const NOT_BEFORE_HEADER: &str = "x-warden-not-before";

/// A key pair as stored on disk (mode 0600).
#[derive(Serialize, Deserialize)]
struct IdentityFile {
    name: String,
    public_key: String,
    secret_key: String,
}

pub struct Identity {
    pub name: String,
    signing_key: SigningKey,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity {path}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write identity {path}")]
    Write { path: String, source: std::io::Error },
    #[error("identity file {path} is malformed: {reason}")]
    Malformed { path: String, reason: String },
}

impl Identity {
    pub fn generate(name: &str) -> Identity {
        Identity { name: name.to_string(), signing_key: SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    /// `ed25519:<hex public key>`: how this identity is named in `owner` fields.
    pub fn principal(&self) -> String {
        principal_of(&self.signing_key.verifying_key())
    }

    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let display = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|source| IdentityError::Read { path: display.clone(), source })?;
        let file: IdentityFile =
            serde_json::from_str(&text).map_err(|e| IdentityError::Malformed { path: display.clone(), reason: e.to_string() })?;
        let secret: [u8; 32] = hex::decode(&file.secret_key)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| IdentityError::Malformed { path: display, reason: "secret_key is not 32 hex bytes".into() })?;
        Ok(Identity { name: file.name, signing_key: SigningKey::from_bytes(&secret) })
    }

    /// Writes the key pair with mode 0600, creating parent directories (mode 0700).
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let display = path.display().to_string();
        let write_err = |source| IdentityError::Write { path: display.clone(), source };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(write_err)?;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
        self.save_in_place(path)
    }

    /// Writes the key pair with mode 0600 into an existing directory, leaving the directory's
    /// own mode alone (the data dir's is the operator's business).
    pub fn save_in_place(&self, path: &Path) -> Result<(), IdentityError> {
        let display = path.display().to_string();
        let write_err = |source| IdentityError::Write { path: display.clone(), source };
        let file = IdentityFile {
            name: self.name.clone(),
            public_key: hex::encode(self.signing_key.verifying_key().as_bytes()),
            secret_key: hex::encode(self.signing_key.to_bytes()),
        };
        let tmp = path.with_extension("tmp");
        let mut out = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(write_err)?;
        out.write_all(serde_json::to_string_pretty(&file).expect("serializes").as_bytes()).map_err(write_err)?;
        out.sync_all().map_err(write_err)?;
        fs::rename(&tmp, path).map_err(write_err)
    }

    /// Signs the journal's durable `head` as of `signed_at_ms` (`GET /v1/events/head`; what
    /// is signed: `warden_store::chain::head_message`).
    pub fn sign_chain_head(&self, head: &warden_store::Head, signed_at_ms: u64) -> warden_store::SignedHead {
        warden_store::SignedHead::sign(head, signed_at_ms, &self.signing_key)
    }

    /// The key itself, for what signs with it outside this module (`warden backup` signs the
    /// backup's head and trailer with the server key).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The `Authorization` header value for one request.
    pub fn authorization(&self, method: &str, path_and_query: &str, body: &[u8], now_ms: u64) -> String {
        let nonce = format!("{:016x}", rand::random::<u64>());
        let message = signed_message(method, path_and_query, now_ms, &nonce, body);
        let signature = self.signing_key.sign(message.as_bytes());
        format!(
            "{AUTH_SCHEME} key={},ts={now_ms},nonce={nonce},sig={}",
            hex::encode(self.signing_key.verifying_key().as_bytes()),
            hex::encode(signature.to_bytes())
        )
    }
}

pub fn principal_of(key: &VerifyingKey) -> String {
    format!("ed25519:{}", hex::encode(key.as_bytes()))
}

fn signed_message(method: &str, path_and_query: &str, ts_ms: u64, nonce: &str, body: &[u8]) -> String {
    format!("{method}\n{path_and_query}\n{ts_ms}\n{nonce}\n{}", sha256_hex(body))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing Authorization header; run `warden up` to create a local credential, or pass one")]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("request timestamp is {0} ms away from the server clock (max {MAX_CLOCK_SKEW_MS})")]
    Skew(u64),
    #[error("key {0} is not authorized on this server")]
    UnknownKey(String),
    #[error("bad signature")]
    BadSignature,
    #[error("this signed request was already used; sign each request afresh")]
    Replayed,
    /// The guard cannot tell a replay of a request signed before the server started from a
    /// fresh one: its memory of used signatures starts then.
    #[error(
        "request signed at {ts_ms} (unix ms), before this server started at {started_ms}: refused, as it could be a \
         replay; if your clock is behind the server's, sign again with the server's time"
    )]
    BeforeStart { ts_ms: u64, started_ms: u64 },
}

/// Signatures seen within the clock-skew window, so a captured request cannot be sent again.
///
/// It lives in memory, and survives a restart by refusing what it cannot remember: requests
/// signed before `not_before_ms` (the server's start). Persisting every signature instead
/// would cost a synced write per request (heartbeats included) and still lose the last ones
/// to a `kill -9`; the price of this way is that a client whose clock is behind the server's
/// is refused for that long after a restart, with an error saying so (`AuthError::BeforeStart`),
/// and the client re-signs once with the server's clock (`client::signed`).
#[derive(Default)]
pub struct ReplayGuard {
    seen: std::collections::HashMap<[u8; 64], u64>,
    /// Prune when `seen` grows past this (twice its size after the last prune).
    prune_at: usize,
    /// Requests signed before this are refused (0: none are).
    not_before_ms: u64,
}

impl ReplayGuard {
    /// A guard whose memory starts at `now_ms` (the server's start).
    pub fn started_at(now_ms: u64) -> ReplayGuard {
        ReplayGuard { not_before_ms: now_ms, ..ReplayGuard::default() }
    }

    /// Records a verified request's signature; false if it was already used.
    pub fn first_use(&mut self, signature: [u8; 64], ts_ms: u64, now_ms: u64) -> bool {
        // Pruned when it doubled since the last prune: amortized O(1) per request even when
        // every signature seen is still inside the window.
        if self.seen.len() > self.prune_at.max(4096) {
            self.seen.retain(|_, ts| now_ms.abs_diff(*ts) <= MAX_CLOCK_SKEW_MS);
            self.prune_at = self.seen.len().saturating_mul(2);
        }
        self.seen.insert(signature, ts_ms).is_none()
    }
}

/// The key a request claims to be signed with (not yet verified).
pub fn header_key(header: &str) -> Option<VerifyingKey> {
    let params = header.strip_prefix(AUTH_SCHEME)?.trim();
    let hex_key = params.split(',').find_map(|part| part.trim().strip_prefix("key="))?;
    let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// The key of an `ed25519:<hex>` principal.
pub fn parse_principal(principal: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(principal.strip_prefix("ed25519:")?).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// A new join token's id and secret (32 bytes from the OS, as hex); the token the holder is given
/// is `warden_core::cluster::format_join_token(id, secret)`. Only the secret's SHA-256 is ever
/// journaled.
pub fn generate_join_token() -> (String, String) {
    use rand::RngCore;
    let (mut id, mut secret) = ([0u8; 4], [0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    (hex::encode(id), hex::encode(secret))
}

/// Equality that takes as long whatever the first differing byte (for secrets like join tokens);
/// only the lengths are compared in variable time.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Checks one request's `Authorization` header and body; returns the caller's principal.
/// (The server does it in two steps, `Claim::parse` + `Claim::check` before it reads the
/// body and `Claim::verify` after, so an unauthenticated body is never read.)
pub fn verify_request(
    header: Option<&str>,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now_ms: u64,
    authorized: &[VerifyingKey],
    replays: &std::sync::Mutex<ReplayGuard>,
) -> Result<String, AuthError> {
    let claim = Claim::parse(header)?;
    let caller = claim.check(now_ms, authorized, replays)?;
    claim.verify(&caller, method, path_and_query, body, now_ms, replays)
}

/// What an `Authorization` header claims: a key, a time, a nonce and a signature, not yet
/// verified against the body.
pub struct Claim {
    key_bytes: [u8; 32],
    ts_ms: u64,
    nonce: String,
    sig_bytes: [u8; 64],
}

impl Claim {
    pub fn parse(header: Option<&str>) -> Result<Claim, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let params =
            header.strip_prefix(AUTH_SCHEME).map(str::trim).ok_or(AuthError::Malformed("expected the Warden-Ed25519 scheme"))?;
        let (mut key, mut ts, mut nonce, mut sig) = (None, None, None, None);
        for part in params.split(',') {
            match part.trim().split_once('=') {
                Some(("key", v)) => key = Some(v),
                Some(("ts", v)) => ts = Some(v),
                Some(("nonce", v)) => nonce = Some(v),
                Some(("sig", v)) => sig = Some(v),
                _ => return Err(AuthError::Malformed("expected key=…,ts=…,nonce=…,sig=…")),
            }
        }
        let nonce = nonce.ok_or(AuthError::Malformed("no nonce"))?.to_string();
        let key_bytes: [u8; 32] = hex::decode(key.ok_or(AuthError::Malformed("no key"))?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(AuthError::Malformed("key is not 32 hex bytes"))?;
        let ts_ms: u64 =
            ts.ok_or(AuthError::Malformed("no ts"))?.parse().map_err(|_| AuthError::Malformed("ts is not a number"))?;
        let sig_bytes: [u8; 64] = hex::decode(sig.ok_or(AuthError::Malformed("no sig"))?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(AuthError::Malformed("sig is not 64 hex bytes"))?;
        Ok(Claim { key_bytes, ts_ms, nonce, sig_bytes })
    }

    /// What can be checked without the body: the time is within the skew and not before the
    /// replay guard's memory starts, and the key is one of `authorized`. Returns that key.
    pub fn check(
        &self,
        now_ms: u64,
        authorized: &[VerifyingKey],
        replays: &std::sync::Mutex<ReplayGuard>,
    ) -> Result<VerifyingKey, AuthError> {
        let skew = now_ms.abs_diff(self.ts_ms);
        if skew > MAX_CLOCK_SKEW_MS {
            return Err(AuthError::Skew(skew));
        }
        let not_before_ms = replays.lock().expect("replay guard lock").not_before_ms;
        if self.ts_ms < not_before_ms {
            return Err(AuthError::BeforeStart { ts_ms: self.ts_ms, started_ms: not_before_ms });
        }
        authorized
            .iter()
            .find(|k| k.as_bytes() == &self.key_bytes)
            .copied()
            .ok_or_else(|| AuthError::UnknownKey(format!("ed25519:{}", hex::encode(self.key_bytes))))
    }

    /// The signature over the request with its body, by `caller` (from `check`), and its first
    /// use; returns the caller's principal.
    pub fn verify(
        &self,
        caller: &VerifyingKey,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_ms: u64,
        replays: &std::sync::Mutex<ReplayGuard>,
    ) -> Result<String, AuthError> {
        caller
            .verify(
                signed_message(method, path_and_query, self.ts_ms, &self.nonce, body).as_bytes(),
                &Signature::from_bytes(&self.sig_bytes),
            )
            .map_err(|_| AuthError::BadSignature)?;
        if !replays.lock().expect("replay guard lock").first_use(self.sig_bytes, self.ts_ms, now_ms) {
            return Err(AuthError::Replayed);
        }
        Ok(principal_of(caller))
    }
}

/// Reads `authorized_keys`: one `ed25519:<hex>` (optionally followed by a name) per line.
pub fn load_authorized_keys(path: &Path) -> std::io::Result<Vec<VerifyingKey>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|word| word.strip_prefix("ed25519:"))
        .filter_map(|hex_key| hex::decode(hex_key).ok()?.try_into().ok())
        .filter_map(|bytes: [u8; 32]| VerifyingKey::from_bytes(&bytes).ok())
        .collect())
}

/// The keys of `authorized_keys` with their names (`principal`, `name`; a line with no name is
/// named `authorized-key-N`, N its line number): every one of them is an admin (see
/// ARCHITECTURE.md, "Security model").
pub fn load_authorized_names(path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut named = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let Some(key) = words.next().and_then(parse_principal) else { continue };
        let name = words.next().map_or_else(|| format!("authorized-key-{}", n + 1), str::to_owned);
        named.push((principal_of(&key), name));
    }
    Ok(named)
}

/// Appends a principal to `authorized_keys` unless it is already there.
pub fn authorize_key(path: &Path, identity: &Identity) -> std::io::Result<()> {
    let principal = identity.principal();
    let existing = fs::read_to_string(path).unwrap_or_default();
    if existing.lines().any(|line| line.split_whitespace().next() == Some(principal.as_str())) {
        return Ok(());
    }
    let mut file = fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path)?;
    writeln!(file, "{principal} {}", identity.name)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_requests_verify_and_tampering_fails() {
        let id = Identity::generate("admin");
        let keys = vec![id.signing_key.verifying_key()];
        let guard = std::sync::Mutex::new(ReplayGuard::default());
        let header = id.authorization("POST", "/v1/workloads", b"{}", 1_000_000);
        assert_eq!(verify_request(Some(&header), "POST", "/v1/workloads", b"{}", 1_000_500, &keys, &guard), Ok(id.principal()));
        assert_eq!(
            verify_request(Some(&header), "POST", "/v1/workloads", b"{\"x\":1}", 1_000_500, &keys, &guard),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify_request(Some(&header), "DELETE", "/v1/workloads", b"{}", 1_000_500, &keys, &guard),
            Err(AuthError::BadSignature)
        );
        assert!(matches!(
            verify_request(Some(&header), "POST", "/v1/workloads", b"{}", 1_000_000 + MAX_CLOCK_SKEW_MS + 1, &keys, &guard),
            Err(AuthError::Skew(_))
        ));
        assert_eq!(verify_request(None, "GET", "/", b"", 0, &keys, &guard), Err(AuthError::Missing));
        // The same signed request a second time is refused.
        assert_eq!(
            verify_request(Some(&header), "POST", "/v1/workloads", b"{}", 1_000_500, &keys, &guard),
            Err(AuthError::Replayed)
        );
        let stranger = Identity::generate("stranger");
        let header = stranger.authorization("GET", "/v1/workloads", b"", 1_000_000);
        assert!(matches!(
            verify_request(Some(&header), "GET", "/v1/workloads", b"", 1_000_000, &keys, &guard),
            Err(AuthError::UnknownKey(_))
        ));
    }

    #[test]
    fn requests_signed_before_the_guard_started_are_refused() {
        let id = Identity::generate("admin");
        let keys = vec![id.signing_key.verifying_key()];
        let guard = std::sync::Mutex::new(ReplayGuard::started_at(1_000_000));
        let before = id.authorization("POST", "/v1/workloads", b"{}", 999_999);
        assert_eq!(
            verify_request(Some(&before), "POST", "/v1/workloads", b"{}", 1_000_100, &keys, &guard),
            Err(AuthError::BeforeStart { ts_ms: 999_999, started_ms: 1_000_000 })
        );
        let after = id.authorization("POST", "/v1/workloads", b"{}", 1_000_000);
        assert_eq!(verify_request(Some(&after), "POST", "/v1/workloads", b"{}", 1_000_100, &keys, &guard), Ok(id.principal()));
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"join-token", b"join-token"));
        assert!(!constant_time_eq(b"join-token", b"join-tokem"));
        assert!(!constant_time_eq(b"join-token", b"join-token-longer"));
        assert!(constant_time_eq(b"", b""));
    }
}
