//! The last scenario: nothing of a backend left once everything is deleted.

use super::*;

/// Once every scenario deleted its namespace: no PV of the backend, no
/// volume or snapshot at the backend, no mount and no loop device of it.
pub(crate) fn everything_deleted(backend: &Backend, module: &str) {
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
            // Files only: the bucket directories stay once made (swell_local's layout).
            vec!["sh", "-c", "find /var/lib/swell/local/volumes /var/lib/swell/local/snapshots -type f || true"],
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
