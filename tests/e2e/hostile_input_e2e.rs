//! Hostile and careless input against the real binary: mutated signed API bodies, NUL bytes and
//! a zero backoff in specs, control characters in what `status` and `events` print, a reader
//! that hangs up on the CLI, and a `[placement]` no host matches across a restart.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use crate::support::{bin, Warden};

#[path = "../../crates/warden-core/tests/support/fuzz.rs"]
mod fuzz;

/// A workload whose `[placement]` matches no host waits for one, on `warden up` too, and a
/// restart does not change that: it is never started on the control plane's own node.
#[test]
fn a_workload_no_host_admits_stays_pending_across_a_restart() {
    let mut warden = Warden::start();
    let marker = warden.data_dir().join("gpu-ran");
    let spec =
        format!("name = \"gpu\"\n[cell]\nargv = [\"touch\", {:?}]\n[placement]\ntags = [\"gpu\"]\n", marker.to_str().unwrap());
    let id = warden.run("gpu.toml", &spec);
    let before = warden.status(&id);
    assert_eq!((before.state.as_str(), before.pid), ("starting", None), "{before:?}");

    warden.kill9();
    warden.up();
    // Recovery is over before the server takes requests; a workload submitted now runs, so by
    // then any start recovery decided for the first one has been carried out too.
    let other = warden.run("other.toml", "name = \"other\"\n[cell]\nargv = [\"sleep\", \"1000\"]\n");
    warden.wait_for(&other, "the later workload to run", |v| v.state == "running");
    let after = warden.status(&id);
    assert_eq!((after.state.as_str(), after.pid, after.host.as_str()), ("starting", None, before.host.as_str()), "{after:?}");
    assert!(!marker.exists(), "the unplaceable workload ran on the control plane's node");
    let events = warden.events(&["--workload", &id]);
    assert!(!events.iter().any(|e| e.event_type == "dev.warden.lifecycle.started.v1"), "{events:?}");
    warden.cli_ok(&["stop", &other]);
}

/// Specs that cannot work are refused when submitted, naming file and line: a NUL byte in argv
/// or env (it cannot cross `execve`).
#[test]
fn nul_bytes_are_refused_by_line() {
    let warden = Warden::start();
    for (file, text, line) in [
        ("nul-argv.toml", "name = \"n\"\n[cell]\nargv = [\"sh\", \"-c\\u0000x\"]\n", 3),
        ("nul-env.toml", "name = \"n\"\n[cell]\nargv = [\"true\"]\nenv = { A = \"a\\u0000b\" }\n", 4),
    ] {
        let path = warden.write_spec(file, text);
        let out = warden.cli(&["run", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(&format!("{file}:{line}:")), "{file}: {stderr}");
        // The server checks too, whoever sends the spec.
        let body = serde_json::json!({"file": file, "spec_toml": text});
        let (code, answer) = warden.api("POST", "/v1/workloads", body.to_string().as_bytes());
        assert_eq!(code, 400, "{file}: {answer}");
        assert!(answer.contains(&format!("{file}:{line}:")), "{answer}");
    }
    let events = warden.events(&[]);
    assert!(!events.iter().any(|e| e.event_type.starts_with("dev.warden.workload.")), "nothing was submitted: {events:?}");
}

/// `backoff = "0ms"` with `policy = "always"` and a cell that fails at once: the first restart is
/// immediate, the next ones double from 10 ms up to `backoff_max`, so the crash loop slows down
/// (it used to restart ~70 times a second forever: doubling 0 stays 0).
#[test]
fn a_zero_backoff_crash_loop_slows_down() {
    let warden = Warden::start();
    let id =
        warden.run("spin.toml", "name = \"s\"\n[cell]\nargv = [\"false\"]\n[restart]\npolicy = \"always\"\nbackoff = \"0ms\"\n");
    warden.wait_for(&id, "a first restart", |v| v.restarts >= 1);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let restarts = warden.status(&id).restarts;
    // 0, 20, 40, …, 1280 ms: about 9 in 3 s (a spinning loop made ~200).
    assert!((3..=14).contains(&restarts), "{restarts} restarts in 3 s");
    warden.cli_ok(&["stop", &id]);
}

/// What workloads and users wrote reaches the terminal escaped: an argv that clears the screen
/// and rings the bell shows as `\u{1b}[2J…` in `status`, `ps` and `events`, and `-o json` keeps
/// the exact value.
#[test]
fn control_characters_from_user_fields_are_escaped_in_human_output() {
    let warden = Warden::start();
    let hostile = "/nonexistent/\u{1b}[2J\u{1b}]0;owned\u{7}";
    let spec = format!("name = \"esc\"\n[cell]\nargv = [{}]\n[restart]\npolicy = \"never\"\n", toml_string(hostile));
    let id = warden.run("esc.toml", &spec);
    warden.wait_for(&id, "the start to fail", |v| v.state == "failed");
    for args in [vec!["status", id.as_str()], vec!["ps"], vec!["events"]] {
        let out = warden.cli_ok(&args);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "warden {args:?} printed a control character: {out:?}");
    }
    let status = warden.cli_ok(&["status", &id]);
    assert!(status.contains("\\u{1b}[2J"), "{status}");
    let json: serde_json::Value = serde_json::from_str(&warden.cli_ok(&["status", &id, "-o", "json"])).unwrap();
    assert_eq!(json["argv"][0], hostile);
}

/// `warden … | head` that stops reading: the CLI ends quietly (SIGPIPE, as `cat` would), no
/// panic on stderr.
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    let warden = Warden::start();
    let id = warden.run("s.toml", "name = \"s\"\n[cell]\nargv = [\"sleep\", \"1000\"]\n");
    for args in [vec!["status", id.as_str()], vec!["events"], vec!["ps"]] {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe(2) just returned these two descriptors; each is owned once, here.
        let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(reader); // the reader is gone before the CLI writes a byte
        let out = Command::new(bin())
            .args(&args)
            .env("WARDEN_ADDR", warden.addr())
            .env("XDG_CONFIG_HOME", warden.config_home())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "warden {args:?} wrote to stderr: {stderr}");
        assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "warden {args:?}: {:?}", out.status);
    }
    warden.cli_ok(&["stop", &id]);
}

/// Mutated signed bodies for every route that takes one: never a 5xx, nothing half-stored, and
/// the server still answers. (`WARDEN_FUZZ_CASES` runs more; the default is a few hundred.)
#[test]
fn mutated_signed_api_bodies_get_4xx_never_5xx() {
    let warden = Warden::start();
    let valid: &[(&str, &str)] = &[
        (
            "/v1/workloads",
            r#"{"file":"f.toml","spec_toml":"name = \"f\"\n[cell]\nargv = [\"sleep\", \"1000\"]\n[placement]\ntags = [\"none-has-this\"]\n"}"#,
        ),
        (
            "/v1/jobs",
            r#"{"file":"j.toml","manifest_toml":"name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"true\"]\n","workdir":"/tmp","input":{"k":1}}"#,
        ),
        (
            "/v1/rollouts",
            r#"{"service":"nope","spec_file":"s.toml","spec_toml":"name = \"f\"\n[cell]\nargv = [\"true\"]\n","policy_file":"p.toml","policy_toml":"waves = [1, \"100%\"]\nrequire_probes = false\n"}"#,
        ),
        (
            "/v1/rollouts",
            r#"{"target":"/nix/store/x","channel":"edge","policy_file":"p.toml","policy_toml":"activate = [\"a\"]\nrollback = [\"b\"]\nrequire_probes = false\n"}"#,
        ),
        ("/v1/hosts/h1/drain", r#"{"drain":true}"#),
        ("/v1/workloads/w-nope/stop", r#"{}"#),
        ("/v1/jobs/r-nope/cancel", r#"{}"#),
        ("/v1/rollouts/x/pause", r#"{}"#),
        ("/v1/agents/enroll", r#"{"join_token":"wjt-x","name":"h","channel":null,"tags":["a"]}"#),
        ("/v1/agents/heartbeat", r#"{"host":"h","reports":[],"claims":[]}"#),
    ];
    let docs: Vec<&str> = valid.iter().map(|(_, body)| *body).collect();
    let client = warden.client();
    let (mut n_2xx, mut n_4xx) = (0, 0);
    let cases = fuzz::cases(300);
    let seed = fuzz::seed();
    for case in 0..cases {
        let mut rng = fuzz::Rng::for_case(seed, case);
        let (path, body) = *rng.pick(valid);
        let body = if rng.chance(8) { fuzz::arbitrary_bytes(&mut rng) } else { fuzz::mutate(&mut rng, body, &docs).into_bytes() };
        let request = client.prepare("POST", path, body.clone()).unwrap();
        let (code, answer) = client.exchange(&request, None).unwrap_or_else(|e| {
            panic!("case {case} of seed {seed:#x}: POST {path} got no answer ({e}); body: {:?}", String::from_utf8_lossy(&body))
        });
        assert!(
            code < 500,
            "case {case} of seed {seed:#x}: POST {path} answered {code}: {}; body: {:?}",
            String::from_utf8_lossy(&answer),
            String::from_utf8_lossy(&body)
        );
        if (200..300).contains(&code) {
            n_2xx += 1;
        } else {
            n_4xx += 1;
        }
    }
    assert!(n_4xx > cases / 2, "most mutations should be refused ({n_2xx} accepted, {n_4xx} refused)");
    // Still answering, and the journal is whole.
    warden.cli_ok(&["ps"]);
    crate::support::assert_contiguous_chain(&warden.events(&[]));
}

fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
