//! Rollouts, the pure part: a new version (`target`) host by host, wave by wave, each host proven
//! by probes over a soak before the next wave starts — the seed's `HostRolloutSnapshot`, the
//! per-host state machine, and the rollout's own machine over its waves.
//!
//! One host, for one rollout (`HostRolloutSnapshot::step` decides, `apply` records):
//!
//! ```text
//! Pending ─dispatch─▶ Dispatched ─ack─▶ Acked ─started─▶ Activating ─completed─▶ Soaking ─soak over, probes pass─▶ Converged
//!                                         │                  │                      │
//!                                         │ activation       │ activation failed,   │ an enforce probe failed
//!                                         │ failed           │ or completed with    │ failure_threshold times
//!                                         │                  │ current ≠ target     │ in a row
//!                                         └──────────────────┴───────▶ Failed ◀─────┘
//!                                                                     │    ▲
//!                                                           roll back │    │ rollback failed (not ordered again:
//!                                                                     ▼    │ that is for an operator)
//!                                              Reverted ◀─completed─ Reverting
//! ```
//!
//! The rollout (`next_actions` decides, `Rollout::apply` records):
//!
//! ```text
//! wave 0 (canary) ──every host converged──▶ wave 1 ──…──▶ last wave converged ──▶ completed
//!       └────────── any host failed ──────────┴──▶ halted: no more dispatches; with on_failure = rollback
//!                                                  the failed hosts go back to `previous`, the target is quarantined
//! ```
//!
//! Where this does better than the origin (nixfleet):
//! - **The soak clock starts at the host's own activation**: `soak_due_at` is
//!   `activation_completed_at` plus the soak of the host's wave, set once per activation and
//!   carried in the snapshot, so an agent that restarts mid-soak resumes with the same deadline.
//! - **A flapping probe does not fail a host early**: a pass clears its consecutive-failure count;
//!   only `failure_threshold` failures *in a row* of an enforce probe fail the host. Observe probes
//!   are recorded and never fail anything.
//! - **No vacuous convergence**: a policy without an enforce probe is refused unless it says
//!   `require_probes = false`; and convergence needs, for every enforce probe, a latest result that
//!   passed and a pass recorded at or after `soak_due_at` — evidence from the end of the soak, so a
//!   host that fell silent mid-soak waits (and is reported as blocked) instead of converging on
//!   old news.
//!
//! Agent reports carry a sequence number per (host, rollout), from the agent's own counter; a
//! report with `seq <= last_event_seq` was applied already (a redelivery, or a replay after a
//! restart) and is answered [`Decision::Duplicate`] without changing anything. The control plane's
//! own decisions (dispatch, roll back, converge) and ticks carry none. All times are Unix
//! milliseconds on the control plane's clock (the `now_ms` a step is given); a probe's `at` is the
//! agent's and only informative, since results are ordered by `seq`.
//!
//! Legality of input × state ([`LEGAL`]; anything else is [`StepError::Illegal`] and changes
//! nothing):
//!
//! ```text
//!             dispatch ack started completed act-failed probe tick roll-back rb-started rb-completed rb-failed
//! Pending        ✓      ·     ·        ·         ·        ·    ✓       ·         ·           ·           ·
//! Dispatched     ·      ✓     ·        ·         ·        ·    ✓       ·         ·           ·           ·
//! Acked          ·      ·     ✓        ·         ✓        ·    ✓       ·         ·           ·           ·
//! Activating     ·      ·     ·        ✓         ✓        ·    ✓       ·         ·           ·           ·
//! Soaking        ·      ·     ·        ·         ·        ✓    ✓       ✓         ·           ·           ·
//! Converged      ·      ·     ·        ·         ·        ·    ✓       ✓         ·           ·           ·
//! Failed         ·      ·     ·        ·         ·        ·    ✓       ✓         ·           ·           ·
//! Reverting      ·      ·     ·        ·         ·        ·    ✓       ·         ✓           ✓           ✓
//! Reverted       ·      ·     ·        ·         ·        ·    ✓       ·         ·           ·           ·
//! ```
//!
//! `Reverting` is a state of its own (the issue names only Failed → Reverted) because a rollback is
//! a command run on the host that takes time and can fail: while it runs, the host is neither
//! failed-and-untouched nor back on `previous`, the order must survive an agent restart (the agent
//! reads it from its snapshot), and the control plane must not order it twice.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;

use crate::spec::{duration, parse_strict, Invalid, Spec, SpecError};

pub const DEFAULT_SOAK_MS: u64 = 300_000;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1;
pub const DEFAULT_STALL_AFTER_MS: u64 = 300_000;
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// More waves than this is almost certainly a mistake, and each is a pause for an operator to watch.
pub const MAX_WAVES: usize = 100;

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

/// How far a wave reaches, counted from the start of the rollout: waves are cumulative, so
/// `[1, "25%", "100%"]` is one canary host, then up to a quarter of the hosts, then all of them.
/// Written as a host count (`1`) or a whole percentage (`"25%"`, rounded up to a whole host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaveSize {
    Count(u32),
    Percent(u8),
}

impl WaveSize {
    /// How many of `n_hosts` hosts this wave has reached once it is done.
    pub fn cumulative_hosts(self, n_hosts: usize) -> usize {
        match self {
            WaveSize::Count(n) => (n as usize).min(n_hosts),
            WaveSize::Percent(p) => (n_hosts * usize::from(p)).div_ceil(100),
        }
    }

    fn parse(text: &str) -> Result<WaveSize, String> {
        let percent = text.strip_suffix('%').and_then(|p| p.parse::<u8>().ok()).filter(|p| (1..=100).contains(p));
        percent
            .map(WaveSize::Percent)
            .ok_or_else(|| format!("a wave is a host count or a whole percentage like \"25%\", got {text:?}"))
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Count(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// As users write it: `1` or `"25%"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawWave {
    Count(i64),
    Text(String),
}

impl RawWave {
    fn validate(self) -> Result<WaveSize, String> {
        match self {
            RawWave::Count(n) => u32::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .map(WaveSize::Count)
                .ok_or_else(|| format!("a wave's host count must be at least 1, got {n}")),
            RawWave::Text(text) => WaveSize::parse(&text),
        }
    }
}

impl Serialize for WaveSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            WaveSize::Count(n) => serializer.serialize_u32(*n),
            WaveSize::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RawWave::deserialize(deserializer)?.validate().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveSpec {
    pub size: WaveSize,
    /// How long each host of this wave must stay healthy after its own activation completed.
    pub soak_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop dispatching; hosts already in flight finish; failed hosts stay as they are.
    Halt,
    /// Halt, return every failed host to its `previous`, and quarantine the target.
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    /// Must pass for a host to converge; `failure_threshold` failures in a row fail the host.
    Enforce,
    /// Recorded and shown, never decides anything.
    Observe,
}

/// What the agent runs to probe the new version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProbeKind {
    /// A GET of `url` answered with `expect_status`.
    Http { url: String, expect_status: u16 },
    /// A TCP connection to `address` (`host:port`) accepted.
    Tcp { address: String },
    /// `argv` run to exit code 0.
    Exec { argv: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: ProbeKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that fail the host (enforce probes only).
    pub failure_threshold: u32,
    pub mode: ProbeMode,
    /// Failures within this long of the host's activation are recorded but not counted toward
    /// `failure_threshold`: the new version may still be starting.
    #[serde(default)]
    pub grace_ms: u64,
}

/// How a rollout proceeds: validated, durations in ms, defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    pub waves: Vec<WaveSpec>,
    /// The disruption budget: hosts between Dispatched and Soaking (inclusive) at any instant.
    pub max_in_flight: usize,
    pub on_failure: OnFailure,
    pub probes: Vec<ProbeSpec>,
    /// Refuse a policy without an enforce probe (the default): "no evidence" is not "healthy".
    pub require_probes: bool,
    /// A host of the current wave that has not reported for this long, or whose enforce probes
    /// have not all passed together this long after its soak ended, is reported as blocking the
    /// wave ([`Action::Blocked`]); it keeps its place and its budget, it is never skipped.
    pub stall_after_ms: u64,
    /// How long a host may take to activate (or roll back) before it counts as failed.
    #[serde(default = "default_activation_timeout_ms")]
    pub activation_timeout_ms: u64,
    /// A host activation (a rollout of an artifact, not of a service): the argv each host runs
    /// to switch to the target, `{target}` replaced by it; must print nothing in particular and
    /// exit 0. Empty for a service rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activate: Vec<String>,
    /// The argv that returns a host to `{previous}` (also given `{target}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<String>,
    /// Optional, for a host activation: an argv whose first line of output is what the host
    /// runs (e.g. `readlink /run/current-system`). The agent reports it when it takes its
    /// order (it becomes `previous`) and after activating or rolling back, so convergence needs
    /// the host's own word that it runs the target, not only a command that exited 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current: Vec<String>,
}

pub const DEFAULT_ACTIVATION_TIMEOUT_MS: u64 = 600_000;

fn default_activation_timeout_ms() -> u64 {
    DEFAULT_ACTIVATION_TIMEOUT_MS
}

/// A policy that cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rollout policy: {0}")]
pub struct InvalidPolicy(pub String);

impl RolloutPolicy {
    /// Parses and validates a policy file; `file` is only used to name the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<RolloutPolicy, SpecError> {
        parse_strict(file, text, RawPolicy::validate)
    }

    /// The invariants every policy keeps, however it was made.
    pub fn check(&self) -> Result<(), InvalidPolicy> {
        let invalid = |message: String| Err(InvalidPolicy(message));
        if self.waves.is_empty() || self.waves.len() > MAX_WAVES {
            return invalid(format!("waves: between 1 and {MAX_WAVES} waves, got {}", self.waves.len()));
        }
        if let Some(last) = self.waves.last().filter(|w| w.size != WaveSize::Percent(100)) {
            return invalid(format!("waves: the last wave must be \"100%\" so that every host is reached, got {}", last.size));
        }
        for (i, wave) in self.waves.iter().enumerate() {
            if matches!(wave.size, WaveSize::Count(0) | WaveSize::Percent(0))
                || matches!(wave.size, WaveSize::Percent(p) if p > 100)
            {
                return invalid(format!("waves[{i}]: {} is not a wave size", wave.size));
            }
        }
        if self.max_in_flight == 0 {
            return invalid("max_in_flight must be at least 1, got 0".into());
        }
        for (i, probe) in self.probes.iter().enumerate() {
            if probe.name.is_empty() || self.probes[..i].iter().any(|p| p.name == probe.name) {
                return invalid(format!("probes[{i}]: name {:?} is empty or used twice", probe.name));
            }
            if probe.failure_threshold == 0 {
                return invalid(format!("probes[{i}] ({}): failure_threshold must be at least 1", probe.name));
            }
            if probe.interval_ms == 0 || probe.timeout_ms == 0 || probe.timeout_ms > probe.interval_ms {
                return invalid(format!(
                    "probes[{i}] ({}): timeout ({}ms) must be above 0 and at most the interval ({}ms)",
                    probe.name, probe.timeout_ms, probe.interval_ms
                ));
            }
        }
        if self.require_probes && !self.probes.iter().any(|p| p.mode == ProbeMode::Enforce) {
            return invalid(
                "no probe has mode = \"enforce\", so nothing would prove a host healthy; add one, \
                 or set require_probes = false to roll out on soak time alone"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn probe(&self, name: &str) -> Option<&ProbeSpec> {
        self.probes.iter().find(|p| p.name == name)
    }

    pub fn enforce_probes(&self) -> impl Iterator<Item = &ProbeSpec> + '_ {
        self.probes.iter().filter(|p| p.mode == ProbeMode::Enforce)
    }

    /// The soak of wave `wave` (the last wave's, for an index past the end).
    pub fn soak_ms(&self, wave: usize) -> u64 {
        self.waves.get(wave).or(self.waves.last()).map_or(0, |w| w.soak_ms)
    }

    /// The host indexes (in rollout order) each wave covers, for `n_hosts` hosts. Cumulative
    /// sizes are made non-decreasing, so a wave can be empty (`[5, "10%", ...]` on 20 hosts);
    /// an empty wave converges at once. The last wave always ends at `n_hosts`.
    pub fn resolve_waves(&self, n_hosts: usize) -> Vec<Range<usize>> {
        let mut start = 0;
        let n_waves = self.waves.len();
        self.waves
            .iter()
            .enumerate()
            .map(|(i, wave)| {
                let end = if i + 1 == n_waves { n_hosts } else { wave.size.cumulative_hosts(n_hosts).max(start) };
                let range = start..end;
                start = end;
                range
            })
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    waves: Option<Spanned<Vec<RawWave>>>,
    max_in_flight: Option<Spanned<i64>>,
    soak: Option<Spanned<RawSoak>>,
    on_failure: Option<Spanned<String>>,
    require_probes: Option<bool>,
    stall_after: Option<Spanned<String>>,
    activation_timeout: Option<Spanned<String>>,
    activate: Option<Spanned<Vec<String>>>,
    rollback: Option<Spanned<Vec<String>>>,
    current: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    probes: Vec<RawProbe>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSoak {
    Every(String),
    PerWave(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: Spanned<String>,
    http: Option<Spanned<String>>,
    expect_status: Option<Spanned<i64>>,
    tcp: Option<Spanned<String>>,
    exec: Option<Spanned<Vec<String>>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    failure_threshold: Option<Spanned<i64>>,
    mode: Option<Spanned<String>>,
    grace: Option<Spanned<String>>,
}

impl RawPolicy {
    fn validate(self) -> Result<RolloutPolicy, Invalid> {
        let sizes = match self.waves {
            None => vec![WaveSize::Count(1), WaveSize::Percent(100)],
            Some(waves) => {
                let span = waves.span();
                let sizes = waves
                    .into_inner()
                    .into_iter()
                    .enumerate()
                    .map(|(i, raw)| raw.validate().map_err(|why| (Some(span.clone()), format!("waves[{i}]: {why}"))));
                sizes.collect::<Result<Vec<_>, _>>()?
            }
        };
        let soaks_ms = match self.soak {
            None => vec![DEFAULT_SOAK_MS; sizes.len()],
            Some(soak) => {
                let span = soak.span();
                let parse = |field: String, text: String| {
                    crate::units::parse_duration_ms(&text).map_err(|why| (Some(span.clone()), format!("{field}: {why}")))
                };
                match soak.into_inner() {
                    RawSoak::Every(text) => vec![parse("soak".into(), text)?; sizes.len()],
                    RawSoak::PerWave(texts) if texts.len() == sizes.len() => {
                        let soaks = texts.into_iter().enumerate().map(|(i, text)| parse(format!("soak[{i}]"), text));
                        soaks.collect::<Result<Vec<_>, _>>()?
                    }
                    RawSoak::PerWave(texts) => {
                        let message =
                            format!("soak: one per wave ({} waves), got {}; or one duration for all", sizes.len(), texts.len());
                        return Err((Some(span), message));
                    }
                }
            }
        };
        let waves = sizes.into_iter().zip(soaks_ms).map(|(size, soak_ms)| WaveSpec { size, soak_ms }).collect();
        let max_in_flight = match &self.max_in_flight {
            None => DEFAULT_MAX_IN_FLIGHT,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(n) if n >= 1 => n,
                _ => return Err((Some(n.span()), format!("max_in_flight must be at least 1, got {}", n.get_ref()))),
            },
        };
        let on_failure = match self.on_failure.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("halt", _)) => OnFailure::Halt,
            Some(("rollback", _)) => OnFailure::Rollback,
            Some((other, span)) => {
                return Err((Some(span), format!("on_failure must be \"halt\" or \"rollback\", got {other:?}")));
            }
        };
        let probes = self.probes.into_iter().enumerate().map(|(i, raw)| raw.validate(i)).collect::<Result<Vec<_>, _>>()?;
        let argv = |field: &str, raw: Option<Spanned<Vec<String>>>| match raw {
            Some(argv) if argv.get_ref().is_empty() || argv.get_ref()[0].is_empty() => {
                Err((Some(argv.span()), format!("{field}: a non-empty argv")))
            }
            raw => Ok(raw.map(Spanned::into_inner).unwrap_or_default()),
        };
        let activate = argv("activate", self.activate)?;
        let rollback = argv("rollback", self.rollback)?;
        if activate.is_empty() != rollback.is_empty() {
            return Err((None, "a host activation needs both activate and rollback (or neither, for a service rollout)".into()));
        }
        let current_span = self.current.as_ref().map(Spanned::span);
        let current = argv("current", self.current)?;
        if !current.is_empty() && activate.is_empty() {
            return Err((current_span, "current is for a host activation (with activate and rollback)".into()));
        }
        let policy = RolloutPolicy {
            waves,
            max_in_flight,
            on_failure,
            probes,
            require_probes: self.require_probes.unwrap_or(true),
            stall_after_ms: duration("stall_after", &self.stall_after, DEFAULT_STALL_AFTER_MS)?,
            activation_timeout_ms: duration("activation_timeout", &self.activation_timeout, DEFAULT_ACTIVATION_TIMEOUT_MS)?,
            activate,
            rollback,
            current,
        };
        policy.check().map_err(|InvalidPolicy(message)| (None, message))?;
        Ok(policy)
    }
}

impl RawProbe {
    fn validate(self, i: usize) -> Result<ProbeSpec, Invalid> {
        let name = self.name.get_ref().clone();
        let field = |key: &str| format!("probes[{i}] ({name}).{key}");
        let kind = match (self.http, self.tcp, self.exec) {
            (Some(url), None, None) => {
                if !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://")) {
                    return Err((
                        Some(url.span()),
                        format!("{}: an http:// or https:// URL, got {:?}", field("http"), url.get_ref()),
                    ));
                }
                let expect_status = match &self.expect_status {
                    None => 200,
                    Some(status) => match u16::try_from(*status.get_ref()) {
                        Ok(s) if (100..=599).contains(&s) => s,
                        _ => {
                            let message =
                                format!("{}: an HTTP status 100..=599, got {}", field("expect_status"), status.get_ref());
                            return Err((Some(status.span()), message));
                        }
                    },
                };
                ProbeKind::Http { url: url.into_inner(), expect_status }
            }
            (None, Some(address), None) if self.expect_status.is_none() => {
                if !address.get_ref().contains(':') {
                    return Err((Some(address.span()), format!("{}: host:port, got {:?}", field("tcp"), address.get_ref())));
                }
                ProbeKind::Tcp { address: address.into_inner() }
            }
            (None, None, Some(argv)) if self.expect_status.is_none() => {
                if argv.get_ref().is_empty() {
                    return Err((Some(argv.span()), format!("{}: a non-empty argv", field("exec"))));
                }
                ProbeKind::Exec { argv: argv.into_inner() }
            }
            _ => {
                let message = format!("probes[{i}] ({name}): set exactly one of http (with expect_status), tcp or exec");
                return Err((Some(self.name.span()), message));
            }
        };
        let failure_threshold = match &self.failure_threshold {
            None => DEFAULT_FAILURE_THRESHOLD,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err((
                        Some(n.span()),
                        format!("{} must be at least 1, got {}", field("failure_threshold"), n.get_ref()),
                    ))
                }
            },
        };
        let mode = match self.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("enforce", _)) => ProbeMode::Enforce,
            Some(("observe", _)) => ProbeMode::Observe,
            Some((other, span)) => {
                return Err((Some(span), format!("{} must be \"enforce\" or \"observe\", got {other:?}", field("mode"))));
            }
        };
        Ok(ProbeSpec {
            kind,
            interval_ms: duration(&field("interval"), &self.interval, DEFAULT_PROBE_INTERVAL_MS)?,
            timeout_ms: duration(&field("timeout"), &self.timeout, DEFAULT_PROBE_TIMEOUT_MS)?,
            failure_threshold,
            mode,
            grace_ms: duration(&field("grace"), &self.grace, 0)?,
            name,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// One host
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRolloutState {
    /// Not dispatched yet: its wave has not come, or the budget is full.
    Pending,
    /// Told to move to `target`; no answer yet.
    Dispatched,
    /// The agent has the order.
    Acked,
    /// The activation command is running.
    Activating,
    /// Activated (`current == target`); probes run until `soak_due_at`.
    Soaking,
    /// Done: healthy on `target` for the whole soak.
    Converged,
    /// Activation failed, or an enforce probe failed `failure_threshold` times in a row.
    Failed,
    /// Ordered back to `previous`; the rollback command is running.
    Reverting,
    /// Back on `previous`.
    Reverted,
}

impl HostRolloutState {
    /// Every state, in the row order of [`LEGAL`].
    pub const ALL: [HostRolloutState; 9] = [
        HostRolloutState::Pending,
        HostRolloutState::Dispatched,
        HostRolloutState::Acked,
        HostRolloutState::Activating,
        HostRolloutState::Soaking,
        HostRolloutState::Converged,
        HostRolloutState::Failed,
        HostRolloutState::Reverting,
        HostRolloutState::Reverted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HostRolloutState::Pending => "pending",
            HostRolloutState::Dispatched => "dispatched",
            HostRolloutState::Acked => "acked",
            HostRolloutState::Activating => "activating",
            HostRolloutState::Soaking => "soaking",
            HostRolloutState::Converged => "converged",
            HostRolloutState::Failed => "failed",
            HostRolloutState::Reverting => "reverting",
            HostRolloutState::Reverted => "reverted",
        }
    }

    /// Between Dispatched and Soaking inclusive: what the disruption budget counts.
    pub fn is_in_flight(self) -> bool {
        match self {
            HostRolloutState::Dispatched | HostRolloutState::Acked | HostRolloutState::Activating | HostRolloutState::Soaking => {
                true
            }
            HostRolloutState::Pending
            | HostRolloutState::Converged
            | HostRolloutState::Failed
            | HostRolloutState::Reverting
            | HostRolloutState::Reverted => false,
        }
    }

    /// The host failed at some point in this rollout (and may have been rolled back since).
    pub fn is_failure(self) -> bool {
        match self {
            HostRolloutState::Failed | HostRolloutState::Reverting | HostRolloutState::Reverted => true,
            HostRolloutState::Pending
            | HostRolloutState::Dispatched
            | HostRolloutState::Acked
            | HostRolloutState::Activating
            | HostRolloutState::Soaking
            | HostRolloutState::Converged => false,
        }
    }

    /// Nothing more happens to the host in this rollout without an operator.
    pub fn is_terminal(self) -> bool {
        match self {
            HostRolloutState::Converged | HostRolloutState::Reverted => true,
            HostRolloutState::Pending
            | HostRolloutState::Dispatched
            | HostRolloutState::Acked
            | HostRolloutState::Activating
            | HostRolloutState::Soaking
            | HostRolloutState::Failed
            | HostRolloutState::Reverting => false,
        }
    }
}

impl fmt::Display for HostRolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds of [`HostInput`], in the column order of [`LEGAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    Dispatch,
    Ack,
    ActivationStarted,
    ActivationCompleted,
    ActivationFailed,
    ProbeResult,
    Tick,
    RollBack,
    RollbackStarted,
    RollbackCompleted,
    RollbackFailed,
}

impl InputKind {
    pub const ALL: [InputKind; 11] = [
        InputKind::Dispatch,
        InputKind::Ack,
        InputKind::ActivationStarted,
        InputKind::ActivationCompleted,
        InputKind::ActivationFailed,
        InputKind::ProbeResult,
        InputKind::Tick,
        InputKind::RollBack,
        InputKind::RollbackStarted,
        InputKind::RollbackCompleted,
        InputKind::RollbackFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InputKind::Dispatch => "dispatch",
            InputKind::Ack => "ack",
            InputKind::ActivationStarted => "activation-started",
            InputKind::ActivationCompleted => "activation-completed",
            InputKind::ActivationFailed => "activation-failed",
            InputKind::ProbeResult => "probe-result",
            InputKind::Tick => "tick",
            InputKind::RollBack => "roll-back",
            InputKind::RollbackStarted => "rollback-started",
            InputKind::RollbackCompleted => "rollback-completed",
            InputKind::RollbackFailed => "rollback-failed",
        }
    }
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which input each state accepts: rows [`HostRolloutState::ALL`], columns [`InputKind::ALL`].
/// `step` is written as its own `match`; a test walks every pair and holds the two to agreement.
#[rustfmt::skip]
pub const LEGAL: [[bool; 11]; 9] = {
    const Y: bool = true;
    const N: bool = false;
    [
        //          dispatch ack started completed act-failed probe tick roll-back rb-started rb-completed rb-failed
        /* Pending    */ [Y, N, N, N, N, N, Y, N, N, N, N],
        /* Dispatched */ [N, Y, N, N, N, N, Y, N, N, N, N],
        /* Acked      */ [N, N, Y, N, Y, N, Y, N, N, N, N],
        /* Activating */ [N, N, N, Y, Y, N, Y, N, N, N, N],
        /* Soaking    */ [N, N, N, N, N, Y, Y, Y, N, N, N],
        /* Converged  */ [N, N, N, N, N, N, Y, Y, N, N, N],
        /* Failed     */ [N, N, N, N, N, N, Y, Y, N, N, N],
        /* Reverting  */ [N, N, N, N, N, N, Y, N, Y, Y, Y],
        /* Reverted   */ [N, N, N, N, N, N, Y, N, N, N, N],
    ]
};

/// Whether `state` accepts an input of `kind` (see [`LEGAL`]).
pub fn legal(state: HostRolloutState, kind: InputKind) -> bool {
    LEGAL[state as usize][kind as usize]
}

/// One probe's results since the host's activation completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub mode: ProbeMode,
    /// Failures since the last pass: what `failure_threshold` is compared with. A pass clears it.
    pub consecutive_failures: u32,
    pub n_passes: u32,
    pub n_failures: u32,
    /// When the latest pass was recorded (control-plane time).
    pub last_pass_at: Option<u64>,
    /// When the latest result was taken, by the agent's clock (informative only).
    pub last_run_at: u64,
}

/// The state of one host in one rollout, with every field of the seed (`target_closure` →
/// `target`, `current_closure_at_dispatch` → `previous`, `current_closure` → `current`). The
/// control plane folds it from the journal and hands the non-terminal ones back to an agent that
/// restarted with an empty memory, so its probes and soak resume where they were.
///
/// Unlike the seed, the probe results are carried too: the control plane decides failure and
/// convergence from them, so a restart of the agent (or of the control plane, which replays the
/// journal) resets no failure count. `dispatched_at` is optional because here a host has a
/// snapshot from the rollout's start, while it is still Pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRolloutSnapshot {
    pub rollout_id: String,
    pub hostname: String,
    pub channel: String,
    pub state: HostRolloutState,
    pub target: String,
    /// What the host ran when it was dispatched: where a rollback returns it. `None`: nothing.
    pub previous: Option<String>,
    /// What the host runs, as last known.
    pub current: Option<String>,
    pub dispatched_at: Option<u64>,
    pub dispatch_acked_at: Option<u64>,
    pub activation_started_at: Option<u64>,
    pub activation_completed_at: Option<u64>,
    /// `activation_completed_at + soak` of the host's wave; set once per activation.
    pub soak_due_at: Option<u64>,
    /// The highest report `seq` applied; reports at or below it are duplicates.
    pub last_event_seq: u64,
    /// The host's wave (index into the policy's waves).
    pub wave: usize,
    /// By probe name; cleared when an activation completes.
    pub probes: BTreeMap<String, ProbeStatus>,
    /// When the agent last reported anything (or the host was dispatched): stall detection.
    pub last_report_at: Option<u64>,
    pub converged_at: Option<u64>,
    /// Why the host failed (kept through Reverting and Reverted).
    pub failure: Option<String>,
    /// Rollbacks ordered; the control plane orders one, a second is an operator's call.
    pub n_rollbacks: u32,
}

/// What happened to a host in a rollout, as the control plane learns it. Agent reports carry
/// their `seq`; the control plane's decisions and ticks do not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "kebab-case")]
pub enum HostInput {
    /// The control plane sends the host to `target` (decided by [`next_actions`]).
    Dispatch,
    /// The host has its order. `current`: what it runs, when it can tell (a host activation with
    /// a `current` command): it replaces the control plane's idea of it, as `current` and as
    /// `previous` (where a rollback returns it).
    Ack {
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<String>,
    },
    ActivationStarted {
        seq: u64,
    },
    /// The activation command finished; `current` is what the host now runs.
    ActivationCompleted {
        seq: u64,
        current: String,
    },
    ActivationFailed {
        seq: u64,
        error: String,
    },
    ProbeResult {
        seq: u64,
        probe: String,
        passed: bool,
        mode: ProbeMode,
        /// When the agent took the result, by its clock.
        at: u64,
    },
    /// Time passed.
    Tick,
    /// The control plane orders the host back to `previous` (decided by [`next_actions`], or an
    /// operator's undo).
    RollBack,
    RollbackStarted {
        seq: u64,
    },
    RollbackCompleted {
        seq: u64,
        current: Option<String>,
    },
    RollbackFailed {
        seq: u64,
        error: String,
    },
}

impl HostInput {
    pub fn kind(&self) -> InputKind {
        match self {
            HostInput::Dispatch => InputKind::Dispatch,
            HostInput::Ack { .. } => InputKind::Ack,
            HostInput::ActivationStarted { .. } => InputKind::ActivationStarted,
            HostInput::ActivationCompleted { .. } => InputKind::ActivationCompleted,
            HostInput::ActivationFailed { .. } => InputKind::ActivationFailed,
            HostInput::ProbeResult { .. } => InputKind::ProbeResult,
            HostInput::Tick => InputKind::Tick,
            HostInput::RollBack => InputKind::RollBack,
            HostInput::RollbackStarted { .. } => InputKind::RollbackStarted,
            HostInput::RollbackCompleted { .. } => InputKind::RollbackCompleted,
            HostInput::RollbackFailed { .. } => InputKind::RollbackFailed,
        }
    }

    /// The agent's sequence number, for the inputs that are agent reports.
    pub fn seq(&self) -> Option<u64> {
        match self {
            HostInput::Ack { seq, .. }
            | HostInput::ActivationStarted { seq }
            | HostInput::ActivationCompleted { seq, .. }
            | HostInput::ActivationFailed { seq, .. }
            | HostInput::ProbeResult { seq, .. }
            | HostInput::RollbackStarted { seq }
            | HostInput::RollbackCompleted { seq, .. }
            | HostInput::RollbackFailed { seq, .. } => Some(*seq),
            HostInput::Dispatch | HostInput::Tick | HostInput::RollBack => None,
        }
    }
}

/// What `step` decided for a host: the facts to journal, which `apply` records. Applied in
/// order, at the step's time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum HostEvent {
    /// `previous` becomes what the host runs now.
    Dispatched,
    Acked {
        seq: u64,
        /// What the host said it runs (see [`HostInput::Ack`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<String>,
    },
    ActivationStarted {
        seq: u64,
    },
    /// The host reported running `current` (which is not what was expected; a failure follows).
    CurrentReported {
        current: Option<String>,
    },
    ActivationCompleted {
        seq: u64,
        current: String,
        soak_due_at: u64,
    },
    ProbeRecorded {
        seq: u64,
        probe: String,
        mode: ProbeMode,
        passed: bool,
        at: u64,
        /// A failure within the probe's `grace` after the activation: not counted.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_grace: bool,
    },
    Converged,
    Failed {
        seq: Option<u64>,
        reason: String,
    },
    RollbackOrdered,
    RollbackStarted {
        seq: u64,
    },
    Reverted {
        seq: u64,
        current: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Journal these, then `apply` them (none: a tick with nothing due).
    Events(Vec<HostEvent>),
    /// A report already applied (a redelivery or a replay): nothing changes.
    Duplicate { seq: u64, last_event_seq: u64 },
}

impl Decision {
    pub fn events(&self) -> &[HostEvent] {
        match self {
            Decision::Events(events) => events,
            Decision::Duplicate { .. } => &[],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("rollout {rollout_id}: host {hostname} is {state}; {input} does not apply")]
    Illegal { rollout_id: String, hostname: String, state: HostRolloutState, input: InputKind },
    #[error("rollout {rollout_id}: host {hostname} reported probe {probe:?} ({mode:?}), but the policy has no such probe")]
    UnknownProbe { rollout_id: String, hostname: String, probe: String, mode: ProbeMode },
}

impl HostRolloutSnapshot {
    /// A host at the start of a rollout, running `current`.
    pub fn pending(
        rollout_id: &str,
        hostname: &str,
        channel: &str,
        target: &str,
        current: Option<String>,
        wave: usize,
    ) -> HostRolloutSnapshot {
        HostRolloutSnapshot {
            rollout_id: rollout_id.into(),
            hostname: hostname.into(),
            channel: channel.into(),
            state: HostRolloutState::Pending,
            target: target.into(),
            previous: None,
            current,
            dispatched_at: None,
            dispatch_acked_at: None,
            activation_started_at: None,
            activation_completed_at: None,
            soak_due_at: None,
            last_event_seq: 0,
            wave,
            probes: BTreeMap::new(),
            last_report_at: None,
            converged_at: None,
            failure: None,
            n_rollbacks: 0,
        }
    }

    /// Decides what `input` at `now_ms` means for this host under `policy`, without changing it.
    /// Duplicates are recognised before legality: a report applied once stays answered the same.
    pub fn step(&self, input: &HostInput, now_ms: u64, policy: &RolloutPolicy) -> Result<Decision, StepError> {
        use HostRolloutState as S;
        if let Some(seq) = input.seq().filter(|seq| *seq <= self.last_event_seq) {
            return Ok(Decision::Duplicate { seq, last_event_seq: self.last_event_seq });
        }
        let mut events = match (self.state, input) {
            (S::Pending, HostInput::Dispatch) => vec![HostEvent::Dispatched],
            (S::Dispatched, HostInput::Ack { seq, current }) => {
                vec![HostEvent::Acked { seq: *seq, current: current.clone() }]
            }
            (S::Acked, HostInput::ActivationStarted { seq }) => vec![HostEvent::ActivationStarted { seq: *seq }],
            (S::Acked | S::Activating, HostInput::ActivationFailed { seq, error }) => {
                vec![HostEvent::Failed { seq: Some(*seq), reason: format!("activation failed: {error}") }]
            }
            (S::Activating, HostInput::ActivationCompleted { seq, current }) if *current == self.target => {
                let soak_due_at = now_ms.saturating_add(policy.soak_ms(self.wave));
                vec![HostEvent::ActivationCompleted { seq: *seq, current: current.clone(), soak_due_at }]
            }
            (S::Activating, HostInput::ActivationCompleted { seq, current }) => vec![
                HostEvent::CurrentReported { current: Some(current.clone()) },
                HostEvent::Failed {
                    seq: Some(*seq),
                    reason: format!("activation completed but the host runs {current}, not the target {}", self.target),
                },
            ],
            (S::Soaking, HostInput::ProbeResult { seq, probe, passed, mode, at }) => {
                let spec = policy.probe(probe).filter(|spec| spec.mode == *mode).ok_or_else(|| StepError::UnknownProbe {
                    rollout_id: self.rollout_id.clone(),
                    hostname: self.hostname.clone(),
                    probe: probe.clone(),
                    mode: *mode,
                })?;
                let activated_at = self.activation_completed_at.unwrap_or(now_ms);
                let in_grace = !*passed && now_ms < activated_at.saturating_add(spec.grace_ms);
                let recorded =
                    HostEvent::ProbeRecorded { seq: *seq, probe: probe.clone(), mode: *mode, passed: *passed, at: *at, in_grace };
                let before = self.probes.get(probe).map_or(0, |s| s.consecutive_failures);
                let consecutive_failures = match (*passed, in_grace) {
                    (true, _) => 0,
                    (false, true) => before,
                    (false, false) => before + 1,
                };
                if *mode == ProbeMode::Enforce && consecutive_failures >= spec.failure_threshold {
                    let reason = format!(
                        "enforce probe {probe} failed {consecutive_failures} times in a row (failure_threshold = {})",
                        spec.failure_threshold
                    );
                    vec![recorded, HostEvent::Failed { seq: None, reason }]
                } else {
                    vec![recorded]
                }
            }
            (_, HostInput::Tick) => Vec::new(),
            // Failed: decided by `next_actions`; Soaking or Converged: an operator's undo.
            (S::Failed | S::Soaking | S::Converged, HostInput::RollBack) => vec![HostEvent::RollbackOrdered],
            (S::Reverting, HostInput::RollbackStarted { seq }) => vec![HostEvent::RollbackStarted { seq: *seq }],
            (S::Reverting, HostInput::RollbackCompleted { seq, current }) if *current == self.previous => {
                vec![HostEvent::Reverted { seq: *seq, current: current.clone() }]
            }
            (S::Reverting, HostInput::RollbackCompleted { seq, current }) => vec![
                HostEvent::CurrentReported { current: current.clone() },
                HostEvent::Failed {
                    seq: Some(*seq),
                    reason: format!("rollback left the host on {}, not {}", describe(current), describe(&self.previous)),
                },
            ],
            (S::Reverting, HostInput::RollbackFailed { seq, error }) => {
                vec![HostEvent::Failed { seq: Some(*seq), reason: format!("rollback failed: {error}") }]
            }
            (state, input) => {
                return Err(StepError::Illegal {
                    rollout_id: self.rollout_id.clone(),
                    hostname: self.hostname.clone(),
                    state,
                    input: input.kind(),
                })
            }
        };
        // Convergence is checked on the state the events lead to, whatever the input was: a
        // probe that passes after the soak ended converges at once, without waiting for a tick.
        let converges = if events.is_empty() {
            self.ready_to_converge(now_ms, policy)
        } else {
            let mut after = self.clone();
            events.iter().for_each(|event| after.apply(event, now_ms));
            after.ready_to_converge(now_ms, policy)
        };
        if converges {
            events.push(HostEvent::Converged);
        }
        Ok(Decision::Events(events))
    }

    /// Whether the host may converge at `now_ms`: Soaking on `target`, the soak over, and every
    /// enforce probe passing with a pass recorded at or after `soak_due_at`.
    pub fn ready_to_converge(&self, now_ms: u64, policy: &RolloutPolicy) -> bool {
        let Some(soak_due_at) = self.soak_due_at else { return false };
        self.state == HostRolloutState::Soaking
            && self.current.as_deref() == Some(self.target.as_str())
            && now_ms >= soak_due_at
            && self.enforce_probes_passing(policy)
            && policy
                .enforce_probes()
                .all(|spec| self.probes.get(&spec.name).and_then(|s| s.last_pass_at).is_some_and(|at| at >= soak_due_at))
    }

    /// Every enforce probe has passed since the activation and its latest result is a pass. With
    /// no enforce probe this holds only if the policy says `require_probes = false`.
    pub fn enforce_probes_passing(&self, policy: &RolloutPolicy) -> bool {
        let mut enforce = policy.enforce_probes().peekable();
        if enforce.peek().is_none() {
            return !policy.require_probes;
        }
        enforce.all(|spec| self.probes.get(&spec.name).is_some_and(|s| s.consecutive_failures == 0 && s.n_passes > 0))
    }

    /// Records one event at `at_ms`. Called for live decisions and for replay alike.
    pub fn apply(&mut self, event: &HostEvent, at_ms: u64) {
        match event {
            HostEvent::Dispatched => {
                self.state = HostRolloutState::Dispatched;
                self.previous = self.current.clone();
                self.dispatched_at = Some(at_ms);
                self.last_report_at = Some(at_ms);
            }
            HostEvent::Acked { seq, current } => {
                self.reported(*seq, at_ms);
                if let Some(current) = current {
                    self.current = Some(current.clone());
                    self.previous = Some(current.clone());
                }
                self.state = HostRolloutState::Acked;
                self.dispatch_acked_at = Some(at_ms);
            }
            HostEvent::ActivationStarted { seq } => {
                self.reported(*seq, at_ms);
                self.state = HostRolloutState::Activating;
                self.activation_started_at = Some(at_ms);
            }
            HostEvent::CurrentReported { current } => self.current = current.clone(),
            HostEvent::ActivationCompleted { seq, current, soak_due_at } => {
                self.reported(*seq, at_ms);
                self.state = HostRolloutState::Soaking;
                self.current = Some(current.clone());
                self.activation_completed_at = Some(at_ms);
                self.soak_due_at = Some(*soak_due_at);
                self.probes.clear();
            }
            HostEvent::ProbeRecorded { seq, probe, mode, passed, at, in_grace } => {
                self.reported(*seq, at_ms);
                let status = self.probes.entry(probe.clone()).or_insert(ProbeStatus {
                    mode: *mode,
                    consecutive_failures: 0,
                    n_passes: 0,
                    n_failures: 0,
                    last_pass_at: None,
                    last_run_at: *at,
                });
                status.last_run_at = *at;
                if *passed {
                    status.n_passes += 1;
                    status.consecutive_failures = 0;
                    status.last_pass_at = Some(at_ms);
                } else {
                    status.n_failures += 1;
                    if !*in_grace {
                        status.consecutive_failures += 1;
                    }
                }
            }
            HostEvent::Converged => {
                self.state = HostRolloutState::Converged;
                self.converged_at = Some(at_ms);
            }
            HostEvent::Failed { seq, reason } => {
                if let Some(seq) = seq {
                    self.reported(*seq, at_ms);
                }
                self.state = HostRolloutState::Failed;
                self.failure = Some(reason.clone());
            }
            HostEvent::RollbackOrdered => {
                self.state = HostRolloutState::Reverting;
                self.n_rollbacks += 1;
                // Only a failed host is rolled back on the rollout's own decision.
                self.failure.get_or_insert_with(|| "rolled back by an operator (warden rollout undo)".into());
            }
            HostEvent::RollbackStarted { seq } => self.reported(*seq, at_ms),
            HostEvent::Reverted { seq, current } => {
                self.reported(*seq, at_ms);
                self.state = HostRolloutState::Reverted;
                self.current = current.clone();
            }
        }
        debug_assert_eq!(self.validate(), Ok(()));
    }

    fn reported(&mut self, seq: u64, at_ms: u64) {
        self.last_event_seq = self.last_event_seq.max(seq);
        self.last_report_at = Some(at_ms);
    }

    /// Invariants of one host that hold after every event, whatever the policy.
    pub fn validate(&self) -> Result<(), String> {
        use HostRolloutState as S;
        let name = &self.hostname;
        let reached = |field: Option<u64>, from: S| match (field.is_some(), self.state >= from && !self.state.is_failure()) {
            (false, true) => Err(format!("{name} is {} but has no timestamp for {from}", self.state)),
            _ => Ok(()),
        };
        reached(self.dispatched_at, S::Dispatched)?;
        reached(self.dispatch_acked_at, S::Acked)?;
        reached(self.activation_started_at, S::Activating)?;
        reached(self.activation_completed_at, S::Soaking)?;
        reached(self.soak_due_at, S::Soaking)?;
        reached(self.converged_at, S::Converged)?;
        let times = [self.dispatched_at, self.dispatch_acked_at, self.activation_started_at, self.activation_completed_at];
        let mut latest = 0;
        for at in times.into_iter().flatten() {
            if at < latest {
                return Err(format!("{name}: timestamps out of order: {times:?}"));
            }
            latest = at;
        }
        if let (Some(completed), Some(due)) = (self.activation_completed_at, self.soak_due_at) {
            if due < completed {
                return Err(format!("{name}: soak due at {due}, before the activation completed at {completed}"));
            }
        }
        match self.state {
            S::Soaking | S::Converged if self.current.as_deref() != Some(self.target.as_str()) => {
                return Err(format!("{name} is {} on {:?}, not the target {}", self.state, self.current, self.target));
            }
            S::Converged if self.converged_at < self.soak_due_at => {
                return Err(format!(
                    "{name} converged at {:?}, before its soak was due at {:?}",
                    self.converged_at, self.soak_due_at
                ));
            }
            S::Failed | S::Reverting | S::Reverted if self.failure.is_none() => {
                return Err(format!("{name} is {} with no failure recorded", self.state));
            }
            S::Reverted if self.current != self.previous => {
                return Err(format!("{name} is reverted to {:?}, not its previous {:?}", self.current, self.previous));
            }
            _ => {}
        }
        Ok(())
    }
}

fn describe(version: &Option<String>) -> &str {
    version.as_deref().unwrap_or("nothing")
}

// ---------------------------------------------------------------------------------------------
// The rollout
// ---------------------------------------------------------------------------------------------

/// One rollout of `target` to a set of hosts, under `policy`. Folded from [`RolloutEvent`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub rollout_id: String,
    pub channel: String,
    pub target: String,
    pub policy: RolloutPolicy,
    pub hosts: BTreeMap<String, HostRolloutSnapshot>,
    /// The hosts of each wave, in dispatch order (resolved at the start, then fixed).
    pub waves: Vec<Vec<String>>,
    /// The current wave; only grows.
    pub wave: usize,
    /// Why dispatching stopped, once a host failed.
    pub halted: Option<String>,
    /// The target is quarantined for this service/channel (`on_failure = rollback`).
    pub quarantined: bool,
    /// Every host converged.
    pub completed: bool,
    /// An operator undid the rollout: it is halted, and every host that reached the target (or
    /// failed on it) is rolled back to `previous`.
    #[serde(default)]
    pub undone: bool,
    pub updated_at_ms: u64,
}

/// What a rollout journals: a host's event, or a decision of the rollout itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RolloutEvent {
    Host {
        hostname: String,
        event: HostEvent,
    },
    WaveAdvanced {
        wave: usize,
    },
    Halted {
        reason: String,
    },
    Quarantined {
        target: String,
    },
    Completed,
    /// An operator's undo (`warden rollout undo`): halts, and rolls back every host on the target.
    Undone {
        reason: String,
    },
}

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

/// What [`next_actions`] asks of the runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Journal the dispatch, then send the host its snapshot.
    Dispatch {
        hostname: String,
    },
    /// Journal the host's convergence.
    Converge {
        hostname: String,
    },
    /// Journal the order, then send the host its snapshot (it rolls back to `to`).
    RollBack {
        hostname: String,
        to: Option<String>,
    },
    AdvanceWave {
        wave: usize,
    },
    Halt {
        reason: String,
    },
    /// Journal it, and refuse `target` for this service/channel until a new rollout replaces it.
    Quarantine {
        channel: String,
        target: String,
    },
    Complete,
    /// Not a decision, a report: `hostname`, in the current wave, has been holding the wave up
    /// since `since` for `reason`. The wave waits for it; it is never skipped.
    Blocked {
        hostname: String,
        state: HostRolloutState,
        since: u64,
        reason: BlockedReason,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockedReason {
    /// No report since `since` (the last one, or the dispatch): the host is likely down.
    Silent,
    /// Soaked since `since`, still reporting, but its enforce probes have not all passed together
    /// (a probe flapping below its threshold, out of step with another).
    NotPassing,
}

impl Action {
    /// The event that records this decision; `None` for a report.
    pub fn event(&self) -> Option<RolloutEvent> {
        let host = |hostname: &String, event| Some(RolloutEvent::Host { hostname: hostname.clone(), event });
        match self {
            Action::Dispatch { hostname } => host(hostname, HostEvent::Dispatched),
            Action::Converge { hostname } => host(hostname, HostEvent::Converged),
            Action::RollBack { hostname, .. } => host(hostname, HostEvent::RollbackOrdered),
            Action::AdvanceWave { wave } => Some(RolloutEvent::WaveAdvanced { wave: *wave }),
            Action::Halt { reason } => Some(RolloutEvent::Halted { reason: reason.clone() }),
            Action::Quarantine { target, .. } => Some(RolloutEvent::Quarantined { target: target.clone() }),
            Action::Complete => Some(RolloutEvent::Completed),
            Action::Blocked { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NewRolloutError {
    #[error(transparent)]
    Policy(#[from] InvalidPolicy),
    #[error("rollout {0}: no hosts to roll out to")]
    NoHosts(String),
    #[error("rollout {rollout_id}: host {hostname} is listed twice")]
    DuplicateHost { rollout_id: String, hostname: String },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RolloutStepError {
    #[error("rollout {rollout_id} has no host {hostname}")]
    UnknownHost { rollout_id: String, hostname: String },
    #[error(transparent)]
    Host(#[from] StepError),
    #[error("rollout {rollout_id}: dispatching {hostname} would put {} hosts in flight; max_in_flight is {max_in_flight}", n_in_flight + 1)]
    OverBudget { rollout_id: String, hostname: String, n_in_flight: usize, max_in_flight: usize },
    #[error("rollout {rollout_id}: {hostname} is in wave {host_wave}, the rollout is at wave {wave}")]
    NotCurrentWave { rollout_id: String, hostname: String, host_wave: usize, wave: usize },
    #[error("rollout {rollout_id} is halted ({reason}); {hostname} is not dispatched")]
    Halted { rollout_id: String, hostname: String, reason: String },
}

impl Rollout {
    /// A rollout of `target` to `hosts` (in dispatch order, each with what it runs now).
    pub fn new(
        rollout_id: &str,
        channel: &str,
        target: &str,
        policy: RolloutPolicy,
        hosts: &[(String, Option<String>)],
        at_ms: u64,
    ) -> Result<Rollout, NewRolloutError> {
        policy.check()?;
        if hosts.is_empty() {
            return Err(NewRolloutError::NoHosts(rollout_id.into()));
        }
        let ranges = policy.resolve_waves(hosts.len());
        let mut snapshots = BTreeMap::new();
        let mut waves = Vec::with_capacity(ranges.len());
        for (wave, range) in ranges.into_iter().enumerate() {
            let mut names = Vec::with_capacity(range.len());
            for (hostname, current) in &hosts[range] {
                let snapshot = HostRolloutSnapshot::pending(rollout_id, hostname, channel, target, current.clone(), wave);
                if snapshots.insert(hostname.clone(), snapshot).is_some() {
                    return Err(NewRolloutError::DuplicateHost { rollout_id: rollout_id.into(), hostname: hostname.clone() });
                }
                names.push(hostname.clone());
            }
            waves.push(names);
        }
        Ok(Rollout {
            rollout_id: rollout_id.into(),
            channel: channel.into(),
            target: target.into(),
            policy,
            hosts: snapshots,
            waves,
            wave: 0,
            halted: None,
            quarantined: false,
            completed: false,
            undone: false,
            updated_at_ms: at_ms,
        })
    }

    /// Hosts between Dispatched and Soaking: what `max_in_flight` bounds.
    pub fn n_in_flight(&self) -> usize {
        self.hosts.values().filter(|h| h.state.is_in_flight()).count()
    }

    /// Decides what `input` means for `hostname`. Besides the host's own legality, a dispatch
    /// must be of the current wave, within the budget, and not after a halt: the budget is held
    /// here and not only by [`next_actions`]'s arithmetic.
    pub fn step_host(&self, hostname: &str, input: &HostInput, now_ms: u64) -> Result<Decision, RolloutStepError> {
        let rollout_id = || self.rollout_id.clone();
        let host = self
            .hosts
            .get(hostname)
            .ok_or_else(|| RolloutStepError::UnknownHost { rollout_id: rollout_id(), hostname: hostname.into() })?;
        if *input == HostInput::Dispatch && host.state == HostRolloutState::Pending {
            if let Some(reason) = &self.halted {
                return Err(RolloutStepError::Halted {
                    rollout_id: rollout_id(),
                    hostname: hostname.into(),
                    reason: reason.clone(),
                });
            }
            if host.wave != self.wave {
                let (host_wave, wave) = (host.wave, self.wave);
                return Err(RolloutStepError::NotCurrentWave {
                    rollout_id: rollout_id(),
                    hostname: hostname.into(),
                    host_wave,
                    wave,
                });
            }
            let n_in_flight = self.n_in_flight();
            if n_in_flight >= self.policy.max_in_flight {
                let max_in_flight = self.policy.max_in_flight;
                return Err(RolloutStepError::OverBudget {
                    rollout_id: rollout_id(),
                    hostname: hostname.into(),
                    n_in_flight,
                    max_in_flight,
                });
            }
        }
        Ok(host.step(input, now_ms, &self.policy)?)
    }

    /// Records one event. Called for live decisions and for replay alike.
    pub fn apply(&mut self, event: &RolloutEvent, at_ms: u64) {
        self.updated_at_ms = at_ms;
        match event {
            RolloutEvent::Host { hostname, event } => {
                if let Some(host) = self.hosts.get_mut(hostname) {
                    host.apply(event, at_ms);
                }
            }
            RolloutEvent::WaveAdvanced { wave } => self.wave = self.wave.max(*wave),
            RolloutEvent::Halted { reason } => {
                self.halted.get_or_insert_with(|| reason.clone());
            }
            RolloutEvent::Quarantined { .. } => self.quarantined = true,
            RolloutEvent::Completed => self.completed = true,
            RolloutEvent::Undone { reason } => {
                self.undone = true;
                self.halted.get_or_insert_with(|| reason.clone());
            }
        }
        debug_assert_eq!(self.validate(), Ok(()));
    }

    /// Invariants of the rollout that hold after every event.
    pub fn validate(&self) -> Result<(), String> {
        let n_in_flight = self.n_in_flight();
        if n_in_flight > self.policy.max_in_flight {
            return Err(format!("{n_in_flight} hosts in flight, max_in_flight is {}", self.policy.max_in_flight));
        }
        if self.wave >= self.waves.len() {
            return Err(format!("at wave {}, of {} waves", self.wave, self.waves.len()));
        }
        for host in self.hosts.values() {
            host.validate()?;
            let name = &host.hostname;
            if host.wave > self.wave && host.state != HostRolloutState::Pending {
                return Err(format!("{name} of wave {} is {} while the rollout is at wave {}", host.wave, host.state, self.wave));
            }
            if host.wave < self.wave && host.state != HostRolloutState::Converged && !self.undone {
                return Err(format!(
                    "{name} of wave {} is {}, yet the rollout moved on to wave {}",
                    host.wave, host.state, self.wave
                ));
            }
            if let (Some(completed), Some(due)) = (host.activation_completed_at, host.soak_due_at) {
                let soak_ms = self.policy.soak_ms(host.wave);
                if due != completed.saturating_add(soak_ms) {
                    return Err(format!("{name}: soak due at {due}, not activation ({completed}) + soak ({soak_ms}ms)"));
                }
            }
            if host.state == HostRolloutState::Converged && !host.enforce_probes_passing(&self.policy) {
                return Err(format!("{name} converged without every enforce probe passing: {:?}", host.probes));
            }
        }
        if self.completed
            && !self.undone
            && (self.wave + 1 != self.waves.len() || self.hosts.values().any(|h| h.state != HostRolloutState::Converged))
        {
            return Err("completed, but not every host converged".into());
        }
        if (self.quarantined || self.undone) && self.halted.is_none() {
            return Err("the target is quarantined but the rollout is not halted".into());
        }
        Ok(())
    }
}

/// What the runtime must do now for `rollout`, in order: journal each action's
/// [`Action::event`] and apply it before the next (the runtime then sends dispatched and
/// rolled-back hosts their snapshots). Pure and idempotent: once a batch is carried out, a call
/// at the same `now_ms` asks for nothing more than the [`Action::Blocked`] reports.
///
/// - Soaking hosts that are ready converge.
/// - A failed host halts the rollout; with `on_failure = rollback` the target is quarantined and
///   each failed host not yet ordered back is rolled back (once: a rollback that fails is left
///   to an operator).
/// - Unless halted: while every host of the current wave has converged, the rollout moves to the
///   next wave (an empty wave at once); after the last, it is complete. Then Pending hosts of the
///   current wave are dispatched, in order, while fewer than `max_in_flight` are in flight.
/// - Hosts of the current wave in flight that have been silent for `stall_after`, or soaking
///   that long past their soak without passing, are reported.
pub fn next_actions(rollout: &Rollout, now_ms: u64) -> Vec<Action> {
    use HostRolloutState as S;
    let policy = &rollout.policy;
    let mut actions = Vec::new();
    if rollout.undone {
        // Every host that reached the target, or failed on it, goes back once; hosts still on
        // their way are rolled back when they get there.
        for hostname in rollout.waves.iter().flatten() {
            let host = &rollout.hosts[hostname];
            if matches!(host.state, S::Soaking | S::Converged | S::Failed) && host.n_rollbacks == 0 {
                actions.push(Action::RollBack { hostname: hostname.clone(), to: host.previous.clone() });
            }
        }
        return actions;
    }
    if rollout.completed {
        return actions;
    }

    // A set: a wave can have thousands of hosts, and each is looked up here below.
    let mut converging = std::collections::BTreeSet::new();
    for hostname in &rollout.waves[rollout.wave] {
        let host = &rollout.hosts[hostname];
        let decided = host.step(&HostInput::Tick, now_ms, policy).ok();
        if decided.is_some_and(|d| d.events().contains(&HostEvent::Converged)) {
            converging.insert(hostname.as_str());
            actions.push(Action::Converge { hostname: hostname.clone() });
        }
    }

    let failed: Vec<&HostRolloutSnapshot> = rollout.hosts.values().filter(|h| h.state.is_failure()).collect();
    let halted = rollout.halted.is_some() || !failed.is_empty();
    if let (None, Some(first)) = (&rollout.halted, failed.first()) {
        let why = first.failure.as_deref().unwrap_or("failed");
        actions.push(Action::Halt { reason: format!("host {} failed: {why}", first.hostname) });
    }
    if policy.on_failure == OnFailure::Rollback && !failed.is_empty() {
        if !rollout.quarantined {
            actions.push(Action::Quarantine { channel: rollout.channel.clone(), target: rollout.target.clone() });
        }
        for host in failed.iter().filter(|h| h.state == S::Failed && h.n_rollbacks == 0) {
            actions.push(Action::RollBack { hostname: host.hostname.clone(), to: host.previous.clone() });
        }
    }

    let mut wave = rollout.wave;
    if !halted {
        let converged = |name: &String| rollout.hosts[name].state == S::Converged || converging.contains(name.as_str());
        while rollout.waves[wave].iter().all(converged) {
            if wave + 1 == rollout.waves.len() {
                actions.push(Action::Complete);
                return actions;
            }
            wave += 1;
            actions.push(Action::AdvanceWave { wave });
        }
        let n_in_flight = rollout.n_in_flight() - converging.len();
        let free = policy.max_in_flight.saturating_sub(n_in_flight);
        let pending = rollout.waves[wave].iter().filter(|name| rollout.hosts[*name].state == S::Pending);
        actions.extend(pending.take(free).map(|name| Action::Dispatch { hostname: name.clone() }));
    }

    let stalled = |since: u64| now_ms >= since.saturating_add(policy.stall_after_ms);
    for hostname in &rollout.waves[wave] {
        let host = &rollout.hosts[hostname];
        if !host.state.is_in_flight() || converging.contains(hostname.as_str()) {
            continue;
        }
        let last_report_at = host.last_report_at.unwrap_or(rollout.updated_at_ms);
        let blocked = match host.soak_due_at {
            _ if stalled(last_report_at) => Some((last_report_at, BlockedReason::Silent)),
            Some(soak_due_at) if stalled(soak_due_at) => Some((soak_due_at, BlockedReason::NotPassing)),
            _ => None,
        };
        if let Some((since, reason)) = blocked {
            actions.push(Action::Blocked { hostname: hostname.clone(), state: host.state, since, reason });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_445_345_123;

    fn policy(soak_ms: u64, on_failure: OnFailure) -> RolloutPolicy {
        RolloutPolicy {
            waves: vec![
                WaveSpec { size: WaveSize::Count(1), soak_ms },
                WaveSpec { size: WaveSize::Percent(50), soak_ms },
                WaveSpec { size: WaveSize::Percent(100), soak_ms },
            ],
            max_in_flight: 2,
            on_failure,
            probes: vec![
                ProbeSpec {
                    name: "health".into(),
                    kind: ProbeKind::Http { url: "http://127.0.0.1:8080/healthz".into(), expect_status: 200 },
                    interval_ms: 1_000,
                    timeout_ms: 500,
                    failure_threshold: 3,
                    mode: ProbeMode::Enforce,
                    grace_ms: 0,
                },
                ProbeSpec {
                    name: "latency".into(),
                    kind: ProbeKind::Exec { argv: vec!["/bin/check-latency".into()] },
                    interval_ms: 1_000,
                    timeout_ms: 500,
                    failure_threshold: 1,
                    mode: ProbeMode::Observe,
                    grace_ms: 0,
                },
            ],
            require_probes: true,
            stall_after_ms: 60_000,
            activation_timeout_ms: DEFAULT_ACTIVATION_TIMEOUT_MS,
            activate: Vec::new(),
            rollback: Vec::new(),
            current: Vec::new(),
        }
    }

    fn probe(seq: u64, passed: bool, at: u64) -> HostInput {
        HostInput::ProbeResult { seq, probe: "health".into(), passed, mode: ProbeMode::Enforce, at }
    }

    fn host() -> HostRolloutSnapshot {
        HostRolloutSnapshot::pending("r-1", "a", "stable", "v2", Some("v1".into()), 0)
    }

    /// Steps and applies, panicking on an error: the path to a state.
    fn feed(host: &mut HostRolloutSnapshot, input: HostInput, now_ms: u64, policy: &RolloutPolicy) {
        let decision = host.step(&input, now_ms, policy).unwrap_or_else(|err| panic!("{input:?}: {err}"));
        for event in decision.events() {
            host.apply(event, now_ms);
        }
    }

    /// A host brought to `state` by legal inputs, with `last_event_seq` 10 × the number of reports.
    fn host_in(state: HostRolloutState, policy: &RolloutPolicy) -> HostRolloutSnapshot {
        use HostRolloutState as S;
        let mut h = host();
        let path: &[HostInput] = match state {
            S::Pending => &[],
            S::Dispatched => &[HostInput::Dispatch],
            S::Acked => &[HostInput::Dispatch, HostInput::Ack { seq: 10, current: None }],
            S::Activating | S::Soaking | S::Converged | S::Failed | S::Reverting | S::Reverted => {
                &[HostInput::Dispatch, HostInput::Ack { seq: 10, current: None }, HostInput::ActivationStarted { seq: 20 }]
            }
        };
        for input in path {
            feed(&mut h, input.clone(), T0, policy);
        }
        let complete = HostInput::ActivationCompleted { seq: 30, current: "v2".into() };
        let fail = HostInput::ActivationFailed { seq: 30, error: "switch exited 1".into() };
        let extra: Vec<HostInput> = match state {
            S::Soaking => vec![complete],
            S::Converged => vec![complete, probe(40, true, T0 + 1_000)],
            S::Failed => vec![fail],
            S::Reverting => vec![fail, HostInput::RollBack],
            S::Reverted => vec![fail, HostInput::RollBack, HostInput::RollbackCompleted { seq: 40, current: Some("v1".into()) }],
            _ => vec![],
        };
        for input in extra {
            feed(&mut h, input, T0 + 1_000, policy);
        }
        assert_eq!(h.state, state);
        h
    }

    fn sample(kind: InputKind, seq: u64) -> HostInput {
        match kind {
            InputKind::Dispatch => HostInput::Dispatch,
            InputKind::Ack => HostInput::Ack { seq, current: None },
            InputKind::ActivationStarted => HostInput::ActivationStarted { seq },
            InputKind::ActivationCompleted => HostInput::ActivationCompleted { seq, current: "v2".into() },
            InputKind::ActivationFailed => HostInput::ActivationFailed { seq, error: "boom".into() },
            InputKind::ProbeResult => probe(seq, true, T0),
            InputKind::Tick => HostInput::Tick,
            InputKind::RollBack => HostInput::RollBack,
            InputKind::RollbackStarted => HostInput::RollbackStarted { seq },
            InputKind::RollbackCompleted => HostInput::RollbackCompleted { seq, current: Some("v1".into()) },
            InputKind::RollbackFailed => HostInput::RollbackFailed { seq, error: "boom".into() },
        }
    }

    #[test]
    fn step_agrees_with_the_legality_table_for_every_state_and_input() {
        let policy = policy(0, OnFailure::Rollback);
        for (row, state) in HostRolloutState::ALL.into_iter().enumerate() {
            assert_eq!(state as usize, row);
            let h = host_in(state, &policy);
            for (column, kind) in InputKind::ALL.into_iter().enumerate() {
                assert_eq!(kind as usize, column);
                let input = sample(kind, h.last_event_seq + 1);
                let before = h.clone();
                let result = h.step(&input, T0 + 2_000, &policy);
                assert_eq!(h, before, "step never changes the host");
                match (legal(state, kind), result) {
                    (true, Ok(Decision::Events(events))) => {
                        let mut after = h.clone();
                        events.iter().for_each(|e| after.apply(e, T0 + 2_000));
                        assert_eq!(after.validate(), Ok(()));
                    }
                    (false, Err(StepError::Illegal { state: s, input: k, .. })) => assert_eq!((s, k), (state, kind)),
                    (legal, other) => panic!("{state} × {kind}: table says legal = {legal}, step gave {other:?}"),
                }
                // A report at or below last_event_seq is a duplicate in every state.
                if let Some(seq) = sample(kind, h.last_event_seq).seq() {
                    let duplicate = h.step(&sample(kind, seq), T0 + 2_000, &policy);
                    assert_eq!(duplicate, Ok(Decision::Duplicate { seq, last_event_seq: h.last_event_seq }), "{state} × {kind}");
                }
            }
        }
    }

    #[test]
    fn soak_starts_at_the_hosts_activation_and_needs_a_pass_after_it() {
        let policy = policy(60_000, OnFailure::Halt);
        let mut h = host();
        feed(&mut h, HostInput::Dispatch, T0, &policy);
        feed(&mut h, HostInput::Ack { seq: 1, current: None }, T0 + 10, &policy);
        feed(&mut h, HostInput::ActivationStarted { seq: 2 }, T0 + 20, &policy);
        // A slow activation: the soak is not eaten by it (the origin started the clock at open).
        let done = T0 + 500_000;
        feed(&mut h, HostInput::ActivationCompleted { seq: 3, current: "v2".into() }, done, &policy);
        assert_eq!(h.soak_due_at, Some(done + 60_000));
        feed(&mut h, probe(4, true, done + 1_000), done + 1_000, &policy);
        assert_eq!(h.step(&HostInput::Tick, done + 59_999, &policy), Ok(Decision::Events(vec![])));
        // Due, but the only pass is older than the soak's end: wait for fresh evidence.
        assert_eq!(h.step(&HostInput::Tick, done + 60_000, &policy), Ok(Decision::Events(vec![])));
        let decision = h.step(&probe(5, true, done + 61_000), done + 61_000, &policy).unwrap();
        assert_eq!(decision.events().last(), Some(&HostEvent::Converged));
    }

    #[test]
    fn the_hosts_own_word_on_what_it_runs_is_where_a_rollback_returns_it() {
        let policy = policy(0, OnFailure::Rollback);
        let mut h = host();
        feed(&mut h, HostInput::Dispatch, T0, &policy);
        assert_eq!(h.previous.as_deref(), Some("v1"), "the control plane's idea, until the host says");
        feed(&mut h, HostInput::Ack { seq: 1, current: Some("v0-hotfix".into()) }, T0 + 10, &policy);
        assert_eq!((h.current.as_deref(), h.previous.as_deref()), (Some("v0-hotfix"), Some("v0-hotfix")));
        feed(&mut h, HostInput::ActivationStarted { seq: 2 }, T0 + 20, &policy);
        // The activation command exited 0, but the host says it still runs the old system.
        feed(&mut h, HostInput::ActivationCompleted { seq: 3, current: "v0-hotfix".into() }, T0 + 30, &policy);
        assert_eq!(h.state, HostRolloutState::Failed);
        assert!(h.failure.as_deref().unwrap().contains("not the target"), "{:?}", h.failure);
        feed(&mut h, HostInput::RollBack, T0 + 40, &policy);
        feed(&mut h, HostInput::RollbackStarted { seq: 4 }, T0 + 50, &policy);
        feed(&mut h, HostInput::RollbackCompleted { seq: 5, current: Some("v0-hotfix".into()) }, T0 + 60, &policy);
        assert_eq!(h.state, HostRolloutState::Reverted);
    }

    #[test]
    fn failures_within_a_probes_grace_after_activation_do_not_count() {
        let mut policy = policy(60_000, OnFailure::Halt);
        policy.probes[0].grace_ms = 5_000;
        let mut h = host();
        feed(&mut h, HostInput::Dispatch, T0, &policy);
        feed(&mut h, HostInput::Ack { seq: 1, current: None }, T0, &policy);
        feed(&mut h, HostInput::ActivationStarted { seq: 2 }, T0, &policy);
        feed(&mut h, HostInput::ActivationCompleted { seq: 3, current: "v2".into() }, T0, &policy);
        // Still starting: four failures (threshold 3) inside the grace are recorded, not counted.
        for (i, seq) in (4..8).enumerate() {
            let now = T0 + 1_000 * (i as u64 + 1);
            let decision = h.step(&probe(seq, false, now), now, &policy).unwrap();
            assert!(matches!(decision.events(), [HostEvent::ProbeRecorded { in_grace: true, .. }]), "{decision:?}");
            feed(&mut h, probe(seq, false, now), now, &policy);
        }
        assert_eq!(h.state, HostRolloutState::Soaking);
        assert_eq!((h.probes["health"].n_failures, h.probes["health"].consecutive_failures), (4, 0));
        // After it, three in a row fail the host as always.
        for seq in 8..11 {
            feed(&mut h, probe(seq, false, T0 + 5_000 + seq), T0 + 5_000 + seq, &policy);
        }
        assert_eq!(h.state, HostRolloutState::Failed);
    }

    #[test]
    fn a_pass_clears_the_failure_count_so_a_flapping_probe_does_not_fail_the_host() {
        let policy = policy(60_000, OnFailure::Halt);
        let mut h = host_in(HostRolloutState::Soaking, &policy);
        let mut seq = h.last_event_seq;
        for passed in [false, false, true, false, false, true, false, false] {
            seq += 1;
            feed(&mut h, probe(seq, passed, T0), T0 + 2_000, &policy);
            assert_eq!(h.state, HostRolloutState::Soaking, "two failures in a row, threshold 3");
        }
        assert_eq!((h.probes["health"].consecutive_failures, h.probes["health"].n_failures), (2, 6));
        feed(&mut h, probe(seq + 1, false, T0), T0 + 2_000, &policy);
        assert_eq!(h.state, HostRolloutState::Failed);
        assert!(h.failure.as_deref().unwrap().contains("3 times in a row"), "{:?}", h.failure);
    }

    #[test]
    fn observe_probes_never_fail_a_host_and_unknown_probes_are_refused() {
        let policy = policy(0, OnFailure::Halt);
        let mut h = host_in(HostRolloutState::Soaking, &policy);
        for seq in 31..40 {
            let latency =
                HostInput::ProbeResult { seq, probe: "latency".into(), passed: false, mode: ProbeMode::Observe, at: T0 };
            feed(&mut h, latency, T0 + 2_000, &policy);
        }
        assert_eq!((h.state, h.probes["latency"].consecutive_failures), (HostRolloutState::Soaking, 9));
        let wrong_mode =
            HostInput::ProbeResult { seq: 40, probe: "latency".into(), passed: false, mode: ProbeMode::Enforce, at: T0 };
        assert!(matches!(h.step(&wrong_mode, T0, &policy), Err(StepError::UnknownProbe { .. })));
    }

    #[test]
    fn no_enforce_probe_is_refused_unless_the_policy_says_so_and_never_converges_vacuously() {
        let mut p = policy(0, OnFailure::Halt);
        p.probes.retain(|probe| probe.mode == ProbeMode::Observe);
        assert!(p.check().unwrap_err().0.contains("require_probes = false"));
        // Even a policy that skipped `check` does not converge on no evidence.
        let h = host_in(HostRolloutState::Soaking, &p);
        assert_eq!(h.step(&HostInput::Tick, T0 + 5_000, &p), Ok(Decision::Events(vec![])));
        p.require_probes = false;
        assert_eq!(p.check(), Ok(()));
        assert_eq!(h.step(&HostInput::Tick, T0 + 5_000, &p), Ok(Decision::Events(vec![HostEvent::Converged])));
    }

    #[test]
    fn a_wrong_current_after_activation_or_rollback_is_a_failure() {
        let policy = policy(0, OnFailure::Rollback);
        let mut h = host_in(HostRolloutState::Activating, &policy);
        feed(&mut h, HostInput::ActivationCompleted { seq: 30, current: "v3".into() }, T0 + 5, &policy);
        assert_eq!((h.state, h.current.as_deref(), h.soak_due_at), (HostRolloutState::Failed, Some("v3"), None));
        feed(&mut h, HostInput::RollBack, T0 + 6, &policy);
        feed(&mut h, HostInput::RollbackCompleted { seq: 31, current: Some("v3".into()) }, T0 + 7, &policy);
        assert_eq!((h.state, h.n_rollbacks), (HostRolloutState::Failed, 1));
        assert!(h.failure.as_deref().unwrap().starts_with("rollback left the host on v3, not v1"));
    }

    fn hosts(n: usize) -> Vec<(String, Option<String>)> {
        (0..n).map(|i| (format!("h{i:02}"), Some("v1".to_string()))).collect()
    }

    /// Applies every action's event, as the runtime would.
    fn carry_out(rollout: &mut Rollout, actions: &[Action], now_ms: u64) {
        for action in actions {
            if let Action::Dispatch { hostname } = action {
                rollout.step_host(hostname, &HostInput::Dispatch, now_ms).expect("next_actions dispatches within the rules");
            }
            if let Some(event) = action.event() {
                rollout.apply(&event, now_ms);
            }
        }
    }

    fn report(rollout: &mut Rollout, hostname: &str, input: HostInput, now_ms: u64) {
        let decision = rollout.step_host(hostname, &input, now_ms).unwrap_or_else(|err| panic!("{input:?}: {err}"));
        for event in decision.events() {
            rollout.apply(&RolloutEvent::Host { hostname: hostname.into(), event: event.clone() }, now_ms);
        }
    }

    fn activate(rollout: &mut Rollout, hostname: &str, now_ms: u64) {
        report(rollout, hostname, HostInput::Ack { seq: 1, current: None }, now_ms);
        report(rollout, hostname, HostInput::ActivationStarted { seq: 2 }, now_ms);
        report(rollout, hostname, HostInput::ActivationCompleted { seq: 3, current: "v2".into() }, now_ms);
    }

    fn dispatch(name: &str) -> Action {
        Action::Dispatch { hostname: name.into() }
    }

    #[test]
    fn waves_advance_on_convergence_within_the_budget() {
        let mut r = Rollout::new("r-1", "stable", "v2", policy(1_000, OnFailure::Halt), &hosts(5), T0).unwrap();
        assert_eq!(r.waves, [vec!["h00"], vec!["h01", "h02"], vec!["h03", "h04"]]);
        let actions = next_actions(&r, T0);
        assert_eq!(actions, [dispatch("h00")], "the canary alone");
        carry_out(&mut r, &actions, T0);
        assert_eq!(next_actions(&r, T0), [], "a plan carried out is stable");
        assert!(matches!(r.step_host("h01", &HostInput::Dispatch, T0), Err(RolloutStepError::NotCurrentWave { .. })));
        activate(&mut r, "h00", T0 + 10);
        report(&mut r, "h00", probe(4, true, T0 + 1_010), T0 + 1_010);
        assert_eq!(r.hosts["h00"].state, HostRolloutState::Converged);
        let actions = next_actions(&r, T0 + 1_010);
        assert_eq!(actions, [Action::AdvanceWave { wave: 1 }, dispatch("h01"), dispatch("h02")]);
        carry_out(&mut r, &actions, T0 + 1_010);
        activate(&mut r, "h01", T0 + 1_100);
        activate(&mut r, "h02", T0 + 1_100);
        report(&mut r, "h01", probe(4, true, T0 + 2_100), T0 + 2_100);
        assert_eq!(next_actions(&r, T0 + 2_100), [], "h02 has not passed since its soak ended");
        report(&mut r, "h02", probe(4, true, T0 + 2_200), T0 + 2_200);
        let actions = next_actions(&r, T0 + 2_200);
        assert_eq!(actions, [Action::AdvanceWave { wave: 2 }, dispatch("h03"), dispatch("h04")]);
        carry_out(&mut r, &actions, T0 + 2_200);
        assert!(matches!(r.step_host("h00", &HostInput::Dispatch, T0), Err(RolloutStepError::Host(StepError::Illegal { .. }))));
        for name in ["h03", "h04"] {
            activate(&mut r, name, T0 + 2_300);
            report(&mut r, name, probe(4, true, T0 + 3_300), T0 + 3_300);
        }
        assert_eq!(next_actions(&r, T0 + 3_300), [Action::Complete]);
        carry_out(&mut r, &[Action::Complete], T0 + 3_300);
        assert!(r.completed && next_actions(&r, T0 + 9_000).is_empty());
    }

    #[test]
    fn a_failing_canary_halts_and_with_rollback_goes_back_and_quarantines() {
        let mut r = Rollout::new("r-1", "stable", "v2", policy(1_000, OnFailure::Rollback), &hosts(3), T0).unwrap();
        let actions = next_actions(&r, T0);
        carry_out(&mut r, &actions, T0);
        activate(&mut r, "h00", T0 + 10);
        for seq in 4..7 {
            report(&mut r, "h00", probe(seq, false, T0 + 20), T0 + 20);
        }
        assert_eq!(r.hosts["h00"].state, HostRolloutState::Failed);
        let actions = next_actions(&r, T0 + 20);
        let reason = "host h00 failed: enforce probe health failed 3 times in a row (failure_threshold = 3)".to_string();
        assert_eq!(
            actions,
            [
                Action::Halt { reason },
                Action::Quarantine { channel: "stable".into(), target: "v2".into() },
                Action::RollBack { hostname: "h00".into(), to: Some("v1".into()) },
            ]
        );
        carry_out(&mut r, &actions, T0 + 20);
        assert_eq!(next_actions(&r, T0 + 30), [], "halted: nothing dispatched, nothing ordered twice");
        assert!(matches!(r.step_host("h01", &HostInput::Dispatch, T0 + 30), Err(RolloutStepError::Halted { .. })));
        report(&mut r, "h00", HostInput::RollbackStarted { seq: 7 }, T0 + 40);
        report(&mut r, "h00", HostInput::RollbackCompleted { seq: 8, current: Some("v1".into()) }, T0 + 50);
        assert_eq!(r.hosts["h00"].state, HostRolloutState::Reverted);
        assert!(r.quarantined && r.halted.is_some() && !r.completed);
    }

    #[test]
    fn a_silent_host_blocks_its_wave_and_is_reported_never_skipped() {
        let mut r = Rollout::new("r-1", "stable", "v2", policy(0, OnFailure::Halt), &hosts(1), T0).unwrap();
        let actions = next_actions(&r, T0);
        carry_out(&mut r, &actions, T0);
        assert_eq!(next_actions(&r, T0 + 59_999), []);
        let state = HostRolloutState::Dispatched;
        let blocked = Action::Blocked { hostname: "h00".into(), state, since: T0, reason: BlockedReason::Silent };
        assert_eq!(next_actions(&r, T0 + 60_000), [blocked]);
        assert_eq!(r.n_in_flight(), 1, "it keeps its budget");
    }

    #[test]
    fn the_budget_is_enforced_by_step_host_too() {
        let mut p = policy(0, OnFailure::Halt);
        p.waves = vec![WaveSpec { size: WaveSize::Percent(100), soak_ms: 0 }];
        p.max_in_flight = 1;
        let mut r = Rollout::new("r-1", "", "v2", p, &hosts(2), T0).unwrap();
        report(&mut r, "h00", HostInput::Dispatch, T0);
        let over = r.step_host("h01", &HostInput::Dispatch, T0);
        assert!(matches!(over, Err(RolloutStepError::OverBudget { n_in_flight: 1, max_in_flight: 1, .. })), "{over:?}");
    }

    #[test]
    fn waves_resolve_cumulatively_and_never_lose_a_host() {
        let p = RolloutPolicy::parse("p.toml", "waves = [1, \"25%\", \"100%\"]\nrequire_probes = false\n").unwrap();
        assert_eq!(p.resolve_waves(40), [0..1, 1..10, 10..40]);
        assert_eq!(p.resolve_waves(1), [0..1, 1..1, 1..1]);
        assert_eq!(p.resolve_waves(3), [0..1, 1..1, 1..3]);
        let mut r = Rollout::new("r", "", "v2", p, &hosts(1), T0).unwrap();
        let actions = next_actions(&r, T0);
        carry_out(&mut r, &actions, T0);
        activate(&mut r, "h00", T0);
        let actions = next_actions(&r, T0 + DEFAULT_SOAK_MS);
        let expected =
            [Action::Converge { hostname: "h00".into() }, Action::AdvanceWave { wave: 1 }, Action::AdvanceWave { wave: 2 }];
        assert_eq!(actions[..3], expected, "empty waves pass at once");
        assert_eq!(actions[3..], [Action::Complete]);
    }

    #[test]
    fn policies_parse_with_defaults_and_precise_errors() {
        let text = r#"
waves = [1, "25%", "100%"]
max_in_flight = 3
soak = ["10m", "5m", "0s"]
on_failure = "rollback"

[[probes]]
name = "health"
http = "http://127.0.0.1:8080/healthz"
interval = "5s"
timeout = "2s"

[[probes]]
name = "port"
tcp = "127.0.0.1:8080"
mode = "observe"
"#;
        let p = RolloutPolicy::parse("p.toml", text).unwrap();
        assert_eq!(
            p.waves.iter().map(|w| (w.size, w.soak_ms)).collect::<Vec<_>>(),
            [(WaveSize::Count(1), 600_000), (WaveSize::Percent(25), 300_000), (WaveSize::Percent(100), 0)]
        );
        assert_eq!((p.max_in_flight, p.on_failure, p.require_probes), (3, OnFailure::Rollback, true));
        assert_eq!(p.probes[0].kind, ProbeKind::Http { url: "http://127.0.0.1:8080/healthz".into(), expect_status: 200 });
        assert_eq!((p.probes[0].failure_threshold, p.probes[0].timeout_ms, p.probes[1].mode), (3, 2_000, ProbeMode::Observe));
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""waves":[{"size":1,"soak_ms":600000},{"size":"25%""#), "{json}");
        assert_eq!(serde_json::from_str::<RolloutPolicy>(&json).unwrap(), p);

        let error = |text: &str| RolloutPolicy::parse("p.toml", text).unwrap_err().to_string();
        assert_eq!(
            error("waves = [1, \"12.5%\", \"100%\"]\n"),
            "p.toml:1: waves[1]: a wave is a host count or a whole percentage like \"25%\", got \"12.5%\""
        );
        assert!(error("waves = [1, \"50%\"]\nrequire_probes = false\n").contains("the last wave must be \"100%\""));
        assert!(error("waves = [0, \"100%\"]\n").contains("at least 1, got 0"));
        assert!(error("soak = [\"1m\"]\n").starts_with("p.toml:1: soak: one per wave (2 waves), got 1"));
        assert!(error("").contains("no probe has mode = \"enforce\""));
        assert!(error("max_in_flight = 0\nrequire_probes = false\n").starts_with("p.toml:1: max_in_flight must be at least 1"));
        assert!(error("[[probes]]\nname = \"x\"\ntcp = \"a:1\"\nexec = [\"true\"]\n").contains("exactly one of"));
        assert!(error("[[probes]]\nname = \"x\"\nexec = [\"true\"]\nfailure_threshold = 0\n").starts_with("p.toml:4:"));
        assert!(error("on_failure = \"panic\"\n").contains("\"halt\" or \"rollback\""));
    }

    #[test]
    fn snapshots_round_trip_through_json() {
        let policy = policy(0, OnFailure::Halt);
        for state in HostRolloutState::ALL {
            let h = host_in(state, &policy);
            let json = serde_json::to_string(&h).unwrap();
            assert_eq!(serde_json::from_str::<HostRolloutSnapshot>(&json).unwrap(), h);
        }
    }
}
