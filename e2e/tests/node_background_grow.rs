//! The node grows a staged, mounted volume as soon as its backend has grown,
//! without waiting for kubelet's NodeExpandVolume (`--grow-on-backend-change-ms`),
//! on local volumes (sparse file + loop device, real xfs): under a running
//! writer; kubelet's later call then finds the work done; off, nothing
//! grows until that call; an unstage arriving mid-grow waits for it and
//! leaves nothing mounted; a node killed mid-grow finishes it once back.
//! The backend is grown as ControllerExpandVolume grows it (the local
//! backend's grow), and no NodeExpandVolume is sent unless said. Needs root.
#![allow(clippy::unwrap_used)]

mod node_rig;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use node_rig::{Rig, rig_growing_every};
use swell_e2e::host;
use swell_e2e::metrics::{sample, scrape};
use swell_e2e::node_process::ToolGate;
use swell_e2e::requests::{self, mount_capability};
use swell_e2e::stream_io::{self, RECORD, Span, Streams};
use swell_storage::units::MIB;

const FROM: u64 = 320 * MIB;
const TO: u64 = 640 * MIB;
/// How often the node under test looks; production's default is 2 s.
const INTERVAL: Duration = Duration::from_millis(200);
/// How long a grow may take to show, from the backend's grow.
const BOUND: Duration = Duration::from_secs(10);

const GROWS: &str = r#"swell_node_filesystem_grow_duration_seconds_count{fs_type="xfs",outcome="ok"}"#;
const BACKGROUND_GROWN: &str = r#"swell_node_background_grows_total{outcome="grown"}"#;

/// Stages and publishes a fresh xfs volume of FROM; returns its id and target.
async fn staged_xfs(rig: &mut Rig, name: &str) -> (String, PathBuf) {
    let id = rig.volume(name, FROM).await.to_string();
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    rig.node.node_stage_volume(requests::stage(&id, &staging, mount_capability("xfs"))).await.unwrap();
    rig.node.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    (id, PathBuf::from(target))
}

fn grown(target: &Path) -> bool {
    host::statvfs_total(target).unwrap() > TO * 85 / 100
}

/// Waits (at most `bound`) until the filesystem at `target` has grown to
/// about TO; how long that took, if it did.
async fn until_grown(target: &Path, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < bound {
        if grown(target) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn node_expand(rig: &mut Rig, id: &str, target: &Path) -> u64 {
    let expand = requests::node_expand(id, &target.display().to_string(), &rig.path("staging"), TO as i64, mount_capability("xfs"));
    rig.node.node_expand_volume(expand).await.unwrap().into_inner().capacity_bytes as u64
}

async fn unpublish_unstage(rig: &mut Rig, id: &str, target: &Path) {
    rig.node.node_unpublish_volume(requests::unpublish(id, &target.display().to_string())).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(id, &rig.path("staging"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_grows_under_a_writer_without_node_expand_and_node_expand_then_grows_nothing() {
    let Some(mut rig) = rig_growing_every("xfs_grows_in_the_background", Some(INTERVAL)).await else { return };
    let (id, target) = staged_xfs(&mut rig, "pvc-bg-xfs").await;
    // Full but for 16 MiB; the writer stops at its gate, then writes 24 MiB
    // more, which only the grown space holds.
    let room = stream_io::fill_leaving(&target, 16 * MIB).unwrap();
    let span = Span { first: 0, gate: 32, limit: 32 + (24 * MIB) / RECORD as u64 };
    let data = target.join("stream.dat");
    let streams = Streams::start(&data, &rig.dir, span).unwrap();
    assert!(streams.wait_for(span.gate - span.first, Duration::from_secs(60)).await, "the writer did not reach its gate");

    rig.grow(&id.parse().unwrap(), TO).await;
    let took = until_grown(&target, BOUND).await;
    let took = took.unwrap_or_else(|| panic!("the filesystem did not grow within {BOUND:?} of the backend's grow, with no NodeExpandVolume"));
    println!("BACKGROUND-GROW-TIMING backend grown to filesystem grown: {} ms (interval {} ms)", took.as_millis(), INTERVAL.as_millis());
    streams.open_gate().unwrap();
    assert!(streams.wait_for(span.limit - span.first, Duration::from_secs(120)).await, "the writer stalled after the grow");
    let (writer, reader) = streams.finish(&data).await.unwrap();
    assert!((span.limit - span.gate) * RECORD as u64 > room, "the writer wrote past the {room} bytes xfs had before");
    println!("writer synced {} records, reader verified {} reads", writer.records, reader.records);

    let metrics = scrape(rig.metrics_address()).await;
    assert_eq!((sample(&metrics, GROWS), sample(&metrics, BACKGROUND_GROWN)), (1.0, 1.0), "one grow, by the background grower:\n{metrics}");
    // Kubelet's call, late as ever: the work is done, nothing is grown twice.
    let started = Instant::now();
    assert_eq!(node_expand(&mut rig, &id, &target).await, TO);
    println!("NodeExpandVolume after the background grow answered in {} ms", started.elapsed().as_millis());
    tokio::time::sleep(INTERVAL * 3).await;
    let metrics = scrape(rig.metrics_address()).await;
    assert_eq!((sample(&metrics, GROWS), sample(&metrics, BACKGROUND_GROWN)), (1.0, 1.0), "NodeExpandVolume grew nothing more:\n{metrics}");
    unpublish_unstage(&mut rig, &id, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_grower_off_the_filesystem_waits_for_node_expand() {
    let Some(mut rig) = rig_growing_every("xfs_not_grown_when_off", None).await else { return };
    // The binary, so `--grow-on-backend-change-ms=0` is what turns it off.
    rig.serve_as_process(&[]).await;
    let (id, target) = staged_xfs(&mut rig, "pvc-bg-off").await;
    rig.grow(&id.parse().unwrap(), TO).await;
    assert_eq!(until_grown(&target, Duration::from_secs(3)).await, None, "the filesystem grew with the grower off");
    assert_eq!(node_expand(&mut rig, &id, &target).await, TO);
    assert!(grown(&target), "NodeExpandVolume grew it");
    unpublish_unstage(&mut rig, &id, &target).await;
}

/// A node process growing in the background with `xfs_growfs` gated, a
/// staged xfs volume whose backend has grown, and the background grow held
/// inside `xfs_growfs`: the rig, the gate, the volume id and its target.
async fn held_inside_a_background_grow(test: &str) -> Option<(Rig, ToolGate, String, PathBuf)> {
    let mut rig = rig_growing_every(test, Some(INTERVAL)).await?;
    let gate = ToolGate::new(&rig.dir, "xfs_growfs").unwrap();
    rig.serve_as_process(&[("PATH", gate.path())]).await;
    let (id, target) = staged_xfs(&mut rig, &format!("pvc-{}", test.replace('_', "-"))).await;
    gate.arm();
    rig.grow(&id.parse().unwrap(), TO).await;
    assert!(gate.reached(BOUND).await, "no background grow reached xfs_growfs");
    Some((rig, gate, id, target))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstage_during_a_background_grow_waits_for_it_and_leaves_nothing_mounted() {
    let Some((rig, gate, id, target)) = held_inside_a_background_grow("unstage_during_background_grow").await else { return };

    // Kubelet tears the pod down while the grow is inside xfs_growfs.
    let (mut node, path) = (rig.node.clone(), target.display().to_string());
    let (staging, volume) = (rig.path("staging"), id.clone());
    let teardown = tokio::spawn(async move {
        node.node_unpublish_volume(requests::unpublish(&volume, &path)).await?;
        node.node_unstage_volume(requests::unstage(&volume, &staging)).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!teardown.is_finished(), "the unpublish answered while the grow held the volume: {:?}", teardown.await);
    gate.release();
    teardown.await.unwrap().expect("the unpublish and unstage succeed once the grow is done");
    for path in [target.clone(), PathBuf::from(rig.path("staging"))] {
        assert!(!host::is_mount_point(&path), "{} is still mounted", path.display());
    }
    assert!(!rig.staging_record_exists(&id.parse().unwrap()), "the staging record is gone");
    assert!(host::loop_devices_for(&rig.image(&id.parse().unwrap())).is_empty(), "the loop device is detached");
    assert_eq!(gate.calls().len(), 1, "one xfs_growfs: {:?}", gate.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_a_background_grow_finishes_it_once_back() {
    let Some((mut rig, gate, id, target)) = held_inside_a_background_grow("node_killed_during_background_grow").await else { return };
    rig.restart_process(&[]).await;
    gate.release();
    assert!(!grown(&target), "the kill landed before xfs_growfs ran");
    assert!(until_grown(&target, BOUND).await.is_some(), "the restarted node did not finish the grow within {BOUND:?}");
    assert_eq!(node_expand(&mut rig, &id, &target).await, TO);
    unpublish_unstage(&mut rig, &id, &target).await;
}
