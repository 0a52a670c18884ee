//! Hash-chain checks: over events in memory (`verify_chain`), over stored rows at open
//! (`check_row`, walked by `history`), and against the server's signed chain head (`SignedHead`, `ChainVerifier`):
//! what `warden events verify` runs, online or on an export, with no server at all.
//!
//! **What the signature covers.** The server signs `head_message(seq, hash, signed_at_ms)`:
//!
//! ```text
//! warden-chain-head/v1\n<seq>\n<hash>\n<signed_at_ms>
//! ```
//!
//! with its Ed25519 key (`<data-dir>/server.key`), where `seq` and `hash` are the last durable
//! event's (`hash` = sha256 of its canonical bytes, the next event's `prevhash`; an empty
//! journal is seq 0 and `GENESIS_HASH`). The first line keeps the signature from meaning
//! anything else (a signed request's message starts with an HTTP method). Because every event
//! names its predecessor's hash, that one signature covers every event from 1 to `seq`: a
//! verifier that walks the events and arrives at `hash` knows that none was removed, altered,
//! reordered or cut off at the end since the server signed. It does not prove that the server
//! never rewrote history *before* signing (a server holding its key can sign any chain it
//! likes; pin and compare heads over time for that), nor anything about events after `seq`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use warden_core::canonical::sha256_hex;
use warden_core::event::GENESIS_HASH;
use warden_core::time::format_rfc3339_ms;
use warden_core::CloudEvent;

use crate::port::Head;

/// The first line of every signed head message: what the signature is for, and its version.
pub const HEAD_SIGNATURE_CONTEXT: &str = "warden-chain-head/v1";

/// The bytes the server signs for a head: `warden-chain-head/v1\n{seq}\n{hash}\n{signed_at_ms}`.
pub fn head_message(seq: u64, hash: &str, signed_at_ms: u64) -> String {
    format!("{HEAD_SIGNATURE_CONTEXT}\n{seq}\n{hash}\n{signed_at_ms}")
}

/// The journal's head as the server attests it (`GET /v1/events/head`, `warden events head`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// `seq` of the last durable event; 0 for an empty journal.
    pub seq: u64,
    /// Hex SHA-256 of that event's canonical bytes; `GENESIS_HASH` for an empty journal.
    pub hash: String,
    /// `ed25519:<hex>`: the server key that signed (a verifier pins its own copy).
    pub server_key: String,
    /// Hex Ed25519 signature over [`head_message`]`(seq, hash, signed_at_ms)`.
    pub signature: String,
    /// When the server signed, by its clock (Unix ms); covered by the signature.
    pub signed_at_ms: u64,
}

impl SignedHead {
    /// Signs `head` as of `signed_at_ms` with the server's key.
    pub fn sign(head: &Head, signed_at_ms: u64, key: &SigningKey) -> SignedHead {
        let signature = key.sign(head_message(head.seq, &head.hash, signed_at_ms).as_bytes());
        SignedHead {
            seq: head.seq,
            hash: head.hash.clone(),
            server_key: principal_of(&key.verifying_key()),
            signature: hex::encode(signature.to_bytes()),
            signed_at_ms,
        }
    }

    /// Checks that the head is signed by `pinned_key` (`ed25519:<hex>`) — never merely by the
    /// key the head itself names, which anyone who altered it could have replaced.
    pub fn verify_signature(&self, pinned_key: &str) -> Result<(), ChainError> {
        let pinned = parse_principal(pinned_key).ok_or_else(|| ChainError::BadPinnedKey { key: pinned_key.to_string() })?;
        let claimed = parse_principal(&self.server_key).ok_or_else(|| {
            ChainError::MalformedHead(format!("server_key {:?} is not ed25519:<64 hex digits>", self.server_key))
        })?;
        if claimed != pinned {
            return Err(ChainError::WrongKey { signed_by: self.server_key.clone(), pinned: pinned_key.to_string() });
        }
        let signature: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| ChainError::MalformedHead("signature is not 128 hex digits".into()))?;
        pinned
            .verify_strict(head_message(self.seq, &self.hash, self.signed_at_ms).as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| ChainError::BadSignature)
    }
}

/// `ed25519:<hex public key>`, as principals are written everywhere in warden.
fn principal_of(key: &VerifyingKey) -> String {
    format!("ed25519:{}", hex::encode(key.as_bytes()))
}

pub(crate) fn parse_principal(principal: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(principal.trim().strip_prefix("ed25519:")?).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Why a chain of events (or an export of one) does not verify. Each message names the event
/// and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("line {line}: not an event: {reason}")]
    NotAnEvent { line: u64, reason: String },

    /// The line parses, but re-serializing it does not give the same bytes: the hash covers the
    /// canonical bytes, so a line with extra fields, reordered keys or spaces is not what the
    /// server hashed.
    #[error("line {line} (event {seq}): not in canonical form (compact JSON, sorted keys, nothing extra), so it is not what was hashed")]
    NotCanonical { line: u64, seq: u64 },

    #[error("the events start at seq {found}, not {expected}: {} missing at the start", n_events_text(found - expected))]
    MissingAtStart { expected: u64, found: u64 },

    #[error("the events start at seq {found}, before {expected}")]
    StartsBefore { expected: u64, found: u64 },

    #[error("{}: event {after} is followed by event {next}", missing_text(*after, *next))]
    Missing { after: u64, next: u64 },

    #[error("events {first} and {second} are out of order: event {first} comes before event {second}")]
    OutOfOrder { first: u64, second: u64 },

    #[error("event {seq} comes after event {after}: repeated or out of order")]
    Backwards { seq: u64, after: u64 },

    #[error("{}", prevhash_mismatch_text(*seq))]
    PrevhashMismatch { seq: u64 },

    #[error("event {seq}: its hash is sha256:{hash} but the signed head says sha256:{head_hash}: event {seq} was altered, or is not the event the server signed")]
    HeadHashMismatch { seq: u64, hash: String, head_hash: String },

    #[error("the signed head is seq {head_seq} but {}: {} missing at the end", ends_text(*last_seq), n_events_text(head_seq - last_seq.unwrap_or(from_seq - 1)))]
    MissingAtEnd { head_seq: u64, last_seq: Option<u64>, from_seq: u64 },

    #[error("the signed head is seq {head_seq}, before the first event to verify ({from_seq})")]
    HeadBeforeStart { head_seq: u64, from_seq: u64 },

    #[error("the signed head is seq 0 but its hash is not the genesis hash")]
    GenesisHashMismatch,

    #[error("the signed head is malformed: {0}")]
    MalformedHead(String),

    #[error("{key:?} is not a server key: expected ed25519:<64 hex digits> (the line in <data-dir>/server.pub)")]
    BadPinnedKey { key: String },

    #[error("the head is signed by {signed_by}, not by the pinned server key {pinned}")]
    WrongKey { signed_by: String, pinned: String },

    #[error(
        "bad signature: the signed head's seq, hash or time was altered after signing, or the signature is not the server key's"
    )]
    BadSignature,
}

fn n_events_text(n: u64) -> String {
    if n == 1 {
        "1 event".into()
    } else {
        format!("{n} events")
    }
}

fn missing_text(after: u64, next: u64) -> String {
    if next == after + 2 {
        format!("event {} is missing", after + 1)
    } else {
        format!("events {}..{} are missing", after + 1, next - 1)
    }
}

fn ends_text(last_seq: Option<u64>) -> String {
    match last_seq {
        Some(last) => format!("the events end at {last}"),
        None => "there are no events".into(),
    }
}

fn prevhash_mismatch_text(seq: u64) -> String {
    if seq <= 1 {
        format!("event {seq}: prevhash is not the genesis hash")
    } else {
        format!("event {seq}: prevhash does not match event {}'s hash", seq - 1)
    }
}

/// One line of an export (`warden events -o json`: one CloudEvent per line, `line` from 1),
/// which must be exactly the event's canonical bytes: anything else is not what was hashed.
pub fn parse_event_line(line: u64, text: &str) -> Result<CloudEvent, ChainError> {
    let event: CloudEvent = serde_json::from_str(text).map_err(|e| ChainError::NotAnEvent { line, reason: e.to_string() })?;
    if event.canonical_bytes() != text.as_bytes() {
        return Err(ChainError::NotCanonical { line, seq: event.seq });
    }
    Ok(event)
}

/// A seq that was not the expected one, judged once the event after it is seen: if that one
/// is the expected seq, the two were swapped; otherwise events are missing.
#[derive(Clone, Copy, Debug)]
struct Gap {
    expected: u64,
    found: u64,
    /// The event before the gap; `None` at the start.
    after: Option<u64>,
}

impl Gap {
    fn judge(self, next_seq: Option<u64>) -> ChainError {
        match (next_seq, self.after) {
            (Some(next), _) if next == self.expected => ChainError::OutOfOrder { first: self.found, second: self.expected },
            (_, Some(after)) => ChainError::Missing { after, next: self.found },
            (_, None) => ChainError::MissingAtStart { expected: self.expected, found: self.found },
        }
    }
}

/// The links of a chain walked one event at a time: consecutive `seq`s from `first_seq`, each
/// `prevhash` the hash of the event before it (the first's, if known, `first_prevhash`).
struct Links {
    next_seq: u64,
    prev_hash: Option<String>,
    last_seq: Option<u64>,
    gap: Option<Gap>,
}

impl Links {
    fn new(first_seq: u64, first_prevhash: Option<String>) -> Links {
        Links { next_seq: first_seq, prev_hash: first_prevhash, last_seq: None, gap: None }
    }

    /// Checks `event` against the chain so far; its hash, or `None` while a gap awaits
    /// judgement (the next call or `finish` reports it).
    fn push(&mut self, event: &CloudEvent) -> Result<Option<String>, ChainError> {
        if let Some(gap) = self.gap.take() {
            return Err(gap.judge(Some(event.seq)));
        }
        if event.seq > self.next_seq {
            self.gap = Some(Gap { expected: self.next_seq, found: event.seq, after: self.last_seq });
            return Ok(None);
        }
        if event.seq < self.next_seq {
            return Err(match self.last_seq {
                Some(after) => ChainError::Backwards { seq: event.seq, after },
                None => ChainError::StartsBefore { expected: self.next_seq, found: event.seq },
            });
        }
        if self.prev_hash.as_ref().is_some_and(|prev| *prev != event.prevhash) {
            return Err(ChainError::PrevhashMismatch { seq: event.seq });
        }
        let hash = event.hash();
        self.prev_hash = Some(hash.clone());
        self.last_seq = Some(event.seq);
        self.next_seq = event.seq + 1;
        Ok(Some(hash))
    }

    fn finish(&mut self) -> Result<(), ChainError> {
        match self.gap.take() {
            Some(gap) => Err(gap.judge(None)),
            None => Ok(()),
        }
    }
}

/// Checks that `events` continue a chain whose last hash is `prev_hash`: each event's
/// `prevhash` is the hash of the one before it (the first's is `prev_hash`) and their `seq`s
/// are consecutive. Says which event broke the chain, and how.
pub fn verify_chain(events: &[CloudEvent], prev_hash: &str) -> Result<(), ChainError> {
    let Some(first) = events.first() else { return Ok(()) };
    let mut links = Links::new(first.seq, Some(prev_hash.to_string()));
    for event in events {
        links.push(event)?;
    }
    links.finish()
}

/// What a successful verification proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The head the events were checked against (its signature by the pinned key included).
    pub head: SignedHead,
    /// The first seq verified: 1 for the whole journal.
    pub from_seq: u64,
    /// Events from `from_seq` to `head.seq`, all verified.
    pub n_events: u64,
    /// Events after the head: they continue the chain, but no signature covers them.
    pub n_after_head: u64,
}

impl std::fmt::Display for Verified {
    /// `ok: 1234 events, seq 1..1234, head sha256:… signed by ed25519:… at 2026-…Z`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ok: {}", n_events_text(self.n_events))?;
        if self.n_events > 0 {
            write!(f, ", seq {}..{}", self.from_seq, self.head.seq)?;
        }
        write!(
            f,
            ", head sha256:{} signed by {} at {}",
            self.head.hash,
            self.head.server_key,
            format_rfc3339_ms(self.head.signed_at_ms)
        )?;
        if self.n_after_head > 0 {
            write!(
                f,
                "; {} after it (seq {}..{}) not covered by this head",
                n_events_text(self.n_after_head),
                self.head.seq + 1,
                self.head.seq + self.n_after_head
            )?;
        }
        Ok(())
    }
}

/// Verifies events against a signed head, one event at a time (an export of millions of
/// events need not fit in memory): `new` checks the head's signature by the pinned key, `push`
/// each event in order, `finish` says what was proved.
///
/// The events must start at `from_seq` (1: the whole journal, whose first event must point at
/// the genesis hash). From a later seq, the first event's `prevhash` cannot be checked, but
/// the chain is still anchored: each event's hash is what the next one names, up to the
/// signed head. Events after the head must continue the chain and are counted, not covered.
pub struct ChainVerifier {
    head: SignedHead,
    from_seq: u64,
    links: Links,
    n_events: u64,
    n_after_head: u64,
}

impl ChainVerifier {
    pub fn new(head: SignedHead, pinned_key: &str, from_seq: u64) -> Result<ChainVerifier, ChainError> {
        let from_seq = from_seq.max(1);
        head.verify_signature(pinned_key)?;
        if head.seq == 0 && head.hash != GENESIS_HASH {
            return Err(ChainError::GenesisHashMismatch);
        }
        if head.seq + 1 < from_seq {
            return Err(ChainError::HeadBeforeStart { head_seq: head.seq, from_seq });
        }
        let first_prevhash = (from_seq == 1).then(|| GENESIS_HASH.to_string());
        Ok(ChainVerifier { head, from_seq, links: Links::new(from_seq, first_prevhash), n_events: 0, n_after_head: 0 })
    }

    /// The signed head's seq: the last event the signature covers.
    pub fn head_seq(&self) -> u64 {
        self.head.seq
    }

    pub fn push(&mut self, event: &CloudEvent) -> Result<(), ChainError> {
        let Some(hash) = self.links.push(event)? else { return Ok(()) };
        if event.seq > self.head.seq {
            self.n_after_head += 1;
            return Ok(());
        }
        if event.seq == self.head.seq && hash != self.head.hash {
            return Err(ChainError::HeadHashMismatch { seq: event.seq, hash, head_hash: self.head.hash.clone() });
        }
        self.n_events += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<Verified, ChainError> {
        self.links.finish()?;
        let last_seq = self.links.last_seq;
        if last_seq.unwrap_or(self.from_seq - 1) < self.head.seq {
            return Err(ChainError::MissingAtEnd { head_seq: self.head.seq, last_seq, from_seq: self.from_seq });
        }
        Ok(Verified { head: self.head, from_seq: self.from_seq, n_events: self.n_events, n_after_head: self.n_after_head })
    }
}

/// `events` (from `from_seq`) against `head`, signed by `pinned_key`: see [`ChainVerifier`].
pub fn verify_signed_chain(
    events: &[CloudEvent],
    head: &SignedHead,
    pinned_key: &str,
    from_seq: u64,
) -> Result<Verified, ChainError> {
    let mut verifier = ChainVerifier::new(head.clone(), pinned_key, from_seq)?;
    for event in events {
        verifier.push(event)?;
    }
    verifier.finish()
}

/// Why a stored row is not the event the chain needs next. Its message is the `reason` of
/// `StoreError::CorruptHistory` and of an operator's repair, which is journaled
/// (`journal.repaired`; `journal.recovered` before it), so the wording stays as it was.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokenRow {
    #[error("gap: expected {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
    #[error("event {seq}: hash mismatch")]
    HashMismatch { seq: u64 },
    #[error("event {seq}: subject is not UTF-8")]
    SubjectNotUtf8 { seq: u64 },
    #[error("event {seq}: subject is not text")]
    SubjectNotText { seq: u64 },
    #[error("event {seq}: body is not a blob")]
    BodyNotBlob { seq: u64 },
    #[error("event {seq}: body is not an event")]
    NotAnEvent {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("event {seq}: body says seq {body_seq}")]
    WrongSeq { seq: u64, body_seq: u64 },
    #[error("{}", row_prevhash_mismatch_text(*seq))]
    PrevhashMismatch { seq: u64 },
    #[error("event {seq}: body is not in canonical form")]
    NotCanonical { seq: u64 },
    #[error("event {seq}: subject column does not match the body")]
    SubjectMismatch { seq: u64 },
}

impl BrokenRow {
    /// The message followed by its source, if any (`event 7: body is not an event: EOF while
    /// parsing…`): the `reason` an operator reads and a repair records.
    pub(crate) fn reason(&self) -> String {
        match std::error::Error::source(self) {
            Some(source) => format!("{self}: {source}"),
            None => self.to_string(),
        }
    }
}

/// Stored rows keep their wording, which differs from [`ChainError::PrevhashMismatch`]'s:
/// reasons are journaled by repairs.
fn row_prevhash_mismatch_text(seq: u64) -> String {
    if seq <= 1 {
        format!("event {seq}: prevhash is not the genesis hash")
    } else {
        format!("event {seq}: prevhash does not match event {}", seq - 1)
    }
}

/// One stored row, as read back at open.
pub(crate) struct StoredRow<'a> {
    pub seq: u64,
    pub subject: Option<&'a str>,
    pub hash: &'a str,
    pub body: &'a [u8],
}

/// Checks that `row` is the event that must come next after (`expected_seq - 1`, `prev_hash`).
///
/// Every way a row can be wrong is checked, because the chain is only as strong as its weakest
/// link: the stored hash must cover the body, the body must be the canonical form of an event
/// that says it is this `seq` and points at the previous hash, and the `subject` column (which
/// filtered reads use) must agree with the body.
pub(crate) fn check_row(expected_seq: u64, prev_hash: &str, row: &StoredRow) -> Result<(), BrokenRow> {
    let seq = row.seq;
    if seq != expected_seq {
        return Err(BrokenRow::Gap { expected: expected_seq, found: seq });
    }
    if sha256_hex(row.body) != row.hash {
        return Err(BrokenRow::HashMismatch { seq });
    }
    let event: CloudEvent = serde_json::from_slice(row.body).map_err(|source| BrokenRow::NotAnEvent { seq, source })?;
    if event.seq != seq {
        return Err(BrokenRow::WrongSeq { seq, body_seq: event.seq });
    }
    if event.prevhash != prev_hash {
        return Err(BrokenRow::PrevhashMismatch { seq });
    }
    // A body can parse and hash correctly yet not be what `seal` produced (reordered keys,
    // unknown fields, whitespace); then its hash is not the event's hash and the chain lies.
    if event.canonical_bytes() != row.body {
        return Err(BrokenRow::NotCanonical { seq });
    }
    if event.subject.as_deref() != row.subject {
        return Err(BrokenRow::SubjectMismatch { seq });
    }
    Ok(())
}

/// Why an event stored as its canonical bytes alone is not the event the chain needs next: see
/// [`check_stored_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenEvent {
    /// The seq the chain needed (a missing event's seq, for a gap).
    pub seq: u64,
    /// What is wrong, worded as for a SQLite row (`event 17: body is not an event: …`).
    pub reason: String,
    /// The body is a well-formed event whose `prevhash` is not the previous event's hash: then
    /// either this event or the previous one was changed, and only the next event's `prevhash`
    /// (or the head) can tell which.
    pub prevhash_mismatch: bool,
}

/// The backend-independent check of one stored event, for a backend that keeps each event as its
/// canonical bytes alone (no separate hash or subject column: etcd keeps one key per event):
/// `body`, stored under `seq`, must be the event that comes after (`expected_seq - 1`,
/// `prev_hash`) — the same checks [`check_row`] runs on a SQLite row, with the hash computed from
/// the body. Returns the event's hash, the next event's `prevhash`.
///
/// A body changed in a way that still parses (a flipped bit inside a string) passes its own check:
/// the hash is computed, not stored. The next event's `prevhash` (or, for the last event, the
/// backend's head) is what catches it; [`BrokenEvent::prevhash_mismatch`] says when to look there.
pub fn check_stored_event(expected_seq: u64, prev_hash: &str, seq: u64, body: &[u8]) -> Result<String, BrokenEvent> {
    let hash = sha256_hex(body);
    // The subject is the body's own: there is no column to disagree with it.
    let subject = serde_json::from_slice::<CloudEvent>(body).ok().and_then(|event| event.subject);
    let row = StoredRow { seq, subject: subject.as_deref(), hash: &hash, body };
    match check_row(expected_seq, prev_hash, &row) {
        Ok(()) => Ok(hash),
        Err(broken) => Err(BrokenEvent {
            seq: expected_seq,
            reason: broken.reason(),
            prevhash_mismatch: matches!(broken, BrokenRow::PrevhashMismatch { .. }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::{EventData, NewEvent};

    fn chain(n: u64) -> Vec<CloudEvent> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let new = NewEvent {
                    id: format!("e{seq}"),
                    source: "/test".into(),
                    time_ms: seq,
                    subject: Some("w".into()),
                    data: EventData::WorkloadCompleted { workload_id: "w".into() },
                };
                let event = CloudEvent::seal(&new, seq, &prev);
                prev = event.hash();
                event
            })
            .collect()
    }

    #[test]
    fn a_stored_event_is_checked_as_a_row_with_its_hash_computed() {
        let events = chain(3);
        let bodies: Vec<Vec<u8>> = events.iter().map(CloudEvent::canonical_bytes).collect();
        assert_eq!(check_stored_event(2, &events[0].hash(), 2, &bodies[1]), Ok(events[1].hash()));
        // A gap names the seq that is missing.
        let gap = check_stored_event(2, &events[0].hash(), 3, &bodies[2]).unwrap_err();
        assert_eq!((gap.seq, gap.reason.as_str(), gap.prevhash_mismatch), (2, "gap: expected 2, found 3", false));
        // Event 3 after a changed event 2: a prevhash mismatch, flagged for the next link to judge.
        let wrong = check_stored_event(3, &events[0].hash(), 3, &bodies[2]).unwrap_err();
        assert_eq!((wrong.seq, wrong.prevhash_mismatch), (3, true));
        assert_eq!(wrong.reason, "event 3: prevhash does not match event 2");
        // A body that is not canonical (extra whitespace) is refused, as in a SQLite row.
        let mut spaced = b" ".to_vec();
        spaced.extend_from_slice(&bodies[0]);
        let not_canonical = check_stored_event(1, GENESIS_HASH, 1, &spaced).unwrap_err();
        assert_eq!(not_canonical.reason, "event 1: body is not in canonical form");
    }

    #[test]
    fn accepts_a_sealed_chain_and_its_suffixes() {
        let events = chain(5);
        assert_eq!(verify_chain(&events, GENESIS_HASH), Ok(()));
        assert_eq!(verify_chain(&events[2..], &events[1].hash()), Ok(()));
        assert_eq!(verify_chain(&[], "anything"), Ok(()));
    }

    #[test]
    fn names_the_broken_link() {
        let mut events = chain(5);
        assert_eq!(
            verify_chain(&events, &events[0].hash()).unwrap_err().to_string(),
            "event 1: prevhash is not the genesis hash"
        );
        events[2].id = "tampered".into();
        assert_eq!(
            verify_chain(&events, GENESIS_HASH).unwrap_err().to_string(),
            "event 4: prevhash does not match event 3's hash"
        );
        let mut events = chain(5);
        events.remove(2);
        assert_eq!(
            verify_chain(&events, GENESIS_HASH).unwrap_err().to_string(),
            "event 3 is missing: event 2 is followed by event 4"
        );
        let mut events = chain(5);
        events.drain(1..3);
        assert_eq!(
            verify_chain(&events, GENESIS_HASH).unwrap_err().to_string(),
            "events 2..3 are missing: event 1 is followed by event 4"
        );
        let mut events = chain(5);
        events.swap(2, 3);
        assert_eq!(
            verify_chain(&events, GENESIS_HASH).unwrap_err().to_string(),
            "events 4 and 3 are out of order: event 4 comes before event 3"
        );
    }

    /// A fixed key, so the tests need no randomness.
    fn server_key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn head_of(events: &[CloudEvent], key: &SigningKey) -> SignedHead {
        let head = events.last().map_or_else(Head::genesis, |e| Head { seq: e.seq, hash: e.hash() });
        SignedHead::sign(&head, 1_790_000_000_000, key)
    }

    fn pinned() -> String {
        principal_of(&server_key().verifying_key())
    }

    fn verify(events: &[CloudEvent], head: &SignedHead) -> Result<Verified, ChainError> {
        verify_signed_chain(events, head, &pinned(), 1)
    }

    /// Why `events` do not verify against `head`, as a user reads it.
    fn refusal(events: &[CloudEvent], head: &SignedHead) -> String {
        verify(events, head).unwrap_err().to_string()
    }

    /// Why `check_row` refuses `row`, as an operator reads it; `None` if it accepts it.
    fn refused_row(expected_seq: u64, prev_hash: &str, row: &StoredRow) -> Option<String> {
        check_row(expected_seq, prev_hash, row).err().map(|broken| broken.reason())
    }

    #[test]
    fn a_good_chain_verifies_against_its_signed_head() {
        let events = chain(5);
        let head = head_of(&events, &server_key());
        let verified = verify(&events, &head).unwrap();
        assert_eq!((verified.n_events, verified.from_seq, verified.n_after_head), (5, 1, 0));
        assert_eq!(
            verified.to_string(),
            format!(
                "ok: 5 events, seq 1..5, head sha256:{} signed by {} at 2026-09-21T14:13:20.000Z",
                events[4].hash(),
                pinned()
            )
        );
        // An empty journal: seq 0, the genesis hash.
        let empty = head_of(&[], &server_key());
        assert_eq!((empty.seq, empty.hash.as_str()), (0, GENESIS_HASH));
        assert_eq!(verify(&[], &empty).unwrap().n_events, 0);
        // A suffix verifies from its first seq: each event is anchored by the next, up to the head.
        let suffix = verify_signed_chain(&events[2..], &head, &pinned(), 3).unwrap();
        assert_eq!((suffix.n_events, suffix.from_seq), (3, 3));
        assert_eq!(
            verify_signed_chain(&events[2..], &head, &pinned(), 1).unwrap_err().to_string(),
            "the events start at seq 3, not 1: 2 events missing at the start"
        );
        // Events after the head continue the chain, and are said not to be covered.
        let older = head_of(&events[..3], &server_key());
        let verified = verify(&events, &older).unwrap();
        assert_eq!((verified.n_events, verified.n_after_head), (3, 2));
        assert!(verified.to_string().ends_with("; 2 events after it (seq 4..5) not covered by this head"), "{verified}");
    }

    #[test]
    fn an_altered_event_fails() {
        let mut events = chain(5);
        let head = head_of(&events, &server_key());
        events[2].data = serde_json::json!({"workload_id": "x"});
        assert_eq!(refusal(&events, &head), "event 4: prevhash does not match event 3's hash");
        // The last event has no successor: the signed head is what catches it.
        let mut events = chain(5);
        events[4].time = "2020-01-01T00:00:00.000Z".into();
        let altered = events[4].hash();
        assert_eq!(
            refusal(&events, &head),
            format!(
                "event 5: its hash is sha256:{altered} but the signed head says sha256:{}: event 5 was altered, or is not the event the server signed",
                head.hash
            )
        );
        // Rewriting prevhashes to hide a change moves the breakage down to the head.
        let mut events = chain(5);
        events[1].id = "forged".into();
        for i in 2..5 {
            events[i].prevhash = events[i - 1].hash();
        }
        assert!(refusal(&events, &head).starts_with("event 5: its hash is"));
    }

    #[test]
    fn a_removed_middle_event_fails() {
        let mut events = chain(5);
        let head = head_of(&events, &server_key());
        events.remove(2);
        assert_eq!(refusal(&events, &head), "event 3 is missing: event 2 is followed by event 4");
        // Renumbering to hide the gap breaks the hashes instead.
        for (i, event) in events.iter_mut().enumerate() {
            event.seq = i as u64 + 1;
        }
        assert_eq!(refusal(&events, &head), "event 3: prevhash does not match event 2's hash");
        let mut events = chain(5);
        events.remove(0);
        assert_eq!(refusal(&events, &head), "the events start at seq 2, not 1: 1 event missing at the start");
    }

    #[test]
    fn a_truncated_tail_fails() {
        let events = chain(5);
        let head = head_of(&events, &server_key());
        assert_eq!(refusal(&events[..3], &head), "the signed head is seq 5 but the events end at 3: 2 events missing at the end");
        assert_eq!(refusal(&[], &head), "the signed head is seq 5 but there are no events: 5 events missing at the end");
    }

    #[test]
    fn a_reordered_pair_fails() {
        let mut events = chain(5);
        let head = head_of(&events, &server_key());
        events.swap(1, 2);
        assert_eq!(refusal(&events, &head), "events 3 and 2 are out of order: event 3 comes before event 2");
        // Swapping the seqs back into order too leaves the hashes out of order.
        events[1].seq = 2;
        events[2].seq = 3;
        assert_eq!(refusal(&events, &head), "event 2: prevhash does not match event 1's hash");
        let mut events = chain(5);
        events.swap(0, 1);
        assert_eq!(refusal(&events, &head), "events 2 and 1 are out of order: event 2 comes before event 1");
        let mut events = chain(5);
        events.insert(3, events[2].clone());
        assert_eq!(refusal(&events, &head), "event 3 comes after event 3: repeated or out of order");
    }

    #[test]
    fn a_head_signed_by_another_key_fails() {
        let events = chain(5);
        let other = SigningKey::from_bytes(&[9; 32]);
        let forged = head_of(&events, &other);
        assert_eq!(
            refusal(&events, &forged),
            format!("the head is signed by {}, not by the pinned server key {}", forged.server_key, pinned())
        );
        // Naming the pinned key does not help: the signature is still the other key's.
        let claimed = SignedHead { server_key: pinned(), ..forged };
        assert!(refusal(&events, &claimed).starts_with("bad signature"));
        assert_eq!(
            verify_signed_chain(&events, &claimed, "ed25519:nothex", 1).unwrap_err().to_string(),
            "\"ed25519:nothex\" is not a server key: expected ed25519:<64 hex digits> (the line in <data-dir>/server.pub)"
        );
    }

    #[test]
    fn a_tampered_signature_or_head_fails() {
        let events = chain(5);
        let head = head_of(&events, &server_key());
        let mut tampered = head.clone();
        let flipped = if tampered.signature.starts_with('0') { "1" } else { "0" };
        tampered.signature.replace_range(0..1, flipped);
        assert!(refusal(&events, &tampered).starts_with("bad signature"));
        // The time is covered as well as the seq and hash.
        let later = SignedHead { signed_at_ms: head.signed_at_ms + 1, ..head.clone() };
        assert!(refusal(&events, &later).starts_with("bad signature"));
        let shorter = SignedHead { seq: 3, hash: events[2].hash(), ..head.clone() };
        assert!(refusal(&events[..3], &shorter).starts_with("bad signature"));
        let cut = SignedHead { signature: "abcd".into(), ..head };
        assert_eq!(refusal(&events, &cut), "the signed head is malformed: signature is not 128 hex digits");
    }

    #[test]
    fn export_lines_must_be_the_canonical_bytes() {
        let events = chain(2);
        let line = String::from_utf8(events[1].canonical_bytes()).unwrap();
        assert_eq!(parse_event_line(2, &line), Ok(events[1].clone()));
        let extra = line.replacen('{', "{\"extra\":1,", 1);
        assert_eq!(
            parse_event_line(2, &extra).unwrap_err().to_string(),
            "line 2 (event 2): not in canonical form (compact JSON, sorted keys, nothing extra), so it is not what was hashed"
        );
        let spaced = serde_json::to_string_pretty(&events[1]).unwrap().replace('\n', " ");
        assert!(matches!(parse_event_line(2, &spaced), Err(ChainError::NotCanonical { line: 2, seq: 2 })));
        assert!(parse_event_line(7, &line[..line.len() - 1]).unwrap_err().to_string().starts_with("line 7: not an event: "));
    }

    #[test]
    fn check_row_catches_each_kind_of_damage() {
        let events = chain(2);
        let body = events[1].canonical_bytes();
        let hash = sha256_hex(&body);
        let prev = events[0].hash();
        let good = StoredRow { seq: 2, subject: Some("w"), hash: &hash, body: &body };
        assert_eq!(refused_row(2, &prev, &good), None);
        assert_eq!(refused_row(1, &prev, &good), Some("gap: expected 1, found 2".into()));
        assert_eq!(refused_row(2, GENESIS_HASH, &good), Some("event 2: prevhash does not match event 1".into()));
        let wrong_subject = StoredRow { subject: None, ..good };
        assert_eq!(refused_row(2, &prev, &wrong_subject), Some("event 2: subject column does not match the body".into()));

        let mut flipped = body.clone();
        flipped[10] ^= 1;
        let row = StoredRow { seq: 2, subject: Some("w"), hash: &hash, body: &flipped };
        assert_eq!(refused_row(2, &prev, &row), Some("event 2: hash mismatch".into()));

        // Pretty-printed: same event, valid hash of the bytes, but not the canonical bytes.
        let pretty = serde_json::to_vec_pretty(&events[1]).unwrap();
        let pretty_hash = sha256_hex(&pretty);
        let row = StoredRow { seq: 2, subject: Some("w"), hash: &pretty_hash, body: &pretty };
        assert_eq!(refused_row(2, &prev, &row), Some("event 2: body is not in canonical form".into()));

        let torn = &body[..body.len() / 2];
        let torn_hash = sha256_hex(torn);
        let row = StoredRow { seq: 2, subject: Some("w"), hash: &torn_hash, body: torn };
        assert!(refused_row(2, &prev, &row).unwrap().starts_with("event 2: body is not an event"));
    }
}
