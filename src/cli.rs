//! Command-line interface: `up`, `run`, `ps`, `status`, `logs`, `stop`, `events`
//! (`events head|verify` in `cli/events.rs`), `job run|status|history|cancel|ls`,
//! `rollout start|status|pause|resume|undo|ls` (in `cli/rollout.rs`), `artifact get`,
//! `keys add|ls|revoke` (in `cli/keys.rs`), `journal verify|repair` (offline, in
//! `cli/journal.rs`), `backup` and `restore` (in `cli/backup.rs`), `hosts [drain|undrain|remove]`,
//! `tokens create|ls|revoke` (join tokens).

mod backup;
mod common;
mod events;
mod journal;
mod keys;
mod rollout;
mod secret;
mod store;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use warden_core::job::{JobEvent, JobManifest, KernelEvent};
use warden_core::time::format_rfc3339_ms;
use warden_core::units::format_duration_ms;
use warden_core::{CloudEvent, ReplicationMode, Spec};
use warden_runtime::engine::now_ms;
use warden_runtime::paths;
use warden_runtime::view::{JobRunRequest, RunView, SubmitRequest, WorkloadView};

use common::{encode, format_table, printable, short_spec_id, show, Client, Output};

#[derive(Parser)]
#[command(name = "warden", version, about = "A crash-proof workload supervisor")]
struct Cli {
    /// The server to talk to.
    #[arg(long, global = true, env = "WARDEN_ADDR", default_value = paths::DEFAULT_ADDR)]
    addr: String,
    /// The credential to sign requests with (default: ~/.config/warden/admin.key).
    #[arg(long, global = true, env = "WARDEN_CREDENTIAL")]
    credential: Option<PathBuf>,
    /// Trust the server's TLS certificate if it chains to a certificate in this PEM file (for a
    /// server given --tls-cert), instead of pinning its fingerprint (~/.config/warden/known_tls).
    #[arg(long, global = true, env = "WARDEN_CA")]
    ca: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// What `warden up` and `warden server` share.
#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value = paths::DEFAULT_ADDR)]
    listen: std::net::SocketAddr,
    /// Default: $XDG_DATA_HOME/warden (~/.local/share/warden).
    #[arg(long, env = "WARDEN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// This node's name in events and status (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Snapshot the state every this many events, so start-up replays only what follows.
    #[arg(long, default_value_t = warden_runtime::engine::DEFAULT_SNAPSHOT_EVERY_N_EVENTS)]
    snapshot_every: u64,
    /// Another name (DNS name or IP address) for the generated TLS certificate, beside
    /// localhost, 127.0.0.1, ::1, the listen address and the host name; repeatable. Used when
    /// the certificate is made (the first start; delete <data-dir>/tls to make a new one).
    #[arg(long = "tls-san", value_name = "NAME|IP")]
    tls_san: Vec<String>,
    /// Serve this certificate chain (PEM) instead of the generated one; with --tls-key.
    #[arg(long, requires = "tls_key", conflicts_with_all = ["insecure_http", "tls_san"])]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP, no TLS: refused unless --listen is a loopback address.
    #[arg(long, conflicts_with_all = ["tls_san", "tls_key"])]
    insecure_http: bool,
    /// The journal: `sqlite` (<data-dir>/journal.db) or `etcd://IP:PORT[,IP:PORT…][/PREFIX]`
    /// (a binary built with --features etcd; loopback members only until its client speaks TLS).
    #[arg(long, env = "WARDEN_STORE", default_value = "sqlite")]
    store: String,
}

impl ServeArgs {
    fn tls(&self) -> warden_runtime::tls::TlsSetup {
        use warden_runtime::tls::TlsSetup;
        match (&self.tls_cert, &self.tls_key) {
            _ if self.insecure_http => TlsSetup::InsecureHttp,
            (Some(cert), Some(key)) => TlsSetup::Files { cert: cert.clone(), key: key.clone() },
            _ => TlsSetup::Generate { extra_names: self.tls_san.clone() },
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane and a local agent in one process, on the embedded journal.
    Up {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Run the control plane only: cells run on enrolled agents (`warden agent`).
    Server {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// List the cluster's hosts: state, last heartbeat, cells; or drain one.
    Hosts {
        #[command(subcommand)]
        action: Option<HostsAction>,
    },
    /// Run this host's cells for a control plane (`warden server`): enroll once with a join token,
    /// then heartbeat, take commands and report; cells outlive the agent and are re-adopted.
    Agent {
        /// The control plane: HOST:PORT or https://HOST:PORT (TLS, the certificate pinned from
        /// the join token, or --ca), or http://HOST:PORT for a server with --insecure-http.
        #[arg(long, env = "WARDEN_SERVER")]
        server: String,
        /// This host's name, unique in the cluster.
        #[arg(long)]
        name: String,
        /// The placement channel this host serves.
        #[arg(long, env = "WARDEN_CHANNEL")]
        channel: Option<String>,
        /// Placement tags, comma-separated.
        #[arg(long, env = "WARDEN_TAGS", value_delimiter = ',')]
        tags: Vec<String>,
        /// Default: $XDG_DATA_HOME/warden/agent-<name> (~/.local/share/warden/agent-<name>).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A file holding a join token (`warden tokens create --out FILE`, or the server's
        /// <data-dir>/join-token); needed on the first start only. Or set WARDEN_JOIN_TOKEN.
        #[arg(long)]
        join_token_file: Option<PathBuf>,
        /// Refused: a command line is readable by every user of the host (/proc/PID/cmdline).
        #[arg(long, hide = true)]
        join_token: Option<String>,
    },
    /// Join tokens, which let a new host enroll: make one (its secret shown once), list them,
    /// revoke one.
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
    /// Submit a workload spec; prints the workload id as the last line.
    Run {
        spec: PathBuf,
        /// Your own id for the workload (its consumer_workload_id); must be unique among live workloads.
        #[arg(long)]
        id: Option<String>,
    },
    /// List workloads (live ones, or all with --all).
    Ps {
        #[arg(long, short)]
        all: bool,
    },
    /// Show one workload: every WorkloadInfo field plus state, restarts, pid, host.
    Status { id: String },
    /// Print a workload's output (stdout and stderr).
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop a workload: SIGTERM to its process group, SIGKILL after graceful_shutdown.
    Stop { id: String },
    /// Take a checkpoint of a checkpointed workload now; its `state_uri` changes once stored.
    Checkpoint { id: String },
    /// Print journaled events; `events head` prints the signed chain head, `events verify`
    /// proves that no event up to it was removed or altered.
    #[command(args_conflicts_with_subcommands = true)]
    Events {
        #[command(subcommand)]
        action: Option<events::EventsAction>,
        #[arg(long, short)]
        follow: bool,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only events about this workload (or job run: its kernel events).
        #[arg(long)]
        workload: Option<String>,
    },
    /// Durable jobs: multi-step runs that resume where they were after any crash.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Rollouts: a service's new spec, or a host activation, host by host in waves, each host
    /// proven healthy by probes over a soak before the next wave starts.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// Write a signed backup of a data dir (journal, artifacts, checkpoint blobs, secrets) to a
    /// file, while its server runs; check it with `warden events verify --backup FILE`.
    Backup(backup::BackupArgs),
    /// Rebuild a data dir from a backup: refused if it already has a journal or a server runs on
    /// it, or if the backup is broken or another server's.
    Restore(backup::RestoreArgs),
    /// API keys with roles and namespaces: `keys add NAME --role R [--namespace NS …]`, `ls`, `revoke`.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Secrets a spec's env refers to (`{ secret = "name" }`): `secret put NAME < value`, `ls`, `rm NAME`.
    Secret {
        #[command(subcommand)]
        command: secret::SecretCommand,
    },
    /// Content-addressed artifacts: job manifests and context snapshots.
    Artifact {
        #[command(subcommand)]
        command: ArtifactCommand,
    },
    /// The journal on disk, with no server: check its whole chain, or repair damaged history.
    Journal {
        #[command(subcommand)]
        action: journal::JournalAction,
    },
}

#[derive(Subcommand)]
enum HostsAction {
    /// Take a host out of service: no new cells or standbys; each primary on it is stopped,
    /// checkpointed and its lease given up at once, so it takes over elsewhere without waiting
    /// for the lease to expire (`each-host` instances stay).
    Drain { name: String },
    /// Take a drained host back into service.
    Undrain { name: String },
    /// Remove a host for good: its cells restart or fail over elsewhere at once, and its key is
    /// refused from now on (to bring the machine back, start its agent on a new data dir with
    /// a new join token).
    Remove { name: String },
}

#[derive(Subcommand)]
enum TokensAction {
    /// Make a join token; its secret is shown this once (printed, or written 0600 to --out).
    Create {
        /// How long it enrolls hosts, on the server's clock (`30s`, `1h`, `7d`).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many hosts it may enroll (default: any number until it expires).
        #[arg(long)]
        uses: Option<u32>,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List join tokens (never their secrets): state, expiry, uses.
    Ls,
    /// Revoke a join token: it enrolls no host any more (hosts it enrolled stay).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Start a run of a job manifest; prints the run id as the last line.
    Run {
        manifest: PathBuf,
        /// The run's initial context: a file holding a JSON object (default `{}`).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Wait until the run has ended; exit non-zero unless it completed.
        #[arg(long)]
        wait: bool,
    },
    /// Show one run and each of its states.
    Status { run: String },
    /// Print a run's kernel events (`-o json`: one flat event per line).
    History { run: String },
    /// Cancel a run: its running steps are stopped and it ends `cancelled`.
    Cancel { run: String },
    /// List runs, oldest first.
    Ls {
        /// Only runs with this status: running, completed, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
    },
}

#[derive(Subcommand)]
enum ArtifactCommand {
    /// Write an artifact's bytes to stdout, exactly as stored.
    Get { id: String },
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Up { .. } | Command::Server { .. } | Command::Agent { .. }) {
        common::exit_quietly_on_closed_stdout();
    }
    let local_cells = matches!(cli.command, Command::Up { .. });
    match cli.command {
        Command::Up { serve } | Command::Server { serve } => {
            let tls = serve.tls();
            let config = warden_runtime::UpConfig {
                listen: serve.listen,
                data_dir: serve.data_dir.unwrap_or_else(paths::default_data_dir),
                config_dir: paths::default_config_dir(),
                node_name: serve.name.unwrap_or_else(common::hostname),
                shim: warden_cell::ShimExe::locate(),
                snapshot_every_n_events: serve.snapshot_every,
                local_cells,
                cluster: Default::default(),
                tls,
                journal: store::open(store::parse(&serve.store)?)?,
            };
            tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
            runtime.block_on(warden_runtime::up(config))?;
            Ok(())
        }
        Command::Agent { server, name, channel, tags, data_dir, join_token_file, join_token } => {
            if join_token.is_some() {
                bail!(
                    "--join-token is refused: a command line is readable by every user of this host (ps, /proc/PID/cmdline); \
                     put the token in a file (--join-token-file FILE, mode 0600) or in the environment (WARDEN_JOIN_TOKEN)"
                );
            }
            let join_token = read_join_token(join_token_file.as_deref())?;
            let config = warden_runtime::agent::AgentConfig {
                data_dir: data_dir.unwrap_or_else(|| paths::default_data_dir().join(format!("agent-{name}"))),
                server,
                name,
                channel,
                tags,
                join_token,
                ca: cli.ca,
                shim: warden_cell::ShimExe::locate(),
            };
            tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
            runtime.block_on(warden_runtime::agent::run(config))?;
            Ok(())
        }
        // Local to the data dir: no server, no credential.
        Command::Backup(args) => backup::backup(args, cli.output),
        Command::Restore(args) => backup::restore(args, cli.output),
        // An export is verified with no server and no credential.
        Command::Events { action: Some(events::EventsAction::Verify(args)), .. } if events::is_offline(&args) => {
            events::verify_offline(args, cli.output)
        }
        Command::Journal { action } => journal::run(action, cli.output),
        command => {
            let client = Client::new(&cli.addr, cli.credential, cli.ca)?;
            run_client(&client, command, cli.output)
        }
    }
}

/// The agent's join token: from `--join-token-file`, else from `WARDEN_JOIN_TOKEN`, which is
/// then taken out of the environment so that no cell inherits it.
fn read_join_token(file: Option<&Path>) -> Result<Option<String>> {
    let from_env = std::env::var("WARDEN_JOIN_TOKEN").ok();
    // Still one thread here (the runtime starts after), so changing the environment is sound.
    std::env::remove_var("WARDEN_JOIN_TOKEN");
    match file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read --join-token-file {}", path.display()))?;
            Ok(Some(text.trim().to_string()))
        }
        None => Ok(from_env.map(|t| t.trim().to_string())),
    }
}

fn run_client(client: &Client, command: Command, output: Output) -> Result<()> {
    match command {
        Command::Up { .. } | Command::Server { .. } | Command::Journal { .. } => unreachable!("handled by main"),
        Command::Hosts { action: Some(HostsAction::Remove { name }) } => {
            client.call("POST", &format!("/v1/hosts/{name}/remove"), None)?;
            eprintln!("{name} is removed: its cells restart elsewhere and its key is refused from now on");
            Ok(())
        }
        Command::Tokens { action } => tokens(client, action, output),
        Command::Hosts { action: Some(action) } => {
            let (name, drain) = match &action {
                HostsAction::Drain { name } => (name, true),
                HostsAction::Undrain { name } => (name, false),
                HostsAction::Remove { .. } => unreachable!("matched above"),
            };
            let body = serde_json::to_vec(&serde_json::json!({ "drain": drain }))?;
            client.call("POST", &format!("/v1/hosts/{name}/drain"), Some(&body))?;
            if drain {
                eprintln!("{name} is drained: no new cells; its primaries are evicted and take over elsewhere");
            } else {
                eprintln!("{name} takes cells again");
            }
            Ok(())
        }
        Command::Hosts { action: None } => {
            let hosts: Vec<warden_runtime::view::HostView> = client.json("GET", "/v1/hosts", None)?;
            if output == Output::Json {
                println!("{}", serde_json::to_string(&hosts)?);
                return Ok(());
            }
            let now = now_ms();
            let mut rows = vec![["HOST", "STATE", "LAST HEARTBEAT", "CHANNEL", "TAGS", "CELLS"].map(String::from).to_vec()];
            for h in &hosts {
                rows.push(vec![
                    h.name.clone(),
                    h.state.clone(),
                    h.last_heartbeat_ms.map_or("-".into(), |at| format!("{} ago", format_duration_ms(now.saturating_sub(at)))),
                    h.channel.clone().unwrap_or_else(|| "-".into()),
                    if h.tags.is_empty() { "-".into() } else { h.tags.join(",") },
                    h.cells.len().to_string(),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        Command::Agent { .. } | Command::Backup(_) | Command::Restore(_) => unreachable!("handled by main"),
        Command::Run { spec, id } => {
            let file = spec.display().to_string();
            let text = std::fs::read_to_string(&spec).with_context(|| format!("cannot read spec {file}"))?;
            // Validate locally first: the same parser the server runs, so errors show without a round trip.
            let parsed = Spec::parse(&file, &text)?;
            let request = SubmitRequest { file, spec_toml: text, consumer_workload_id: id };
            let view: WorkloadView = client.json("POST", "/v1/workloads", Some(&serde_json::to_vec(&request)?))?;
            if output == Output::Json {
                println!("{}", serde_json::to_string(&view)?);
                return Ok(());
            }
            eprintln!("submitted {} (vmid {}, spec {})", view.name, view.info.vmid, short_spec_id(&view.info.spec_id));
            if parsed.replication.mode != ReplicationMode::None && parsed.placement.is_none() {
                eprintln!(
                    "note: replication mode {:?} applies to cells on agents; without [placement], `warden up` runs it on its own node as mode \"none\"",
                    parsed.replication.mode.as_str()
                );
            }
            if view.instances.is_empty() {
                println!("{}", view.info.id);
            } else {
                eprintln!("{} instances", view.instances.len());
                for id in &view.instances {
                    println!("{id}");
                }
            }
            Ok(())
        }
        Command::Ps { all } => {
            let views: Vec<WorkloadView> =
                client.json("GET", if all { "/v1/workloads?all=true" } else { "/v1/workloads" }, None)?;
            if output == Output::Json {
                println!("{}", serde_json::to_string(&views)?);
                return Ok(());
            }
            let mut rows = vec![["ID", "NAME", "VMID", "STATE", "HOST", "EPOCH", "RESTARTS", "PID", "POLICY", "SINCE"]
                .map(String::from)
                .to_vec()];
            let now = now_ms();
            for v in &views {
                rows.push(vec![
                    v.info.id.clone(),
                    v.name.clone(),
                    v.info.vmid.to_string(),
                    v.state.clone(),
                    v.host.clone(),
                    v.epoch.map_or("-".into(), |e| e.to_string()),
                    v.restarts.to_string(),
                    v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    v.info.restart_policy.name().to_string(),
                    format_duration_ms(now.saturating_sub(v.updated_at_ms) / 1000 * 1000),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        Command::Status { id } => {
            let view: WorkloadView = client.json("GET", &format!("/v1/workloads/{}", encode(&id)), None)?;
            show(output, &view, |view| {
                print_status(view);
            })
        }
        Command::Stop { id } => {
            let view: WorkloadView = client.json("POST", &format!("/v1/workloads/{}/stop", encode(&id)), None)?;
            show(output, &view, |view| {
                println!("{} {}", view.info.id, view.state);
            })
        }
        Command::Checkpoint { id } => {
            let view: WorkloadView = client.json("POST", &format!("/v1/workloads/{}/checkpoint", encode(&id)), None)?;
            show(output, &view, |view| {
                println!(
                    "{} checkpoint requested (latest: {})",
                    view.info.id,
                    view.info.state_uri.as_deref().unwrap_or("none yet")
                );
            })
        }
        Command::Logs { id, follow } => {
            let path = format!("/v1/workloads/{}/logs{}", encode(&id), if follow { "?follow=true" } else { "" });
            let mut reader = client.stream(&path)?;
            let mut stdout = std::io::stdout().lock();
            let mut buffer = [0u8; 8192];
            loop {
                let n = reader.read(&mut buffer)?;
                if n == 0 {
                    return Ok(());
                }
                stdout.write_all(&buffer[..n])?;
                stdout.flush()?;
            }
        }
        Command::Events { action: Some(events::EventsAction::Head), .. } => events::print_head(client, output),
        Command::Events { action: Some(events::EventsAction::Verify(args)), .. } => events::verify_online(client, args, output),
        Command::Events { action: None, follow, after, workload } => {
            let mut query = format!("/v1/events?after={after}");
            if follow {
                query.push_str("&follow=true");
            }
            if let Some(workload) = workload {
                query.push_str(&format!("&workload={}", encode(&workload)));
            }
            let reader = BufReader::new(client.stream(&query)?);
            let mut stdout = std::io::stdout().lock();
            for line in reader.lines() {
                let line = line?;
                if output == Output::Json {
                    writeln!(stdout, "{line}")?;
                } else {
                    let event: CloudEvent = serde_json::from_str(&line)?;
                    writeln!(stdout, "{}", event_line(&event))?;
                }
                stdout.flush()?;
            }
            Ok(())
        }
        Command::Job { command } => run_job(client, command, output),
        Command::Rollout { command } => rollout::run_rollout(client, command, output),
        Command::Keys { command } => keys::run_keys(client, command, output),
        Command::Secret { command } => secret::run_secret(client, command, output),
        Command::Artifact { command: ArtifactCommand::Get { id } } => {
            let mut reader = client.stream(&format!("/v1/artifacts/{}", encode(&id)))?;
            let mut stdout = std::io::stdout().lock();
            std::io::copy(&mut reader, &mut stdout).context("writing the artifact")?;
            stdout.flush()?;
            Ok(())
        }
    }
}

fn run_job(client: &Client, command: JobCommand, output: Output) -> Result<()> {
    match command {
        JobCommand::Run { manifest, input, wait } => {
            let file = manifest.display().to_string();
            let text = std::fs::read_to_string(&manifest).with_context(|| format!("cannot read manifest {file}"))?;
            // Validate locally first: the same parser the server runs, so errors show without a round trip.
            JobManifest::parse(&file, &text)?;
            let request = JobRunRequest {
                file,
                manifest_toml: text,
                workdir: Some(manifest_dir(&manifest)?),
                input: input.as_deref().map(read_input).transpose()?,
            };
            let view: RunView = client.json("POST", "/v1/jobs", Some(&serde_json::to_vec(&request)?))?;
            if !wait {
                if output == Output::Json {
                    println!("{}", serde_json::to_string(&view)?);
                } else {
                    eprintln!(
                        "started {} ({}, manifest {})",
                        view.name,
                        states_text(view.states.len()),
                        short_id(&view.manifest_id)
                    );
                    println!("{}", view.run_id);
                }
                return Ok(());
            }
            if output != Output::Json {
                eprintln!(
                    "started {} ({}, manifest {}); waiting",
                    view.name,
                    states_text(view.states.len()),
                    short_id(&view.manifest_id)
                );
                // The only line on stdout, so it stays the last one.
                println!("{}", view.run_id);
                std::io::stdout().flush()?;
            }
            let path = format!("/v1/jobs/{}", encode(&view.run_id));
            let mut view = view;
            while view.status == "running" {
                std::thread::sleep(std::time::Duration::from_millis(200));
                view = client.json("GET", &path, None)?;
            }
            if output == Output::Json {
                println!("{}", serde_json::to_string(&view)?);
            }
            let took = view.finished_at_ms.map(|f| format!(" in {}", format_duration_ms(f.saturating_sub(view.started_at_ms))));
            let snapshot = view.final_snapshot_id.as_deref().map(|s| format!("; final snapshot {s}")).unwrap_or_default();
            eprintln!("run {} {}{}{snapshot}", view.run_id, view.status, took.unwrap_or_default());
            if view.status != "completed" {
                let failed: Vec<&str> =
                    view.states.iter().filter(|s| s.status == "failed").map(|s| s.state_id.as_str()).collect();
                if failed.is_empty() {
                    bail!("run {} {}", view.run_id, view.status);
                }
                bail!("run {} {} (failed: {})", view.run_id, view.status, failed.join(", "));
            }
            Ok(())
        }
        JobCommand::Status { run } => {
            let view: RunView = client.json("GET", &format!("/v1/jobs/{}", encode(&run)), None)?;
            show(output, &view, |view| {
                print_run(view);
            })
        }
        JobCommand::History { run } => {
            let reader = BufReader::new(client.stream(&format!("/v1/jobs/{}/history", encode(&run)))?);
            let mut stdout = std::io::stdout().lock();
            for line in reader.lines() {
                let line = line.context("reading the history")?;
                if output == Output::Json {
                    writeln!(stdout, "{line}")?;
                } else {
                    writeln!(stdout, "{}", printable(&history_line(&line)))?;
                }
            }
            stdout.flush()?;
            Ok(())
        }
        JobCommand::Cancel { run } => {
            let view: RunView = client.json("POST", &format!("/v1/jobs/{}/cancel", encode(&run)), None)?;
            show(output, &view, |view| {
                println!("{} {}", view.run_id, view.status);
            })
        }
        JobCommand::Ls { status } => {
            let path = match &status {
                Some(status) => format!("/v1/jobs?status={}", encode(status)),
                None => "/v1/jobs".to_string(),
            };
            let views: Vec<RunView> = client.json("GET", &path, None)?;
            if output == Output::Json {
                println!("{}", serde_json::to_string(&views)?);
                return Ok(());
            }
            let mut rows = vec![["RUN", "NAME", "STATUS", "STATES", "STARTED"].map(String::from).to_vec()];
            let now = now_ms();
            for v in &views {
                let done = v.states.iter().filter(|s| s.status == "completed").count();
                rows.push(vec![
                    v.run_id.clone(),
                    v.name.clone(),
                    v.status.clone(),
                    format!("{done}/{}", v.states.len()),
                    format!("{} ago", format_duration_ms(now.saturating_sub(v.started_at_ms) / 1000 * 1000)),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
    }
}

fn states_text(n: usize) -> String {
    if n == 1 {
        "1 state".into()
    } else {
        format!("{n} states")
    }
}

/// The manifest's directory, absolute: the workdir of states that set none.
fn manifest_dir(manifest: &Path) -> Result<String> {
    let parent = manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = parent.canonicalize().with_context(|| format!("cannot resolve the directory of {}", manifest.display()))?;
    dir.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the directory of {} is not UTF-8: {}", manifest.display(), dir.display()))
}

/// The `--input` file: a JSON object.
fn read_input(path: &Path) -> Result<serde_json::Value> {
    let file = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read input {file}"))?;
    let input: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("input {file} is not JSON"))?;
    if !input.is_object() {
        bail!("input {file}: the input context must be a JSON object");
    }
    Ok(input)
}

/// `sha256:` and the first 12 hex digits of an artifact id.
fn short_id(id: &str) -> &str {
    short_spec_id(id)
}

/// `warden tokens create|ls|revoke`.
fn tokens(client: &Client, action: TokensAction, output: Output) -> Result<()> {
    use warden_runtime::view::{TokenCreated, TokenRequest, TokenView};
    match action {
        TokensAction::Create { ttl, uses, out } => {
            let ttl_ms = warden_core::units::parse_duration_ms(&ttl).map_err(|e| anyhow!("--ttl {ttl:?}: {e}"))?;
            let request = TokenRequest { ttl_ms: Some(ttl_ms), max_uses: uses };
            let created: TokenCreated = client.json("POST", "/v1/tokens", Some(&serde_json::to_vec(&request)?))?;
            let expires = format_rfc3339_ms(created.view.expires_at_ms);
            let uses = created.view.max_uses.map_or("any number of".to_string(), |n| n.to_string());
            match out {
                Some(path) => {
                    warden_runtime::write_secret_file(&path, &created.token)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "join token {} written to {} (0600): {uses} host(s) until {expires}; on the new host: \
                         `warden agent --server … --name HOST --join-token-file FILE`",
                        created.view.token_id,
                        path.display()
                    );
                }
                None => {
                    eprintln!(
                        "join token {}: {uses} host(s) until {expires}; shown this once: give it to the agent \
                         in a file (--join-token-file) or in WARDEN_JOIN_TOKEN, never on its command line",
                        created.view.token_id
                    );
                    println!("{}", created.token);
                }
            }
            Ok(())
        }
        TokensAction::Ls => {
            let tokens: Vec<TokenView> = client.json("GET", "/v1/tokens", None)?;
            if output == Output::Json {
                println!("{}", serde_json::to_string(&tokens)?);
                return Ok(());
            }
            let mut rows = vec![["ID", "STATE", "EXPIRES", "USED", "CREATED BY"].map(String::from).to_vec()];
            for t in &tokens {
                rows.push(vec![
                    t.token_id.clone(),
                    t.state.clone(),
                    format_rfc3339_ms(t.expires_at_ms),
                    match t.max_uses {
                        Some(max) => format!("{}/{max}", t.n_used),
                        None => t.n_used.to_string(),
                    },
                    t.created_by.clone(),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        TokensAction::Revoke { id } => {
            let view: TokenView = client.json("POST", &format!("/v1/tokens/{id}/revoke"), None)?;
            eprintln!("join token {} is revoked: it enrolls no host any more", view.token_id);
            Ok(())
        }
    }
}

fn print_table(rows: &[Vec<String>]) {
    print!("{}", format_table(rows));
}

fn print_status(v: &WorkloadView) {
    let optional = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    let lines = [
        ("id", v.info.id.clone()),
        ("name", v.name.clone()),
        ("state", v.state.clone()),
        ("reason", optional(v.reason.clone())),
        ("host", v.host.clone()),
        ("epoch", optional(v.epoch.map(|e| e.to_string()))),
        ("pid", optional(v.pid.map(|p| p.to_string()))),
        ("cell", optional(v.cell_id.clone())),
        ("restarts", v.restarts.to_string()),
        ("failovers", v.failovers.to_string()),
        ("consecutive failures", v.consecutive_failures.to_string()),
        ("restart policy", policy_text(v.info.restart_policy)),
        ("vmid", v.info.vmid.to_string()),
        ("workload type", v.info.workload_type.clone()),
        ("spec id", v.info.spec_id.clone()),
        ("argv", format!("{:?}", v.argv)),
        ("created at", format_rfc3339_ms(v.info.created_at * 1000)),
        ("expires at", optional(v.info.expires_at.map(|s| format_rfc3339_ms(s * 1000)))),
        ("owner", v.info.owner.clone()),
        ("replication", v.info.replication.as_str().to_string()),
        ("state uri", optional(v.info.state_uri.clone())),
        ("consumer workload id", optional(v.info.consumer_workload_id.clone())),
        ("next start at", optional(v.next_start_at_ms.map(format_rfc3339_ms))),
        ("last exit", optional(v.last_exit.as_ref().map(|e| format!("{} ({})", e.exit.reason, e.cell_id)))),
    ];
    for (key, value) in lines {
        println!("{:<22}{}", format!("{key}:"), printable(&value));
    }
    for slot in &v.standbys {
        let armed = format!("standby {}:", slot.standby_index);
        let line = format!("{} (armed {}, primary {})", slot.host, format_rfc3339_ms(slot.created_at), slot.primary);
        println!("{armed:<22}{}", printable(&line));
    }
}

fn event_line(event: &CloudEvent) -> String {
    let short_type = event.event_type.strip_prefix("dev.warden.").unwrap_or(&event.event_type);
    let short_type = short_type.strip_suffix(".v1").unwrap_or(short_type);
    let mut details: Vec<String> = Vec::new();
    if let Some(object) = event.data.as_object() {
        for (key, value) in object {
            if matches!(key.as_str(), "workload_id" | "workload" | "spec") {
                continue;
            }
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            details.push(format!("{key}={text}"));
        }
    }
    let line = format!(
        "{:>6}  {}  {:<22}  {:<16}  {}",
        event.seq,
        event.time,
        short_type,
        event.subject.as_deref().unwrap_or("-"),
        details.join(" ")
    );
    printable(&line).into_owned()
}

fn policy_text(policy: warden_core::RestartPolicy) -> String {
    match policy {
        warden_core::RestartPolicy::OnFailure { max_attempts } => format!("on-failure (max_attempts {max_attempts})"),
        other => other.name().to_string(),
    }
}

fn print_run(v: &RunView) {
    let optional = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    let lines = [
        ("run", v.run_id.clone()),
        ("name", v.name.clone()),
        ("status", v.status.clone()),
        ("owner", v.owner.clone()),
        ("op id", v.op_id.clone()),
        ("manifest", v.manifest_id.clone()),
        ("started at", format_rfc3339_ms(v.started_at_ms)),
        ("finished at", optional(v.finished_at_ms.map(format_rfc3339_ms))),
        ("initial snapshot", v.initial_snapshot_id.clone()),
        ("final snapshot", optional(v.final_snapshot_id.clone())),
        ("events", v.n_events.to_string()),
    ];
    for (key, value) in lines {
        println!("{:<18}{}", format!("{key}:"), printable(&value));
    }
    if v.states.is_empty() {
        return;
    }
    println!();
    let mut rows = vec![["STATE", "STATUS", "ATTEMPTS", "WORKLOAD", "CONTEXT"].map(String::from).to_vec()];
    for s in &v.states {
        let status = match s.retry_at_ms {
            Some(at) => format!("{} (at {})", s.status, format_rfc3339_ms(at)),
            None => s.status.clone(),
        };
        rows.push(vec![
            s.state_id.clone(),
            status,
            s.attempts.to_string(),
            s.workload_id.clone().unwrap_or_else(|| "-".into()),
            s.context_snapshot_id.as_deref().map(short_id).unwrap_or("-").to_string(),
        ]);
    }
    print_table(&rows);
}

/// One line of `job history`, as the server sends it: a flat kernel event plus `seq` and `time`.
#[derive(serde::Deserialize)]
struct HistoryLine {
    seq: u64,
    time: String,
    #[serde(flatten)]
    event: JobEvent,
}

/// A history line for people; a line this CLI cannot read is shown as it came.
fn history_line(line: &str) -> String {
    let Ok(HistoryLine { seq, time, event }) = serde_json::from_str::<HistoryLine>(line) else { return line.to_string() };
    let short = |id: &Option<String>| id.as_deref().map(short_id).unwrap_or("-").to_string();
    let (kind, details) = match &event.event {
        KernelEvent::RunStarted { op_id, manifest_id, initial_snapshot_id } => {
            ("RunStarted", format!("op={op_id} manifest={} initial={}", short_id(manifest_id), short_id(initial_snapshot_id)))
        }
        KernelEvent::StateEntered { state_id, attempt, base_snapshot_id } => {
            ("StateEntered", format!("{state_id}/{attempt} base={}", short_id(base_snapshot_id)))
        }
        KernelEvent::StateCompleted { state_id, context_snapshot_id } => {
            ("StateCompleted", format!("{state_id} context={}", short_id(context_snapshot_id)))
        }
        KernelEvent::StateFailed { state_id, error, failure_snapshot_id } => (
            "StateFailed",
            format!(
                "{state_id} {}: {}{} failure={}",
                error.code,
                error.message,
                if error.retryable { " (retryable)" } else { "" },
                short(failure_snapshot_id)
            ),
        ),
        KernelEvent::RunCompleted { status, final_snapshot_id } => {
            ("RunCompleted", format!("{} final={}", status.as_str(), short(final_snapshot_id)))
        }
        KernelEvent::RetryScheduled { state_id, attempt, not_before_ms } => {
            ("RetryScheduled", format!("{state_id}/{attempt} not before {}", format_rfc3339_ms(*not_before_ms)))
        }
    };
    format!("{seq:>6}  {time}  {kind:<14}  {details}")
}
