//! The HTTP/JSON API under `/v1/`: every request but `/v1/health`, `/metrics` and enrollment is
//! signed by an authorized key. This file is the route table: which handler answers what; who
//! may call it is its rule in `authz::rules()`, which also picks its authentication. Each area's
//! handlers are in their own room.

mod agents;
mod authn;
pub mod authz;
mod blobs;
mod events;
mod jobs;
mod keys;
mod rollouts;
mod secrets;
mod state;
mod tokens;
mod workloads;

use axum::middleware::{self};
use axum::{Json, Router};

use agents::{
    agent_acquire, agent_commands, agent_enroll, agent_heartbeat, agent_logs, agent_revoke, agent_rollout, drain_host, hosts,
    remove_host,
};
use authn::{authenticate, authenticate_blobs, authenticate_host};
use authz::Access;
use blobs::{blob_get, blob_put};
use events::{events, events_head, metrics};
use jobs::{artifact, job_cancel, job_history, job_list, job_run, job_status};
use keys::{key_add, key_list, key_revoke};
use rollouts::{rollout_control, rollout_list, rollout_start, rollout_status};
use secrets::{secret_list, secret_put, secret_remove};
use tokens::{token_create, token_list, token_revoke};
use workloads::{checkpoint_now, list, logs, status, stop, submit};

pub use authz::{rules, Rule, Target};
pub use state::ApiState;
pub(crate) use tokens::create_with as create_join_token;

pub fn router(state: ApiState) -> Router {
    let mut routes = Routes::default();
    routes.add("POST", "/v1/workloads", submit);
    routes.add("GET", "/v1/workloads", list);
    routes.add("GET", "/v1/workloads/:id", status);
    routes.add("POST", "/v1/workloads/:id/stop", stop);
    routes.add("POST", "/v1/workloads/:id/checkpoint", checkpoint_now);
    routes.add("GET", "/v1/workloads/:id/logs", logs);
    routes.add("GET", "/v1/events", events);
    routes.add("GET", "/v1/events/head", events_head);
    routes.add("POST", "/v1/jobs", job_run);
    routes.add("GET", "/v1/jobs", job_list);
    routes.add("GET", "/v1/jobs/:id", job_status);
    routes.add("GET", "/v1/jobs/:id/history", job_history);
    routes.add("POST", "/v1/jobs/:id/cancel", job_cancel);
    routes.add("GET", "/v1/artifacts/:id", artifact);
    routes.add("GET", "/v1/hosts", hosts);
    routes.add("POST", "/v1/hosts/:name/drain", drain_host);
    routes.add("POST", "/v1/hosts/:name/remove", remove_host);
    routes.add("POST", "/v1/tokens", token_create);
    routes.add("GET", "/v1/tokens", token_list);
    routes.add("POST", "/v1/tokens/:id/revoke", token_revoke);
    routes.add("POST", "/v1/rollouts", rollout_start);
    routes.add("GET", "/v1/rollouts", rollout_list);
    routes.add("GET", "/v1/rollouts/:id", rollout_status);
    routes.add("POST", "/v1/rollouts/:id/:control", rollout_control);
    routes.add("POST", "/v1/keys", key_add);
    routes.add("GET", "/v1/keys", key_list);
    routes.add("POST", "/v1/keys/:name/revoke", key_revoke);
    routes.add("PUT", "/v1/secrets/:namespace/:name", secret_put);
    routes.add("GET", "/v1/secrets", secret_list);
    routes.add("DELETE", "/v1/secrets/:namespace/:name", secret_remove);
    // Agents sign with their host keys, which may call nothing but these.
    routes.add("POST", "/v1/agents/heartbeat", agent_heartbeat);
    routes.add("POST", "/v1/agents/acquire", agent_acquire);
    routes.add("POST", "/v1/agents/revoke", agent_revoke);
    routes.add("POST", "/v1/agents/logs/:request", agent_logs);
    routes.add("GET", "/v1/agents/commands", agent_commands);
    routes.add("POST", "/v1/agents/rollout", agent_rollout);
    // Checkpoint blobs: hosts store and fetch them, admins may fetch them; bodies up to
    // MAX_BLOB_BYTES (only here: everything else keeps MAX_BODY_BYTES).
    routes.add("PUT", "/v1/blobs/:hex", blob_put);
    routes.add("GET", "/v1/blobs/:hex", blob_get);
    routes.add("GET", "/v1/health", || async { Json(serde_json::json!({"status": "ok"})) });
    routes.add("GET", "/metrics", metrics);
    routes.add("POST", "/v1/agents/enroll", agent_enroll);
    routes.build(state)
}

/// The router under construction, one sub-router per kind of access: each route goes where its
/// rule (`authz::rules()`) says, so the rule decides which authentication wraps it.
#[derive(Default)]
struct Routes {
    public: Router<ApiState>,
    roles: Router<ApiState>,
    hosts: Router<ApiState>,
    blobs: Router<ApiState>,
    added: Vec<(&'static str, &'static str)>,
}

impl Routes {
    /// Adds `handler` for `method path`. Panics if the route has no rule: a route added
    /// without deciding who may call it fails every test that starts a server.
    fn add<H, T>(&mut self, method: &'static str, path: &'static str, handler: H)
    where
        H: axum::handler::Handler<T, ApiState>,
        T: 'static,
    {
        let rule = authz::rule_for(method, path)
            .unwrap_or_else(|| panic!("{method} {path} has no rule in api::authz::rules(): say who may call it"));
        let route = axum::routing::on(authz::method_filter(method), handler);
        let router = match rule.access {
            Access::Public => &mut self.public,
            Access::Role { .. } => &mut self.roles,
            Access::Host => &mut self.hosts,
            Access::HostOrAdmin => &mut self.blobs,
        };
        *router = std::mem::take(router).route(path, route);
        self.added.push((method, path));
    }

    /// The router, with each kind of access behind its layers. Panics if a rule has no route
    /// (the matrix test would otherwise call routes that do not exist).
    fn build(self, state: ApiState) -> Router {
        for rule in authz::rules() {
            assert!(
                self.added.contains(&(rule.method, rule.path)),
                "rule {} {} has no route: remove it from api::authz::rules()",
                rule.method,
                rule.path
            );
        }
        // Layers run outside in: authentication (who signed) first, then authorization.
        let roles = self
            .roles
            .layer(middleware::from_fn_with_state(state.clone(), authz::authorize_request))
            .layer(middleware::from_fn_with_state(state.clone(), authenticate));
        let hosts = self.hosts.layer(middleware::from_fn_with_state(state.clone(), authenticate_host));
        let blobs = self
            .blobs
            .layer(middleware::from_fn_with_state(state.clone(), authz::authorize_blob))
            .layer(middleware::from_fn_with_state(state.clone(), authenticate_blobs));
        self.public
            .merge(roles)
            .merge(hosts)
            .merge(blobs)
            // One body limit: the authentication layers read at most MAX_BODY_BYTES (blobs:
            // MAX_BLOB_BYTES) once the header is authenticated; the extractors behind them
            // (`Json`, `Bytes`) get the same figure instead of axum's own 2 MiB default.
            .layer(axum::extract::DefaultBodyLimit::max(state::MAX_BODY_BYTES))
            .with_state(state)
    }
}
