//! The node service's idempotency, conflicts and volume conditions, over its
//! Unix socket with real loop devices and mounts. Needs root.
#![allow(clippy::unwrap_used)]

mod node_rig;

use std::process::Command;

use csi_proto::v1::volume_usage::Unit;
use node_rig::rig;
use swell_e2e::host;
use swell_e2e::requests::{self, block_capability, mount_capability};
use swell_storage::units::MIB;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_publish_and_their_undoing_are_idempotent() {
    let Some(mut rig) = rig("node_idempotency").await else { return };
    let id = rig.volume("pvc-idem", 64 * MIB).await;
    let vid = id.to_string();
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    let stage = requests::stage(&vid, &staging, mount_capability("ext4"));
    rig.node.node_stage_volume(stage.clone()).await.unwrap();
    rig.node.node_stage_volume(stage).await.unwrap();

    let elsewhere = requests::stage(&vid, &rig.path("other-staging"), mount_capability("ext4"));
    assert_eq!(rig.node.node_stage_volume(elsewhere).await.unwrap_err().code(), Code::AlreadyExists);
    let as_block = requests::stage(&vid, &staging, block_capability());
    assert_eq!(rig.node.node_stage_volume(as_block).await.unwrap_err().code(), Code::AlreadyExists);
    let as_btrfs = requests::stage(&vid, &staging, mount_capability("btrfs"));
    assert_eq!(rig.node.node_stage_volume(as_btrfs).await.unwrap_err().code(), Code::AlreadyExists);

    let publish = requests::publish(&vid, &staging, &target, mount_capability("ext4"), false);
    rig.node.node_publish_volume(publish.clone()).await.unwrap();
    rig.node.node_publish_volume(publish).await.unwrap();
    let read_only = requests::publish(&vid, &staging, &target, mount_capability("ext4"), true);
    assert_eq!(rig.node.node_publish_volume(read_only).await.unwrap_err().code(), Code::AlreadyExists);

    let ro_target = rig.path("pods/q/vol");
    let ro = requests::publish(&vid, &staging, &ro_target, mount_capability("ext4"), true);
    rig.node.node_publish_volume(ro.clone()).await.unwrap();
    rig.node.node_publish_volume(ro).await.unwrap();
    let write = std::fs::write(rig.dir.join("pods/q/vol/x"), b"x");
    assert!(write.is_err(), "a read-only publish refuses writes");

    let other = rig.volume("pvc-unstaged", 64 * MIB).await.to_string();
    let unstaged = requests::publish(&other, &staging, &rig.path("pods/r/vol"), mount_capability("ext4"), false);
    assert_eq!(rig.node.node_publish_volume(unstaged).await.unwrap_err().code(), Code::FailedPrecondition);

    for path in [&target, &ro_target] {
        rig.node.node_unpublish_volume(requests::unpublish(&vid, path)).await.unwrap();
        rig.node.node_unpublish_volume(requests::unpublish(&vid, path)).await.unwrap();
    }
    rig.node.node_unstage_volume(requests::unstage(&vid, &staging)).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(&vid, &staging)).await.unwrap();
    assert!(!host::is_mount_point(&rig.dir.join("staging")));
    assert!(host::loop_devices_for(&rig.image(&id)).is_empty(), "no loop device left");

    // The device now holds ext4: staging it as btrfs is refused, never reformatted.
    let wrong_fs = requests::stage(&vid, &staging, mount_capability("btrfs"));
    let status = rig.node.node_stage_volume(wrong_fs).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("ext4"), "{}", status.message());
    assert!(host::loop_devices_for(&rig.image(&id)).is_empty(), "a failed stage detaches what it attached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restage_after_the_record_is_lost_finds_the_device_again() {
    let Some(mut rig) = rig("node_lost_record").await else { return };
    let id = rig.volume("pvc-lost", 64 * MIB).await;
    let vid = id.to_string();
    let staging = rig.path("staging");
    rig.node.node_stage_volume(requests::stage(&vid, &staging, mount_capability("ext4"))).await.unwrap();
    std::fs::remove_file(rig.dir.join("node/staged").join(format!("{vid}.json"))).unwrap();
    rig.node.node_stage_volume(requests::stage(&vid, &staging, mount_capability("ext4"))).await.unwrap();
    assert_eq!(host::loop_devices_for(&rig.image(&id)).len(), 1, "attached once, not twice");
    std::fs::remove_file(rig.dir.join("node/staged").join(format!("{vid}.json"))).unwrap();
    rig.node.node_unstage_volume(requests::unstage(&vid, &staging)).await.unwrap();
    assert!(host::loop_devices_for(&rig.image(&id)).is_empty(), "found by its backing file and detached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_usage_and_abnormal_conditions() {
    let Some(mut rig) = rig("node_stats").await else { return };
    let id = rig.volume("pvc-stats", 64 * MIB).await;
    let vid = id.to_string();
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    rig.node.node_stage_volume(requests::stage(&vid, &staging, mount_capability("ext4"))).await.unwrap();
    let publish = requests::publish(&vid, &staging, &target, mount_capability("ext4"), false);
    rig.node.node_publish_volume(publish).await.unwrap();
    host::write_pattern(&rig.dir.join("pods/p/vol/data.bin"), 8 << 20, 3).unwrap();

    let stats = rig.node.node_get_volume_stats(requests::stats(&vid, &target)).await.unwrap().into_inner();
    let bytes = stats.usage.iter().find(|u| u.unit == Unit::Bytes as i32).unwrap();
    let inodes = stats.usage.iter().find(|u| u.unit == Unit::Inodes as i32).unwrap();
    println!("stats: bytes total {} used {} available {}; inodes total {} used {}", bytes.total, bytes.used, bytes.available, inodes.total, inodes.used);
    assert!(bytes.total > (50 * MIB) as i64 && bytes.total <= (64 * MIB) as i64);
    assert!(bytes.used >= (8 * MIB) as i64 && bytes.used < bytes.total && bytes.available < bytes.total - bytes.used + 1);
    assert!(inodes.total > 1000 && inodes.used >= 11 && inodes.used < inodes.total);
    assert!(!stats.volume_condition.unwrap().abnormal);

    let missing = rig.node.node_get_volume_stats(requests::stats(&vid, &rig.path("nowhere"))).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let unknown = rig.node.node_get_volume_stats(requests::stats("local:ffffffffffffffffffffffffffffffff", &target)).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);

    // Behind the node's back: the pod's mount goes away.
    assert!(Command::new("umount").arg(rig.dir.join("pods/p/vol")).status().unwrap().success());
    let stats = rig.node.node_get_volume_stats(requests::stats(&vid, &target)).await.unwrap().into_inner();
    let condition = stats.volume_condition.unwrap();
    println!("after umount: {condition:?}");
    assert!(condition.abnormal && condition.message.contains("no longer a mount point"), "{condition:?}");

    // A block volume whose loop device is detached behind the node's back.
    let blk = rig.volume("pvc-stats-blk", 32 * MIB).await;
    let (blk_staging, blk_target) = (rig.path("blk-staging"), rig.path("pods/b/dev"));
    rig.node.node_stage_volume(requests::stage(&blk.to_string(), &blk_staging, block_capability())).await.unwrap();
    let publish = requests::publish(&blk.to_string(), &blk_staging, &blk_target, block_capability(), false);
    rig.node.node_publish_volume(publish).await.unwrap();
    for device in host::loop_devices_for(&rig.image(&blk)) {
        assert!(Command::new("losetup").arg("-d").arg(&device).status().unwrap().success());
    }
    let stats = rig.node.node_get_volume_stats(requests::stats(&blk.to_string(), &blk_target)).await.unwrap().into_inner();
    let condition = stats.volume_condition.unwrap();
    println!("after losetup -d: {condition:?}");
    assert!(condition.abnormal && condition.message.contains("detached"), "{condition:?}");
    let expand = requests::node_expand(&blk.to_string(), &blk_target, &blk_staging, 0, block_capability());
    assert_eq!(rig.node.node_expand_volume(expand).await.unwrap_err().code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_answers_not_found_and_invalid_argument_as_csi_sanity_expects() {
    let Some(mut rig) = rig("node_expand_codes").await else { return };
    let id = rig.volume("pvc-codes", 32 * MIB).await.to_string();
    let unknown = requests::node_expand_bare("fake-vol-id", "some/path", 0);
    assert_eq!(rig.node.node_expand_volume(unknown).await.unwrap_err().code(), Code::NotFound);
    let no_path = requests::node_expand_bare(&id, "some/path", 0);
    assert_eq!(rig.node.node_expand_volume(no_path).await.unwrap_err().code(), Code::NotFound);
    let missing = requests::node_expand_bare(&id, "", 0);
    assert_eq!(rig.node.node_expand_volume(missing).await.unwrap_err().code(), Code::InvalidArgument);
    let stats = rig.node.node_get_volume_stats(requests::stats("fake-vol-id", "some/path")).await;
    assert_eq!(stats.unwrap_err().code(), Code::NotFound);
}
