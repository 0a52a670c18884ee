//! What the API returns about a workload: every `WorkloadInfo` field plus its live state.

use serde::{Deserialize, Serialize};
use warden_core::workload::ExitRecord;
use warden_core::{Phase, Workload, WorkloadInfo};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadView {
    #[serde(flatten)]
    pub info: WorkloadInfo,
    pub name: String,
    /// `pending|starting|running|exited|backoff|stopping|completed|failed|stopped|expired`.
    pub state: String,
    pub restarts: u32,
    pub runs: u32,
    pub consecutive_failures: u32,
    pub pid: Option<u32>,
    pub cell_id: Option<String>,
    pub host: String,
    /// Why a terminal workload ended.
    pub reason: Option<String>,
    pub last_exit: Option<ExitRecord>,
    /// When a workload in backoff starts its next cell.
    pub next_start_at_ms: Option<u64>,
    pub argv: Vec<String>,
    pub updated_at_ms: u64,
}

impl WorkloadView {
    pub fn of(workload: &Workload, host: &str) -> WorkloadView {
        let reason = match &workload.phase {
            Phase::Failed { reason } | Phase::Stopped { reason } => Some(reason.clone()),
            Phase::Expired => Some("ttl expired".into()),
            Phase::Completed => Some("exited with code 0".into()),
            _ => None,
        };
        WorkloadView {
            info: workload.info.clone(),
            name: workload.spec.name.clone(),
            state: workload.phase.name().to_string(),
            restarts: workload.restarts(),
            runs: workload.runs,
            consecutive_failures: workload.consecutive_failures,
            pid: workload.phase.running_cell().map(|cell| cell.pid),
            cell_id: workload.phase.cell_id().map(str::to_owned),
            host: host.to_string(),
            reason,
            last_exit: workload.last_exit.clone(),
            next_start_at_ms: match &workload.phase {
                Phase::Backoff { until_ms } => Some(*until_ms),
                _ => None,
            },
            argv: workload.spec.cell.argv.clone(),
            updated_at_ms: workload.updated_at_ms,
        }
    }
}

/// The body of `POST /v1/workloads`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The spec's file name, used in error messages.
    pub file: String,
    pub spec_toml: String,
    #[serde(default)]
    pub consumer_workload_id: Option<String>,
}

/// Every API error body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
