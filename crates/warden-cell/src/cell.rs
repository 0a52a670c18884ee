//! The cell's records: its config, identity, exit status and state, as the supervisor and the
//! shim exchange them through the files of a cell directory (see the crate docs for the files).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Everything the shim needs to start one cell; persisted as `config.json` in the cell dir.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellConfig {
    pub cell_id: String,
    pub workload_id: String,
    /// `argv[0]` is looked up in `PATH` (after `env` was applied), like `execvp`.
    pub argv: Vec<String>,
    /// Set on top of the environment the shim inherited from the supervisor.
    pub env: BTreeMap<String, String>,
    /// `None` keeps the supervisor's working directory.
    pub workdir: Option<PathBuf>,
    /// e.g. `<data>/logs/<workload_id>/output.log`; rotated to `output.log.1` .. `.N`.
    pub log_path: PathBuf,
    /// The live log is rotated before it would grow past this size; 0 disables rotation.
    pub log_max_size_bytes: u64,
    /// How many rotated files (`.1` .. `.N`) are kept; 0 means the live file is just truncated.
    pub log_max_files: u32,
    /// How the workload is isolated from the host.
    #[serde(default)]
    pub isolation: CellIsolation,
    /// Resource limits, enforced with cgroups (v1 or v2, whichever the host runs).
    #[serde(default)]
    pub limits: CellLimits,
    /// Host directories bound into an OCI cell's root (read-write). Process and namespaced
    /// cells see the host's filesystem as it is, so they need none and ignore these.
    #[serde(default)]
    pub binds: Vec<BindMount>,
    /// Set for a fenced primary: the cell may only run while `lease.json` in its dir grants it
    /// [`Fence::epoch`] with a deadline in the future, and its shim kills it (as a forced stop
    /// does) once that deadline passes unextended. `None`: an ordinary cell, no lease.
    #[serde(default)]
    pub fence: Option<Fence>,
    /// Who the workload runs as, resolved on this host. `None` (a config written by a warden
    /// from before users): the shim's own user, as then. Process cells switch to it before exec;
    /// an isolated cell maps root inside its user namespace to it (unless it is root itself); an
    /// OCI cell gets it as the container's `process.user`.
    #[serde(default)]
    pub user: Option<CellUser>,
}

/// A cell's user as numeric ids; supplementary groups are always dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellUser {
    pub uid: u32,
    pub gid: u32,
}

impl CellUser {
    pub const ROOT: CellUser = CellUser { uid: 0, gid: 0 };

    pub fn is_root(self) -> bool {
        self.uid == 0
    }
}

/// The epoch of a hot standby's fence: no lease yet (leases are granted from epoch 1).
pub const STANDBY_EPOCH: u64 = 0;

/// A fenced cell's lease, as it starts; see [`CellConfig::fence`].
///
/// No lease, no cell: [`ProcessBackend::start`](crate::ProcessBackend::start) writes `lease.json` with `epoch` and
/// `initial_deadline_boottime_ns` *before* it spawns the shim, and refuses to start the cell
/// ([`StartError::LeaseExpired`](crate::StartError::LeaseExpired)) when that deadline has already passed. From then on the
/// supervisor extends the deadline with [`ProcessBackend::renew_lease`](crate::ProcessBackend::renew_lease) (same epoch).
///
/// The shim arms a timer for the deadline on `CLOCK_BOOTTIME` ([`boottime_ns`](crate::boottime_ns)); when it fires,
/// the shim re-reads `lease.json` and re-arms for a later deadline of the same epoch, or else
/// kills the cell at once and records [`ExitStatus::fenced`]. A missing or unreadable lease, or
/// one naming another epoch, counts as expired. The deadline is on `CLOCK_BOOTTIME`, not
/// `CLOCK_MONOTONIC`, because a lease is about real time: the granting server keeps counting
/// while this host is suspended, and `CLOCK_MONOTONIC` does not — a host waking up from a long
/// suspend would keep running a primary that was meanwhile granted elsewhere.
///
/// The cell ends within a short kill budget after its deadline (SIGKILL to its process group,
/// its init, or the container's PID 1, then the reap), and never before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The lease's epoch; every `lease.json` the cell runs on must name exactly this one.
    /// [`STANDBY_EPOCH`] (0) fences a hot standby, which holds no lease yet: its supervisor
    /// extends epoch 0 on its own, and the first other epoch `lease.json` names (its promotion)
    /// becomes the cell's, for good.
    pub epoch: u64,
    /// The first deadline, on `CLOCK_BOOTTIME` in nanoseconds (see [`boottime_ns`](crate::boottime_ns)).
    pub initial_deadline_boottime_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    /// An absolute path inside the container.
    pub destination: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CellIsolation {
    /// A plain process group under the shim. No in-cell bridge: exits carry no terminal state.
    #[default]
    Process,
    /// New PID, mount, UTS and IPC namespaces (and an empty network namespace when
    /// `network_none`), with warden's own init as PID 1 reporting the workload's exit over an
    /// authenticated channel.
    Cell { network_none: bool },
    /// An OCI runtime (runc, or crun where the host allows) on a bundle generated from the spec,
    /// with the workload as the container's PID 1. `rootfs` must be an absolute path to a
    /// directory. No in-cell bridge: exits carry no terminal state, and the exit code is the
    /// runtime's (see [`ExitStatus`]).
    Oci { rootfs: PathBuf, runtime: OciRuntime, network_none: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OciRuntime {
    Runc,
    Crun,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellLimits {
    pub memory_max_bytes: Option<u64>,
    /// CPU bandwidth in thousandths of a core (500 = half a core).
    pub cpu_max_millicores: Option<u32>,
    pub pids_max: Option<u32>,
}

/// How the supervisor learned that a cell ended (the seed's `LifecycleTerminalState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TerminalState {
    /// An exit report authenticated with the cell's key arrived: its code is the truth.
    Clean,
    /// No authenticated report arrived; the cell was torn down. Carries no exit code.
    Forced,
}

/// Identity of a running cell. Pids are never trusted alone: a pid plus its start time
/// (field 22 of `/proc/PID/stat`) identifies a process even if the pid number is recycled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedCell {
    /// The workload (process isolation: a process group leader, and SIGKILL to its group ends
    /// the cell), the cell's init (cell isolation), or the container's PID 1, i.e. the workload
    /// (OCI isolation); the last two are PID 1 of the cell's PID namespace, and SIGKILL to them
    /// ends every process in it.
    ///
    /// For OCI it is deliberately not the runtime process (`runc run`, the shim's child): the
    /// container outlives a killed runtime, so only its PID 1 identifies the cell, and it is what
    /// a supervisor that re-adopts the cell can check against `pid_start_time`. The shim takes it
    /// from the runtime's `--pid-file` and verifies that it is the runtime's child before reading
    /// its start time. A container that ended before that could be read gets `pid_start_time` 0
    /// ("not verifiable"), which never matches a live process: it is never signalled by pid.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`; 0 if the process was already gone when it was recorded.
    pub pid_start_time: u64,
    pub shim_pid: u32,
    pub shim_start_time: u64,
}

/// How a workload ended, as recorded by its shim in `exit.json`.
/// At most one of `exit_code` and `signal` is set; neither when the end is unknown (a `Forced`
/// cell, an OCI runtime that was itself killed), and then `detail` says why.
///
/// An OCI cell's `exit_code` is the runtime's exit status, which is the container's: its code,
/// or 128 + n when PID 1 died of signal n. That is kept as the runtime reports it (137 for a
/// SIGKILL, as Docker shows it) with `signal` unset, because `exit 137` looks exactly the same;
/// `detail` then spells out the signal reading. It is never turned into a signal warden cannot
/// know was one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub finished_at_ms: u64,
    /// `None` for backends without an in-cell bridge (`process`).
    #[serde(default)]
    pub terminal_state: Option<TerminalState>,
    /// The cell's cgroup recorded an OOM kill.
    #[serde(default)]
    pub oom_killed: bool,
    /// Why, in words, when the exit code alone does not say (e.g. why a cell was `Forced`).
    #[serde(default)]
    pub detail: Option<String>,
    /// The shim killed the cell because its lease expired ([`Fence`]); `detail` then starts with
    /// `fenced: lease epoch N expired (<why>)`.
    #[serde(default)]
    pub fenced: bool,
}

/// What the backend knows about a cell, typically after a supervisor restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CellState {
    /// The workload was never exec'd (or its dir was abandoned mid-start); safe to start anew.
    NotStarted,
    Running(StartedCell),
    Exited(ExitStatus),
    /// The shim died before recording an exit status; the cell must not be assumed running.
    Lost {
        reason: String,
    },
}
