//! `warden agent`: the host side of a cluster. It runs cells for a control plane (`warden
//! server`) and nothing else; every request is made by the agent, so hosts need no open port.
//! The protocol is in `proto.rs`.
//!
//! ```text
//! <data-dir>/agent.lock      flock held by the running agent (two would start every cell twice)
//! <data-dir>/host.key        the host's Ed25519 key, created on first start (mode 0600)
//! <data-dir>/enrolled.json   the EnrollResponse: present once the host key is enrolled
//! <data-dir>/commands.json   the command cursor: {incarnation, after}
//! <data-dir>/reports.db      the durable outbound report queue (warden_store::queue)
//! <data-dir>/cells/, logs/   as for `warden up`; a checkpointed cell's dir also holds
//!                            checkpoint.json (0600: its CheckpointPlan, key included); a
//!                            cell's spec is WARDEN_SPEC_ID in the env of its config.json
//! ```
//!
//! A checkpointed cell (`checkpoint.rs`, `agent/checkpointing.rs`) also has a **checkpoint
//! task**: every `interval_ms`, or at once on a `Checkpoint` command, it tars, seals and uploads
//! `state_dir` and queues a `checkpointed` report.
//!
//! Three things run at once:
//! * the **heartbeat loop** sends, every `heartbeat_interval_ms` and at once whenever a report
//!   was queued or a lease must be claimed: the unacknowledged reports (oldest first, ≤ 256), a
//!   renewal for every fenced cell's lease (counted from the send time, see `executor.rs`), and
//!   the inventory on the first heartbeat, after the control plane restarted (a new
//!   `incarnation`) or when it asks. The answer acknowledges reports and renews leases;
//! * the **command loop** long-polls `GET /v1/agents/commands?after=N` and carries the commands
//!   out in order ([`Executor::execute`]). `N` is kept in `commands.json`, so an agent that
//!   restarts does not run the current incarnation's commands again (a `Start` of a cell that was
//!   since removed would start it twice); a new incarnation starts over at 0;
//! * one **watch task per cell**, waiting on its shim's pidfd, queues its exit;
//! * one **rollout worker per rollout** this host is in (`agent/rollout/`), started by a `Rollout`
//!   command or by the rollouts in a heartbeat answer (after either side restarted, the answer
//!   to the inventory), and fed every newer order for it. It follows the control plane's
//!   snapshot of the host: acknowledges, activates (runs the activation command, or waits until
//!   the service's cells here run the target spec, `WARDEN_SPEC_ID`), runs the probes while the
//!   host soaks, rolls back when told, and reports each step (`POST /v1/agents/rollout`,
//!   numbered, sent again with the same number until answered). It keeps nothing on disk: the
//!   control plane's snapshot is where a restarted agent resumes.
//!
//! The rooms, each one idea; a room uses only those listed after it:
//!
//! ```text
//! executor.rs       carries out commands, re-adopts cells, watches them end, evicts and revokes
//! rollout/          the per-rollout worker (mod.rs), its commands (command.rs), probes
//!                   (probe.rs) and placeholders (substitutions.rs)
//! standby.rs        warm-standby slots: arm, disarm, bid, hot standbys promoted in place
//! checkpointing.rs  restore before a start, the per-cell checkpoint task, the final checkpoint
//! leases.rs         renewals to send with a heartbeat, and their answers applied
//! blobs.rs          checkpoint blobs to and from the control plane, and a standby's cached copies
//! context.rs        what all of them share: the cell table, backend, outbox, timing, control plane
//! cell_table.rs     what the agent knows of each cell, in memory
//! cell_files.rs     the agent's records in a cell's dir, and the env it gives a cell
//! outbox.rs         the durable report queue, and the exit when it fails
//! http.rs           the signed client for the control plane
//! ```
//!
//! Cells run under their shims and outlive the agent: SIGINT/SIGTERM (or SIGKILL) leaves them
//! running, and the next agent on the data dir re-adopts them. A fenced cell survives its agent
//! only as long as its lease: without renewals its shim kills it at the deadline.

mod blobs;
mod cell_files;
mod cell_table;
mod checkpointing;
mod context;
mod executor;
mod http;
mod leases;
mod outbox;
mod rollout;
mod standby;

pub use cell_files::{EPOCH_ENV, SPEC_ID_ENV};
pub use context::{boottime_ms, ClaimRequest};
pub use executor::{Executor, ReadoptError, Readoption};
pub use http::{Http, HttpError};
pub use leases::Renewal;
pub use outbox::{pending_reports, MAX_REPORTS_PER_HEARTBEAT};

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use warden_cell::ShimExe;
use warden_core::cluster::join_token_pin;
use warden_core::fingerprint::Fingerprint;
use warden_store::queue::DurableQueue;

use self::outbox::fatal;
use crate::auth::Identity;
use crate::client::ServerTrust;
use crate::proto::{Commands, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatResponse, LeaseClaim};

/// The control plane holds a long poll up to ~20 s; wait longer than that for its answer.
const COMMANDS_TIMEOUT: Duration = Duration::from_secs(35);
const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);
/// Between attempts while the control plane is unreachable.
const RETRY_DELAY: Duration = Duration::from_millis(500);

pub struct AgentConfig {
    /// The control plane: `host:port` or `https://host:port` (TLS), `http://host:port` (plain).
    pub server: String,
    /// This host's name, unique in the cluster.
    pub name: String,
    pub channel: Option<String>,
    pub tags: Vec<String>,
    pub data_dir: PathBuf,
    /// Needed only until the host key is enrolled. Its pin (the server certificate's
    /// fingerprint) is what the agent trusts, then and after (`<data-dir>/server-pin`).
    pub join_token: Option<String>,
    /// `--ca FILE`: trust the certificates this file names instead of a pin.
    pub ca: Option<PathBuf>,
    pub shim: ShimExe,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot use data dir {path}")]
    DataDir { path: String, source: std::io::Error },
    #[error("another warden agent is already running on data dir {0} (its agent.lock is held)")]
    AlreadyRunning(String),
    #[error(transparent)]
    Identity(#[from] crate::auth::IdentityError),
    #[error("this host is not enrolled yet: its first start needs a join token in --join-token-file FILE or WARDEN_JOIN_TOKEN (an admin makes one with `warden tokens create --out FILE`; the server's first start wrote one to <server data dir>/join-token)")]
    NoJoinToken,
    #[error("bad --server")]
    Server(#[source] crate::client::ClientSetupError),
    #[error(
        "{server} is served over TLS and this agent has no pin for its certificate: give it a join token made by \
         that server (it carries the pin), or --ca FILE (write http:// for a server started with --insecure-http)"
    )]
    NoPin { server: String },
    #[error("{path} is not a certificate fingerprint (sha256:<hex>)")]
    PinCorrupt { path: String },
    #[error(
        "refusing to talk to the control plane: {0}. If its certificate was replaced on purpose, remove \
         <agent data dir>/server-pin and start again with a new join token from it, or use --ca FILE"
    )]
    Certificate(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("the control plane refused to enroll this host: {0}")]
    EnrollRefused(String),
    #[error("data dir {data_dir} is enrolled as host {enrolled:?}, not {name:?}: use --name {enrolled} or another --data-dir")]
    NameMismatch { data_dir: String, enrolled: String, name: String },
    #[error("{path} is unreadable")]
    EnrollmentUnreadable { path: String, source: std::io::Error },
    #[error("{path} is not an enrollment")]
    EnrollmentCorrupt { path: String, source: serde_json::Error },
    #[error("cannot take on the cells in data dir {path}")]
    Readopt { path: String, source: ReadoptError },
    #[error("report queue")]
    Queue(#[from] warden_store::queue::QueueError),
    #[error("cannot make the default cell user")]
    CellUser(#[from] crate::cell_user::CreateUserError),
}

/// Runs the agent until SIGINT or SIGTERM; see the module docs.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let data_dir = config.data_dir.clone();
    let dir_err = |source| AgentError::DataDir { path: data_dir.display().to_string(), source };
    std::fs::create_dir_all(data_dir.join("cells")).map_err(dir_err)?;
    std::fs::create_dir_all(data_dir.join("logs")).map_err(dir_err)?;
    crate::modes::tighten(&data_dir).map_err(dir_err)?;
    let _lock = lock_data_dir(&data_dir)?;
    // Cells run as the `warden` system user by default (see `cell_user`).
    crate::cell_user::ensure_default_user()?;

    let key_path = data_dir.join("host.key");
    let identity = if key_path.exists() {
        Identity::load(&key_path)?
    } else {
        let identity = Identity::generate(&config.name);
        identity.save(&key_path)?;
        // Saving an identity makes its dir 0700 (right for ~/.config/warden); this data dir
        // must stay passable for cells (a hot standby's role file): its modes again.
        crate::modes::tighten(&data_dir).map_err(dir_err)?;
        identity
    };
    let identity = Arc::new(identity);
    let enrolled_path = data_dir.join("enrolled.json");
    let enrollment = read_enrollment(&enrolled_path)?;
    let join_token = config.join_token.clone().filter(|t| !t.trim().is_empty());
    if enrollment.is_none() && join_token.is_none() {
        return Err(AgentError::NoJoinToken);
    }
    let pin_path = data_dir.join(SERVER_PIN_FILE);
    let (trust, pin_to_save) = server_trust(&config, &pin_path)?;
    let http = Arc::new(Http::new(&config.server, identity.clone(), trust).map_err(AgentError::Server)?);

    let enrolled = match enrollment {
        Some(enrolled) => enrolled,
        None => {
            let join_token = join_token.ok_or(AgentError::NoJoinToken)?;
            let request = EnrollRequest {
                join_token: join_token.trim().to_string(),
                name: config.name.clone(),
                channel: config.channel.clone(),
                tags: config.tags.clone(),
            };
            let enrolled = tokio::select! {
                enrolled = enroll(&http, &request) => enrolled?,
                () = shutdown_signal() => return Ok(()),
            };
            write_durably(&enrolled_path, &serde_json::to_vec_pretty(&enrolled).expect("serializes")).map_err(dir_err)?;
            enrolled
        }
    };
    // The pin that just worked is the one trusted from now on, whatever later tokens say.
    if let Some(pin) = pin_to_save {
        write_durably(&pin_path, format!("{pin}\n").as_bytes()).map_err(dir_err)?;
    }
    if enrolled.host != config.name {
        return Err(AgentError::NameMismatch {
            data_dir: data_dir.display().to_string(),
            enrolled: enrolled.host.clone(),
            name: config.name.clone(),
        });
    }
    if let Err(e) = enrolled.lease.validate() {
        tracing::warn!("the control plane's lease timing is unusable for fenced cells: {e}");
    }

    let queue = Arc::new(DurableQueue::open(&data_dir.join("reports.db"))?);
    let (claims_tx, claims_rx) = mpsc::unbounded_channel();
    let executor = Executor::new(
        data_dir.join("cells"),
        data_dir.join("logs"),
        config.shim.clone(),
        queue.clone(),
        enrolled.lease,
        claims_tx,
    );
    executor.set_control_plane(http.clone(), &enrolled.host);
    let readoption =
        executor.readopt().await.map_err(|source| AgentError::Readopt { path: data_dir.display().to_string(), source })?;
    let queued = queue.len()?;

    eprintln!("warden agent: host {:?} → {}", enrolled.host, http.base_url());
    eprintln!("  data dir     {}", data_dir.display());
    eprintln!("  host key     {} ({})", key_path.display(), identity.principal());
    eprintln!("  cell shim    {}", shim_note(&config.shim));
    eprintln!("  cgroups      {} (cell limits and teardown)", warden_cell::cgroup_layout());
    eprintln!(
        "  cells        re-adopted {} running ({} fenced), ended while down {}, lost {}; {queued} report(s) queued",
        readoption.running, readoption.fenced, readoption.exited, readoption.lost
    );
    eprintln!(
        "  heartbeat    every {} ms; leases: ttl {} ms, this host fences {} ms after a renewal it sent",
        enrolled.heartbeat_interval_ms,
        enrolled.lease.ttl_ms,
        enrolled.lease.holder_validity_ms()
    );

    let (connected_tx, connected_rx) = watch::channel(false);
    let heartbeats = tokio::spawn(heartbeat_loop(http.clone(), executor.clone(), enrolled.clone(), claims_rx, connected_tx));
    let commands = tokio::spawn(command_loop(http, executor, data_dir.join("commands.json"), connected_rx));
    shutdown_signal().await;
    heartbeats.abort();
    commands.abort();
    eprintln!("warden agent: stopped; cells keep running under their shims and the next `warden agent` re-adopts them");
    Ok(())
}

/// In the agent's data dir: the server certificate's fingerprint (`sha256:<hex>`), taken from
/// the join token at enrollment and trusted from then on.
pub const SERVER_PIN_FILE: &str = "server-pin";

/// What the agent trusts with TLS, and the pin to save once enrolled (`None` if nothing new):
/// `--ca`, else the saved pin, else the join token's.
fn server_trust(config: &AgentConfig, pin_path: &Path) -> Result<(ServerTrust, Option<Fingerprint>), AgentError> {
    if let Some(ca) = &config.ca {
        return Ok((ServerTrust::ca_file(ca)?, None));
    }
    match std::fs::read_to_string(pin_path) {
        Ok(text) => {
            let pin = Fingerprint::parse(&text).ok_or_else(|| AgentError::PinCorrupt { path: pin_path.display().to_string() })?;
            return Ok((ServerTrust::Pinned(pin), None));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(AgentError::DataDir { path: pin_path.display().to_string(), source }),
    }
    let tls = crate::client::ServerAddress::parse(&config.server).map_err(|e| AgentError::Server(e.into()))?.tls();
    match config.join_token.as_deref().and_then(join_token_pin) {
        Some(pin) => Ok((ServerTrust::Pinned(pin.clone()), Some(pin))),
        None if tls => Err(AgentError::NoPin { server: config.server.clone() }),
        None => Ok((ServerTrust::Nobody, None)),
    }
}

fn shim_note(shim: &ShimExe) -> String {
    match shim {
        ShimExe::Standalone(path) => format!("{} (standalone)", path.display()),
        ShimExe::Subcommand(path) => format!("`{} shim`", path.display()),
    }
}

/// `POST /v1/agents/enroll` until it is answered: retried while the control plane is unreachable
/// or failing (5xx), an error once it refuses (4xx, e.g. a wrong join token).
async fn enroll(http: &Http, request: &EnrollRequest) -> Result<EnrollResponse, AgentError> {
    let link = Link::new("enroll");
    loop {
        match http.json::<_, EnrollResponse>("POST", "/v1/agents/enroll", Some(request), ENROLL_TIMEOUT).await {
            Ok(enrolled) => {
                link.ok();
                tracing::info!("enrolled as host {:?} ({})", enrolled.host, enrolled.principal);
                return Ok(enrolled);
            }
            Err(HttpError::Status { code, message }) if (400..500).contains(&code) && code != 408 && code != 429 => {
                return Err(AgentError::EnrollRefused(format!("{message} (HTTP {code})")));
            }
            // Not the server the token names: the join token must not be sent to it again.
            Err(HttpError::Certificate(why)) => return Err(AgentError::Certificate(why)),
            Err(e) => link.failed(&e),
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

/// Logs a connection's state when it changes (connected, or failing in a new way), not on every
/// attempt: an agent waiting minutes for its control plane writes one line, not thousands.
struct Link {
    what: &'static str,
    state: Mutex<LinkState>,
}

/// What a [`Link`] last saw.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LinkState {
    /// No attempt yet.
    Unknown,
    Answering,
    /// Failing, in this way (`HttpError::class`).
    Failing {
        class: String,
    },
}

impl Link {
    fn new(what: &'static str) -> Link {
        Link { what, state: Mutex::new(LinkState::Unknown) }
    }

    fn ok(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*state, LinkState::Failing { .. }) {
            tracing::info!("{}: the control plane answers again", self.what);
        }
        *state = LinkState::Answering;
    }

    fn failed(&self, error: &HttpError) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let failing = LinkState::Failing { class: error.class() };
        if *state != failing {
            tracing::warn!("{}: {error}; retrying (logged again only when this changes)", self.what);
            if matches!(error, HttpError::Refused(_)) && self.what == "heartbeat" {
                tracing::warn!(
                    "the control plane is down (nothing listens at its address): leased cells keep running \
                     and their fences are renewed by that evidence, except workloads with \
                     control_plane_outage = \"stop\""
                );
            }
        }
        *state = failing;
    }
}

async fn heartbeat_loop(
    http: Arc<Http>,
    executor: Executor,
    enrolled: EnrollResponse,
    mut claims: mpsc::UnboundedReceiver<ClaimRequest>,
    connected: watch::Sender<bool>,
) {
    let link = Link::new("heartbeat");
    let interval = Duration::from_millis(enrolled.heartbeat_interval_ms.max(1));
    // Heartbeats go one at a time, so one that hangs (a lost SYN waits a full second for the
    // kernel's retry) must not hold back the next past `host_ttl`: give up on it after half of
    // that (but never sooner than two intervals) and try afresh on a new connection, so a short
    // outage costs one heartbeat, not the host.
    let timeout = Duration::from_millis((enrolled.host_ttl_ms / 2).max(2 * enrolled.heartbeat_interval_ms).max(1));
    let mut incarnation: Option<String> = None;
    let mut send_inventory = true;
    let mut waiting: Vec<ClaimRequest> = Vec::new();
    let mut next = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = executor.report_pushed() => {}
            Some(claim) = claims.recv() => waiting.push(claim),
        }
        while let Ok(claim) = claims.try_recv() {
            waiting.push(claim);
        }
        waiting.retain(|claim| !claim.reply.is_closed());

        let queue = executor.queue().clone();
        let reports = match tokio::task::spawn_blocking(move || pending_reports(&queue, MAX_REPORTS_PER_HEARTBEAT)).await {
            Ok(Ok(reports)) => reports,
            Ok(Err(e)) => fatal(&format!("cannot read the report queue: {e}")),
            Err(e) => fatal(&format!("the report queue task failed: {e}")),
        };
        let n_reports = reports.len();
        let renewals = executor.renewals();
        let mut renew: Vec<LeaseClaim> = renewals.iter().map(|r| r.claim.clone()).collect();
        renew.extend(waiting.iter().map(|c| c.claim.clone()));
        let inventory = send_inventory.then(|| executor.inventory());
        let carried_inventory = inventory.is_some();
        let standbys = inventory.is_some().then(|| executor.armed());
        let heartbeat = Heartbeat { host: enrolled.host.clone(), reports, renew, inventory, standbys };

        let sent_at = boottime_ms();
        next = Instant::now() + interval;
        let answer = http.json::<_, HeartbeatResponse>("POST", "/v1/agents/heartbeat", Some(&heartbeat), timeout).await;
        let answer = match answer {
            Ok(answer) if answer.renewed.len() == heartbeat.renew.len() => answer,
            Ok(answer) => {
                let e = HttpError::Decode(format!(
                    "{} lease answers for {} claims; nothing renewed",
                    answer.renewed.len(),
                    heartbeat.renew.len()
                ));
                link.failed(&e);
                continue;
            }
            Err(e @ HttpError::Refused(_)) => {
                // Nothing listens at the control plane's address: it is down (restarting,
                // upgrading, crashed), not merely out of reach, and grants no lease while it is.
                link.failed(&e);
                let rode_out = executor.no_control_plane(&renewals, sent_at, boottime_ms()).await;
                if rode_out > 0 {
                    tracing::debug!("the control plane is down: {rode_out} leased cell(s) ride it out");
                }
                continue;
            }
            Err(e) => {
                link.failed(&e);
                continue;
            }
        };
        link.ok();
        connected.send_replace(true);

        if answer.acked_reports_through > 0 {
            let queue = executor.queue().clone();
            let through = answer.acked_reports_through;
            match tokio::task::spawn_blocking(move || queue.ack_through(through)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => fatal(&format!("cannot acknowledge reports in the queue: {e}")),
                Err(e) => fatal(&format!("the report queue task failed: {e}")),
            }
        }
        let (renewed, claimed) = answer.renewed.split_at(renewals.len());
        executor.apply_renewals(&renewals, renewed, sent_at).await;
        for (claim, &yes) in waiting.drain(..).zip(claimed) {
            let _ = claim.reply.send(yes.then_some(sent_at));
        }

        let restarted = incarnation.as_ref().is_some_and(|known| *known != answer.incarnation);
        if restarted {
            tracing::info!("the control plane restarted (incarnation {}); sending the inventory", answer.incarnation);
        }
        let first = incarnation.is_none();
        send_inventory = answer.send_inventory || ((restarted || first) && !carried_inventory);
        incarnation = Some(answer.incarnation);
        // This host's part in every rollout not over for it (the answer to an inventory):
        // what a restarted agent (or a restarted control plane) resumes from.
        for order in answer.rollouts {
            executor.follow_rollout(order);
        }
        if send_inventory || n_reports == MAX_REPORTS_PER_HEARTBEAT {
            next = Instant::now();
        }
    }
}

/// Where the command loop is: the last command carried out, in which incarnation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    incarnation: Option<String>,
    after: u64,
}

async fn command_loop(http: Arc<Http>, executor: Executor, cursor_path: PathBuf, mut connected: watch::Receiver<bool>) {
    // The first heartbeat carries the inventory; asking for commands only after it lets the
    // control plane reconcile before it decides.
    let _ = connected.wait_for(|connected| *connected).await;
    let link = Link::new("commands");
    let mut cursor: Cursor = std::fs::read(&cursor_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    loop {
        // With the incarnation the cursor counts in, so the control plane can tell a cursor of
        // its own numbering from a stale one (it then answers from the start).
        let path = match &cursor.incarnation {
            Some(incarnation) => {
                format!("/v1/agents/commands?after={}&incarnation={}", cursor.after, query_escape(incarnation))
            }
            None => "/v1/agents/commands?after=0".to_string(),
        };
        let answer = match http.json::<(), Commands>("GET", &path, None, COMMANDS_TIMEOUT).await {
            Ok(answer) => answer,
            Err(e) => {
                link.failed(&e);
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            }
        };
        link.ok();
        if cursor.incarnation.as_deref() != Some(answer.incarnation.as_str()) {
            let stale = cursor.incarnation.is_some() && cursor.after != 0;
            if cursor.incarnation.is_some() {
                tracing::info!("new control-plane incarnation {}: command numbering starts over", answer.incarnation);
            }
            cursor = Cursor { incarnation: Some(answer.incarnation), after: 0 };
            save_cursor(&cursor_path, &cursor);
            if stale {
                // Numbered in the new incarnation but asked for after the old one's `N`: the
                // answer may have skipped some. Ask again from the start.
                continue;
            }
        }
        let mut commands = answer.commands;
        commands.sort_by_key(|command| command.seq);
        for command in commands {
            if command.seq <= cursor.after {
                continue;
            }
            tracing::debug!(seq = command.seq, "command {:?}", command.kind);
            executor.execute(command.kind).await;
            cursor.after = command.seq;
            save_cursor(&cursor_path, &cursor);
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Atomic (temp file + rename), not fsynced: like the cell records, it must survive an agent
/// crash, which the page cache does; after a power cut the cells are gone anyway.
fn save_cursor(path: &Path, cursor: &Cursor) {
    let tmp = path.with_extension("json.tmp");
    let result = std::fs::write(&tmp, serde_json::to_vec(cursor).expect("serializes")).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!("cannot save the command cursor {}: {e}", path.display());
    }
}

fn read_enrollment(path: &Path) -> Result<Option<EnrollResponse>, AgentError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(AgentError::EnrollmentUnreadable { path: path.display().to_string(), source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| AgentError::EnrollmentCorrupt { path: path.display().to_string(), source })
}

/// Temp file, fsync, rename, fsync of the dir: the enrollment must not be half-written or lost,
/// or the host would need a join token again.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Holds an exclusive lock on `<data-dir>/agent.lock` for the life of the process: two agents on
/// one data dir would both start every cell.
fn lock_data_dir(data_dir: &Path) -> Result<File, AgentError> {
    let path = data_dir.join("agent.lock");
    let file = File::create(&path).map_err(|source| AgentError::DataDir { path: path.display().to_string(), source })?;
    if crate::sys::try_lock_exclusive(&file).is_err() {
        return Err(AgentError::AlreadyRunning(data_dir.display().to_string()));
    }
    Ok(file)
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
