//! What the scenarios put on the cluster, as a user would: claims, a pod
//! that writes and fsyncs records without pause, a pod holding a raw block
//! device open; and what they check on them: the claim's status, the size
//! the pod sees, the writer's records.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Namespace, bytes, text, wait_for};

/// How often a resize's progress is read: every read is a kubectl process,
/// and a dozen scenarios poll at once on two cores.
pub(crate) const POLL: Duration = Duration::from_millis(500);

/// The workload image, preloaded by the lane (busybox on other clusters).
pub(crate) fn image() -> String {
    std::env::var("SWELL_KUBE_WORKLOAD_IMAGE").unwrap_or_else(|_| "swell.test/busybox:1".to_owned())
}

/// A claim of `size` on `class`; `block` for a raw block claim; `source` a
/// VolumeSnapshot to restore.
pub(crate) fn claim(name: &str, class: &str, size: &str, block: bool, source: Option<&str>) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": class,
        "volumeMode": if block { "Block" } else { "Filesystem" },
        "resources": { "requests": { "storage": size } },
    });
    if let Some(snapshot) = source {
        spec["dataSource"] = json!({ "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot });
    }
    json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": name }, "spec": spec })
}

/// Appends numbered records to /data/records, each followed by an fsync of
/// the file (busybox `sync FILE`), until /data/stop appears; the first
/// failed write or fsync is kept in /data/writer-error and ends it. The
/// pod's only container: a failure shows as a restart, too.
const WRITER: &str = r#"
i=0
while [ ! -e /data/stop ]; do
  if ! printf 'record %08d swell\n' "$i" >> /data/records; then echo "write of record $i failed" > /data/writer-error; exit 1; fi
  if ! sync /data/records; then echo "fsync after record $i failed" > /data/writer-error; exit 1; fi
  i=$((i + 1))
  usleep 20000
done
echo "$i" > /data/writer-done
sync /data/writer-done
exec sleep 100000
"#;

/// Fills /data steadily, 2 MiB a chunk, each its own file and fsynced,
/// about 5 MiB/s, until the first failed chunk, or until /tmp/stop appears.
/// A full volume has no room for a note, so the failure and `df` at that
/// moment go to /tmp/writer-stopped, in the container's own filesystem.
const FILLER: &str = r#"
mkdir -p /data/fill
i=0
while [ ! -e /tmp/stop ]; do
  if ! dd if=/dev/zero of=/data/fill/$i bs=1M count=2 conv=fsync 2>/tmp/dd-error; then
    { echo "chunk $i failed: $(cat /tmp/dd-error)"; df -P -k /data; } > /tmp/writer-stopped
    break
  fi
  i=$((i + 1))
  usleep 400000
done
exec sleep 100000
"#;

/// A pod mounting `claim` at /data whose container fills it (above).
pub(crate) fn filler_pod(name: &str, claim: &str) -> Value {
    pod_using(name, claim, json!(["sh", "-c", FILLER]), json!({ "volumeMounts": [{ "name": "data", "mountPath": "/data" }] }))
}

/// A pod mounting `claim` at /data: the writer above, or (`writer` false) idle.
pub(crate) fn pod(name: &str, claim: &str, writer: bool) -> Value {
    let command = if writer { json!(["sh", "-c", WRITER]) } else { json!(["sleep", "100000"]) };
    pod_using(name, claim, command, json!({ "volumeMounts": [{ "name": "data", "mountPath": "/data" }] }))
}

/// A pod with `claim` as the raw device /dev/xvda: it writes a marker at
/// its start, then keeps the device open (fd 3) for as long as it runs.
pub(crate) fn block_pod(name: &str, claim: &str) -> Value {
    let script = "printf 'swell block marker\\n' | dd of=/dev/xvda conv=fsync 2>/dev/null && exec 3<>/dev/xvda && exec sleep 100000";
    pod_using(name, claim, json!(["sh", "-c", script]), json!({ "volumeDevices": [{ "name": "data", "devicePath": "/dev/xvda" }] }))
}

/// One container running `command` with `claim` as the volume `data`, used as `volume` says.
fn pod_using(name: &str, claim: &str, command: Value, volume: Value) -> Value {
    let mut container = json!({ "name": "app", "image": image(), "imagePullPolicy": "IfNotPresent", "command": command });
    if let (Some(c), Some(v)) = (container.as_object_mut(), volume.as_object()) {
        c.extend(v.clone());
    }
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": claim } }],
        }
    })
}

/// Waits until `pod` runs; returns its uid.
pub(crate) fn running(ns: &Namespace, pod: &str) -> String {
    wait_for(&format!("pod {}/{pod} Running", ns.name), Duration::from_secs(180), Duration::from_secs(1), |last| {
        let p = ns.get(&["pod", pod])?;
        *last = format!("{} {}", text(&p, "/status/phase"), p["status"]["containerStatuses"]);
        assert_ne!(text(&p, "/status/phase"), "Failed", "pod {}/{pod} failed: {}", ns.name, p["status"]);
        (text(&p, "/status/phase") == "Running").then(|| text(&p, "/metadata/uid").to_owned())
    })
}

/// The claim's bound PersistentVolume name and its CSI volume handle (Swell's volume id).
pub(crate) fn bound(ns: &Namespace, claim: &str) -> (String, String) {
    let pv = wait_for(&format!("claim {}/{claim} bound", ns.name), Duration::from_secs(120), Duration::from_secs(1), |last| {
        let c = ns.get(&["pvc", claim])?;
        *last = c["status"].to_string();
        (text(&c, "/status/phase") == "Bound").then(|| text(&c, "/spec/volumeName").to_owned())
    });
    let volume = crate::cluster::get(&["pv", &pv]).expect("the bound PV exists");
    let handle = text(&volume, "/spec/csi/volumeHandle").to_owned();
    assert!(!handle.is_empty(), "PV {pv} has no CSI volume handle: {}", volume["spec"]);
    (pv, handle)
}

/// `kubectl patch pvc` of the storage request; the outcome, success or not.
pub(crate) fn request(ns: &Namespace, claim: &str, size: &str) -> crate::cluster::Ran {
    let patch = json!({ "spec": { "resources": { "requests": { "storage": size } } } }).to_string();
    ns.try_kubectl(&["patch", "pvc", claim, "-p", &patch])
}

/// Waits until the claim's `status.capacity` is `size`; returns the time it took from `since`.
pub(crate) fn capacity_reaches(ns: &Namespace, claim: &str, size: &str, since: Instant, deadline: Duration) -> Duration {
    let want = bytes(size);
    wait_for(&format!("claim {}/{claim} capacity {size}", ns.name), deadline, POLL, |last| {
        let c = ns.get(&["pvc", claim])?;
        let capacity = text(&c, "/status/capacity/storage");
        *last = format!("capacity {capacity}, {}, conditions {}", c["status"]["allocatedResourceStatuses"], c["status"]["conditions"]);
        (!capacity.is_empty() && bytes(capacity) >= want).then(|| since.elapsed())
    })
}

/// The claim's resize state (`status.allocatedResourceStatuses.storage`), "" when none.
pub(crate) fn resize_state(ns: &Namespace, claim: &str) -> String {
    ns.get(&["pvc", claim]).map(|c| text(&c, "/status/allocatedResourceStatuses/storage").to_owned()).unwrap_or_default()
}

/// The size in bytes of the filesystem mounted at /data, as the pod sees it.
pub(crate) fn filesystem_bytes(ns: &Namespace, pod: &str) -> u64 {
    df_bytes(&ns.exec(pod, &["df", "-P", "-k", "/data"])).0
}

/// (size, used) in bytes of the filesystem under the header `df -P -k` printed.
pub(crate) fn df_bytes(df: &str) -> (u64, u64) {
    let line = df.lines().skip_while(|l| !l.starts_with("Filesystem")).nth(1).unwrap_or_else(|| panic!("df printed no filesystem: {df}"));
    let kib = |column: usize| -> u64 {
        line.split_whitespace().nth(column).and_then(|b| b.parse().ok()).unwrap_or_else(|| panic!("df line without column {column}: {line}"))
    };
    (kib(1) * 1024, kib(2) * 1024)
}

/// Proves the pod can use more than `more_than` bytes of /data: it
/// allocates a file that large, which a filesystem of the old size refuses,
/// and removes it again.
pub(crate) fn can_allocate(ns: &Namespace, pod: &str, bytes: u64) {
    let size = bytes.to_string();
    let ran = ns.try_kubectl(&["exec", pod, "--", "fallocate", "-l", &size, "/data/room"]);
    assert!(ran.ok, "pod {}/{pod} cannot allocate {bytes} bytes on the grown volume: {}", ns.name, ran.stderr);
    ns.exec(pod, &["rm", "-f", "/data/room"]);
}

/// Stops the writer of `pod` and checks its work: no write or fsync ever
/// failed, the container never restarted, and records 0..n read back in
/// order. Returns n.
pub(crate) fn writer_finished_clean(ns: &Namespace, pod: &str) -> u64 {
    ns.exec(pod, &["touch", "/data/stop"]);
    let written: u64 = wait_for(&format!("writer in {}/{pod} stopping", ns.name), Duration::from_secs(30), Duration::from_millis(300), |last| {
        let ran = ns.try_kubectl(&["exec", pod, "--", "cat", "/data/writer-done"]);
        *last = ran.stderr.clone();
        ran.ok.then(|| ran.stdout.trim().parse().ok()).flatten()
    });
    let error = ns.try_kubectl(&["exec", pod, "--", "cat", "/data/writer-error"]);
    assert!(!error.ok, "the writer in {}/{pod} saw an error: {}", ns.name, error.stdout);
    let p = ns.get(&["pod", pod]).expect("writer pod");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], json!(0), "the writer restarted: {}", p["status"]);
    let records = ns.exec(pod, &["cat", "/data/records"]);
    let mut count = 0u64;
    for (i, line) in records.lines().enumerate() {
        assert_eq!(line, format!("record {i:08} swell"), "record {i} of {}/{pod} does not read back", ns.name);
        count += 1;
    }
    assert_eq!(count, written, "the writer wrote {written} records, {count} read back");
    assert!(count > 0, "the writer wrote nothing");
    count
}

/// Swell's node log has the line of `rpc` for `volume`; the request as it was logged.
pub(crate) fn logged_request(log: &str, rpc: &str, volume: &str) -> Option<String> {
    let marker = format!("rpc=\"{rpc}\" request=");
    log.lines()
        .rev()
        .filter(|l| l.contains(&marker) && l.contains(&format!("volume_id: \"{volume}\"")))
        .find_map(|l| l.split_once(&marker).map(|(_, r)| r.trim().to_owned()))
}
