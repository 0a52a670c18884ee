//! The core is pure: no async runtime and no I/O crates among its normal dependencies.

use std::process::Command;

/// Crates that would mean the core does I/O or runs an async runtime.
const FORBIDDEN: [&str; 5] = ["tokio", "mio", "async-std", "rusqlite", "libc"];

#[test]
fn the_core_depends_on_no_async_runtime_and_no_io_crates() {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "-p", "warden-core", "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "cargo tree failed: {}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    // Guard against passing vacuously on an empty or unexpected listing.
    assert!(stdout.lines().any(|line| line.starts_with("warden-core ")), "cargo tree did not list warden-core:\n{stdout}");
    assert!(stdout.lines().any(|line| line.starts_with("serde ")), "cargo tree did not list the core's dependencies:\n{stdout}");
    let offending: Vec<&str> =
        stdout.lines().filter(|line| FORBIDDEN.iter().any(|crate_name| line.starts_with(crate_name))).collect();
    assert!(offending.is_empty(), "warden-core must not depend on {offending:?} (the core has no async runtime and no I/O)");
}
