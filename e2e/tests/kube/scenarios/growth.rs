//! Growing under a pod: a filesystem under a writer that fsyncs, a raw block
//! device held open, a snapshot restored into a larger claim.

use super::*;

/// StorageClass → claim → pod writing and fsyncing → `kubectl patch pvc` →
/// the claim's capacity, the pod's filesystem, the writer's records, kubelet's
/// own account of the NodeExpandVolume, and the request kubelet sent, which
/// e2e's stand-in must build exactly.
pub(crate) fn online_grow(backend: &Backend, module: &str) {
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
    // The filesystem before the claim: the node grows it as soon as the
    // backend has grown, ahead of kubelet's NodeExpandVolume.
    let seen = wait_for("the pod seeing the grown filesystem", RESIZE_DEADLINE, POLL, |last| {
        let now = filesystem_bytes(&ns, "app");
        *last = format!("{now} bytes");
        (now > GI + GI / 2).then(|| patched.elapsed())
    });
    let claim_grown = capacity_reaches(&ns, "data", "2Gi", patched, RESIZE_DEADLINE);
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
    // Other scenarios' volumes are served meanwhile: their calls are not kubelet's answer for this one.
    let other_volume = |l: &&&str| (l.contains("volume_id: \"") || l.contains("volume.id=")) && !l.contains(id.as_str());
    let last_rpc = before_call.iter().rev().filter(|l| !other_volume(l)).find(|l| l.contains("rpc=\"")).copied().unwrap_or("");
    assert!(last_rpc.contains("rpc=\"NodeGetCapabilities\""), "kubelet did not ask NodeGetCapabilities right before NodeExpandVolume: {last_rpc}");

    let records = writer_finished_clean(&ns, "app");
    println!("{test}: {records} records written and fsynced across the grow, all read back");
}

/// One claim grown five times by 256 MiB, 1 Gi → 2.25 Gi, each time timed
/// from the patch to the pod's `df` showing the new size: the latency a
/// writer sees, which the node's background grow
/// (`--grow-on-backend-change-ms`) keeps off kubelet's sync. Each step waits
/// for the claim too, so the next starts from a settled claim.
pub(crate) fn repeated_grows(backend: &Backend, module: &str) {
    let Some((test, _timer)) = ready(backend, module, "repeated_grows") else { return };
    let (ns, _pv, _id, _uid) = mounted(backend, &format!("{}-repeat", backend.name), "1Gi", false);
    const MI: u64 = 1 << 20;
    let mut seen = Vec::new();
    for step in 1..=5u64 {
        let mib = 1024 + 256 * step;
        let size = format!("{mib}Mi");
        let patched = Instant::now();
        let ran = request(&ns, "data", &size);
        assert!(ran.ok, "the grow to {size} was refused: {}", ran.stderr);
        // Past the old size by half a step: xfs shows its size less its log.
        let took = wait_for(&format!("the pod seeing a {size} filesystem"), RESIZE_DEADLINE, Duration::from_millis(200), |last| {
            let now = filesystem_bytes(&ns, "app");
            *last = format!("{now} bytes");
            (now > (mib - 128) * MI).then(|| patched.elapsed())
        });
        timing(&test, &format!("patch to the pod seeing the grown filesystem ({size})"), took);
        seen.push(took);
        capacity_reaches(&ns, "data", &size, patched, RESIZE_DEADLINE);
    }
    seen.sort();
    timing(&test, "patch to the pod seeing the grown filesystem, median of 5", seen[2]);
    timing(&test, "patch to the pod seeing the grown filesystem, slowest of 5", seen[4]);
}

/// A raw block claim grown while the pod holds the device open: the pod sees
/// the new size on the open device, its data stays, and the new end is writable.
pub(crate) fn block_grows_held_open(backend: &Backend, module: &str) {
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
pub(crate) fn snapshot_restored_larger(backend: &Backend, module: &str) {
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
