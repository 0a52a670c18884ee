//! Checkpoints of this host's cells: restoring `state_dir` before a checkpointed cell starts,
//! the per-cell checkpoint task (every `interval_ms`, or at once on a `Checkpoint` command), and
//! the final checkpoint of an evicted primary. Sealing and blob ids are `crate::checkpoint`'s;
//! this is the agent's part: when, from where, to where, and the `checkpointed` report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::blobs;
use super::cell_files::read_checkpoint_plan;
use super::context::AgentContext;
use super::http::HttpError;
use crate::checkpoint;
use crate::error::error_chain;
use crate::proto::{CheckpointPlan, ReportEvent};

/// Why a checkpointed cell's `state_dir` could not be filled for its start.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    BadKey(checkpoint::CheckpointError),
    #[error("cannot create {}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{uri:?} is not a blob this agent can fetch")]
    NotABlob { uri: String },
    #[error("no control plane to fetch checkpoints from")]
    NoControlPlane,
    #[error("cannot fetch checkpoint {uri}")]
    Fetch {
        uri: String,
        #[source]
        source: HttpError,
    },
    #[error("restore task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The blob did not check out, decrypt or unpack.
    #[error(transparent)]
    Unpack(checkpoint::CheckpointError),
}

/// Why a checkpoint of a running cell was not taken.
#[derive(Debug, thiserror::Error)]
pub enum TakeCheckpointError {
    #[error(transparent)]
    BadKey(checkpoint::CheckpointError),
    #[error("no control plane to store checkpoints in")]
    NoControlPlane,
    #[error("checkpoint task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("cannot snapshot {state_dir}")]
    Snapshot {
        state_dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot upload the checkpoint")]
    Upload(#[source] HttpError),
}

/// Fills `state_dir` for a start: the checkpoint `plan.restore` names (the standby's copy if it
/// has one, else fetched; checked against its hash, decrypted, unpacked into the emptied dir),
/// or, with none, the dir as it is (created if missing). Any failure is the start's failure:
/// never a silently empty state.
pub(super) async fn restore(context: &AgentContext, workload_id: &str, plan: &CheckpointPlan) -> Result<(), RestoreError> {
    let key = checkpoint::parse_key(&plan.key_hex).map_err(RestoreError::BadKey)?;
    let dir = PathBuf::from(&plan.state_dir);
    let Some(uri) = &plan.restore else {
        return std::fs::create_dir_all(&dir).map_err(|source| RestoreError::CreateDir { dir, source });
    };
    let hex = checkpoint::blob_hex(uri).ok_or_else(|| RestoreError::NotABlob { uri: uri.clone() })?.to_string();
    if let Some(blob) = blobs::cached(&context.standby_dir(), workload_id, &hex) {
        match unpack(&dir, key, workload_id, &hex, blob).await {
            Ok(()) => return Ok(()),
            Err(RestoreError::Unpack(reason)) => {
                tracing::warn!("the standby's copy of checkpoint {uri} is unusable ({}); fetching it again", error_chain(&reason))
            }
            Err(e) => return Err(e),
        }
    }
    let (http, _) = context.control_plane().ok_or(RestoreError::NoControlPlane)?;
    let mut attempt = 0;
    let blob = loop {
        attempt += 1;
        match blobs::fetch(&http, &hex).await {
            Ok(blob) => break blob,
            Err(HttpError::Transport(e) | HttpError::Refused(e)) if attempt < 3 => {
                tracing::info!("fetching checkpoint {uri}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(source) => return Err(RestoreError::Fetch { uri: uri.clone(), source }),
        }
    };
    unpack(&dir, key, workload_id, &hex, blob).await
}

/// Checks, decrypts and unpacks `blob` into `dir` (blocking work, off the runtime's threads).
async fn unpack(dir: &std::path::Path, key: [u8; 32], workload_id: &str, hex: &str, blob: Vec<u8>) -> Result<(), RestoreError> {
    let (dir, workload_id, hex) = (dir.to_path_buf(), workload_id.to_string(), hex.to_string());
    tokio::task::spawn_blocking(move || checkpoint::restore(&dir, &key, &workload_id, &hex, &blob))
        .await
        .map_err(RestoreError::Task)?
        .map_err(RestoreError::Unpack)
}

/// Takes a checkpoint of a running cell every `interval_ms`, and whenever a `Checkpoint`
/// command asks (its entry's `checkpoint_now`), until the cell is no longer running here.
pub(super) fn start_checkpoints(context: &AgentContext, workload_id: String, cell_id: String, plan: CheckpointPlan) {
    let now = Arc::new(Notify::new());
    match context.cells().get_mut(&cell_id) {
        Some(entry) => entry.checkpoint_now = Some(now.clone()),
        None => return,
    }
    let context = context.clone();
    tokio::spawn(async move {
        let key = match checkpoint::parse_key(&plan.key_hex) {
            Ok(key) => key,
            Err(e) => return tracing::warn!(%cell_id, "no checkpoints: {e}"),
        };
        let interval = Duration::from_millis(plan.interval_ms.max(1_000));
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = now.notified() => {}
            }
            if !context.is_running(&cell_id) {
                return;
            }
            if let Err(e) = take(&context, &workload_id, &cell_id, &plan, &key).await {
                tracing::warn!(%cell_id, "checkpoint failed: {}", error_chain(&e));
            }
        }
    });
}

/// The last checkpoint of an evicted primary that has ended, if it is checkpointed: its state
/// URI, or `None` (with the reason logged) if none could be taken.
pub(super) async fn final_checkpoint(context: &AgentContext, workload_id: &str, cell_id: &str) -> Option<String> {
    let plan = read_checkpoint_plan(&context.backend().cell_dir(cell_id))?;
    let taken = match checkpoint::parse_key(&plan.key_hex) {
        Ok(key) => take(context, workload_id, cell_id, &plan, &key).await,
        Err(e) => Err(TakeCheckpointError::BadKey(e)),
    };
    match taken {
        Ok(uri) => Some(uri),
        Err(e) => {
            tracing::warn!(%cell_id, "no final checkpoint: {}", error_chain(&e));
            None
        }
    }
}

/// tar + encrypt `state_dir`, upload it as `/v1/blobs/<sha256>`, and report it (durably:
/// through the report queue, so the control plane journals it even across restarts). The
/// answer is the checkpoint's state URI.
async fn take(
    context: &AgentContext,
    workload_id: &str,
    cell_id: &str,
    plan: &CheckpointPlan,
    key: &[u8; 32],
) -> Result<String, TakeCheckpointError> {
    let (http, _) = context.control_plane().ok_or(TakeCheckpointError::NoControlPlane)?;
    let (dir, key_copy, id) = (PathBuf::from(&plan.state_dir), *key, workload_id.to_string());
    let (blob, hex) = tokio::task::spawn_blocking(move || checkpoint::take(&dir, &key_copy, &id))
        .await
        .map_err(TakeCheckpointError::Task)?
        .map_err(|source| TakeCheckpointError::Snapshot { state_dir: plan.state_dir.clone(), source })?;
    blobs::upload(&http, &hex, &blob).await.map_err(TakeCheckpointError::Upload)?;
    let state_uri = checkpoint::state_uri(&hex);
    let event = ReportEvent::Checkpointed { state_uri: state_uri.clone(), size_bytes: blob.len() as u64 };
    tracing::debug!(%cell_id, "checkpoint {hex} ({} bytes)", blob.len());
    context.report(workload_id.to_string(), cell_id.to_string(), event).await;
    Ok(state_uri)
}
