//! The conformance suite every `Store` must pass: seq and chain rules, group-commit concurrency,
//! reads, snapshots, artifacts, and damaged history refused at open.
//!
//! It lives in the library, not under `tests/`, so every backend (and any test double the runtime
//! uses) is held to the same contract: call [`run_all`] with a factory of fresh, empty stores, and
//! [`corrupt_history_is_refused_and_changes_nothing`] with a [`Damageable`] backend (the one
//! check that needs to reopen a journal and damage it behind the store's back).
//! Checks panic on failure, like assertions in a test.

use std::collections::BTreeMap;

use warden_core::canonical::Artifact;
use warden_core::event::GENESIS_HASH;
use warden_core::{CloudEvent, EventData, NewEvent};

use crate::chain::verify_chain;
use crate::error::StoreError;
use crate::port::{Head, Store};

/// One named check: it gets a fresh empty store and panics if the store breaks the contract.
pub type Check = (&'static str, fn(&dyn Store));

/// Every check [`run_all`] runs, by name.
pub const CHECKS: &[Check] = &[
    ("empty_store_is_at_genesis", empty_store_is_at_genesis),
    ("seq_starts_at_one_without_gaps", seq_starts_at_one_without_gaps),
    ("prevhash_chains", prevhash_chains),
    ("sealed_events_carry_what_was_appended", sealed_events_carry_what_was_appended),
    ("empty_append_is_a_no_op", empty_append_is_a_no_op),
    ("concurrent_appends_are_contiguous", concurrent_appends_are_contiguous),
    ("read_after_limit_and_subject", read_after_limit_and_subject),
    ("snapshot_round_trip", snapshot_round_trip),
    ("sealed_events_equal_read_back", sealed_events_equal_read_back),
    ("artifacts_round_trip_and_are_immutable", artifacts_round_trip_and_are_immutable),
    ("deleted_artifacts_are_gone_and_the_journal_stays", deleted_artifacts_are_gone_and_the_journal_stays),
];

/// Runs every check, each on a fresh empty store from `make`.
pub fn run_all<S: Store>(make: &mut dyn FnMut() -> S) {
    for (name, check) in CHECKS {
        let store = make();
        // Named on stderr so a failing check is easy to find in the test output.
        eprintln!("store conformance: {name}");
        check(&store);
    }
}

/// A distinct event: `n` makes the id and time unique; with a subject, the data is about that
/// workload, as the runtime's events are.
pub fn sample_event(n: u64, subject: Option<&str>) -> NewEvent {
    let data = match subject {
        Some(workload) => EventData::WorkloadStopEscalated { workload_id: workload.to_string() },
        None => EventData::JournalRepaired {
            truncated_after: n,
            n_discarded: 0,
            first_bad_seq: n + 1,
            reason: format!("conformance {n}"),
            saved_to: String::new(),
            operator: "conformance".into(),
        },
    };
    NewEvent {
        id: format!("evt-{n}"),
        source: "/warden/conformance".into(),
        time_ms: 1_700_000_000_000 + n,
        subject: subject.map(str::to_owned),
        data,
    }
}

fn batch(from: u64, len: u64, subject: Option<&str>) -> Vec<NewEvent> {
    (from..from + len).map(|n| sample_event(n, subject)).collect()
}

fn read_all(store: &dyn Store) -> Vec<CloudEvent> {
    store.read_after(0, usize::MAX, None).expect("read_after")
}

fn seqs(events: &[CloudEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn head_of(events: &[CloudEvent]) -> Head {
    match events.last() {
        Some(last) => Head { seq: last.seq, hash: last.hash() },
        None => Head::genesis(),
    }
}

pub fn empty_store_is_at_genesis(store: &dyn Store) {
    assert_eq!(store.head().unwrap(), Head::genesis());
    assert_eq!(store.head().unwrap().hash, GENESIS_HASH);
    assert!(read_all(store).is_empty());
    assert_eq!(store.latest_snapshot().unwrap(), None);
}

pub fn seq_starts_at_one_without_gaps(store: &dyn Store) {
    let mut next = 1;
    for i in 0..60u64 {
        let len = 1 + i % 5;
        let sealed = store.append(batch(next, len, Some("w-1"))).unwrap();
        assert_eq!(seqs(&sealed), (next..next + len).collect::<Vec<_>>());
        next += len;
        assert_eq!(store.head().unwrap().seq, next - 1);
    }
    let all = read_all(store);
    assert_eq!(seqs(&all), (1..next).collect::<Vec<_>>());
}

pub fn prevhash_chains(store: &dyn Store) {
    store.append(batch(1, 1, None)).unwrap();
    store.append(batch(2, 5, Some("w-a"))).unwrap();
    store.append(batch(7, 3, Some("w-b"))).unwrap();
    let all = read_all(store);
    assert_eq!(all.len(), 9);
    assert_eq!(all[0].prevhash, GENESIS_HASH);
    for pair in all.windows(2) {
        assert_eq!(pair[1].prevhash, pair[0].hash(), "event {}", pair[1].seq);
    }
    assert_eq!(verify_chain(&all, GENESIS_HASH), Ok(()));
    assert_eq!(store.head().unwrap(), head_of(&all));
}

pub fn sealed_events_carry_what_was_appended(store: &dyn Store) {
    let new = vec![sample_event(1, Some("w-x")), sample_event(2, None)];
    let sealed = store.append(new.clone()).unwrap();
    assert_eq!(sealed.len(), 2);
    for (new, event) in new.iter().zip(&sealed) {
        let expected = CloudEvent::seal(new, event.seq, &event.prevhash);
        assert_eq!(event, &expected);
        assert_eq!(event.typed_data().unwrap(), new.data);
        assert_eq!(event.subject, new.subject);
    }
}

pub fn empty_append_is_a_no_op(store: &dyn Store) {
    assert!(store.append(Vec::new()).unwrap().is_empty());
    assert_eq!(store.head().unwrap(), Head::genesis());
    store.append(batch(1, 2, None)).unwrap();
    let head = store.head().unwrap();
    assert!(store.append(Vec::new()).unwrap().is_empty());
    assert_eq!(store.head().unwrap(), head);
    let next = store.append(batch(3, 1, None)).unwrap();
    assert_eq!(next[0].seq, 3);
}

/// 8 threads x 200 events, in batches of 1 to 7: every event lands exactly once, seqs have no
/// gaps, each batch comes back with contiguous seqs, and each thread's batches land in the order
/// it appended them.
pub fn concurrent_appends_are_contiguous(store: &dyn Store) {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 200;
    let returned: Vec<Vec<CloudEvent>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let subject = format!("w-thread-{t}");
                    let mut mine = Vec::new();
                    let mut sent = 0;
                    let mut i = 0;
                    while sent < PER_THREAD {
                        let len = (1 + (t + i) % 7).min(PER_THREAD - sent);
                        let first = t * 1_000_000 + sent;
                        let sealed = store.append(batch(first, len, Some(&subject))).unwrap();
                        assert_eq!(sealed.len() as u64, len);
                        for pair in sealed.windows(2) {
                            assert_eq!(pair[1].seq, pair[0].seq + 1, "batch seqs contiguous");
                            assert_eq!(pair[1].prevhash, pair[0].hash(), "batch chained");
                        }
                        if let (Some(prev), Some(this)) = (mine.last(), sealed.first()) {
                            let prev: &CloudEvent = prev;
                            assert!(this.seq > prev.seq, "a thread's appends land in order");
                        }
                        for (k, event) in sealed.iter().enumerate() {
                            assert_eq!(event.id, format!("evt-{}", first + k as u64));
                        }
                        mine.extend(sealed);
                        sent += len;
                        i += 1;
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut by_seq = BTreeMap::new();
    for event in returned.iter().flatten() {
        assert!(by_seq.insert(event.seq, event.clone()).is_none(), "seq {} handed out twice", event.seq);
    }
    let total = THREADS * PER_THREAD;
    assert_eq!(by_seq.keys().copied().collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
    let all = read_all(store);
    assert_eq!(all, by_seq.into_values().collect::<Vec<_>>());
    assert_eq!(verify_chain(&all, GENESIS_HASH), Ok(()));
    assert_eq!(store.head().unwrap(), head_of(&all));
    for (t, mine) in returned.iter().enumerate() {
        let subject = format!("w-thread-{t}");
        let read = store.read_after(0, usize::MAX, Some(&subject)).unwrap();
        assert_eq!(&read, mine);
    }
}

pub fn read_after_limit_and_subject(store: &dyn Store) {
    let subject_of = |n: u64| match n % 3 {
        0 => Some("w-a"),
        1 => Some("w-b"),
        _ => None,
    };
    for n in 1..=30 {
        store.append(vec![sample_event(n, subject_of(n))]).unwrap();
    }
    let all = read_all(store);
    assert_eq!(seqs(&all), (1..=30).collect::<Vec<_>>());

    assert_eq!(seqs(&store.read_after(0, 10, None).unwrap()), (1..=10).collect::<Vec<_>>());
    assert_eq!(seqs(&store.read_after(10, 100, None).unwrap()), (11..=30).collect::<Vec<_>>());
    assert_eq!(seqs(&store.read_after(29, 5, None).unwrap()), vec![30]);
    assert!(store.read_after(30, 10, None).unwrap().is_empty());
    assert!(store.read_after(1_000, 10, None).unwrap().is_empty());
    assert!(store.read_after(u64::MAX, 10, None).unwrap().is_empty());
    assert!(store.read_after(0, 0, None).unwrap().is_empty());

    // Paging with a cursor sees every event once, in order.
    let mut paged = Vec::new();
    let mut cursor = 0;
    loop {
        let page = store.read_after(cursor, 7, None).unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 7);
        cursor = last.seq;
        paged.extend(page);
    }
    assert_eq!(paged, all);

    let only_a: Vec<CloudEvent> = all.iter().filter(|e| e.subject.as_deref() == Some("w-a")).cloned().collect();
    assert_eq!(only_a.len(), 10);
    assert_eq!(store.read_after(0, 1_000, Some("w-a")).unwrap(), only_a);
    assert_eq!(store.read_after(0, 3, Some("w-a")).unwrap(), only_a[..3]);
    // A cursor that is not itself an event of the subject.
    assert_eq!(store.read_after(10, 2, Some("w-a")).unwrap(), only_a[3..5]);
    assert_eq!(store.read_after(only_a[8].seq, 10, Some("w-a")).unwrap(), only_a[9..]);
    assert!(store.read_after(30, 10, Some("w-a")).unwrap().is_empty());
    assert!(store.read_after(0, 0, Some("w-a")).unwrap().is_empty());
    assert!(store.read_after(0, 10, Some("w-none")).unwrap().is_empty());
    assert!(store.read_after(0, 100, Some("w-b")).unwrap().iter().all(|e| e.subject.as_deref() == Some("w-b")));
}

pub fn snapshot_round_trip(store: &dyn Store) {
    assert_eq!(store.latest_snapshot().unwrap(), None);
    store.append(batch(1, 10, Some("w-s"))).unwrap();

    store.put_snapshot(4, b"four").unwrap();
    assert_eq!(store.latest_snapshot().unwrap(), Some((4, b"four".to_vec())));

    store.put_snapshot(9, b"").unwrap();
    assert_eq!(store.latest_snapshot().unwrap(), Some((9, Vec::new())));

    // The same seq again replaces the body.
    store.put_snapshot(9, b"nine").unwrap();
    assert_eq!(store.latest_snapshot().unwrap(), Some((9, b"nine".to_vec())));

    // An older snapshot does not displace the latest.
    store.put_snapshot(6, b"six").unwrap();
    assert_eq!(store.latest_snapshot().unwrap(), Some((9, b"nine".to_vec())));

    // Opaque: any bytes, including invalid UTF-8 and NULs.
    let binary: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
    store.put_snapshot(10, &binary).unwrap();
    assert_eq!(store.latest_snapshot().unwrap(), Some((10, binary)));

    // Snapshots do not disturb the journal.
    assert_eq!(seqs(&read_all(store)), (1..=10).collect::<Vec<_>>());
    assert_eq!(store.append(batch(11, 1, None)).unwrap()[0].seq, 11);
}

pub fn sealed_events_equal_read_back(store: &dyn Store) {
    let mut returned = Vec::new();
    returned.extend(store.append(batch(1, 1, Some("w-1"))).unwrap());
    returned.extend(store.append(batch(2, 17, None)).unwrap());
    returned.extend(store.append(batch(19, 4, Some("w-2"))).unwrap());
    assert_eq!(read_all(store), returned);
    for event in &returned {
        assert_eq!(store.read_after(event.seq - 1, 1, None).unwrap(), vec![event.clone()]);
    }
    assert_eq!(store.head().unwrap(), head_of(&returned));
}

/// Artifacts written with events read back byte-identical; writing one again changes nothing; an
/// artifact whose id is not its hash is refused and takes its whole call with it.
pub fn deleted_artifacts_are_gone_and_the_journal_stays(store: &dyn Store) {
    let old = Artifact::from_bytes(b"checkpoint 1".to_vec());
    let new = Artifact::from_bytes(b"checkpoint 2".to_vec());
    let sealed = store.append_with_artifacts(vec![old.clone(), new.clone()], batch(1, 2, Some("w-gc"))).unwrap();
    let missing = Artifact::from_bytes(b"never stored".to_vec()).id;
    assert_eq!(store.delete_artifacts(vec![old.id.clone(), missing]).unwrap(), 1);
    assert_eq!(store.get_artifact(&old.id).unwrap(), None);
    assert_eq!(store.get_artifact(&new.id).unwrap(), Some(new.bytes.clone()));
    assert_eq!(store.delete_artifacts(Vec::new()).unwrap(), 0);
    // The events, and the chain, are untouched; the id may be stored again.
    assert_eq!(read_all(store), sealed);
    assert_eq!(store.head().unwrap().seq, 2);
    store.append_with_artifacts(vec![old.clone()], Vec::new()).unwrap();
    assert_eq!(store.get_artifact(&old.id).unwrap(), Some(old.bytes));
}

pub fn artifacts_round_trip_and_are_immutable(store: &dyn Store) {
    let manifest = Artifact::of_json(&serde_json::json!({"job": "j-1", "steps": ["a", "b"]}));
    // Opaque: any bytes, including invalid UTF-8 and NULs.
    let binary = Artifact::from_bytes((0..=255u8).rev().chain(0..=255).collect());
    let sealed = store.append_with_artifacts(vec![manifest.clone(), binary.clone()], batch(1, 2, Some("w-art"))).unwrap();
    assert_eq!(seqs(&sealed), vec![1, 2]);
    assert_eq!(store.get_artifact(&manifest.id).unwrap(), Some(manifest.bytes.clone()));
    assert_eq!(store.get_artifact(&binary.id).unwrap(), Some(binary.bytes.clone()));

    // The same artifact again, alone or with an event, is not an error and changes nothing.
    let again = store.append_with_artifacts(vec![manifest.clone()], batch(3, 1, None)).unwrap();
    assert_eq!(seqs(&again), vec![3]);
    assert!(store.append_with_artifacts(vec![manifest.clone(), manifest.clone()], Vec::new()).unwrap().is_empty());
    assert_eq!(store.get_artifact(&manifest.id).unwrap(), Some(manifest.bytes.clone()));

    // Artifacts without events are still written, and do not move the head.
    let head = store.head().unwrap();
    let empty = Artifact::from_bytes(Vec::new());
    let loose = Artifact::from_bytes(b"no event refers to me yet".to_vec());
    assert!(store.append_with_artifacts(vec![empty.clone(), loose.clone()], Vec::new()).unwrap().is_empty());
    assert_eq!(store.get_artifact(&empty.id).unwrap(), Some(Vec::new()));
    assert_eq!(store.get_artifact(&loose.id).unwrap(), Some(loose.bytes.clone()));
    assert_eq!(store.head().unwrap(), head);
    // Both empty is a no-op.
    assert!(store.append_with_artifacts(Vec::new(), Vec::new()).unwrap().is_empty());
    assert_eq!(store.head().unwrap(), head);

    assert_eq!(store.get_artifact("sha256:0000").unwrap(), None);
    assert_eq!(store.get_artifact(&Artifact::from_bytes(b"never stored".to_vec()).id).unwrap(), None);

    // A mismatched artifact fails its call: neither it, nor the good artifact beside it, nor the
    // call's events are written.
    let before = read_all(store);
    let claimed = Artifact::from_bytes(b"what the id names".to_vec());
    let mismatched = Artifact { id: claimed.id.clone(), bytes: b"something else".to_vec() };
    let beside = Artifact::from_bytes(b"a good artifact in a bad call".to_vec());
    let refused = store.append_with_artifacts(vec![beside.clone(), mismatched], batch(4, 2, Some("w-art")));
    match refused {
        Err(StoreError::ArtifactMismatch { id }) => assert_eq!(id, claimed.id),
        other => panic!("expected ArtifactMismatch, got {other:?}"),
    }
    // An id that is not a sha256 address at all is a mismatch too.
    let unaddressed = Artifact { id: "manifest-1".into(), bytes: b"{}".to_vec() };
    assert!(matches!(
        store.append_with_artifacts(vec![unaddressed], Vec::new()),
        Err(StoreError::ArtifactMismatch { id }) if id == "manifest-1"
    ));
    assert_eq!(store.head().unwrap(), head);
    assert_eq!(read_all(store), before);
    assert_eq!(store.get_artifact(&claimed.id).unwrap(), None);
    assert_eq!(store.get_artifact(&beside.id).unwrap(), None);
    assert_eq!(store.get_artifact(&Artifact::from_bytes(b"something else".to_vec()).id).unwrap(), None);
    assert_eq!(store.get_artifact("manifest-1").unwrap(), None);

    // The store still appends after the refusal, with no gap.
    assert_eq!(seqs(&store.append(batch(4, 1, None)).unwrap()), vec![4]);
    assert_eq!(verify_chain(&read_all(store), GENESIS_HASH), Ok(()));
}

/// What [`corrupt_history_is_refused_and_changes_nothing`] needs of a backend beyond the port:
/// opening one journal again and again, and damaging it the way a bad disk would.
pub trait Damageable {
    type Store: Store;

    /// Opens the backend's one journal (empty the first time), running its check at open.
    fn open(&mut self) -> Result<Self::Store, StoreError>;

    /// With no store open: flips one bit in the stored bytes of committed event `seq` (its body,
    /// or whatever the backend's hash covers). Flipping the same event again restores it.
    fn flip_bit_in_event(&mut self, seq: u64);
}

/// A flipped bit in committed history, in the middle of the journal: open refuses with
/// [`StoreError::CorruptHistory`] naming that seq and what is stored from it, and changes
/// nothing — a second open refuses the same way (nothing was cut), and once the bit is flipped
/// back the journal opens with every event as it was and appends after the same head.
pub fn corrupt_history_is_refused_and_changes_nothing<B: Damageable>(backend: &mut B) {
    let written = {
        let store = backend.open().expect("open an empty journal");
        let mut written = store.append(batch(1, 10, Some("w-1"))).unwrap();
        written.extend(store.append(batch(11, 8, None)).unwrap());
        written
    };
    assert_eq!(seqs(&written), (1..=18).collect::<Vec<_>>());

    backend.flip_bit_in_event(17);
    for attempt in ["first", "second"] {
        match backend.open() {
            Err(StoreError::CorruptHistory { seq, reason, last_seq, n_from_seq, .. }) => {
                assert_eq!((seq, last_seq, n_from_seq), (17, 18, 2), "{attempt} open: {reason}");
                assert!(reason.contains("17"), "{attempt} open: the reason names the event: {reason}");
            }
            Err(other) => panic!("{attempt} open of a damaged journal: expected CorruptHistory, got {other}"),
            Ok(_) => panic!("{attempt} open of a journal with a flipped bit in event 17 succeeded"),
        }
    }

    backend.flip_bit_in_event(17);
    let store = backend.open().expect("the restored journal opens");
    assert_eq!(read_all(&store), written, "nothing was cut or changed by the refused opens");
    assert_eq!(store.head().unwrap(), head_of(&written));
    assert_eq!(store.append(batch(19, 1, None)).unwrap()[0].seq, 19);
}
