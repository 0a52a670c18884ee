//! `warden journal verify|repair`: the operator's tools for a damaged journal, on the data dir
//! itself, with no server.
//!
//! `warden up` refuses a journal whose committed history does not verify and changes nothing
//! (`warden_store::StoreError::CorruptHistory`). `verify` checks the whole chain from seq 1
//! (start-up checks only the events after the latest snapshot); `repair --truncate-after N`,
//! with the server stopped (it takes the data dir's lock), discards every event after N — but
//! first saves them, raw, to `journal.discarded-<seq>-<time>.jsonl` beside the journal (mode
//! 0600), and journals what it did as event N+1 (`dev.warden.journal.repaired.v1`), in the
//! same transaction as the truncation. The checks and the truncation are
//! `warden_store::repair`'s; this module decides the file, the operator's name and the words.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use warden_core::time::format_rfc3339_ms;
use warden_core::{EventData, NewEvent};
use warden_runtime::{clock, paths, UpError};
use warden_store::{ChainCheck, OfflineJournal, TruncatePlan};

use super::common::{hostname, Output};

#[derive(Subcommand)]
pub(super) enum JournalAction {
    /// Check the whole hash chain from seq 1, offline (start-up checks only the events after the
    /// latest snapshot); exits non-zero, naming the first bad event, if it is damaged.
    Verify {
        /// Default: $XDG_DATA_HOME/warden (~/.local/share/warden).
        #[arg(long, env = "WARDEN_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Discard damaged history, with the server stopped: keeps events 1..=N (which must verify),
    /// saves every later event to journal.discarded-<seq>-<time>.jsonl beside the journal (mode
    /// 0600), deletes them and the snapshots past N, and journals the repair as event N+1.
    Repair {
        /// Keep events 1..=N: the seq before the first bad one (`warden up` and `warden journal
        /// verify` name it).
        #[arg(long, value_name = "N")]
        truncate_after: u64,
        /// Default: $XDG_DATA_HOME/warden (~/.local/share/warden).
        #[arg(long, env = "WARDEN_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

pub(super) fn run(action: JournalAction, output: Output) -> Result<()> {
    match action {
        JournalAction::Verify { data_dir } => verify(&data_dir.unwrap_or_else(paths::default_data_dir), output),
        JournalAction::Repair { truncate_after, data_dir } => {
            repair(&data_dir.unwrap_or_else(paths::default_data_dir), truncate_after, output)
        }
    }
}

/// The journal in `data_dir`, which must exist: the offline tools never create one.
fn journal_path(data_dir: &Path) -> Result<PathBuf> {
    let path = data_dir.join(paths::JOURNAL_FILE);
    if !path.is_file() {
        bail!("no journal at {} (is --data-dir the server's data dir?)", path.display());
    }
    Ok(path)
}

fn open(journal: &Path) -> Result<OfflineJournal> {
    OfflineJournal::open(journal).with_context(|| format!("cannot open the journal {}", journal.display()))
}

/// `warden journal verify`.
fn verify(data_dir: &Path, output: Output) -> Result<()> {
    let journal = journal_path(data_dir)?;
    let check = open(&journal)?.check().with_context(|| format!("cannot check the journal {}", journal.display()))?;
    if output == Output::Json {
        println!("{}", check_json(&check));
    }
    let Some(damage) = &check.damage else {
        if output == Output::Table {
            println!(
                "ok: {} event(s), seq 1..{}, the chain verifies from genesis{}",
                check.n_events,
                check.last_seq,
                check.latest_snapshot_seq.map_or_else(String::new, |seq| format!("; latest snapshot at seq {seq}"))
            );
        }
        return Ok(());
    };
    bail!(
        "journal {} is damaged: {}; events 1..{} verify, {} event(s) are stored from seq {} on. \
         Restore the data dir from a backup (`warden restore`), or, with the server stopped, discard them with \
         `warden journal repair --data-dir {} --truncate-after {}` (saved to a file beside the journal first)",
        journal.display(),
        damage.reason,
        check.verified_through.seq,
        damage.n_from_seq,
        damage.seq,
        data_dir.display(),
        damage.seq - 1,
    )
}

fn check_json(check: &ChainCheck) -> serde_json::Value {
    serde_json::json!({
        "n_events": check.n_events,
        "last_seq": check.last_seq,
        "verified_through_seq": check.verified_through.seq,
        "latest_snapshot_seq": check.latest_snapshot_seq,
        "damage": check.damage.as_ref().map(|damage| serde_json::json!({
            "seq": damage.seq,
            "reason": damage.reason,
            "n_from_seq": damage.n_from_seq,
        })),
    })
}

/// `warden journal repair --truncate-after N`.
fn repair(data_dir: &Path, truncate_after: u64, output: Output) -> Result<()> {
    let journal_file = journal_path(data_dir)?;
    // Held until the repair is committed: no server starts on the journal meanwhile.
    let _lock = warden_runtime::lock_data_dir(data_dir).map_err(|error| match error {
        UpError::AlreadyRunning(dir) => anyhow::anyhow!(
            "a warden server is running on data dir {dir} (it holds warden.lock): stop it first; \
             `warden journal repair` works on a stopped server only"
        ),
        other => anyhow::Error::new(other),
    })?;
    let mut journal = open(&journal_file)?;
    let plan = journal
        .plan_truncate_after(truncate_after)
        .with_context(|| format!("refusing to repair {} (nothing was changed)", journal_file.display()))?;

    let now = clock::now_ms();
    let saved_to = save_discarded(data_dir, &plan, now)?;
    let repair = NewEvent {
        id: clock::event_id(),
        source: "/warden/journal-repair".into(),
        time_ms: now,
        subject: None,
        data: EventData::JournalRepaired {
            truncated_after: truncate_after,
            n_discarded: plan.discarded.len() as u64,
            first_bad_seq: plan.damage.seq,
            reason: plan.damage.reason.clone(),
            saved_to: saved_to.display().to_string(),
            operator: operator(),
        },
    };
    let sealed = journal.truncate_after(&plan, &repair).with_context(|| {
        format!(
            "the repair of {} failed and changed nothing (the events are also in {})",
            journal_file.display(),
            saved_to.display()
        )
    })?;

    if output == Output::Json {
        println!("{}", String::from_utf8_lossy(&sealed.canonical_bytes()));
        return Ok(());
    }
    println!(
        "repaired {}: kept events 1..{truncate_after}; discarded {} event(s) from seq {} (first damage: {}), saved to {} (mode 0600); \
         dropped {} snapshot(s) past {truncate_after}; the repair is event {} ({}). `warden up` starts from here.",
        journal_file.display(),
        plan.discarded.len(),
        truncate_after + 1,
        plan.damage.reason,
        saved_to.display(),
        plan.n_snapshots_dropped,
        sealed.seq,
        sealed.event_type,
    );
    Ok(())
}

/// Writes every row the repair discards, one JSON object per line, to a new file beside the
/// journal (mode 0600, fsynced with its directory) before anything is deleted.
fn save_discarded(data_dir: &Path, plan: &TruncatePlan, now_ms: u64) -> Result<PathBuf> {
    // 2026-12-07T20:31:40.123Z → 20261207T203140Z: sortable, and no colons in a file name.
    let stamp: String = format_rfc3339_ms(now_ms).chars().take(19).filter(|c| c.is_ascii_alphanumeric()).collect();
    let path = data_dir.join(format!("journal.discarded-{}-{stamp}Z.jsonl", plan.truncate_after + 1));
    let context = || format!("cannot save the events to discard to {} (nothing was changed)", path.display());
    let mut file = File::options().write(true).create_new(true).mode(0o600).open(&path).with_context(context)?;
    let mut text = Vec::new();
    for row in &plan.discarded {
        serde_json::to_writer(&mut text, row).with_context(context)?;
        text.push(b'\n');
    }
    file.write_all(&text).with_context(context)?;
    file.sync_all().with_context(context)?;
    File::open(data_dir).and_then(|dir| dir.sync_all()).with_context(context)?;
    Ok(path)
}

/// Who ran the repair, for its event: the local user and host (the server is down, so there is
/// no signed request to name a principal).
fn operator() -> String {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        status.lines().find_map(|line| Some(line.strip_prefix("Uid:")?.split_whitespace().next()?.to_string()))
    });
    let who = match (std::env::var("USER").or_else(|_| std::env::var("LOGNAME")), uid) {
        (Ok(user), Some(uid)) => format!("{user} (uid {uid})"),
        (Ok(user), None) => user,
        (Err(_), Some(uid)) => format!("uid {uid}"),
        (Err(_), None) => "an unknown user".into(),
    };
    format!("{who} on {}, by `warden journal repair`", hostname())
}
