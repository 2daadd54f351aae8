//! Chaos on the local backend: the controller process is SIGKILLed at
//! random moments while expansions are in flight, at least 100 times, and
//! restarted over the same state (the scenario:
//! `swell_e2e::never_stuck::controller_killed_mid_expansion`).
//!
//! `SWELL_CHAOS_KILLS` and `SWELL_CHAOS_SEED` override the defaults.

use swell_e2e::host;
use swell_e2e::never_stuck::{self, ChaosPlan, Local};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_killed_mid_expansion_never_leaves_a_volume_stuck() {
    if host::cannot_run("chaos_controller", false, &["mkfs.xfs", "xfs_growfs", "losetup"]) {
        return;
    }
    let plan = ChaosPlan::from_env(100);
    never_stuck::controller_killed_mid_expansion(&Local, plan).await;
}
