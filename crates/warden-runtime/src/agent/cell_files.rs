//! The agent's records in a cell's dir, next to the shim's, and the environment it gives a cell:
//! what a restarted agent reads back to take its cells on again.
//!
//! ```text
//! <cell dir>/config.json      the shim's CellConfig; its env holds WARDEN_SPEC_ID (and WARDEN_EPOCH)
//! <cell dir>/lease.json       a fenced cell's lease as its shim enforces it (warden_cell::LeaseRecord)
//! <cell dir>/lease_ttl_ms     the workload's own lease ttl (`lost_after`), if it has one
//! <cell dir>/lease_outage     `stop` if the cell must not ride out a control-plane outage
//! <cell dir>/checkpoint.json  a checkpointed cell's CheckpointPlan (0600: it holds the key)
//! <cell dir>/role             a hot standby's role: `standby`, then `primary <epoch>`
//! ```
//!
//! None of these is fsynced: like the cells' own records they must survive the agent, not the
//! host (see ARCHITECTURE, "Durability lives in the journal").

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use warden_cell::{CellConfig, LeaseRecord};
use warden_core::lease::OutagePolicy;

use crate::proto::CheckpointPlan;

/// The environment variable a fenced cell finds its lease epoch in.
pub const EPOCH_ENV: &str = "WARDEN_EPOCH";

/// The environment variable a cell finds its workload's spec (`spec_id`) in. It is also how a
/// restarted agent tells which version a re-adopted cell runs (service rollouts): it is read
/// back from the cell's `config.json`.
pub const SPEC_ID_ENV: &str = "WARDEN_SPEC_ID";

/// `<cell dir>/checkpoint.json`: the cell's `CheckpointPlan`, so a restarted agent keeps
/// checkpointing the cells it re-adopts.
const CHECKPOINT_FILE: &str = "checkpoint.json";

/// `<cell dir>/lease_ttl_ms`: a workload's own lease ttl (`lost_after`), for re-adoption.
const LEASE_TTL_FILE: &str = "lease_ttl_ms";

/// `<cell dir>/lease_outage`: `stop` for a workload with `control_plane_outage = "stop"`; absent
/// for the default (ride it out), so cells started by an older agent ride outages out.
const LEASE_OUTAGE_FILE: &str = "lease_outage";

/// `<cell dir>/role`: a hot standby's role file (see `standby.rs`).
pub(super) const ROLE_FILE: &str = "role";

/// Writes a file only this user can read (it may hold a key), replacing it atomically.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

/// A hot standby's role file: the cell (its own unprivileged user) reads it, and it holds no
/// secret (`standby` or `primary <epoch>`), so it is world-readable, written atomically.
pub(super) fn write_role_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

pub(super) fn write_checkpoint_plan(cell_dir: &Path, plan: &CheckpointPlan) -> std::io::Result<()> {
    write_private(&cell_dir.join(CHECKPOINT_FILE), &serde_json::to_vec(plan).expect("serializes"))
}

pub(super) fn read_checkpoint_plan(cell_dir: &Path) -> Option<CheckpointPlan> {
    let bytes = std::fs::read(cell_dir.join(CHECKPOINT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(super) fn read_lease_ttl(cell_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(cell_dir.join(LEASE_TTL_FILE)).ok().and_then(|t| t.trim().parse().ok())
}

/// Keeps a cell's lease terms (its own ttl, its outage policy) for a restarted agent.
pub(super) fn write_lease_terms(cell_dir: &Path, ttl_ms: Option<u64>, outage: OutagePolicy) -> std::io::Result<()> {
    if let Some(ttl) = ttl_ms {
        std::fs::write(cell_dir.join(LEASE_TTL_FILE), ttl.to_string())?;
    }
    if outage == OutagePolicy::Stop {
        std::fs::write(cell_dir.join(LEASE_OUTAGE_FILE), "stop")?;
    }
    Ok(())
}

pub(super) fn read_lease_outage(cell_dir: &Path) -> OutagePolicy {
    match std::fs::read_to_string(cell_dir.join(LEASE_OUTAGE_FILE)) {
        Ok(text) if text.trim() == "stop" => OutagePolicy::Stop,
        _ => OutagePolicy::RideOut,
    }
}

pub(super) fn read_config(cell_dir: &Path) -> Option<CellConfig> {
    let bytes = std::fs::read(cell_dir.join("config.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The spec a cell was started with, as its environment says.
pub(super) fn spec_id_of(config: &CellConfig) -> Option<String> {
    config.env.get(SPEC_ID_ENV).cloned()
}

pub(super) fn read_lease(cell_dir: &Path) -> Option<LeaseRecord> {
    let bytes = std::fs::read(cell_dir.join("lease.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}
