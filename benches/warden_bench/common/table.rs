//! The markdown table's rows and figures, and the machine line every table opens with.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

pub(crate) struct Row {
    pub(crate) metric: String,
    pub(crate) warden: String,
    pub(crate) alternatives: Vec<Alt>,
    pub(crate) note: String,
}

pub(crate) struct Alt {
    pub(crate) who: String,
    pub(crate) figure: String,
    /// warden's figure ÷ this one's.
    pub(crate) ratio: String,
}

pub(crate) fn figure<T>(result: &Result<T>, show: impl Fn(&T) -> String) -> String {
    match result {
        Ok(value) => show(value),
        Err(e) => format!("error: {}", one_line(&format!("{e:#}"))),
    }
}

/// warden's value ÷ the alternative's, when both were measured.
pub(crate) fn ratio_of<T, U>(
    warden: &Result<T>,
    warden_value: impl Fn(&T) -> f64,
    other: &Result<U>,
    value: impl Fn(&U) -> f64,
) -> String {
    match (warden.as_ref().ok().map(warden_value), other.as_ref().ok().map(value)) {
        (Some(w), Some(o)) if o > 0.0 => fmt_ratio(w / o),
        _ => "-".into(),
    }
}

pub(crate) fn one_line(text: &str) -> String {
    let flat = text.replace(['\n', '\r', '|'], " ");
    if flat.chars().count() > 160 {
        format!("{}…", flat.chars().take(160).collect::<String>())
    } else {
        flat
    }
}

pub(crate) fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

pub(crate) fn fmt_s(elapsed: Duration) -> String {
    let s = elapsed.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

pub(crate) fn fmt_rate(per_sec: f64) -> String {
    format!("{} events/s", group_thousands(per_sec.round() as u64))
}

pub(crate) fn fmt_kib(kib: f64) -> String {
    format!("{kib:.0} KB")
}

pub(crate) fn fmt_ratio(ratio: f64) -> String {
    if ratio >= 100.0 {
        format!("{ratio:.0}×")
    } else if ratio >= 10.0 {
        format!("{ratio:.1}×")
    } else if ratio >= 1.0 {
        format!("{ratio:.2}×")
    } else {
        // Two significant digits, however small.
        let decimals = (1 - ratio.log10().floor() as i32).max(2) as usize;
        format!("{ratio:.decimals$}×")
    }
}

pub(crate) fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn machine_summary() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let versions: Vec<String> = ["supervisor", "runit", "s6"]
        .iter()
        .map(|package| {
            let version = Command::new("dpkg-query")
                .args(["-W", "-f=${Version}", package])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|| "?".into());
            format!("{package} {version}")
        })
        .collect();
    format!(
        "{cpus} CPUs, Linux {}, temp dirs on {}; {}.",
        kernel.trim(),
        filesystem_of(&std::env::temp_dir()),
        versions.join(", ")
    )
}

/// The file system type under `path`: on tmpfs an fsync costs nothing and durability figures
/// would be meaningless, so the table says where it ran.
pub(crate) fn filesystem_of(path: &Path) -> String {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return "?".into() };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `stat` is a properly sized out-parameter.
    if unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return "?".into();
    }
    // SAFETY: statfs succeeded, so it filled `stat`.
    let magic = unsafe { stat.assume_init() }.f_type as u64;
    let names: HashMap<u64, &str> = [
        (0xEF53, "ext4"),
        (0x0102_1994, "tmpfs (fsync is free: durable figures are not comparable)"),
        (0x5846_5342, "xfs"),
        (0x9123_683E, "btrfs"),
        (0x794C_7630, "overlayfs"),
    ]
    .into();
    names.get(&magic).map(|n| n.to_string()).unwrap_or_else(|| format!("fs 0x{magic:x}"))
}
