//! `warden rollout start|status|pause|resume|undo|ls`: start a rollout (a service's new spec, or
//! a host activation), watch it wave by wave, steer it, list them.
//!
//! The policy flags of `start` are merged here into the policy file's TOML table and the result
//! is sent as text: the server parses policies strictly, and one parser (the core's
//! `RolloutPolicy::parse`) is also what checks it here first, so errors show without a round trip.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use toml::Value;
use warden_core::rollout::{HostRolloutSnapshot, HostRolloutState, ProbeMode, RolloutPolicy};
use warden_core::units::format_duration_ms;
use warden_core::{Spec, SpecError};
use warden_runtime::engine::now_ms;
use warden_runtime::view::{BlockedView, RolloutRequest, RolloutView, WaveView};

use super::common::{encode, format_table, printable, short_spec_id, show, Client, Output};

#[derive(Subcommand)]
pub(super) enum RolloutCommand {
    /// Start a rollout; prints its id as the last line.
    ///
    /// A service: `SERVICE --spec NEW.toml`. A host activation: `--target ARTIFACT --policy
    /// P.toml`, the policy's `activate` and `rollback` argvs switching each host to the target and
    /// back. The policy flags override the policy file's keys, or stand in for a file.
    Start(StartArgs),
    /// Show a rollout: its waves, and each host's state, soak and probes.
    Status {
        /// The rollout's id, or a unique prefix of it.
        id: String,
        /// Redraw every second until the rollout settles; exit 0 if it completed, 1 if it halted
        /// or was undone.
        #[arg(long, short)]
        watch: bool,
    },
    /// Dispatch no more hosts and start no new wave; hosts in flight carry on.
    Pause { id: String },
    /// Carry on with a paused rollout.
    Resume { id: String },
    /// Halt the rollout and return every host that reached the target (or failed on it) to what
    /// it ran before.
    Undo { id: String },
    /// List rollouts, newest first.
    Ls,
}

#[derive(clap::Args)]
pub(super) struct StartArgs {
    /// The service to roll out: the id it was submitted with (`warden run --id`).
    #[arg(required_unless_present = "target", conflicts_with = "target")]
    service: Option<String>,
    /// The service's new spec.
    #[arg(long, value_name = "NEW.toml", required_unless_present = "target", conflicts_with = "target")]
    spec: Option<PathBuf>,
    /// A host activation instead of a service: the artifact every host switches to, by the
    /// policy's `activate` (and back by its `rollback`).
    #[arg(long, value_name = "ARTIFACT", requires = "policy")]
    target: Option<String>,
    /// A host activation: only the hosts enrolled with this channel (default: every host).
    #[arg(long, requires = "target")]
    channel: Option<String>,
    /// The rollout policy (TOML); the policy flags (`--waves` … `--no-require-probes`) override
    /// its keys.
    #[arg(long, value_name = "P.toml")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    flags: PolicyFlags,
}

/// The policy keys `start` takes as flags.
#[derive(clap::Args, Default)]
struct PolicyFlags {
    /// The waves, cumulative: host counts and percentages, the last one 100% (`1,25%,100%`).
    #[arg(long, value_name = "SIZES", value_delimiter = ',')]
    waves: Vec<String>,
    /// How many hosts may be between dispatch and the end of their soak at once.
    #[arg(long, value_name = "N")]
    max_in_flight: Option<u32>,
    /// How long each host must stay healthy after its activation, the same for every wave (`30s`).
    #[arg(long, value_name = "DURATION")]
    soak: Option<String>,
    /// What a failed host does to the rollout: halt it, or also roll the failed hosts back and
    /// quarantine the target.
    #[arg(long, value_enum)]
    on_failure: Option<OnFailureArg>,
    /// An enforce probe: a GET of URL answered 200, with the default interval, timeout and
    /// failure threshold. Repeatable.
    #[arg(long, value_name = "URL")]
    probe_http: Vec<String>,
    /// Converge hosts on soak time alone when no probe is enforced.
    #[arg(long)]
    no_require_probes: bool,
}

impl PolicyFlags {
    fn is_empty(&self) -> bool {
        self.waves.is_empty()
            && self.max_in_flight.is_none()
            && self.soak.is_none()
            && self.on_failure.is_none()
            && self.probe_http.is_empty()
            && !self.no_require_probes
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum OnFailureArg {
    Halt,
    Rollback,
}

impl OnFailureArg {
    /// As the policy writes it.
    fn as_str(self) -> &'static str {
        match self {
            OnFailureArg::Halt => "halt",
            OnFailureArg::Rollback => "rollback",
        }
    }
}

pub(super) fn run_rollout(client: &Client, command: RolloutCommand, output: Output) -> Result<()> {
    match command {
        RolloutCommand::Start(args) => start(client, args, output),
        RolloutCommand::Status { id, watch: false } => {
            let view: RolloutView = client.json("GET", &format!("/v1/rollouts/{}", encode(&id)), None)?;
            show(output, &view, |view| print!("{}", render_status(view, now_ms())))
        }
        RolloutCommand::Status { id, watch: true } => watch(client, &id, output),
        RolloutCommand::Pause { id } => steer(client, &id, "pause", output),
        RolloutCommand::Resume { id } => steer(client, &id, "resume", output),
        RolloutCommand::Undo { id } => {
            steer(client, &id, "undo", output)?;
            if output == Output::Table {
                eprintln!("hosts on the target go back to what they ran before; watch: warden rollout status {id} --watch");
            }
            Ok(())
        }
        RolloutCommand::Ls => {
            let views: Vec<RolloutView> = client.json("GET", "/v1/rollouts", None)?;
            show(output, &views, |views| print!("{}", render_list(views, now_ms())))
        }
    }
}

fn start(client: &Client, args: StartArgs, output: Output) -> Result<()> {
    let StartArgs { service, spec, target, channel, policy, flags } = args;
    let policy_file = policy.as_deref().map(read_policy_file).transpose()?;
    let policy_text = policy_text(policy_file.as_ref(), &flags)?;
    // Checked here first with the parser the server runs, so errors show without a round trip.
    let parsed = check_policy(policy_file.as_ref(), &policy_text).map_err(|error| {
        // With neither a file nor a flag, the one thing the defaults lack is a probe.
        if policy_file.is_none() && flags.is_empty() {
            anyhow!("{error} (flags: --probe-http URL, or --no-require-probes; or --policy P.toml)")
        } else {
            anyhow!(error)
        }
    })?;
    let request = match (service, spec, target) {
        (Some(service), Some(spec), None) => {
            let file = spec.display().to_string();
            let text = std::fs::read_to_string(&spec).with_context(|| format!("cannot read spec {file}"))?;
            Spec::parse(&file, &text)?;
            RolloutRequest {
                service: Some(service),
                spec_file: Some(file),
                spec_toml: Some(text),
                policy_file: policy_text.file,
                policy_toml: policy_text.toml,
                ..RolloutRequest::default()
            }
        }
        (None, None, Some(target)) => {
            if parsed.activate.is_empty() {
                bail!(
                    "{}: a host activation needs `activate` and `rollback` in the policy: the argvs that switch \
                     a host to {{target}} and back to {{previous}}",
                    policy_text.file
                );
            }
            RolloutRequest {
                target: Some(target),
                channel,
                policy_file: policy_text.file,
                policy_toml: policy_text.toml,
                ..RolloutRequest::default()
            }
        }
        _ => bail!("give SERVICE --spec NEW.toml for a service, or --target ARTIFACT for a host activation"),
    };
    let view: RolloutView = client.json("POST", "/v1/rollouts", Some(&serde_json::to_vec(&request)?))?;
    if output == Output::Json {
        println!("{}", serde_json::to_string(&view)?);
        return Ok(());
    }
    eprintln!("{}", printable(&start_summary(&view)));
    eprintln!("watch it: warden rollout status {} --watch", view.id);
    // The only line on stdout, so scripts can take the id from it.
    println!("{}", view.id);
    Ok(())
}

/// `pause`, `resume` or `undo`.
fn steer(client: &Client, id: &str, verb: &str, output: Output) -> Result<()> {
    let view: RolloutView = client.json("POST", &format!("/v1/rollouts/{}/{verb}", encode(id)), None)?;
    show(output, &view, |view| println!("{} {}", view.id, view.state))
}

/// Polls the rollout every second until it settles, drawing each frame (on a terminal, in place;
/// otherwise a new frame only when the rollout changed). Errs if it did not complete.
fn watch(client: &Client, id: &str, output: Output) -> Result<()> {
    let on_terminal = std::io::stdout().is_terminal();
    let mut path = format!("/v1/rollouts/{}", encode(id));
    let mut last_json: Option<String> = None;
    loop {
        let view: RolloutView = client.json("GET", &path, None)?;
        // A prefix that was unique may not stay so once another rollout starts.
        path = format!("/v1/rollouts/{}", encode(&view.id));
        let json = serde_json::to_string(&view)?;
        let changed = last_json.as_ref() != Some(&json);
        let mut stdout = std::io::stdout().lock();
        match output {
            Output::Json if changed => writeln!(stdout, "{json}")?,
            Output::Json => {}
            Output::Table if on_terminal => write!(stdout, "\x1b[H\x1b[2J{}", render_status(&view, now_ms()))?,
            Output::Table if changed => writeln!(stdout, "{}", render_status(&view, now_ms()))?,
            Output::Table => {}
        }
        stdout.flush()?;
        drop(stdout);
        if is_settled(&view) {
            return match view.state.as_str() {
                "completed" => Ok(()),
                state => match &view.halted {
                    Some(reason) => bail!("rollout {} {state}: {reason}", view.id),
                    None => bail!("rollout {} {state}", view.id),
                },
            };
        }
        last_json = Some(json);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Nothing more happens without an operator: completed, or halted or undone with no host in
/// flight or reverting (the core's `RolloutRecord::is_settled`, read from the view).
fn is_settled(view: &RolloutView) -> bool {
    let moving = view.hosts.iter().any(|h| h.state.is_in_flight() || h.state == HostRolloutState::Reverting);
    match view.state.as_str() {
        "completed" => true,
        "halted" | "undone" => !moving,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The policy: file and flags
// ---------------------------------------------------------------------------------------------

/// A policy file as read: its name as given on the command line, and its text.
struct PolicyFile {
    name: String,
    text: String,
}

fn read_policy_file(path: &Path) -> Result<PolicyFile> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read policy {name}"))?;
    Ok(PolicyFile { name, text })
}

/// The policy as the server gets it (`RolloutRequest::policy_file` and `policy_toml`).
#[derive(Debug)]
struct PolicyText {
    /// Names the policy in errors: the file, `<file> + flags`, `flags`, or `default policy`.
    file: String,
    toml: String,
    /// Made from flags (and a file): line numbers in its errors are not the file's.
    merged: bool,
}

/// The file's text as it is when no flag is given (so the server's errors point at its lines);
/// else its table with the flags' keys set, serialized again.
fn policy_text(file: Option<&PolicyFile>, flags: &PolicyFlags) -> Result<PolicyText> {
    if flags.is_empty() {
        return Ok(match file {
            Some(file) => PolicyText { file: file.name.clone(), toml: file.text.clone(), merged: false },
            None => PolicyText { file: "default policy".into(), toml: String::new(), merged: false },
        });
    }
    let (name, mut table) = match file {
        Some(file) => {
            let table = file.text.parse::<toml::Table>().map_err(|error| SpecError {
                file: file.name.clone(),
                line: error.span().map(|span| line_of(&file.text, span.start)),
                message: error.message().trim().to_string(),
            })?;
            (format!("{} + flags", file.name), table)
        }
        None => ("flags".to_string(), toml::Table::new()),
    };
    set_flags(&mut table, flags).map_err(|message| anyhow!("{name}: {message}"))?;
    let toml = toml::to_string(&table).context("writing the policy")?;
    Ok(PolicyText { file: name, toml, merged: true })
}

/// Sets the keys the flags give, replacing the file's.
fn set_flags(table: &mut toml::Table, flags: &PolicyFlags) -> Result<(), String> {
    if !flags.waves.is_empty() {
        let wave = |size: &String| {
            let size = size.trim();
            size.parse::<i64>().map(Value::Integer).unwrap_or_else(|_| Value::String(size.to_string()))
        };
        table.insert("waves".into(), Value::Array(flags.waves.iter().map(wave).collect()));
    }
    if let Some(n) = flags.max_in_flight {
        table.insert("max_in_flight".into(), Value::Integer(n.into()));
    }
    if let Some(soak) = &flags.soak {
        // One duration for every wave, also where the file has one per wave.
        table.insert("soak".into(), Value::String(soak.clone()));
    }
    if let Some(on_failure) = flags.on_failure {
        table.insert("on_failure".into(), Value::String(on_failure.as_str().into()));
    }
    if flags.no_require_probes {
        table.insert("require_probes".into(), Value::Boolean(false));
    }
    if !flags.probe_http.is_empty() {
        let Value::Array(probes) = table.entry("probes").or_insert_with(|| Value::Array(Vec::new())) else {
            return Err("probes must be an array of tables ([[probes]]) for --probe-http to add to".into());
        };
        for url in &flags.probe_http {
            let name = free_probe_name(probes);
            let probe =
                toml::Table::from_iter([("name".to_string(), Value::String(name)), ("http".into(), Value::String(url.clone()))]);
            probes.push(Value::Table(probe));
        }
    }
    Ok(())
}

/// `http`, or `http-2`, `http-3`… if the file (or an earlier flag) has that name already.
fn free_probe_name(probes: &[Value]) -> String {
    let taken = |name: &str| probes.iter().any(|p| p.get("name").and_then(Value::as_str) == Some(name));
    let mut name = "http".to_string();
    let mut n = 1;
    while taken(&name) {
        n += 1;
        name = format!("http-{n}");
    }
    name
}

/// Parses the policy as the server will. An error in merged text is pinned to the file's own
/// line when the file alone has it too; otherwise it loses its line, which would be one of the
/// merged text the user never saw.
fn check_policy(file: Option<&PolicyFile>, policy: &PolicyText) -> Result<RolloutPolicy, SpecError> {
    let error = match RolloutPolicy::parse(&policy.file, &policy.toml) {
        Ok(parsed) => return Ok(parsed),
        Err(error) if !policy.merged => return Err(error),
        Err(error) => error,
    };
    if let Some(Err(own)) = file.map(|file| RolloutPolicy::parse(&file.name, &file.text)) {
        if own.message == error.message {
            return Err(own);
        }
    }
    Err(SpecError { line: None, ..error })
}

fn line_of(text: &str, byte_offset: usize) -> usize {
    text[..byte_offset.min(text.len())].matches('\n').count() + 1
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

const PROGRESS_BAR_WIDTH: usize = 10;

/// `rollout ro-1 of web to sha256:…: 10 hosts in 3 waves (1, 2, 7)`.
fn start_summary(view: &RolloutView) -> String {
    let what = match &view.service {
        Some(service) => format!("of {service} to {}", short_target(&view.target)),
        None => format!("of {} to {}", short_target(&view.target), channel_text(&view.channel)),
    };
    let per_wave: Vec<String> = view.waves.iter().map(|w| w.hosts.len().to_string()).collect();
    format!(
        "rollout {} {what}: {} in {} ({})",
        view.id,
        count_text(view.hosts.len(), "host"),
        count_text(view.waves.len(), "wave"),
        per_wave.join(", ")
    )
}

/// The whole status: a header, one progress bar per wave, the hosts, and what holds it up; each
/// line [`printable`], since host names, reasons and probe output come from agents and users.
fn render_status(view: &RolloutView, now_ms: u64) -> String {
    status_text(view, now_ms)
        .split_inclusive('\n')
        .map(|line| {
            let (text, end) = line.strip_suffix('\n').map_or((line, ""), |text| (text, "\n"));
            format!("{}{end}", printable(text))
        })
        .collect()
}

fn status_text(view: &RolloutView, now_ms: u64) -> String {
    let mut header = vec![("rollout", view.id.clone())];
    match &view.service {
        Some(service) => header.push(("service", service.clone())),
        None => header.push(("hosts", channel_text(&view.channel))),
    }
    header.push(("target", view.target.clone()));
    header.push(("state", view.state.clone()));
    if let Some(reason) = &view.halted {
        header.push(("halted", reason.clone()));
    }
    let quarantined = if view.quarantined { "yes: the target is refused until a new rollout replaces it" } else { "no" };
    header.push(("quarantined", quarantined.into()));
    header.push(("started", format!("{} ago by {}", elapsed_text(now_ms.saturating_sub(view.started_at_ms)), view.started_by)));
    let mut text = String::new();
    for (key, value) in header {
        text.push_str(&format!("{:<13}{value}\n", format!("{key}:")));
    }
    text.push('\n');
    for line in wave_lines(view) {
        text.push_str(&line);
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&host_table(view, now_ms));
    let notes = host_notes(view, now_ms);
    if !notes.is_empty() {
        text.push('\n');
        for note in notes {
            text.push_str(&note);
            text.push('\n');
        }
    }
    text
}

/// `wave 1 (25%, soak 30s)  [███░░░░░░░] 1/3 converged, 1 in flight, 1 failed  ◀ current`.
fn wave_lines(view: &RolloutView) -> Vec<String> {
    let labels: Vec<String> = view
        .waves
        .iter()
        .enumerate()
        .map(|(i, wave)| format!("wave {i} ({}, soak {})", wave.size, format_duration_ms(wave.soak_ms)))
        .collect();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let moving = matches!(view.state.as_str(), "running" | "paused" | "halted");
    let lines = view.waves.iter().zip(labels).enumerate().map(|(i, (wave, label))| {
        let marker = if moving && i == view.wave { "  ◀ current" } else { "" };
        let bar = progress_bar(wave.n_converged, wave.hosts.len(), PROGRESS_BAR_WIDTH);
        format!("{label:<width$}  {bar} {}{marker}", wave_progress(wave, &view.hosts))
    });
    lines.collect()
}

/// `[███░░░░░░░]`: the converged share of `n_hosts`; an empty wave is full (it converges at once).
fn progress_bar(n_converged: usize, n_hosts: usize, width: usize) -> String {
    // Rounded down, so the bar is full only once every host has converged.
    let filled = (n_converged.min(n_hosts) * width).checked_div(n_hosts).unwrap_or(width);
    format!("[{}{}]", "█".repeat(filled), "░".repeat(width - filled))
}

/// `1/3 converged, 1 in flight, 1 failed`.
fn wave_progress(wave: &WaveView, hosts: &[HostRolloutSnapshot]) -> String {
    let in_flight = |name: &&String| hosts.iter().any(|h| &h.hostname == *name && h.state.is_in_flight());
    let n_in_flight = wave.hosts.iter().filter(in_flight).count();
    let mut text = format!("{}/{} converged", wave.n_converged, wave.hosts.len());
    if n_in_flight > 0 {
        text.push_str(&format!(", {n_in_flight} in flight"));
    }
    // Failed hosts, and the ones on their way back or back (after a failure or an undo).
    let count = |state: HostRolloutState| {
        wave.hosts.iter().filter(|name| hosts.iter().any(|h| &h.hostname == *name && h.state == state)).count()
    };
    for (state, word) in [
        (HostRolloutState::Failed, "failed"),
        (HostRolloutState::Reverting, "reverting"),
        (HostRolloutState::Reverted, "reverted"),
    ] {
        let n = count(state);
        if n > 0 {
            text.push_str(&format!(", {n} {word}"));
        }
    }
    text
}

/// HOST, WAVE, STATE, CURRENT, SOAK, PROBES; in dispatch order, wave by wave.
fn host_table(view: &RolloutView, now_ms: u64) -> String {
    let mut rows = vec![["HOST", "WAVE", "STATE", "CURRENT", "SOAK", "PROBES"].map(String::from).to_vec()];
    for host in hosts_in_order(view) {
        rows.push(vec![
            host.hostname.clone(),
            host.wave.to_string(),
            host.state.name().to_string(),
            host.current.as_deref().map_or("-".into(), short_target),
            soak_text(host, now_ms),
            probes_text(host, &view.policy),
        ]);
    }
    format_table(&rows)
}

/// The hosts as the waves list them (dispatch order), then any the waves do not name.
fn hosts_in_order(view: &RolloutView) -> Vec<&HostRolloutSnapshot> {
    let by_name = |name: &String| view.hosts.iter().find(|h| &h.hostname == name);
    let mut ordered: Vec<&HostRolloutSnapshot> = view.waves.iter().flat_map(|w| &w.hosts).filter_map(by_name).collect();
    for host in &view.hosts {
        if !ordered.iter().any(|h| h.hostname == host.hostname) {
            ordered.push(host);
        }
    }
    ordered
}

/// The time left of a soaking host's soak, or `done` once it is over.
fn soak_text(host: &HostRolloutSnapshot, now_ms: u64) -> String {
    match (host.state, host.soak_due_at) {
        (HostRolloutState::Converged, _) => "done".into(),
        (HostRolloutState::Soaking, Some(due_at)) if due_at > now_ms => format!("{} left", remaining_text(due_at - now_ms)),
        (HostRolloutState::Soaking, Some(_)) => "done".into(),
        (_, _) => "-".into(),
    }
}

/// `health ✓ 12/0, latency ✗2 3/4 (observe)`: per probe, whether its latest result passed (or
/// how many failed in a row), then passes/failures. `·`: no result yet.
fn probes_text(host: &HostRolloutSnapshot, policy: &RolloutPolicy) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (name, status) in &host.probes {
        let mark = match (status.consecutive_failures, status.n_passes + status.n_failures) {
            (0, 0) => "·".to_string(),
            (0, _) => "✓".to_string(),
            (n, _) => format!("✗{n}"),
        };
        let observe = if status.mode == ProbeMode::Observe { " (observe)" } else { "" };
        parts.push(format!("{name} {mark} {}/{}{observe}", status.n_passes, status.n_failures));
    }
    // A soaking host whose probes have not reported yet still shows what it waits for.
    if host.state == HostRolloutState::Soaking {
        for probe in policy.probes.iter().filter(|p| !host.probes.contains_key(&p.name)) {
            let observe = if probe.mode == ProbeMode::Observe { " (observe)" } else { "" };
            parts.push(format!("{} · 0/0{observe}", probe.name));
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// What holds the wave up, and why each failed host failed.
fn host_notes(view: &RolloutView, now_ms: u64) -> Vec<String> {
    let blocked = view.blocked.iter().map(|b: &BlockedView| {
        let why = match b.reason.as_str() {
            "silent" => "no report",
            "not-passing" => "soaked, enforce probes not all passing",
            other => other,
        };
        format!("blocked  {} ({}): {why} for {}", b.host, b.state, elapsed_text(now_ms.saturating_sub(b.since_ms)))
    });
    let failed = hosts_in_order(view).into_iter().filter(|h| h.state.is_failure()).map(|h| {
        let label = if h.state == HostRolloutState::Failed { "failed  " } else { "reverted" };
        format!("{label} {} ({}): {}", h.hostname, h.state, h.failure.as_deref().unwrap_or("no reason recorded"))
    });
    blocked.chain(failed).collect()
}

/// ID, SERVICE/TARGET, STATE, WAVE (current of all, from 1), CONVERGED, AGE.
fn render_list(views: &[RolloutView], now_ms: u64) -> String {
    let mut rows = vec![["ID", "SERVICE/TARGET", "STATE", "WAVE", "CONVERGED", "AGE"].map(String::from).to_vec()];
    for v in views {
        let what = match &v.service {
            Some(service) => service.clone(),
            None => format!("{} ({})", short_target(&v.target), channel_text(&v.channel)),
        };
        let n_converged = v.hosts.iter().filter(|h| h.state == HostRolloutState::Converged).count();
        rows.push(vec![
            v.id.clone(),
            what,
            v.state.clone(),
            format!("{}/{}", (v.wave + 1).min(v.waves.len()), v.waves.len()),
            format!("{n_converged}/{}", v.hosts.len()),
            elapsed_text(now_ms.saturating_sub(v.started_at_ms)),
        ]);
    }
    format_table(&rows)
}

/// A host activation's hosts: `channel edge`, or `all hosts`.
fn channel_text(channel: &str) -> String {
    match channel {
        "" | "*" => "all hosts".into(),
        channel => format!("channel {channel}"),
    }
}

/// A content address shortened like spec ids elsewhere (`sha256:` and 12 hex digits); any other
/// artifact name as it is.
fn short_target(target: &str) -> String {
    if target.starts_with("sha256:") {
        short_spec_id(target).to_string()
    } else {
        target.to_string()
    }
}

fn count_text(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Time gone by, in whole seconds: a view redrawn every second has no use for milliseconds.
fn elapsed_text(ms: u64) -> String {
    format_duration_ms(ms / 1000 * 1000)
}

/// Time left, rounded up to a whole second, so `0s` never shows while some remains.
fn remaining_text(ms: u64) -> String {
    format_duration_ms(ms.div_ceil(1000) * 1000)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warden_core::rollout::{OnFailure, ProbeStatus, WaveSize};

    use super::*;

    const NOW: u64 = 1_795_445_345_000;
    const TARGET: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const PREVIOUS: &str = "sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    fn policy() -> RolloutPolicy {
        let text = r#"
            waves = [1, "50%", "100%"]
            soak = ["30s", "30s", "5m"]
            max_in_flight = 2

            [[probes]]
            name = "health"
            http = "http://127.0.0.1:8080/healthz"

            [[probes]]
            name = "latency"
            exec = ["/bin/check-latency"]
            mode = "observe"
        "#;
        RolloutPolicy::parse("policy.toml", text).unwrap()
    }

    fn probe(mode: ProbeMode, n_passes: u32, n_failures: u32, consecutive_failures: u32) -> ProbeStatus {
        ProbeStatus { mode, consecutive_failures, n_passes, n_failures, last_pass_at: None, last_run_at: NOW - 1_000 }
    }

    fn host(name: &str, wave: usize, state: HostRolloutState) -> HostRolloutSnapshot {
        let mut host = HostRolloutSnapshot::pending("ro-7f3a", name, "web", TARGET, Some(PREVIOUS.into()), wave);
        host.state = state;
        host
    }

    /// Four hosts: the canary converged, wave 1 with one soaking and one failed (so the rollout
    /// halted), and one still pending in wave 2.
    fn view() -> RolloutView {
        let mut web1 = host("web-1", 0, HostRolloutState::Converged);
        web1.current = Some(TARGET.into());
        web1.soak_due_at = Some(NOW - 60_000);
        web1.probes = BTreeMap::from([("health".into(), probe(ProbeMode::Enforce, 12, 0, 0))]);
        let mut web2 = host("web-2", 1, HostRolloutState::Soaking);
        web2.current = Some(TARGET.into());
        web2.soak_due_at = Some(NOW + 12_300);
        web2.probes = BTreeMap::from([("health".into(), probe(ProbeMode::Enforce, 5, 1, 0))]);
        let mut web3 = host("web-3", 1, HostRolloutState::Failed);
        web3.current = Some(TARGET.into());
        web3.failure = Some("probe health failed 3 times in a row".into());
        web3.probes = BTreeMap::from([
            ("health".into(), probe(ProbeMode::Enforce, 4, 3, 3)),
            ("latency".into(), probe(ProbeMode::Observe, 3, 4, 2)),
        ]);
        // Pending: `current` is what it ran when the rollout started.
        let web4 = host("web-4", 2, HostRolloutState::Pending);
        let wave = |size: &str, soak_ms: u64, hosts: &[&str], n_converged: usize, n_failed: usize| WaveView {
            size: size.into(),
            soak_ms,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            n_converged,
            n_failed,
        };
        RolloutView {
            id: "ro-7f3a".into(),
            state: "halted".into(),
            service: Some("web".into()),
            channel: "web".into(),
            target: TARGET.into(),
            policy: policy(),
            wave: 1,
            waves: vec![
                wave("1", 30_000, &["web-1"], 1, 0),
                wave("50%", 30_000, &["web-2", "web-3"], 0, 1),
                wave("100%", 300_000, &["web-4"], 0, 0),
            ],
            halted: Some("host web-3 failed: probe health failed 3 times in a row".into()),
            quarantined: false,
            // Not in dispatch order: the table orders them by wave.
            hosts: vec![web4, web3, web1, web2],
            blocked: vec![BlockedView {
                host: "web-2".into(),
                state: "soaking".into(),
                since_ms: NOW - 45_500,
                reason: "silent".into(),
            }],
            started_by: "ed25519:ab12".into(),
            started_at_ms: NOW - 192_400,
            updated_at_ms: NOW - 1_000,
        }
    }

    #[test]
    fn durations_are_whole_seconds_elapsed_rounded_down_remaining_rounded_up() {
        assert_eq!(elapsed_text(0), "0s");
        assert_eq!(elapsed_text(999), "0s");
        assert_eq!(elapsed_text(61_900), "1m1s");
        assert_eq!(elapsed_text(3_723_000), "1h2m3s");
        assert_eq!(remaining_text(1), "1s");
        assert_eq!(remaining_text(12_300), "13s");
        assert_eq!(remaining_text(30_000), "30s");
        assert_eq!(remaining_text(0), "0s");
    }

    #[test]
    fn the_progress_bar_is_full_only_when_every_host_converged() {
        assert_eq!(progress_bar(0, 3, 10), "[░░░░░░░░░░]");
        assert_eq!(progress_bar(1, 3, 10), "[███░░░░░░░]");
        assert_eq!(progress_bar(2, 3, 10), "[██████░░░░]");
        assert_eq!(progress_bar(9, 10, 10), "[█████████░]");
        assert_eq!(progress_bar(3, 3, 10), "[██████████]");
        // An empty wave converges at once.
        assert_eq!(progress_bar(0, 0, 10), "[██████████]");
    }

    #[test]
    fn waves_show_their_size_soak_progress_and_the_current_one() {
        let lines = wave_lines(&view());
        assert_eq!(
            lines,
            [
                "wave 0 (1, soak 30s)    [██████████] 1/1 converged",
                "wave 1 (50%, soak 30s)  [░░░░░░░░░░] 0/2 converged, 1 in flight, 1 failed  ◀ current",
                "wave 2 (100%, soak 5m)  [░░░░░░░░░░] 0/1 converged",
            ]
        );
    }

    #[test]
    fn the_host_table_is_in_dispatch_order_with_soak_and_probes() {
        let expected = "\
HOST   WAVE  STATE      CURRENT              SOAK      PROBES
web-1  0     converged  sha256:9f86d081884c  done      health ✓ 12/0
web-2  1     soaking    sha256:9f86d081884c  13s left  health ✓ 5/1, latency · 0/0 (observe)
web-3  1     failed     sha256:9f86d081884c  -         health ✗3 4/3, latency ✗2 3/4 (observe)
web-4  2     pending    sha256:60303ae22b99  -         -
";
        assert_eq!(host_table(&view(), NOW), expected);
    }

    #[test]
    fn a_soak_past_its_deadline_is_done() {
        let mut soaking = host("web-2", 1, HostRolloutState::Soaking);
        soaking.soak_due_at = Some(NOW);
        assert_eq!(soak_text(&soaking, NOW), "done");
        assert_eq!(soak_text(&soaking, NOW - 1), "1s left");
    }

    #[test]
    fn the_status_has_a_header_waves_hosts_and_what_holds_it_up() {
        let expected = "\
rollout:     ro-7f3a
service:     web
target:      sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
state:       halted
halted:      host web-3 failed: probe health failed 3 times in a row
quarantined: no
started:     3m12s ago by ed25519:ab12

wave 0 (1, soak 30s)    [██████████] 1/1 converged
wave 1 (50%, soak 30s)  [░░░░░░░░░░] 0/2 converged, 1 in flight, 1 failed  ◀ current
wave 2 (100%, soak 5m)  [░░░░░░░░░░] 0/1 converged

HOST   WAVE  STATE      CURRENT              SOAK      PROBES
web-1  0     converged  sha256:9f86d081884c  done      health ✓ 12/0
web-2  1     soaking    sha256:9f86d081884c  13s left  health ✓ 5/1, latency · 0/0 (observe)
web-3  1     failed     sha256:9f86d081884c  -         health ✗3 4/3, latency ✗2 3/4 (observe)
web-4  2     pending    sha256:60303ae22b99  -         -

blocked  web-2 (soaking): no report for 45s
failed   web-3 (failed): probe health failed 3 times in a row
";
        assert_eq!(render_status(&view(), NOW), expected);
    }

    #[test]
    fn what_agents_and_users_wrote_cannot_redraw_the_terminal() {
        let mut view = view();
        view.halted = Some("probe said \u{1b}[2J\u{1b}]0;pwned\u{7}".into());
        let text = render_status(&view, NOW);
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "{text}");
        assert!(text.contains("halted:      probe said \\u{1b}[2J\\u{1b}]0;pwned\\u{7}\n"), "{text}");
        assert_eq!(text.lines().count(), render_status(&self::view(), NOW).lines().count(), "lines are kept");
    }

    #[test]
    fn a_host_activation_names_its_channel() {
        let mut view = view();
        view.service = None;
        view.channel = "*".into();
        view.target = "/nix/store/abc-system".into();
        assert!(render_status(&view, NOW)
            .starts_with("rollout:     ro-7f3a\nhosts:       all hosts\ntarget:      /nix/store/abc-system\n"));
        assert_eq!(start_summary(&view), "rollout ro-7f3a of /nix/store/abc-system to all hosts: 4 hosts in 3 waves (1, 2, 1)");
    }

    #[test]
    fn the_list_shows_wave_and_convergence_counts() {
        let mut activation = view();
        activation.id = "ro-11aa".into();
        activation.service = None;
        activation.channel = "edge".into();
        activation.state = "completed".into();
        activation.wave = 2;
        let expected = "\
ID       SERVICE/TARGET                      STATE      WAVE  CONVERGED  AGE
ro-7f3a  web                                 halted     2/3   1/4        3m12s
ro-11aa  sha256:9f86d081884c (channel edge)  completed  3/3   1/4        3m12s
";
        assert_eq!(render_list(&[view(), activation], NOW), expected);
        assert_eq!(start_summary(&view()), "rollout ro-7f3a of web to sha256:9f86d081884c: 4 hosts in 3 waves (1, 2, 1)");
    }

    #[test]
    fn settled_means_completed_or_stopped_with_nothing_moving() {
        let mut view = view();
        // Halted, but web-2 is still soaking.
        assert!(!is_settled(&view));
        view.hosts.retain(|h| h.hostname != "web-2");
        assert!(is_settled(&view));
        view.state = "undone".into();
        view.hosts[0].state = HostRolloutState::Reverting;
        assert!(!is_settled(&view));
        view.hosts[0].state = HostRolloutState::Reverted;
        assert!(is_settled(&view));
        view.state = "running".into();
        assert!(!is_settled(&view));
        view.state = "paused".into();
        assert!(!is_settled(&view));
        view.state = "completed".into();
        assert!(is_settled(&view));
    }

    #[test]
    fn start_takes_a_service_and_its_spec_or_a_target_and_its_policy() {
        use clap::{CommandFactory, Parser};
        super::super::Cli::command().debug_assert();
        let parses = |args: &str| super::super::Cli::try_parse_from(args.split_whitespace()).is_ok();
        assert!(parses("warden rollout start web --spec v2.toml"));
        assert!(parses("warden rollout start web --spec v2.toml --policy p.toml --waves 1,25%,100% --max-in-flight 2 --soak 30s --on-failure rollback --probe-http http://127.0.0.1/healthz --no-require-probes"));
        assert!(parses("warden rollout start --target sha256:ab --policy p.toml"));
        assert!(parses("warden rollout start --target sha256:ab --channel edge --policy p.toml --soak 1m"));
        assert!(!parses("warden rollout start web"), "a service needs its new spec");
        assert!(!parses("warden rollout start --spec v2.toml"), "a spec needs its service");
        assert!(!parses("warden rollout start --target sha256:ab"), "a host activation needs a policy (activate, rollback)");
        assert!(!parses("warden rollout start web --spec v2.toml --target sha256:ab --policy p.toml"));
        assert!(!parses("warden rollout start web --spec v2.toml --channel edge"), "--channel is for host activations");
        assert!(!parses("warden rollout start web --spec v2.toml --on-failure retry"));
        assert!(parses("warden rollout status ro-7f --watch -o json"));
        assert!(parses("warden rollout ls"));
    }

    fn flags() -> PolicyFlags {
        PolicyFlags::default()
    }

    fn file(text: &str) -> PolicyFile {
        PolicyFile { name: "p.toml".into(), text: text.into() }
    }

    #[test]
    fn without_flags_the_file_goes_as_it_is() {
        let text = "# canary first\nwaves = [1, \"100%\"]\nrequire_probes = false\n";
        let policy = policy_text(Some(&file(text)), &flags()).unwrap();
        assert_eq!((policy.file.as_str(), policy.toml.as_str(), policy.merged), ("p.toml", text, false));
        let policy = policy_text(None, &flags()).unwrap();
        assert_eq!((policy.file.as_str(), policy.toml.as_str()), ("default policy", ""));
    }

    #[test]
    fn flags_override_the_files_keys_and_keep_the_rest() {
        let text = r#"
            waves = [1, "100%"]
            soak = ["1m", "10m"]
            stall_after = "2m"
            activate = ["/bin/switch", "{target}"]
            rollback = ["/bin/switch", "{previous}"]

            [[probes]]
            name = "http"
            tcp = "127.0.0.1:22"
        "#;
        let flags = PolicyFlags {
            waves: vec!["1".into(), " 25%".into(), "100%".into()],
            max_in_flight: Some(3),
            soak: Some("30s".into()),
            on_failure: Some(OnFailureArg::Rollback),
            probe_http: vec!["http://127.0.0.1:8080/healthz".into()],
            no_require_probes: false,
        };
        let merged = policy_text(Some(&file(text)), &flags).unwrap();
        assert_eq!(merged.file, "p.toml + flags");
        let policy = RolloutPolicy::parse(&merged.file, &merged.toml).unwrap_or_else(|e| panic!("{e}\n{}", merged.toml));
        let sizes: Vec<(WaveSize, u64)> = policy.waves.iter().map(|w| (w.size, w.soak_ms)).collect();
        assert_eq!(sizes, [(WaveSize::Count(1), 30_000), (WaveSize::Percent(25), 30_000), (WaveSize::Percent(100), 30_000)]);
        assert_eq!(policy.max_in_flight, 3);
        assert_eq!(policy.on_failure, OnFailure::Rollback);
        assert_eq!(policy.stall_after_ms, 120_000);
        assert_eq!(policy.activate, ["/bin/switch", "{target}"]);
        assert_eq!(policy.rollback, ["/bin/switch", "{previous}"]);
        let names: Vec<&str> = policy.probes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["http", "http-2"]);
        let added = &policy.probes[1];
        assert_eq!(
            added.kind,
            warden_core::rollout::ProbeKind::Http { url: "http://127.0.0.1:8080/healthz".into(), expect_status: 200 }
        );
        assert_eq!(added.mode, ProbeMode::Enforce);
        assert!(policy.require_probes);
    }

    #[test]
    fn flags_stand_in_for_a_policy_file() {
        let flags = PolicyFlags { probe_http: vec!["http://a/healthz".into(), "http://b/healthz".into()], ..flags() };
        let merged = policy_text(None, &flags).unwrap();
        assert_eq!(merged.file, "flags");
        let policy = check_policy(None, &merged).unwrap();
        let names: Vec<&str> = policy.probes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["http", "http-2"]);
        assert_eq!(policy.waves.len(), 2, "the default waves: a canary, then the rest");

        let flags = PolicyFlags { no_require_probes: true, soak: Some("10s".into()), ..self::flags() };
        let policy = check_policy(None, &policy_text(None, &flags).unwrap()).unwrap();
        assert!(!policy.require_probes);
        assert!(policy.probes.is_empty());
        assert!(policy.waves.iter().all(|w| w.soak_ms == 10_000));
    }

    #[test]
    fn without_probes_the_default_policy_is_refused() {
        let error = check_policy(None, &policy_text(None, &flags()).unwrap()).unwrap_err();
        assert!(error.to_string().starts_with("default policy: no probe has mode = \"enforce\""), "{error}");
    }

    #[test]
    fn errors_point_at_the_files_own_lines_or_name_the_flags() {
        // Not TOML at all: the file's line.
        let flags = PolicyFlags { soak: Some("30s".into()), ..flags() };
        let error = policy_text(Some(&file("require_probes = false\nwaves = = 1\n")), &flags).unwrap_err();
        assert!(error.to_string().starts_with("p.toml:2: "), "{error}");

        // An error of the file itself, under flags: still the file's line.
        let text = "require_probes = false\n\n\nsoak_time = \"1m\"\n";
        let merged = policy_text(Some(&file(text)), &flags).unwrap();
        let error = check_policy(Some(&file(text)), &merged).unwrap_err();
        assert_eq!((error.file.as_str(), error.line), ("p.toml", Some(4)), "{error}");

        // An error the flags made: no line, since it would be one of the merged text.
        let flags = PolicyFlags { waves: vec!["1".into(), "50%".into()], ..flags };
        let merged = policy_text(Some(&file("require_probes = false\n")), &flags).unwrap();
        let error = check_policy(Some(&file("require_probes = false\n")), &merged).unwrap_err();
        assert_eq!((error.file.as_str(), error.line), ("p.toml + flags", None));
        assert!(error.message.contains("the last wave must be \"100%\""), "{error}");

        let flags = PolicyFlags { soak: Some("soon".into()), no_require_probes: true, ..self::flags() };
        let error = check_policy(None, &policy_text(None, &flags).unwrap()).unwrap_err();
        assert!(error.to_string().starts_with("flags: soak: bad duration \"soon\""), "{error}");
    }

    #[test]
    fn probe_http_needs_probes_to_be_an_array() {
        let flags = PolicyFlags { probe_http: vec!["http://a/".into()], ..flags() };
        let error = policy_text(Some(&file("probes = \"none\"\n")), &flags).unwrap_err();
        assert!(error.to_string().starts_with("p.toml + flags: probes must be an array of tables"), "{error}");
    }
}
