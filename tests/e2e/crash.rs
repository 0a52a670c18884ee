//! Crash test: kill -9 `warden up` at random moments while clients submit workloads. Every
//! submission that was acknowledged must be there after restart, and `seq` must have no gap.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{assert_contiguous_chain, signed_client, Warden};
use warden_runtime::view::WorkloadView;

const ROUNDS: usize = 16;
const N_CLIENTS: usize = 6;

#[test]
fn acknowledged_submissions_survive_kill9_at_random_moments() {
    // The heaviest test of the suite: no cluster test (timed failovers) runs beside it.
    let _heavy = crate::support::heavy();
    let mut warden = Warden::start();
    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
    // A cheap xorshift, seeded from the clock and printed, so a failure can be replayed.
    let mut seed = warden_runtime::engine::now_ms() | 1;
    eprintln!("crash test seed: {seed}");
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..N_CLIENTS)
            .map(|client| {
                let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
                let (addr, identity_path) = (warden.addr(), warden.config_home().join("warden/admin.key"));
                std::thread::spawn(move || {
                    let identity = warden_runtime::auth::Identity::load(&identity_path).unwrap();
                    let http = signed_client(&addr, identity);
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let spec = format!(
                            "name = \"c{client}-{round}-{n}\"\n[cell]\nargv = [\"true\"]\n[restart]\npolicy = \"never\"\n"
                        );
                        let body = serde_json::json!({"file": "crash.toml", "spec_toml": spec}).to_string();
                        let request = http.prepare("POST", "/v1/workloads", body).unwrap();
                        match http.exchange(&request, Some(Duration::from_secs(5))) {
                            Ok((201, answer)) => {
                                let view: WorkloadView = serde_json::from_slice(&answer).unwrap();
                                acknowledged.lock().unwrap().insert(view.info.id);
                            }
                            Ok((code, _)) if code < 400 => panic!("unexpected status {code}"),
                            // Refused, or the server died mid-request: not acknowledged, so no
                            // promise was made.
                            Ok(_) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + next() % 400));
        warden.kill9();
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.join().unwrap();
        }
        warden.up();

        let all: Vec<WorkloadView> = serde_json::from_str(&warden.cli_ok(&["ps", "--all", "-o", "json"])).unwrap();
        let present: HashSet<String> = all.into_iter().map(|v| v.info.id).collect();
        let acknowledged = acknowledged.lock().unwrap();
        let missing: Vec<_> = acknowledged.difference(&present).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged but lost after kill -9: {missing:?}");
        assert_contiguous_chain(&warden.events(&[]));
        eprintln!("round {round}: {} acknowledged so far, all present", acknowledged.len());
    }
    assert!(acknowledged.lock().unwrap().len() > ROUNDS, "the test submitted too little to mean anything");
}
