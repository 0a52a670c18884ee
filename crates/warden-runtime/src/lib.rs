//! warden's runtime: the engine task, the HTTP API and `warden up`, which wires them to the
//! embedded journal and the process cell backend. This is the only layer with tokio.

pub mod agent;
pub mod api;
pub mod auth;
pub mod cell_user;
pub mod cells;
pub mod checkpoint;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod engine;
pub mod error;
pub mod logs;
pub mod modes;
pub mod paths;
pub mod proto;
pub mod secrets;
pub mod serve;
mod sys;
pub mod tls;
pub mod view;

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use warden_cell::{ProcessBackend, ShimExe};
use warden_store::{OpenReport, SqliteStore, Store};

use crate::auth::{authorize_key, load_authorized_keys, Identity};
use crate::engine::{Engine, EngineConfig};

/// Which journal the control plane keeps.
pub enum Journal {
    /// `<data-dir>/journal.db`, SQLite (the default).
    Sqlite,
    /// A store the caller opened (`warden up --store etcd://…` opens an `EtcdStore`), with what
    /// its open found and its name for the banner.
    Opened { store: Arc<dyn Store>, report: OpenReport, name: String },
}

pub struct UpConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Where the local admin credential lives (`~/.config/warden`).
    pub config_dir: PathBuf,
    pub node_name: String,
    pub shim: ShimExe,
    /// Snapshot the projection every this many events (`engine::DEFAULT_SNAPSHOT_EVERY_N_EVENTS`).
    pub snapshot_every_n_events: u64,
    /// `true` for `warden up` (this node runs cells itself), `false` for `warden server` (cells
    /// run only on enrolled agents).
    pub local_cells: bool,
    pub cluster: cluster::ClusterConfig,
    /// TLS with a generated certificate, the operator's, or plain HTTP on loopback.
    pub tls: tls::TlsSetup,
    pub journal: Journal,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("cannot use data dir {path}")]
    DataDir { path: String, source: std::io::Error },
    #[error("another warden is already running on data dir {0} (its lock file is held)")]
    AlreadyRunning(String),
    #[error(transparent)]
    Identity(#[from] auth::IdentityError),
    /// Opening the journal failed; for damaged history, the source names the seq, what failed
    /// and the operator's ways out (`warden journal repair`, `warden restore`).
    #[error("cannot open the journal")]
    Store(#[from] warden_store::StoreError),
    #[error("cannot rebuild state")]
    Load(#[from] engine::LoadError),
    #[error("cannot listen on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot make the first join token: {0}")]
    JoinToken(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot pin the certificate for the local CLI in {path}")]
    KnownTls { path: String, source: std::io::Error },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot make the default cell user")]
    CellUser(#[from] cell_user::CreateUserError),
}

/// Runs the control plane and a local agent in one process until SIGINT or SIGTERM.
///
/// Cells outlive this function: they run under their shims, and the next `up` on the same data
/// dir re-adopts them.
pub async fn up(config: UpConfig) -> Result<(), UpError> {
    let data_dir = &config.data_dir;
    let dir_err = |source| UpError::DataDir { path: data_dir.display().to_string(), source };
    let nofile = serve::raise_fd_limit();
    std::fs::create_dir_all(data_dir.join("cells")).map_err(dir_err)?;
    std::fs::create_dir_all(data_dir.join("logs")).map_err(dir_err)?;
    modes::tighten(data_dir).map_err(dir_err)?;
    let _lock = lock_data_dir(data_dir)?;
    // Before anything else: `--insecure-http` on a public address is refused here.
    let server_tls = tls::server_tls(data_dir, config.listen, &config.node_name, &config.tls)?;
    // Cells run as the `warden` system user by default (see `cell_user`).
    if config.local_cells {
        cell_user::ensure_default_user()?;
    }

    let credential_path = config.config_dir.join(paths::ADMIN_CREDENTIAL_FILE);
    let admin = if credential_path.exists() {
        Identity::load(&credential_path)?
    } else {
        let admin = Identity::generate("admin");
        admin.save(&credential_path)?;
        admin
    };
    let server_key_path = data_dir.join(paths::SERVER_KEY_FILE);
    let server_key = Arc::new(load_or_create_server_key(data_dir)?);
    let authorized_path = data_dir.join("authorized_keys");
    authorize_key(&authorized_path, &admin).map_err(dir_err)?;
    let mut signing_keys = load_authorized_keys(&authorized_path).map_err(dir_err)?;
    let file_admins = Arc::new(auth::load_authorized_names(&authorized_path).map_err(dir_err)?);

    let (store, report, journal_name): (Arc<dyn Store>, OpenReport, String) = match config.journal {
        Journal::Sqlite => {
            let path = data_dir.join(paths::JOURNAL_FILE);
            let (store, report) = SqliteStore::open(&path)?;
            (Arc::new(store), report, path.display().to_string())
        }
        Journal::Opened { store, report, name } => (store, report, name),
    };
    let shim_note = match &config.shim {
        ShimExe::Standalone(path) => format!("{} (standalone)", path.display()),
        ShimExe::Subcommand(path) => format!(
            "`{} shim` (no warden-shim next to warden; `cargo build --release --workspace` builds the ~130 KB one)",
            path.display()
        ),
    };
    let backend = Arc::new(ProcessBackend::new(data_dir.join("cells"), config.shim));
    let logs_dir = data_dir.join("logs");
    let secrets = Arc::new(secrets::SecretKey::new(data_dir.join(paths::SECRETS_KEY_FILE)));
    let engine_config = EngineConfig {
        host: config.node_name.clone(),
        logs_dir: logs_dir.clone(),
        jobs_dir: data_dir.join("jobs"),
        keys_dir: data_dir.join("keys"),
        secrets: secrets.clone(),
        snapshot_every_n_events: config.snapshot_every_n_events,
        cluster: config.cluster,
        local_host: config.local_cells.then(|| config.node_name.clone()),
    };
    let (mut engine, handle) = Engine::load(store.clone(), backend, engine_config)?;
    let loaded_snapshot_seq = engine.loaded_snapshot_seq();
    let recovery = engine.recover_cells();

    let listener = serve::bind(config.listen).map_err(|source| UpError::Listen { addr: config.listen, source })?;
    let listen = listener.local_addr().map_err(|source| UpError::Listen { addr: config.listen, source })?;
    let n_workloads =
        handle.shared.read().expect("projection lock").workloads.values().filter(|w| !w.phase.is_terminal()).count();
    let scheme = if server_tls.is_some() { "https" } else { "http" };
    eprintln!("warden up: listening on {scheme}://{listen} as node {:?}", config.node_name);
    eprintln!("  data dir     {}", data_dir.display());
    match &server_tls {
        Some(server_tls) => {
            // The local CLI trusts this certificate from now on, by its fingerprint.
            let known_tls = config.config_dir.join(paths::KNOWN_TLS_FILE);
            let port = listen.port();
            let mut local = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")];
            if !listen.ip().is_unspecified() && !local.contains(&listen.to_string()) {
                local.push(listen.to_string());
            }
            tls::remember_pins(&known_tls, &local, &server_tls.fingerprint)
                .map_err(|source| UpError::KnownTls { path: known_tls.display().to_string(), source })?;
            eprintln!(
                "  tls          {} ({}; {}); join tokens carry it, the local CLI pins it in {}",
                server_tls.fingerprint,
                server_tls.cert_path.display(),
                match (&config.tls, server_tls.generated) {
                    (tls::TlsSetup::Files { .. }, _) => "given with --tls-cert",
                    (_, true) => "made now",
                    (_, false) => "reused",
                },
                known_tls.display()
            );
        }
        None => eprintln!("  tls          OFF (--insecure-http): requests and answers cross the network in the clear"),
    }
    eprintln!(
        "  journal      {journal_name}: {} events; state loaded from the snapshot at seq {loaded_snapshot_seq} plus the events after it; chain verified from seq {}",
        handle.shared.read().expect("lock").last_seq,
        report.verified_from_seq
    );
    eprintln!("  credential   {} ({})", credential_path.display(), admin.principal());
    eprintln!(
        "  server key   {} ({}; signs the chain head, pin it from {})",
        server_key_path.display(),
        server_key.principal(),
        data_dir.join(paths::SERVER_PUB_FILE).display()
    );
    eprintln!("  cell shim    {shim_note}");
    eprintln!("  cgroups      {} (cell limits and teardown)", warden_cell::cgroup_layout());
    let (n_hosts, first_start) = {
        let shared = handle.shared.read().expect("lock");
        (shared.hosts.len(), shared.join_tokens.is_empty())
    };
    eprintln!(
        "  workloads    {n_workloads} live; cells re-adopted {}, ended while down {}, lost {}, starts resumed {}",
        recovery.adopted, recovery.exited_while_down, recovery.lost, recovery.started_again
    );
    if recovery.unknown_running > 0 {
        eprintln!(
            "  WARNING      {} running cell(s) under {} unknown to the journal, left running unsupervised (named above)",
            recovery.unknown_running,
            data_dir.join("cells").display()
        );
    }

    let gate = Arc::new(serve::Gate::new(serve::Limits::for_fd_limit(nofile)));
    let limits = gate.limits();
    eprintln!(
        "  connections  at most {} ({} reserved for agents and clients that signed in lately), {} per unknown address; fd limit {nofile}",
        limits.total, limits.reserved, limits.per_peer
    );
    // Journaled keys (`warden keys add`) sign too, from the first request on.
    let journaled = handle.shared.read().expect("projection lock").keys.values().map(|k| k.principal.clone()).collect::<Vec<_>>();
    signing_keys.extend(journaled.iter().filter_map(|principal| auth::parse_principal(principal)));
    let authorized_keys = Arc::new(RwLock::new(signing_keys));
    let state = api::ApiState {
        commands: handle.commands.clone(),
        shared: handle.shared.clone(),
        events: handle.events.clone(),
        store,
        authorized_keys,
        file_admins,
        // Refuses what was signed before now: the guard's memory starts here (auth::ReplayGuard).
        replays: Arc::new(std::sync::Mutex::new(auth::ReplayGuard::started_at(clock::now_ms()))),
        gate: gate.clone(),
        host: config.node_name.clone(),
        logs_dir,
        manifests: handle.manifests.clone(),
        queues: handle.queues.clone(),
        server_key,
        secrets,
        tls_pin: server_tls.as_ref().map(|t| t.fingerprint.clone()),
    };
    // Leases and hosts get their restart grace from the moment agents can reach us: while we
    // loaded, their connections were refused, which renewed their cells' fences (lease.rs, A5).
    engine.serving();
    let engine_task = tokio::spawn(engine.run());
    let join_token_path = data_dir.join(JOIN_TOKEN_FILE);
    if first_start {
        // Zero setup: the first start makes one join token (ttl 1 h) for the first agents.
        let created = api::create_join_token(&handle.commands, Default::default(), "warden-up".into(), state.tls_pin.as_ref())
            .await
            .map_err(|e| UpError::JoinToken(e.to_string()))?;
        write_secret_file(&join_token_path, &created.token).map_err(dir_err)?;
    }
    eprintln!(
        "  agents       {n_hosts} enrolled; to join one, give it a join token in a file or WARDEN_JOIN_TOKEN (never argv):"
    );
    if first_start {
        eprintln!(
            "               `warden agent --server {scheme}://{listen} --name HOST --join-token-file {}`",
            join_token_path.display()
        );
        eprintln!("               (that token, made now, expires in 1 h; copy the file over a secure channel)");
    }
    eprintln!(
        "               `warden tokens create [--ttl 1h] [--uses N] --out FILE`, then `warden agent … --join-token-file FILE`"
    );
    // On SIGINT or SIGTERM the engine stops deciding *before* the listener closes (A5 again: a
    // refused connection must mean that no control plane decides any more); requests still in
    // flight then fail for want of an engine, and agents retry against the next one.
    let stop = async move {
        shutdown_signal().await;
        engine_task.abort();
        let _ = engine_task.await;
    };
    serve::serve(listener, api::router(state), gate, server_tls.map(|t| t.config), stop).await.map_err(UpError::Serve)?;
    eprintln!("warden: stopped; cells keep running under their shims and the next `warden up` re-adopts them");
    Ok(())
}

/// The server's Ed25519 key (`<data-dir>/server.key`, mode 0600), created on first start; it
/// signs the journal's chain head (`GET /v1/events/head`). Its principal is (re)written to
/// `<data-dir>/server.pub` (mode 0644) on every start, so an operator can pin it for
/// `warden events verify --key-file`.
fn load_or_create_server_key(data_dir: &std::path::Path) -> Result<Identity, UpError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(paths::SERVER_KEY_FILE);
    let key = if path.exists() {
        Identity::load(&path)?
    } else {
        let key = Identity::generate("server");
        key.save_in_place(&path)?;
        key
    };
    let pub_path = data_dir.join(paths::SERVER_PUB_FILE);
    let write_err = |source| UpError::DataDir { path: pub_path.display().to_string(), source };
    let tmp = pub_path.with_extension("pub.tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp).map_err(write_err)?;
    writeln!(file, "{}", key.principal()).map_err(write_err)?;
    // World-readable whatever the umask: it is public, and meant to be copied.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp, &pub_path).map_err(write_err)?;
    Ok(key)
}

/// Where the first start's join token is written (mode 0600): the journal keeps only its hash.
pub const JOIN_TOKEN_FILE: &str = "join-token";

/// Writes `secret` and a newline to `path`, mode 0600 whatever the umask (replacing any older
/// file, which may have been more open), durably.
pub fn write_secret_file(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{secret}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Holds an exclusive lock on `<data-dir>/warden.lock` for the life of the process: two
/// supervisors on one data dir would both start every cell. `warden journal repair` and
/// `warden restore` take it too, so neither works under a running server.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<File, UpError> {
    let path = data_dir.join("warden.lock");
    let file = File::create(&path).map_err(|source| UpError::DataDir { path: path.display().to_string(), source })?;
    if sys::try_lock_exclusive(&file).is_err() {
        return Err(UpError::AlreadyRunning(data_dir.display().to_string()));
    }
    Ok(file)
}
