//! `warden events head|verify`: the journal's signed chain head, and the proof — online, or
//! offline on an export — that no event up to it was removed, altered or reordered.
//!
//! The checks themselves are `warden_store::chain` (`ChainVerifier`); this module fetches or
//! reads the events and the head, and decides which server key to trust: `--key`, `--key-file`,
//! or the one pinned for the server's address in `~/.config/warden/known_servers` on first use.
//! The key a head names is never trusted on its own: whoever altered the head could name theirs.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use warden_core::time::format_rfc3339_ms;
use warden_runtime::paths;
use warden_store::chain::parse_event_line;
use warden_store::{ChainVerifier, SignedHead, Verified};

use super::common::{Client, Output};

#[derive(Subcommand)]
pub(super) enum EventsAction {
    /// Print the journal's head (the last durable event's seq and hash), signed with the server
    /// key; `-o json` is what `warden events verify --head` reads.
    Head,
    /// Prove that no event up to the server's signed head was removed, altered or reordered:
    /// contiguous seqs, each prevhash the previous event's hash, the last event's hash the
    /// head's, and the head signed by the pinned server key. With --events and --head, checks an
    /// export with no server at all; with --backup, a backup (`warden backup FILE`).
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
pub(super) struct VerifyArgs {
    /// Verify an export instead of asking the server: the output of `warden events -o json`
    /// ("-" reads stdin). Needs --head and --key or --key-file.
    #[arg(long, value_name = "EVENTS.jsonl", requires = "head")]
    events: Option<PathBuf>,
    /// The signed head for --events: the output of `warden events head -o json`, taken before
    /// the events were exported (events after the head are reported, not covered).
    #[arg(long, value_name = "HEAD.json", requires = "events")]
    head: Option<PathBuf>,
    /// Verify a backup (`warden backup FILE`) instead: its chain up to its signed head, every
    /// artifact against its id, and its signed trailer. Needs --key or --key-file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["events", "head", "after"])]
    backup: Option<PathBuf>,
    /// The server key to trust: `ed25519:<hex>`, as in the server's <data-dir>/server.pub.
    #[arg(long, value_name = "ed25519:HEX", conflicts_with = "key_file")]
    key: Option<String>,
    /// A file holding the server key to trust: the server's <data-dir>/server.pub.
    #[arg(long, value_name = "server.pub")]
    key_file: Option<PathBuf>,
    /// The events start after this seq (an export made with `warden events --after N`); the
    /// chain from there is anchored by the signed head alone.
    #[arg(long, default_value_t = 0)]
    after: u64,
}

/// `warden events head`.
pub(super) fn print_head(client: &Client, output: Output) -> Result<()> {
    let head: SignedHead = client.json("GET", "/v1/events/head", None)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string(&head)?);
        return Ok(());
    }
    println!("seq:         {}", head.seq);
    println!("hash:        sha256:{}", head.hash);
    println!("server key:  {}", head.server_key);
    println!("signed at:   {}", format_rfc3339_ms(head.signed_at_ms));
    println!("signature:   {}", head.signature);
    Ok(())
}

/// Whether `args` verify an export (no server, no credential needed).
pub(super) fn is_offline(args: &VerifyArgs) -> bool {
    args.events.is_some() || args.backup.is_some()
}

/// `warden events verify --events E --head H --key-file K`: no server involved.
pub(super) fn verify_offline(args: VerifyArgs, output: Output) -> Result<()> {
    if let Some(backup) = &args.backup {
        // Without a key, says which one the backup claims and refuses to trust it on its own.
        return super::backup::verify_backup(backup, explicit_key(&args)?, output);
    }
    let (Some(events_path), Some(head_path)) = (&args.events, &args.head) else {
        bail!("offline verification needs both --events and --head");
    };
    let pinned = explicit_key(&args)?.ok_or_else(|| {
        anyhow!("offline verification needs the server key to trust: --key ed25519:<hex> or --key-file <data-dir>/server.pub")
    })?;
    let head_text =
        std::fs::read_to_string(head_path).with_context(|| format!("cannot read the signed head {}", head_path.display()))?;
    let head: SignedHead = serde_json::from_str(head_text.trim())
        .with_context(|| format!("{} is not a signed head (the output of `warden events head -o json`)", head_path.display()))?;
    let verifier = ChainVerifier::new(head, &pinned, args.after + 1).map_err(failed)?;
    let reader: Box<dyn Read> = if events_path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(events_path).with_context(|| format!("cannot read the events {}", events_path.display()))?)
    };
    let verified = verify_lines(reader, verifier, false)?;
    report(&verified, output)
}

/// `warden events verify` against the server at `client`: fetches the signed head, then every
/// event up to it.
pub(super) fn verify_online(client: &Client, args: VerifyArgs, output: Output) -> Result<()> {
    let head: SignedHead = client.json("GET", "/v1/events/head", None)?;
    let address = client.authority().to_string();
    let known_servers = paths::default_config_dir().join(paths::KNOWN_SERVERS_FILE);
    let (pinned, first_use) = match explicit_key(&args)? {
        Some(key) => (key, false),
        None => match known_key(&known_servers, &address)? {
            Some(known) if known == head.server_key => (known, false),
            Some(known) => bail!(
                "verification failed: the server at {address} signs with {}, but {} pins {known} for it; \
                 if its key was really replaced, check the new one against its <data-dir>/server.pub and remove the old line",
                head.server_key,
                known_servers.display()
            ),
            None => (head.server_key.clone(), true),
        },
    };
    let head_seq = head.seq;
    let verifier = ChainVerifier::new(head, &pinned, args.after + 1).map_err(failed)?;
    // Events journaled after the head was signed are not asked for: reading stops at the head.
    let response = client.stream(&format!("/v1/events?after={}", args.after))?;
    let verified = verify_lines(response, verifier, true)?;
    debug_assert_eq!(verified.head.seq, head_seq);
    if first_use {
        remember_key(&known_servers, &address, &pinned)?;
        eprintln!(
            "note: first verification against {address}: its server key {pinned} is now pinned in {}",
            known_servers.display()
        );
    }
    report(&verified, output)
}

/// Feeds every line of `reader` to `verifier` (blank lines skipped); with `stop_at_head`, stops
/// reading at the first event past the head.
fn verify_lines(reader: impl Read, mut verifier: ChainVerifier, stop_at_head: bool) -> Result<Verified> {
    let mut line_no = 0u64;
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading the events")?;
        line_no += 1;
        if line.trim().is_empty() {
            continue;
        }
        let event = parse_event_line(line_no, &line).map_err(failed)?;
        if stop_at_head && event.seq > verifier.head_seq() {
            break;
        }
        verifier.push(&event).map_err(failed)?;
    }
    verifier.finish().map_err(failed)
}

fn failed(error: warden_store::ChainError) -> anyhow::Error {
    anyhow!("verification failed: {error}")
}

fn report(verified: &Verified, output: Output) -> Result<()> {
    if output == Output::Json {
        let summary = serde_json::json!({
            "ok": true,
            "n_events": verified.n_events,
            "from_seq": verified.from_seq,
            "n_after_head": verified.n_after_head,
            "head": verified.head,
        });
        println!("{summary}");
    } else {
        println!("{verified}");
    }
    Ok(())
}

/// The key `--key` or `--key-file` names, if either was given.
fn explicit_key(args: &VerifyArgs) -> Result<Option<String>> {
    if let Some(key) = &args.key {
        return Ok(Some(key.trim().to_string()));
    }
    let Some(path) = &args.key_file else { return Ok(None) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the server key {}", path.display()))?;
    let key = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .and_then(|line| line.split_whitespace().next())
        .ok_or_else(|| anyhow!("{} holds no key: expected one line `ed25519:<hex>` (a server's server.pub)", path.display()))?;
    Ok(Some(key.to_string()))
}

/// The key pinned for `address` in `known_servers` (`<address> ed25519:<hex>` per line).
fn known_key(known_servers: &Path, address: &str) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(known_servers) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", known_servers.display())),
    };
    Ok(text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(address)).then(|| words.next().map(str::to_owned)).flatten()
    }))
}

fn remember_key(known_servers: &Path, address: &str, key: &str) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = known_servers.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(known_servers)
        .with_context(|| format!("cannot write {}", known_servers.display()))?;
    writeln!(file, "{address} {key}").with_context(|| format!("cannot write {}", known_servers.display()))?;
    Ok(())
}
