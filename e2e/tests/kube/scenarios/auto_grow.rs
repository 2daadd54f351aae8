//! Auto-grow under a real kubelet (docs/auto-grow.md): a pod fills a claim
//! whose class turns auto-grow on, and the node's usage report, the
//! controller's patch through the API server, the webhook, the resizer and
//! the node's background grow keep it writing, up to the class's limit.

use super::*;

const MI: u64 = 1 << 20;
/// The claim's first size: xfs needs 300 MiB.
const START: u64 = 320 * MI;
/// The class's policy: below half free, grow by half, up to 560 MiB, so
/// the second step (480 → 720 MiB) is cut to the limit.
const FREE_BELOW_PERCENT: u64 = 50;
const FIRST_STEP: u64 = 480 * MI;
const LIMIT: u64 = 560 * MI;
/// Filling 560 MiB at about 5 MiB/s, with room to spare on a loaded host.
const FILL_DEADLINE: Duration = Duration::from_secs(420);

/// A StorageClass of the scenario's own, deleted when it ends (after its
/// namespace: declare it first).
struct Class(String);

impl Drop for Class {
    fn drop(&mut self) {
        try_kubectl(&["delete", "storageclass", &self.0, "--ignore-not-found", "--wait=true"], None);
    }
}

/// The backend's class with auto-grow on: its parameters and the policy above.
fn auto_grow_class(backend: &Backend) -> Class {
    let base = get(&["storageclass", backend.class]).expect("the backend's StorageClass");
    let name = format!("{}-auto-grow", backend.class);
    let mut parameters = base["parameters"].clone();
    parameters["autoGrow"] = json!("true");
    parameters["autoGrowFreeBelow"] = json!(format!("{FREE_BELOW_PERCENT}%"));
    parameters["autoGrowStep"] = json!("50%");
    parameters["autoGrowLimit"] = json!(format!("{}Mi", LIMIT / MI));
    let mut class = json!({ "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": { "name": name }, "parameters": parameters });
    for field in ["provisioner", "allowVolumeExpansion", "reclaimPolicy", "volumeBindingMode", "mountOptions"] {
        if let Some(value) = base.get(field) {
            class[field] = value.clone();
        }
    }
    apply(&class);
    Class(name)
}

/// One look at the pod: its filesystem's (size, used), and what the writer
/// left when it stopped, if it did.
fn look(ns: &Namespace) -> ((u64, u64), Option<String>) {
    let out = ns.exec("app", &["sh", "-c", "df -P -k /data; echo ---; cat /tmp/writer-stopped 2>/dev/null || true"]);
    let (df, stopped) = out.split_once("---\n").unwrap_or((out.as_str(), ""));
    (df_bytes(df), (!stopped.trim().is_empty()).then(|| stopped.to_owned()))
}

/// The claim's Events whose reason starts with `AutoGrow`: (reason, message).
fn auto_grow_events(ns: &Namespace) -> Vec<(String, String)> {
    let events = ns.get(&["events", "--field-selector", "involvedObject.name=data,involvedObject.kind=PersistentVolumeClaim"]).expect("events");
    let mut found: Vec<(String, String, String)> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| text(e, "/reason").starts_with("AutoGrow"))
        .map(|e| (text(e, "/eventTime").to_owned(), text(e, "/reason").to_owned(), text(e, "/message").to_owned()))
        .collect();
    found.sort();
    found.into_iter().map(|(_, reason, message)| (reason, message)).collect()
}

/// A pod filling a claim of an auto-grow class: each time its free space
/// falls below the threshold, the claim is patched one step (Events on the
/// claim, seen by `kubectl describe` too) and the pod's filesystem grows
/// seconds later, so the writer never fails before the volume reaches its
/// limit; there it stops growing, says so, and the writer's first ENOSPC
/// comes on a filesystem of the limit's size. Prints each crossing's time
/// to the grown filesystem.
pub(crate) fn auto_grow_under_a_filling_pod(backend: &Backend, module: &str) {
    let Some((test, _timer)) = ready(backend, module, "auto_grow") else { return };
    let class = auto_grow_class(backend);
    let ns = Namespace::new(&format!("{}-auto-grow", backend.name));
    let start = format!("{}Mi", START / MI);
    apply(&json!({ "apiVersion": "v1", "kind": "List", "items": [claim("data", &class.0, &start, false, None), filler_pod("app", "data")] }).with_ns(&ns));
    running(&ns, "app");
    let (pv, _id) = bound(&ns, "data");

    // The pod's df until the writer stops: each size seen, and for each
    // grow the time from the first look across the threshold to the
    // first look at the larger filesystem.
    let began = Instant::now();
    let mut sizes: Vec<u64> = Vec::new();
    let mut crossed: Option<Instant> = None;
    let stopped = loop {
        let ((size, used), stopped) = look(&ns);
        if sizes.last() != Some(&size) {
            if let (Some(at), Some(&from)) = (crossed, sizes.last()) {
                timing(&test, &format!("threshold crossed to the pod seeing the grown filesystem ({} → {} MiB)", from / MI, size / MI), at.elapsed());
            }
            sizes.push(size);
            crossed = None;
        }
        if crossed.is_none() && (size - used.min(size)) * 100 < size * FREE_BELOW_PERCENT {
            crossed = Some(Instant::now());
        }
        if let Some(stopped) = stopped {
            break stopped;
        }
        assert!(began.elapsed() < FILL_DEADLINE, "the writer still writes after {FILL_DEADLINE:?}; filesystem sizes seen: {sizes:?}");
        std::thread::sleep(POLL);
    };
    println!("{test}: the writer stopped after {} s: {stopped}", began.elapsed().as_secs());

    // Its only failure came on the largest filesystem, full, and that is the
    // limit's: two grows (320 → 480 → 560 MiB devices), none past it.
    let (full_size, full_used) = df_bytes(&stopped);
    assert!(stopped.contains("No space left on device"), "the writer failed otherwise than for room: {stopped}");
    assert_eq!(sizes.len(), 3, "the pod saw filesystems of {sizes:?} bytes, not three (start, first step, limit)");
    assert_eq!(Some(&full_size), sizes.last(), "ENOSPC on a filesystem of {full_size} bytes, before it reached its largest ({sizes:?})");
    assert!(full_used * 100 > full_size * 95, "ENOSPC with {full_used} of {full_size} bytes used");
    assert!(full_size <= LIMIT, "a filesystem of {full_size} bytes, past the limit of {LIMIT}");
    let p = ns.get(&["pod", "app"]).expect("pod");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], json!(0), "the writer restarted: {}", p["status"]);

    // From the API server: the claim raised a step, then only to the
    // limit; the limit said; nothing refused.
    let events = wait_for("an AutoGrowAtLimit Event on the claim", Duration::from_secs(60), Duration::from_secs(1), |last| {
        let events = auto_grow_events(&ns);
        *last = format!("{events:?}");
        events.iter().any(|(reason, _)| reason == "AutoGrowAtLimit").then_some(events)
    });
    let grows: Vec<&str> = events.iter().filter(|(r, _)| r == "AutoGrow").map(|(_, m)| m.as_str()).collect();
    assert_eq!(grows.len(), 2, "not two AutoGrow Events: {events:?}");
    assert!(grows[0].contains(&format!("raised from {START} to {FIRST_STEP} bytes")), "first grow: {}", grows[0]);
    assert!(grows[1].contains(&format!("raised from {FIRST_STEP} to {LIMIT} bytes")), "second grow, to the limit only: {}", grows[1]);
    let others: Vec<&(String, String)> = events.iter().filter(|(r, _)| r != "AutoGrow" && r != "AutoGrowAtLimit").collect();
    assert!(others.is_empty(), "auto-grow was refused or ignored something: {others:?}");
    let described = ns.kubectl(&["describe", "pvc", "data"]);
    assert!(
        described.contains("AutoGrowAtLimit") && described.contains(&format!("{FIRST_STEP} bytes")),
        "`kubectl describe pvc` lists no auto-grow Event:\n{described}"
    );
    capacity_reaches(&ns, "data", &LIMIT.to_string(), began, RESIZE_DEADLINE);

    // Left at the limit: a few more of the controller's passes (5 s) over
    // a volume still full change nothing.
    std::thread::sleep(Duration::from_secs(20));
    let c = ns.get(&["pvc", "data"]).expect("claim");
    assert_eq!(bytes(text(&c, "/spec/resources/requests/storage")), LIMIT, "the claim's request is not the limit: {}", c["spec"]);
    let v = get(&["pv", &pv]).expect("pv");
    assert_eq!(bytes(text(&v, "/spec/capacity/storage")), LIMIT, "the PV is not at the limit: {}", v["spec"]["capacity"]);
    assert_eq!(look(&ns).0.0, full_size, "the filesystem changed size at its limit");
    let events = auto_grow_events(&ns);
    assert_eq!(events.iter().filter(|(r, _)| r == "AutoGrowAtLimit").count(), 1, "the limit was not said once: {events:?}");
    assert_eq!(events.iter().filter(|(r, _)| r == "AutoGrow").count(), 2, "grown again at the limit: {events:?}");
}
