//! The scenarios, written once for both backends (`main.rs` names a test
//! per backend), and what they share. Each runs in a namespace of its own,
//! which goes away with its claims and volumes when it ends.

mod admission;
mod auto_grow;
mod cleanup;
mod faults;
mod growth;

pub(crate) use admission::{infeasible_lowered, oversize_denied, racing_patches, shrink_refused};
pub(crate) use auto_grow::auto_grow_under_a_filling_pod;
pub(crate) use cleanup::everything_deleted;
pub(crate) use faults::{controller_leader_deleted, node_plugin_killed, swell_volumes_states};
pub(crate) use growth::{block_grows_held_open, online_grow, repeated_grows, snapshot_restored_larger};

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use swell_e2e::requests;

use crate::Backend;
use crate::cluster::*;
use crate::rendezvous::join;
use crate::workload::*;

const GI: u64 = 1 << 30;
/// Where kubelet calls the node plugin, and where deploy/ expects it.
const KUBELET_ROOT: &str = "/var/lib/kubelet";
const DRIVER: &str = "swell.csi.storage";
/// A resize's deadline: kubelet's sync (syncFrequency, 10 s in the lane,
/// 1 min by default) plus the resizer's retries.
const RESIZE_DEADLINE: Duration = Duration::from_secs(150);

/// Whether the scenario can run: an API server and the backend's
/// StorageClass; skipped (failed under CI) otherwise. The timer prints how
/// long the scenario took, for the lane's report.
fn ready(backend: &Backend, module: &str, scenario: &str) -> Option<(String, Timer)> {
    let test = format!("{module}::{scenario}");
    if !reachable(&test) {
        return None;
    }
    assert!(get(&["storageclass", backend.class]).is_some(), "{test}: StorageClass {} is missing: deploy the {} overlay first", backend.class, backend.name);
    Some((test.clone(), Timer { test, started: Instant::now() }))
}

/// Prints a scenario's duration when it ends (`KUBE-SCENARIO` lines).
pub(crate) struct Timer {
    test: String,
    started: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() { "failed" } else { "passed" };
        println!("KUBE-SCENARIO {} {outcome} in {:.1} s", self.test, self.started.elapsed().as_secs_f64());
    }
}

/// A claim bound and mounted by a running pod: (namespace, pv, volume id, pod uid).
fn mounted(backend: &Backend, ns_name: &str, size: &str, writer: bool) -> (Namespace, String, String, String) {
    let ns = Namespace::new(ns_name);
    apply(&json!({ "apiVersion": "v1", "kind": "List", "items": [claim("data", backend.class, size, false, None), pod("app", "data", writer)] }).with_ns(&ns));
    let uid = running(&ns, "app");
    let (pv, id) = bound(&ns, "data");
    (ns, pv, id, uid)
}

trait WithNamespace {
    fn with_ns(self, ns: &Namespace) -> Self;
}

impl WithNamespace for Value {
    fn with_ns(mut self, ns: &Namespace) -> Self {
        if let Some(items) = self.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                item["metadata"]["namespace"] = json!(ns.name);
            }
        } else {
            self["metadata"]["namespace"] = json!(ns.name);
        }
        self
    }
}

/// kubelet's global (staging) mount of a volume: `<root>/plugins/kubernetes.io/csi/<driver>/<sha256 of the handle>/globalmount`.
fn staging_path(volume_id: &str) -> String {
    let hash = Sha256::digest(volume_id.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("{KUBELET_ROOT}/plugins/kubernetes.io/csi/{DRIVER}/{hex}/globalmount")
}

/// kubelet's publish path of a filesystem volume in a pod.
fn publish_path(pod_uid: &str, pv: &str) -> String {
    format!("{KUBELET_ROOT}/pods/{pod_uid}/volumes/kubernetes.io~csi/{pv}/mount")
}

/// Reports a timing the lane collects (`KUBE-TIMING` lines).
fn timing(test: &str, what: &str, took: Duration) {
    println!("KUBE-TIMING {test}: {what} {} ms", took.as_millis());
}

/// The resizer's leader deleted: a plain `kubectl delete pod`, waited for,
/// so it cannot act on what comes after; the sidecars do not release their
/// lease when they stop, so a resize waits for the other replica to take it
/// over once it runs out (15 s). Both replicas run first, the leader among
/// them. Returns (deleted, survivor) pod names.
fn delete_resizer_leader() -> (String, String) {
    rollout("deployment/swell-controller", Duration::from_secs(180));
    let (leader, survivor) = wait_for("a running replica leading the resizer, another beside it", Duration::from_secs(90), Duration::from_secs(1), |last| {
        let lease = get(&["-n", "swell-system", "lease", "external-resizer-swell-csi-storage"])?;
        let leader = text(&lease, "/spec/holderIdentity").to_owned();
        let pods = system(&[
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=controller",
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        *last = format!("leader {leader}, running {pods}");
        let running: Vec<&str> = pods.split_whitespace().collect();
        let survivor = running.iter().find(|p| **p != leader)?;
        running.contains(&leader.as_str()).then(|| (leader.clone(), (*survivor).to_owned()))
    });
    keep_logs(&leader);
    system(&["delete", "pod", &leader, "--wait=true", "--timeout=120s"]);
    (leader, survivor)
}

/// The controller replicas deleted and chosen in a disruptive step, for the
/// participants that did not run it.
static DELETED: Mutex<Option<(String, String)>> = Mutex::new(None);
