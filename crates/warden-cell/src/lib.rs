//! Cell backends: how one run of a workload (a "cell") is started, watched, signalled and
//! re-adopted after the supervisor itself crashed.
//!
//! The only backend today is [`ProcessBackend`]: every cell runs under a tiny per-cell shim
//! ([`shim_main`]) that is the workload's parent, records its exit status durably in the cell
//! directory, and outlives the supervisor. With [`CellIsolation::Cell`] the shim's child is
//! instead a small init of warden's own, PID 1 of new PID, mount, UTS and IPC (and optionally
//! network) namespaces, which starts the workload as PID 2 and reports its exit over an
//! authenticated channel. With [`CellIsolation::Oci`] the shim's child is an OCI runtime
//! (`runc run` in the foreground, see [`oci`]) running the workload as PID 1 of a container on
//! the given root filesystem. Every cell gets cgroups of its own that enforce [`CellLimits`]
//! (see [`cgroup_layout`]; an OCI runtime makes its own, `warden/<cell_id>`). The on-disk
//! protocol of a cell directory is:
//!
//! * `config.json` – the [`CellConfig`], written (and fsynced) by the supervisor before spawning.
//! * `lock` – `flock`ed by the shim for its whole life; the lock is the proof the shim is alive.
//! * `cgroups.json` – the cell's cgroup directories, recorded by the shim before anything joins
//!   them, so that the supervisor can tear them down after a shim died (not for OCI cells: the
//!   runtime's `delete` removes theirs).
//! * `bundle/config.json` – OCI cells only: the bundle the runtime runs ([`oci::bundle_config`]).
//! * `container.pid` – OCI cells only: the container's PID 1 as the runtime wrote it (`--pid-file`).
//! * `pid.json` – a [`StartedCell`], written atomically by the shim once the workload was exec'd
//!   (for an OCI cell: once the runtime reported the container's PID 1). For an isolated cell `pid` is the host pid of the cell's init (the cell's identity: killing
//!   it ends the cell), not of the workload; for an OCI cell, of the container's PID 1.
//! * `lease.json` – fenced cells only ([`CellConfig::fence`]): a [`LeaseRecord`],
//!   `{"epoch", "deadline_boottime_ns"}`, the time on `CLOCK_BOOTTIME` until which the cell may
//!   run. Written atomically by the supervisor: the first one by [`ProcessBackend::start`] before
//!   the shim is spawned, later ones by [`ProcessBackend::renew_lease`]. The shim only reads it,
//!   when its deadline timer fires; see [`Fence`].
//! * `exit.json` – an [`ExitStatus`], written atomically by the shim once the workload was reaped.
//! * `shim.err` – the shim's own stderr, for post-mortems.
//!
//! Next to the cell directories, `<cells_dir>/.oci-state/` is the OCI runtime's state root
//! ([`oci::state_root`]): one directory per container the runtime knows. A container whose shim
//! is gone is killed and deleted by [`ProcessBackend::inspect`]; [`ProcessBackend::remove`]
//! deletes whatever a shim could not.
//!
//! A cell can be *fenced* ([`Fence`]): the right to run it is a lease, and its shim kills it
//! when the lease runs out unless the supervisor extended it in time — by the shim's own timer,
//! so the fence holds even when the supervisor (or a cluster agent) was SIGKILLed. This crate
//! only provides the mechanism; the lease arithmetic (why a deadline computed so can never
//! outlast the grant) is the caller's.

mod cell;
mod cgroup;
mod diag;
mod durable;
mod exit_report;
mod fence;
mod logs;
pub mod oci;
mod process;
mod procfs;
mod shim;
mod sys;

pub use cell::{
    BindMount, CellConfig, CellIsolation, CellLimits, CellState, CellUser, ExitStatus, Fence, OciRuntime, StartedCell,
    TerminalState, STANDBY_EPOCH,
};
pub use cgroup::{cgroup_layout, CgroupLayout};
pub use fence::{boottime_ns, LeaseRecord};
pub use process::{ProcessBackend, ShimExe, SignalError, StartError};
pub use procfs::process_start_time;
pub use shim::shim_main;
