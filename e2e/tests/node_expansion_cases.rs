//! Expansion cases beside the usual online grow, on local volumes with real
//! loop devices and filesystems: a volume expanded while it was not staged
//! comes up at its new size at the next NodeStageVolume; NodeExpandVolume
//! at a path that exists but is not the volume's mount is refused with
//! NOT_FOUND and grows nothing; sizes at and past the limits are refused
//! with the code the spec names, and sizes that are not a multiple of 512
//! or 4096 bytes expand; xfs and btrfs filled to 99 % grow online and take
//! writes in the new space. Needs root.
#![allow(clippy::unwrap_used)]

mod node_rig;

use node_rig::{Rig, rig};
use swell_e2e::host;
use swell_e2e::requests::{self, mount_capability, total_bytes};
use swell_e2e::stream_io;
use swell_storage::VolumeId;
use swell_storage::units::MIB;
use tonic::Code;

async fn stage_publish(rig: &mut Rig, id: &VolumeId, fs: &str, staging: &str, target: &str) {
    let (staging, target) = (rig.path(staging), rig.path(target));
    rig.node.node_stage_volume(requests::stage(&id.to_string(), &staging, mount_capability(fs))).await.unwrap();
    rig.node.node_publish_volume(requests::publish(&id.to_string(), &staging, &target, mount_capability(fs), false)).await.unwrap();
}

async fn unpublish_unstage(rig: &mut Rig, id: &VolumeId) {
    rig.node.node_unpublish_volume(requests::unpublish(&id.to_string(), &rig.path("pods/p/vol"))).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(&id.to_string(), &rig.path("staging"))).await.unwrap();
}

async fn filesystem_bytes(rig: &mut Rig, id: &VolumeId, path: &str) -> u64 {
    let stats = rig.node.node_get_volume_stats(requests::stats(&id.to_string(), &rig.path(path))).await.unwrap().into_inner();
    total_bytes(&stats).unwrap() as u64
}

async fn grown_while_unstaged(fs: &str) {
    let Some(mut rig) = rig(&format!("node_grown_while_unstaged_{fs}")).await else { return };
    let id = rig.volume(&format!("pvc-unstaged-{fs}"), 320 * MIB).await;
    stage_publish(&mut rig, &id, fs, "staging", "pods/p/vol").await;
    let data = rig.dir.join("pods/p/vol/data");
    assert_eq!(stream_io::write_until(&data, &rig.dir.join("no-stop"), &rig.dir.join("progress"), 32).records, 32);
    let before = filesystem_bytes(&mut rig, &id, "pods/p/vol").await;
    unpublish_unstage(&mut rig, &id).await;

    // ControllerExpandVolume while no node has it: the backend grows.
    rig.grow(&id, 640 * MIB).await;
    stage_publish(&mut rig, &id, fs, "staging", "pods/p/vol").await;
    let after = filesystem_bytes(&mut rig, &id, "pods/p/vol").await;
    println!("{fs}: {before} bytes before, {after} after a stage over the grown volume");
    assert!(after > 640 * MIB * 85 / 100 && after <= 640 * MIB, "{fs} came up at {after}, not about 640 MiB");
    stream_io::verify(&data, 32).unwrap();
    // kubelet's NodeExpandVolume that follows finds the work done.
    let expand = requests::node_expand(&id.to_string(), &rig.path("pods/p/vol"), &rig.path("staging"), (640 * MIB) as i64, mount_capability(fs));
    assert_eq!(rig.node.node_expand_volume(expand).await.unwrap().into_inner().capacity_bytes as u64, 640 * MIB);
    unpublish_unstage(&mut rig, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_grown_while_unstaged_comes_up_at_the_new_size() {
    grown_while_unstaged("xfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_grown_while_unstaged_comes_up_at_the_new_size() {
    grown_while_unstaged("btrfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_at_a_path_that_is_not_the_volumes_mount_is_not_found_and_grows_nothing() {
    let Some(mut rig) = rig("node_expand_wrong_path").await else { return };
    let ours = rig.volume("pvc-ours", 320 * MIB).await;
    let theirs = rig.volume("pvc-theirs", 320 * MIB).await;
    stage_publish(&mut rig, &ours, "xfs", "staging", "pods/p/vol").await;
    stage_publish(&mut rig, &theirs, "xfs", "staging-2", "pods/q/vol").await;
    std::fs::create_dir_all(rig.dir.join("plain")).unwrap();
    rig.grow(&ours, 640 * MIB).await;
    let before = filesystem_bytes(&mut rig, &ours, "pods/p/vol").await;
    for path in ["pods/q/vol", "staging-2", "plain"] {
        let expand = requests::node_expand(&ours.to_string(), &rig.path(path), &rig.path("staging"), 0, mount_capability("xfs"));
        let status = rig.node.node_expand_volume(expand).await.expect_err(path);
        assert_eq!(status.code(), Code::NotFound, "{path}: {}", status.message());
        assert!(status.message().contains("not mounted at"), "{}", status.message());
    }
    assert_eq!(filesystem_bytes(&mut rig, &ours, "pods/p/vol").await, before, "a refused expand grew the filesystem");
    let expand = requests::node_expand(&ours.to_string(), &rig.path("pods/p/vol"), &rig.path("staging"), 0, mount_capability("xfs"));
    assert_eq!(rig.node.node_expand_volume(expand).await.unwrap().into_inner().capacity_bytes as u64, 640 * MIB);
    for (id, staging, target) in [(&ours, "staging", "pods/p/vol"), (&theirs, "staging-2", "pods/q/vol")] {
        rig.node.node_unpublish_volume(requests::unpublish(&id.to_string(), &rig.path(target))).await.unwrap();
        rig.node.node_unstage_volume(requests::unstage(&id.to_string(), &rig.path(staging))).await.unwrap();
    }
}

/// NodeExpandVolume at and past the size limits: `i64::MAX` (more than any
/// device holds) is OUT_OF_RANGE; above it (a uint64 on the wire past
/// `i64::MAX` decodes as negative), a negative size, or a required size over
/// its limit is INVALID_ARGUMENT; each grows nothing. Then sizes granted
/// that are not a multiple of 4096, or of 512, expand: the device holds the
/// whole sectors of what the backend holds (a required size compared with
/// the device would never be met, and the volume would be stuck).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_past_the_limits_are_refused_and_sizes_off_the_block_size_expand_to_their_whole_sectors() {
    let Some(mut rig) = rig("node_expand_size_limits").await else { return };
    let id = rig.volume("pvc-limits", 320 * MIB).await;
    stage_publish(&mut rig, &id, "xfs", "staging", "pods/p/vol").await;
    rig.grow(&id, 640 * MIB).await;
    let before = filesystem_bytes(&mut rig, &id, "pods/p/vol").await;
    let above_i64_max = i64::from_ne_bytes((1u64 << 63).to_ne_bytes());
    let cases = [
        (i64::MAX, 0, Code::OutOfRange),
        (above_i64_max, 0, Code::InvalidArgument),
        (-1, 0, Code::InvalidArgument),
        (0, above_i64_max, Code::InvalidArgument),
        ((640 * MIB) as i64, (320 * MIB) as i64, Code::InvalidArgument),
    ];
    let expand = |rig: &Rig, required: i64, limit: i64| {
        let mut expand = requests::node_expand(&id.to_string(), &rig.path("pods/p/vol"), &rig.path("staging"), required, mount_capability("xfs"));
        expand.capacity_range = Some(csi_proto::v1::CapacityRange { required_bytes: required, limit_bytes: limit });
        expand
    };
    for (required, limit, code) in cases {
        let status = rig.node.node_expand_volume(expand(&rig, required, limit)).await.expect_err("refused");
        assert_eq!(status.code(), code, "required {required}, limit {limit}: {}", status.message());
        assert_eq!(filesystem_bytes(&mut rig, &id, "pods/p/vol").await, before, "a refused expand (required {required}) grew the filesystem");
    }
    // 512-byte sectors but not 4 KiB blocks; then not even whole sectors.
    for (granted, device) in [(672 * MIB + 1536, 672 * MIB + 1536), (704 * MIB + 100, 704 * MIB)] {
        rig.grow(&id, granted).await;
        let grown = rig.node.node_expand_volume(expand(&rig, granted as i64, 0)).await.unwrap_or_else(|s| panic!("{granted} bytes granted: {s:?}"));
        assert_eq!(grown.into_inner().capacity_bytes as u64, device, "{granted} bytes granted");
        let total = filesystem_bytes(&mut rig, &id, "pods/p/vol").await;
        assert!(total > device * 85 / 100 && total <= device, "xfs grew to {total} on a device of {device}");
    }
    unpublish_unstage(&mut rig, &id).await;
}

/// Free bytes for an unprivileged writer, and the total, of the filesystem at `path`.
fn free_and_total(path: &std::path::Path) -> (u64, u64) {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    (stat.blocks_available() * stat.fragment_size(), stat.blocks() * stat.fragment_size())
}

/// A filesystem filled to 99 % (data, then one allocated filler file) grows
/// online: NodeExpandVolume succeeds, the new space is free and writable,
/// and the data reads back.
async fn nearly_full_grows(fs: &str) {
    let Some(mut rig) = rig(&format!("node_nearly_full_grows_{fs}")).await else { return };
    let id = rig.volume(&format!("pvc-full-{fs}"), 320 * MIB).await;
    stage_publish(&mut rig, &id, fs, "staging", "pods/p/vol").await;
    let mount = rig.dir.join("pods/p/vol");
    let data = mount.join("data");
    assert_eq!(stream_io::write_until(&data, &rig.dir.join("no-stop"), &rig.dir.join("progress"), 32).records, 32);
    let (free, total) = free_and_total(&mount);
    let filler = std::fs::File::create(mount.join("filler")).unwrap();
    nix::fcntl::fallocate(&filler, nix::fcntl::FallocateFlags::empty(), 0, (free - total / 100) as i64).unwrap();
    filler.sync_all().unwrap();
    drop(filler);
    let (free, total) = free_and_total(&mount);
    println!("{fs}: {free} of {total} bytes free before the grow");
    assert!(free <= total / 50, "{fs} is not nearly full: {free} of {total} free");

    rig.grow(&id, 640 * MIB).await;
    let expand = requests::node_expand(&id.to_string(), &rig.path("pods/p/vol"), &rig.path("staging"), (640 * MIB) as i64, mount_capability(fs));
    let grown = rig.node.node_expand_volume(expand).await.unwrap_or_else(|s| panic!("{fs} at 99 %: {s:?}"));
    assert_eq!(grown.into_inner().capacity_bytes as u64, 640 * MIB);
    let (free_after, total_after) = free_and_total(&mount);
    println!("{fs}: {free_after} of {total_after} bytes free after the grow");
    assert!(total_after > 640 * MIB * 85 / 100, "{fs} grew to {total_after}");
    assert!(free_after > free + 250 * MIB, "{fs}: only {free_after} bytes free after the grow");
    // The new space takes writes, and the old data is intact.
    host::write_pattern(&mount.join("after-the-grow"), 200 << 20, 3).unwrap();
    stream_io::verify(&data, 32).unwrap();
    unpublish_unstage(&mut rig, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_filled_to_99_percent_grows_online_and_takes_writes() {
    nearly_full_grows("xfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_filled_to_99_percent_grows_online_and_takes_writes() {
    nearly_full_grows("btrfs").await;
}
