//! Why the shim could not start its cell: [`StartFailure`], one variant per step of the start,
//! and the one `err` line of the handshake it becomes (see the [`crate::shim`] docs).

use crate::cgroup::CgroupSetupError;
use crate::diag::Chain;
use crate::fence::FenceFired;
use crate::oci::OciError;
use crate::shim::exec::ExecPlanError;
use std::io;
use std::path::PathBuf;

/// Why the shim could not start the workload. Nothing of the cell is left running after any
/// of these: the shim undoes what it started before it reports.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartFailure {
    /// The workload's program could not be exec'd (`err exec`).
    #[error("{program}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The workload's working directory could not be entered (`err exec`).
    #[error("chdir {workdir}")]
    Chdir {
        workdir: String,
        #[source]
        source: io::Error,
    },
    /// The OCI runtime is missing or refused to start the container (`err runtime`).
    #[error(transparent)]
    Runtime(RuntimeFailure),
    /// A fenced cell's lease expired (or was not valid) before the workload was running
    /// (`err fenced`).
    #[error(transparent)]
    Fenced(FenceFired),
    #[error("open {}", path.display())]
    OpenLock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("flock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stat {}", path.display())]
    StatLock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cell dir {} was abandoned by the supervisor", cell_dir.display())]
    Abandoned { cell_dir: PathBuf },
    /// Another shim already ran this cell: starting it again would run it twice.
    #[error("cell {} was already started", cell_dir.display())]
    AlreadyStarted { cell_dir: PathBuf },
    #[error("block signals")]
    BlockSignals(#[source] io::Error),
    #[error("read {}", path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} missing", path.display())]
    ConfigMissing { path: PathBuf },
    #[error("invalid cell config")]
    Plan(#[source] ExecPlanError),
    /// The workload could not drop to its user (setgroups, setgid, setuid): it never ran.
    #[error("become the cell's user ({ids}; no supplementary groups)")]
    SwitchUser {
        ids: String,
        #[source]
        source: io::Error,
    },
    /// An isolated cell's user namespace could not be mapped to its user.
    #[error("map the cell's user namespace (root inside = {ids} outside)")]
    UserNamespace {
        ids: String,
        #[source]
        source: io::Error,
    },
    #[error("the cell dir {} has no parent", cell_dir.display())]
    NoCellsDir { cell_dir: PathBuf },
    #[error("write the OCI bundle {}", path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("open log {}", path.display())]
    OpenLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("set up the cell's cgroups")]
    Cgroup(#[source] CgroupSetupError),
    /// One of the shim's own system calls (a pipe, `fork`, a signalfd, ...) failed; `step` names it.
    #[error("{step}")]
    Sys {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// Setting up the workload (or the cell's init) failed in the child; `step` names where.
    #[error("{step}")]
    Child {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the cell's init died during start-up")]
    InitDied,
    #[error("write pid.json in {}", cell_dir.display())]
    WritePid {
        cell_dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why the OCI runtime could not start the container; never retried with another runtime.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeFailure {
    /// The runtime is not installed.
    #[error(transparent)]
    Unavailable(OciError),
    #[error("cannot run {program}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The runtime exited before the container ran; `words` is the end of its own output.
    #[error("{runtime} {how} before the container ran: {words}")]
    GaveUp { runtime: &'static str, how: String, words: String },
    #[error("{runtime} did not start the container within {limit:?}: {words}")]
    TimedOut { runtime: &'static str, limit: std::time::Duration, words: String },
}

impl StartFailure {
    /// A failed system call of the shim's own.
    pub(crate) fn sys(step: &'static str) -> impl FnOnce(io::Error) -> StartFailure {
        move |source| StartFailure::Sys { step, source }
    }

    /// The handshake line that tells the supervisor: `err exec <why>` (the workload could not
    /// be exec'd), `err runtime <why>`, `err fenced <why>`, or `err <why>` for anything else;
    /// `<why>` is the whole chain of causes, on one line.
    pub(crate) fn handshake_line(&self) -> String {
        let kind = match self {
            StartFailure::Exec { .. } | StartFailure::Chdir { .. } => "exec ",
            StartFailure::Runtime(_) => "runtime ",
            StartFailure::Fenced(_) => "fenced ",
            _ => "",
        };
        format!("err {kind}{}\n", Chain(self).to_string().replace(['\n', '\r'], " "))
    }
}
