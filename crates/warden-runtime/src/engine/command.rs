//! What the engine task is asked to do (one closed enum of inputs), and how callers are answered:
//! failures at once, successes only once the batch that decided them is durable.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::oneshot;
use warden_core::job::JobManifest;
use warden_core::workload::Input;
use warden_core::{Projection, Spec};

use super::rollouts;
use crate::error::ApiError;
use crate::proto::{
    AcquireRequest, AcquireResponse, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatResponse, RevokeRequest, RolloutReport,
    RolloutReportResponse,
};
use crate::view::{KeyView, RolloutRequest, RolloutView, RunView, SecretView, TokenView, WorkloadView};

pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Every job manifest the engine knows, by `manifest_id`: written by the engine, read by the
/// API's views (manifests are immutable artifacts, so a cached one is never stale).
pub type Manifests = Arc<RwLock<BTreeMap<String, Arc<JobManifest>>>>;

/// Everything the engine task handles: one closed enum. (Each command is built once and moved
/// through the channel, so the spread of variant sizes costs nothing worth boxing for.)
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Submit {
        spec: Spec,
        owner: String,
        consumer_workload_id: Option<String>,
        reply: Reply<WorkloadView>,
    },
    Stop {
        id: String,
        caller: String,
        reply: Reply<WorkloadView>,
    },
    /// A local cell started, failed to start, or exited (from its watcher).
    Cell {
        workload_id: String,
        input: Input,
    },
    /// Start a job run: `input` is its initial context.
    JobRun {
        manifest: JobManifest,
        input: serde_json::Value,
        owner: String,
        reply: Reply<RunView>,
    },
    /// Cancel a run: its running steps are stopped, and it ends `cancelled`.
    JobCancel {
        run_id: String,
        caller: String,
        reply: Reply<RunView>,
    },
    /// A host enrolls with a join token (already checked) and its host key `principal`.
    Enroll {
        request: EnrollRequest,
        principal: String,
        reply: Reply<EnrollResponse>,
    },
    /// An agent's heartbeat, signed by `principal`.
    Heartbeat {
        principal: String,
        heartbeat: Heartbeat,
        reply: Reply<HeartbeatResponse>,
    },
    /// An admin removes a host: its cells are written off, its key refused for good.
    HostRemove {
        host: String,
        caller: String,
        reply: Reply<()>,
    },
    /// An admin creates a join token; only the hash of its secret reaches the engine.
    TokenCreate {
        token_id: String,
        secret_sha256: String,
        ttl_ms: u64,
        max_uses: Option<u32>,
        caller: String,
        reply: Reply<TokenView>,
    },
    /// An admin revokes a join token.
    TokenRevoke {
        token_id: String,
        reply: Reply<TokenView>,
    },
    /// An operator drains a host (or takes it back into service).
    Drain {
        host: String,
        drain: bool,
        reply: Reply<()>,
    },
    /// A host signed by `principal` evicted a primary and gives its lease up.
    Revoke {
        principal: String,
        request: RevokeRequest,
        reply: Reply<()>,
    },
    /// A standby on a host signed by `principal` asks for a workload's lease.
    Acquire {
        principal: String,
        request: AcquireRequest,
        reply: Reply<AcquireResponse>,
    },
    /// Start a rollout (`warden rollout start`).
    RolloutStart {
        request: RolloutRequest,
        caller: String,
        reply: Reply<RolloutView>,
    },
    /// Pause, resume or undo a rollout.
    RolloutControl {
        id: String,
        control: rollouts::Control,
        caller: String,
        reply: Reply<RolloutView>,
    },
    /// An admin adds an API key (`warden keys add`).
    KeyAdd {
        request: warden_core::keys::KeyRequest,
        reply: Reply<KeyView>,
    },
    /// An admin revokes an API key: its next request is refused.
    KeyRevoke {
        name: String,
        reply: Reply<()>,
    },
    /// An operator puts a secret's next version, already sealed by the API (`secrets.rs`): the
    /// engine never sees the value.
    SecretPut {
        namespace: String,
        name: String,
        version: u64,
        sealed: String,
        put_by: String,
        reply: Reply<SecretView>,
    },
    /// An operator removes a secret.
    SecretRemove {
        namespace: String,
        name: String,
        removed_by: String,
        reply: Reply<()>,
    },
    /// A host signed by `principal` reports on its part in a rollout.
    RolloutReport {
        principal: String,
        report: RolloutReport,
        reply: Reply<RolloutReportResponse>,
    },
}

/// Answers a caller. One that gave up (its HTTP request ended) is not an error: nobody is left
/// to tell, and what was decided stands.
pub fn send<T>(reply: Reply<T>, answer: Result<T, ApiError>) {
    let _ = reply.send(answer);
}

/// A caller waiting for the batch that decided its request to be durable.
pub enum Pending {
    Workload {
        id: String,
        /// Every workload one submission created (`instances = N`, `each-host`); empty otherwise.
        instances: Vec<String>,
        reply: Reply<WorkloadView>,
    },
    Run {
        run_id: String,
        reply: Reply<RunView>,
    },
    /// The reports the answer acknowledges are journaled.
    Heartbeat {
        response: HeartbeatResponse,
        reply: Reply<HeartbeatResponse>,
    },
    Enrolled {
        response: EnrollResponse,
        reply: Reply<EnrollResponse>,
    },
    Done {
        reply: Reply<()>,
    },
    /// A join token was created or revoked: answered with its durable state.
    Token {
        token_id: String,
        reply: Reply<TokenView>,
    },
    /// The grant is durable: the standby starts serving on it.
    Acquired {
        epoch: u64,
        reply: Reply<AcquireResponse>,
    },
    Rollout {
        id: String,
        reply: Reply<RolloutView>,
    },
    /// Answered with the key as journaled.
    Key {
        name: String,
        reply: Reply<KeyView>,
    },
    /// Answered with the secret's durable version (never its value).
    Secret {
        namespace: String,
        name: String,
        reply: Reply<SecretView>,
    },
    /// Answered with the host's snapshot after the report.
    RolloutReported {
        rollout_id: String,
        host: String,
        outcome: String,
        reply: Reply<RolloutReportResponse>,
    },
}

/// What answers need besides the durable projection.
pub struct AnswerContext<'a> {
    /// The control plane's own node name, for workload views.
    pub host: &'a str,
    pub manifests: &'a Manifests,
    pub now_ms: u64,
}

impl Pending {
    /// Answers from the durable projection (`shared`): what the caller sees is what a replay
    /// would rebuild.
    pub fn answer(self, shared: &Projection, context: &AnswerContext) {
        match self {
            Pending::Workload { id, instances, reply } => {
                let view = shared.workloads.get(&id).map(|w| WorkloadView { instances, ..WorkloadView::of(w, context.host) });
                send(reply, view.ok_or_else(|| ApiError::NotFound(format!("no workload {id}"))));
            }
            Pending::Run { run_id, reply } => {
                let view = shared.runs.get(&run_id).map(|run| {
                    let manifest = context.manifests.read().expect("manifests lock").get(&run.manifest_id).cloned();
                    RunView::of(run, manifest.as_deref())
                });
                send(reply, view.ok_or_else(|| ApiError::NotFound(format!("no job run {run_id}"))));
            }
            Pending::Heartbeat { response, reply } => send(reply, Ok(response)),
            Pending::Enrolled { response, reply } => send(reply, Ok(response)),
            Pending::Done { reply } => send(reply, Ok(())),
            Pending::Token { token_id, reply } => {
                let view = shared.join_tokens.get(&token_id).map(|t| TokenView::of(t, context.now_ms));
                send(reply, view.ok_or_else(|| ApiError::NotFound(format!("no join token {token_id}"))));
            }
            Pending::Acquired { epoch, reply } => send(reply, Ok(AcquireResponse { epoch })),
            Pending::Rollout { id, reply } => {
                let view = shared.rollouts.get(&id).map(|r| rollouts::view(r, context.now_ms));
                send(reply, view.ok_or_else(|| ApiError::NotFound(format!("no rollout {id}"))));
            }
            Pending::Key { name, reply } => {
                let view = shared.keys.get(&name).map(KeyView::of);
                send(reply, view.ok_or_else(|| ApiError::NotFound(format!("no key {name}"))));
            }
            Pending::Secret { namespace, name, reply } => {
                let record = shared.secrets.get(&namespace).and_then(|names| names.get(&name));
                let view = record.map(|record| SecretView::of(&namespace, &name, record));
                send(reply, view.ok_or_else(|| ApiError::NotFound(format!("no secret {name:?} in namespace {namespace:?}"))));
            }
            Pending::RolloutReported { rollout_id, host, outcome, reply } => {
                let snapshot = shared.rollouts.get(&rollout_id).and_then(|r| r.rollout.hosts.get(&host)).cloned();
                let answer = snapshot.map(|snapshot| RolloutReportResponse { snapshot, outcome });
                send(reply, answer.ok_or_else(|| ApiError::NotFound(format!("no rollout {rollout_id}"))));
            }
        }
    }
}
