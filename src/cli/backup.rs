//! `warden backup FILE` and `warden restore FILE`: a signed export of a data dir's journal, its
//! artifacts and its secrets, taken locally while the server runs, and a data dir rebuilt from
//! one; `warden events verify --backup FILE` checks one offline.
//!
//! The format and its checks are `warden_store::backup`; this module knows the data dir: which
//! files are carried (the server key, the join token, `authorized_keys`, the TLS certificate and
//! its key, so that agents' and CLIs' pins still hold after a restore, the checkpoint keys, the
//! secrets key),
//! the lock a running server holds, and where things go back. Local on purpose, not over the
//! API: the file holds secrets.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use warden_core::{EventData, NewEvent};
use warden_runtime::auth::Identity;
use warden_runtime::engine::now_ms;
use warden_runtime::{paths, UpError};
use warden_store::backup::{self, BackupError, BackupFile, BackupSummary};

use super::common::{hostname, Output};

/// The data dir's files a backup carries, besides the journal. `keys/` (every file in it) is
/// added to these: checkpointed workloads' encryption keys, without which their blobs are noise.
/// `secrets.key` likewise: without it the journal's sealed secrets open nowhere.
const DATA_DIR_FILES: [&str; 7] = [
    paths::SERVER_KEY_FILE,
    paths::SERVER_PUB_FILE,
    "join-token",
    "authorized_keys",
    "tls/cert.pem",
    "tls/key.pem",
    paths::SECRETS_KEY_FILE,
];
const KEYS_DIR: &str = "keys";
const JOURNAL_FILE: &str = "journal.db";

#[derive(clap::Args)]
pub(super) struct BackupArgs {
    /// Where to write the backup (created 0600: it holds the server key and checkpoint keys).
    file: PathBuf,
    /// The data dir to back up (default: $XDG_DATA_HOME/warden). Its server may be running.
    #[arg(long, env = "WARDEN_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(super) struct RestoreArgs {
    /// A file written by `warden backup`.
    file: PathBuf,
    /// The data dir to rebuild (default: $XDG_DATA_HOME/warden): it must have no journal, and no
    /// server may be running on it.
    #[arg(long, env = "WARDEN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The server key to trust: `ed25519:<hex>` (default: the data dir's server.pub, if any).
    #[arg(long, value_name = "ed25519:HEX", conflicts_with = "key_file")]
    key: Option<String>,
    /// A file holding the server key to trust: a copy of the server's server.pub.
    #[arg(long, value_name = "server.pub")]
    key_file: Option<PathBuf>,
}

/// `warden backup FILE`: reads the data dir (the journal in one read transaction, so a running
/// server keeps appending and the backup is still one consistent cut) and writes FILE atomically.
pub(super) fn backup(args: BackupArgs, output: Output) -> Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(paths::default_data_dir);
    let journal = data_dir.join(JOURNAL_FILE);
    if !journal.is_file() {
        bail!(
            "{} has no journal ({} is missing): is this the data dir of a `warden up` or `warden server`?",
            data_dir.display(),
            journal.display()
        );
    }
    let key_path = data_dir.join(paths::SERVER_KEY_FILE);
    let server_key = Identity::load(&key_path).with_context(|| format!("cannot read the server key {}", key_path.display()))?;

    let target = &args.file;
    let name = target.file_name().ok_or_else(|| anyhow!("{} is not a file name", target.display()))?.to_string_lossy();
    let tmp = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = (|| -> Result<BackupSummary> {
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        let summary =
            backup::export(&journal, server_key.signing_key(), &hostname(), now_ms(), &mut out, || read_files(&data_dir))
                .map_err(|e| anyhow!("backup failed: {}", error_text(&e)))?;
        out.flush().with_context(|| format!("cannot write {}", tmp.display()))?;
        drop(out);
        file.sync_all().with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, target).with_context(|| format!("cannot move {} to {}", tmp.display(), target.display()))?;
        sync_dir(target);
        Ok(summary)
    })();
    let summary = match written {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if output == Output::Json {
        println!("{}", summary_json(&summary, target));
        return Ok(());
    }
    println!("wrote {}: {summary}", target.display());
    eprintln!(
        "note: {} holds the server key, the join token, every checkpoint key and the secrets key: keep it as you keep {}",
        target.display(),
        key_path.display()
    );
    eprintln!(
        "verify it anywhere: warden events verify --backup {} --key-file {}",
        target.display(),
        data_dir.join(paths::SERVER_PUB_FILE).display()
    );
    Ok(())
}

/// `warden events verify --backup FILE`: no server, no credential.
pub(super) fn verify_backup(file: &Path, pinned_key: Option<String>, output: Output) -> Result<()> {
    let reader = open_backup(file)?;
    let summary =
        backup::verify(reader, pinned_key.as_deref()).map_err(|e| anyhow!("verification failed: {}", error_text(&e)))?;
    if output == Output::Json {
        println!("{}", summary_json(&summary, file));
        return Ok(());
    }
    println!(
        "ok: {summary}; every event chains to the signed head, every artifact matches its id, trailer sha256:{} signed",
        summary.sha256
    );
    Ok(())
}

/// `warden restore FILE`: verifies the whole backup while writing a new journal beside the old
/// place, puts the files back, then moves the journal into place — the last step, so a restore
/// cut short leaves no journal and can simply be run again.
pub(super) fn restore(args: RestoreArgs, output: Output) -> Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(paths::default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    // Held until the restore is done: a `warden up` started meanwhile is refused.
    let _lock = warden_runtime::lock_data_dir(&data_dir).map_err(|e| match e {
        UpError::AlreadyRunning(dir) => {
            anyhow!("a warden is running on {dir} (it holds warden.lock): stop it first; a restore never replaces a live journal")
        }
        other => anyhow!(other),
    })?;
    let journal = data_dir.join(JOURNAL_FILE);
    let present: Vec<String> = ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| format!("{JOURNAL_FILE}{suffix}"))
        .filter(|name| data_dir.join(name).exists())
        .collect();
    if !present.is_empty() {
        bail!(
            "{} already has a journal ({}): a restore never writes over history; move journal.db, journal.db-wal and \
             journal.db-shm aside first (or restore into another --data-dir)",
            data_dir.display(),
            present.join(", ")
        );
    }
    let pinned = trusted_key(&args.key, &args.key_file, &data_dir)?;
    let Some((pinned, from)) = pinned else {
        // Say which key the backup claims, and that it is not trusted on that claim alone.
        let error = backup::verify(open_backup(&args.file)?, None).expect_err("no key is never trusted");
        bail!("restore refused: {}", error_text(&error));
    };

    let restoring = data_dir.join(format!("{JOURNAL_FILE}.restoring"));
    // Left by a restore cut short: it was never moved into place, so it is nobody's history.
    for suffix in ["", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", restoring.display()));
    }
    let source = format!("/warden/{}", hostname());
    let imported = backup::import(open_backup(&args.file)?, &pinned, &restoring, |summary| NewEvent {
        id: warden_runtime::clock::event_id(),
        source,
        time_ms: now_ms(),
        subject: None,
        data: EventData::JournalRestored {
            backup_created_at: summary.header.created_at.clone(),
            taken_on: summary.header.taken_on.clone(),
            head_seq: summary.header.head.seq,
            head_hash: summary.header.head.hash.clone(),
            n_artifacts: summary.n_artifacts,
        },
    })
    .map_err(|e| {
        let hint = match &e {
            BackupError::ForeignKey { .. } if args.key.is_none() && args.key_file.is_none() => format!(
                "; the trusted key is {from}: to make this data dir the backup's server, move its server.key and server.pub \
                 aside and pass the backup's server.pub with --key-file"
            ),
            _ => String::new(),
        };
        anyhow!("restore refused: {}{hint} (nothing was written to {})", error_text(&e), data_dir.display())
    })?;

    let placed = (|| -> Result<Vec<String>> {
        check_server_key(&imported.files, &imported.summary, &data_dir)?;
        let mut set_aside = Vec::new();
        for file in &imported.files {
            if let Some(old) = place_file(&data_dir, file)? {
                set_aside.push(old);
            }
        }
        File::open(&restoring).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", restoring.display()))?;
        std::fs::rename(&restoring, &journal)
            .with_context(|| format!("cannot move {} to {}", restoring.display(), journal.display()))?;
        sync_dir(&journal);
        Ok(set_aside)
    })();
    let set_aside = match placed {
        Ok(set_aside) => set_aside,
        Err(e) => {
            let _ = std::fs::remove_file(&restoring);
            return Err(e);
        }
    };

    let summary = &imported.summary;
    if output == Output::Json {
        let mut json = summary_json(summary, &args.file);
        json["data_dir"] = data_dir.display().to_string().into();
        json["restored_seq"] = imported.restored.seq.into();
        json["set_aside"] = set_aside.clone().into();
        println!("{json}");
        return Ok(());
    }
    println!("restored {} into {} ({summary})", args.file.display(), data_dir.display());
    eprintln!("  trusted key  {pinned} ({from})");
    eprintln!(
        "  journal      events 1..{} as they were, then event {} (journal.restored) saying so",
        summary.header.head.seq, imported.restored.seq
    );
    for old in &set_aside {
        eprintln!("  kept         {old}: it differed from the backup's copy, which replaced it");
    }
    eprintln!(
        "  next         warden up --data-dir {}: cells under its cells/ that the journal knows are re-adopted; \
         running ones it does not know (started after the backup) are named in its log and left alone",
        data_dir.display()
    );
    Ok(())
}

/// The key to verify against, and where it came from: `--key`, `--key-file`, or the data dir's
/// own `server.pub` (restoring the journal of the server whose key is still there).
fn trusted_key(key: &Option<String>, key_file: &Option<PathBuf>, data_dir: &Path) -> Result<Option<(String, String)>> {
    if let Some(key) = key {
        return Ok(Some((key.trim().to_string(), "--key".into())));
    }
    if let Some(path) = key_file {
        return Ok(Some((read_key_file(path)?, format!("--key-file {}", path.display()))));
    }
    let own = data_dir.join(paths::SERVER_PUB_FILE);
    if own.is_file() {
        return Ok(Some((read_key_file(&own)?, format!("{}, this data dir's own", own.display()))));
    }
    Ok(None)
}

/// The first key line of a `server.pub`-style file.
pub(super) fn read_key_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the server key {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} holds no key: expected one line `ed25519:<hex>` (a server's server.pub)", path.display()))
}

/// The backup's server key must be the key that signed it, and must not silently replace
/// another server's key already in the data dir.
fn check_server_key(files: &[BackupFile], summary: &BackupSummary, data_dir: &Path) -> Result<()> {
    let claimed = &summary.header.server_key;
    let Some(key_file) = files.iter().find(|f| f.path == paths::SERVER_KEY_FILE) else {
        bail!("restore refused: the backup carries no {} (a backup of a data dir always does)", paths::SERVER_KEY_FILE);
    };
    let public = serde_json::from_slice::<serde_json::Value>(&key_file.bytes)
        .ok()
        .and_then(|v| v.get("public_key").and_then(|k| k.as_str()).map(|hex| format!("ed25519:{hex}")));
    if public.as_deref() != Some(claimed.as_str()) {
        bail!("restore refused: the backup's {} is not the key that signed it ({claimed})", paths::SERVER_KEY_FILE);
    }
    let existing = data_dir.join(paths::SERVER_KEY_FILE);
    if let Ok(bytes) = std::fs::read(&existing) {
        if bytes != key_file.bytes {
            let principal = Identity::load(&existing).map(|id| id.principal()).unwrap_or_else(|_| "an unreadable key".into());
            bail!(
                "restore refused: {} is another server key ({principal}) than the backup's ({claimed}); \
                 move it (and server.pub) aside if this data dir should become the backup's server",
                existing.display()
            );
        }
    }
    Ok(())
}

/// Writes `file` under `data_dir` with its mode (atomically). An existing file with the same
/// bytes is left as it is; one that differs is kept as `<name>.before-restore` (returned).
fn place_file(data_dir: &Path, file: &BackupFile) -> Result<Option<String>> {
    let target = data_dir.join(&file.path);
    if let Some(dir) = target.parent().filter(|dir| *dir != data_dir) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            // Like the runtime's own keys dir: the keys in it are secrets.
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    let mut set_aside = None;
    match std::fs::read(&target) {
        Ok(bytes) if bytes == file.bytes => {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))
                .with_context(|| format!("cannot set the mode of {}", target.display()))?;
            return Ok(None);
        }
        Ok(_) => {
            let old =
                target.with_file_name(format!("{}.before-restore", target.file_name().unwrap_or_default().to_string_lossy()));
            std::fs::rename(&target, &old).with_context(|| format!("cannot move {} aside", target.display()))?;
            set_aside = Some(old.display().to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", target.display())),
    }
    let tmp = target.with_file_name(format!(".{}.restoring", target.file_name().unwrap_or_default().to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file.mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    // Whatever the umask: a secret restored 0644 would be a leak.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(file.mode))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    out.write_all(&file.bytes).and_then(|()| out.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).with_context(|| format!("cannot move {} into place", tmp.display()))?;
    Ok(set_aside)
}

/// The data dir's files a backup carries, read after the journal's transaction ended.
fn read_files(data_dir: &Path) -> std::io::Result<Vec<BackupFile>> {
    let mut files = Vec::new();
    let mut add = |relative: String| -> std::io::Result<()> {
        let path = data_dir.join(&relative);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(&path)?.permissions().mode() & 0o7777;
                files.push(BackupFile { path: relative, mode, bytes });
                Ok(())
            }
            // Not every data dir has every file (no agent ever joined, no checkpointed workload).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    };
    for name in DATA_DIR_FILES {
        add(name.to_string())?;
    }
    let mut keys: Vec<String> = match std::fs::read_dir(data_dir.join(KEYS_DIR)) {
        Ok(entries) => entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with('.'))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    keys.sort();
    for name in keys {
        add(format!("{KEYS_DIR}/{name}"))?;
    }
    Ok(files)
}

fn open_backup(file: &Path) -> Result<BufReader<File>> {
    let opened = File::open(file).with_context(|| format!("cannot read the backup {}", file.display()))?;
    Ok(BufReader::with_capacity(1 << 20, opened))
}

/// A backup error with its causes (`could not write the backup: No space left on device`).
fn error_text(error: &BackupError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn summary_json(summary: &BackupSummary, file: &Path) -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "file": file.display().to_string(),
        "created_at": summary.header.created_at,
        "taken_on": summary.header.taken_on,
        "head": summary.header.head,
        "n_events": summary.n_events,
        "n_artifacts": summary.n_artifacts,
        "snapshot_seq": summary.snapshot_seq,
        "files": summary.files,
        "sha256": summary.sha256,
    })
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|dir| dir.sync_all());
    }
}
