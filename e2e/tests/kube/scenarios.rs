//! The scenarios, written once for both backends (`main.rs` names a test
//! per backend). Each runs in a namespace of its own, which goes away with
//! its claims and volumes when it ends.

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
pub struct Timer {
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

/// StorageClass → claim → pod writing and fsyncing → `kubectl patch pvc` →
/// the claim's capacity, the pod's filesystem, the writer's records, kubelet's
/// own account of the NodeExpandVolume, and the request kubelet sent, which
/// e2e's stand-in must build exactly.
pub fn online_grow(backend: &Backend, module: &str) {
    let Some((test, _timer)) = ready(backend, module, "online_grow") else { return };
    let (ns, pv, id, uid) = mounted(backend, &format!("{}-online", backend.name), "1Gi", true);
    let before = filesystem_bytes(&ns, "app");
    assert!(before < GI, "a 1Gi volume shows {before} bytes");
    std::thread::sleep(Duration::from_secs(1));

    let patched = Instant::now();
    let ran = request(&ns, "data", "2Gi");
    assert!(ran.ok, "the grow to 2Gi was refused: {}", ran.stderr);
    let pv_grown = wait_for("PV capacity 2Gi", RESIZE_DEADLINE, POLL, |last| {
        let v = get(&["pv", &pv])?;
        *last = text(&v, "/spec/capacity/storage").to_owned();
        (bytes(text(&v, "/spec/capacity/storage")) >= 2 * GI).then(|| patched.elapsed())
    });
    let claim_grown = capacity_reaches(&ns, "data", "2Gi", patched, RESIZE_DEADLINE);
    let seen = wait_for("the pod seeing the grown filesystem", Duration::from_secs(30), POLL, |last| {
        let now = filesystem_bytes(&ns, "app");
        *last = format!("{now} bytes");
        (now > GI + GI / 2).then(|| patched.elapsed())
    });
    timing(&test, "patch to PV capacity (resizer and ControllerExpandVolume)", pv_grown);
    timing(&test, "patch to claim capacity (kubelet's NodeExpandVolume)", claim_grown);
    timing(&test, "patch to the pod seeing the grown filesystem", seen);
    // More than the old filesystem could hold, without a restart.
    can_allocate(&ns, "app", GI + GI / 8);

    // kubelet says so itself: an event on the pod, and its log where the lane runs it.
    let events = ns.kubectl(&["get", "events", "--field-selector", "involvedObject.name=app", "-o", "json"]);
    assert!(events.contains("FileSystemResizeSuccessful") && events.contains(&pv), "no FileSystemResizeSuccessful event for {pv}: {events}");
    if let Some(log) = &lane().kubelet_log {
        let kubelet = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("kubelet log {log}: {e}"));
        let line = format!("MountVolume.NodeExpandVolume succeeded for volume \\\"{pv}\\\"");
        assert!(kubelet.contains(&line), "kubelet's log {log} has no {line}");
    }

    // What kubelet sent, as Swell's node logged it, is what e2e's stand-in builds.
    let log = node_log();
    let sent = logged_request(&log, "NodeExpandVolume", &id).unwrap_or_else(|| panic!("the node logged no NodeExpandVolume of {id}"));
    let stand_in = requests::node_expand(&id, &publish_path(&uid, &pv), &staging_path(&id), (2 * GI) as i64, requests::mount_capability("xfs"));
    assert_eq!(sent, format!("{stand_in:?}"), "kubelet sent something else than e2e's stand-in (requests::node_expand) builds");
    let before_call: Vec<&str> = log.lines().take_while(|l| !l.contains(&format!("volume_id: \"{id}\"")) || !l.contains("NodeExpandVolume")).collect();
    let last_rpc = before_call.iter().rev().find(|l| l.contains("rpc=\"")).copied().unwrap_or("");
    assert!(last_rpc.contains("rpc=\"NodeGetCapabilities\""), "kubelet did not ask NodeGetCapabilities right before NodeExpandVolume: {last_rpc}");

    let records = writer_finished_clean(&ns, "app");
    println!("{test}: {records} records written and fsynced across the grow, all read back");
}

/// An increase beyond what the backend can promise: refused by the webhook
/// with Swell's reason, the claim left as it was.
pub fn oversize_denied(backend: &Backend, module: &str) {
    let Some((_test, _timer)) = ready(backend, module, "oversize_denied") else { return };
    let (ns, _pv, _id, _uid) = mounted(backend, &format!("{}-oversize", backend.name), "1Gi", false);
    let (room, message) = room_left(&ns, "data");
    assert!(room > 0, "the pool has no room: {message}");
    let spec = ns.get(&["pvc", "data"]).expect("claim");
    assert_eq!(text(&spec, "/spec/resources/requests/storage"), "1Gi", "a denied request changed the claim");
}

/// Asks `claim` for 1 Pi (more than any test pool holds) and returns the room
/// Swell's denial names ("can promise only X more") with the message.
fn room_left(ns: &Namespace, claim: &str) -> (u64, String) {
    let ran = request(ns, claim, "1Pi");
    assert!(!ran.ok, "1Pi was admitted");
    let message = ran.stderr;
    assert!(message.contains("admission webhook \"resize.swell.csi.storage\" denied the request"), "not denied by Swell's webhook: {message}");
    assert!(message.contains("under Swell's capacity policy: request at most"), "not Swell's capacity reason: {message}");
    let room = message.split("can promise only ").nth(1).and_then(|r| r.split(' ').next()).map(bytes).expect("the denial names the room");
    (room, message)
}

/// Two `kubectl patch` at once on a claim at rest: exactly one is admitted,
/// the other denied as "still growing", and the claim ends at the winner's size.
pub fn racing_patches(backend: &Backend, module: &str) {
    let Some((_test, _timer)) = ready(backend, module, "racing_patches") else { return };
    let (ns, _pv, _id, _uid) = mounted(backend, &format!("{}-race", backend.name), "1Gi", false);
    let (two, three) = std::thread::scope(|s| {
        let two = s.spawn(|| request(&ns, "data", "2Gi"));
        let three = s.spawn(|| request(&ns, "data", "3Gi"));
        (two.join().expect("patch 2Gi"), three.join().expect("patch 3Gi"))
    });
    assert!(two.ok != three.ok, "both or neither admitted: 2Gi {:?}, 3Gi {:?}", two.stderr, three.stderr);
    let (winner, loser) = if two.ok { ("2Gi", three) } else { ("3Gi", two) };
    assert!(
        loser.stderr.contains("denied the request") && loser.stderr.contains("still growing"),
        "the loser was not refused as a resize in flight: {}",
        loser.stderr
    );
    capacity_reaches(&ns, "data", winner, Instant::now(), RESIZE_DEADLINE);
}

/// A request below the claim's capacity never reaches the webhook: the API
/// server refuses it itself.
pub fn shrink_refused(backend: &Backend, module: &str) {
    let Some((_test, _timer)) = ready(backend, module, "shrink_refused") else { return };
    let (ns, _pv, _id, _uid) = mounted(backend, &format!("{}-shrink", backend.name), "1Gi", false);
    let ran = request(&ns, "data", "512Mi");
    assert!(!ran.ok, "a shrink to 512Mi was admitted");
    assert!(ran.stderr.contains("can not be less than"), "not the API server's refusal: {}", ran.stderr);
    assert!(!ran.stderr.contains("admission webhook"), "the webhook, not the API server, refused it: {}", ran.stderr);
}

/// A raw block claim grown while the pod holds the device open: the pod sees
/// the new size on the open device, its data stays, and the new end is writable.
pub fn block_grows_held_open(backend: &Backend, module: &str) {
    let Some((test, _timer)) = ready(backend, module, "block") else { return };
    let ns = Namespace::new(&format!("{}-block", backend.name));
    apply(&json!({ "apiVersion": "v1", "kind": "List", "items": [claim("data", backend.class, "1Gi", true, None), block_pod("app", "data")] }).with_ns(&ns));
    let uid = running(&ns, "app");
    let (pv, id) = bound(&ns, "data");
    let size = |ns: &Namespace| ns.exec("app", &["blockdev", "--getsize64", "/dev/xvda"]).trim().parse::<u64>().expect("blockdev prints a size");
    assert_eq!(size(&ns), GI);
    let patched = Instant::now();
    let ran = request(&ns, "data", "2Gi");
    assert!(ran.ok, "the grow to 2Gi was refused: {}", ran.stderr);
    let took = capacity_reaches(&ns, "data", "2Gi", patched, RESIZE_DEADLINE);
    timing(&test, "patch to claim capacity (raw block)", took);
    wait_for("the pod's device at 2Gi", Duration::from_secs(30), POLL, |last| {
        let now = size(&ns);
        *last = now.to_string();
        (now == 2 * GI).then_some(())
    });
    // Still the same holder, its device still open, the marker intact.
    let fd = ns.exec("app", &["readlink", "/proc/1/fd/3"]);
    assert_eq!(fd.trim(), "/dev/xvda", "the pod no longer holds the device open");
    let p = ns.get(&["pod", "app"]).expect("pod");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], json!(0));
    let marker = ns.exec("app", &["sh", "-c", "dd if=/dev/xvda bs=19 count=1 2>/dev/null"]);
    assert_eq!(marker, "swell block marker\n", "the data before the grow is gone");
    let beyond = ns.exec("app", &["sh", "-c", "printf 'beyond the old end\\n' | dd of=/dev/xvda bs=1M seek=1536 conv=fsync 2>/dev/null && dd if=/dev/xvda bs=1M skip=1536 count=1 2>/dev/null | head -c 19"]);
    assert_eq!(beyond, "beyond the old end\n", "the grown part of the device is not writable");
    // What kubelet sent for a raw block volume is what e2e's stand-in builds:
    // the pod's device file as volume_path, the PV's staging directory.
    let sent = logged_request(&node_log(), "NodeExpandVolume", &id).unwrap_or_else(|| panic!("the node logged no NodeExpandVolume of {id}"));
    let root = format!("{KUBELET_ROOT}/plugins/kubernetes.io/csi/volumeDevices");
    let stand_in =
        requests::node_expand(&id, &format!("{root}/publish/{pv}/{uid}"), &format!("{root}/staging/{pv}"), (2 * GI) as i64, requests::block_capability());
    assert_eq!(sent, format!("{stand_in:?}"), "kubelet sent something else than e2e's stand-in (requests::node_expand) builds");
}

/// A snapshot restored into a larger claim: the pod sees the data and the
/// larger filesystem.
pub fn snapshot_restored_larger(backend: &Backend, module: &str) {
    let Some((_test, _timer)) = ready(backend, module, "snapshot") else { return };
    let (ns, _pv, _id, _uid) = mounted(backend, &format!("{}-snapshot", backend.name), "1Gi", false);
    let sum = ns.exec("app", &["sh", "-c", "seq 1 200000 > /data/payload && sync /data/payload && sha256sum /data/payload"]);
    apply(
        &json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": { "name": "snap" },
            "spec": { "volumeSnapshotClassName": backend.class, "source": { "persistentVolumeClaimName": "data" } }
        })
        .with_ns(&ns),
    );
    wait_for("the snapshot ready to use", Duration::from_secs(120), Duration::from_millis(500), |last| {
        let s = ns.get(&["volumesnapshot", "snap"])?;
        *last = s["status"].to_string();
        (s["status"]["readyToUse"] == json!(true)).then_some(())
    });
    apply(&json!({ "apiVersion": "v1", "kind": "List", "items": [claim("restored", backend.class, "2Gi", false, Some("snap")), pod("reader", "restored", false)] }).with_ns(&ns));
    running(&ns, "reader");
    let size = filesystem_bytes(&ns, "reader");
    assert!(size > GI + GI / 2, "the restored 2Gi claim shows a filesystem of {size} bytes");
    can_allocate(&ns, "reader", GI + GI / 8);
    let restored = ns.exec("reader", &["sha256sum", "/data/payload"]);
    assert_eq!(restored, sum, "the restored volume does not hold the snapshot's data");
}

/// The node plugin's pod killed once the controller grew the volume and kept
/// away until kubelet's NodeExpandVolume failed; back again, kubelet retries
/// and the grow finishes; the writer never noticed; nothing stays mounted.
///
/// Except on RBD volumes attached with rbd-fuse (hosts without the rbd and
/// nbd modules, such as the lane's): rbd-fuse runs in the node plugin's
/// container and dies with it, so the writer's I/O fails. There the test
/// checks what still holds: every record fsynced before reads back in a new
/// pod, the grow finishes there, nothing stays mounted; and says so.
pub fn node_plugin_killed(backend: &Backend, module: &str) {
    let Some((test, _timer)) = ready(backend, module, "node_plugin_killed") else { return };
    let meeting = join("node-plugin-killed", backend.name);
    let _release = NodePluginHold;
    let (ns, pv, id, _uid) = mounted(backend, &format!("{}-node-kill", backend.name), "1Gi", true);
    let fuse = backend.name == "rbd" && node_log().contains("mode=rbd-fuse+loop");
    let patched = Instant::now();
    let ran = request(&ns, "data", "2Gi");
    assert!(ran.ok, "the grow to 2Gi was refused: {}", ran.stderr);
    wait_for("the controller's part done (NodeResizePending)", RESIZE_DEADLINE, POLL, |last| {
        *last = resize_state(&ns, "data");
        (last == "NodeResizePending").then_some(())
    });
    meeting.together("hold the node plugin away", NodePluginHold::hold);
    // kubelet tries, and fails while the plugin is away (or, with rbd-fuse,
    // the writer's volume went with the plugin).
    let lost = wait_for("kubelet's NodeExpandVolume failing without the plugin", Duration::from_secs(90), Duration::from_millis(500), |last| {
        let events = ns.kubectl(&["get", "events", "--field-selector", "involvedObject.name=app", "-o", "json"]);
        let failed_event = events.contains("FileSystemResizeFailed");
        let failed_log = lane()
            .kubelet_log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .is_some_and(|k| k.lines().any(|l| l.contains("NodeExpandVolume failed") && l.contains(&pv)));
        let phase = ns.get(&["pod", "app"]).map(|p| text(&p, "/status/phase").to_owned()).unwrap_or_default();
        *last = format!("event {failed_event}, kubelet log {failed_log}, writer pod {phase}");
        if failed_event || failed_log {
            return Some(false);
        }
        (fuse && phase == "Failed").then_some(true)
    });
    meeting.together("bring the node plugin back", NodePluginHold::release);
    if !lost {
        let took = capacity_reaches(&ns, "data", "2Gi", patched, RESIZE_DEADLINE);
        timing(&test, "patch to claim capacity across the node plugin's outage", took);
        assert!(filesystem_bytes(&ns, "app") > GI + GI / 2, "the pod's filesystem did not grow");
        writer_finished_clean(&ns, "app");
    } else {
        let writer = ns.get(&["pod", "app"]).map(|p| p["status"]["containerStatuses"][0]["state"]["terminated"].to_string()).unwrap_or_default();
        println!("KNOWN LIMITATION {test}: rbd-fuse died with the node plugin; the writer ended: {writer}");
        ns.kubectl(&["delete", "pod", "app", "--grace-period=0", "--force", "--wait=true"]);
        // kubelet keeps a volume staged for the node's next pod; the dead
        // attachment must go first (NodeUnstageVolume), so a new pod gets a fresh one.
        let staging_dir = staging_path(&id).trim_end_matches("/globalmount").to_owned();
        wait_for("the dead attachment unstaged", Duration::from_secs(120), Duration::from_millis(500), |last| {
            let mounts = on_node(&["cat", "/proc/self/mountinfo"]);
            *last = mounts.lines().filter(|l| l.contains(&staging_dir)).collect::<Vec<_>>().join("\n");
            last.is_empty().then_some(())
        });
        apply(&pod("after", "data", false).with_ns(&ns));
        running(&ns, "after");
        let took = capacity_reaches(&ns, "data", "2Gi", patched, RESIZE_DEADLINE);
        timing(&test, "patch to claim capacity, the pod recreated after the outage", took);
        assert!(filesystem_bytes(&ns, "after") > GI + GI / 2, "the new pod's filesystem did not grow");
        let records = ns.exec("after", &["cat", "/data/records"]);
        let lines: Vec<&str> = records.lines().collect();
        // Every complete record in order; only the last may be torn by the failed write.
        for (i, line) in lines.iter().enumerate() {
            let expected = format!("record {i:08} swell");
            assert!(*line == expected || (i + 1 == lines.len() && expected.starts_with(line)), "record {i} does not read back: {line:?}");
        }
        assert!(lines.len() > 10, "only {} records read back", lines.len());
        println!("{test}: {} records read back after the outage", lines.len());
    }
    drop(ns);
    no_mounts_of(&pv, &id);
}

/// The node plugin kept off the node: a nodeSelector no node has stops the
/// DaemonSet from starting a new pod once the running one is killed. Undone
/// by `release`, and by dropping the guard of a failing test.
struct NodePluginHold;

impl NodePluginHold {
    fn hold() {
        let pods = system(&["get", "pods", "-l", "app.kubernetes.io/component=node", "-o", "jsonpath={.items[*].metadata.name}"]);
        pods.split_whitespace().for_each(keep_logs);
        system(&["patch", "daemonset", "swell-node", "-p", r#"{"spec":{"template":{"spec":{"nodeSelector":{"swell.test/hold-node-plugin":"true"}}}}}"#]);
        system(&["delete", "pod", "-l", "app.kubernetes.io/component=node", "--grace-period=0", "--force", "--wait=false"]);
        wait_for("the node plugin gone", Duration::from_secs(60), POLL, |last| {
            *last = system(&["get", "pods", "-l", "app.kubernetes.io/component=node", "-o", "name"]);
            last.trim().is_empty().then_some(())
        });
    }

    fn release() {
        let ds = get(&["-n", "swell-system", "daemonset", "swell-node"]).expect("the node DaemonSet");
        if ds.pointer("/spec/template/spec/nodeSelector").is_some() {
            system(&["patch", "daemonset", "swell-node", "--type=json", "-p", r#"[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]"#]);
        }
        system(&["rollout", "status", "daemonset/swell-node", "--timeout=120s"]);
    }
}

impl Drop for NodePluginHold {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = try_kubectl(
                &[
                    "-n",
                    "swell-system",
                    "patch",
                    "daemonset",
                    "swell-node",
                    "--type=json",
                    "-p",
                    r#"[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]"#,
                ],
                None,
            );
        }
    }
}

/// After the volume's claim is gone: no staging or publish mount of it and no
/// loop device on its backing object, as the node plugin sees the host.
fn no_mounts_of(pv: &str, id: &str) {
    let staging = staging_path(id);
    let staging_dir = staging.trim_end_matches("/globalmount").to_owned();
    wait_for(&format!("no mount of {pv} left"), Duration::from_secs(120), Duration::from_millis(500), |last| {
        let mounts = on_node(&["cat", "/proc/self/mountinfo"]);
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(pv) || l.contains(&staging_dir)).collect();
        *last = left.join("\n");
        left.is_empty().then_some(())
    });
}

/// The resizer's leader; deleting it (force, no lease release) leaves a
/// resize to the other replica once the lease runs out. Returns (deleted,
/// survivor) pod names.
fn delete_resizer_leader() -> (String, String) {
    let lease = get(&["-n", "swell-system", "lease", "external-resizer-swell-csi-storage"]).expect("the resizer's lease");
    let leader = text(&lease, "/spec/holderIdentity").to_owned();
    let pods = system(&["get", "pods", "-l", "app.kubernetes.io/component=controller", "-o", "jsonpath={.items[*].metadata.name}"]);
    let survivor = pods.split_whitespace().find(|p| *p != leader).unwrap_or_else(|| panic!("no second controller replica beside {leader}: {pods}")).to_owned();
    keep_logs(&leader);
    system(&["delete", "pod", &leader, "--grace-period=0", "--force", "--wait=false"]);
    (leader, survivor)
}

/// The controller replicas deleted and chosen in a disruptive step, for the
/// participants that did not run it.
static DELETED: Mutex<Option<(String, String)>> = Mutex::new(None);

/// The resizer's leader deleted just before a claim is grown: the other
/// replica takes the lease over and grows it; the writer never noticed.
pub fn controller_leader_deleted(backend: &Backend, module: &str) {
    let Some((test, _timer)) = ready(backend, module, "controller_leader_deleted") else { return };
    let meeting = join("controller-leader-deleted", backend.name);
    let (ns, pv, _id, _uid) = mounted(backend, &format!("{}-controller-kill", backend.name), "1Gi", true);
    meeting.together("delete the resizer's leader", || {
        *DELETED.lock().unwrap_or_else(|p| p.into_inner()) = Some(delete_resizer_leader());
    });
    let (deleted, survivor) = DELETED.lock().unwrap_or_else(|p| p.into_inner()).clone().expect("a leader was deleted");
    let patched = Instant::now();
    let ran = request(&ns, "data", "2Gi");
    assert!(ran.ok, "the grow to 2Gi was refused: {}", ran.stderr);
    let took = capacity_reaches(&ns, "data", "2Gi", patched, RESIZE_DEADLINE);
    timing(&test, "patch to claim capacity with the resizer's leader deleted", took);
    let lease = get(&["-n", "swell-system", "lease", "external-resizer-swell-csi-storage"]).expect("lease");
    let holder = text(&lease, "/spec/holderIdentity");
    assert_ne!(holder, deleted, "the deleted replica still holds the resizer's lease");
    let resizer = system(&["logs", holder, "-c", "csi-resizer"]);
    assert!(resizer.contains(&pv), "the new leader {holder}'s resizer never handled {pv}");
    println!("{test}: resizer leader {deleted} deleted; {holder} finished the grow (the surviving replica was {survivor})");
    writer_finished_clean(&ns, "app");
}

/// KEP-1790: two claims grown while no resizer leads, each admitted alone,
/// together more than the pool holds: one fails (ControllerResizeInfeasible);
/// asking more on top is denied, lowering it is admitted and it then grows.
pub fn infeasible_lowered(backend: &Backend, module: &str) {
    let Some((_test, _timer)) = ready(backend, module, "infeasible_lowered") else { return };
    let meeting = join("kep1790", backend.name);
    let ns = Namespace::new(&format!("{}-kep1790", backend.name));
    let items: Vec<Value> = ["a", "b"].iter().flat_map(|n| [claim(n, backend.class, "1Gi", false, None), pod(n, n, false)]).collect();
    apply(&json!({ "apiVersion": "v1", "kind": "List", "items": items }).with_ns(&ns));
    for n in ["a", "b"] {
        running(&ns, n);
        bound(&ns, n);
    }
    let (room, _) = room_left(&ns, "a");
    // Each alone fits; both together do not.
    let each = GI + (room / 10 * 6) / (1 << 20) * (1 << 20);
    let each_size = format!("{}Mi", each >> 20);
    meeting.together("delete the resizer's leader", || {
        *DELETED.lock().unwrap_or_else(|p| p.into_inner()) = Some(delete_resizer_leader());
    });
    for n in ["a", "b"] {
        let ran = request(&ns, n, &each_size);
        assert!(ran.ok, "claim {n} to {each_size} (room {room}) was refused: {}", ran.stderr);
    }
    let (failed, grew) = wait_for("one claim infeasible, the other growing", RESIZE_DEADLINE, Duration::from_millis(500), |last| {
        let (a, b) = (resize_state(&ns, "a"), resize_state(&ns, "b"));
        *last = format!("a {a}, b {b}");
        match (a.as_str(), b.as_str()) {
            ("ControllerResizeInfeasible", _) => Some(("a", "b")),
            (_, "ControllerResizeInfeasible") => Some(("b", "a")),
            _ => None,
        }
    });
    capacity_reaches(&ns, grew, &each_size, Instant::now(), RESIZE_DEADLINE);
    let more = request(&ns, failed, &format!("{}Mi", (each >> 20) + 1024));
    assert!(!more.ok && more.stderr.contains("cannot be asked for on top of it"), "more on top of a failed grow was not refused by Swell: {}", more.stderr);
    let lowered = request(&ns, failed, "2Gi");
    assert!(lowered.ok, "lowering the failed request to 2Gi (KEP-1790) was refused: {}", lowered.stderr);
    capacity_reaches(&ns, failed, "2Gi", Instant::now(), RESIZE_DEADLINE);
}

/// `swell volumes`, run in a controller pod, shows the states README names
/// in order while a grow goes through them: waiting for resizer (no resizer
/// leads), growing with the backend's error (its grow fails until mended),
/// node expanding (kubelet has not synced the pod yet), settled.
///
/// On RBD the fault is a paused cluster, which also blocks the pool's state
/// object where Swell records the wish: there `swell volumes` names the
/// backend that did not answer, and still shows the other backend's volumes.
pub fn swell_volumes_states(backend: &Backend, module: &str) {
    let Some((test, _timer)) = ready(backend, module, "swell_volumes") else { return };
    let meeting = join("swell-volumes", backend.name);
    let (ns, _pv, id, _uid) = mounted(backend, &format!("{}-states", backend.name), "1Gi", false);
    let fault = Fault::for_backend(backend, &id);
    meeting.together("delete the resizer's leader", || {
        *DELETED.lock().unwrap_or_else(|p| p.into_inner()) = Some(delete_resizer_leader());
    });
    let (_, survivor) = DELETED.lock().unwrap_or_else(|p| p.into_inner()).clone().expect("a leader was deleted");
    let mut seen: Vec<String> = Vec::new();
    // (state, last error, problems) of the volume as `swell volumes -o json` shows it.
    let mut state = |last: &mut String| -> (String, String, String) {
        // It exits 1 when a backend did not answer, and still prints what it read.
        let ran = try_kubectl(&["-n", "swell-system", "exec", &survivor, "-c", "swell-controller", "--", "swell", "volumes", "-o", "json"], None);
        let Ok(all) = serde_json::from_str::<Value>(&ran.stdout) else {
            *last = ran.stderr;
            return Default::default();
        };
        let row = all["volumes"].as_array().and_then(|v| v.iter().find(|r| r["volume_id"] == json!(id))).cloned().unwrap_or_default();
        let now = text(&row, "/state").to_owned();
        if !now.is_empty() && seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        *last = format!("{} (last error {}, problems {})", row["state"], row["last_error"], all["problems"]);
        (now, text(&row, "/last_error").to_owned(), all["problems"].to_string())
    };
    let ran = request(&ns, "data", "2Gi");
    assert!(ran.ok, "the grow to 2Gi was refused: {}", ran.stderr);
    wait_for("waiting-for-resizer", Duration::from_secs(30), POLL, |last| (state(last).0 == "waiting-for-resizer").then_some(()));
    fault.set();
    let shown = wait_for("the failing grow shown", Duration::from_secs(90), POLL, |last| {
        let (now, error, problems) = state(last);
        match backend.name {
            "local" => (now == "growing" && !error.is_empty()).then(|| format!("growing, last error: {error}")),
            _ => problems.contains("rbd").then(|| format!("problems: {problems}")),
        }
    });
    fault.clear();
    wait_for("node-expanding", RESIZE_DEADLINE, POLL, |last| (state(last).0 == "node-expanding").then_some(()));
    wait_for("settled", RESIZE_DEADLINE, Duration::from_millis(500), |last| (state(last).0 == "settled").then_some(()));
    capacity_reaches(&ns, "data", "2Gi", Instant::now(), Duration::from_secs(10));
    println!("{test}: states seen in order: {}; while the backend failed: {shown}", seen.join(" → "));
}

/// A backend grow that fails until cleared: the local volume's backing file
/// made immutable; the RBD cluster's OSDs paused (needs the lane's Ceph admin).
struct Fault {
    set: Vec<String>,
    clear: Vec<String>,
    on_node: bool,
}

impl Fault {
    fn for_backend(backend: &Backend, id: &str) -> Fault {
        match backend.name {
            "local" => {
                let key = id.strip_prefix("local:").expect("a local volume id");
                let file = format!("/var/lib/swell/local/volumes/{key}.img");
                Fault { set: vec!["chattr".into(), "+i".into(), file.clone()], clear: vec!["chattr".into(), "-i".into(), file], on_node: true }
            }
            _ => {
                let conf =
                    lane().ceph_admin_conf.clone().expect("SWELL_KUBE_CEPH_ADMIN_CONF: the RBD backend's grow is failed by pausing the test cluster's OSDs");
                let ceph = |verb: &str| vec!["ceph".into(), "-c".into(), conf.clone(), "osd".into(), verb.into()];
                Fault { set: ceph("pause"), clear: ceph("unpause"), on_node: false }
            }
        }
    }

    fn run(&self, argv: &[String]) {
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        if self.on_node {
            on_node(&args);
        } else {
            let out = std::process::Command::new("timeout").args(["30"]).args(&args).output().expect("run ceph");
            assert!(out.status.success(), "{}: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr));
        }
    }

    fn set(&self) {
        self.run(&self.set);
    }

    fn clear(&self) {
        self.run(&self.clear);
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        // Never leave the fault behind a failed test.
        if std::thread::panicking() {
            let args: Vec<&str> = self.clear.iter().map(String::as_str).collect();
            if self.on_node {
                let _ = try_kubectl(&[&["-n", "swell-system", "exec", "ds/swell-node", "-c", "swell-node", "--"][..], &args[..]].concat(), None);
            } else {
                let _ = std::process::Command::new("timeout").args(["30"]).args(&args).output();
            }
        }
    }
}

/// Once every scenario deleted its namespace: no PV of the backend, no
/// volume or snapshot at the backend, no mount and no loop device of it.
pub fn everything_deleted(backend: &Backend, module: &str) {
    let Some((_test, _timer)) = ready(backend, module, "everything_deleted") else { return };
    let deadline = Duration::from_secs(180);
    wait_for("no PV of the backend", deadline, Duration::from_secs(1), |last| {
        let pvs = get(&["pv"]).expect("pv list");
        let ours: Vec<String> = pvs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| text(p, "/spec/storageClassName") == backend.class)
            .map(|p| text(p, "/metadata/name").to_owned())
            .collect();
        *last = ours.join(", ");
        ours.is_empty().then_some(())
    });
    wait_for("no VolumeSnapshotContent of the backend", deadline, Duration::from_secs(1), |last| {
        let contents = get(&["volumesnapshotcontents"]).expect("contents");
        let ours: Vec<String> = contents["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| text(c, "/spec/volumeSnapshotClassName") == backend.class)
            .map(|c| text(c, "/metadata/name").to_owned())
            .collect();
        *last = ours.join(", ");
        ours.is_empty().then_some(())
    });
    let (listing, loops_under): (Vec<&str>, &str) = match backend.name {
        "local" => (
            vec!["sh", "-c", "ls -A /var/lib/swell/local/volumes /var/lib/swell/local/snapshots | grep -v ':$' | grep -v '^$' || true"],
            "/var/lib/swell/local/",
        ),
        _ => (
            vec![
                "sh",
                "-c",
                "rbd -c \"$SWELL_RBD_CEPH_CONF\" --keyring \"$SWELL_RBD_KEYRING\" --id \"$SWELL_RBD_USER\" ls -l \"$SWELL_RBD_POOL\"; rbd -c \"$SWELL_RBD_CEPH_CONF\" --keyring \"$SWELL_RBD_KEYRING\" --id \"$SWELL_RBD_USER\" trash ls \"$SWELL_RBD_POOL\"",
            ],
            "/var/lib/swell/node/rbd-fuse/",
        ),
    };
    wait_for("no volume or snapshot left at the backend", deadline, Duration::from_secs(2), |last| {
        *last = on_controller(&listing);
        last.trim().is_empty().then_some(())
    });
    let mounts = on_node(&["cat", "/proc/self/mountinfo"]);
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains("kubernetes.io~csi") || l.contains(&format!("kubernetes.io/csi/{DRIVER}/")) || l.contains("fuse.rbd-fuse"))
        .collect();
    assert!(left.is_empty(), "mounts left:\n{}", left.join("\n"));
    let loops = on_node(&["sh", "-c", "cat /sys/block/loop*/loop/backing_file 2>/dev/null || true"]);
    let left: Vec<&str> = loops.lines().filter(|l| l.starts_with(loops_under)).collect();
    assert!(left.is_empty(), "loop devices left on {}", left.join(", "));
}
