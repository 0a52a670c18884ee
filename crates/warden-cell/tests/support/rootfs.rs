//! Test support for the OCI tests and the conformance suite: a minimal root filesystem built from Debian's static busybox,
//! and the host packages those tests need (runc, busybox-static, crun), installed on demand so
//! that a machine without them fails loudly or gets them, instead of skipping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Debian's `busybox-static` installs it here. The dynamic `busybox` package uses the same path,
/// which is why [`ensure_packages`] checks that the binary is static: a dynamic one would find no
/// libc inside a busybox-only rootfs.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets the tests' scripts use, as `/bin/<name>` symlinks to busybox.
const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "ls", "kill", "head", "tr", "seq", "hostname", "pwd", "grep", "wc", "true", "false", "id",
    "touch", "mkdir", "rm", "setsid",
];

/// Installs runc and busybox-static if missing (once per test binary) and checks we are root,
/// which runc needs without rootless mode. Panics with the reason when that is impossible.
pub fn ensure_packages() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "the OCI tests run real containers with runc and must run as root");
        let runc_missing = warden_cell::oci::runtime_binary(warden_cell::OciRuntime::Runc).is_err();
        let busybox_missing = !is_static_elf(Path::new(BUSYBOX));
        let mut wanted = Vec::new();
        if runc_missing {
            wanted.push("runc");
        }
        if busybox_missing {
            wanted.push("busybox-static");
        }
        apt_install(&wanted);
        assert!(is_static_elf(Path::new(BUSYBOX)), "{BUSYBOX} is still not a static executable after installing busybox-static");
    });
}

/// Installs crun if missing (the optional runtime).
pub fn ensure_crun() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        ensure_packages();
        if warden_cell::oci::runtime_binary(warden_cell::OciRuntime::Crun).is_err() {
            apt_install(&["crun"]);
        }
    });
}

fn apt_install(packages: &[&str]) {
    if packages.is_empty() {
        return;
    }
    eprintln!("installing {packages:?} with apt-get");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh machine may have no package lists yet; only then is the slow update worth it.
    if install() {
        return;
    }
    let updated =
        Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive").status().is_ok_and(|s| s.success());
    assert!(updated && install(), "cannot install {packages:?}: run `apt-get install -y {}` as root", packages.join(" "));
}

/// True for an ELF executable without a `PT_INTERP` program header, i.e. one that needs no
/// dynamic loader (and so no libc) inside the container.
pub fn is_static_elf(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(bytes) = std::fs::read(path) else { return false };
    // 64-bit little-endian ELF only: what Debian ships on the architectures we run on.
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        bytes.get(at..at + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != PT_INTERP)
    })
}

/// Builds `<dir>/rootfs`: busybox and its applets in `/bin`, the mount points the bundle mounts
/// on, a writable `/tmp`, and an `/etc/passwd` with root (runc reads it to set `HOME`).
pub fn build(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("create rootfs dir");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox into the rootfs");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet symlink");
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("write /etc/passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("write /etc/group");
    rootfs
}

/// `delete --force` of every container the runtime knows under `state_root`, so that a failed
/// test leaves no container running (and no cgroup) once its temp dir is gone.
pub fn delete_all_containers(runtime: &Path, state_root: &Path) {
    let Ok(entries) = std::fs::read_dir(state_root) else { return };
    for entry in entries.flatten() {
        let id = entry.file_name();
        let _ = Command::new(runtime).arg("--root").arg(state_root).args(["delete", "--force"]).arg(&id).output();
    }
}
