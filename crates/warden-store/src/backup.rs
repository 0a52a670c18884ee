//! Backups of the journal: `export` writes one signed, self-describing file (the events,
//! artifacts and latest snapshot read in ONE SQLite read transaction, then the data dir's secret
//! files), `verify` checks one offline against a pinned server key, and `import` rebuilds a
//! journal from one — the same rows, the same seqs and hashes — verifying every line as it goes.
//!
//! **Format** (`warden-backup`, version 1), JSON lines, in this order:
//!
//! ```text
//! {"format":"warden-backup","version":1,"created_at":…,"taken_on":…,"server_key":…,"head":<SignedHead>}
//! {"event":<the event's canonical bytes, exactly as hashed>}      seq 1..=head.seq, in order
//! {"artifact":"sha256:<hex>","body":"<base64>"}                    every artifact, by id
//! {"snapshot":<seq>,"body":"<base64>"}                             the latest snapshot, if any
//! {"file":"keys/<id>","mode":384,"body":"<base64>"}                the data dir's secrets
//! {"trailer":{"n_events":…,"n_artifacts":…,"snapshot_seq":…,"n_files":…,"sha256":…,"signature":…}}
//! ```
//!
//! **What proves what.** The header's signed head (the server key over the last event's seq and
//! hash, `chain::head_message`) anchors the chain: walking the events from the genesis hash must
//! arrive at it. Artifacts are checked against their content ids. The trailer's `sha256` covers
//! every byte before its line and its signature (the server key over [`trailer_message`]) covers
//! the trailer, so a cut file, a flipped byte anywhere (also in the snapshot or the files, which
//! nothing else covers) or a line appended after it is refused. As with heads, the key a backup
//! names is never trusted on its own: whoever forged one would name their own.
//!
//! **Consistency.** In WAL mode a read transaction sees the database as of its first read while
//! the writer keeps committing, and an append's artifacts are committed with its events; so a
//! backup of a running server's journal is a cut at one commit, whatever is appended meanwhile.
//! Rows are streamed (never the whole journal in memory); an artifact is held one at a time.

use std::io::{BufRead, Write};
use std::path::{Component, Path};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warden_core::canonical::{sha256_hex, Artifact};
use warden_core::event::GENESIS_HASH;
use warden_core::time::format_rfc3339_ms;
use warden_core::{CloudEvent, NewEvent};

use crate::chain::{check_row, parse_event_line, ChainError, ChainVerifier, SignedHead};
use crate::error::{During, StoreError, StoreOperation};
use crate::history::stored_row;
use crate::port::Head;
use crate::sqlite::{migrate, SCHEMA_VERSION};

/// The header's `format`: what says a file is a warden backup at all.
pub const BACKUP_FORMAT: &str = "warden-backup";
/// The header's `version`; a reader refuses a newer one rather than misread it.
pub const BACKUP_VERSION: u64 = 1;
/// The first line of what the trailer's signature covers (see [`trailer_message`]).
pub const TRAILER_SIGNATURE_CONTEXT: &str = "warden-backup/v1";
/// Files (secrets, keys) are small; a larger one is not something `export` wrote.
const MAX_FILE_BYTES: usize = 1 << 20;

/// The first line of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupHeader {
    /// Always [`BACKUP_FORMAT`].
    pub format: String,
    /// [`BACKUP_VERSION`] when written.
    pub version: u64,
    /// When the backup was taken (RFC 3339, the taking machine's clock) and in Unix ms.
    pub created_at: String,
    pub created_at_ms: u64,
    /// The machine the backup was taken on.
    pub taken_on: String,
    /// `ed25519:<hex>`: the server key the backup claims to be signed by (its `server.pub`).
    pub server_key: String,
    /// The journal's head at the backup's cut, signed by the server key: the last event in it.
    pub head: SignedHead,
}

/// The last line of a backup: what it holds, and a digest of everything before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupTrailer {
    pub n_events: u64,
    pub n_artifacts: u64,
    pub snapshot_seq: Option<u64>,
    pub n_files: u64,
    /// Hex SHA-256 of every byte of the backup before the trailer's line.
    pub sha256: String,
    /// Hex Ed25519 signature by the server key over [`trailer_message`].
    pub signature: String,
}

/// What the trailer's signature covers:
/// `warden-backup/v1\n<sha256>\n<n_events>\n<n_artifacts>\n<snapshot_seq or ->\n<n_files>`.
pub fn trailer_message(trailer: &BackupTrailer) -> String {
    let snapshot = trailer.snapshot_seq.map_or_else(|| "-".to_string(), |seq| seq.to_string());
    format!(
        "{TRAILER_SIGNATURE_CONTEXT}\n{}\n{}\n{}\n{snapshot}\n{}",
        trailer.sha256, trailer.n_events, trailer.n_artifacts, trailer.n_files
    )
}

/// A file of the data dir carried by a backup: `path` relative to the data dir, its mode.
#[derive(Clone, PartialEq, Eq)]
pub struct BackupFile {
    pub path: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for BackupFile {
    /// Never the bytes: they are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupFile {{ path: {:?}, mode: {:o}, {} bytes }}", self.path, self.mode, self.bytes.len())
    }
}

/// Why a backup could not be written, or is refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("there is no journal at {path}")]
    NoJournal { path: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the journal is corrupt at event {seq} ({reason}); nothing was backed up (`warden journal repair` can cut the journal back)")]
    JournalCorrupt { seq: u64, reason: String },
    #[error("artifact {id} in the journal is corrupt (its bytes do not hash to its id); nothing was backed up")]
    JournalArtifactCorrupt { id: String },
    #[error("file {path:?} cannot go in a backup: {reason}")]
    BadFile { path: String, reason: String },
    #[error("could not write the backup")]
    Write(#[source] std::io::Error),
    #[error("could not read the backup")]
    Read(#[source] std::io::Error),

    #[error("not a warden backup: {0}")]
    NotABackup(String),
    #[error(
        "this backup is format version {found}, newer than this warden reads ({BACKUP_VERSION}): restore it with a newer warden"
    )]
    UnknownVersion { found: u64 },
    #[error("the backup's header (line 1) is malformed: {0}")]
    MalformedHeader(String),
    #[error(
        "the backup says it is signed by {claimed}, but a backup never vouches for its own key: give the server key to trust \
         (--key-file <data-dir>/server.pub, or --key {claimed} once you have checked it is your server's)"
    )]
    KeyNotPinned { claimed: String },
    #[error("the backup is signed by {signed_by}, not by the trusted server key {pinned}: it is another server's backup")]
    ForeignKey { signed_by: String, pinned: String },
    #[error("the backup's signed head does not verify: {0}")]
    BadHead(#[source] ChainError),
    #[error("line {line}: {error}")]
    Chain {
        line: u64,
        #[source]
        error: ChainError,
    },
    /// An event line that is not an event's canonical bytes (the message names the line).
    #[error("{0}")]
    EventLine(#[source] ChainError),
    #[error("line {line}: {reason}")]
    BadLine { line: u64, reason: String },
    #[error("line {line}: artifact {id} does not match its bytes (they hash to sha256:{actual})")]
    ArtifactMismatch { line: u64, id: String, actual: String },
    #[error("truncated: the backup ends at line {last_line} ({after}) without its trailer")]
    Truncated { last_line: u64, after: String },
    #[error(
        "line {line}: the trailer says the backup's bytes before it hash to sha256:{claimed}, but they hash to sha256:{actual}: \
         the backup was altered"
    )]
    DigestMismatch { line: u64, claimed: String, actual: String },
    #[error("line {line}: the trailer's signature does not verify against {key}: the trailer was altered")]
    BadTrailerSignature { line: u64, key: String },
    #[error("line {line}: the trailer counts {claimed} {what}, but the backup holds {found}")]
    CountMismatch { line: u64, what: &'static str, claimed: String, found: String },
    #[error("line {line}: there is data after the trailer")]
    AfterTrailer { line: u64 },

    #[error("{path} already exists: a restore never writes over a journal")]
    JournalExists { path: String },
}

/// What a backup holds, once verified (or written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    pub header: BackupHeader,
    pub n_events: u64,
    pub n_artifacts: u64,
    pub snapshot_seq: Option<u64>,
    /// The files' paths, in the backup's order.
    pub files: Vec<String>,
    /// Hex SHA-256 of the backup before its trailer.
    pub sha256: String,
}

impl std::fmt::Display for BackupSummary {
    /// `backup taken 2026-…Z on HOST: 120 events (seq 1..120, head sha256:…), 3 artifacts,
    /// snapshot at seq 100, 5 files; signed by ed25519:…`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = &self.header.head;
        write!(f, "backup taken {} on {}: {} events", self.header.created_at, self.header.taken_on, self.n_events)?;
        if self.n_events > 0 {
            write!(f, " (seq 1..{}, head sha256:{})", head.seq, head.hash)?;
        }
        write!(f, ", {} artifacts", self.n_artifacts)?;
        if let Some(seq) = self.snapshot_seq {
            write!(f, ", snapshot at seq {seq}")?;
        }
        write!(f, ", {} files; signed by {}", self.files.len(), head.server_key)
    }
}

/// One verified line of a backup, as [`read_backup`] hands it on.
pub enum BackupItem<'a> {
    /// `bytes` are the event's canonical bytes, `hash` their sha256.
    Event {
        event: &'a CloudEvent,
        bytes: &'a [u8],
        hash: &'a str,
    },
    Artifact {
        id: &'a str,
        bytes: &'a [u8],
    },
    Snapshot {
        seq: u64,
        body: &'a [u8],
    },
    File(BackupFile),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactLine {
    artifact: String,
    body: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotLine {
    snapshot: u64,
    body: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLine {
    file: String,
    mode: u32,
    body: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrailerLine {
    trailer: BackupTrailer,
}

const EVENT_PREFIX: &[u8] = b"{\"event\":";

/// `ed25519:<hex>` of a key, as principals are written everywhere in warden.
fn principal_of(key: &VerifyingKey) -> String {
    format!("ed25519:{}", hex::encode(key.as_bytes()))
}

/// Whether `path` may name a file of a data dir in a backup: relative, plain components only
/// (a restore writes it under the data dir and nowhere else).
fn check_file_path(path: &str) -> Result<(), String> {
    let as_path = Path::new(path);
    if path.is_empty() || as_path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err("a file's path must be relative to the data dir, without `..`".into());
    }
    Ok(())
}

/// A writer that hashes everything written through it.
struct Hashing<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a backup of the journal at `journal` to `out`: the header (its head signed by `key` as
/// of `now_ms`), every event, every artifact and the latest snapshot — all read in one read
/// transaction, so the backup is one consistent cut even while a server appends — then the
/// files `read_files` returns (called after that transaction: anything journaled before the cut
/// had its files written first, e.g. a checkpointed workload's key), then the signed trailer.
///
/// Every event is checked as it is read (its hash, its link to the one before): a corrupt
/// journal is not signed as if it were good.
pub fn export<W: Write>(
    journal: &Path,
    key: &SigningKey,
    taken_on: &str,
    now_ms: u64,
    out: W,
    read_files: impl FnOnce() -> std::io::Result<Vec<BackupFile>>,
) -> Result<BackupSummary, BackupError> {
    if !journal.is_file() {
        return Err(BackupError::NoJournal { path: journal.display().to_string() });
    }
    let op = StoreOperation::ReadEvents;
    // Read-write but query-only, like the store's own reader: a read-only connection cannot
    // open a WAL journal whose `-shm` it may not create.
    let mut conn = Connection::open_with_flags(journal, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .during(StoreOperation::Open)?;
    conn.busy_timeout(Duration::from_secs(5)).during(StoreOperation::Open)?;
    conn.pragma_update(None, "query_only", true).during(StoreOperation::Open)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).during(StoreOperation::Open)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaVersion(version).into());
    }

    let mut out = Hashing { inner: out, hasher: Sha256::new() };
    let write_err = BackupError::Write;
    let (header, n_events, n_artifacts, snapshot_seq) = {
        // Deferred: the snapshot of the database is taken at the first SELECT below, and every
        // later one in this transaction reads the same.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred).during(op)?;
        let head = tx
            .query_row("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", [], |row| {
                Ok(Head { seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0), hash: row.get(1)? })
            })
            .optional()
            .during(op)?
            .unwrap_or_else(Head::genesis);
        let header = BackupHeader {
            format: BACKUP_FORMAT.into(),
            version: BACKUP_VERSION,
            created_at: format_rfc3339_ms(now_ms),
            created_at_ms: now_ms,
            taken_on: taken_on.into(),
            server_key: principal_of(&key.verifying_key()),
            head: SignedHead::sign(&head, now_ms, key),
        };
        serde_json::to_writer(&mut out, &header).map_err(|e| BackupError::Write(e.into()))?;
        out.write_all(b"\n").map_err(write_err)?;

        let mut n_events = 0u64;
        let mut prev_hash = GENESIS_HASH.to_string();
        {
            let mut stmt = tx.prepare("SELECT seq, subject, hash, body FROM events WHERE seq <= ?1 ORDER BY seq").during(op)?;
            let mut rows = stmt.query([i64::try_from(head.seq).unwrap_or(i64::MAX)]).during(op)?;
            while let Some(row) = rows.next().during(op)? {
                let seq = u64::try_from(row.get::<_, i64>(0).during(op)?).unwrap_or(0);
                let expected = n_events + 1;
                let stored = stored_row(seq, row)
                    .during(op)?
                    .map_err(|why| BackupError::JournalCorrupt { seq: expected, reason: why.reason() })?;
                check_row(expected, &prev_hash, &stored)
                    .map_err(|why| BackupError::JournalCorrupt { seq: expected, reason: why.reason() })?;
                out.write_all(EVENT_PREFIX).map_err(write_err)?;
                out.write_all(stored.body).map_err(write_err)?;
                out.write_all(b"}\n").map_err(write_err)?;
                prev_hash = stored.hash.to_string();
                n_events += 1;
            }
        }
        if n_events != head.seq {
            return Err(BackupError::JournalCorrupt {
                seq: n_events + 1,
                reason: format!("the journal's head is event {} but event {} is missing", head.seq, n_events + 1),
            });
        }

        let mut n_artifacts = 0u64;
        {
            let op = StoreOperation::ReadArtifact;
            let mut stmt = tx.prepare("SELECT id, body FROM artifacts ORDER BY id").during(op)?;
            let mut rows = stmt.query([]).during(op)?;
            while let Some(row) = rows.next().during(op)? {
                let id: String = row.get(0).during(op)?;
                let bytes = match row.get_ref(1).during(op)? {
                    ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes,
                    _ => return Err(BackupError::JournalArtifactCorrupt { id }),
                };
                if !Artifact::verify(&id, bytes) {
                    return Err(BackupError::JournalArtifactCorrupt { id });
                }
                let line = ArtifactLine { artifact: id, body: BASE64.encode(bytes) };
                serde_json::to_writer(&mut out, &line).map_err(|e| BackupError::Write(e.into()))?;
                out.write_all(b"\n").map_err(write_err)?;
                n_artifacts += 1;
            }
        }

        let op = StoreOperation::ReadSnapshot;
        let snapshot: Option<(i64, Option<Vec<u8>>)> = tx
            .query_row(
                "SELECT seq, body FROM snapshots WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1",
                [i64::try_from(head.seq).unwrap_or(i64::MAX)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .during(op)?;
        let snapshot_seq = match snapshot {
            Some((seq, body)) if seq > 0 => {
                let line = SnapshotLine { snapshot: seq as u64, body: BASE64.encode(body.unwrap_or_default()) };
                serde_json::to_writer(&mut out, &line).map_err(|e| BackupError::Write(e.into()))?;
                out.write_all(b"\n").map_err(write_err)?;
                Some(seq as u64)
            }
            _ => None,
        };
        // Ends the read transaction: the writer's checkpoints may pass this point again.
        tx.commit().during(op)?;
        (header, n_events, n_artifacts, snapshot_seq)
    };
    drop(conn);

    let files = read_files().map_err(BackupError::Read)?;
    for file in &files {
        check_file_path(&file.path).map_err(|reason| BackupError::BadFile { path: file.path.clone(), reason })?;
        if file.bytes.len() > MAX_FILE_BYTES {
            return Err(BackupError::BadFile { path: file.path.clone(), reason: format!("larger than {MAX_FILE_BYTES} bytes") });
        }
        let line = FileLine { file: file.path.clone(), mode: file.mode, body: BASE64.encode(&file.bytes) };
        serde_json::to_writer(&mut out, &line).map_err(|e| BackupError::Write(e.into()))?;
        out.write_all(b"\n").map_err(write_err)?;
    }

    let Hashing { inner: mut out, hasher } = out;
    let sha256 = hex::encode(hasher.finalize());
    let mut trailer = BackupTrailer {
        n_events,
        n_artifacts,
        snapshot_seq,
        n_files: files.len() as u64,
        sha256: sha256.clone(),
        signature: String::new(),
    };
    trailer.signature = hex::encode(key.sign(trailer_message(&trailer).as_bytes()).to_bytes());
    serde_json::to_writer(&mut out, &TrailerLine { trailer }).map_err(|e| BackupError::Write(e.into()))?;
    out.write_all(b"\n").map_err(write_err)?;
    out.flush().map_err(write_err)?;
    Ok(BackupSummary {
        header,
        n_events,
        n_artifacts,
        snapshot_seq,
        files: files.into_iter().map(|file| file.path).collect(),
        sha256,
    })
}

/// Reads and checks a backup's first line: that it is a warden backup of a version this warden
/// reads, and its header. Says nothing about whether it can be trusted.
pub fn read_header(line: &[u8]) -> Result<BackupHeader, BackupError> {
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|_| BackupError::NotABackup("its first line is not JSON (`warden backup` writes JSON lines)".into()))?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(BACKUP_FORMAT) => {}
        Some(other) => return Err(BackupError::NotABackup(format!("its format is {other:?}, not {BACKUP_FORMAT:?}"))),
        None => return Err(BackupError::NotABackup(format!("its first line has no \"format\": {BACKUP_FORMAT:?}"))),
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(BACKUP_VERSION) => {}
        Some(found) if found > BACKUP_VERSION => return Err(BackupError::UnknownVersion { found }),
        _ => return Err(BackupError::MalformedHeader(format!("\"version\" must be {BACKUP_VERSION}"))),
    }
    let header: BackupHeader = serde_json::from_value(value).map_err(|e| BackupError::MalformedHeader(e.to_string()))?;
    if header.server_key != header.head.server_key {
        return Err(BackupError::MalformedHeader(format!(
            "server_key {} is not the key its head names ({})",
            header.server_key, header.head.server_key
        )));
    }
    Ok(header)
}

/// The sections of a backup, in the order they must come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Events,
    Artifacts,
    Snapshot,
    Files,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Events => "the events",
            Section::Artifacts => "the artifacts",
            Section::Snapshot => "the snapshot",
            Section::Files => "the files",
        }
    }
}

/// Reads one line (with its `\n`) into `line`; `false` at the end of the input.
fn next_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Result<bool, BackupError> {
    line.clear();
    let n = reader.read_until(b'\n', line).map_err(BackupError::Read)?;
    Ok(n > 0)
}

fn decode_body(line_no: u64, body: &str) -> Result<Vec<u8>, BackupError> {
    BASE64.decode(body).map_err(|e| BackupError::BadLine { line: line_no, reason: format!("body is not base64: {e}") })
}

/// Reads a whole backup from `reader` and verifies it against `pinned_key` (`ed25519:<hex>`; `None`
/// refuses, naming the key the backup claims): the header's signed head, the chain of events up to
/// it, every artifact against its id, the sections' order, the trailer's digest, counts and
/// signature, and that nothing follows it. Hands every verified line to `sink` as it goes;
/// files and the snapshot are only covered once the trailer verified, so a sink must not act on
/// them before this returns `Ok`.
pub fn read_backup(
    mut reader: impl BufRead,
    pinned_key: Option<&str>,
    mut sink: impl FnMut(BackupItem<'_>) -> Result<(), BackupError>,
) -> Result<BackupSummary, BackupError> {
    let mut line = Vec::new();
    let mut hasher = Sha256::new();
    if !next_line(&mut reader, &mut line)? {
        return Err(BackupError::NotABackup("the file is empty".into()));
    }
    if line.last() != Some(&b'\n') {
        // A cut header is still recognisably a backup if its start is.
        const HEADER_START: &[u8] = b"{\"format\":\"warden-backup\"";
        if line.starts_with(HEADER_START) || HEADER_START.starts_with(&line) {
            return Err(BackupError::Truncated { last_line: 1, after: "in its header".into() });
        }
        return Err(BackupError::NotABackup("its first line is not a warden backup header".into()));
    }
    let header = read_header(&line[..line.len() - 1])?;
    hasher.update(&line);
    let Some(pinned) = pinned_key else {
        return Err(BackupError::KeyNotPinned { claimed: header.server_key.clone() });
    };
    let mut verifier = ChainVerifier::new(header.head.clone(), pinned, 1).map_err(|error| match error {
        ChainError::WrongKey { signed_by, pinned } => BackupError::ForeignKey { signed_by, pinned },
        other => BackupError::BadHead(other),
    })?;
    let pinned_key = crate::chain::parse_principal(pinned).expect("ChainVerifier::new checked the pinned key");

    let mut section = Section::Events;
    let (mut n_events, mut n_artifacts, mut snapshot_seq) = (0u64, 0u64, None);
    let mut files = Vec::new();
    let mut line_no = 1u64;
    loop {
        if !next_line(&mut reader, &mut line)? {
            let after = match section {
                Section::Events if n_events > 0 => format!("in the events, after event {n_events}"),
                other => format!("in {}", other.name()),
            };
            return Err(BackupError::Truncated { last_line: line_no, after });
        }
        line_no += 1;
        if line.last() != Some(&b'\n') {
            let after = format!("in the middle of a line, in {}", section.name());
            return Err(BackupError::Truncated { last_line: line_no, after });
        }
        let text = &line[..line.len() - 1];
        let out_of_order = |what: &str, section: Section| BackupError::BadLine {
            line: line_no,
            reason: format!("{what} after {}: the lines are out of order", section.name()),
        };
        let bad = |reason: String| BackupError::BadLine { line: line_no, reason };

        if text.starts_with(EVENT_PREFIX) {
            if section != Section::Events {
                return Err(out_of_order("an event", section));
            }
            let inner = text[EVENT_PREFIX.len()..]
                .strip_suffix(b"}")
                .ok_or_else(|| bad("an event line must be {\"event\":<event>}".into()))?;
            let inner_text = std::str::from_utf8(inner).map_err(|_| bad("not UTF-8".into()))?;
            let event = parse_event_line(line_no, inner_text).map_err(BackupError::EventLine)?;
            if event.seq > header.head.seq {
                return Err(bad(format!("event {} is past the backup's signed head (seq {})", event.seq, header.head.seq)));
            }
            verifier.push(&event).map_err(|error| BackupError::Chain { line: line_no, error })?;
            let hash = sha256_hex(inner);
            sink(BackupItem::Event { event: &event, bytes: inner, hash: &hash })?;
            n_events += 1;
        } else if text.starts_with(b"{\"artifact\":") {
            if section > Section::Artifacts {
                return Err(out_of_order("an artifact", section));
            }
            section = Section::Artifacts;
            let parsed: ArtifactLine = serde_json::from_slice(text).map_err(|e| bad(format!("not an artifact line: {e}")))?;
            let bytes = decode_body(line_no, &parsed.body)?;
            if !Artifact::verify(&parsed.artifact, &bytes) {
                return Err(BackupError::ArtifactMismatch { line: line_no, id: parsed.artifact, actual: sha256_hex(&bytes) });
            }
            sink(BackupItem::Artifact { id: &parsed.artifact, bytes: &bytes })?;
            n_artifacts += 1;
        } else if text.starts_with(b"{\"snapshot\":") {
            if section >= Section::Snapshot {
                return Err(out_of_order("a snapshot", section));
            }
            section = Section::Snapshot;
            let parsed: SnapshotLine = serde_json::from_slice(text).map_err(|e| bad(format!("not a snapshot line: {e}")))?;
            if parsed.snapshot == 0 || parsed.snapshot > header.head.seq {
                return Err(bad(format!("a snapshot at seq {} is outside the backup's events", parsed.snapshot)));
            }
            let body = decode_body(line_no, &parsed.body)?;
            sink(BackupItem::Snapshot { seq: parsed.snapshot, body: &body })?;
            snapshot_seq = Some(parsed.snapshot);
        } else if text.starts_with(b"{\"file\":") {
            section = Section::Files;
            let parsed: FileLine = serde_json::from_slice(text).map_err(|e| bad(format!("not a file line: {e}")))?;
            check_file_path(&parsed.file).map_err(|reason| bad(format!("file {:?}: {reason}", parsed.file)))?;
            if parsed.mode > 0o7777 {
                return Err(bad(format!("file {:?}: mode {:o} is not a permission mode", parsed.file, parsed.mode)));
            }
            let bytes = decode_body(line_no, &parsed.body)?;
            files.push(parsed.file.clone());
            sink(BackupItem::File(BackupFile { path: parsed.file, mode: parsed.mode, bytes }))?;
        } else if text.starts_with(b"{\"trailer\":") {
            let parsed: TrailerLine = serde_json::from_slice(text).map_err(|e| bad(format!("not a trailer line: {e}")))?;
            let trailer = parsed.trailer;
            // The chain first: "event 7 is missing" says more than a digest mismatch.
            verifier.finish().map_err(|error| BackupError::Chain { line: line_no, error })?;
            let actual = hex::encode(hasher.finalize_reset());
            if trailer.sha256 != actual {
                return Err(BackupError::DigestMismatch { line: line_no, claimed: trailer.sha256, actual });
            }
            let signature: Option<[u8; 64]> = hex::decode(&trailer.signature).ok().and_then(|bytes| bytes.try_into().ok());
            let verified = signature.is_some_and(|signature| {
                pinned_key.verify_strict(trailer_message(&trailer).as_bytes(), &Signature::from_bytes(&signature)).is_ok()
            });
            if !verified {
                return Err(BackupError::BadTrailerSignature { line: line_no, key: pinned.to_string() });
            }
            let count = |what: &'static str, claimed: String, found: String| {
                if claimed == found {
                    Ok(())
                } else {
                    Err(BackupError::CountMismatch { line: line_no, what, claimed, found })
                }
            };
            count("events", trailer.n_events.to_string(), n_events.to_string())?;
            count("artifacts", trailer.n_artifacts.to_string(), n_artifacts.to_string())?;
            count("files", trailer.n_files.to_string(), files.len().to_string())?;
            let show = |seq: Option<u64>| seq.map_or_else(|| "no snapshot".to_string(), |seq| format!("a snapshot at seq {seq}"));
            if trailer.snapshot_seq != snapshot_seq {
                return Err(BackupError::CountMismatch {
                    line: line_no,
                    what: "snapshot",
                    claimed: show(trailer.snapshot_seq),
                    found: show(snapshot_seq),
                });
            }
            if next_line(&mut reader, &mut line)? {
                return Err(BackupError::AfterTrailer { line: line_no + 1 });
            }
            return Ok(BackupSummary { header, n_events, n_artifacts, snapshot_seq, files, sha256: actual });
        } else {
            return Err(bad("not a line of a backup (an event, artifact, snapshot, file or trailer)".into()));
        }
        hasher.update(&line);
    }
}

/// [`read_backup`] with nothing done with the lines: `warden events verify --backup`.
pub fn verify(reader: impl BufRead, pinned_key: Option<&str>) -> Result<BackupSummary, BackupError> {
    read_backup(reader, pinned_key, |_| Ok(()))
}

/// What [`import`] wrote.
#[derive(Debug)]
pub struct Imported {
    pub summary: BackupSummary,
    /// The backup's files, for the caller to write: verified, like everything else.
    pub files: Vec<BackupFile>,
    /// The event `import` appended after the backup's last one.
    pub restored: CloudEvent,
}

/// Creates a new journal at `journal` (which must not exist) from the backup `reader`, verified
/// against `pinned_key` as [`verify`] does while it is written: the same events (seqs, hashes,
/// bytes), artifacts and snapshot, then `restored(summary)` sealed after the backup's head — all
/// in one transaction, committed only once the whole backup verified. On any error nothing is
/// left at `journal`. The file is written in SQLite's rollback-journal mode; the store switches
/// it to WAL when it opens it.
pub fn import(
    reader: impl BufRead,
    pinned_key: &str,
    journal: &Path,
    restored: impl FnOnce(&BackupSummary) -> NewEvent,
) -> Result<Imported, BackupError> {
    for path in [journal.to_path_buf(), sidecar(journal, "-wal"), sidecar(journal, "-shm"), sidecar(journal, "-journal")] {
        if path.exists() {
            return Err(BackupError::JournalExists { path: path.display().to_string() });
        }
    }
    let result = import_into(reader, pinned_key, journal, restored);
    if result.is_err() {
        let _ = std::fs::remove_file(journal);
        let _ = std::fs::remove_file(sidecar(journal, "-journal"));
    }
    result
}

fn sidecar(journal: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn import_into(
    reader: impl BufRead,
    pinned_key: &str,
    journal: &Path,
    restored: impl FnOnce(&BackupSummary) -> NewEvent,
) -> Result<Imported, BackupError> {
    crate::sqlite::make_private(journal).during(StoreOperation::Open)?;
    let mut conn = Connection::open(journal).during(StoreOperation::Open)?;
    conn.pragma_update(None, "synchronous", "FULL").during(StoreOperation::Open)?;
    migrate(&mut conn)?;
    let op = StoreOperation::Restore;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).during(op)?;
    let mut files = Vec::new();
    let summary = {
        let mut insert_event = tx.prepare("INSERT INTO events (seq, subject, hash, body) VALUES (?1, ?2, ?3, ?4)").during(op)?;
        let mut insert_artifact = tx.prepare("INSERT INTO artifacts (id, body) VALUES (?1, ?2)").during(op)?;
        let mut insert_snapshot = tx.prepare("INSERT INTO snapshots (seq, body) VALUES (?1, ?2)").during(op)?;
        read_backup(reader, Some(pinned_key), |item| {
            match item {
                BackupItem::Event { event, bytes, hash } => {
                    insert_event.execute(params![event.seq as i64, event.subject, hash, bytes]).during(op)?;
                }
                BackupItem::Artifact { id, bytes } => {
                    insert_artifact.execute(params![id, bytes]).during(op)?;
                }
                BackupItem::Snapshot { seq, body } => {
                    insert_snapshot.execute(params![seq as i64, body]).during(op)?;
                }
                BackupItem::File(file) => files.push(file),
            }
            Ok(())
        })?
    };
    let head = &summary.header.head;
    let event = CloudEvent::seal(&restored(&summary), head.seq + 1, &head.hash);
    let body = event.canonical_bytes();
    tx.execute(
        "INSERT INTO events (seq, subject, hash, body) VALUES (?1, ?2, ?3, ?4)",
        params![event.seq as i64, event.subject, sha256_hex(&body), body],
    )
    .during(op)?;
    tx.commit().during(op)?;
    drop(conn);
    Ok(Imported { summary, files, restored: event })
}
