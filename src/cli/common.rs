//! What every `warden` subcommand shares: the signed client (the workspace's one HTTP client,
//! blocking, with the server's answers turned into messages for people), `-o table|json`, and
//! the small formatting helpers tables and paths need.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::ValueEnum;
use warden_core::fingerprint::Fingerprint;
use warden_runtime::auth::Identity;
use warden_runtime::client::{BlockingClient, BlockingResponse, ClientConfig, HttpError, ServerAddress, ServerTrust};
use warden_runtime::{paths, tls};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// The CLI's signed requests: the workspace's one client (`warden_runtime::client`), blocking,
/// with what the server says turned into messages for people.
pub struct Client {
    http: BlockingClient,
}

impl Client {
    pub fn new(addr: &str, credential: Option<PathBuf>, ca: Option<PathBuf>) -> Result<Client> {
        let path = credential.unwrap_or_else(|| paths::default_config_dir().join(paths::ADMIN_CREDENTIAL_FILE));
        let identity =
            Identity::load(&path).with_context(|| "no credential; `warden up` creates one on its first start".to_string())?;
        let address = ServerAddress::parse(addr)
            .context("set --addr or WARDEN_ADDR to HOST[:PORT], https://HOST[:PORT] or http://HOST[:PORT]")?;
        let trust = match ca {
            _ if !address.tls() => ServerTrust::Nobody,
            Some(ca) => ServerTrust::ca_file(&ca).with_context(|| format!("--ca {}", ca.display()))?,
            None => ServerTrust::Pinned(pin_for(&address)?),
        };
        let http = BlockingClient::new(addr, Arc::new(identity), &ClientConfig { trust, ..ClientConfig::default() })
            .context("set --addr or WARDEN_ADDR to HOST[:PORT], https://HOST[:PORT] or http://HOST[:PORT]")?;
        Ok(Client { http })
    }

    /// The server's `host:port`.
    pub fn authority(&self) -> &str {
        self.http.client().address().authority()
    }

    /// Sends a signed request; a 2xx answer's body, or the server's message as the error.
    pub fn call(&self, method: &str, path_and_query: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
        let (_, answer) = self.http.call(method, path_and_query, body.unwrap_or_default(), None).map_err(explain)?;
        Ok(answer)
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, method: &str, path_and_query: &str, body: Option<&[u8]>) -> Result<T> {
        let answer = self.call(method, path_and_query, body)?;
        serde_json::from_slice(&answer).with_context(|| format!("unexpected response: {}", String::from_utf8_lossy(&answer)))
    }

    /// A signed `GET` whose answer is read as it comes (follows, histories, artifacts).
    pub fn stream(&self, path_and_query: &str) -> Result<BlockingResponse> {
        self.http.stream("GET", path_and_query, b"").map_err(explain)
    }
}

/// The certificate fingerprint pinned for `address` in `known_tls`; on first use, the one the
/// server presents, pinned from now on (said on stderr, so a surprise can be noticed).
fn pin_for(address: &ServerAddress) -> Result<Fingerprint> {
    let known_tls = paths::default_config_dir().join(paths::KNOWN_TLS_FILE);
    let authority = address.authority();
    if let Some(pin) = tls::known_pin(&known_tls, authority).with_context(|| format!("cannot read {}", known_tls.display()))? {
        return Ok(pin);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let pin = runtime
        .block_on(tls::probe_fingerprint(authority, address.host(), Duration::from_secs(5)))
        .map_err(|e| anyhow!("{e}; is `warden up` running? (set --addr or WARDEN_ADDR)"))?;
    tls::remember_pins(&known_tls, &[authority.to_string()], &pin)
        .with_context(|| format!("cannot write {}", known_tls.display()))?;
    eprintln!("warden: trusting {authority}'s TLS certificate {pin} from now on (first use; pinned in {})", known_tls.display());
    Ok(pin)
}

/// A failed request as a message for people: the server's own words for an error status, a hint
/// for a server that does not answer, the way out for a certificate that is not the pinned one.
fn explain(error: HttpError) -> anyhow::Error {
    match error {
        HttpError::Certificate(e) => anyhow!(
            "{e}. If the server's certificate was replaced on purpose, remove its line from {} (the next request \
             pins the new one), or pass --ca FILE",
            paths::default_config_dir().join(paths::KNOWN_TLS_FILE).display()
        ),
        HttpError::Transport(e) | HttpError::Refused(e) => anyhow!("{e}; is `warden up` running? (set --addr or WARDEN_ADDR)"),
        other => other.into(),
    }
}

pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn short_spec_id(spec_id: &str) -> &str {
    &spec_id[..spec_id.len().min(19)]
}

/// Text that came from a user, a workload or an agent (names, tags, reasons, argv, event
/// fields) as it may be shown on a terminal: control characters (ESC sequences, BEL, CR, NUL,
/// DEL) and the bidirectional overrides that reorder what follows are written as `\u{…}`, so
/// what is printed is what was stored and cannot redraw, recolour or hide the rest of the
/// output. Everything else, including non-ASCII letters, is left as it is.
pub fn printable(text: &str) -> Cow<'_, str> {
    let hostile =
        |c: char| c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(hostile) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().map(|c| if hostile(c) { format!("\\u{{{:x}}}", c as u32) } else { c.to_string() }).collect())
}

/// Lets a closed stdout end the CLI the way it ends `ls` or `cat`: SIGPIPE back to its default,
/// so `warden job status … | head` stops quietly when `head` has read enough, instead of a
/// panic on the failed write (Rust ignores SIGPIPE, and `println!` panics on EPIPE). Only for
/// the short-lived commands: the server and the agent keep ignoring it, since a peer that hangs
/// up must never kill them.
pub fn exit_quietly_on_closed_stdout() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler and touches no
    // memory; it runs before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Rows as left-aligned columns two spaces apart, one line each (trailing spaces trimmed);
/// every cell made [`printable`].
pub fn format_table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows.iter().map(|row| row.iter().map(|cell| printable(cell).into_owned()).collect()).collect();
    let rows = rows.as_slice();
    let n_columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n_columns).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// Prints `value` as one line of JSON with `-o json`, else the human way.
pub fn show<T: serde::Serialize>(output: Output, value: &T, human: impl FnOnce(&T)) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        human(value);
    }
    Ok(())
}

/// This machine's host name (`localhost` if it cannot be read): `warden up`'s default node name,
/// who ran a journal repair, where a backup was taken.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_terminal_controls_and_keeps_letters() {
        assert!(matches!(printable("web-1 café 東京"), Cow::Borrowed("web-1 café 東京")));
        assert_eq!(printable("a\u{1b}[2Jb\u{7}\r\n\0"), "a\\u{1b}[2Jb\\u{7}\\u{d}\\u{a}\\u{0}");
        assert_eq!(printable("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        let table = format_table(&[vec!["NAME".into(), "TAGS".into()], vec!["h\u{1b}]0;pwned\u{7}".into(), "ssd".into()]]);
        assert!(!table.contains('\u{1b}') && table.contains("h\\u{1b}]0;pwned\\u{7}"), "{table}");
    }
}
