//! Small records in a cell directory, written atomically: a reader sees the file absent or
//! complete, never torn, because it is written to a temporary name and renamed into place.
//!
//! There is deliberately no fsync. These records must survive a *supervisor* crash, and the page
//! cache does that. Durability across a power cut lives in the journal: once the supervisor has
//! journaled an exit, it is durable; a record lost to a power cut before that reads as absent, so
//! the cell is reported as "exit status unknown", never with a made-up code. Each fsync here would
//! sit on the restart path (exit → journal → next exec) for no gain in what is guaranteed.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Atomically replaces `dir/name` with `bytes`, readable by the owner only (0600): a cell's
/// `config.json` holds its environment, secrets included.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
    }
    std::fs::rename(&tmp, &dst)
}

pub(crate) fn write_json_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(dir, name, &bytes)
}

/// `Ok(None)` if the file does not exist; an error if it exists but cannot be read or parsed.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
