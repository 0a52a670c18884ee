//! What the journal and the projection keep around a rollout: the start as journaled
//! ([`RolloutStart`], everything replay needs to rebuild it), a service rollout's specs and
//! workloads ([`ServiceRollout`]), and the record the projection folds ([`RolloutRecord`]:
//! the rollout, who started it, and an operator's pause).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rollout::fleet::{next_actions, Action, Rollout};
use crate::rollout::host::HostRolloutSnapshot;
use crate::rollout::legality::HostRolloutState;
use crate::rollout::policy::RolloutPolicy;
use crate::spec::Spec;

/// What `dev.warden.rollout.started.v1` records: everything [`Rollout::new`] needs, so replay
/// rebuilds the same rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStart {
    pub rollout_id: String,
    /// The service's name for a service rollout, else the hosts' channel (or `*`): what a
    /// quarantine is about.
    pub channel: String,
    pub target: String,
    pub policy: RolloutPolicy,
    /// In dispatch order, each with what it runs now.
    pub hosts: Vec<(String, Option<String>)>,
    /// A service rollout; `None`: a host activation (the policy's `activate`/`rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRollout>,
    /// The principal that started it.
    pub started_by: String,
}

/// A service moving to a new spec: which of its workloads run on which host, and every spec
/// involved, so a rollback can put back exactly what ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRollout {
    /// The id the service was submitted with.
    pub name: String,
    /// The target spec (its `spec_id` is the rollout's `target`).
    pub spec: Spec,
    /// The specs the service's workloads ran when the rollout started, by `spec_id`.
    pub previous: BTreeMap<String, Spec>,
    /// By host: the service's workloads whose cells run there.
    pub workloads: BTreeMap<String, Vec<String>>,
}

/// A rollout as the projection keeps it: the rollout plus what the runtime needs around it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub rollout: Rollout,
    pub service: Option<ServiceRollout>,
    /// Paused by an operator: no dispatches and no new waves (reports are still taken).
    pub paused: bool,
    pub started_by: String,
    pub started_at_ms: u64,
}

impl RolloutRecord {
    /// The record a journaled start folds into; `None` if the start is not a valid rollout
    /// (the runtime checks with [`Rollout::new`] before journaling, so replay never sees one).
    pub fn start(start: &RolloutStart, at_ms: u64) -> Option<RolloutRecord> {
        let rollout =
            Rollout::new(&start.rollout_id, &start.channel, &start.target, start.policy.clone(), &start.hosts, at_ms).ok()?;
        Some(RolloutRecord {
            rollout,
            service: start.service.clone(),
            paused: false,
            started_by: start.started_by.clone(),
            started_at_ms: at_ms,
        })
    }

    /// Nothing more will happen without an operator: completed, or halted (or undone) with no
    /// host in flight or reverting.
    pub fn is_settled(&self) -> bool {
        let busy = |h: &HostRolloutSnapshot| h.state.is_in_flight() || h.state == HostRolloutState::Reverting;
        let moving = self.rollout.hosts.values().any(busy);
        (self.rollout.completed && !self.rollout.undone) || (self.rollout.halted.is_some() && !moving)
    }

    /// `running|paused|halted|completed|undone`.
    pub fn state_name(&self) -> &'static str {
        match &self.rollout {
            r if r.undone => "undone",
            r if r.completed => "completed",
            r if r.halted.is_some() => "halted",
            _ if self.paused => "paused",
            _ => "running",
        }
    }

    /// [`next_actions`], minus what a pause holds back (dispatches, new waves, completion).
    pub fn next_actions(&self, now_ms: u64) -> Vec<Action> {
        let actions = next_actions(&self.rollout, now_ms);
        if !self.paused {
            return actions;
        }
        actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Dispatch { .. } | Action::AdvanceWave { .. } | Action::Complete))
            .collect()
    }
}
