//! A rollout's policy: the strict TOML file an operator writes (waves, soak, budget, on_failure,
//! probes, and for a host activation its commands), parsed with line numbers and validated into
//! a [`RolloutPolicy`] whose invariants [`RolloutPolicy::check`] holds however it was made.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;

use crate::spec::{duration, parse_strict, Invalid, SpecError};

pub const DEFAULT_SOAK_MS: u64 = 300_000;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1;
pub const DEFAULT_STALL_AFTER_MS: u64 = 300_000;
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// More waves than this is almost certainly a mistake, and each is a pause for an operator to watch.
pub const MAX_WAVES: usize = 100;

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

    fn parse(text: &str) -> Result<WaveSize, WaveSizeError> {
        let percent = text.strip_suffix('%').and_then(|p| p.parse::<u8>().ok()).filter(|p| (1..=100).contains(p));
        percent.map(WaveSize::Percent).ok_or_else(|| WaveSizeError::NotASize { text: text.to_string() })
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

/// Why a wave, as written, is not a wave size.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaveSizeError {
    #[error("a wave is a host count or a whole percentage like \"25%\", got {text:?}")]
    NotASize { text: String },
    #[error("a wave's host count must be at least 1, got {n}")]
    CountBelowOne { n: i64 },
}

/// As users write it: `1` or `"25%"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawWave {
    Count(i64),
    Text(String),
}

impl RawWave {
    fn validate(self) -> Result<WaveSize, WaveSizeError> {
        match self {
            RawWave::Count(n) => {
                u32::try_from(n).ok().filter(|n| *n >= 1).map(WaveSize::Count).ok_or(WaveSizeError::CountBelowOne { n })
            }
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
    /// wave ([`Action::Blocked`](crate::rollout::Action::Blocked)); it keeps its place and its budget, it is never skipped.
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
