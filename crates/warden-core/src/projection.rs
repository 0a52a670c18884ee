//! The projection: every workload's state, folded from the journal, with the one `advance` loop
//! that turns an input into events, applies them and returns the effects to carry out.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::event::{CloudEvent, EventData};
use crate::job::RunRecord;
use crate::keys::KeyRecord;
use crate::rollout::RolloutRecord;
use crate::spec::Spec;
use crate::time::parse_rfc3339_ms;
use crate::types::WorkloadInfo;
use crate::workload::{Decision, Input, StepError, Workload};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    pub workloads: BTreeMap<String, Workload>,
    /// The next `vmid` to hand out; vmids are never reused.
    pub next_vmid: u32,
    /// The `seq` of the last event folded in.
    pub last_seq: u64,
    /// Job runs by run id.
    #[serde(default)]
    pub runs: BTreeMap<String, RunRecord>,
    /// Cluster hosts by name.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostRecord>,
    /// Primary leases by workload id: epoch and holder. Expiry is not journaled (renewals are
    /// not events); after a restart every held lease counts as renewed then (`lease::after_restart`).
    #[serde(default)]
    pub leases: BTreeMap<String, LeaseRecord>,
    /// Rollouts by id.
    #[serde(default)]
    pub rollouts: BTreeMap<String, RolloutRecord>,
    /// Live API keys by name (`warden keys`); revoked ones are gone.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyRecord>,
    /// Join tokens by id (`warden tokens`): what enrolls a host, and until when.
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinTokenRecord>,
    /// Host keys of removed hosts (`warden hosts remove`): refused on every route, for good.
    #[serde(default)]
    pub removed_host_keys: BTreeSet<String>,
    /// Live secrets by namespace and name (`warden secret`): sealed values only.
    #[serde(default)]
    pub secrets: crate::secrets::Secrets,
}

/// A join token as journaled: never its secret, only the secret's SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub token_id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub created_at_ms: u64,
    pub created_by: String,
    /// On the control plane's clock.
    pub expires_at_ms: u64,
    /// `None`: any number of hosts until it expires.
    pub max_uses: Option<u32>,
    pub n_used: u32,
    pub revoked: bool,
}

/// Whether a join token still enrolls hosts, or why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinTokenState {
    Live,
    Expired,
    UsedUp,
    Revoked,
}

impl JoinTokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinTokenState::Live => "live",
            JoinTokenState::Expired => "expired",
            JoinTokenState::UsedUp => "used-up",
            JoinTokenState::Revoked => "revoked",
        }
    }
}

impl JoinTokenRecord {
    /// The token's state at `now_ms`; a revoked token is revoked whatever else holds.
    pub fn state(&self, now_ms: u64) -> JoinTokenState {
        if self.revoked {
            JoinTokenState::Revoked
        } else if self.max_uses.is_some_and(|max| self.n_used >= max) {
            JoinTokenState::UsedUp
        } else if now_ms >= self.expires_at_ms {
            JoinTokenState::Expired
        } else {
            JoinTokenState::Live
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub principal: String,
    pub channel: Option<String>,
    pub tags: Vec<String>,
    pub up: bool,
    pub enrolled_at_ms: u64,
    /// When `up` last changed.
    pub since_ms: u64,
    /// Drained by an operator: takes no new cells or standbys.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub epoch: u64,
    /// `None` once released.
    pub holder: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("event {seq}: unknown type or malformed data")]
    Malformed { seq: u64, source: serde_json::Error },
    #[error("event {seq}: bad time {time:?}")]
    BadTime { seq: u64, time: String },
    #[error("event {seq}: expected seq {expected}")]
    Gap { seq: u64, expected: u64 },
}

/// Upper bound on the follow-up steps one input can cause (exit → backoff → start is three).
const MAX_FOLLOW_UP_STEPS: usize = 8;

impl Projection {
    /// The workloads `wanted` names, as a user types it: a full id (exactly that one), a unique
    /// id prefix, a `consumer_workload_id`, or a spec name — the live workloads of that name, or
    /// when none is live the latest that had it (`warden status web` after `web` completed).
    /// Several answers are an ambiguity for the caller to name (after hiding what it may not see).
    pub fn find_workloads(&self, wanted: &str) -> Vec<&Workload> {
        if let Some(workload) = self.workloads.get(wanted) {
            return vec![workload];
        }
        if wanted.is_empty() {
            return Vec::new();
        }
        let by_id: Vec<&Workload> = self
            .workloads
            .values()
            .filter(|w| w.id().starts_with(wanted) || w.info.consumer_workload_id.as_deref() == Some(wanted))
            .collect();
        if !by_id.is_empty() {
            return by_id;
        }
        let named = self.workloads.values().filter(|w| w.spec.name == wanted);
        let live: Vec<&Workload> = named.clone().filter(|w| !w.phase.is_terminal()).collect();
        if !live.is_empty() {
            return live;
        }
        named.max_by_key(|w| w.info.vmid).into_iter().collect()
    }

    /// Folds one journaled event in. Events must arrive in `seq` order without gaps.
    pub fn apply_event(&mut self, event: &CloudEvent) -> Result<(), ReplayError> {
        if event.seq != self.last_seq + 1 {
            return Err(ReplayError::Gap { seq: event.seq, expected: self.last_seq + 1 });
        }
        let data = event.typed_data().map_err(|source| ReplayError::Malformed { seq: event.seq, source })?;
        let at_ms =
            parse_rfc3339_ms(&event.time).ok_or_else(|| ReplayError::BadTime { seq: event.seq, time: event.time.clone() })?;
        self.apply_data(&data, at_ms);
        self.last_seq = event.seq;
        Ok(())
    }

    /// Records one event's effect on the state (live and replay share this).
    pub fn apply_data(&mut self, data: &EventData, at_ms: u64) {
        if let EventData::WorkloadSubmitted { workload, spec, pinned_host } = data {
            self.next_vmid = self.next_vmid.max(workload.vmid + 1);
            let mut new = Workload::new(workload.clone(), spec.clone(), at_ms);
            new.pinned_host = pinned_host.clone();
            self.workloads.insert(workload.id.clone(), new);
            return;
        }
        if let EventData::Job(job) = data {
            match self.runs.get_mut(&job.run_id) {
                Some(run) => run.apply(&job.event, at_ms),
                None => {
                    if let Some(run) = RunRecord::start(job, at_ms) {
                        self.runs.insert(job.run_id.clone(), run);
                    }
                }
            }
            return;
        }
        match data {
            EventData::HostEnrolled { host, principal, channel, tags } => {
                let record = HostRecord {
                    name: host.clone(),
                    principal: principal.clone(),
                    channel: channel.clone(),
                    tags: tags.clone(),
                    up: true,
                    enrolled_at_ms: at_ms,
                    since_ms: at_ms,
                    draining: false,
                };
                self.hosts.insert(host.clone(), record);
                return;
            }
            EventData::HostRemoved { host, principal, .. } => {
                self.hosts.remove(host);
                self.removed_host_keys.insert(principal.clone());
                return;
            }
            EventData::HostTokenCreated { token_id, secret_sha256, expires_at_ms, max_uses, created_by } => {
                let record = JoinTokenRecord {
                    token_id: token_id.clone(),
                    secret_sha256: secret_sha256.clone(),
                    created_at_ms: at_ms,
                    created_by: created_by.clone(),
                    expires_at_ms: *expires_at_ms,
                    max_uses: *max_uses,
                    n_used: 0,
                    revoked: false,
                };
                self.join_tokens.insert(token_id.clone(), record);
                return;
            }
            EventData::HostTokenUsed { token_id, .. } => {
                if let Some(record) = self.join_tokens.get_mut(token_id) {
                    record.n_used = record.n_used.saturating_add(1);
                }
                return;
            }
            EventData::HostTokenRevoked { token_id } => {
                if let Some(record) = self.join_tokens.get_mut(token_id) {
                    record.revoked = true;
                }
                return;
            }
            EventData::HostDown { host, .. } | EventData::HostUp { host } => {
                if let Some(record) = self.hosts.get_mut(host) {
                    record.up = matches!(data, EventData::HostUp { .. });
                    record.since_ms = at_ms;
                }
                return;
            }
            EventData::LeaseGranted { workload_id, epoch, host } => {
                self.leases.insert(workload_id.clone(), LeaseRecord { epoch: *epoch, holder: Some(host.clone()) });
                return;
            }
            EventData::HostDrain { host, drain } => {
                if let Some(record) = self.hosts.get_mut(host) {
                    record.draining = *drain;
                }
                return;
            }
            EventData::LeaseRevoked { workload_id, epoch, state_uri, .. } => {
                if let Some(lease) = self.leases.get_mut(workload_id).filter(|l| l.epoch == *epoch) {
                    lease.holder = None;
                }
                if let (Some(uri), Some(w)) = (state_uri, self.workloads.get_mut(workload_id)) {
                    w.info.state_uri = Some(uri.clone());
                }
                return;
            }
            EventData::RolloutStarted(start) => {
                if let Some(record) = RolloutRecord::start(start, at_ms) {
                    self.rollouts.insert(start.rollout_id.clone(), record);
                }
                return;
            }
            EventData::RolloutProgressed { rollout_id, event } => {
                if let Some(record) = self.rollouts.get_mut(rollout_id) {
                    record.rollout.apply(event, at_ms);
                }
                return;
            }
            EventData::RolloutPaused { rollout_id, paused } => {
                if let Some(record) = self.rollouts.get_mut(rollout_id) {
                    record.paused = *paused;
                }
                return;
            }
            EventData::KeyAdded { .. } | EventData::KeyRevoked { .. } => {
                crate::keys::apply(&mut self.keys, data, at_ms);
                return;
            }
            EventData::SecretPut { .. } | EventData::SecretRemoved { .. } => {
                crate::secrets::apply(&mut self.secrets, data, at_ms);
                return;
            }
            EventData::LeaseReleased { workload_id, epoch } => {
                if let Some(lease) = self.leases.get_mut(workload_id).filter(|l| l.epoch == *epoch) {
                    lease.holder = None;
                }
                return;
            }
            _ => {}
        }
        if let Some(workload) = data.workload_id().and_then(|id| self.workloads.get_mut(id)) {
            workload.apply(data, at_ms);
        }
    }

    /// Accepts a new workload: assigns its `vmid` and lets it take its first step.
    pub fn submit(&mut self, info: WorkloadInfo, spec: Spec, now_ms: u64) -> Decision {
        self.submit_pinned(info, spec, None, now_ms)
    }

    /// `submit`, for an instance that may run only on `pinned_host` (`each-host` placement).
    pub fn submit_pinned(&mut self, mut info: WorkloadInfo, spec: Spec, pinned_host: Option<String>, now_ms: u64) -> Decision {
        info.vmid = self.next_vmid.max(1);
        let id = info.id.clone();
        let submitted = EventData::WorkloadSubmitted { workload: info, spec, pinned_host };
        self.apply_data(&submitted, now_ms);
        let mut decision = self.advance(&id, &Input::Tick, now_ms).expect("a pending workload accepts a tick");
        decision.events.insert(0, submitted);
        decision
    }

    /// Steps workload `id` with `input`, applies the events, then keeps ticking until it is quiet.
    pub fn advance(&mut self, id: &str, input: &Input, now_ms: u64) -> Result<Decision, AdvanceError> {
        let workload = self.workloads.get_mut(id).ok_or_else(|| AdvanceError::UnknownWorkload(id.to_string()))?;
        let mut total = workload.step(input, now_ms)?;
        for data in &total.events {
            workload.apply(data, now_ms);
        }
        for _ in 0..MAX_FOLLOW_UP_STEPS {
            let follow_up = workload.step(&Input::Tick, now_ms)?;
            if follow_up.events.is_empty() {
                break;
            }
            for data in &follow_up.events {
                workload.apply(data, now_ms);
            }
            total.events.extend(follow_up.events);
            total.effects.extend(follow_up.effects);
        }
        Ok(total)
    }

    /// The earliest deadline of any workload.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.workloads.values().filter_map(Workload::next_deadline_ms).min()
    }

    /// Workloads with a deadline at or before `now_ms`.
    pub fn due(&self, now_ms: u64) -> Vec<String> {
        self.workloads
            .values()
            .filter(|w| w.next_deadline_ms().is_some_and(|at| at <= now_ms))
            .map(|w| w.id().to_string())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvanceError {
    #[error("no workload {0}")]
    UnknownWorkload(String),
    #[error(transparent)]
    Step(#[from] StepError),
}
