//! End to end: isolated cells through the real binary — PID namespaces with an authenticated exit
//! report (`terminal_state` clean or forced), and cgroup limits that end a hog with reason `oom`.

use crate::support::{rootfs, Warden};

fn destroyed(warden: &Warden, id: &str) -> serde_json::Value {
    let events = warden.events(&["--workload", id]);
    let event = events.iter().rev().find(|e| e.event_type == "dev.warden.lifecycle.destroyed.v1").expect("a destroyed event");
    event.data.clone()
}

#[test]
fn an_isolated_cell_is_pid_2_and_its_exit_code_arrives_authenticated() {
    let warden = Warden::start();
    let id = warden.run(
        "cell.toml",
        "name = \"isolated\"\n[cell]\nisolation = \"cell\"\nargv = [\"sh\", \"-c\", \"echo $$; exit 7\"]\n[restart]\npolicy = \"never\"\n",
    );
    warden.wait_for(&id, "failed", |v| v.state == "failed");
    assert_eq!(warden.cli_ok(&["logs", &id]).trim(), "2", "the workload is PID 2 under warden's init");
    let data = destroyed(&warden, &id);
    assert_eq!(data["terminal_state"], "clean", "{data}");
    assert_eq!(data["exit_code"], 7, "{data}");
}

#[test]
fn a_cell_that_ignores_sigterm_is_forced_and_reports_no_exit_code() {
    let warden = Warden::start();
    let id = warden.run(
        "stubborn.toml",
        "name = \"stubborn\"\n[cell]\nisolation = \"cell\"\ngraceful_shutdown = \"1s\"\nargv = [\"sh\", \"-c\", \"trap '' TERM; echo ready; while true; do sleep 1; done\"]\n",
    );
    warden.wait_for(&id, "running", |v| v.state == "running");
    warden.cli_ok(&["stop", &id]);
    let view = warden.wait_for(&id, "stopped", |v| v.state == "stopped");
    let data = destroyed(&warden, &id);
    assert_eq!(data["terminal_state"], "forced", "{data}");
    assert!(data.get("exit_code").is_none(), "a forced end presents no exit code: {data}");
    assert!(data.get("signal").is_none(), "nor a signal: {data}");
    let last_exit = view.last_exit.unwrap();
    assert_eq!(last_exit.exit.exit_code, None, "status shows no synthetic code either");
}

#[test]
fn a_memory_hog_over_its_limit_ends_with_reason_oom() {
    let warden = Warden::start();
    let id = warden.run(
        "hog.toml",
        "name = \"hog\"\n[cell]\nisolation = \"cell\"\nargv = [\"python3\", \"-c\", \"x = bytearray(400 * 1024 * 1024); print(len(x))\"]\n[cell.limits]\nmemory_max = \"64MiB\"\n[restart]\npolicy = \"never\"\n",
    );
    let view = warden.wait_for(&id, "failed", |v| v.state == "failed");
    let data = destroyed(&warden, &id);
    assert!(data["reason"].as_str().unwrap().contains("oom"), "{data}");
    assert!(view.reason.unwrap().contains("oom"));
}

#[test]
fn an_oci_cell_runs_on_a_busybox_rootfs_and_reports_its_exit() {
    rootfs::ensure_packages();
    let warden = Warden::start();
    let rootfs = rootfs::build(&warden.root.path().join("bundle-src"));
    let spec = format!(
        "name = \"boxed\"\n[cell]\nisolation = \"oci\"\nrootfs = \"{}\"\nargv = [\"sh\", \"-c\", \"echo in-container $$; exit 7\"]\n[restart]\npolicy = \"never\"\n",
        rootfs.display()
    );
    let id = warden.run("oci.toml", &spec);
    let view = warden.wait_for(&id, "failed", |v| v.state == "failed");
    assert_eq!(warden.cli_ok(&["logs", &id]).trim(), "in-container 1", "the workload is the container's PID 1");
    let data = destroyed(&warden, &id);
    assert_eq!(data["exit_code"], 7, "{data}");
    assert!(data.get("terminal_state").is_none(), "no authenticated bridge under an OCI runtime: {data}");
    assert_eq!(view.info.workload_type, "oci");
}
