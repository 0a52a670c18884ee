//! `warden_store::backup`: a backup exported from a journal imports into one with the same rows
//! (seqs, hashes, bytes), artifacts and snapshot; a cut, altered, foreign or unknown backup is
//! refused with a message naming what is wrong, and an import that fails leaves nothing.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use tempfile::TempDir;
use warden_core::canonical::Artifact;
use warden_core::{EventData, NewEvent};
use warden_store::backup::{self, BackupError, BackupFile, BackupHeader};
use warden_store::conformance::sample_event;
use warden_store::{SqliteStore, Store};

#[path = "support/stored.rs"]
mod stored;
use stored::stored;

fn server_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn principal(key: &SigningKey) -> String {
    format!("ed25519:{}", hex::encode(key.verifying_key().as_bytes()))
}

fn files() -> Vec<BackupFile> {
    vec![
        BackupFile { path: "server.key".into(), mode: 0o600, bytes: b"{\"secret\":\"s\"}".to_vec() },
        BackupFile { path: "keys/w-1".into(), mode: 0o600, bytes: vec![1; 32] },
    ]
}

/// A journal with 25 events, three artifacts (one written with no event) and a snapshot at 20.
fn journal_with_history(dir: &Path) -> PathBuf {
    let path = dir.join("journal.db");
    let (store, _) = SqliteStore::open(&path).unwrap();
    let artifacts: Vec<Artifact> = (0..3).map(|i| Artifact::from_bytes(format!("artifact {i}").into_bytes())).collect();
    store.append_with_artifacts(artifacts[..2].to_vec(), (1..=10).map(|k| sample_event(k, Some("w-1"))).collect()).unwrap();
    store.append_with_artifacts(vec![artifacts[2].clone()], Vec::new()).unwrap();
    store.append((11..=25).map(|k| sample_event(k, None)).collect()).unwrap();
    store.put_snapshot(20, b"{\"projection\":20}").unwrap();
    path
}

fn export_bytes(journal: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    backup::export(journal, &server_key(), "host-a", 1_790_000_000_000, &mut out, || Ok(files())).unwrap();
    out
}

fn restored_event(summary: &backup::BackupSummary) -> NewEvent {
    let header = &summary.header;
    NewEvent {
        id: "restored".into(),
        source: "/warden/test".into(),
        time_ms: 1_790_000_100_000,
        subject: None,
        data: EventData::JournalRestored {
            backup_created_at: header.created_at.clone(),
            taken_on: header.taken_on.clone(),
            head_seq: header.head.seq,
            head_hash: header.head.hash.clone(),
            n_artifacts: summary.n_artifacts,
        },
    }
}

fn verify(bytes: &[u8]) -> Result<backup::BackupSummary, BackupError> {
    backup::verify(bytes, Some(&principal(&server_key())))
}

fn refusal(bytes: &[u8]) -> String {
    verify(bytes).unwrap_err().to_string()
}

/// The backup's lines (each without its `\n`).
fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    assert_eq!(lines.pop(), Some(Vec::new()), "a backup ends with a newline");
    lines
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    lines.iter().flat_map(|line| line.iter().copied().chain([b'\n'])).collect()
}

#[test]
fn a_backup_imports_into_the_same_rows_plus_one_restored_event() {
    let dir = TempDir::new().unwrap();
    let journal = journal_with_history(dir.path());
    let bytes = export_bytes(&journal);
    let summary = verify(&bytes).unwrap();
    assert_eq!((summary.n_events, summary.n_artifacts, summary.snapshot_seq), (25, 3, Some(20)));
    assert_eq!(summary.files, ["server.key", "keys/w-1"]);
    assert_eq!(summary.header.taken_on, "host-a");
    assert!(
        summary.to_string().starts_with("backup taken 2026-09-21T14:13:20.000Z on host-a: 25 events (seq 1..25"),
        "{summary}"
    );

    let restored_path = dir.path().join("restored.db");
    let imported = backup::import(&bytes[..], &principal(&server_key()), &restored_path, restored_event).unwrap();
    assert_eq!(imported.files, files());
    assert_eq!(imported.restored.seq, 26);
    assert_eq!(imported.restored.prevhash, summary.header.head.hash);

    let (original, restored) = (stored(&journal), stored(&restored_path));
    assert_eq!(restored.events[..25], original.events[..], "the same seqs, subjects, hashes and bytes");
    assert_eq!(restored.events.len(), 26);
    assert_eq!(restored.artifacts, original.artifacts);
    assert_eq!(restored.snapshots, vec![original.snapshots.last().unwrap().clone()], "the latest snapshot");

    // The store opens it as its own: the chain verifies, nothing is cut, appends continue it.
    let (store, report) = SqliteStore::open(&restored_path).unwrap();
    assert_eq!(report.head.seq, 26);
    assert_eq!(store.latest_snapshot().unwrap(), Some((20, b"{\"projection\":20}".to_vec())));
    let last = store.read_after(25, 1, None).unwrap();
    assert_eq!(last[0].event_type, "dev.warden.journal.restored.v1");
    assert_eq!(store.append(vec![sample_event(27, None)]).unwrap()[0].seq, 27);

    // A journal already there is never written over.
    let again = backup::import(&bytes[..], &principal(&server_key()), &restored_path, restored_event).unwrap_err();
    assert_eq!(again.to_string(), format!("{} already exists: a restore never writes over a journal", restored_path.display()));
}

#[test]
fn an_empty_journal_backs_up_and_restores() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("journal.db");
    drop(SqliteStore::open(&path).unwrap());
    let mut bytes = Vec::new();
    backup::export(&path, &server_key(), "h", 1, &mut bytes, || Ok(Vec::new())).unwrap();
    assert_eq!(verify(&bytes).unwrap().n_events, 0);
    let imported = backup::import(&bytes[..], &principal(&server_key()), &dir.path().join("r.db"), restored_event).unwrap();
    assert_eq!(imported.restored.seq, 1);
}

#[test]
fn a_backup_taken_while_events_are_appended_is_one_consistent_cut() {
    let dir = TempDir::new().unwrap();
    let journal = journal_with_history(dir.path());
    let (store, _) = SqliteStore::open(&journal).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut k = 26;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let artifact = Artifact::from_bytes(format!("blob {k}").into_bytes());
                store.append_with_artifacts(vec![artifact], vec![sample_event(k, Some("w-2"))]).unwrap();
                k += 1;
            }
            k
        });
        for _ in 0..5 {
            let bytes = export_bytes(&journal);
            let summary = verify(&bytes).unwrap();
            // Every event in the cut has its artifact: they were committed together.
            assert_eq!(summary.n_artifacts, 3 + (summary.n_events - 25));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() > 26, "the writer kept appending");
    });
}

#[test]
fn a_cut_backup_is_refused_as_truncated() {
    let dir = TempDir::new().unwrap();
    let bytes = export_bytes(&journal_with_history(dir.path()));
    let all = lines(&bytes);
    // Cut after the header, inside the events, after the artifacts, before the trailer.
    assert_eq!(refusal(&join(&all[..1])), "truncated: the backup ends at line 1 (in the events) without its trailer");
    assert_eq!(
        refusal(&join(&all[..8])),
        "truncated: the backup ends at line 8 (in the events, after event 7) without its trailer"
    );
    assert_eq!(refusal(&join(&all[..29])), "truncated: the backup ends at line 29 (in the artifacts) without its trailer");
    let n = all.len();
    assert_eq!(
        refusal(&join(&all[..n - 1])),
        format!("truncated: the backup ends at line {} (in the files) without its trailer", n - 1)
    );
    // Cut in the middle of a line, anywhere.
    for cut in [10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 2] {
        let error = refusal(&bytes[..cut]);
        assert!(error.starts_with("truncated: the backup ends at line "), "cut at {cut}: {error}");
    }
    assert_eq!(refusal(b""), "not a warden backup: the file is empty");
}

#[test]
fn an_altered_byte_is_refused_naming_where() {
    let dir = TempDir::new().unwrap();
    let bytes = export_bytes(&journal_with_history(dir.path()));
    let all = lines(&bytes);

    // Event 5 (line 6): its id changed, still canonical JSON: the chain breaks at event 6.
    let mut altered = all.clone();
    let at = altered[5].windows(6).position(|w| w == b"\"id\":\"").unwrap() + 6;
    altered[5][at] ^= 0x01;
    assert_eq!(refusal(&join(&altered)), "line 7: event 6: prevhash does not match event 5's hash");
    // The last event: the signed head catches it.
    let mut altered = all.clone();
    let at = altered[25].windows(6).position(|w| w == b"\"id\":\"").unwrap() + 6;
    altered[25][at] ^= 0x01;
    assert!(refusal(&join(&altered)).starts_with("line 26: event 25: its hash is sha256:"), "{}", refusal(&join(&altered)));
    // An event line that is no longer JSON.
    let mut altered = all.clone();
    altered[3][12] = b'}';
    assert!(refusal(&join(&altered)).starts_with("line 4: "), "{}", refusal(&join(&altered)));

    // An artifact's bytes (its base64) changed.
    let mut altered = all.clone();
    let at = altered[26].windows(8).position(|w| w == b"\"body\":\"").unwrap() + 8;
    altered[26][at] = if altered[26][at] == b'A' { b'B' } else { b'A' };
    let error = refusal(&join(&altered));
    assert!(error.starts_with("line 27: artifact sha256:") && error.contains("does not match its bytes"), "{error}");

    // A file's bytes: only the trailer's digest covers them.
    let n = all.len();
    let mut altered = all.clone();
    let at = altered[n - 2].windows(8).position(|w| w == b"\"body\":\"").unwrap() + 8;
    altered[n - 2][at] = if altered[n - 2][at] == b'A' { b'B' } else { b'A' };
    let error = refusal(&join(&altered));
    assert!(error.starts_with(&format!("line {n}: the trailer says the backup's bytes before it hash to")), "{error}");
    assert!(error.ends_with("the backup was altered"), "{error}");

    // The trailer itself, or something after it.
    let mut altered = all.clone();
    let trailer = String::from_utf8(altered[n - 1].clone()).unwrap().replace("\"n_files\":2", "\"n_files\":1");
    altered[n - 1] = trailer.into_bytes();
    assert!(refusal(&join(&altered)).contains("the trailer's signature does not verify"), "{}", refusal(&join(&altered)));
    let mut appended = bytes.clone();
    appended.extend_from_slice(b"{\"file\":\"extra\",\"mode\":384,\"body\":\"\"}\n");
    assert_eq!(refusal(&appended), format!("line {}: there is data after the trailer", n + 1));

    // A broken backup is never half-restored.
    let mut altered = all.clone();
    altered.swap(3, 4);
    let target = dir.path().join("restored.db");
    let error = backup::import(&join(&altered)[..], &principal(&server_key()), &target, restored_event).unwrap_err();
    assert_eq!(error.to_string(), "line 5: events 4 and 3 are out of order: event 4 comes before event 3");
    assert!(!target.exists(), "nothing is left of a refused import");
}

#[test]
fn a_foreign_or_unknown_backup_is_refused() {
    let dir = TempDir::new().unwrap();
    let bytes = export_bytes(&journal_with_history(dir.path()));
    let other = SigningKey::from_bytes(&[9; 32]);
    assert_eq!(
        backup::verify(&bytes[..], Some(&principal(&other))).unwrap_err().to_string(),
        format!(
            "the backup is signed by {}, not by the trusted server key {}: it is another server's backup",
            principal(&server_key()),
            principal(&other)
        )
    );
    // No key: the backup's own claim is named, never trusted.
    let error = backup::verify(&bytes[..], None).unwrap_err().to_string();
    assert!(error.starts_with(&format!("the backup says it is signed by {}", principal(&server_key()))), "{error}");
    let error = backup::import(&bytes[..], &principal(&other), &dir.path().join("r.db"), restored_event).unwrap_err();
    assert!(matches!(error, BackupError::ForeignKey { .. }), "{error}");
    assert!(!dir.path().join("r.db").exists());

    // Another file altogether, another format, a later version.
    assert_eq!(refusal(b"hello\n"), "not a warden backup: its first line is not JSON (`warden backup` writes JSON lines)");
    assert_eq!(refusal(b"{\"seq\":1}\n"), "not a warden backup: its first line has no \"format\": \"warden-backup\"");
    assert_eq!(refusal(b"{\"format\":\"tar\"}\n"), "not a warden backup: its format is \"tar\", not \"warden-backup\"");
    let all = lines(&bytes);
    let mut future = all.clone();
    future[0] = String::from_utf8(future[0].clone()).unwrap().replace("\"version\":1", "\"version\":2").into_bytes();
    assert_eq!(
        refusal(&join(&future)),
        "this backup is format version 2, newer than this warden reads (1): restore it with a newer warden"
    );
    // A re-signed head by another key that names the trusted one fails its signature.
    let mut forged = all.clone();
    let text = String::from_utf8(forged[0].clone()).unwrap();
    let header: BackupHeader = serde_json::from_str(&text).unwrap();
    let head = warden_store::Head { seq: header.head.seq, hash: header.head.hash.clone() };
    let mut resigned = warden_store::SignedHead::sign(&head, header.head.signed_at_ms, &other);
    resigned.server_key = principal(&server_key());
    forged[0] = serde_json::to_vec(&BackupHeader { head: resigned, ..header }).unwrap();
    assert!(refusal(&join(&forged)).starts_with("the backup's signed head does not verify: bad signature"));
}

#[test]
fn a_file_outside_the_data_dir_never_goes_in_a_backup() {
    let dir = TempDir::new().unwrap();
    let journal = journal_with_history(dir.path());
    for path in ["../escape", "/etc/passwd", "keys/../../x", ""] {
        let outside = BackupFile { path: path.into(), mode: 0o600, bytes: b"x".to_vec() };
        let error = backup::export(&journal, &server_key(), "h", 1, Vec::new(), || Ok(vec![outside])).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("file {path:?} cannot go in a backup: a file's path must be relative to the data dir, without `..`")
        );
    }
    // Nor does a backup's secret show in a debug print.
    let debug = format!("{:?}", files()[1]);
    assert_eq!(debug, "BackupFile { path: \"keys/w-1\", mode: 600, 32 bytes }");
}
