//! Default locations: the data dir (`$XDG_DATA_HOME/warden`) and config dir (`$XDG_CONFIG_HOME/warden`).

use std::path::PathBuf;

pub const ADMIN_CREDENTIAL_FILE: &str = "admin.key";
/// In the data dir: the server's Ed25519 key, which signs the journal's chain head (mode 0600).
pub const SERVER_KEY_FILE: &str = "server.key";
/// In the data dir: the server key's principal (`ed25519:<hex>`), for operators to pin.
pub const SERVER_PUB_FILE: &str = "server.pub";
/// In the data dir: the journal (SQLite, with its `-wal`).
pub const JOURNAL_FILE: &str = "journal.db";
/// In the data dir: the key secrets are sealed with (32 bytes, mode 0600; `secrets.rs`).
pub const SECRETS_KEY_FILE: &str = "secrets.key";
/// In the config dir: `<address> ed25519:<hex>` per line, the server keys `warden events verify`
/// trusted on first use.
pub const KNOWN_SERVERS_FILE: &str = "known_servers";
/// In the config dir: `<address> sha256:<hex>` per line, the TLS certificates the CLI trusts
/// (written by `warden up` for its own addresses, and on first use for others).
pub const KNOWN_TLS_FILE: &str = "known_tls";
pub const DEFAULT_ADDR: &str = "127.0.0.1:7480";

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"))
}

pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("warden"),
        _ => home().join(".local/share/warden"),
    }
}

pub fn default_config_dir() -> PathBuf {
    match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("warden"),
        _ => home().join(".config/warden"),
    }
}
