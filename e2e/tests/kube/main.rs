//! Swell under a real kubelet: the scenarios a user would check, each a test
//! of its own, on the local backend and on Ceph RBD, through kubectl only
//! (no Swell internals), so they run against any cluster where Swell is
//! deployed from deploy/. The kube lane (`e2e/kube/lane.sh`) starts a
//! one-node cluster, deploys Swell and runs them in this order:
//!
//! 1. `readme::` README's "Deploy on Kubernetes" and the webhook's
//!    "Without cert-manager", as written but for the lane's listed changes;
//! 2. `steady::` of both backends at once, then `timed::` of both (and the
//!    local backend's auto-grow under a filling pod);
//! 3. each `disruptive::` scenario of both backends together, one after
//!    the other (they kill a node plugin or a controller replica, once for
//!    both: see `rendezvous`);
//! 4. `cleanup::`, once everything else is deleted.
//!
//! Without a reachable API server each test is skipped (a failure under
//! CI=true). Not part of `cargo test --workspace` (`test = false`): run
//! `cargo test -p swell-e2e --test kube` (e2e/kube/README.md says how, also
//! on your own cluster).

mod cluster;
mod readme;
mod rendezvous;
mod scenarios;
mod workload;

/// A backend as its overlay installs it.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// `local` or `rbd`.
    pub name: &'static str,
    /// The StorageClass and VolumeSnapshotClass of its overlay.
    pub class: &'static str,
}

pub const LOCAL: Backend = Backend { name: "local", class: "swell-local" };
pub const RBD: Backend = Backend { name: "rbd", class: "swell-rbd" };

/// The scenarios, once per backend; each test's name says what it proves.
/// `timed: { ... }` adds timed scenarios of that backend alone.
macro_rules! scenarios {
    ($module:ident, $backend:expr $(, timed: { $($timed:item)* })?) => {
        mod $module {
            mod steady {
                use crate::scenarios::*;

                #[test]
                fn online_grow_under_an_fsyncing_writer_reaches_claim_and_pod() {
                    online_grow(&$backend, module_path!());
                }

                #[test]
                fn webhook_denies_an_oversize_request_with_swells_reason() {
                    oversize_denied(&$backend, module_path!());
                }

                #[test]
                fn webhook_admits_exactly_one_of_two_racing_patches() {
                    racing_patches(&$backend, module_path!());
                }

                #[test]
                fn api_server_refuses_a_shrink_before_the_webhook() {
                    shrink_refused(&$backend, module_path!());
                }

                #[test]
                fn raw_block_grows_while_a_pod_holds_it_open() {
                    block_grows_held_open(&$backend, module_path!());
                }

                #[test]
                fn snapshot_restored_larger_shows_the_data_and_the_larger_filesystem() {
                    snapshot_restored_larger(&$backend, module_path!());
                }
            }

            /// Run by themselves, so their timings are not other scenarios' load.
            mod timed {
                use crate::scenarios::*;

                #[test]
                fn five_grows_in_a_row_each_reach_the_pods_filesystem() {
                    repeated_grows(&$backend, module_path!());
                }

                $($($timed)*)?
            }

            mod disruptive {
                use crate::scenarios::*;

                #[test]
                fn node_plugin_killed_mid_resize_kubelet_retries_to_the_end() {
                    node_plugin_killed(&$backend, module_path!());
                }

                #[test]
                fn controller_leader_deleted_mid_resize_the_other_replica_finishes() {
                    controller_leader_deleted(&$backend, module_path!());
                }

                #[test]
                fn kep1790_an_infeasible_request_lowered_recovers() {
                    infeasible_lowered(&$backend, module_path!());
                }

                #[test]
                fn swell_volumes_shows_each_state_of_a_resize() {
                    swell_volumes_states(&$backend, module_path!());
                }
            }

            mod cleanup {
                use crate::scenarios::*;

                #[test]
                fn everything_deleted_leaves_no_pv_backend_volume_mount_or_loop_device() {
                    everything_deleted(&$backend, module_path!());
                }
            }
        }
    };
}

// RBD volumes do not grow by themselves yet (docs/auto-grow.md).
scenarios!(local, crate::LOCAL, timed: {
    #[test]
    fn auto_grow_keeps_a_filling_pod_from_enospc_until_its_limit_and_stops_there() {
        auto_grow_under_a_filling_pod(&crate::LOCAL, module_path!());
    }
});
scenarios!(rbd, crate::RBD);
