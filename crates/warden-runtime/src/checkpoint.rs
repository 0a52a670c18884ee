//! Checkpoints of `[replication] mode = "checkpointed"` workloads: the pieces shared by the
//! control plane and the agent.
//!
//! ```text
//! agent:  tar(state_dir) ─▶ XChaCha20-Poly1305(key, nonce, aad = workload_id) ─▶ nonce ‖ ciphertext
//!         ─▶ PUT /v1/blobs/<sha256 of that> ─▶ report `checkpointed` (state_uri = blob:sha256:<hex>)
//! server: blob = an artifact `sha256:<hex>` in the journal's store (verified on every read);
//!         `workload.checkpointed` journals the state_uri; every Start carries it as `restore`
//! agent:  GET /v1/blobs/<hex> ─▶ check sha256 ─▶ decrypt ─▶ untar into the emptied state_dir
//! ```
//!
//! **The key.** 32 random bytes per workload, created by the control plane when a checkpointed
//! workload is submitted and kept in `<data-dir>/keys/<workload-id>` (mode 0600, written durably
//! before the submission is journaled). It is never in an event: events are replicated and
//! exported; blobs are only ciphertext. The key travels to the agent in the `Start` command
//! (signed HTTP, not encrypted: like everything else the agent protocol carries, it relies on
//! the network between control plane and hosts being private) and is kept in the cell dir
//! (`checkpoint.json`, 0600) so a restarted agent keeps checkpointing the cells it re-adopts.
//! The associated data is the workload id, so a blob of one workload cannot be restored into
//! another, even by a control plane that mixed up `state_uri`s.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use warden_core::canonical::sha256_hex;

/// The largest blob the control plane takes (and so the largest checkpoint, after tar and
/// encryption).
pub const MAX_BLOB_BYTES: usize = 256 << 20;

const NONCE_LEN: usize = 24;

/// `blob:sha256:<hex>`: how a `state_uri` names a blob in the control plane's store.
pub fn state_uri(hex: &str) -> String {
    format!("blob:sha256:{hex}")
}

pub use warden_core::cluster::blob_hex;

/// 64 lowercase hex digits.
pub fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `nonce ‖ ciphertext+tag` of `plaintext` under `key`, bound to `workload_id`.
pub fn seal(key: &[u8; 32], workload_id: &str, plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let nonce: [u8; NONCE_LEN] = rand::random();
    let ciphertext = cipher
        .encrypt(&nonce.into(), Payload { msg: plaintext, aad: workload_id.as_bytes() })
        .expect("XChaCha20-Poly1305 takes any message below 256 GiB");
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// The plaintext of a [`seal`]ed blob, or why it cannot be had (wrong key, another workload's
/// blob, damaged bytes).
pub fn open(key: &[u8; 32], workload_id: &str, blob: &[u8]) -> Result<Vec<u8>, CheckpointError> {
    if blob.len() < NONCE_LEN + 16 {
        return Err(CheckpointError::TooShort { bytes: blob.len() });
    }
    let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    XChaCha20Poly1305::new(&(*key).into())
        .decrypt(&nonce.into(), Payload { msg: ciphertext, aad: workload_id.as_bytes() })
        .map_err(|_| CheckpointError::Undecryptable { workload_id: workload_id.to_string() })
}

/// The key as hex (how the `Start` command carries it) → bytes.
pub fn parse_key(hex_key: &str) -> Result<[u8; 32], CheckpointError> {
    hex::decode(hex_key).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()).ok_or(CheckpointError::BadKey)
}

/// Why a checkpoint could not be opened or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint key is not 32 bytes of hex")]
    BadKey,
    #[error("checkpoint blob is too short ({bytes} bytes)")]
    TooShort { bytes: usize },
    #[error("checkpoint blob does not decrypt for workload {workload_id}: wrong key, another workload's blob, or damaged")]
    Undecryptable { workload_id: String },
    #[error("checkpoint blob {hex} is corrupt: its bytes hash to {actual}")]
    Corrupt { hex: String, actual: String },
    #[error("cannot unpack the checkpoint into {}", dir.display())]
    Unpack {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A tar of everything under `dir` (paths relative to it; symlinks kept as links).
pub fn tar_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

/// Empties `dir` (creating it if needed) and unpacks `tar` into it. Entries that would land
/// outside `dir` (`..`, absolute paths) are refused by `tar` itself.
pub fn untar_into(dir: &Path, tar: &[u8]) -> std::io::Result<()> {
    empty_dir(dir)?;
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.unpack(dir)
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A checkpoint of `state_dir` ready to upload: the sealed bytes and their sha256 hex.
pub fn take(state_dir: &Path, key: &[u8; 32], workload_id: &str) -> std::io::Result<(Vec<u8>, String)> {
    std::fs::create_dir_all(state_dir)?;
    let tar = tar_dir(state_dir)?;
    let blob = seal(key, workload_id, &tar);
    if blob.len() > MAX_BLOB_BYTES {
        return Err(std::io::Error::other(format!(
            "checkpoint of {} is {} bytes, more than the blob store takes ({MAX_BLOB_BYTES})",
            state_dir.display(),
            blob.len()
        )));
    }
    let hex = sha256_hex(&blob);
    Ok((blob, hex))
}

/// Checks a downloaded blob against its name, decrypts it and unpacks it into `state_dir`.
pub fn restore(state_dir: &Path, key: &[u8; 32], workload_id: &str, hex: &str, blob: &[u8]) -> Result<(), CheckpointError> {
    let actual = sha256_hex(blob);
    if actual != hex {
        return Err(CheckpointError::Corrupt { hex: hex.to_string(), actual });
    }
    let tar = open(key, workload_id, blob)?;
    untar_into(state_dir, &tar).map_err(|source| CheckpointError::Unpack { dir: state_dir.to_path_buf(), source })
}

/// The control plane's keys: `<data-dir>/keys/<workload-id>`, 32 raw bytes, mode 0600.
#[derive(Clone, Debug)]
pub struct Keys {
    dir: PathBuf,
}

impl Keys {
    pub fn new(dir: PathBuf) -> Keys {
        Keys { dir }
    }

    /// The workload's key, created (durably: temp file, fsync, rename, fsync of the dir) if it
    /// has none yet.
    pub fn load_or_create(&self, workload_id: &str) -> std::io::Result<[u8; 32]> {
        if workload_id.is_empty() || workload_id.contains('/') || workload_id.starts_with('.') {
            return Err(std::io::Error::other(format!("bad workload id {workload_id:?}")));
        }
        let path = self.dir.join(workload_id);
        match std::fs::read(&path) {
            Ok(bytes) => {
                return <[u8; 32]>::try_from(bytes)
                    .map_err(|_| std::io::Error::other(format!("{} is not a 32-byte key", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&self.dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        }
        let key: [u8; 32] = rand::random();
        let tmp = self.dir.join(format!(".{workload_id}.tmp"));
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(&key)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip() {
        let key: [u8; 32] = rand::random();
        let blob = seal(&key, "w-1", b"state");
        assert_eq!(open(&key, "w-1", &blob).unwrap(), b"state");
        // A fresh nonce every time: the same state is a new blob.
        assert_ne!(seal(&key, "w-1", b"state"), blob);
    }

    #[test]
    fn wrong_key_or_workload_or_damage_fails() {
        let key: [u8; 32] = rand::random();
        let blob = seal(&key, "w-1", b"state");
        let other: [u8; 32] = rand::random();
        assert!(open(&other, "w-1", &blob).unwrap_err().to_string().contains("does not decrypt"));
        assert!(open(&key, "w-2", &blob).unwrap_err().to_string().contains("does not decrypt"), "the workload id is the AAD");
        let mut flipped = blob.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open(&key, "w-1", &flipped).is_err());
        assert!(open(&key, "w-1", &blob[..10]).is_err());
    }

    #[test]
    fn a_dir_round_trips_and_replaces_what_was_there() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("counter"), "41").unwrap();
        std::fs::write(src.join("sub/x"), "y").unwrap();
        let key: [u8; 32] = rand::random();
        let (blob, hex) = take(&src, &key, "w-1").unwrap();
        let dst = tmp.path().join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(dst.join("stale"), "old").unwrap();
        restore(&dst, &key, "w-1", &hex, &blob).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("counter")).unwrap(), "41");
        assert_eq!(std::fs::read_to_string(dst.join("sub/x")).unwrap(), "y");
        assert!(!dst.join("stale").exists());
        let mut bad = blob.clone();
        bad[30] ^= 1;
        assert!(restore(&dst, &key, "w-1", &hex, &bad).unwrap_err().to_string().contains("corrupt"));
        assert_eq!(blob_hex(&state_uri(&hex)), Some(hex.as_str()));
    }

    #[test]
    fn keys_are_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let keys = Keys::new(tmp.path().join("keys"));
        let key = keys.load_or_create("w-1").unwrap();
        assert_eq!(keys.load_or_create("w-1").unwrap(), key);
        assert_ne!(keys.load_or_create("w-2").unwrap(), key);
        let mode = std::fs::metadata(tmp.path().join("keys/w-1")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(keys.load_or_create("../x").is_err());
    }
}
