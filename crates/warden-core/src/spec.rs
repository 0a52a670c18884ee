//! Workload specs: strict TOML in, a validated `Spec` out, or an error naming file, line and reason.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::authz::{validate_namespace, DEFAULT_NAMESPACE};
use crate::canonical::content_id;
use crate::lease::OutagePolicy;
use crate::types::{ReplicationMode, RestartPolicy, WorkloadInfo};
use crate::units::{parse_duration_ms, parse_size_bytes};

/// A validated workload spec. Its canonical JSON is what `spec_id` hashes, so every field is
/// normalized (durations in ms, sizes in bytes, defaults filled in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    /// The namespace the workload belongs to (`namespace = "…"`, default `default`): who may
    /// see and operate it (`authz`). Serialized only when not the default, so the spec ids of
    /// specs written before namespaces existed do not change.
    #[serde(default = "default_namespace", skip_serializing_if = "is_default_namespace")]
    pub namespace: String,
    pub ttl_ms: Option<u64>,
    pub cell: CellSpec,
    pub restart: RestartSpec,
    pub replication: ReplicationSpec,
    pub logs: LogSpec,
    /// Where instances run in a cluster (`[placement]`); absent: one instance, on any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,
}

/// `[placement]`: which hosts may run the workload, and how many instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementSpec {
    /// Only hosts enrolled with this channel.
    pub channel: Option<String>,
    /// Only hosts that have every one of these tags.
    pub tags: Vec<String>,
    pub count: PlacementCount,
    /// How long the workload's host may be silent before its cell is written off and replaced
    /// (default: the cluster's `host_ttl`). Its lease lasts this long too, so a cell that rides
    /// out a disconnect keeps running, fenced as ever, and one that does not is gone before a
    /// replacement starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after_ms: Option<u64>,
    /// What a leased cell does while no control plane runs (`control_plane_outage`): ride it
    /// out (default) or stop when renewals stop. See `lease.rs`, "While the control plane is down".
    #[serde(default, skip_serializing_if = "OutagePolicy::is_default")]
    pub control_plane_outage: OutagePolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementCount {
    /// `instances = N`: N workloads, spread over the matching hosts.
    Instances(u32),
    /// `mode = "each-host"`: one workload per matching host, following hosts as they come and go.
    EachHost,
}

/// A tag a host may carry and a spec may ask for: printable, no spaces or commas (the agent's
/// `WARDEN_TAGS` is a comma-separated list), 1 to 128 characters.
pub fn is_tag(tag: &str) -> bool {
    (1..=128).contains(&tag.len()) && !tag.chars().any(|c| c.is_control() || c.is_whitespace() || c == ',')
}

impl PlacementSpec {
    /// Whether a host with this channel and these tags may run the workload.
    pub fn admits(&self, channel: Option<&str>, tags: &[String]) -> bool {
        self.channel.as_deref().is_none_or(|wanted| channel == Some(wanted)) && self.tags.iter().all(|t| tags.contains(t))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellSpec {
    pub argv: Vec<String>,
    /// Plain environment values, as written in the spec.
    pub env: BTreeMap<String, String>,
    /// Variables whose value is a secret (`env = { DB_PASSWORD = { secret = "db-password" } }`):
    /// variable → secret name, in the workload's namespace. Only the reference is in the spec
    /// (and so in the journal); the value is resolved when a cell starts (see `secrets.rs`).
    /// Serialized only when not empty, so the spec ids of specs without secrets do not change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub isolation: Isolation,
    pub graceful_shutdown_ms: u64,
    pub network: Network,
    /// The root filesystem directory (`oci` only).
    pub rootfs: Option<String>,
    /// `oci` only.
    pub oci_runtime: Option<OciRuntime>,
    pub limits: Limits,
    /// Who the workload runs as on its host (`user = …` in `[cell]`); `None`: the default cell
    /// user (the `warden` system user when warden runs as root). Serialized only when set, so
    /// the spec ids of specs without it are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<CellUser>,
}

/// `user = "name" | "uid" | "uid:gid" | "root"` in a `[cell]`: resolved to ids on the host that
/// runs the cell, at its start (a name may mean another uid on another host).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CellUser {
    /// uid 0: only an admin may submit it (see `CellUser::is_root`).
    Root,
    /// A user name, looked up in the host's user database; its primary group is the gid.
    Name(String),
    /// A numeric uid, with the uid as gid when none is given.
    Ids { uid: u32, gid: Option<u32> },
}

impl CellUser {
    /// Parses the field's value; the error says what is accepted.
    pub fn parse(text: &str) -> Result<CellUser, String> {
        let id = |part: &str| part.parse::<u32>().ok().filter(|_| part.bytes().all(|b| b.is_ascii_digit()));
        if text == "root" {
            return Ok(CellUser::Root);
        }
        if let Some((uid, gid)) = text.split_once(':') {
            return match (id(uid), id(gid)) {
                (Some(uid), Some(gid)) => Ok(CellUser::Ids { uid, gid: Some(gid) }),
                _ => Err(format!("must be a user name, \"uid\" or \"uid:gid\" (numbers), got {text:?}")),
            };
        }
        if let Some(uid) = id(text) {
            return Ok(CellUser::Ids { uid, gid: None });
        }
        // POSIX portable user names, as useradd accepts them by default.
        let name_ok = (1..=32).contains(&text.len())
            && text.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if name_ok {
            Ok(CellUser::Name(text.to_string()))
        } else {
            Err(format!("must be a user name ([a-z_][a-z0-9_-]*, at most 32), \"uid\" or \"uid:gid\", got {text:?}"))
        }
    }

    /// Whether the cell would run as root or in group root: what only an admin may ask for.
    /// (A name that maps to uid 0 on some host is caught there, at start.)
    pub fn is_root(&self) -> bool {
        match self {
            CellUser::Root => true,
            CellUser::Name(_) => false,
            CellUser::Ids { uid, gid } => *uid == 0 || *gid == Some(0),
        }
    }
}

impl std::fmt::Display for CellUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CellUser::Root => f.write_str("root"),
            CellUser::Name(name) => f.write_str(name),
            CellUser::Ids { uid, gid: None } => write!(f, "{uid}"),
            CellUser::Ids { uid, gid: Some(gid) } => write!(f, "{uid}:{gid}"),
        }
    }
}

impl TryFrom<String> for CellUser {
    type Error = String;
    fn try_from(text: String) -> Result<CellUser, String> {
        CellUser::parse(&text)
    }
}

impl From<CellUser> for String {
    fn from(user: CellUser) -> String {
        user.to_string()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A plain child process in its own process group, under a per-cell shim.
    Process,
    /// New PID, mount, UTS and IPC namespaces with warden's init as PID 1, which reports the
    /// workload's exit over an authenticated channel (`terminal_state` clean or forced).
    Cell,
    /// An OCI runtime on a bundle generated from the spec.
    Oci,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Cell => "cell",
            Isolation::Oci => "oci",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Share the host's network namespace.
    Host,
    /// A private network namespace with only loopback.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OciRuntime {
    Runc,
    Crun,
}

/// `[cell.limits]`, enforced with cgroups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_max_bytes: Option<u64>,
    /// Thousandths of a core: `cpu_max = 0.5` is 500.
    pub cpu_max_millicores: Option<u32>,
    pub pids_max: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// First delay after a failure; doubles per consecutive failure up to `backoff_max_ms`.
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
    /// A cell that stayed up this long resets the consecutive-failure count.
    pub backoff_reset_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationSpec {
    pub mode: ReplicationMode,
    /// `checkpointed` and `warm-standby`: the directory snapshotted into the blob store and
    /// restored before every start (for a standby: fetched when it is armed). An absolute path as the cell sees it: on the host for `process` and `cell`
    /// isolation. Absent (and so not in the spec id) for other modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// `checkpointed` and `warm-standby`: how often the agent snapshots `state_dir` (default
    /// 30s, at least 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval_ms: Option<u64>,
    /// `warm-standby` only: how many standby slots to keep armed on other hosts (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standbys: Option<u32>,
    /// `warm-standby` only: standby *i* asks for the lease `i × promotion_delay` after it became
    /// grantable (default 300ms), so the lowest live index usually wins without a stampede.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_delay_ms: Option<u64>,
    /// `warm-standby` only: the standbys' cells already run, with `WARDEN_ROLE=standby`, and are
    /// promoted in place (SIGUSR1 and their role file) instead of started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hot: bool,
}

impl ReplicationSpec {
    /// No replication: the default, and what a spec without `[replication]` gets.
    pub fn none() -> ReplicationSpec {
        ReplicationSpec {
            mode: ReplicationMode::None,
            state_dir: None,
            checkpoint_interval_ms: None,
            standbys: None,
            promotion_delay_ms: None,
            hot: false,
        }
    }

    /// Standby slots to keep armed (0 unless `warm-standby`).
    pub fn standby_count(&self) -> usize {
        match self.mode {
            ReplicationMode::WarmStandby => self.standbys.unwrap_or(DEFAULT_STANDBYS) as usize,
            ReplicationMode::None | ReplicationMode::Checkpointed => 0,
        }
    }

    pub fn promotion_delay(&self) -> u64 {
        self.promotion_delay_ms.unwrap_or(DEFAULT_PROMOTION_DELAY_MS)
    }

    /// Whether the agent snapshots `state_dir` while the primary runs.
    pub fn checkpoints(&self) -> bool {
        self.state_dir.is_some() && self.mode != ReplicationMode::None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    /// The live log file is rotated when it grows past this.
    pub max_size_bytes: u64,
    /// Rotated files kept besides the live one.
    pub max_files: u32,
}

pub const DEFAULT_GRACEFUL_SHUTDOWN_MS: u64 = 5_000;
pub const DEFAULT_BACKOFF_MS: u64 = 100;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// Where a crash loop's doubling starts when `backoff` is shorter (even 0): the first restart
/// waits `backoff`, the next ones `max(backoff, this) × 2^(n-1)` up to `backoff_max`, so a cell
/// that crashes at once slows down towards `backoff_max` instead of spinning (see
/// `workload::backoff_delay_ms`).
pub const MIN_BACKOFF_MS: u64 = 10;
pub const DEFAULT_BACKOFF_RESET_MS: u64 = 600_000;
pub const DEFAULT_LOG_MAX_SIZE_BYTES: u64 = 10 << 20;
pub const DEFAULT_LOG_MAX_FILES: u32 = 3;
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 30_000;
pub const MIN_CHECKPOINT_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_STANDBYS: u32 = 1;
pub(crate) fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

pub(crate) fn is_default_namespace(namespace: &str) -> bool {
    namespace == DEFAULT_NAMESPACE
}

/// The longest disconnect a workload may ride out (`placement.lost_after`).
pub const MAX_LOST_AFTER_MS: u64 = 3_600_000;
/// At most this many standbys: each is a host kept armed.
pub const MAX_STANDBYS: u32 = 8;
pub const DEFAULT_PROMOTION_DELAY_MS: u64 = 300;

impl Spec {
    /// `sha256:<hex>` of the canonical spec.
    pub fn spec_id(&self) -> String {
        content_id(self)
    }

    /// The `WorkloadInfo` of a new workload `id` of this spec, submitted by `owner` at `now_ms`
    /// (its `vmid` is assigned by `Projection::submit`).
    pub fn workload_info(&self, id: String, owner: String, consumer_workload_id: Option<String>, now_ms: u64) -> WorkloadInfo {
        WorkloadInfo {
            id,
            vmid: 0,
            workload_type: self.cell.isolation.as_str().to_string(),
            spec_id: self.spec_id(),
            created_at: now_ms / 1000,
            expires_at: self.ttl_ms.map(|ttl| now_ms.saturating_add(ttl).div_ceil(1000)),
            owner,
            replication: self.replication.mode,
            restart_policy: self.restart.policy,
            state_uri: None,
            consumer_workload_id,
        }
    }

    /// Parses and validates spec text; `file` is only used to name the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<Spec, SpecError> {
        parse_strict(file, text, RawSpec::validate)
    }
}

/// Strict TOML for every file users write (specs, job manifests): deserialize into `Raw` (unknown
/// fields rejected), then `validate` it; either failure becomes a `SpecError` naming the line.
pub(crate) fn parse_strict<Raw: serde::de::DeserializeOwned, T>(
    file: &str,
    text: &str,
    validate: impl FnOnce(Raw) -> Result<T, Invalid>,
) -> Result<T, SpecError> {
    let error = |span: Option<Range<usize>>, message: String| SpecError {
        file: file.to_string(),
        line: span.map(|span| line_of(text, span.start)),
        message,
    };
    let raw: Raw = toml::from_str(text).map_err(|err| error(err.span(), toml_message(text, &err)))?;
    validate(raw).map_err(|(span, message)| error(span, message))
}

/// A spec that could not be accepted: `file:line: reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct SpecError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// toml's own message, or, where it has none (a control character in a comment), one naming
/// the character: an error must say what is wrong, not only where.
fn toml_message(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim();
    if !message.is_empty() {
        return message.to_string();
    }
    let found = err.span().and_then(|span| text.get(span.start..)).and_then(|rest| rest.chars().next());
    match found {
        Some(c) => format!("invalid character {c:?} (control characters are not allowed, even in a comment)"),
        None => "not valid TOML".to_string(),
    }
}

fn line_of(text: &str, byte_offset: usize) -> usize {
    text[..byte_offset.min(text.len())].matches('\n').count() + 1
}

/// Why a value is invalid, and where in the file it was written.
pub(crate) type Invalid = (Option<Range<usize>>, String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Spanned<String>,
    namespace: Option<Spanned<String>>,
    ttl: Option<Spanned<String>>,
    cell: RawCell,
    restart: Option<RawRestart>,
    replication: Option<RawReplication>,
    logs: Option<RawLogs>,
    placement: Option<RawPlacement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    channel: Option<Spanned<String>>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    instances: Option<Spanned<i64>>,
    mode: Option<Spanned<String>>,
    lost_after: Option<Spanned<String>>,
    control_plane_outage: Option<Spanned<String>>,
}

impl RawPlacement {
    fn validate(self) -> Result<PlacementSpec, Invalid> {
        let count = match (&self.instances, &self.mode) {
            (Some(_), Some(mode)) => {
                return Err((Some(mode.span()), "placement: set either instances or mode = \"each-host\", not both".into()))
            }
            (Some(n), None) if (1..=10_000).contains(n.get_ref()) => PlacementCount::Instances(*n.get_ref() as u32),
            (Some(n), None) => {
                return Err((Some(n.span()), format!("placement.instances must be between 1 and 10000, got {}", n.get_ref())))
            }
            (None, Some(mode)) if mode.get_ref() == "each-host" => PlacementCount::EachHost,
            (None, Some(mode)) => {
                return Err((Some(mode.span()), format!("placement.mode must be \"each-host\", got {:?}", mode.get_ref())))
            }
            (None, None) => PlacementCount::Instances(1),
        };
        let mut tags = Vec::new();
        for tag in self.tags {
            if !is_tag(tag.get_ref()) {
                return Err((Some(tag.span()), format!("placement.tags: bad tag {:?}", tag.get_ref())));
            }
            tags.push(tag.into_inner());
        }
        let lost_after_ms = match &self.lost_after {
            None => None,
            Some(value) => match duration("placement.lost_after", &self.lost_after, 0)? {
                ms if (1_000..=MAX_LOST_AFTER_MS).contains(&ms) => Some(ms),
                ms => return Err((Some(value.span()), format!("placement.lost_after must be between 1s and 1h, got {ms}ms"))),
            },
        };
        let control_plane_outage = match &self.control_plane_outage {
            None => OutagePolicy::RideOut,
            Some(value) => match value.get_ref().as_str() {
                "ride-out" => OutagePolicy::RideOut,
                "stop" => OutagePolicy::Stop,
                other => {
                    return Err((
                        Some(value.span()),
                        format!("placement.control_plane_outage must be \"ride-out\" or \"stop\", got {other:?}"),
                    ))
                }
            },
        };
        Ok(PlacementSpec { channel: self.channel.map(Spanned::into_inner), tags, count, lost_after_ms, control_plane_outage })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCell {
    pub(crate) argv: Spanned<Vec<String>>,
    /// A string, or `{ secret = "name" }`.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, Spanned<toml::Value>>,
    pub(crate) workdir: Option<Spanned<String>>,
    pub(crate) isolation: Option<Spanned<String>>,
    pub(crate) graceful_shutdown: Option<Spanned<String>>,
    pub(crate) network: Option<Spanned<String>>,
    pub(crate) rootfs: Option<Spanned<String>>,
    pub(crate) oci_runtime: Option<Spanned<String>>,
    pub(crate) limits: Option<RawLimits>,
    pub(crate) user: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    memory_max: Option<Spanned<String>>,
    cpu_max: Option<Spanned<f64>>,
    pids_max: Option<Spanned<i64>>,
}

impl RawLimits {
    fn validate(self, prefix: &str) -> Result<Limits, Invalid> {
        let memory_max_bytes = match &self.memory_max {
            None => None,
            Some(text) => match parse_size_bytes(text.get_ref()) {
                Ok(bytes) if bytes >= 1 << 20 => Some(bytes),
                Ok(bytes) => {
                    return Err((
                        Some(text.span()),
                        format!("{prefix}limits.memory_max must be at least 1MiB, got {bytes} bytes"),
                    ))
                }
                Err(why) => return Err((Some(text.span()), format!("{prefix}limits.memory_max: {why}"))),
            },
        };
        let cpu_max_millicores = match &self.cpu_max {
            None => None,
            Some(cores) if cores.get_ref().is_finite() && *cores.get_ref() >= 0.01 && *cores.get_ref() <= 1024.0 => {
                Some((cores.get_ref() * 1000.0).round() as u32)
            }
            Some(cores) => {
                return Err((
                    Some(cores.span()),
                    format!("{prefix}limits.cpu_max is in cores, between 0.01 and 1024, got {}", cores.get_ref()),
                ))
            }
        };
        let pids_max = match &self.pids_max {
            None => None,
            Some(n) if (1..=4_194_304).contains(n.get_ref()) => Some(*n.get_ref() as u32),
            Some(n) => {
                return Err((
                    Some(n.span()),
                    format!("{prefix}limits.pids_max must be between 1 and 4194304, got {}", n.get_ref()),
                ))
            }
        };
        Ok(Limits { memory_max_bytes, cpu_max_millicores, pids_max })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    policy: Option<Spanned<String>>,
    max_attempts: Option<Spanned<i64>>,
    backoff: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
    backoff_reset: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    mode: Spanned<String>,
    state_dir: Option<Spanned<String>>,
    checkpoint_interval: Option<Spanned<String>>,
    standbys: Option<Spanned<i64>>,
    promotion_delay: Option<Spanned<String>>,
    hot: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    max_size: Option<Spanned<String>>,
    max_files: Option<Spanned<i64>>,
}

pub(crate) fn duration(field: &str, value: &Option<Spanned<String>>, default_ms: u64) -> Result<u64, Invalid> {
    match value {
        None => Ok(default_ms),
        Some(text) => parse_duration_ms(text.get_ref()).map_err(|why| (Some(text.span()), format!("{field}: {why}"))),
    }
}

impl RawSpec {
    fn validate(self) -> Result<Spec, Invalid> {
        let name = self.name.get_ref();
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.');
        if !name_ok {
            return Err((
                Some(self.name.span()),
                format!("name must be 1-63 characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit; got {name:?}"),
            ));
        }
        let namespace = match &self.namespace {
            None => DEFAULT_NAMESPACE.to_string(),
            Some(namespace) => {
                validate_namespace(namespace.get_ref()).map_err(|e| (Some(namespace.span()), e.to_string()))?;
                namespace.get_ref().clone()
            }
        };
        let ttl_ms = match &self.ttl {
            None => None,
            Some(_) => match duration("ttl", &self.ttl, 0)? {
                0 => return Err((self.ttl.as_ref().map(|t| t.span()), "ttl must be longer than 0s".into())),
                ms => Some(ms),
            },
        };

        let cell = self.cell.validate("cell.")?;
        if let (Some(raw), Isolation::Oci) = (&self.replication, cell.isolation) {
            if let Some(hot) = raw.hot.as_ref().filter(|h| *h.get_ref()) {
                // The role file a hot standby is promoted through lives on the host.
                return Err((Some(hot.span()), "replication.hot is not supported with isolation = \"oci\" yet".into()));
            }
            if let Some(dir) = &raw.state_dir {
                // The agent restores and snapshots `state_dir` on the host; inside an OCI rootfs
                // that would be `rootfs + state_dir`, which is not wired up yet.
                return Err((Some(dir.span()), "replication.state_dir is not supported with isolation = \"oci\" yet".into()));
            }
        }

        let restart = self.restart.map(RawRestart::validate).transpose()?.unwrap_or(RestartSpec {
            policy: RestartPolicy::default(),
            backoff_ms: DEFAULT_BACKOFF_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            backoff_reset_ms: DEFAULT_BACKOFF_RESET_MS,
        });

        let replication = match self.replication {
            None => ReplicationSpec::none(),
            Some(raw) => {
                let mode = match raw.mode.get_ref().as_str() {
                    "none" => ReplicationMode::None,
                    "checkpointed" => ReplicationMode::Checkpointed,
                    "warm-standby" => ReplicationMode::WarmStandby,
                    other => {
                        return Err((
                            Some(raw.mode.span()),
                            format!("replication.mode must be \"none\", \"checkpointed\" or \"warm-standby\", got {other:?}"),
                        ))
                    }
                };
                let standby_field = raw
                    .standbys
                    .as_ref()
                    .map(|f| f.span())
                    .or(raw.promotion_delay.as_ref().map(|f| f.span()))
                    .or(raw.hot.as_ref().map(|f| f.span()));
                if let (Some(field), false) = (standby_field, mode == ReplicationMode::WarmStandby) {
                    return Err((
                        Some(field),
                        "replication.standbys, promotion_delay and hot apply only to mode = \"warm-standby\"".into(),
                    ));
                }
                if let (Some(hot), Some(_)) = (raw.hot.as_ref().filter(|h| *h.get_ref()), &raw.state_dir) {
                    return Err((
                        Some(hot.span()),
                        "replication.hot standbys run already and keep their own state: state_dir (restored before a start) applies to warm standbys only".into(),
                    ));
                }
                let state_field = raw.state_dir.as_ref().map(|d| d.span()).or(raw.checkpoint_interval.as_ref().map(|i| i.span()));
                if let (Some(field), ReplicationMode::None) = (state_field, mode) {
                    return Err((
                        Some(field),
                        "replication.state_dir and checkpoint_interval apply only to mode = \"checkpointed\" or \"warm-standby\""
                            .into(),
                    ));
                }
                let state_dir = match &raw.state_dir {
                    None if mode == ReplicationMode::Checkpointed => {
                        return Err((
                            Some(raw.mode.span()),
                            "replication.mode = \"checkpointed\" needs replication.state_dir, the directory to snapshot".into(),
                        ))
                    }
                    None => None,
                    Some(dir)
                        if !dir.get_ref().starts_with('/')
                            || dir.get_ref().split('/').any(|c| c == "..")
                            || dir.get_ref().contains('\0') =>
                    {
                        return Err((
                            Some(dir.span()),
                            format!(
                                "replication.state_dir must be an absolute path without \"..\" or NUL, got {:?}",
                                dir.get_ref()
                            ),
                        ))
                    }
                    Some(dir) if dir.get_ref().trim_end_matches('/').is_empty() => {
                        return Err((Some(dir.span()), "replication.state_dir must not be \"/\"".into()))
                    }
                    Some(dir) => Some(dir.get_ref().clone()),
                };
                let checkpoint_interval_ms = match state_dir {
                    None => None,
                    Some(_) => {
                        let interval = duration(
                            "replication.checkpoint_interval",
                            &raw.checkpoint_interval,
                            DEFAULT_CHECKPOINT_INTERVAL_MS,
                        )?;
                        if interval < MIN_CHECKPOINT_INTERVAL_MS {
                            return Err((
                                raw.checkpoint_interval.as_ref().map(|i| i.span()),
                                format!("replication.checkpoint_interval must be at least 1s, got {interval}ms"),
                            ));
                        }
                        Some(interval)
                    }
                };
                if let (Some(field), None) = (&raw.checkpoint_interval, &state_dir) {
                    return Err((Some(field.span()), "replication.checkpoint_interval needs replication.state_dir".into()));
                }
                let standbys = match &raw.standbys {
                    None => None,
                    Some(n) if (1..=MAX_STANDBYS as i64).contains(n.get_ref()) => Some(*n.get_ref() as u32),
                    Some(n) => {
                        return Err((
                            Some(n.span()),
                            format!("replication.standbys must be 1 to {MAX_STANDBYS}, got {}", n.get_ref()),
                        ))
                    }
                };
                let promotion_delay_ms = match &raw.promotion_delay {
                    None => None,
                    Some(_) => Some(duration("replication.promotion_delay", &raw.promotion_delay, DEFAULT_PROMOTION_DELAY_MS)?),
                };
                ReplicationSpec {
                    mode,
                    state_dir,
                    checkpoint_interval_ms,
                    standbys,
                    promotion_delay_ms,
                    hot: raw.hot.is_some_and(|h| *h.get_ref()),
                }
            }
        };

        let logs = match self.logs {
            None => LogSpec { max_size_bytes: DEFAULT_LOG_MAX_SIZE_BYTES, max_files: DEFAULT_LOG_MAX_FILES },
            Some(raw) => {
                let max_size_bytes = match &raw.max_size {
                    None => DEFAULT_LOG_MAX_SIZE_BYTES,
                    Some(text) => match parse_size_bytes(text.get_ref()) {
                        Ok(bytes) if bytes >= 4096 => bytes,
                        Ok(bytes) => {
                            return Err((Some(text.span()), format!("logs.max_size must be at least 4KiB, got {bytes} bytes")))
                        }
                        Err(why) => return Err((Some(text.span()), format!("logs.max_size: {why}"))),
                    },
                };
                let max_files = match &raw.max_files {
                    None => DEFAULT_LOG_MAX_FILES,
                    Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref() as u32,
                    Some(n) => {
                        return Err((Some(n.span()), format!("logs.max_files must be between 1 and 100, got {}", n.get_ref())))
                    }
                };
                LogSpec { max_size_bytes, max_files }
            }
        };

        let each_host = self.placement.as_ref().and_then(|p| p.mode.as_ref()).map(|m| m.span());
        let placement = self.placement.map(RawPlacement::validate).transpose()?;
        if let (Some(span), ReplicationMode::WarmStandby) = (each_host, replication.mode) {
            // An each-host instance may run on its own host only: there is nowhere to fail over to.
            return Err((
                Some(span),
                "placement mode = \"each-host\" cannot have warm standbys (each instance runs on its host only)".into(),
            ));
        }
        Ok(Spec { name: name.clone(), namespace, ttl_ms, cell, restart, replication, logs, placement })
    }
}

impl RawCell {
    /// Validates a cell's keys; `prefix` is how messages name them (`cell.` in a spec, nothing
    /// in a job state, whose keys sit on the state itself).
    pub(crate) fn validate(self, prefix: &str) -> Result<CellSpec, Invalid> {
        let cell = self;
        let argv = cell.argv.get_ref().clone();
        if argv.first().is_none_or(|program| program.is_empty()) {
            return Err((Some(cell.argv.span()), format!("{prefix}argv must name a program to run, e.g. [\"sleep\", \"60\"]")));
        }
        // A NUL cannot cross `execve` (argv, env and paths are C strings): refused here, with
        // its line, rather than failing at start on some host later.
        if let Some(i) = argv.iter().position(|arg| arg.contains('\0')) {
            return Err((Some(cell.argv.span()), format!("{prefix}argv[{i}] contains a NUL byte, which no program can receive")));
        }
        let mut env = BTreeMap::new();
        let mut secret_env = BTreeMap::new();
        for (key, value) in cell.env {
            let span = value.span();
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err((Some(span), format!("{prefix}env: bad variable name {key:?}")));
            }
            match value.into_inner() {
                toml::Value::String(text) if text.contains('\0') => {
                    return Err((Some(span), format!("{prefix}env.{key} contains a NUL byte, which no program can receive")));
                }
                toml::Value::String(text) => {
                    env.insert(key, text);
                }
                toml::Value::Table(table) => {
                    let secret = secret_reference(prefix, &key, table).map_err(|message| (Some(span), message))?;
                    secret_env.insert(key, secret);
                }
                other => {
                    return Err((
                        Some(span),
                        format!("{prefix}env.{key} must be a string or {{ secret = \"name\" }}, got a {}", other.type_str()),
                    ))
                }
            }
        }
        for (field, path) in [("workdir", &cell.workdir), ("rootfs", &cell.rootfs)] {
            if let Some(path) = path.as_ref().filter(|p| p.get_ref().contains('\0')) {
                return Err((Some(path.span()), format!("{prefix}{field} contains a NUL byte")));
            }
        }
        let isolation = match cell.isolation.as_ref().map(|i| (i.get_ref().as_str(), i.span())) {
            None | Some(("process", _)) => Isolation::Process,
            Some(("cell", _)) => Isolation::Cell,
            Some(("oci", _)) => Isolation::Oci,
            Some((other, span)) => {
                return Err((Some(span), format!("{prefix}isolation must be \"process\", \"cell\" or \"oci\", got {other:?}")))
            }
        };
        let graceful_shutdown_ms =
            duration(&format!("{prefix}graceful_shutdown"), &cell.graceful_shutdown, DEFAULT_GRACEFUL_SHUTDOWN_MS)?;
        let network = match cell.network.as_ref().map(|n| (n.get_ref().as_str(), n.span())) {
            None | Some(("host", _)) => Network::Host,
            Some(("none", span)) if isolation == Isolation::Process => {
                return Err((Some(span), format!("{prefix}network = \"none\" needs isolation = \"cell\" or \"oci\"")))
            }
            Some(("none", _)) => Network::None,
            Some((other, span)) => {
                return Err((Some(span), format!("{prefix}network must be \"host\" or \"none\", got {other:?}")))
            }
        };
        let rootfs = match (&cell.rootfs, isolation) {
            (None, Isolation::Oci) => {
                let span = cell.isolation.as_ref().map(|i| i.span());
                return Err((span, format!("isolation = \"oci\" needs {prefix}rootfs, the root filesystem directory")));
            }
            (Some(dir), Isolation::Oci) if !dir.get_ref().starts_with('/') => {
                return Err((Some(dir.span()), format!("{prefix}rootfs must be an absolute path, got {:?}", dir.get_ref())))
            }
            (Some(dir), Isolation::Oci) => Some(dir.get_ref().clone()),
            (Some(dir), _) => return Err((Some(dir.span()), format!("{prefix}rootfs applies only to isolation = \"oci\""))),
            (None, _) => None,
        };
        let oci_runtime = match (&cell.oci_runtime, isolation) {
            (None, Isolation::Oci) => Some(OciRuntime::Runc),
            (None, _) => None,
            (Some(name), Isolation::Oci) => match name.get_ref().as_str() {
                "runc" => Some(OciRuntime::Runc),
                "crun" => Some(OciRuntime::Crun),
                other => {
                    return Err((Some(name.span()), format!("{prefix}oci_runtime must be \"runc\" or \"crun\", got {other:?}")))
                }
            },
            (Some(name), _) => {
                return Err((Some(name.span()), format!("{prefix}oci_runtime applies only to isolation = \"oci\"")))
            }
        };
        let limits = cell.limits.map(|limits| limits.validate(prefix)).transpose()?.unwrap_or_default();
        let workdir = match cell.workdir {
            Some(dir) if !dir.get_ref().starts_with('/') => {
                return Err((Some(dir.span()), format!("{prefix}workdir must be an absolute path, got {:?}", dir.get_ref())))
            }
            other => other.map(Spanned::into_inner),
        };

        let user = match &cell.user {
            Some(user) => {
                Some(CellUser::parse(user.get_ref()).map_err(|why| (Some(user.span()), format!("{prefix}user {why}")))?)
            }
            None => None,
        };

        Ok(CellSpec {
            argv,
            env,
            workdir,
            isolation,
            graceful_shutdown_ms,
            network,
            rootfs,
            oci_runtime,
            limits,
            user,
            secret_env,
        })
    }
}

/// The secret an env table names: exactly `{ secret = "name" }`, with a valid name.
fn secret_reference(prefix: &str, key: &str, table: toml::Table) -> Result<String, String> {
    let mut secret = None;
    for (field, value) in table {
        match (field.as_str(), value) {
            ("secret", toml::Value::String(name)) => secret = Some(name),
            ("secret", other) => {
                return Err(format!("{prefix}env.{key}.secret must be a string (the secret's name), got a {}", other.type_str()))
            }
            (other, _) => {
                return Err(format!(
                    "{prefix}env.{key}: unknown key {other:?}; a secret is referred to as {{ secret = \"name\" }}"
                ))
            }
        }
    }
    let Some(name) = secret else {
        return Err(format!("{prefix}env.{key} must be a string or {{ secret = \"name\" }}, got an empty table"));
    };
    if !is_secret_name(&name) {
        return Err(format!("{prefix}env.{key}: secret name {name:?} is not valid: {SECRET_NAME_RULE}"));
    }
    Ok(name)
}

/// What a secret's name may be; `secrets.rs` checks puts against the same rule.
pub const SECRET_NAME_RULE: &str = "1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit";

/// `[a-z0-9][a-z0-9._-]{0,62}` (here rather than in `secrets.rs`, which needs `CellSpec`).
pub fn is_secret_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

impl RawRestart {
    fn validate(self) -> Result<RestartSpec, Invalid> {
        let max_attempts = match &self.max_attempts {
            None => None,
            Some(n) if *n.get_ref() < 0 => {
                return Err((Some(n.span()), format!("restart.max_attempts must be ≥ 0, got {}", n.get_ref())))
            }
            Some(n) if *n.get_ref() > i64::from(u32::MAX) => {
                return Err((Some(n.span()), format!("restart.max_attempts is too large: {}", n.get_ref())))
            }
            Some(n) => Some((*n.get_ref() as u32, n.span())),
        };
        let policy = match self.policy.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("on-failure", _)) => RestartPolicy::OnFailure { max_attempts: max_attempts.as_ref().map_or(3, |m| m.0) },
            Some((name @ ("never" | "always"), _)) => {
                if let Some((_, span)) = max_attempts {
                    return Err((
                        Some(span),
                        format!("restart.max_attempts applies only to policy = \"on-failure\", not {name:?}"),
                    ));
                }
                if name == "never" {
                    RestartPolicy::Never
                } else {
                    RestartPolicy::Always
                }
            }
            Some((other, span)) => {
                return Err((
                    Some(span),
                    format!("restart.policy must be \"never\", \"always\" or \"on-failure\", got {other:?}"),
                ))
            }
        };
        let backoff_ms = duration("restart.backoff", &self.backoff, DEFAULT_BACKOFF_MS)?;
        let backoff_max_ms = duration("restart.backoff_max", &self.backoff_max, DEFAULT_BACKOFF_MAX_MS.max(backoff_ms))?;
        if backoff_max_ms < backoff_ms {
            return Err((
                self.backoff_max.as_ref().map(|b| b.span()),
                "restart.backoff_max must be at least restart.backoff".into(),
            ));
        }
        let backoff_reset_ms = duration("restart.backoff_reset", &self.backoff_reset, DEFAULT_BACKOFF_RESET_MS)?;
        Ok(RestartSpec { policy, backoff_ms, backoff_max_ms, backoff_reset_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_namespace_keeps_old_spec_ids_and_another_one_changes_it() {
        let plain = Spec::parse("a", "name='x'\n[cell]\nargv=['true']").unwrap();
        let default = Spec::parse("b", "name='x'\nnamespace='default'\n[cell]\nargv=['true']").unwrap();
        let team = Spec::parse("c", "name='x'\nnamespace='team-a'\n[cell]\nargv=['true']").unwrap();
        assert_eq!(plain.namespace, "default");
        assert_eq!(plain.spec_id(), default.spec_id());
        assert!(!serde_json::to_string(&plain).unwrap().contains("namespace"));
        assert_eq!(team.namespace, "team-a");
        assert_ne!(team.spec_id(), plain.spec_id());
        let round_trip: Spec = serde_json::from_str(&serde_json::to_string(&team).unwrap()).unwrap();
        assert_eq!(round_trip, team);
        let bad = Spec::parse("s.toml", "name='x'\nnamespace='Team A'\n[cell]\nargv=['true']").unwrap_err();
        assert_eq!(bad.line, Some(2));
        assert!(bad.message.contains("namespace \"Team A\""), "{bad}");
    }

    #[test]
    fn a_cell_user_is_parsed_kept_out_of_old_spec_ids_and_refused_with_its_line() {
        let parse = |user: &str| Spec::parse("s.toml", &format!("name='x'\n[cell]\nargv=['true']\nuser={user:?}\n"));
        let plain = Spec::parse("a", "name='x'\n[cell]\nargv=['true']").unwrap();
        assert_eq!(plain.cell.user, None);
        assert!(!serde_json::to_string(&plain).unwrap().contains("user"));
        assert_eq!(parse("nobody").unwrap().cell.user, Some(CellUser::Name("nobody".into())));
        assert_eq!(parse("1000").unwrap().cell.user, Some(CellUser::Ids { uid: 1000, gid: None }));
        let ids = parse("1000:100").unwrap();
        assert_eq!(ids.cell.user, Some(CellUser::Ids { uid: 1000, gid: Some(100) }));
        assert_ne!(ids.spec_id(), plain.spec_id());
        let round_trip: Spec = serde_json::from_str(&serde_json::to_string(&ids).unwrap()).unwrap();
        assert_eq!(round_trip, ids);
        for root in ["root", "0", "0:0", "1000:0"] {
            assert!(parse(root).unwrap().cell.user.unwrap().is_root(), "{root}");
        }
        assert!(!parse("warden").unwrap().cell.user.unwrap().is_root());
        for bad in ["", "Bob", "1000:", ":1", "-1", "a b", "1000:x", "x:1000"] {
            let error = parse(bad).unwrap_err();
            assert_eq!(error.line, Some(4), "{bad:?}: {error}");
            assert!(error.message.starts_with("cell.user must be"), "{error}");
        }
        let job = crate::job::JobManifest::parse("j.toml", "name='j'\n[[state]]\nid='a'\nargv=['true']\nuser='nobody:nogroup'\n")
            .unwrap_err();
        assert_eq!(job.line, Some(5), "{job}");
    }

    #[test]
    fn spec_id_ignores_formatting_but_not_content() {
        let a = Spec::parse("a", "name='x'\n[cell]\nargv=['true']\nenv={B='2',A='1'}").unwrap();
        let b = Spec::parse("b", "name = \"x\"\n\n[cell]\nenv = { A = \"1\", B = \"2\" }\nargv = [\"true\"]\n").unwrap();
        let c = Spec::parse("c", "name='x'\n[cell]\nargv=['false']").unwrap();
        assert_eq!(a.spec_id(), b.spec_id());
        assert_ne!(a.spec_id(), c.spec_id());
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let unknown = Spec::parse("s.toml", "name = \"x\"\n[cell]\nargv = [\"true\"]\nargz = 1\n").unwrap_err();
        assert_eq!(unknown.line, Some(4));
        assert!(unknown.to_string().starts_with("s.toml:4: "), "{unknown}");
        assert!(unknown.message.contains("argz"), "{unknown}");

        let negative =
            Spec::parse("s.toml", "name = \"x\"\n[cell]\nargv = [\"true\"]\n[restart]\nmax_attempts = -1\n").unwrap_err();
        assert_eq!(negative.to_string(), "s.toml:5: restart.max_attempts must be ≥ 0, got -1");

        let duration =
            Spec::parse("s.toml", "name = \"x\"\n[cell]\nargv = [\"true\"]\ngraceful_shutdown = \"5 sec\"\n").unwrap_err();
        assert_eq!(duration.line, Some(4));

        let mismatch =
            Spec::parse("s.toml", "name='x'\n[cell]\nargv=['true']\n[restart]\npolicy='never'\nmax_attempts=2\n").unwrap_err();
        assert_eq!(mismatch.line, Some(6));

        let empty = Spec::parse("s.toml", "name = \"x\"\n[cell]\nargv = []\n").unwrap_err();
        assert_eq!(empty.line, Some(3));

        let missing = Spec::parse("s.toml", "name = \"x\"\n").unwrap_err();
        assert!(missing.message.contains("cell"), "{missing}");

        let no_rootfs = Spec::parse("s.toml", "name = \"x\"\n[cell]\nargv = [\"true\"]\nisolation = \"oci\"\n").unwrap_err();
        assert_eq!(no_rootfs.line, Some(4));
        assert!(no_rootfs.message.contains("rootfs"), "{no_rootfs}");

        let limits = |body: &str| Spec::parse("s.toml", &format!("name='x'\n[cell]\nargv=['true']\n[cell.limits]\n{body}\n"));
        assert_eq!(limits("memory_max = '1KiB'").unwrap_err().line, Some(5));
        assert_eq!(limits("cpu_max = 0").unwrap_err().line, Some(5));
        assert_eq!(limits("pids_max = -3").unwrap_err().line, Some(5));
        assert!(limits("swap = 1").unwrap_err().message.contains("swap"));
        let no_net = Spec::parse("s.toml", "name='x'\n[cell]\nargv=['true']\nnetwork='none'\n").unwrap_err();
        assert!(no_net.message.contains("isolation"), "{no_net}");
    }

    #[test]
    fn nul_bytes_in_argv_env_and_paths_are_refused_with_their_line() {
        let spec = |body: &str| Spec::parse("n.toml", &format!("name='n'\n[cell]\n{body}\n"));
        let argv = spec("argv = [\"sh\", \"-c\\u0000rm\"]").unwrap_err();
        assert_eq!(argv.to_string(), "n.toml:3: cell.argv[1] contains a NUL byte, which no program can receive");
        let env = spec("argv = ['true']\nenv = { A = \"x\\u0000y\" }").unwrap_err();
        assert_eq!((env.line, env.message.as_str()), (Some(4), "cell.env.A contains a NUL byte, which no program can receive"));
        let key = spec("argv = ['true']\nenv = { \"A\\u0000\" = \"x\" }").unwrap_err();
        assert_eq!(key.line, Some(4), "{key}");
        let workdir = spec("argv = ['true']\nworkdir = \"/tmp\\u0000x\"").unwrap_err();
        assert_eq!((workdir.line, workdir.message.as_str()), (Some(4), "cell.workdir contains a NUL byte"));
        let state =
            Spec::parse("n.toml", "name='n'\n[cell]\nargv=['x']\n[replication]\nmode='checkpointed'\nstate_dir=\"/s\\u0000\"\n");
        assert_eq!(state.unwrap_err().line, Some(6));
        // The same keys in a job state are checked the same way.
        let job = crate::job::JobManifest::parse("j.toml", "name='j'\n[[state]]\nid='a'\nargv=[\"x\\u0000\"]\n").unwrap_err();
        assert_eq!(job.to_string(), "j.toml:4: argv[0] contains a NUL byte, which no program can receive");
    }

    #[test]
    fn env_values_are_strings_or_secret_references_and_plain_specs_keep_their_id() {
        let spec = |env: &str| Spec::parse("s.toml", &format!("name='s'\n[cell]\nargv = ['true']\nenv = {env}\n"));
        let parsed = spec("{ A = '1', DB_PASSWORD = { secret = 'db-password' } }").unwrap();
        assert_eq!(parsed.cell.env, BTreeMap::from([("A".to_string(), "1".to_string())]));
        assert_eq!(parsed.cell.secret_env, BTreeMap::from([("DB_PASSWORD".to_string(), "db-password".to_string())]));
        // The reference is in the spec's JSON (and so its id); a spec without one has no such key.
        let json = serde_json::to_value(&parsed).unwrap();
        assert_eq!(json["cell"]["secret_env"]["DB_PASSWORD"], "db-password");
        let plain = serde_json::to_value(spec("{ A = '1' }").unwrap()).unwrap();
        assert!(plain["cell"].get("secret_env").is_none(), "{plain}");
        assert_ne!(parsed.spec_id(), spec("{ A = '1' }").unwrap().spec_id());
        let back: Spec = serde_json::from_value(json).unwrap();
        assert_eq!(back, parsed);
    }

    #[test]
    fn bad_secret_references_are_refused_with_their_line() {
        let spec = |env: &str| Spec::parse("s.toml", &format!("name='s'\n[cell]\nargv = ['true']\n\nenv = {env}\n"));
        let cases = [
            ("{ P = { secret = 'Bad Name' } }", "cell.env.P: secret name \"Bad Name\" is not valid"),
            (
                "{ P = { secret = 'x', key = 'y' } }",
                "cell.env.P: unknown key \"key\"; a secret is referred to as { secret = \"name\" }",
            ),
            ("{ P = { secret = 3 } }", "cell.env.P.secret must be a string (the secret's name), got a integer"),
            ("{ P = {} }", "cell.env.P must be a string or { secret = \"name\" }, got an empty table"),
            ("{ P = 3 }", "cell.env.P must be a string or { secret = \"name\" }, got a integer"),
        ];
        for (env, expected) in cases {
            let error = spec(env).unwrap_err();
            assert_eq!(error.line, Some(5), "{env}: {error}");
            assert!(error.message.starts_with(expected), "{env}: {}", error.message);
        }
        // A job state embeds a cell: the same rule, named without the `cell.` prefix.
        let job = crate::job::JobManifest::parse(
            "j.toml",
            "name='j'\n[[state]]\nid='a'\nargv=['x']\nenv = { T = { secret = 'tok' }, U = { secret = '-x' } }\n",
        )
        .unwrap_err();
        assert_eq!(job.line, Some(5), "{job}");
        assert!(job.message.starts_with("env.U: secret name \"-x\""), "{job}");
        let ok = crate::job::JobManifest::parse(
            "j.toml",
            "name='j'\n[[state]]\nid='a'\nargv=['x']\nenv = { T = { secret = 'tok' } }\n",
        )
        .unwrap();
        assert_eq!(ok.states[0].cell.secret_env["T"], "tok");
    }

    #[test]
    fn a_control_character_in_a_comment_is_named() {
        let error = Spec::parse("c.toml", "# bell \u{7}\nname = 'x'\n[cell]\nargv = ['true']\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "c.toml:1: invalid character '\\u{7}' (control characters are not allowed, even in a comment)"
        );
    }

    #[test]
    fn placement_parses_and_rejects_contradictions() {
        let spec =
            Spec::parse("p.toml", "name='p'\n[cell]\nargv=['x']\n[placement]\nchannel='edge'\ntags=['ssd']\ninstances=3\n")
                .unwrap();
        let placement = spec.placement.unwrap();
        assert_eq!(placement.count, PlacementCount::Instances(3));
        assert!(placement.admits(Some("edge"), &["ssd".into(), "gpu".into()]));
        assert!(!placement.admits(Some("core"), &["ssd".into()]));
        assert!(!placement.admits(Some("edge"), &[]));
        let each = Spec::parse("p.toml", "name='p'\n[cell]\nargv=['x']\n[placement]\nmode='each-host'\n").unwrap();
        assert_eq!(each.placement.unwrap().count, PlacementCount::EachHost);
        let both =
            Spec::parse("p.toml", "name='p'\n[cell]\nargv=['x']\n[placement]\ninstances=2\nmode='each-host'\n").unwrap_err();
        assert_eq!(both.line, Some(6), "{both}");
        let zero = Spec::parse("p.toml", "name='p'\n[cell]\nargv=['x']\n[placement]\ninstances=0\n").unwrap_err();
        assert_eq!(zero.line, Some(5), "{zero}");
        // No [placement]: the spec id is what it was before placement existed.
        let plain = Spec::parse("a", "name='x'\n[cell]\nargv=['true']").unwrap();
        assert!(!String::from_utf8(crate::canonical::canonical_json(&plain)).unwrap().contains("placement"));
    }

    #[test]
    fn checkpointed_replication_needs_a_state_dir() {
        let base = "name='c'\n[cell]\nargv=['x']\n[replication]\n";
        let spec = Spec::parse("c.toml", &format!("{base}mode='checkpointed'\nstate_dir='/var/lib/c'\n")).unwrap();
        assert_eq!(spec.replication.state_dir.as_deref(), Some("/var/lib/c"));
        assert_eq!(spec.replication.checkpoint_interval_ms, Some(DEFAULT_CHECKPOINT_INTERVAL_MS));
        let fast =
            Spec::parse("c.toml", &format!("{base}mode='checkpointed'\nstate_dir='/s'\ncheckpoint_interval='2s'\n")).unwrap();
        assert_eq!(fast.replication.checkpoint_interval_ms, Some(2_000));
        let missing = Spec::parse("c.toml", &format!("{base}mode='checkpointed'\n")).unwrap_err();
        assert_eq!(missing.line, Some(5), "{missing}");
        assert!(missing.message.contains("state_dir"), "{missing}");
        let relative = Spec::parse("c.toml", &format!("{base}mode='checkpointed'\nstate_dir='rel'\n")).unwrap_err();
        assert_eq!(relative.line, Some(6), "{relative}");
        let too_fast =
            Spec::parse("c.toml", &format!("{base}mode='checkpointed'\nstate_dir='/s'\ncheckpoint_interval='500ms'\n"))
                .unwrap_err();
        assert_eq!(too_fast.line, Some(7), "{too_fast}");
        let wrong_mode = Spec::parse("c.toml", &format!("{base}mode='none'\nstate_dir='/s'\n")).unwrap_err();
        assert_eq!(wrong_mode.line, Some(6), "{wrong_mode}");
        // Specs that do not checkpoint keep their spec ids.
        let plain = Spec::parse("a", &format!("{base}mode='warm-standby'\n")).unwrap();
        let json = String::from_utf8(crate::canonical::canonical_json(&plain)).unwrap();
        assert!(!json.contains("state_dir") && !json.contains("checkpoint_interval"), "{json}");
    }

    #[test]
    fn warm_standbys_parse_and_refuse_what_cannot_work() {
        let base = "name='kv'\n[cell]\nargv=['sh']\n[replication]\nmode='warm-standby'\n";
        let spec = Spec::parse("kv.toml", &format!("{base}standbys=2\npromotion_delay='100ms'\nstate_dir='/s'\n")).unwrap();
        assert_eq!((spec.replication.standby_count(), spec.replication.promotion_delay()), (2, 100));
        assert!(spec.replication.checkpoints());
        let hot_with_state = Spec::parse("kv.toml", &format!("{base}hot=true\nstate_dir='/s'\n")).unwrap_err();
        assert_eq!(hot_with_state.line, Some(6), "{hot_with_state}");
        let too_many = Spec::parse("kv.toml", &format!("{base}standbys=9\n")).unwrap_err();
        assert!(too_many.message.contains("1 to 8"), "{too_many}");
        let each_host = Spec::parse("kv.toml", &format!("{base}[placement]\nmode='each-host'\n")).unwrap_err();
        assert_eq!(each_host.line, Some(7), "{each_host}");
        let not_warm =
            Spec::parse("kv.toml", "name='kv'\n[cell]\nargv=['sh']\n[replication]\nmode='none'\nstandbys=1\n").unwrap_err();
        assert_eq!(not_warm.line, Some(6), "{not_warm}");
        let lost = Spec::parse("kv.toml", "name='kv'\n[cell]\nargv=['sh']\n[placement]\nlost_after='100ms'\n").unwrap_err();
        assert!(lost.message.contains("between 1s and 1h"), "{lost}");
        let outage =
            Spec::parse("kv.toml", "name='kv'\n[cell]\nargv=['sh']\n[placement]\ncontrol_plane_outage='wait'\n").unwrap_err();
        assert!(outage.to_string().contains("kv.toml:5") && outage.message.contains("\"ride-out\" or \"stop\""), "{outage}");
        // The default is not written into the canonical spec: specs submitted before the field
        // existed keep their spec_id.
        let plain = Spec::parse("kv.toml", "name='kv'\n[cell]\nargv=['sh']\n[placement]\ninstances=1\n").unwrap();
        let ride =
            Spec::parse("kv.toml", "name='kv'\n[cell]\nargv=['sh']\n[placement]\ninstances=1\ncontrol_plane_outage='ride-out'\n");
        assert_eq!(plain.spec_id(), ride.unwrap().spec_id());
        let stop = Spec::parse("kv.toml", "name='kv'\n[cell]\nargv=['sh']\n[placement]\ncontrol_plane_outage='stop'\n").unwrap();
        assert_eq!(stop.placement.unwrap().control_plane_outage, OutagePolicy::Stop);
    }

    #[test]
    fn isolated_cells_with_limits_parse() {
        let spec = Spec::parse(
            "c.toml",
            "name='c'\n[cell]\nargv=['sh']\nisolation='cell'\nnetwork='none'\n[cell.limits]\nmemory_max='64MiB'\ncpu_max=0.5\npids_max=20\n",
        )
        .unwrap();
        assert_eq!(spec.cell.isolation, Isolation::Cell);
        assert_eq!(spec.cell.network, Network::None);
        assert_eq!(
            spec.cell.limits,
            Limits { memory_max_bytes: Some(64 << 20), cpu_max_millicores: Some(500), pids_max: Some(20) }
        );
        let oci = Spec::parse("o.toml", "name='o'\n[cell]\nargv=['sh']\nisolation='oci'\nrootfs='/srv/rootfs'\n").unwrap();
        assert_eq!(oci.cell.oci_runtime, Some(OciRuntime::Runc));
        assert_eq!(oci.cell.rootfs.as_deref(), Some("/srv/rootfs"));
    }
}
