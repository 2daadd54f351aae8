//! One local state directory, many processes: two `swell-controller`
//! processes (both reconcilers on, as the local overlay's two replicas run)
//! and the admission webhook (opening it read-only) share one directory.
//! 64 expansions at once, split between the controllers, then a reconcile
//! storm over wishes left pending; afterwards every record parses, no
//! volume lost or repeated a size, the ledger equals the sum of the
//! volumes' files exactly, and every file the controllers made is 0600 in
//! 0700 directories. And CreateVolume of one name on both controllers at
//! once makes one volume.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use swell_backends::Backends;
use swell_e2e::process::ControllerProcess;
use swell_e2e::requests;
use swell_e2e::resizer::expand_like_the_resizer;
use swell_e2e::webhook::{FixedVolumes, Resize, RunningWebhook, TestPki};
use swell_local::{LocalBackend, LocalConfig};
use swell_storage::units::GIB;
use swell_storage::{Backend, ExpansionRecord, VolumeId};
use swell_webhook::{BackendFacts, Limits, Policy, Webhook};
use tonic::Code;

const VOLUMES: usize = 16;
/// Each volume is asked for 2, 3, 4 and 5 GiB at once, alternately by the two controllers.
const TARGETS: [u64; 4] = [2, 3, 4, 5];

fn config(root: &Path, read_only: bool) -> LocalConfig {
    LocalConfig { state_dir: root.join("local"), records_dir: root.join("controller-state"), capacity_bytes: Some(1 << 40), read_only }
}

/// The sum of the volumes' backing files, and the ledger's view.
fn ledger_and_files(local: &Path) -> (serde_json::Value, u64) {
    let ledger: serde_json::Value = serde_json::from_slice(&std::fs::read(local.join("ledger.json")).unwrap()).unwrap();
    (ledger, image_bytes(&local.join("volumes")))
}

/// The bytes of the backing files under `dir`, through its buckets.
fn image_bytes(dir: &Path) -> u64 {
    let mut sum = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sum += image_bytes(&path);
        } else if path.extension().is_some_and(|e| e == "img") {
            sum += std::fs::metadata(&path).unwrap().len();
        }
    }
    sum
}

/// Two swell-controller processes on one local directory under `root`,
/// each with its own socket, both seeing one record directory.
async fn two_controllers(root: &Path) -> (ControllerProcess, ControllerProcess) {
    std::fs::create_dir_all(root.join("controller-state")).unwrap();
    for name in ["a", "b"] {
        std::fs::create_dir_all(root.join(name)).unwrap();
        std::os::unix::fs::symlink(root.join("controller-state"), root.join(name).join("controller")).unwrap();
    }
    let args = vec![format!("--local-capacity-bytes={}", 1u64 << 40)];
    let a = ControllerProcess::start_with(&root.join("a"), &root.join("local"), args.clone()).await.unwrap();
    let b = ControllerProcess::start_with(&root.join("b"), &root.join("local"), args).await.unwrap();
    (a, b)
}

/// CreateVolume of one name sent to both controllers at once (two
/// provisioner replicas, or a retry landing on the other one), for 24
/// names: each name ends as one volume, both controllers answer it with the
/// same id and size (an ABORTED overlap is retried, as the provisioner
/// does), a different size for the name is ALREADY_EXISTS, and the ledger
/// counts each volume once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_volume_of_one_name_on_two_controllers_at_once_makes_one_volume() {
    const NAMES: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b) = two_controllers(root).await;
    let mut calls = Vec::new();
    for n in 0..NAMES {
        for process in [&a, &b] {
            let mut client = process.client().await.unwrap();
            calls.push(tokio::spawn(async move {
                let request = requests::create_volume(&format!("pvc-{n}"), GIB as i64, requests::mount_capability("xfs"));
                let mut codes = Vec::new();
                for _ in 0..100 {
                    match client.create_volume(request.clone()).await {
                        Ok(created) => return (n, codes, created.into_inner().volume.unwrap()),
                        Err(status) if status.code() == Code::Aborted => codes.push(status.code()),
                        Err(status) => panic!("pvc-{n}: {status:?}"),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("pvc-{n}: still ABORTED after 100 tries");
            }));
        }
    }
    let mut ids = vec![Vec::new(); NAMES];
    let mut aborted = 0;
    for call in calls {
        let (n, codes, volume) = call.await.unwrap();
        aborted += codes.len();
        assert_eq!(volume.capacity_bytes as u64, GIB, "pvc-{n}");
        ids[n].push(volume.volume_id);
    }
    println!("{NAMES} names created on both controllers at once; {aborted} ABORTED answers retried");
    for (n, both) in ids.iter().enumerate() {
        assert_eq!(both[0], both[1], "pvc-{n}: the controllers answered different volumes");
    }
    let mut listed = Vec::new();
    let mut client = a.client().await.unwrap();
    let mut token = String::new();
    loop {
        let page = client.list_volumes(csi_proto::v1::ListVolumesRequest { starting_token: token, ..Default::default() }).await.unwrap().into_inner();
        listed.extend(page.entries.into_iter().map(|e| e.volume.unwrap().volume_id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    listed.sort();
    let mut created: Vec<String> = ids.iter().map(|both| both[0].clone()).collect();
    created.sort();
    assert_eq!(listed, created, "one volume a name, and no other");
    // The same name with another size is another volume: ALREADY_EXISTS, on either.
    for process in [&a, &b] {
        let mut client = process.client().await.unwrap();
        let other = requests::create_volume("pvc-0", (2 * GIB) as i64, requests::mount_capability("xfs"));
        let status = client.create_volume(other).await.expect_err("another size for an existing name");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    }
    drop((a, b));
    let (ledger, files) = ledger_and_files(&root.join("local"));
    assert_eq!(files, NAMES as u64 * GIB, "one backing file of 1 GiB a name");
    assert_eq!(ledger["total_bytes"].as_u64(), Some(files), "{ledger}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controllers_and_the_webhook_on_one_directory_lose_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b) = two_controllers(root).await;

    let mut ids = Vec::new();
    let mut client = a.client().await.unwrap();
    for n in 0..VOLUMES {
        let created = client.create_volume(requests::create_volume(&format!("pvc-{n}"), GIB as i64, requests::mount_capability("xfs"))).await.unwrap();
        ids.push(created.into_inner().volume.unwrap().volume_id);
    }

    // The webhook, on its own read-only opening, judges resizes all along.
    let reader = Arc::new(LocalBackend::open(&config(root, true)).unwrap());
    let volumes = Arc::new(FixedVolumes::default());
    for (n, id) in ids.iter().enumerate() {
        volumes.add(&format!("pv-{n}"), id);
    }
    let webhook = Webhook {
        driver_name: swell_e2e::webhook::DRIVER.into(),
        deadline: Duration::from_secs(5),
        policy: Policy::default(),
        volumes,
        facts: Arc::new(BackendFacts::new(Backends::new(reader.clone(), Duration::from_secs(5)))),
    };
    let pki = TestPki::new();
    let server = RunningWebhook::start(webhook, &pki, Limits::default(), Duration::from_secs(60)).await;
    let https = server.client(&pki);
    let (stop_reviews, reviews) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let reviewer = {
        let (stop, reviews) = (stop_reviews.clone(), reviews.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let volume = format!("pv-{}", n % VOLUMES);
                let review = Resize { volume: &volume, old: "1Gi", new: "1Ti", capacity: "1Gi", status: None }.review();
                let reply = https.review(&review).await.unwrap();
                assert_eq!(reply.status, 200, "{}", reply.text());
                let (_, message, _) = reply.verdict();
                assert!(!message.contains("cannot be read") && !message.contains("unreadable"), "{message}");
                reviews.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        })
    };

    // 64 expansions at once, half through each controller.
    let mut calls = Vec::new();
    for (v, id) in ids.iter().enumerate() {
        for (t, target) in TARGETS.iter().enumerate() {
            let process = if (v + t) % 2 == 0 { &a } else { &b };
            let client = process.client().await.unwrap();
            calls.push(tokio::spawn(expand_like_the_resizer(client, id.clone(), target * GIB)));
        }
    }
    for call in calls {
        let resized = call.await.unwrap();
        assert_eq!(resized.codes.last(), Some(&Code::Ok), "{resized:?}");
    }
    for id in &ids {
        let info = reader.volume(&id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(info.size_bytes, 5 * GIB, "{id} holds the largest size asked for, once");
    }

    // A reconcile storm: every volume's wish left pending, as by a
    // controller killed after recording it; both reconcilers race to
    // finish them while the resizer keeps asking through both controllers.
    let writer = LocalBackend::open(&config(root, false)).unwrap();
    let store = writer.expansion_store();
    for id in &ids {
        leave_wish_when_free(&*store, &id.parse().unwrap(), 5 * GIB, 6 * GIB).await;
    }
    // Odd volumes are also asked for more through both controllers; even
    // ones are left to the reconcilers alone.
    let mut storm = Vec::new();
    for (v, id) in ids.iter().enumerate().filter(|(v, _)| v % 2 == 1) {
        for process in [&a, &b] {
            let client = process.client().await.unwrap();
            storm.push(tokio::spawn(expand_like_the_resizer(client, id.clone(), (6 + (v % 2) as u64) * GIB)));
        }
    }
    for call in storm {
        let resized = call.await.unwrap();
        assert_eq!(resized.codes.last(), Some(&Code::Ok), "{resized:?}");
    }
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = store.pending().await.unwrap();
        assert!(pending.unreadable.is_empty(), "{pending:?}");
        if pending.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "still pending after 60 s: {pending:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_reviews.store(true, Ordering::Relaxed);
    reviewer.await.unwrap();
    assert!(reviews.load(Ordering::Relaxed) > 0, "the webhook judged resizes meanwhile");
    server.stop().await;

    // Every record parses; every volume holds the largest size it was asked for.
    let records = store.page(None, 1000).await.unwrap();
    assert!(records.unreadable.is_empty(), "{:?}", records.unreadable);
    assert_eq!(records.readable.len(), VOLUMES);
    for (v, id) in ids.iter().enumerate() {
        let want = (6 + (v % 2) as u64) * GIB;
        let info = reader.volume(&id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(info.size_bytes, want, "{id}");
        let record = records.readable.iter().find(|r| r.volume_id.to_string() == *id).unwrap();
        assert!(!record.pending() && record.current_bytes == want, "{record:?}");
    }
    for file in std::fs::read_dir(root.join("local/volumes")).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    // Nothing in flight any more (a sweep only reads): the ledger is exact.
    drop((a, b));
    let (ledger, files) = ledger_and_files(&root.join("local"));
    assert_eq!(ledger["total_bytes"].as_u64(), Some(files), "{ledger}");
    assert_eq!(files, ids.iter().enumerate().map(|(v, _)| (6 + (v % 2) as u64) * GIB).sum::<u64>());
    assert_eq!(ledger["changing"], serde_json::json!({}), "{ledger}");
    assert!(ledger.get("reserved").is_none_or(|r| r == &serde_json::json!({})), "{ledger}");
    // What the controllers made is root's alone, the directory the test made 0755 included.
    for top in ["local", "controller-state"] {
        assert_private(&root.join(top));
    }
}

/// Every file under `dir` is 0600 and every directory 0700.
fn assert_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            assert_private(&path);
        } else {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", path.display());
        }
    }
}

/// Leaves a pending wish, as a controller killed after recording it
/// would, once no reconciler holds the volume.
async fn leave_wish_when_free(store: &dyn swell_storage::ExpansionStore, id: &VolumeId, current: u64, desired: u64) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(hold) = store.hold(id).await.unwrap() {
            let base = store.record(id).await.unwrap().unwrap_or_else(|| ExpansionRecord::new(id, current, current));
            store.write(&hold, base.wishing(current, desired)).await.unwrap();
            hold.release().await;
            return;
        }
        assert!(Instant::now() < until, "{id} stayed held for 20 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
