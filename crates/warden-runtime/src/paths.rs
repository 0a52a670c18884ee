//! Default locations: the data dir (`$XDG_DATA_HOME/warden`) and config dir (`$XDG_CONFIG_HOME/warden`).

use std::path::PathBuf;

pub const ADMIN_CREDENTIAL_FILE: &str = "admin.key";
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
