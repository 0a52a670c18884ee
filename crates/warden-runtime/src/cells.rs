//! From the core's specs to the cell layer's configs, and from the cell layer's exit records back
//! to the core's `CellExit`, and waiting for a cell's end: what the local engine and remote agents share.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::cell_user::CellUserError;
use warden_cell::{CellConfig, CellIsolation, CellState, ExitStatus, ProcessBackend, StartedCell, TerminalState};
use warden_core::spec::{CellSpec, LogSpec};
use warden_core::{CellExit, LifecycleTerminalState};

/// The shim's config for one cell of a workload, with its output in
/// `<logs_dir>/<workload_id>/output.log` and its user resolved on this host (which fails the
/// start when it cannot be). No binds, no fence: callers add those.
pub fn cell_config(
    workload_id: &str,
    cell_id: &str,
    cell: &CellSpec,
    logs: &LogSpec,
    logs_dir: &Path,
) -> Result<CellConfig, CellUserError> {
    let user = crate::cell_user::resolve(cell.user.as_ref())?;
    Ok(CellConfig {
        cell_id: cell_id.to_string(),
        workload_id: workload_id.to_string(),
        argv: cell.argv.clone(),
        env: cell.env.clone(),
        workdir: cell.workdir.as_ref().map(PathBuf::from),
        log_path: logs_dir.join(workload_id).join("output.log"),
        log_max_size_bytes: logs.max_size_bytes,
        log_max_files: logs.max_files,
        isolation: cell_isolation(cell),
        limits: warden_cell::CellLimits {
            memory_max_bytes: cell.limits.memory_max_bytes,
            cpu_max_millicores: cell.limits.cpu_max_millicores,
            pids_max: cell.limits.pids_max,
        },
        binds: Vec::new(),
        fence: None,
        user: Some(user),
    })
}

fn cell_isolation(cell: &CellSpec) -> CellIsolation {
    use warden_core::spec::{Isolation, Network, OciRuntime};
    let network_none = cell.network == Network::None;
    match cell.isolation {
        Isolation::Process => CellIsolation::Process,
        Isolation::Cell => CellIsolation::Cell { network_none },
        Isolation::Oci => CellIsolation::Oci {
            rootfs: PathBuf::from(cell.rootfs.as_deref().unwrap_or("/")),
            runtime: match cell.oci_runtime {
                Some(OciRuntime::Crun) => warden_cell::OciRuntime::Crun,
                Some(OciRuntime::Runc) | None => warden_cell::OciRuntime::Runc,
            },
            network_none,
        },
    }
}

/// What the shim recorded, as the core's `CellExit`. A `Forced` end carries no exit code or
/// signal (invariant 6), and an OOM kill says so in the reason.
pub fn cell_exit(status: &ExitStatus) -> CellExit {
    let terminal_state = status.terminal_state.map(|state| match state {
        TerminalState::Clean => LifecycleTerminalState::Clean,
        TerminalState::Forced => LifecycleTerminalState::Forced,
    });
    if terminal_state == Some(LifecycleTerminalState::Forced) {
        let detail = status.detail.as_deref().unwrap_or("no authenticated exit report; the cell was torn down");
        let reason =
            if status.oom_killed { format!("oom: memory limit exceeded; {detail}") } else { format!("forced: {detail}") };
        return CellExit { exit_code: None, signal: None, reason, terminal_state };
    }
    let mut exit = CellExit::from_status(status.exit_code, status.signal);
    exit.terminal_state = terminal_state;
    if status.oom_killed {
        exit.reason = format!("oom: memory limit exceeded ({})", exit.reason);
    } else if status.fenced {
        // The shim killed it because its lease ran out: say so, not just "killed by SIGKILL".
        exit.reason = match &status.detail {
            Some(detail) => format!("{detail} ({})", exit.reason),
            None => format!("fenced: lease expired ({})", exit.reason),
        };
    }
    exit
}

pub fn lost_exit(reason: &str) -> CellExit {
    CellExit { exit_code: None, signal: None, reason: reason.to_string(), terminal_state: None }
}

/// Waits for a cell's shim to exit (its pidfd turns readable), then collects how the cell ended.
pub async fn wait_exit(backend: Arc<ProcessBackend>, cell_id: &str, started: StartedCell) -> CellExit {
    match backend.exit_fd(cell_id, &started) {
        Ok(fd) => {
            if let Err(e) = crate::sys::wait_readable(fd).await {
                tracing::warn!(%cell_id, "cannot watch the cell: {e}");
            }
        }
        // `exit_fd` returns an already-readable fd when the shim is gone, so this is a real failure.
        Err(e) => tracing::warn!(%cell_id, "cannot watch the cell; collecting its exit now: {e}"),
    }
    let id = cell_id.to_string();
    match tokio::task::spawn_blocking(move || backend.collect_exit(&id, &started)).await {
        Ok(CellState::Exited(status)) => cell_exit(&status),
        Ok(CellState::Lost { reason }) => lost_exit(&reason),
        Ok(CellState::Running(_)) | Ok(CellState::NotStarted) => lost_exit("the cell's shim ended without an exit record"),
        Err(e) => lost_exit(&format!("exit collection failed: {e}")),
    }
}
