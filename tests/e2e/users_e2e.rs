//! Least privilege for cells, against the real binary: a default cell runs as the unprivileged
//! `warden` user with no supplementary groups and `no_new_privs`, and cannot read the journal or
//! the admin's key; `user = …` picks another user; root is an admin's to ask for; an isolated
//! cell is root in its user namespace and the `warden` user on the host; an OCI container's
//! process is not root either.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::support::{rootfs, Warden};

/// The checks every cell prints: its ids, its `no_new_privs`, and whether it can read the
/// journal and the admin key. Then it stays up (so its host-side uid can be read).
fn probe(warden: &Warden) -> String {
    let journal = warden.data_dir().join("journal.db");
    let admin_key = warden.config_home().join("warden/admin.key");
    format!(
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); grep NoNewPrivs /proc/self/status; \
         cat {} >/dev/null 2>&1 && echo journal=READABLE || echo journal=denied; \
         cat {} >/dev/null 2>&1 && echo admin-key=READABLE || echo admin-key=denied; echo done; exec sleep 600",
        journal.display(),
        admin_key.display()
    )
}

fn spec(name: &str, extra: &str, script: &str) -> String {
    format!("name = \"{name}\"\n[cell]\nargv = [\"sh\", \"-c\", {script:?}]\n{extra}\n[restart]\npolicy = \"never\"\n")
}

/// Runs `text` (as the admin), waits for its probe's output, and returns it with the cell's pid.
fn run_probe(warden: &Warden, name: &str, text: &str) -> (String, u32) {
    let id = warden.run(&format!("{name}.toml"), text);
    let view = warden.wait_for(&id, "running", |v| v.state == "running");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = warden.cli_ok(&["logs", &id]);
        if out.contains("done") {
            return (out, view.pid.expect("a running cell has a pid"));
        }
        assert!(Instant::now() < deadline, "{name} printed no probe: {out:?}\n{}", warden.up_log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The real (first) uid of `/proc/<pid>/status`, as the host sees the process.
fn host_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn id_of(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("no user {name}"));
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// Only the modes of the data dir and of the admin key's dir may keep a cell out, not the test's
/// private temp dir: it is opened up for others to pass through, as a home directory may be.
fn open_up_the_test_root(warden: &Warden) {
    std::fs::set_permissions(warden.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_default_cell_is_not_root_has_no_groups_no_new_privs_and_cannot_read_the_journal_or_the_admin_key() {
    let warden = Warden::start();
    open_up_the_test_root(&warden);
    let (uid, gid) = id_of("warden");
    assert_ne!(uid, 0);
    let (out, pid) = run_probe(&warden, "plain", &spec("plain", "", &probe(&warden)));
    assert!(out.contains(&format!("uid={uid} gid={gid} groups={gid}\n")), "runs as warden, no other group: {out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("journal=denied") && out.contains("admin-key=denied"), "{out}");
    assert_eq!(host_uid(pid), uid);
    // What it is kept from does exist and root can read it: the denial is the cell's user's.
    assert!(std::fs::read(warden.data_dir().join("journal.db")).is_ok());
    assert!(std::fs::read(warden.config_home().join("warden/admin.key")).is_ok());
}

#[test]
fn user_names_ids_and_root_run_as_asked() {
    let warden = Warden::start();
    open_up_the_test_root(&warden);
    let (nobody_uid, nobody_gid) = id_of("nobody");
    let (out, _) = run_probe(&warden, "nobody", &spec("nobody", "user = \"nobody\"", &probe(&warden)));
    assert!(out.contains(&format!("uid={nobody_uid} gid={nobody_gid} groups={nobody_gid}\n")), "{out}");
    assert!(out.contains("journal=denied"), "{out}");

    let (out, pid) = run_probe(&warden, "ids", &spec("ids", "user = \"4321:1234\"", &probe(&warden)));
    assert!(out.contains("uid=4321 gid=1234 groups=1234\n"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1") && out.contains("admin-key=denied"), "{out}");
    assert_eq!(host_uid(pid), 4321);

    // The admin (this warden's own key) may ask for root; no_new_privs still holds.
    let (out, pid) = run_probe(&warden, "rooted", &spec("rooted", "user = \"root\"", &probe(&warden)));
    assert!(out.contains("uid=0 gid=0 groups=0\n"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1") && out.contains("journal=READABLE"), "{out}");
    assert_eq!(host_uid(pid), 0);

    // A name this host does not know fails the start, with the reason.
    let id = warden.run("ghost.toml", &spec("ghost", "user = \"no-such-user\"", "true"));
    let view = warden.wait_for(&id, "failed", |v| v.state == "failed");
    let reason = view.reason.unwrap_or_default();
    assert!(reason.contains("\"no-such-user\" does not exist"), "{reason}");
}

#[test]
fn an_isolated_cell_is_root_inside_its_user_namespace_and_the_warden_user_outside() {
    let warden = Warden::start();
    open_up_the_test_root(&warden);
    let (uid, _) = id_of("warden");
    let (out, init_pid) = run_probe(&warden, "iso", &spec("iso", "isolation = \"cell\"", &probe(&warden)));
    assert!(out.contains("uid=0 gid=0 groups=0\n"), "root inside the cell: {out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("journal=denied") && out.contains("admin-key=denied"), "root in the cell is nobody on the host: {out}");
    // The cell's pid is its init's; the workload is its child. Both are the warden user here.
    assert_eq!(host_uid(init_pid), uid, "the init");
    let children = std::fs::read_to_string(format!("/proc/{init_pid}/task/{init_pid}/children")).unwrap();
    let workload: u32 = children.split_whitespace().next().expect("the workload").parse().unwrap();
    assert_eq!(host_uid(workload), uid, "the workload");
    let uid_map = std::fs::read_to_string(format!("/proc/{workload}/uid_map")).unwrap();
    assert_eq!(uid_map.split_whitespace().collect::<Vec<_>>(), ["0", &uid.to_string(), "1"]);

    // An admin's root cell gets no user namespace: root inside is root.
    let (out, init_pid) =
        run_probe(&warden, "iso-root", &spec("iso-root", "isolation = \"cell\"\nuser = \"root\"", &probe(&warden)));
    assert!(out.contains("uid=0 gid=0") && out.contains("journal=READABLE"), "{out}");
    assert_eq!(host_uid(init_pid), 0);
}

#[test]
fn an_oci_cell_runs_as_the_warden_user_not_root() {
    rootfs::ensure_packages();
    let warden = Warden::start();
    let (uid, gid) = id_of("warden");
    let rootfs = rootfs::build(&warden.root.path().join("bundle-src"));
    let script = "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); grep NoNewPrivs /proc/self/status; echo done; exec sleep 600";
    let text = spec("boxed", &format!("isolation = \"oci\"\nrootfs = \"{}\"", rootfs.display()), script);
    let (out, pid) = run_probe(&warden, "boxed", &text);
    assert!(out.contains(&format!("uid={uid} gid={gid} groups={gid}\n")), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert_eq!(host_uid(pid), uid);
}
