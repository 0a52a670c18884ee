//! Cells on the control plane's own node (`warden up`): started, watched and signalled through
//! the cell backend, and re-adopted after a restart. Whatever happens to a cell comes back to the
//! engine as a `Command::Cell` input.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use warden_cell::{BindMount, CellState, ProcessBackend, StartedCell};
use warden_core::cluster::ClusterState;
use warden_core::workload::{Effect, Input, StopSignal};
use warden_core::{Phase, Projection};
use warden_store::Store;

use super::command::Command;
use super::jobs::{Jobs, StepContext};
use crate::cells::{cell_config, cell_exit, lost_exit, wait_exit};
use crate::error::error_chain;

/// What `recover_cells` found.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecoverySummary {
    pub adopted: usize,
    pub exited_while_down: usize,
    pub lost: usize,
    pub started_again: usize,
    /// Cells running under `cells/` that no workload in the journal names (see
    /// `LocalCells::warn_unknown_cells`): left running, unsupervised, each named in a warning.
    pub unknown_running: usize,
}

/// The local node's cells: the backend, where logs go, and the way back into the engine.
pub struct LocalCells {
    pub backend: Arc<ProcessBackend>,
    pub logs_dir: PathBuf,
    pub commands: mpsc::UnboundedSender<Command>,
    pub store: Arc<dyn Store>,
    /// Opens the secrets a starting cell refers to.
    pub secrets: Arc<crate::secrets::SecretKey>,
}

impl LocalCells {
    fn send(&self, workload_id: &str, input: Input) {
        let _ = self.commands.send(Command::Cell { workload_id: workload_id.to_string(), input });
    }

    /// Re-adopts every local cell the journal says exists: live cells are watched again, cells
    /// that ended while nobody watched report their exit, starts that never happened are
    /// returned to be carried out. Never starts a cell whose shim is alive.
    pub fn recover(&self, live: &Projection, cluster: &mut ClusterState, jobs: &mut Jobs) -> (RecoverySummary, Vec<Effect>) {
        let mut summary = RecoverySummary::default();
        let mut start_effects = Vec::new();
        let mut known_cells = HashSet::new();
        for workload in live.workloads.values() {
            let workload_id = workload.id().to_string();
            // Cells on cluster hosts are reconciled from their agents' inventories.
            if workload.current_host().is_some_and(|host| !cluster.is_local(host)) {
                continue;
            }
            // A start that was never placed (no host admitted it yet) goes back to placement,
            // which alone decides where it may run: on `warden up` too, a `[placement]` no host
            // matches keeps it pending; it never lands on this node for want of a host.
            if let (Phase::Starting { cell_id, .. }, None) = (&workload.phase, workload.current_host()) {
                cluster.defer(&workload_id, cell_id, 0);
                continue;
            }
            let (cell_id, known_cell) = match &workload.phase {
                Phase::Starting { cell_id, .. } => (cell_id.clone(), None),
                Phase::Running { cell } => (cell.cell_id.clone(), Some(cell.clone())),
                Phase::Stopping { cell_id, cell, .. } => (cell_id.clone(), cell.clone()),
                _ => continue,
            };
            known_cells.insert(cell_id.clone());
            match self.backend.inspect(&cell_id) {
                CellState::NotStarted => match (&workload.phase, known_cell) {
                    (Phase::Starting { .. }, _) => {
                        summary.started_again += 1;
                        start_effects.push(Effect::StartCell { workload_id: workload_id.clone(), cell_id });
                    }
                    (Phase::Stopping { .. }, None) => self.send(
                        &workload_id,
                        Input::CellStartFailed { cell_id, error: "supervisor restarted before the cell started".into() },
                    ),
                    _ => {
                        summary.lost += 1;
                        jobs.ended_while_down(&workload_id);
                        let exit = lost_exit("cell vanished while the supervisor was down");
                        self.send(&workload_id, Input::CellExited { cell_id, exit });
                    }
                },
                CellState::Running(started) => {
                    if let Some(cell) = &known_cell {
                        if (cell.pid, cell.pid_start_time) != (started.pid, started.pid_start_time) {
                            tracing::warn!(%cell_id, "cell pid {} differs from the journal's {}; adopting the live one", started.pid, cell.pid);
                        }
                    } else {
                        let input = Input::CellStarted {
                            cell_id: cell_id.clone(),
                            pid: started.pid,
                            pid_start_time: started.pid_start_time,
                        };
                        self.send(&workload_id, input);
                    }
                    if let Phase::Stopping { escalated, cell: Some(_), .. } = &workload.phase {
                        let signal = if *escalated { StopSignal::Kill } else { StopSignal::Term };
                        self.signal(cell_id.clone(), signal);
                    }
                    summary.adopted += 1;
                    tokio::spawn(watch(self.backend.clone(), self.commands.clone(), workload_id.clone(), cell_id, started));
                }
                CellState::Exited(status) => {
                    summary.exited_while_down += 1;
                    jobs.ended_while_down(&workload_id);
                    self.send(&workload_id, Input::CellExited { cell_id, exit: cell_exit(&status) });
                }
                CellState::Lost { reason } => {
                    summary.lost += 1;
                    jobs.ended_while_down(&workload_id);
                    self.send(&workload_id, Input::CellExited { cell_id, exit: lost_exit(&reason) });
                }
            }
        }
        summary.unknown_running = self.warn_unknown_cells(live, &known_cells);
        (summary, start_effects)
    }

    /// Says, loudly, which cell dirs under `cells/` the journal does not know: after a restore
    /// from a backup older than the cells (or a journal moved aside), cells started after the
    /// backup's cut are running with no record of them. They are left running — killing a
    /// workload nobody asked to stop is worse than leaving it to the operator — but never
    /// silently: each one still running is named with its pid, ended ones of unknown workloads too.
    /// Returns how many are running.
    fn warn_unknown_cells(&self, live: &Projection, known_cells: &HashSet<String>) -> usize {
        let cells_dir = self.backend.cell_dir("");
        let Ok(entries) = std::fs::read_dir(&cells_dir) else { return 0 };
        let (mut running, mut ended) = (0, Vec::new());
        for entry in entries.flatten() {
            let cell_id = entry.file_name().to_string_lossy().into_owned();
            if cell_id.starts_with('.') || known_cells.contains(&cell_id) || !entry.path().is_dir() {
                continue;
            }
            let dir = entry.path();
            // A live shim holds its cell's lock for the cell's whole life.
            let shim_alive =
                std::fs::File::open(dir.join("lock")).is_ok_and(|lock| crate::sys::try_lock_exclusive(&lock).is_err());
            if !shim_alive {
                // An ended cell of a workload the journal knows is the usual leftover of a crash
                // before its files were removed; only a workload it never heard of is news.
                let workload_id = cell_id.rsplit_once('.').map_or(cell_id.as_str(), |(workload_id, _)| workload_id);
                if !live.workloads.contains_key(workload_id) {
                    ended.push(cell_id);
                }
                continue;
            }
            running += 1;
            let pid = std::fs::read(dir.join("pid.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<StartedCell>(&bytes).ok())
                .map_or_else(|| "unknown".to_string(), |started| started.pid.to_string());
            tracing::warn!(
                "cell {cell_id} (pid {pid}) is running, but the journal has no record of it: it was started after the \
                 journal's last event (restored from an older backup?). warden leaves it running and does NOT supervise \
                 it; stop it yourself (kill {pid}) and remove {} if it should not run",
                dir.display()
            );
        }
        if !ended.is_empty() {
            ended.sort();
            tracing::warn!(
                "{} cell dir(s) under {} are unknown to the journal and their cells have ended; left in place: {}",
                ended.len(),
                cells_dir.display(),
                ended.join(", ")
            );
        }
        running
    }

    /// Starts a local cell; its start (or failure) and later its exit come back as inputs.
    pub fn start(&self, live: &Projection, jobs: &Jobs, workload_id: String, cell_id: String) {
        let Some(workload) = live.workloads.get(&workload_id) else { return };
        let mut config = match cell_config(&workload_id, &cell_id, &workload.spec.cell, &workload.spec.logs, &self.logs_dir) {
            Ok(config) => config,
            Err(e) => return self.send(&workload_id, Input::CellStartFailed { cell_id, error: error_chain(&e) }),
        };
        // Secrets are opened now, for this start only: a new version applies at the next start,
        // a removed secret fails it (naming the secret, never a value). Re-adopting a running
        // cell needs none of this.
        match self.secrets.resolve(&live.secrets, &workload.spec.namespace, &workload.spec.cell) {
            Ok(values) => config.env.extend(values),
            Err(error) => return self.send(&workload_id, Input::CellStartFailed { cell_id, error: error_chain(&error) }),
        }
        let user = config.user.unwrap_or(warden_cell::CellUser::ROOT);
        // A job step starts from its base context, written just before its cell (also when a
        // start is resumed after a crash: the cell never ran, so the file is rewritten whole).
        let step = jobs.step_context(live, &workload_id);
        if let Some(step) = step.as_ref().filter(|step| step.oci_bind) {
            config.binds.push(BindMount { source: step.dir.clone(), destination: StepContext::oci_destination().into() });
        }
        let backend = self.backend.clone();
        let commands = self.commands.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Some(dir) = config.log_path.parent() {
                let _ = tokio::fs::create_dir_all(dir).await;
            }
            let starter = backend.clone();
            let started = tokio::task::spawn_blocking(move || {
                if let Some(step) = step {
                    step.materialize(store.as_ref(), user)
                        .map_err(|e| format!("cannot write the step's context: {}", error_chain(&e)))?;
                }
                starter.start(&config).map_err(|e| error_chain(&e))
            })
            .await;
            let input = match started {
                Ok(Ok(started)) => {
                    let input =
                        Input::CellStarted { cell_id: cell_id.clone(), pid: started.pid, pid_start_time: started.pid_start_time };
                    let _ = commands.send(Command::Cell { workload_id: workload_id.clone(), input });
                    watch(backend, commands, workload_id, cell_id, started).await;
                    return;
                }
                Ok(Err(error)) => Input::CellStartFailed { cell_id, error },
                Err(e) => Input::CellStartFailed { cell_id, error: format!("start task failed: {e}") },
            };
            let _ = commands.send(Command::Cell { workload_id, input });
        });
    }

    /// Signals a local cell through its shim.
    pub fn signal(&self, cell_id: String, signal: StopSignal) {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = backend.signal(&cell_id, matches!(signal, StopSignal::Kill)) {
                tracing::warn!(%cell_id, "signal failed: {}", error_chain(&e));
            }
        });
    }

    /// Removes an ended local cell's files.
    pub fn remove(&self, cell_id: String) {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || backend.remove(&cell_id));
    }
}

/// Waits for a cell's shim to exit (its pidfd turns readable), then reports how the cell ended.
async fn watch(
    backend: Arc<ProcessBackend>,
    commands: mpsc::UnboundedSender<Command>,
    workload_id: String,
    cell_id: String,
    started: StartedCell,
) {
    let exit = wait_exit(backend, &cell_id, started).await;
    let _ = commands.send(Command::Cell { workload_id, input: Input::CellExited { cell_id, exit } });
}
