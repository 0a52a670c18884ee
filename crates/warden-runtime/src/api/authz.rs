//! What each route lets whom do: the rule table (`rules()`), which the router is built from, and
//! the layer that, for every request signed by a key, finds the caller's `Principal`, the
//! route's `Action` and the `Resource` it touches, and asks `warden_core::authz::authorize`.
//!
//! Every route has exactly one rule; `router()` panics on a route without one (so does every
//! test that starts a server) and on a rule without a route, and the e2e matrix test
//! (`tests/e2e/authz_matrix.rs`) calls every rule's route as every role, in its own namespace
//! and in another. A resource in a namespace the caller holds no role in answers 404, exactly
//! like one that does not exist; a role too small for the action answers 403.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use warden_core::authz::{authorize, Action, Denied, Kind, Principal, Resource, Role, Scope};
use warden_core::job::JobManifest;
use warden_core::{CloudEvent, Projection};

use super::authn::BlobRole;
use super::state::{ApiState, Caller};
use crate::error::ApiError;
use crate::view::ErrorBody;

/// How a route's caller is authenticated and authorized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No signature (health, metrics, and enrollment, which presents the join token).
    Public,
    /// Enrolled hosts' keys only (agents); outside the role model.
    Host,
    /// An enrolled host's key, or an admin's (checkpoint blobs).
    HostOrAdmin,
    /// A key with a role: `authorize(principal, action, resource)`, the resource found by `target`.
    Role { action: Action, target: Target },
}

/// Where a role route's resource, and so its namespace, is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The path's `:id` names a workload (full id, unique prefix or consumer id).
    Workload,
    /// The path's `:id` names a job run.
    Job,
    /// The path's `:id` names a rollout (a service's: its namespace; a host activation: cluster).
    Rollout,
    /// The path's `:id` names an artifact: a run's manifest or snapshot is in the run's namespace;
    /// any other artifact is cluster-wide.
    Artifact,
    /// A listing or the event stream: shows only what is in the caller's namespaces.
    OwnNamespaces,
    /// The body names the namespace (a spec, a manifest, a rollout's service): the handler
    /// decides with [`check`] once it has parsed it.
    Body,
    /// The cluster itself: admins only.
    Cluster,
    /// The path's `:namespace` names the namespace (a secret's): the caller named it, so
    /// another namespace answers 403, like a body naming one.
    PathNamespace,
}

/// One route: method, path as registered, and its access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

const fn role(method: &'static str, path: &'static str, action: Action, target: Target) -> Rule {
    Rule { method, path, access: Access::Role { action, target } }
}

const fn other(method: &'static str, path: &'static str, access: Access) -> Rule {
    Rule { method, path, access }
}

static RULES: &[Rule] = &[
    other("GET", "/v1/health", Access::Public),
    other("GET", "/metrics", Access::Public),
    other("POST", "/v1/agents/enroll", Access::Public),
    role("POST", "/v1/workloads", Action::operate(Kind::Workload), Target::Body),
    role("GET", "/v1/workloads", Action::read(Kind::Workload), Target::OwnNamespaces),
    role("GET", "/v1/workloads/:id", Action::read(Kind::Workload), Target::Workload),
    role("POST", "/v1/workloads/:id/stop", Action::operate(Kind::Workload), Target::Workload),
    role("POST", "/v1/workloads/:id/checkpoint", Action::operate(Kind::Workload), Target::Workload),
    role("GET", "/v1/workloads/:id/logs", Action::operate(Kind::Workload), Target::Workload),
    role("GET", "/v1/events", Action::read(Kind::Event), Target::OwnNamespaces),
    role("GET", "/v1/events/head", Action::read(Kind::Event), Target::OwnNamespaces),
    role("POST", "/v1/jobs", Action::operate(Kind::Job), Target::Body),
    role("GET", "/v1/jobs", Action::read(Kind::Job), Target::OwnNamespaces),
    role("GET", "/v1/jobs/:id", Action::read(Kind::Job), Target::Job),
    role("GET", "/v1/jobs/:id/history", Action::read(Kind::Job), Target::Job),
    role("POST", "/v1/jobs/:id/cancel", Action::operate(Kind::Job), Target::Job),
    role("GET", "/v1/artifacts/:id", Action::read(Kind::Artifact), Target::Artifact),
    role("GET", "/v1/hosts", Action::read(Kind::Host), Target::Cluster),
    role("POST", "/v1/hosts/:name/drain", Action::administer(Kind::Host), Target::Cluster),
    role("POST", "/v1/hosts/:name/remove", Action::administer(Kind::Host), Target::Cluster),
    // Join tokens enroll hosts: cluster-wide, an admin's alone (listing shows no secret, but
    // which tokens are live is still the admin's business).
    role("POST", "/v1/tokens", Action::administer(Kind::Token), Target::Cluster),
    role("GET", "/v1/tokens", Action::administer(Kind::Token), Target::Cluster),
    role("POST", "/v1/tokens/:id/revoke", Action::administer(Kind::Token), Target::Cluster),
    role("POST", "/v1/rollouts", Action::operate(Kind::Rollout), Target::Body),
    role("GET", "/v1/rollouts", Action::read(Kind::Rollout), Target::OwnNamespaces),
    role("GET", "/v1/rollouts/:id", Action::read(Kind::Rollout), Target::Rollout),
    role("POST", "/v1/rollouts/:id/:control", Action::operate(Kind::Rollout), Target::Rollout),
    role("POST", "/v1/keys", Action::administer(Kind::Key), Target::Cluster),
    role("GET", "/v1/keys", Action::read(Kind::Key), Target::Cluster),
    role("POST", "/v1/keys/:name/revoke", Action::administer(Kind::Key), Target::Cluster),
    // Secrets: operators put and remove them in their namespaces; viewers list names and
    // versions. No route answers a value.
    role("PUT", "/v1/secrets/:namespace/:name", Action::operate(Kind::Secret), Target::PathNamespace),
    role("GET", "/v1/secrets", Action::read(Kind::Secret), Target::OwnNamespaces),
    role("DELETE", "/v1/secrets/:namespace/:name", Action::operate(Kind::Secret), Target::PathNamespace),
    other("POST", "/v1/agents/heartbeat", Access::Host),
    other("POST", "/v1/agents/acquire", Access::Host),
    other("POST", "/v1/agents/revoke", Access::Host),
    other("POST", "/v1/agents/logs/:request", Access::Host),
    other("GET", "/v1/agents/commands", Access::Host),
    other("POST", "/v1/agents/rollout", Access::Host),
    other("PUT", "/v1/blobs/:hex", Access::HostOrAdmin),
    other("GET", "/v1/blobs/:hex", Access::HostOrAdmin),
];

/// Every route of the API with its rule: the table the router is built from.
pub fn rules() -> &'static [Rule] {
    RULES
}

/// The rule of `method path` (the path as registered, e.g. `/v1/workloads/:id`).
pub fn rule_for(method: &str, path: &str) -> Option<&'static Rule> {
    RULES.iter().find(|rule| rule.method == method && rule.path == path)
}

/// The caller's principal, if its key is one: an `authorized_keys` admin, or a live journaled
/// key. A revoked key is none (its next request is refused, even if the signing keys have not
/// been refreshed yet).
pub(super) fn principal_of(state: &ApiState, caller: &str) -> Option<Principal> {
    if let Some((_, name)) = state.file_admins.iter().find(|(principal, _)| principal == caller) {
        return Some(Principal { name: name.clone(), role: Role::Admin, namespaces: Vec::new() });
    }
    let shared = state.shared.read().expect("projection lock");
    shared.keys.values().find(|key| key.principal == caller).map(|key| key.as_principal())
}

fn refuse(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorBody { error })).into_response()
}

/// A refusal as the API answers it. `hide`: a resource in another namespace answers like one
/// that does not exist (`what` names it as the request did); a body route says 403 instead, since
/// the caller named the namespace itself.
pub(super) fn denied(denied: Denied, what: &str, hide: bool) -> ApiError {
    match denied {
        Denied::Hidden { .. } if hide => ApiError::NotFound(format!("no {what}")),
        hidden @ Denied::Hidden { .. } => ApiError::Forbidden(hidden.to_string()),
        forbidden @ Denied::Forbidden { .. } => ApiError::Forbidden(forbidden.to_string()),
    }
}

/// For a `Target::Body` route: may `principal` do `action` in `namespace`? (403 if not.)
pub(super) fn check(principal: &Principal, action: Action, namespace: &str) -> Result<(), ApiError> {
    authorize(principal, action, &Resource::in_namespace(action.kind, namespace)).map_err(|e| denied(e, "", false))
}

/// A submission whose cell asks to run as root (`user = "root"`, uid 0 or gid 0) would run it
/// as root on its host, where it could read the data dir and the admin's key: that takes the
/// admin role (`Administer` on the kind in the namespace), on top of the route's own rule.
/// `cells` are (field, user) pairs as the body names them; the refusal (403) names the field.
pub(super) fn check_cell_users<'a>(
    principal: &Principal,
    kind: Kind,
    namespace: &str,
    cells: impl IntoIterator<Item = (String, Option<&'a warden_core::spec::CellUser>)>,
) -> Result<(), ApiError> {
    for (field, user) in cells {
        let Some(user) = user.filter(|user| user.is_root()) else { continue };
        if let Err(denied) = authorize(principal, Action::administer(kind), &Resource::in_namespace(kind, namespace)) {
            return Err(ApiError::Forbidden(format!(
                "{field} = \"{user}\" runs the cell as root on its host, which only an admin may ask for \
                 (leave it out to run as the unprivileged default cell user): {denied}"
            )));
        }
    }
    Ok(())
}

/// For a host activation rollout (`Target::Body`, cluster-wide).
pub(super) fn check_cluster(principal: &Principal, action: Action) -> Result<(), ApiError> {
    authorize(principal, action, &Resource::cluster(action.kind)).map_err(|e| denied(e, "", false))
}

/// The layer in front of every role route: 401 for a key that is no (longer a) principal, then
/// the route's rule decides; the `Principal` goes on to the handler, which filters by it.
pub(super) async fn authorize_request(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(rule) =
        request.extensions().get::<MatchedPath>().and_then(|path| rule_for(request.method().as_str(), path.as_str())).copied()
    else {
        // No rule for this method on a known path: no handler either (the router is built from
        // the rules), so axum answers 405.
        return next.run(request).await;
    };
    let Some(Caller(caller)) = request.extensions().get::<Caller>().cloned() else {
        return refuse(StatusCode::UNAUTHORIZED, "unsigned request".into());
    };
    let Some(principal) = principal_of(&state, &caller) else {
        return refuse(StatusCode::UNAUTHORIZED, format!("key {caller} is not authorized on this server (revoked?)"));
    };
    let Access::Role { action, target } = rule.access else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{} {} is not a role route", rule.method, rule.path));
    };
    let (mut parts, body) = request.into_parts();
    // What the path names: a resource's `:id`, or a namespace.
    let param = if target == Target::PathNamespace { "namespace" } else { "id" };
    let id = match RawPathParams::from_request_parts(&mut parts, &state).await {
        Ok(params) => params.iter().find(|(name, _)| *name == param).map(|(_, value)| value.to_string()),
        Err(rejection) => return rejection.into_response(),
    };
    if let Err(error) = decide(&state, &principal, action, target, id.as_deref()) {
        return error.into_response();
    }
    parts.extensions.insert(principal);
    next.run(Request::from_parts(parts, body)).await
}

/// The layer in front of the blob routes, after their authentication: an enrolled host passes;
/// any other key must be an admin's.
pub(super) async fn authorize_blob(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if request.extensions().get::<BlobRole>() == Some(&BlobRole::Host) {
        return next.run(request).await;
    }
    let Some(Caller(caller)) = request.extensions().get::<Caller>().cloned() else {
        return refuse(StatusCode::UNAUTHORIZED, "unsigned request".into());
    };
    let Some(principal) = principal_of(&state, &caller) else {
        return refuse(StatusCode::UNAUTHORIZED, format!("key {caller} is not authorized on this server (revoked?)"));
    };
    let action = if request.method() == Method::PUT { Action::administer(Kind::Blob) } else { Action::read(Kind::Blob) };
    if let Err(denied) = authorize(&principal, action, &Resource::cluster(Kind::Blob)) {
        return refuse(StatusCode::FORBIDDEN, denied.to_string());
    }
    next.run(request).await
}

fn decide(state: &ApiState, principal: &Principal, action: Action, target: Target, id: Option<&str>) -> Result<(), ApiError> {
    let scope = match (target, id) {
        (Target::Body, _) => return Ok(()),
        (Target::PathNamespace, Some(namespace)) => return check(principal, action, namespace),
        (Target::PathNamespace, None) => return Err(ApiError::Internal("a namespace-targeted route without :namespace".into())),
        (Target::Cluster, _) => Scope::Cluster,
        (Target::OwnNamespaces, _) => Scope::OwnNamespaces,
        (Target::Workload | Target::Job | Target::Rollout | Target::Artifact, None) => {
            return Err(ApiError::Internal("a path-targeted route without :id".into()))
        }
        (Target::Workload | Target::Job | Target::Rollout | Target::Artifact, Some(wanted)) => {
            let manifests = state.manifests.read().expect("manifests lock").clone();
            let shared = state.shared.read().expect("projection lock");
            let candidates = candidates(&shared, &manifests, target, wanted);
            let what = format!("{} {wanted}", noun(target));
            match candidates.as_slice() {
                // Not found: the handler says so, as it always has.
                [] => return Ok(()),
                [(_, scope)] => scope.clone(),
                // Ambiguous: only what the caller may see counts, and is named.
                many => {
                    let visible: Vec<&str> = many
                        .iter()
                        .filter(|(_, scope)| {
                            authorize(principal, Action::read(action.kind), &resource(action.kind, scope)).is_ok()
                        })
                        .map(|(id, _)| id.as_str())
                        .collect();
                    if visible.len() == many.len() {
                        return Ok(());
                    }
                    return Err(match visible.as_slice() {
                        [] => ApiError::NotFound(format!("no {what}")),
                        _ => ApiError::Conflict(format!("{wanted} is ambiguous: {}; give more of the id", visible.join(", "))),
                    });
                }
            }
        }
    };
    let hide = !matches!(scope, Scope::Cluster);
    let what = format!("{} {}", noun(target), id.unwrap_or_default());
    authorize(principal, action, &resource(action.kind, &scope)).map_err(|e| denied(e, &what, hide))
}

fn resource(kind: Kind, scope: &Scope) -> Resource {
    Resource { kind, scope: scope.clone() }
}

fn noun(target: Target) -> &'static str {
    match target {
        Target::Workload => "workload",
        Target::Job => "job run",
        Target::Rollout => "rollout",
        Target::Artifact => "artifact",
        Target::OwnNamespaces | Target::Body | Target::Cluster | Target::PathNamespace => "such thing",
    }
}

/// What `wanted` could name, with each one's scope: the exact id alone if there is one, else
/// every prefix (and, for workloads, consumer id) match — the handlers' own resolution rules.
fn candidates(
    shared: &Projection,
    manifests: &BTreeMap<String, Arc<JobManifest>>,
    target: Target,
    wanted: &str,
) -> Vec<(String, Scope)> {
    match target {
        Target::Workload => {
            // The same matches the handler resolves (`workloads::resolve`).
            shared
                .find_workloads(wanted)
                .into_iter()
                .map(|w| (w.id().to_string(), Scope::Namespace(w.spec.namespace.clone())))
                .collect()
        }
        Target::Job => {
            if shared.runs.contains_key(wanted) {
                return vec![(wanted.to_string(), run_scope(shared, manifests, wanted))];
            }
            shared
                .runs
                .keys()
                .filter(|id| !wanted.is_empty() && id.starts_with(wanted))
                .map(|id| (id.clone(), run_scope(shared, manifests, id)))
                .collect()
        }
        Target::Rollout => {
            if shared.rollouts.contains_key(wanted) {
                return vec![(wanted.to_string(), rollout_scope(shared, wanted))];
            }
            shared.rollouts.keys().filter(|id| id.starts_with(wanted)).map(|id| (id.clone(), rollout_scope(shared, id))).collect()
        }
        Target::Artifact => {
            if let Some(manifest) = manifests.get(wanted) {
                return vec![(wanted.to_string(), Scope::Namespace(manifest.namespace.clone()))];
            }
            let run = shared
                .runs
                .values()
                .find(|run| run.initial_snapshot_id == wanted || run.final_snapshot_id.as_deref() == Some(wanted));
            let scope = run.map_or(Scope::Cluster, |run| run_scope(shared, manifests, &run.run_id));
            vec![(wanted.to_string(), scope)]
        }
        Target::OwnNamespaces | Target::Body | Target::Cluster | Target::PathNamespace => Vec::new(),
    }
}

/// A run is in its manifest's namespace; a run whose manifest is not known is the cluster's.
pub(super) fn run_scope(shared: &Projection, manifests: &BTreeMap<String, Arc<JobManifest>>, run_id: &str) -> Scope {
    shared
        .runs
        .get(run_id)
        .and_then(|run| manifests.get(&run.manifest_id))
        .map_or(Scope::Cluster, |manifest| Scope::Namespace(manifest.namespace.clone()))
}

/// A service rollout is in its service's namespace; a host activation is the cluster's.
pub(super) fn rollout_scope(shared: &Projection, rollout_id: &str) -> Scope {
    shared
        .rollouts
        .get(rollout_id)
        .and_then(|r| r.service.as_ref())
        .map_or(Scope::Cluster, |service| Scope::Namespace(service.spec.namespace.clone()))
}

/// Where a journaled event belongs, for the filtered event stream: its subject's namespace
/// (workload, run, rollout); host, key and journal events are the cluster's.
pub(super) fn event_scope(shared: &Projection, manifests: &BTreeMap<String, Arc<JobManifest>>, event: &CloudEvent) -> Scope {
    let Some(subject) = event.subject.as_deref() else { return Scope::Cluster };
    if let Some(w) = shared.workloads.get(subject) {
        return Scope::Namespace(w.spec.namespace.clone());
    }
    if shared.runs.contains_key(subject) {
        return run_scope(shared, manifests, subject);
    }
    if shared.rollouts.contains_key(subject) {
        return rollout_scope(shared, subject);
    }
    Scope::Cluster
}

/// Whether `principal` may see things of `scope` of `kind` in a listing or the event stream.
pub(super) fn sees(principal: &Principal, kind: Kind, scope: &Scope) -> bool {
    authorize(principal, Action::read(kind), &resource(kind, scope)).is_ok()
}

/// The method of a rule, for building its route.
pub(super) fn method_filter(method: &str) -> axum::routing::MethodFilter {
    Method::from_bytes(method.as_bytes())
        .ok()
        .and_then(|m| axum::routing::MethodFilter::try_from(m).ok())
        .unwrap_or_else(|| panic!("rule with an unknown method {method}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_unique_and_role_rules_are_v1() {
        let mut seen = std::collections::BTreeSet::new();
        for rule in rules() {
            assert!(seen.insert((rule.method, rule.path)), "{} {} twice", rule.method, rule.path);
            if matches!(rule.access, Access::Role { .. }) {
                assert!(rule.path.starts_with("/v1/"), "{}", rule.path);
            }
        }
    }
}
