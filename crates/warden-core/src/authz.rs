//! Who may do what: principals, roles, namespaces, and `authorize`, the one pure function that
//! decides every API request (the runtime's route table says which `Action` and `Resource`
//! each route is; see `warden-runtime/src/api/authz.rs`).
//!
//! The model (anchors: Kubernetes RBAC's view/edit/admin roles, Nomad namespaces):
//! - a **viewer** reads (lists, status, events) in its namespaces;
//! - an **operator** also operates there: runs, stops, checkpoints, reads logs, starts and
//!   controls rollouts and jobs;
//! - an **admin** does everything everywhere, including cluster-wide things (hosts, keys,
//!   tokens, blobs).
//!
//! Namespaces hide: a principal with no role in a resource's namespace is told `Hidden`, which
//! the API answers exactly like "no such thing" (404), so other namespaces' ids leak nothing.
//! A principal with a role there that is too small is told `Forbidden` (403).

use serde::{Deserialize, Serialize};

/// The namespace of a spec, job or rollout that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// How much a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, BadRole> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(BadRole(other.to_string())),
        }
    }

    /// Whether this role may do something that needs `verb` (in a namespace it holds).
    fn allows(self, verb: Verb) -> bool {
        match verb {
            Verb::Read => true,
            Verb::Operate => matches!(self, Role::Operator | Role::Admin),
            Verb::Administer => matches!(self, Role::Admin),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: one of admin, operator, viewer")]
pub struct BadRole(pub String);

/// An authenticated caller: its key's name, its role, and (for viewers and operators) the
/// namespaces it holds that role in. Admins hold every namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub namespaces: Vec<String>,
}

impl Principal {
    /// Whether the principal has any role in `namespace`.
    pub fn holds(&self, namespace: &str) -> bool {
        self.role == Role::Admin || self.namespaces.iter().any(|n| n == namespace)
    }

    /// Whether a listing or the event stream shows this principal something in `namespace`.
    /// (The same answer as `authorize(self, Read, namespace)`, for filters.)
    pub fn sees(&self, namespace: &str) -> bool {
        authorize(self, Action::read(Kind::Workload), &Resource::in_namespace(Kind::Workload, namespace)).is_ok()
    }
}

/// How much an action needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// List, status, events, history.
    Read,
    /// Run, stop, checkpoint, logs, job runs and cancels, rollouts.
    Operate,
    /// Hosts, keys, tokens, blobs: the cluster itself.
    Administer,
}

/// What an action is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Workload,
    Job,
    Rollout,
    Event,
    Artifact,
    Host,
    Key,
    Token,
    Blob,
    Secret,
}

/// A verb on a kind of resource: `Action::operate(Kind::Workload)` is "stop a workload".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Action {
    pub verb: Verb,
    pub kind: Kind,
}

impl Action {
    pub const fn read(kind: Kind) -> Action {
        Action { verb: Verb::Read, kind }
    }
    pub const fn operate(kind: Kind) -> Action {
        Action { verb: Verb::Operate, kind }
    }
    pub const fn administer(kind: Kind) -> Action {
        Action { verb: Verb::Administer, kind }
    }
}

/// Where a resource lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// One namespace's workload, job run or rollout.
    Namespace(String),
    /// A listing or stream that is filtered to the caller's namespaces: allowed to anyone who
    /// holds a namespace, since what it shows is cut down to them.
    OwnNamespaces,
    /// The cluster itself (hosts, keys, tokens, blobs, host rollouts).
    Cluster,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resource {
    pub kind: Kind,
    pub scope: Scope,
}

impl Resource {
    pub fn in_namespace(kind: Kind, namespace: &str) -> Resource {
        Resource { kind, scope: Scope::Namespace(namespace.to_string()) }
    }
    pub fn own_namespaces(kind: Kind) -> Resource {
        Resource { kind, scope: Scope::OwnNamespaces }
    }
    pub fn cluster(kind: Kind) -> Resource {
        Resource { kind, scope: Scope::Cluster }
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The principal has no role in the resource's namespace: answer as if it did not exist.
    #[error("{principal} holds no role in namespace {namespace:?}")]
    Hidden { principal: String, kind: Kind, namespace: String },
    /// The principal may see the resource but its role does not allow the action.
    #[error("{principal} ({role}) may not {verb} {kind}s{where_}", role = role.as_str(), verb = verb.as_str(), kind = kind.as_str(), where_ = scope_text(scope))]
    Forbidden { principal: String, role: Role, verb: Verb, kind: Kind, scope: Scope },
}

fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::Namespace(namespace) => format!(" in namespace {namespace:?}"),
        Scope::OwnNamespaces => " (it holds no namespace)".to_string(),
        Scope::Cluster => " (cluster-wide: admins only)".to_string(),
    }
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Read => "read",
            Verb::Operate => "operate",
            Verb::Administer => "administer",
        }
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Workload => "workload",
            Kind::Job => "job run",
            Kind::Rollout => "rollout",
            Kind::Event => "event",
            Kind::Artifact => "artifact",
            Kind::Host => "host",
            Kind::Key => "key",
            Kind::Token => "token",
            Kind::Blob => "blob",
            Kind::Secret => "secret",
        }
    }
}

/// Decides one request: may `principal` do `action` to `resource`?
///
/// - An admin may do anything.
/// - Anything cluster-wide, and any `Administer` action, is for admins only.
/// - In a namespace the principal holds no role in: `Hidden`.
/// - Otherwise the role decides: viewers read, operators also operate.
pub fn authorize(principal: &Principal, action: Action, resource: &Resource) -> Result<(), Denied> {
    if principal.role == Role::Admin {
        return Ok(());
    }
    let forbidden = || Denied::Forbidden {
        principal: principal.name.clone(),
        role: principal.role,
        verb: action.verb,
        kind: action.kind,
        scope: resource.scope.clone(),
    };
    match &resource.scope {
        Scope::Cluster => Err(forbidden()),
        Scope::OwnNamespaces if principal.namespaces.is_empty() => Err(forbidden()),
        Scope::OwnNamespaces => principal.role.allows(action.verb).then_some(()).ok_or_else(forbidden),
        Scope::Namespace(namespace) if !principal.holds(namespace) => {
            Err(Denied::Hidden { principal: principal.name.clone(), kind: resource.kind, namespace: namespace.clone() })
        }
        Scope::Namespace(_) => principal.role.allows(action.verb).then_some(()).ok_or_else(forbidden),
    }
}

/// Why a namespace name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace {0:?} is not a valid name: 1 to 63 characters, lowercase letters, digits and '-', starting with a letter")]
pub struct BadNamespace(pub String);

/// Namespace names are DNS-label-like: `[a-z][a-z0-9-]{0,62}`, not ending in '-'.
pub fn validate_namespace(name: &str) -> Result<(), BadNamespace> {
    let bytes = name.as_bytes();
    let ok = (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.last() != Some(&b'-');
    ok.then_some(()).ok_or_else(|| BadNamespace(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, namespaces: &[&str]) -> Principal {
        Principal { name: format!("{}-key", role.as_str()), role, namespaces: namespaces.iter().map(|n| n.to_string()).collect() }
    }

    const KINDS: [Kind; 10] = [
        Kind::Workload,
        Kind::Job,
        Kind::Rollout,
        Kind::Event,
        Kind::Artifact,
        Kind::Host,
        Kind::Key,
        Kind::Token,
        Kind::Blob,
        Kind::Secret,
    ];
    const VERBS: [Verb; 3] = [Verb::Read, Verb::Operate, Verb::Administer];

    #[test]
    fn a_viewer_reads_its_namespace_and_nothing_more() {
        let viewer = principal(Role::Viewer, &["a"]);
        let in_a = Resource::in_namespace(Kind::Workload, "a");
        assert_eq!(authorize(&viewer, Action::read(Kind::Workload), &in_a), Ok(()));
        assert!(matches!(authorize(&viewer, Action::operate(Kind::Workload), &in_a), Err(Denied::Forbidden { .. })));
        assert_eq!(authorize(&viewer, Action::read(Kind::Workload), &Resource::own_namespaces(Kind::Workload)), Ok(()));
    }

    #[test]
    fn an_operator_operates_in_its_namespaces_only() {
        let operator = principal(Role::Operator, &["a", "c"]);
        for namespace in ["a", "c"] {
            let resource = Resource::in_namespace(Kind::Job, namespace);
            assert_eq!(authorize(&operator, Action::operate(Kind::Job), &resource), Ok(()));
            assert!(matches!(authorize(&operator, Action::administer(Kind::Job), &resource), Err(Denied::Forbidden { .. })));
        }
        let in_b = Resource::in_namespace(Kind::Job, "b");
        assert!(matches!(authorize(&operator, Action::read(Kind::Job), &in_b), Err(Denied::Hidden { .. })));
    }

    #[test]
    fn another_namespace_is_hidden_whatever_the_verb() {
        for role in [Role::Viewer, Role::Operator] {
            let p = principal(role, &["b"]);
            for kind in KINDS {
                for verb in VERBS {
                    let answer = authorize(&p, Action { verb, kind }, &Resource::in_namespace(kind, "a"));
                    assert!(matches!(answer, Err(Denied::Hidden { .. })), "{role:?} {verb:?} {kind:?}: {answer:?}");
                }
            }
        }
    }

    #[test]
    fn cluster_wide_resources_are_for_admins_only() {
        for role in [Role::Viewer, Role::Operator] {
            let p = principal(role, &["default"]);
            for kind in KINDS {
                for verb in VERBS {
                    let answer = authorize(&p, Action { verb, kind }, &Resource::cluster(kind));
                    assert!(matches!(answer, Err(Denied::Forbidden { .. })), "{role:?} {verb:?} {kind:?}: {answer:?}");
                }
            }
        }
    }

    #[test]
    fn an_admin_may_do_everything_everywhere() {
        let admin = principal(Role::Admin, &[]);
        for kind in KINDS {
            for verb in VERBS {
                for resource in
                    [Resource::cluster(kind), Resource::own_namespaces(kind), Resource::in_namespace(kind, "anything")]
                {
                    assert_eq!(authorize(&admin, Action { verb, kind }, &resource), Ok(()));
                }
            }
        }
        assert!(admin.sees("anything"));
    }

    #[test]
    fn a_principal_with_no_namespace_lists_nothing() {
        let nobody = principal(Role::Operator, &[]);
        assert!(authorize(&nobody, Action::read(Kind::Workload), &Resource::own_namespaces(Kind::Workload)).is_err());
        assert!(!nobody.sees("default"));
    }

    /// The roles are ordered: whatever a role may do, every greater role may do too, on every
    /// action, resource and set of namespaces (a property over the whole small domain).
    #[test]
    fn a_greater_role_is_never_refused_what_a_lesser_one_is_allowed() {
        let namespace_sets: [&[&str]; 4] = [&[], &["a"], &["b"], &["a", "b"]];
        let scopes = [Scope::Cluster, Scope::OwnNamespaces, Scope::Namespace("a".into()), Scope::Namespace("b".into())];
        for namespaces in namespace_sets {
            for kind in KINDS {
                for verb in VERBS {
                    for scope in &scopes {
                        let resource = Resource { kind, scope: scope.clone() };
                        let allowed = |role| authorize(&principal(role, namespaces), Action { verb, kind }, &resource).is_ok();
                        assert!(!allowed(Role::Viewer) || allowed(Role::Operator), "{namespaces:?} {verb:?} {kind:?} {scope:?}");
                        assert!(!allowed(Role::Operator) || allowed(Role::Admin), "{namespaces:?} {verb:?} {kind:?} {scope:?}");
                        // And no non-admin ever administers.
                        if verb == Verb::Administer {
                            assert!(!allowed(Role::Operator));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn namespace_names_are_dns_labels() {
        for good in ["default", "a", "team-1", "x2"] {
            assert_eq!(validate_namespace(good), Ok(()), "{good}");
        }
        for bad in ["", "A", "1team", "team-", "te am", "a/b", "ä", &"a".repeat(64)] {
            assert!(validate_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_parse_and_print() {
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
        assert!(Role::parse("root").unwrap_err().to_string().contains("admin, operator, viewer"));
    }
}
