//! `EtcdStore` against a real 3-member etcd cluster on loopback: the `Store` conformance suite,
//! damaged history refused at open, a member killed, batches larger than one transaction, a
//! torn tail past the head, the fence, and how many bytes an event costs.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use support::{fresh_prefix, shared, Cluster, Raw};
use warden_core::canonical::Artifact;
use warden_core::event::GENESIS_HASH;
use warden_core::CloudEvent;
use warden_etcd::{EtcdStore, Fence, MEASURED_BYTES_PER_EVENT};
use warden_store::conformance::{self, sample_event, Damageable};
use warden_store::{verify_chain, Head, Store, StoreError};

fn open(endpoints: &[String], prefix: &str) -> EtcdStore {
    EtcdStore::open(endpoints, prefix, None).unwrap().0
}

fn read_all(store: &dyn Store) -> Vec<CloudEvent> {
    store.read_after(0, usize::MAX, None).unwrap()
}

fn events(from: u64, n: u64) -> Vec<warden_core::NewEvent> {
    (from..from + n).map(|i| sample_event(i, Some("w-etcd"))).collect()
}

fn event_key(prefix: &str, seq: u64) -> String {
    format!("{prefix}/e/{seq:020}")
}

#[test]
fn etcd_store_passes_the_conformance_suite() {
    let cluster = shared();
    conformance::run_all(&mut || {
        let (store, report) = EtcdStore::open(&cluster.endpoints, &fresh_prefix("conformance"), None).unwrap();
        assert_eq!(report.head, Head::genesis());
        assert_eq!(report.verified_from_seq, 1);
        store
    });
}

/// One journal under one prefix, damaged with direct etcd puts while no store has it open.
struct EtcdJournal {
    endpoints: Vec<String>,
    prefix: String,
    raw: Raw,
}

impl Damageable for EtcdJournal {
    type Store = EtcdStore;

    fn open(&mut self) -> Result<EtcdStore, StoreError> {
        EtcdStore::open(&self.endpoints, &self.prefix, None).map(|(store, _)| store)
    }

    fn flip_bit_in_event(&mut self, seq: u64) {
        let key = event_key(&self.prefix, seq);
        let mut value = self.raw.get(&key).expect("the event's key").value().to_vec();
        let middle = value.len() / 2;
        value[middle] ^= 0x01;
        self.raw.put(&key, value);
    }
}

#[test]
fn corrupt_history_is_refused_and_changes_nothing() {
    let cluster = shared();
    let mut journal =
        EtcdJournal { endpoints: cluster.endpoints.clone(), prefix: fresh_prefix("corrupt"), raw: Raw::new(&cluster.endpoints) };
    conformance::corrupt_history_is_refused_and_changes_nothing(&mut journal);
}

/// Flips one bit in every position class of an event (its body, its prevhash, the last event
/// whose only witness is the head key): open always names that event.
#[test]
fn a_flipped_bit_anywhere_names_its_event() {
    let cluster = shared();
    let raw = Raw::new(&cluster.endpoints);
    let prefix = fresh_prefix("flips");
    open(&cluster.endpoints, &prefix).append(events(1, 12)).unwrap();
    for (seq, position) in [(5, 0.5), (5, 0.1), (5, 0.9), (12, 0.5), (1, 0.5)] {
        let key = event_key(&prefix, seq);
        let original = raw.get(&key).unwrap().value().to_vec();
        let mut damaged = original.clone();
        let at = (damaged.len() as f64 * position) as usize;
        damaged[at] ^= 0x01;
        raw.put(&key, damaged);
        match EtcdStore::open(&cluster.endpoints, &prefix, None) {
            Err(StoreError::CorruptHistory { seq: found, reason, last_seq, .. }) => {
                assert_eq!((found, last_seq), (seq, 12), "bit {at} of event {seq}: {reason}");
            }
            other => panic!("bit {at} of event {seq}: expected CorruptHistory, got {other:?}"),
        }
        raw.put(&key, original);
    }
    assert_eq!(read_all(&open(&cluster.endpoints, &prefix)).len(), 12);
}

#[test]
fn a_missing_event_or_a_snapshot_past_the_head_is_refused_and_changes_nothing() {
    let cluster = shared();
    let raw = Raw::new(&cluster.endpoints);
    let prefix = fresh_prefix("missing");
    let written = {
        let store = open(&cluster.endpoints, &prefix);
        let written = store.append(events(1, 9)).unwrap();
        store.put_snapshot(3, b"three").unwrap();
        written
    };

    let key = event_key(&prefix, 6);
    let kept = raw.get(&key).unwrap().value().to_vec();
    raw.delete(&key);
    for _ in 0..2 {
        match EtcdStore::open(&cluster.endpoints, &prefix, None) {
            Err(error @ StoreError::CorruptHistory { seq: 6, last_seq: 9, n_from_seq: 3, .. }) => {
                let text = error.to_string();
                assert!(text.contains("etcd://") && text.contains("gap: expected 6, found 7"), "{text}");
            }
            other => panic!("expected CorruptHistory at 6, got {other:?}"),
        }
    }
    raw.put(&key, kept);

    let pointer = format!("{prefix}/snapshot");
    let good_pointer = raw.get(&pointer).unwrap().value().to_vec();
    raw.put(&pointer, br#"{"seq":40}"#.to_vec());
    match EtcdStore::open(&cluster.endpoints, &prefix, None) {
        Err(StoreError::CorruptHistory { seq: 10, reason, .. }) => assert!(reason.contains("snapshot"), "{reason}"),
        other => panic!("expected CorruptHistory after 9, got {other:?}"),
    }
    raw.put(&pointer, good_pointer);

    let (store, report) = EtcdStore::open(&cluster.endpoints, &prefix, None).unwrap();
    assert_eq!(report.verified_from_seq, 4, "checked from the snapshot on");
    assert_eq!(read_all(&store), written);
    assert_eq!(store.latest_snapshot().unwrap(), Some((3, b"three".to_vec())));
}

/// Keys written past the head (an append that never moved the head) are cut at open; every
/// acknowledged event stays, and the next append takes the seq after the head.
#[test]
fn a_torn_tail_past_the_head_is_cut_at_open() {
    let cluster = shared();
    let raw = Raw::new(&cluster.endpoints);
    let prefix = fresh_prefix("torn");
    let written = open(&cluster.endpoints, &prefix).append(events(1, 10)).unwrap();
    // What a torn group leaves: sealed, well-formed events 11..=14 whose head move never landed.
    let mut prev = written.last().unwrap().hash();
    for seq in 11..=14 {
        let event = CloudEvent::seal(&sample_event(seq, Some("w-torn")), seq, &prev);
        prev = event.hash();
        raw.put(&event_key(&prefix, seq), event.canonical_bytes());
    }
    let (store, report) = EtcdStore::open(&cluster.endpoints, &prefix, None).unwrap();
    assert_eq!(report.head.seq, 10);
    assert_eq!(store.torn_events_cut(), 4);
    assert!(raw.get(&event_key(&prefix, 11)).is_none(), "the torn tail is gone from etcd");
    assert_eq!(read_all(&store), written);
    let next = store.append(events(100, 1)).unwrap();
    assert_eq!((next[0].seq, next[0].prevhash.clone()), (11, written.last().unwrap().hash()));
    drop(store);
    let all = read_all(&open(&cluster.endpoints, &prefix));
    assert_eq!(all.len(), 11);
    assert_eq!(verify_chain(&all, GENESIS_HASH), Ok(()));
}

/// 300 events and a 5 MiB artifact in one append: more than one transaction (the head moves in
/// the last), yet a reader sees the head at 0 or at 300, never between, and once it is at 300
/// every event and the whole artifact are there.
#[test]
fn a_batch_larger_than_one_transaction_is_atomic_for_readers() {
    let cluster = shared();
    let prefix = fresh_prefix("big");
    let store = open(&cluster.endpoints, &prefix);
    let bytes: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let artifact = Artifact::from_bytes(bytes);
    let done = AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let raw = Raw::new(&cluster.endpoints);
            let mut seen = BTreeSet::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let head = raw.get(&format!("{prefix}/head")).map(|kv| {
                    let head: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
                    head["seq"].as_u64().unwrap()
                });
                seen.insert(head.unwrap_or(0));
                if finished {
                    return seen;
                }
            }
        });
        let sealed = store.append_with_artifacts(vec![artifact.clone()], events(1, 300)).unwrap();
        assert_eq!(sealed.len(), 300);
        done.store(true, Ordering::SeqCst);
        watcher.join().unwrap()
    });
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 300], "a reader saw the head only before and after");

    let raw = Raw::new(&cluster.endpoints);
    let head_revision = raw.get(&format!("{prefix}/head")).unwrap().mod_revision();
    let first_event_revision = raw.get(&event_key(&prefix, 1)).unwrap().mod_revision();
    assert!(first_event_revision < head_revision, "the batch took more than one transaction");
    let chunks = raw.list_keys(&format!("{prefix}/a/{}/c/", artifact.id));
    assert_eq!(chunks.len(), 5, "5 MiB in 1 MiB chunks");

    let reopened = open(&cluster.endpoints, &prefix);
    assert_eq!(read_all(&reopened).len(), 300);
    assert_eq!(reopened.get_artifact(&artifact.id).unwrap(), Some(artifact.bytes.clone()));
    // Larger snapshots are chunked the same way.
    reopened.put_snapshot(300, &artifact.bytes).unwrap();
    assert_eq!(reopened.latest_snapshot().unwrap(), Some((300, artifact.bytes)));
}

/// With one member of three killed, the two left are a quorum: appends go on, and nothing
/// acknowledged before or after is lost.
#[test]
fn an_append_survives_one_member_killed() {
    let mut cluster = Cluster::start(3);
    let prefix = fresh_prefix("quorum");
    let store = open(&cluster.endpoints, &prefix);
    let mut written = store.append(events(1, 20)).unwrap();
    cluster.members[0].kill();
    let dead = cluster.members[0].client_url.trim_start_matches("http://").to_owned();
    assert!(std::net::TcpStream::connect(&dead).is_err(), "member m0 at {dead} is down");
    for i in 0..10 {
        written.extend(store.append(events(100 + 10 * i, 10)).unwrap());
    }
    assert_eq!(read_all(&store), written);
    drop(store);
    // Opened with every endpoint, the dead one too, as an operator's configuration lists them.
    let reopened = open(&cluster.endpoints, &prefix);
    assert_eq!(reopened.head().unwrap().seq, 120);
    assert_eq!(read_all(&reopened), written);
}

/// Every write compares the fence key's create revision: once the key is created again (another
/// process won), appends fail as fenced and nothing of them lands.
#[test]
fn a_write_after_the_fence_moved_is_refused_as_fenced() {
    let cluster = shared();
    let raw = Raw::new(&cluster.endpoints);
    let prefix = fresh_prefix("fence");
    let fence_key = format!("{prefix}-leader");
    raw.put(&fence_key, "me");
    let create_revision = raw.get(&fence_key).unwrap().create_revision();
    let fence = Fence { key: fence_key.clone(), create_revision };
    let (store, _) = EtcdStore::open(&cluster.endpoints, &prefix, Some(fence)).unwrap();
    store.append(events(1, 3)).unwrap();

    raw.delete(&fence_key);
    raw.put(&fence_key, "someone else");
    match store.append(events(4, 2)) {
        Err(StoreError::Fenced { key, create_revision: expected }) => {
            assert_eq!((key, expected), (fence_key.clone(), create_revision));
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(matches!(store.put_snapshot(3, b"x"), Err(StoreError::Fenced { .. })));
    assert!(raw.get(&event_key(&prefix, 4)).is_none(), "a fenced append wrote nothing");
    drop(store);
    assert_eq!(open(&cluster.endpoints, &prefix).head().unwrap().seq, 3);
}

/// What an event costs in etcd's database (the crate docs' capacity estimate), on a 1-member
/// cluster of its own so no other test's writes count.
#[test]
fn bytes_per_event() {
    let cluster = Cluster::start(1);
    let raw = Raw::new(&cluster.endpoints);
    let store = open(&cluster.endpoints, &fresh_prefix("size"));
    let before = raw.db_in_use(&cluster.endpoints[0]);
    const N: u64 = 4000;
    // Groups of 8, as the engine's group commit forms them under load.
    for first in (1..=N).step_by(8) {
        store.append(events(first, 8)).unwrap();
    }
    let after = raw.db_in_use(&cluster.endpoints[0]);
    let per_event = (after - before) as u64 / N;
    let prefix = store.etcd_prefix().to_owned();
    drop(store);
    let values: usize = raw.list(&format!("{prefix}/e/")).iter().map(|kv| kv.value().len()).sum();
    support::note(&format!(
        "etcd: {per_event} bytes of database per event ({N} events of {} bytes on average)",
        values as u64 / N
    ));
    assert!(
        per_event <= 2 * MEASURED_BYTES_PER_EVENT && 2 * per_event >= MEASURED_BYTES_PER_EVENT,
        "measured {per_event} bytes per event; the crate docs say about {MEASURED_BYTES_PER_EVENT}"
    );
}

/// At etcd's space quota every write is refused ("mvcc: database space exceeded"): the append
/// fails with that message (so the engine exits 70), nothing of it is acknowledged or visible,
/// and the journal still opens with everything acknowledged before.
#[test]
fn at_the_space_quota_appends_fail_and_nothing_is_lost() {
    let cluster = Cluster::start_with(1, &["--quota-backend-bytes", &(16 * 1024 * 1024).to_string()]);
    let prefix = fresh_prefix("quota");
    let store = open(&cluster.endpoints, &prefix);
    let mut written = Vec::new();
    let mut failure = None;
    for i in 0..40u64 {
        // 2 MiB of distinct bytes per append, with an event naming it.
        let bytes: Vec<u8> = (0..2 * 1024 * 1024u64).map(|b| ((b * 31 + i * 7) % 253) as u8).collect();
        match store.append_with_artifacts(vec![Artifact::from_bytes(bytes)], events(1 + i, 1)) {
            Ok(sealed) => written.extend(sealed),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let error = failure.expect("a 16 MiB quota refuses 80 MiB of artifacts");
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
    assert!(error.to_string().contains("database space exceeded"), "{error}");
    assert!(!written.is_empty());
    assert_eq!(store.head().unwrap().seq, written.len() as u64);
    assert_eq!(read_all(&store), written);
    drop(store);
    let reopened = open(&cluster.endpoints, &prefix);
    assert_eq!(read_all(&reopened), written, "everything acknowledged is there after the refusal");
}

/// Two stores on one prefix (two writers, no fence): an append lands only on the head it was
/// sealed after, so the second writer's append is refused and nothing of it is visible.
#[test]
fn an_append_on_a_head_another_writer_moved_is_refused() {
    let cluster = shared();
    let prefix = fresh_prefix("two-writers");
    let first = open(&cluster.endpoints, &prefix);
    let second = open(&cluster.endpoints, &prefix);
    let written = first.append(events(1, 3)).unwrap();
    match second.append(events(10, 200)) {
        Err(StoreError::HeadMoved { expected_seq: 0, found_seq: 3 }) => {}
        other => panic!("expected HeadMoved from 0 to 3, got {other:?}"),
    }
    drop((first, second));
    let reopened = open(&cluster.endpoints, &prefix);
    assert_eq!(read_all(&reopened), written, "the refused append left nothing a reader sees");
    assert_eq!(reopened.torn_events_cut(), 0, "refused at its first transaction: no key past the head");
}
