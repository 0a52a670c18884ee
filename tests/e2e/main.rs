//! The end-to-end suite: the real `warden` binary, started as a user would, killed mid-work,
//! restarted and checked. One test binary with a module per area, so the suite links once.
//!
//! Tests of different modules run side by side (`--test-threads=2`): each makes its own data
//! dir, port and network names. The cluster tests never run beside the kill -9 stress test
//! (see [`support::heavy`]).

mod support;

mod agent;
mod authz_matrix;
mod backup_e2e;
mod cells_e2e;
mod checkpoint_e2e;
mod cluster_e2e;
mod cluster_netns;
mod crash;
mod e2e;
#[cfg(feature = "etcd")]
mod etcd_e2e;
mod events_verify;
mod hostile_input_e2e;
mod jobs_e2e;
mod journal_e2e;
mod outage_e2e;
mod rollout_e2e;
mod secrets_e2e;
mod security_edges;
mod standby_e2e;
mod tls_e2e;
mod tokens_e2e;
mod users_e2e;
