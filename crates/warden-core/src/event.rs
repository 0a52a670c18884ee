//! Events: typed `EventData` inside a CloudEvents 1.0 envelope with `seq` and `prevhash` extensions.
//!
//! The envelope's canonical JSON (sorted keys) is what the hash chain covers: event *n* carries
//! `prevhash = sha256(canonical bytes of event n-1)`, and the first event carries `GENESIS_HASH`.

use serde::{Deserialize, Serialize};

use crate::authz::Role;
use crate::canonical::sha256_hex;
use crate::job::JobEvent;
use crate::rollout::{RolloutEvent, RolloutStart};
use crate::spec::Spec;
use crate::time::format_rfc3339_ms;
use crate::types::{LifecycleTerminalState, StandbySlot, StopReason, WorkloadInfo};

/// `prevhash` of the first event in a journal.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A journaled event: CloudEvents 1.0 JSON plus the integer extension `seq` (global, from 1,
/// no gaps) and `prevhash` (hex SHA-256 of the previous event's canonical bytes).
///
/// Fields are declared in the sorted order of their JSON names, and `data` is a `Value` (whose
/// objects are sorted maps), so serializing the struct directly yields the canonical bytes
/// without a detour through `Value` — the journal writer's hot path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub data: serde_json::Value,
    pub datacontenttype: String,
    pub id: String,
    pub prevhash: String,
    pub seq: u64,
    pub source: String,
    pub specversion: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub time: String,
    #[serde(rename = "type")]
    pub event_type: String,
}

/// An event before the journal has given it a place: everything but `seq` and `prevhash`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub source: String,
    pub time_ms: u64,
    pub subject: Option<String>,
    pub data: EventData,
}

impl CloudEvent {
    /// Gives `new` its place in the chain.
    pub fn seal(new: &NewEvent, seq: u64, prevhash: &str) -> CloudEvent {
        let tagged = serde_json::to_value(&new.data).expect("event data serializes");
        let (event_type, data) = match tagged {
            serde_json::Value::Object(mut map) => (
                map.remove("type").and_then(|t| t.as_str().map(str::to_owned)).expect("tagged with type"),
                map.remove("data").unwrap_or(serde_json::Value::Null),
            ),
            _ => unreachable!("EventData is an adjacently tagged enum"),
        };
        CloudEvent {
            specversion: "1.0".into(),
            id: new.id.clone(),
            source: new.source.clone(),
            event_type,
            time: format_rfc3339_ms(new.time_ms),
            subject: new.subject.clone(),
            datacontenttype: "application/json".into(),
            data,
            seq,
            prevhash: prevhash.to_string(),
        }
    }

    /// The bytes the hash chain covers: compact JSON with every object's keys sorted.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a CloudEvent always serializes")
    }

    /// Hex SHA-256 of the canonical bytes: the next event's `prevhash`.
    pub fn hash(&self) -> String {
        sha256_hex(&self.canonical_bytes())
    }

    /// The typed payload, or why this event's type or data is not one warden knows.
    pub fn typed_data(&self) -> Result<EventData, serde_json::Error> {
        serde_json::from_value(serde_json::json!({"type": self.event_type, "data": self.data}))
    }
}

/// Every event warden journals. The serde tag is the CloudEvents `type`.
// `WorkloadSubmitted` carries the whole spec and is much larger than the rest; events are built
// once and moved into the journal batch, so boxing it would buy nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum EventData {
    /// A workload was accepted; `workload.vmid` is assigned here.
    #[serde(rename = "dev.warden.workload.submitted.v1")]
    WorkloadSubmitted {
        workload: WorkloadInfo,
        spec: Spec,
        /// An `each-host` instance runs only on this host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pinned_host: Option<String>,
    },

    /// The decision to start a cell, journaled before the cell is created.
    #[serde(rename = "dev.warden.workload.starting.v1")]
    WorkloadStarting { workload_id: String, cell_id: String, attempt: u32 },

    /// Where the cell decided by the preceding `workload.starting` runs: the host, and for a
    /// fenced primary on a cluster host the lease epoch it runs under (`WARDEN_EPOCH`).
    /// `adopts`: a hot standby's cell, already running there, *is* the new cell (it is promoted
    /// in place); the workload's cell is that one from here on.
    #[serde(rename = "dev.warden.workload.placed.v1")]
    CellPlaced {
        workload_id: String,
        cell_id: String,
        host: String,
        epoch: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        adopts: Option<String>,
    },

    /// The lease of a workload's primary was granted to `host` at `epoch` (compare-and-swap on
    /// the previous epoch; see `lease`).
    #[serde(rename = "dev.warden.lease.granted.v1")]
    LeaseGranted { workload_id: String, epoch: u64, host: String },

    /// The lease's holder reported its cell gone: the lease may be granted again at once.
    #[serde(rename = "dev.warden.lease.released.v1")]
    LeaseReleased { workload_id: String, epoch: u64 },

    /// The primary's host is gone (down, or it evicted the cell) and the workload has warm
    /// standbys: `from_cell` is written off and `cell_id` is decided at once, without a backoff
    /// and without counting as a restart. A standby takes it by winning the lease.
    #[serde(rename = "dev.warden.workload.failover.v1")]
    WorkloadFailover { workload_id: String, from_cell: String, from_host: Option<String>, cell_id: String, reason: String },

    /// A standby slot for the workload is armed on `slot.host` (or re-armed with new facts: its
    /// primary, its peers): the spec is staged there and the latest checkpoint fetched.
    #[serde(rename = "dev.warden.standby.armed.v1")]
    StandbyArmed { workload_id: String, slot: StandbySlot },

    /// The standby slot on `host` is gone: promoted, its host is down, or the workload ended.
    #[serde(rename = "dev.warden.standby.released.v1")]
    StandbyReleased { workload_id: String, host: String, reason: String },

    /// The lease's holder gave it up on its own — it evicted the cell (a drain) after a final
    /// checkpoint (`state_uri`) — signed with its host key: the lease may be granted at once.
    #[serde(rename = "dev.warden.lease.revoked.v1")]
    LeaseRevoked { workload_id: String, epoch: u64, host: String, state_uri: Option<String>, reason: String },

    /// An operator drained the host (`drain`: no new cells, its cells evicted elsewhere) or
    /// took it back into service.
    #[serde(rename = "dev.warden.host.drain.v1")]
    HostDrain { host: String, drain: bool },

    /// A host enrolled with a join token; `principal` is its host key.
    #[serde(rename = "dev.warden.host.enrolled.v1")]
    HostEnrolled { host: String, principal: String, channel: Option<String>, tags: Vec<String> },

    /// An admin created a join token (`warden tokens create`). `secret_sha256` is the hex
    /// SHA-256 of its secret: the secret itself is shown once to its creator and never
    /// journaled. It enrolls hosts until `expires_at_ms` (the control plane's clock), at most
    /// `max_uses` times if set.
    #[serde(rename = "dev.warden.host.token.created.v1")]
    HostTokenCreated { token_id: String, secret_sha256: String, expires_at_ms: u64, max_uses: Option<u32>, created_by: String },

    /// A host enrolled with the join token `token_id` (one use of it).
    #[serde(rename = "dev.warden.host.token.used.v1")]
    HostTokenUsed { token_id: String, host: String },

    /// An admin revoked the join token `token_id`: it enrolls no host any more.
    #[serde(rename = "dev.warden.host.token.revoked.v1")]
    HostTokenRevoked { token_id: String },

    /// An admin removed the host (`warden hosts remove`): its cells were written off just
    /// before this event, and its host key `principal` is refused from now on, for good.
    #[serde(rename = "dev.warden.host.removed.v1")]
    HostRemoved { host: String, principal: String, reason: String },

    /// No heartbeat from the host for `host_ttl`.
    #[serde(rename = "dev.warden.host.down.v1")]
    HostDown { host: String, reason: String },

    /// A heartbeat from a host that was down.
    #[serde(rename = "dev.warden.host.up.v1")]
    HostUp { host: String },

    /// The cell's process exists.
    #[serde(rename = "dev.warden.lifecycle.started.v1")]
    LifecycleStarted {
        workload_id: String,
        cell_id: String,
        vmid: u32,
        pid: u32,
        /// Start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22), so a
        /// recycled pid is never mistaken for this cell.
        pid_start_time: u64,
        spec_id: String,
    },

    /// The cell is gone. `exit_code` is present only when a real exit code is known.
    #[serde(rename = "dev.warden.lifecycle.destroyed.v1")]
    LifecycleDestroyed {
        workload_id: String,
        cell_id: String,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        terminal_state: Option<LifecycleTerminalState>,
        /// How long the cell ran, when it was known to have started.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ran_ms: Option<u64>,
    },

    /// A restart is scheduled after an exponential delay.
    #[serde(rename = "dev.warden.workload.backoff.v1")]
    WorkloadBackoff { workload_id: String, consecutive_failures: u32, delay_ms: u64, until_ms: u64 },

    /// SIGTERM is being sent to the cell's process group.
    #[serde(rename = "dev.warden.workload.stopping.v1")]
    WorkloadStopping { workload_id: String, reason: StopReason, kill_at_ms: u64 },

    /// The grace period ran out; SIGKILL is being sent.
    #[serde(rename = "dev.warden.workload.stop-escalated.v1")]
    WorkloadStopEscalated { workload_id: String },

    /// Terminal: the cell exited 0 and the policy does not restart it.
    #[serde(rename = "dev.warden.workload.completed.v1")]
    WorkloadCompleted { workload_id: String },

    /// Terminal: the policy gave up.
    #[serde(rename = "dev.warden.workload.failed.v1")]
    WorkloadFailed { workload_id: String, consecutive_failures: u32, reason: String },

    /// Terminal: stopped on request.
    #[serde(rename = "dev.warden.workload.stopped.v1")]
    WorkloadStopped { workload_id: String, reason: String },

    /// Terminal: the workload's `ttl` ran out.
    #[serde(rename = "dev.warden.workload.expired.v1")]
    WorkloadExpired { workload_id: String },

    /// A job run's kernel event (see `job::KernelEvent`); `data.kind` says which.
    #[serde(rename = "dev.warden.job.kernel.v1")]
    Job(JobEvent),

    /// The agent running `cell_id` stored a checkpoint of its `state_dir` (encrypted, in the
    /// control plane's blob store); `state_uri` (`blob:sha256:<hex>`) is the workload's latest.
    #[serde(rename = "dev.warden.workload.checkpointed.v1")]
    CheckpointTaken { workload_id: String, cell_id: String, state_uri: String, size_bytes: u64 },

    /// Written by wardens before issue 14, which cut a damaged tail by themselves at start-up;
    /// kept so their journals still replay. Nothing writes it any more: see `JournalRepaired`.
    #[serde(rename = "dev.warden.journal.recovered.v1")]
    JournalRecovered { discarded_from_seq: u64, n_discarded: u64, reason: String },

    /// An operator repaired damaged history (`warden journal repair --truncate-after N`): every
    /// event after `truncated_after` was discarded, after being saved to `saved_to`; this event
    /// is `truncated_after + 1`. `reason` is what the chain check found (`event 17: hash
    /// mismatch`), `operator` who ran the repair (the local user and host: the server was down).
    #[serde(rename = "dev.warden.journal.repaired.v1")]
    JournalRepaired {
        truncated_after: u64,
        n_discarded: u64,
        first_bad_seq: u64,
        reason: String,
        saved_to: String,
        operator: String,
    },

    /// `warden restore` rebuilt this journal from a backup: every event before this one is the
    /// backup's (the same seqs and hashes), up to `head_seq`; this is the first after it.
    #[serde(rename = "dev.warden.journal.restored.v1")]
    JournalRestored {
        /// When the backup was taken (RFC 3339), and on which machine.
        backup_created_at: String,
        taken_on: String,
        /// The backup's signed head: the last event it held.
        head_seq: u64,
        head_hash: String,
        n_artifacts: u64,
    },

    /// The workload runs `spec` from now on (a rollout, or its rollback): its cell is replaced.
    #[serde(rename = "dev.warden.workload.replaced.v1")]
    WorkloadReplaced { workload_id: String, spec_id: String, spec: Spec, reason: String },

    /// A rollout began: every host with what it ran, in dispatch order, and the policy.
    #[serde(rename = "dev.warden.rollout.started.v1")]
    RolloutStarted(RolloutStart),

    /// A rollout moved: a host's step (`kind = host`), or the rollout's own (a wave, a halt, …).
    #[serde(rename = "dev.warden.rollout.progressed.v1")]
    RolloutProgressed { rollout_id: String, event: RolloutEvent },

    /// An operator paused (no more dispatches or waves) or resumed a rollout.
    #[serde(rename = "dev.warden.rollout.paused.v1")]
    RolloutPaused { rollout_id: String, paused: bool },

    /// An admin added an API key (`warden keys add`): `principal` (`ed25519:<hex>`) may sign
    /// requests from now on, as `role`, in `namespaces` (none for an admin: it holds them all).
    #[serde(rename = "dev.warden.key.added.v1")]
    KeyAdded { name: String, principal: String, role: Role, namespaces: Vec<String> },

    /// An admin revoked the key `name`: its next request is refused.
    #[serde(rename = "dev.warden.key.revoked.v1")]
    KeyRevoked { name: String },

    /// An operator put version `version` of the secret `name` in `namespace` (`warden secret
    /// put`). `sealed` is the value as the control plane sealed it (base64 of nonce ‖
    /// ciphertext, bound to namespace, name and version): never the value itself.
    #[serde(rename = "dev.warden.secret.put.v1")]
    SecretPut { namespace: String, name: String, version: u64, sealed: String, put_by: String },

    /// An operator removed a secret: cells that refer to it fail their next start.
    #[serde(rename = "dev.warden.secret.removed.v1")]
    SecretRemoved { namespace: String, name: String, removed_by: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
}

impl EventData {
    /// The workload this event is about, which is also the CloudEvents `subject`.
    pub fn workload_id(&self) -> Option<&str> {
        match self {
            EventData::WorkloadSubmitted { workload, .. } => Some(&workload.id),
            EventData::WorkloadStarting { workload_id, .. }
            | EventData::LifecycleStarted { workload_id, .. }
            | EventData::LifecycleDestroyed { workload_id, .. }
            | EventData::WorkloadBackoff { workload_id, .. }
            | EventData::WorkloadStopping { workload_id, .. }
            | EventData::WorkloadStopEscalated { workload_id }
            | EventData::WorkloadCompleted { workload_id }
            | EventData::WorkloadFailed { workload_id, .. }
            | EventData::WorkloadStopped { workload_id, .. }
            | EventData::WorkloadExpired { workload_id }
            | EventData::CellPlaced { workload_id, .. }
            | EventData::WorkloadFailover { workload_id, .. }
            | EventData::StandbyArmed { workload_id, .. }
            | EventData::StandbyReleased { workload_id, .. }
            | EventData::LeaseGranted { workload_id, .. }
            | EventData::LeaseReleased { workload_id, .. }
            | EventData::LeaseRevoked { workload_id, .. }
            | EventData::CheckpointTaken { workload_id, .. }
            | EventData::WorkloadReplaced { workload_id, .. } => Some(workload_id),
            EventData::Job(_)
            | EventData::JournalRecovered { .. }
            | EventData::JournalRepaired { .. }
            | EventData::JournalRestored { .. }
            | EventData::HostEnrolled { .. }
            | EventData::HostDown { .. }
            | EventData::HostDrain { .. }
            | EventData::HostUp { .. }
            | EventData::HostTokenCreated { .. }
            | EventData::HostTokenUsed { .. }
            | EventData::HostTokenRevoked { .. }
            | EventData::HostRemoved { .. }
            | EventData::RolloutStarted(_)
            | EventData::RolloutProgressed { .. }
            | EventData::RolloutPaused { .. }
            | EventData::KeyAdded { .. }
            | EventData::KeyRevoked { .. }
            | EventData::SecretPut { .. }
            | EventData::SecretRemoved { .. } => None,
        }
    }

    /// The CloudEvents `subject`: the workload, or the job run, this event is about.
    pub fn subject(&self) -> Option<&str> {
        match self {
            EventData::Job(job) => Some(&job.run_id),
            EventData::HostEnrolled { host, .. }
            | EventData::HostDown { host, .. }
            | EventData::HostUp { host }
            | EventData::HostDrain { host, .. }
            | EventData::HostRemoved { host, .. } => Some(host),
            EventData::HostTokenCreated { token_id, .. }
            | EventData::HostTokenUsed { token_id, .. }
            | EventData::HostTokenRevoked { token_id } => Some(token_id),
            EventData::RolloutStarted(start) => Some(&start.rollout_id),
            EventData::RolloutProgressed { rollout_id, .. } | EventData::RolloutPaused { rollout_id, .. } => Some(rollout_id),
            other => other.workload_id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_cloudevents_with_seq_and_prevhash() {
        let new = NewEvent {
            id: "e1".into(),
            source: "/warden/node-1".into(),
            time_ms: 1_795_445_345_123,
            subject: Some("w-1".into()),
            data: EventData::WorkloadCompleted { workload_id: "w-1".into() },
        };
        let event = CloudEvent::seal(&new, 7, GENESIS_HASH);
        let json: serde_json::Value = serde_json::from_slice(&event.canonical_bytes()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "dev.warden.workload.completed.v1");
        assert_eq!(json["time"], "2026-11-23T14:49:05.123Z");
        assert_eq!(json["seq"], 7);
        assert_eq!(json["data"]["workload_id"], "w-1");
        assert_eq!(event.typed_data().unwrap(), new.data);
        assert_eq!(event.hash().len(), 64);
        // The fast path and the general canonical form must never disagree, with or without subject.
        assert_eq!(event.canonical_bytes(), crate::canonical::canonical_json(&event));
        let no_subject = CloudEvent { subject: None, ..event };
        assert_eq!(no_subject.canonical_bytes(), crate::canonical::canonical_json(&no_subject));
    }

    #[test]
    fn job_events_are_flat_with_kind_and_round_trip() {
        use crate::job::{KernelEvent, StateError};
        let data = EventData::Job(JobEvent {
            run_id: "r-1".into(),
            owner: None,
            event: KernelEvent::StateFailed {
                state_id: "transform".into(),
                error: StateError::orphaned(),
                failure_snapshot_id: None,
            },
        });
        let new = NewEvent { id: "x".into(), source: "s".into(), time_ms: 0, subject: data.subject().map(str::to_owned), data };
        let event = CloudEvent::seal(&new, 1, GENESIS_HASH);
        assert_eq!(event.event_type, "dev.warden.job.kernel.v1");
        assert_eq!(event.subject.as_deref(), Some("r-1"));
        assert_eq!(event.data["kind"], "StateFailed");
        assert_eq!(event.data["state_id"], "transform");
        assert_eq!(event.data["error"]["code"], "orphaned");
        assert!(!event.data.as_object().unwrap().contains_key("owner"));
        assert_eq!(event.typed_data().unwrap(), new.data);
    }

    #[test]
    fn destroyed_omits_unknown_exit_code() {
        let data = EventData::LifecycleDestroyed {
            workload_id: "w".into(),
            cell_id: "w.1".into(),
            outcome: Outcome::Failed,
            exit_code: None,
            signal: Some(9),
            reason: "killed by SIGKILL".into(),
            terminal_state: None,
            ran_ms: None,
        };
        let event =
            CloudEvent::seal(&NewEvent { id: "x".into(), source: "s".into(), time_ms: 0, subject: None, data }, 1, GENESIS_HASH);
        let object = event.data.as_object().unwrap();
        assert!(!object.contains_key("exit_code"));
        assert!(!object.contains_key("terminal_state"));
        assert_eq!(object["signal"], 9);
    }
}
