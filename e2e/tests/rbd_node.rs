//! The node service on Ceph RBD volumes, driven over its Unix socket against
//! a real throwaway cluster: stage → publish → write → `rbd resize` →
//! NodeExpandVolume → the filesystem fills the new size, data intact →
//! unpublish → unstage, and nothing left (no FUSE mount, loop device,
//! rbd-fuse process or watcher: `rbd rm` succeeds). Also raw block volumes,
//! an expansion with one OSD down, and a missing image. On this kind of host
//! (no rbd/nbd modules) the attach mode is rbd-fuse + loop.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use csi_proto::v1::NodeGetVolumeStatsResponse;
use csi_proto::v1::volume_usage::Unit;
use swell_e2e::host;
use swell_e2e::rbd_rig::{self, NodeRig as Rig, node_rig as rig};
use swell_e2e::requests::{self, block_capability, mount_capability};
use swell_node::attach::rbd::{AttachMode, detect, on_path};
use swell_storage::units::{GIB, MIB};
use tonic::Code;

fn total_bytes(stats: &NodeGetVolumeStatsResponse) -> u64 {
    stats.usage.iter().find(|u| u.unit == Unit::Bytes as i32).map(|u| u.total as u64).expect("bytes usage")
}

async fn stats(rig: &mut Rig, id: &str, path: &str) -> NodeGetVolumeStatsResponse {
    rig.node.node_get_volume_stats(requests::stats(id, path)).await.unwrap().into_inner()
}

fn print_mode() -> AttachMode {
    let mode = detect(Path::new("/"), on_path);
    println!("RBD attach mode detected on this host: {mode}");
    mode
}

/// Stages (xfs) and publishes; returns the checksum of 8 MiB written.
async fn stage_publish_write(rig: &mut Rig, id: &str) -> String {
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    let started = Instant::now();
    rig.node.node_stage_volume(requests::stage(id, &staging, mount_capability("xfs"))).await.unwrap();
    println!("stage (rbd-fuse mount + loop + mkfs.xfs + mount) took {:?}", started.elapsed());
    rig.node.node_publish_volume(requests::publish(id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    let file = rig.dir.join("pods/p/vol/data.bin");
    host::write_pattern(&file, 8 << 20, 11).unwrap();
    host::sha256_file(&file).unwrap()
}

/// Resizes the image to 1 GiB, expands on the node, checks size and data.
async fn resize_and_expand(rig: &mut Rig, name: &str, id: &str, sum: &str) {
    let target = rig.path("pods/p/vol");
    let before = total_bytes(&stats(rig, id, &target).await);
    rig.resize(name, GIB);
    let started = Instant::now();
    let expand = requests::node_expand(id, &target, &rig.path("staging"), GIB as i64, mount_capability("xfs"));
    let grown = rig.node.node_expand_volume(expand.clone()).await.unwrap().into_inner();
    println!("NodeExpandVolume over rbd-fuse took {:?}", started.elapsed());
    assert_eq!(grown.capacity_bytes as u64, GIB, "capacity is the image's new size exactly");
    let after = total_bytes(&stats(rig, id, &target).await);
    println!("xfs statvfs total: {before} -> {after} bytes (image 512 MiB -> 1 GiB)");
    assert!(before < 512 * MIB && before > 400 * MIB, "starts near 512 MiB: {before}");
    // statvfs leaves out xfs's internal log (64 MiB here): 960 MiB of 1 GiB.
    assert!(after > GIB * 90 / 100 && after <= GIB, "grew to ~1 GiB: {after}");
    let again = rig.node.node_expand_volume(expand).await.unwrap().into_inner();
    assert_eq!(again.capacity_bytes, grown.capacity_bytes, "a repeated expand answers the same");
    assert_eq!(host::sha256_file(&rig.dir.join("pods/p/vol/data.bin")).unwrap(), sum, "data intact");
}

/// Unpublishes and unstages, then nothing of the image may be left.
async fn unpublish_unstage_clean(rig: &mut Rig, name: &str, id: &str, target: &str) {
    rig.node.node_unpublish_volume(requests::unpublish(id, target)).await.unwrap();
    let started = Instant::now();
    rig.node.node_unstage_volume(requests::unstage(id, &rig.path("staging"))).await.unwrap();
    println!("unstage (umount, loop detach, fusermount, wait for rbd-fuse exit) took {:?}", started.elapsed());
    assert_eq!(rig.leftovers(name), Vec::<String>::new(), "nothing left after unstage");
    rig.remove(name).expect("rbd rm succeeds: no watchers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_volume_stages_expands_and_unstages_cleanly() {
    if print_mode() != AttachMode::FuseLoop {
        host::note_skip("rbd_node_round_trip", "its attachment checks are written for rbd-fuse + loop; this host has a kernel client");
        return;
    }
    let Some(mut rig) = rig("rbd_node_round_trip").await else { return };
    let id = rig.image("node-rt", 512 * MIB);
    let sum = stage_publish_write(&mut rig, &id).await;
    // A repeated stage reuses the attachment.
    let staging = rig.path("staging");
    rig.node.node_stage_volume(requests::stage(&id, &staging, mount_capability("xfs"))).await.unwrap();
    assert_eq!(swell_e2e::sweep::loop_devices_under(&rig.fuse_dir("node-rt")).len(), 1, "one loop device after a restage");
    assert_eq!(swell_e2e::sweep::rbd_fuse_pids_under(&rig.fuse_dir("node-rt")).len(), 1, "one rbd-fuse after a restage");
    let target = rig.path("pods/p/vol");
    let health = stats(&mut rig, &id, &target).await.volume_condition.unwrap();
    assert!(!health.abnormal, "{}", health.message);
    resize_and_expand(&mut rig, "node-rt", &id, &sum).await;
    unpublish_unstage_clean(&mut rig, "node-rt", &id, &target).await;
    // Unstage again: nothing staged is success.
    rig.node.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_block_volume_grows_with_its_image() {
    let Some(mut rig) = rig("rbd_node_block").await else { return };
    let id = rig.image("node-blk", 512 * MIB);
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/dev/blk"));
    rig.node.node_stage_volume(requests::stage(&id, &staging, block_capability())).await.unwrap();
    rig.node.node_publish_volume(requests::publish(&id, &staging, &target, block_capability(), false)).await.unwrap();
    assert!(host::is_mount_point(Path::new(&target)));
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
    let status = rig.node.node_stage_volume(requests::stage(&missing, &staging, mount_capability("xfs"))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // An image that exists but is not a Swell image is no volume either.
    let foreign = "foreign-image";
    rbd_rig::cli(rig.env, "rbd", &["create", &format!("rbd/{foreign}"), "--size", "64M"]).unwrap();
    let foreign_id = format!("rbd:{}:rbd:{foreign}", rbd_rig::CLUSTER_ID);
    let status = rig.node.node_stage_volume(requests::stage(&foreign_id, &staging, mount_capability("xfs"))).await.unwrap_err();
    rbd_rig::cli(rig.env, "rbd", &["rm", &format!("rbd/{foreign}")]).unwrap();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let other_cluster = swell_storage::RbdVolume::for_name("elsewhere", "rbd", "img").unwrap().id().to_string();
    let status = rig.node.node_stage_volume(requests::stage(&other_cluster, &staging, mount_capability("xfs"))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("elsewhere"), "{}", status.message());
    assert!(swell_e2e::sweep::rbd_fuse_pids_under(&rig.dir).is_empty(), "no rbd-fuse started");
    assert!(!host::is_mount_point(Path::new(&staging)));
}
