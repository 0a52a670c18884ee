//! Self-fencing: a fenced cell (one whose [`crate::CellConfig::fence`] is set) may only run
//! while its host holds the workload's lease, and its shim kills it once the lease runs out —
//! without asking anybody, so the fence holds when the supervisor (or agent) was SIGKILLed.
//!
//! The lease lives in `<cell dir>/lease.json` as a [`LeaseRecord`]: an epoch and a deadline on
//! `CLOCK_BOOTTIME`. The supervisor writes the first one before the shim is spawned
//! ([`crate::ProcessBackend::start`]) and extends it with [`crate::ProcessBackend::renew_lease`].
//! The shim arms a timerfd on `CLOCK_BOOTTIME` for the deadline; when it fires, the shim re-reads
//! the file and either re-arms (same epoch, later deadline) or kills the cell at once, as a forced
//! stop does, and records `fenced` in `exit.json`. Anything else it finds — no file, a file it
//! cannot parse, another epoch, a deadline that already passed — counts as expired: fail safe.
//!
//! Why `CLOCK_BOOTTIME` and not `CLOCK_MONOTONIC`: a lease is about real time. The server that
//! granted it counts real time, and after `ttl + margin` of it may grant the lease elsewhere.
//! `CLOCK_MONOTONIC` stops while the host is suspended (suspend-to-RAM or hibernation: a laptop
//! lid, `systemctl suspend`), so a host resuming from a suspend longer than the lease would still
//! see its deadline in the future and keep a second primary running next to the new one.
//! `CLOCK_BOOTTIME` keeps counting through suspend, so on resume the timer fires at once. Like
//! `CLOCK_MONOTONIC` it is never stepped by NTP or an operator (only slewed, i.e. within the
//! drift bound the lease arithmetic assumes). Its values mean nothing across a reboot, and need
//! not: no shim outlives one.
//!
//! The fence is only as alive as the shim: a shim that is itself stopped (SIGSTOP, a frozen
//! cgroup) or starved fires late, which the caller's kill budget has to cover.

use crate::cell::STANDBY_EPOCH;
use crate::durable::read_json;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The lease file's name in the cell dir.
pub(crate) const LEASE_FILE: &str = "lease.json";

/// The contents of `lease.json`: the cell may run until `CLOCK_BOOTTIME` reads
/// `deadline_boottime_ns`, as long as `epoch` is the one its [`crate::Fence`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub epoch: u64,
    pub deadline_boottime_ns: u64,
}

/// `clock_gettime(CLOCK_BOOTTIME)` in nanoseconds: the clock fence deadlines are on. It counts
/// from boot and keeps counting while the host is suspended (see [`crate::Fence`] for why
/// that matters). Should the clock be unreadable (it never is on Linux ≥ 2.6.39), `u64::MAX`:
/// every deadline then reads as passed, which fails safe.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return u64::MAX;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Atomically replaces `<cell_dir>/lease.json`. The temporary file's name is unique to this
/// call, so renewals racing from several threads never tear each other's file (the last rename
/// wins). Fails with `NotFound` if the cell dir does not exist: a lease is never written for a
/// cell that is not there.
pub(crate) fn write_lease(cell_dir: &Path, lease: &LeaseRecord) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut bytes = serde_json::to_vec(lease).map_err(io::Error::other)?;
    bytes.push(b'\n');
    let tmp = cell_dir.join(format!("{LEASE_FILE}.{}-{}.tmp", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes))
        .and_then(|()| std::fs::rename(&tmp, cell_dir.join(LEASE_FILE)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Why a fenced cell may not run (any more): the fence fired. Its chain is the `detail` that
/// `exit.json` records, and it always starts `fenced: lease epoch N expired (...)` — or, if the
/// deadline cannot even be watched, `fenced: lease epoch N cannot be watched (...)`.
/// Cloneable (sources are shared), because the fired fence keeps it for the exit record.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum FenceFired {
    #[error("fenced: lease epoch {epoch} expired ({LEASE_FILE} is missing)")]
    LeaseMissing { epoch: u64 },
    #[error("fenced: lease epoch {epoch} expired ({LEASE_FILE} is unreadable)")]
    LeaseUnreadable {
        epoch: u64,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("fenced: lease epoch {epoch} expired ({LEASE_FILE} names epoch {found})")]
    OtherEpoch { epoch: u64, found: u64 },
    #[error("fenced: lease epoch {epoch} expired (deadline {deadline_ns} ns passed; CLOCK_BOOTTIME reads {now_ns} ns)")]
    DeadlinePassed { epoch: u64, deadline_ns: u64, now_ns: u64 },
    #[error("fenced: lease epoch {epoch} cannot be watched (timerfd_settime failed)")]
    Unwatchable {
        epoch: u64,
        #[source]
        source: Arc<io::Error>,
    },
}

/// The deadline `lease.json` grants `epoch` right now, or why it grants none.
pub(crate) fn current_deadline(cell_dir: &Path, epoch: u64) -> Result<u64, FenceFired> {
    let lease = match read_json::<LeaseRecord>(&cell_dir.join(LEASE_FILE)) {
        Ok(Some(lease)) => lease,
        Ok(None) => return Err(FenceFired::LeaseMissing { epoch }),
        Err(e) => return Err(FenceFired::LeaseUnreadable { epoch, source: Arc::new(e) }),
    };
    if lease.epoch != epoch {
        return Err(FenceFired::OtherEpoch { epoch, found: lease.epoch });
    }
    let now_ns = boottime_ns();
    if lease.deadline_boottime_ns <= now_ns {
        return Err(FenceFired::DeadlinePassed { epoch, deadline_ns: lease.deadline_boottime_ns, now_ns });
    }
    Ok(lease.deadline_boottime_ns)
}

/// The shim's side of the fence: a timerfd on `CLOCK_BOOTTIME`, armed for the lease's deadline.
pub(crate) struct FenceWatch {
    timer: OwnedFd,
    epoch: u64,
    /// The deadline the timer is armed for.
    deadline: u64,
    /// Once the fence fired: why (the `detail` of `exit.json`). Nothing re-arms the timer then.
    pub(crate) fired: Option<FenceFired>,
}

impl FenceWatch {
    /// An unarmed watch for `epoch`; [`FenceWatch::rearm`] reads the lease and arms it.
    pub(crate) fn new(epoch: u64) -> io::Result<FenceWatch> {
        Ok(FenceWatch { timer: sys::timerfd_boottime()?, epoch, deadline: 0, fired: None })
    }

    /// Readable once the deadline the timer is armed for has passed.
    pub(crate) fn fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Re-reads the lease: re-arms the timer for a deadline still in the future, or else says
    /// why the cell must die now (and keeps that in `fired`). A standby's watch (epoch 0) takes
    /// the first other epoch it finds as its own: the standby was promoted.
    pub(crate) fn rearm(&mut self, cell_dir: &Path) -> Result<(), FenceFired> {
        if let Some(why) = &self.fired {
            return Err(why.clone());
        }
        if self.epoch == STANDBY_EPOCH {
            if let Ok(Some(lease)) = read_json::<LeaseRecord>(&cell_dir.join(LEASE_FILE)) {
                self.epoch = lease.epoch;
            }
        }
        // Drain a pending expiry, so the fd only turns readable again at the next deadline.
        sys::timerfd_drain(&self.timer);
        let result = current_deadline(cell_dir, self.epoch).and_then(|deadline| {
            self.deadline = deadline;
            sys::timerfd_set_absolute(&self.timer, deadline)
                .map_err(|e| FenceFired::Unwatchable { epoch: self.epoch, source: Arc::new(e) })
        });
        if let Err(why) = &result {
            self.fired = Some(why.clone());
        }
        result
    }

    /// Like [`FenceWatch::rearm`], but only reads the lease once the armed deadline has passed:
    /// for start-up, which does not poll the timer.
    pub(crate) fn check(&mut self, cell_dir: &Path) -> Result<(), FenceFired> {
        if self.fired.is_none() && boottime_ns() < self.deadline {
            return Ok(());
        }
        self.rearm(cell_dir)
    }
}
