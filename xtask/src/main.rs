//! `cargo xtask ci`: the project's one test command (what `.ci/run` calls).
//!
//! Installs the system packages the tests need (we run as root on Debian), then runs
//! `cargo fmt --check`, `cargo clippy -D warnings`, the module-level import-cycle check
//! (`cargo xtask cycles`) and the whole test suite. `cargo xtask bench` runs the benchmark table.

mod cycles;

use std::process::{exit, Command};

/// Debian packages the test suite needs, with a binary that proves each is installed: runc for
/// OCI cells, busybox-static for the minimal rootfs the OCI tests build, crun for the test that
/// shows it is refused (or works) on this host, python3 for the memory-hog workloads.
const SYSTEM_PACKAGES: &[(&str, &str)] = &[
    ("runc", "runc"),
    ("busybox-static", "busybox"),
    ("crun", "crun"),
    ("python3", "python3"),
    // tests/e2e/cluster_netns.rs: namespaces, veths and a bridge per test.
    ("iproute2", "ip"),
    // crates/warden-etcd: etcd-client's build runs protoc; its tests start a real etcd cluster.
    ("protobuf-compiler", "protoc"),
    ("etcd-server", "etcd"),
];

fn main() {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "ci" => ci(),
        "bench" => bench(),
        "cycles" => exit(cycles::main()),
        _ => {
            eprintln!("usage: cargo xtask ci | bench | cycles");
            exit(2);
        }
    }
}

fn ci() {
    install_packages(SYSTEM_PACKAGES);
    run("cargo", &["fmt", "--all", "--", "--check"]);
    // `--all-features`: the etcd journal (`--features etcd`) is built, linted and tested too.
    run("cargo", &["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"]);
    let code = cycles::main();
    if code != 0 {
        eprintln!("xtask: module-level import cycles (above) fail the run");
        exit(code);
    }
    run("cargo", &["test", "--workspace", "--all-features", "--", "--test-threads=2"]);
}

fn bench() {
    install_packages(&[("supervisor", "supervisord"), ("runit", "runsv"), ("s6", "s6-supervise")]);
    // The bench runs target/release/warden, which looks for warden-shim next to itself; only a
    // workspace build produces that (a bench build compiles just the warden package's binary).
    run("cargo", &["build", "--release", "--workspace", "--bins"]);
    run("cargo", &["bench", "--bench", "warden_bench"]);
}

fn install_packages(packages: &[(&str, &str)]) {
    let missing: Vec<&str> = packages.iter().filter(|(_, binary)| !on_path(binary)).map(|(package, _)| *package).collect();
    if missing.is_empty() {
        return;
    }
    eprintln!("xtask: installing {missing:?}");
    run("apt-get", &["update", "-q"]);
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing);
    run("apt-get", &args);
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path).any(|dir| dir.join(binary).is_file() || dir.join("../sbin").join(binary).is_file())
        })
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|dir| std::path::Path::new(dir).join(binary).is_file())
}

fn run(program: &str, args: &[&str]) {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program).args(args).status().unwrap_or_else(|e| {
        eprintln!("xtask: cannot run {program}: {e}");
        exit(1)
    });
    if !status.success() {
        eprintln!("xtask: {program} {} failed: {status}", args.join(" "));
        exit(status.code().unwrap_or(1));
    }
}
