//! A workload's output as a stream: its rotated files oldest first, then the live file, and with
//! `follow` what is appended to it (across rotations) until the workload has ended. The control
//! plane serves its own node's logs this way, and an agent its cells' (sent up in chunks to the
//! control plane, which relays them: hosts need no open port).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::mpsc;

/// One chunk of output, or why the stream broke.
pub type Chunk = Result<Bytes, std::io::Error>;

/// At most this much is read (and sent) at once.
const MAX_CHUNK: u64 = 1 << 20;

/// Sends `dir`'s logs into `tx` until they are all sent (or, with `follow`, until `ended()` says
/// the workload is over and everything it wrote is sent), or until nobody listens.
pub async fn tail(dir: PathBuf, max_files: u32, follow: bool, ended: impl Fn() -> bool, tx: mpsc::Sender<Chunk>) {
    for n in (1..=max_files).rev() {
        if let Ok(bytes) = tokio::fs::read(dir.join(format!("output.log.{n}"))).await {
            if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                return;
            }
        }
    }
    let live = dir.join("output.log");
    let mut offset = 0u64;
    let mut inode = None;
    loop {
        let over = ended();
        if let Ok(meta) = tokio::fs::metadata(&live).await {
            use std::os::unix::fs::MetadataExt;
            if inode.is_some_and(|i| i != meta.ino()) || meta.len() < offset {
                offset = 0; // rotated: the new live file starts from its beginning
            }
            inode = Some(meta.ino());
            if meta.len() > offset {
                match read_from(&live, offset).await {
                    Ok(bytes) => {
                        offset += bytes.len() as u64;
                        if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        }
        if !follow || over {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut bytes = Vec::new();
    file.take(MAX_CHUNK).read_to_end(&mut bytes).await?;
    Ok(bytes)
}
