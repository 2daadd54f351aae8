//! The node service driven over its Unix socket with real loop devices,
//! filesystems and mounts: stage → publish → write → grow the backing volume
//! → NodeExpandVolume → the filesystem fills the new size, data intact →
//! unpublish → unstage, and no loop device left. Needs root.
#![allow(clippy::unwrap_used)]

mod node_rig;

use csi_proto::v1::NodeGetVolumeStatsResponse;
use csi_proto::v1::volume_usage::Unit;
use node_rig::{Rig, rig};
use swell_e2e::host;
use swell_e2e::node_process::online_ext4_refusal_stand_in;
use swell_e2e::requests::{self, block_capability, mount_capability};
use swell_storage::VolumeId;
use swell_storage::units::MIB;
use tonic::Code;

fn usage(stats: &NodeGetVolumeStatsResponse, unit: Unit) -> (i64, i64, i64) {
    let u = stats.usage.iter().find(|u| u.unit == unit as i32).expect("usage of that unit");
    (u.total, u.available, u.used)
}

async fn stats(rig: &mut Rig, id: &VolumeId, path: &str) -> NodeGetVolumeStatsResponse {
    rig.node.node_get_volume_stats(requests::stats(&id.to_string(), path)).await.unwrap().into_inner()
}

/// Stages and publishes a mount volume, writes 4 MiB, returns its checksum.
async fn stage_publish_write(rig: &mut Rig, id: &VolumeId, fs: &str) -> String {
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    rig.node.node_stage_volume(requests::stage(&id.to_string(), &staging, mount_capability(fs))).await.unwrap();
    let publish = requests::publish(&id.to_string(), &staging, &target, mount_capability(fs), false);
    rig.node.node_publish_volume(publish).await.unwrap();
    let file = rig.dir.join("pods/p/vol/data.bin");
    host::write_pattern(&file, 4 << 20, 7).unwrap();
    host::sha256_file(&file).unwrap()
}

async fn unpublish_unstage(rig: &mut Rig, id: &VolumeId) {
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    rig.node.node_unpublish_volume(requests::unpublish(&id.to_string(), &target)).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(&id.to_string(), &staging)).await.unwrap();
    assert!(!rig.dir.join("pods/p/vol").exists(), "target removed");
    assert!(host::loop_devices_for(&rig.image(id)).is_empty(), "no loop device left");
    assert!(!rig.staging_record_exists(id), "staging record removed");
}

/// xfs and btrfs grow online: the whole user path, then a repeated expand.
async fn online_grow(fs: &str, from: u64, to: u64) {
    let Some(mut rig) = rig(&format!("node_online_grow_{fs}")).await else { return };
    let id = rig.volume(&format!("pvc-{fs}"), from).await;
    let sum = stage_publish_write(&mut rig, &id, fs).await;
    let target = rig.path("pods/p/vol");
    let (before, _, _) = usage(&stats(&mut rig, &id, &target).await, Unit::Bytes);
    assert!(before as u64 <= from && before as u64 > from / 2, "{fs} starts at {before} of {from}");

    rig.grow(&id, to).await;
    let expand = requests::node_expand(&id.to_string(), &target, &rig.path("staging"), to as i64, mount_capability(fs));
    let grown = rig.node.node_expand_volume(expand.clone()).await.unwrap().into_inner();
    assert_eq!(grown.capacity_bytes as u64, to);
    let (after, _, _) = usage(&stats(&mut rig, &id, &target).await, Unit::Bytes);
    println!("{fs}: statvfs total {before} -> {after} bytes (device {from} -> {to})");
    assert!(after as u64 > to * 85 / 100 && after as u64 <= to, "{fs} grew to {after}");
    let again = rig.node.node_expand_volume(expand).await.unwrap().into_inner();
    assert_eq!(again.capacity_bytes, grown.capacity_bytes, "a repeated expand answers the same");
    assert_eq!(host::sha256_file(&rig.dir.join("pods/p/vol/data.bin")).unwrap(), sum, "data intact");
    unpublish_unstage(&mut rig, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_grows_online() {
    online_grow("xfs", 320 * MIB, 640 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_grows_online() {
    online_grow("btrfs", 320 * MIB, 640 * MIB).await;
}

/// An ext4 volume of 128 MiB on `rig`, staged, published and written,
/// whose backing volume has grown to 256 MiB; returns its id and checksum.
async fn ext4_grown_underneath(rig: &mut Rig) -> (VolumeId, String) {
    let id = rig.volume("pvc-ext4", 128 * MIB).await;
    let sum = stage_publish_write(rig, &id, "ext4").await;
    rig.grow(&id, 256 * MIB).await;
    (id, sum)
}

async fn ext4_total(rig: &mut Rig, id: &VolumeId) -> u64 {
    let target = rig.path("pods/p/vol");
    usage(&stats(rig, id, &target).await, Unit::Bytes).0 as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_grows_online_where_the_kernel_permits() {
    let test = "ext4_grows_online_where_the_kernel_permits";
    let Some(mut rig) = rig(test).await else { return };
    if !rig.online_ext4_grow_works() {
        host::note_skip(test, host::ONLINE_EXT4_GROW_NOT_PERMITTED);
        return;
    }
    let (id, sum) = ext4_grown_underneath(&mut rig).await;
    let expand = requests::node_expand(&id.to_string(), &rig.path("pods/p/vol"), &rig.path("staging"), (256 * MIB) as i64, mount_capability("ext4"));
    assert_eq!(rig.node.node_expand_volume(expand).await.unwrap().into_inner().capacity_bytes as u64, 256 * MIB);
    let total = ext4_total(&mut rig, &id).await;
    assert!(total > 256 * MIB * 85 / 100, "ext4 grew to {total}");
    assert_eq!(host::sha256_file(&rig.dir.join("pods/p/vol/data.bin")).unwrap(), sum, "data intact");
    unpublish_unstage(&mut rig, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_refused_online_grows_offline_at_restage() {
    let Some(mut rig) = rig("ext4_refused_online_grows_offline_at_restage").await else { return };
    // The refusal a node without CAP_SYS_RESOURCE meets, provoked by a
    // stand-in resize2fs wherever online growth would work.
    let (stand_in, refused) = online_ext4_refusal_stand_in(&rig.dir).unwrap();
    let path = format!("{}:{}", stand_in.display(), std::env::var("PATH").unwrap_or_default());
    rig.serve_as_process(&[("PATH", path.into())]).await;
    let (id, sum) = ext4_grown_underneath(&mut rig).await;
    let expand = requests::node_expand(&id.to_string(), &rig.path("pods/p/vol"), &rig.path("staging"), (256 * MIB) as i64, mount_capability("ext4"));
    let status = rig.node.node_expand_volume(expand.clone()).await.expect_err("online ext4 grow refused");
    assert!(refused.exists(), "the node never asked resize2fs to grow the mounted filesystem");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("CAP_SYS_RESOURCE"), "{}", status.message());
    let total = ext4_total(&mut rig, &id).await;
    assert!(total < 130 * MIB, "not grown yet: {total}");
    unpublish_unstage(&mut rig, &id).await;
    let checksum_after_restage = stage_publish_write_keep(&mut rig, &id).await;
    assert_eq!(checksum_after_restage, sum, "data intact across the offline grow");
    let again = rig.node.node_expand_volume(expand).await.unwrap().into_inner();
    assert_eq!(again.capacity_bytes as u64, 256 * MIB, "expand after the offline grow succeeds");
    let total = ext4_total(&mut rig, &id).await;
    println!("ext4: statvfs total after the offline grow {total} bytes (device {})", 256 * MIB);
    assert!(total > 256 * MIB * 85 / 100, "ext4 grew to {total}");
    unpublish_unstage(&mut rig, &id).await;
}

/// Restages and republishes without writing; returns the old file's checksum.
async fn stage_publish_write_keep(rig: &mut Rig, id: &VolumeId) -> String {
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    rig.node.node_stage_volume(requests::stage(&id.to_string(), &staging, mount_capability("ext4"))).await.unwrap();
    let publish = requests::publish(&id.to_string(), &staging, &target, mount_capability("ext4"), false);
    rig.node.node_publish_volume(publish).await.unwrap();
    host::sha256_file(&rig.dir.join("pods/p/vol/data.bin")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_grows_with_its_device() {
    let Some(mut rig) = rig("node_block_grow").await else { return };
    let id = rig.volume("pvc-block", 64 * MIB).await;
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/dev/blk"));
    rig.node.node_stage_volume(requests::stage(&id.to_string(), &staging, block_capability())).await.unwrap();
    let publish = requests::publish(&id.to_string(), &staging, &target, block_capability(), false);
    rig.node.node_publish_volume(publish.clone()).await.unwrap();
    rig.node.node_publish_volume(publish).await.unwrap();
    assert!(host::is_mount_point(&rig.dir.join("pods/p/dev/blk")));
    assert_eq!(usage(&stats(&mut rig, &id, &target).await, Unit::Bytes).0 as u64, 64 * MIB);

    rig.grow(&id, 128 * MIB).await;
    let expand = requests::node_expand(&id.to_string(), &target, &staging, (128 * MIB) as i64, block_capability());
    let grown = rig.node.node_expand_volume(expand).await.unwrap().into_inner();
    assert_eq!(grown.capacity_bytes as u64, 128 * MIB);
    assert_eq!(usage(&stats(&mut rig, &id, &target).await, Unit::Bytes).0 as u64, 128 * MIB);
    let too_big = requests::node_expand(&id.to_string(), &target, &staging, (256 * MIB) as i64, block_capability());
    let status = rig.node.node_expand_volume(too_big).await.expect_err("backend smaller than required");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    rig.node.node_unpublish_volume(requests::unpublish(&id.to_string(), &target)).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(&id.to_string(), &staging)).await.unwrap();
    assert!(!rig.dir.join("pods/p/dev/blk").exists(), "block target file removed");
    assert!(host::loop_devices_for(&rig.image(&id)).is_empty(), "no loop device left");
}

/// A local volume whose backing file was deleted while staged, and whose
/// staging record is gone too (a node state directory lost): the unstage
/// still finds the loop device over the deleted file and detaches it, and
/// leaves nothing mounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstage_without_a_record_detaches_a_loop_device_left_over_a_deleted_backing_file() {
    let Some(mut rig) = rig("unstage_without_a_record_detaches_a_loop_device_left_over_a_deleted_backing_file").await else { return };
    let id = rig.volume("pvc-gone", 320 * MIB).await;
    let staging = rig.path("staging");
    rig.node.node_stage_volume(requests::stage(&id.to_string(), &staging, mount_capability("xfs"))).await.unwrap();
    let image = rig.image(&id);
    assert_eq!(host::loop_devices_for(&image).len(), 1, "staged on one loop device");
    std::fs::remove_file(&image).unwrap();
    std::fs::remove_file(rig.dir.join("node/staged").join(format!("{id}.json"))).unwrap();
    assert!(!rig.staging_record_exists(&id));

    rig.node.node_unstage_volume(requests::unstage(&id.to_string(), &staging)).await.unwrap();
    assert!(host::loop_devices_for(&image).is_empty(), "a loop device left over the deleted file");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(staging.as_str())), "the staging path is still mounted");
}
