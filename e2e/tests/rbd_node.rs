//! The node service on Ceph RBD volumes, driven over its Unix socket against
//! a real throwaway cluster: stage → publish → write → `rbd resize` →
//! NodeExpandVolume → the filesystem fills the new size, data intact →
//! unpublish → unstage, and nothing left (no mapping, FUSE mount, loop
//! device, rbd-fuse or rbd-nbd process, or watcher: `rbd rm` succeeds). Also
//! raw block volumes, an expansion with one OSD down, a missing image, and an
//! unstage whose staging record is gone.
//!
//! In every attach mode, with assertions for each: the one this host
//! detects (rbd-fuse + loop where the rbd and nbd modules are missing), or
//! the one `SWELL_RBD_MOUNTER` names through the StorageClass's `mounter`
//! (the VM lane runs krbd and rbd-nbd; see e2e/vm/README.md).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use csi_proto::v1::NodeGetVolumeStatsResponse;
use csi_proto::v1::volume_usage::Unit;
use swell_e2e::host;
use swell_e2e::rbd_rig::{self, NodeRig as Rig, node_rig as rig};
use swell_e2e::requests::{self, block_capability, mount_capability};
use swell_storage::rbd_attach::AttachMode;
use swell_storage::units::{GIB, MIB};
use tonic::Code;

fn total_bytes(stats: &NodeGetVolumeStatsResponse) -> u64 {
    stats.usage.iter().find(|u| u.unit == Unit::Bytes as i32).map(|u| u.total as u64).expect("bytes usage")
}

async fn stats(rig: &mut Rig, id: &str, path: &str) -> NodeGetVolumeStatsResponse {
    rig.node.node_get_volume_stats(requests::stats(id, path)).await.unwrap().into_inner()
}

/// Stages (xfs) and publishes; returns the checksum of 8 MiB written.
async fn stage_publish_write(rig: &mut Rig, id: &str) -> String {
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    let started = Instant::now();
    rig.node.node_stage_volume(rig.stage(id, &staging, mount_capability("xfs"))).await.unwrap();
    println!("stage ({} attach + mkfs.xfs + mount) took {:?}", rig.mode, started.elapsed());
    rig.node.node_publish_volume(requests::publish(id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    let file = rig.dir.join("pods/p/vol/data.bin");
    host::write_pattern(&file, 8 << 20, 11).unwrap();
    host::sha256_file(&file).unwrap()
}

/// Grows the image from 512 MiB to 1 GiB in three steps, each followed by
/// NodeExpandVolume, which must answer the image's new size exactly and
/// leave xfs filling it; checks the data and prints the expand's p50.
async fn resize_and_expand(rig: &mut Rig, name: &str, id: &str, sum: &str) {
    let target = rig.path("pods/p/vol");
    let before = total_bytes(&stats(rig, id, &target).await);
    assert!(before < 512 * MIB && before > 400 * MIB, "starts near 512 MiB: {before}");
    let mut took = Vec::new();
    for size in [768 * MIB, 896 * MIB, GIB] {
        rig.resize(name, size);
        let started = Instant::now();
        let grown = rig.node.node_expand_volume(requests::node_expand(id, &target, &rig.path("staging"), size as i64, mount_capability("xfs"))).await.unwrap();
        took.push(started.elapsed());
        assert_eq!(grown.into_inner().capacity_bytes as u64, size, "capacity is the image's new size exactly");
        // statvfs leaves out xfs's internal log (64 MiB at 1 GiB).
        let total = total_bytes(&stats(rig, id, &target).await);
        assert!(total > size * 85 / 100 && total <= size, "xfs grew to about {size}: {total}");
    }
    println!("NodeExpandVolume p50 ({}, xfs): {}", rig.mode, swell_e2e::timing::p50_summary(&took));
    let again =
        rig.node.node_expand_volume(requests::node_expand(id, &target, &rig.path("staging"), GIB as i64, mount_capability("xfs"))).await.unwrap().into_inner();
    assert_eq!(again.capacity_bytes as u64, GIB, "a repeated expand answers the same");
    assert_eq!(host::sha256_file(&rig.dir.join("pods/p/vol/data.bin")).unwrap(), sum, "data intact");
}

/// Unpublishes and unstages, then nothing of the image may be left.
async fn unpublish_unstage_clean(rig: &mut Rig, name: &str, id: &str, target: &str) {
    rig.node.node_unpublish_volume(requests::unpublish(id, target)).await.unwrap();
    let started = Instant::now();
    rig.node.node_unstage_volume(requests::unstage(id, &rig.path("staging"))).await.unwrap();
    println!("unstage ({}) took {:?}", rig.mode, started.elapsed());
    assert_eq!(rig.leftovers(name), Vec::<String>::new(), "nothing left after unstage");
    rig.remove(name).expect("rbd rm succeeds: no watchers");
}

/// The staging record's device and mode, as the node wrote them.
fn staging_record(rig: &Rig, id: &str) -> (String, Option<String>) {
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(rig.dir.join("node/staged").join(format!("{id}.json"))).unwrap()).unwrap();
    (record["device"].as_str().unwrap().to_owned(), record["rbd_mode"].as_str().map(str::to_owned))
}

/// One attachment of the image, made the way the mode under test makes it,
/// with the StorageClass's map options; returns the device.
fn assert_attached_once(rig: &Rig, name: &str, id: &str) -> String {
    let attached = rig.attachments(name);
    let (device, mode) = staging_record(rig, id);
    assert_eq!(mode.as_deref(), Some(rig.mode.mounter()), "the record keeps the mode it was staged with");
    match rig.mode {
        AttachMode::FuseLoop => {
            assert!(device.starts_with("/dev/loop"), "{device}");
            assert_eq!(attached.len(), 2, "one loop device and one rbd-fuse: {attached:?}");
        }
        AttachMode::Krbd => {
            assert!(device.starts_with("/dev/rbd"), "{device}");
            assert_eq!(attached, [format!("krbd mapping {device}")]);
            let config = rbd_rig::krbd_config_info(&device);
            // The default that lets krbd reach a msgr2-only cluster, beside the StorageClass's own.
            assert!(config.contains("ms_mode=prefer-crc") && config.contains("queue_depth=64"), "mapped with {config}");
        }
        AttachMode::Nbd => {
            assert!(device.starts_with("/dev/nbd"), "{device}");
            assert_eq!(attached.len(), 2, "one mapping and one rbd-nbd: {attached:?}");
            let image = rbd_rig::volume(name).spec();
            let (_, args) = rbd_rig::processes_with("rbd-nbd", &image).pop().unwrap();
            let line = args.join(" ");
            assert!(line.contains("--io-timeout 60") && line.contains("--reattach-timeout 45"), "rbd-nbd runs as {line}");
        }
    }
    device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_volume_stages_expands_and_unstages_cleanly() {
    let Some(mut rig) = rig("rbd_node_round_trip").await else { return };
    let id = rig.image("node-rt", 512 * MIB);
    let sum = stage_publish_write(&mut rig, &id).await;
    // A repeated stage reuses the attachment.
    let staging = rig.path("staging");
    rig.node.node_stage_volume(rig.stage(&id, &staging, mount_capability("xfs"))).await.unwrap();
    let device = assert_attached_once(&rig, "node-rt", &id);
    // A restage asking for another mode is refused and attaches nothing.
    let other = AttachMode::ALL.into_iter().find(|m| *m != rig.mode).unwrap();
    let mut elsewhere = rig.stage(&id, &staging, mount_capability("xfs"));
    elsewhere.volume_context.insert("mounter".into(), other.mounter().into());
    elsewhere.volume_context.remove("mapOptions");
    let status = rig.node.node_stage_volume(elsewhere).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(assert_attached_once(&rig, "node-rt", &id), device, "still the one attachment");
    let target = rig.path("pods/p/vol");
    let health = stats(&mut rig, &id, &target).await.volume_condition.unwrap();
    assert!(!health.abnormal, "{}", health.message);
    resize_and_expand(&mut rig, "node-rt", &id, &sum).await;
    unpublish_unstage_clean(&mut rig, "node-rt", &id, &target).await;
    // Unstage again: nothing staged is success.
    rig.node.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_unstage_without_a_staging_record_detaches_whatever_mode_attached() {
    let Some(mut rig) = rig("rbd_node_unrecorded_unstage").await else { return };
    let id = rig.image("node-unrec", 256 * MIB);
    let staging = rig.path("staging");
    rig.node.node_stage_volume(rig.stage(&id, &staging, block_capability())).await.unwrap();
    assert_attached_once(&rig, "node-unrec", &id);
    // As if the stage had been cut off between attaching and writing its
    // record: the node no longer knows which mode attached the image.
    std::fs::remove_file(rig.dir.join("node/staged").join(format!("{id}.json"))).unwrap();
    rig.node.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    assert_eq!(rig.leftovers("node-unrec"), Vec::<String>::new(), "nothing left after unstage");
    rig.remove("node-unrec").expect("rbd rm succeeds: no watchers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_block_volume_grows_with_its_image() {
    let Some(mut rig) = rig("rbd_node_block").await else { return };
    let id = rig.image("node-blk", 512 * MIB);
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/dev/blk"));
    rig.node.node_stage_volume(rig.stage(&id, &staging, block_capability())).await.unwrap();
    rig.node.node_publish_volume(requests::publish(&id, &staging, &target, block_capability(), false)).await.unwrap();
    assert!(host::is_mount_point(Path::new(&target)));
    assert_attached_once(&rig, "node-blk", &id);
    assert_eq!(total_bytes(&stats(&mut rig, &id, &target).await), 512 * MIB);
    rig.resize("node-blk", GIB);
    let grown = rig.node.node_expand_volume(requests::node_expand(&id, &target, &staging, GIB as i64, block_capability())).await.unwrap();
    assert_eq!(grown.into_inner().capacity_bytes as u64, GIB);
    assert_eq!(total_bytes(&stats(&mut rig, &id, &target).await), GIB);
    let too_big = requests::node_expand(&id, &target, &staging, (2 * GIB) as i64, block_capability());
    let status = rig.node.node_expand_volume(too_big).await.expect_err("image smaller than required");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    unpublish_unstage_clean(&mut rig, "node-blk", &id, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_expand_works_with_one_osd_down() {
    let Some(mut rig) = rig("rbd_node_osd_down").await else { return };
    let id = rig.image("node-osd", 512 * MIB);
    let sum = stage_publish_write(&mut rig, &id).await;
    rbd_rig::cluster(rig.env, "kill-osd", &["2"]).unwrap();
    // Let the monitor mark it down, so I/O goes to the surviving replicas.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rbd_rig::cli(rig.env, "ceph", &["osd", "dump"]).unwrap().lines().any(|l| l.starts_with("osd.2 down")) {
        assert!(Instant::now() < deadline, "osd.2 not marked down");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("osd.2 killed and marked down");
    resize_and_expand(&mut rig, "node-osd", &id, &sum).await;
    let target = rig.path("pods/p/vol");
    host::write_pattern(&rig.dir.join("pods/p/vol/more.bin"), 4 << 20, 3).unwrap();
    rbd_rig::cluster(rig.env, "start-osd", &["2"]).unwrap();
    rbd_rig::cluster(rig.env, "wait-clean", &["120"]).unwrap();
    unpublish_unstage_clean(&mut rig, "node-osd", &id, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_stage_of_a_missing_image_or_unknown_cluster_is_not_found() {
    let Some(mut rig) = rig("rbd_node_missing").await else { return };
    let staging = rig.path("staging");
    let missing = rbd_rig::volume("no-such-image").id().to_string();
    let status = rig.node.node_stage_volume(rig.stage(&missing, &staging, mount_capability("xfs"))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // An image that exists but is not a Swell image is no volume either.
    let foreign = "foreign-image";
    rbd_rig::cli(rig.env, "rbd", &["create", &format!("rbd/{foreign}"), "--size", "64M"]).unwrap();
    let foreign_id = format!("rbd:{}:rbd:{foreign}", rbd_rig::CLUSTER_ID);
    let status = rig.node.node_stage_volume(rig.stage(&foreign_id, &staging, mount_capability("xfs"))).await.unwrap_err();
    rbd_rig::cli(rig.env, "rbd", &["rm", &format!("rbd/{foreign}")]).unwrap();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let other_cluster = swell_storage::RbdVolume::for_name("elsewhere", "rbd", "img").unwrap().id().to_string();
    let status = rig.node.node_stage_volume(rig.stage(&other_cluster, &staging, mount_capability("xfs"))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("elsewhere"), "{}", status.message());
    assert!(swell_e2e::sweep::rbd_fuse_pids_under(&rig.dir).is_empty(), "no rbd-fuse started");
    assert_eq!(rbd_rig::all_mappings(), Vec::<String>::new(), "no image mapped");
    assert!(!host::is_mount_point(Path::new(&staging)));
}

/// A volume in a RADOS namespace (an install's `--rbd-namespace`): krbd and
/// rbd-nbd map it from its namespace, stage it, grow it online and unstage
/// it; rbd-fuse, which opens images in a pool's default namespace only, is
/// refused before anything is attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_volume_in_a_rados_namespace_stages_grows_online_and_unstages_where_the_mode_maps_namespaces() {
    let Some(mut rig) = rig("rbd_node_namespace").await else { return };
    let namespace = "swell-node-ns";
    let image = swell_storage::RbdVolume::for_name_in(rbd_rig::CLUSTER_ID, "rbd", namespace, "node-ns").unwrap();
    let (spec, id) = (image.spec(), image.id().to_string());
    let _ = rbd_rig::cli(rig.env, "rbd", &["namespace", "create", "--pool", "rbd", "--namespace", namespace]);
    let _ = rbd_rig::cli(rig.env, "rbd", &["rm", &spec]);
    rbd_rig::cli(rig.env, "rbd", &["create", &spec, "--size", "512M"]).unwrap();
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    let staged = rig.node.node_stage_volume(rig.stage(&id, &staging, mount_capability("xfs"))).await;
    let cleanup = |rig: &Rig| {
        rbd_rig::cli(rig.env, "rbd", &["rm", &spec]).expect("rbd rm succeeds: no watchers");
        rbd_rig::cli(rig.env, "rbd", &["namespace", "remove", "--pool", "rbd", "--namespace", namespace]).unwrap();
    };
    if rig.mode == AttachMode::FuseLoop {
        let refused = staged.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(namespace), "{}", refused.message());
        assert_eq!(rbd_rig::attachments(AttachMode::FuseLoop, &rig.fuse_dir("node-ns"), &image), Vec::<String>::new(), "nothing attached");
        return cleanup(&rig);
    }
    staged.unwrap();
    let (device, _) = staging_record(&rig, &id);
    assert_eq!(rbd_rig::mapped_devices(rig.mode, &image), [device], "mapped once, from its namespace");
    rig.node.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    let file = rig.dir.join("pods/p/vol/data.bin");
    host::write_pattern(&file, 8 << 20, 12).unwrap();
    let sum = host::sha256_file(&file).unwrap();
    let before = total_bytes(&stats(&mut rig, &id, &target).await);
    rbd_rig::cli(rig.env, "rbd", &["resize", &spec, "--size", "768M"]).unwrap();
    let grown = rig.node.node_expand_volume(requests::node_expand(&id, &target, &staging, (768 * MIB) as i64, mount_capability("xfs"))).await.unwrap();
    assert_eq!(grown.into_inner().capacity_bytes as u64, 768 * MIB);
    let after = total_bytes(&stats(&mut rig, &id, &target).await);
    assert!(after - before > 254 * MIB && after - before <= 256 * MIB, "xfs grew online by 256 MiB: {before} -> {after}");
    assert_eq!(host::sha256_file(&file).unwrap(), sum, "data intact");
    rig.node.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    assert_eq!(rbd_rig::mapped_devices(rig.mode, &image), Vec::<String>::new(), "unmapped at unstage");
    cleanup(&rig);
}
