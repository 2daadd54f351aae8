//! What a claim's owner can ask the node for, on real loop devices and
//! mounts: a tenant's filesystem is mounted nosuid,nodev (staged and
//! published), mount options outside the filesystem's allow-list are
//! INVALID_ARGUMENT and attach nothing, and a read-only capability never
//! formats a blank volume nor repairs or grows a filesystem; staging and
//! target paths (and the paths NodeGetVolumeStats and NodeExpandVolume name)
//! must lie under the kubelet directory without a symlink on the way, and
//! unpublish and unstage unmount and remove only what the node
//! made. Needs root.
#![allow(clippy::unwrap_used)]

mod node_rig;

use std::process::Command;

use csi_proto::v1::VolumeCapability;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use node_rig::rig;
use swell_e2e::harness::NodeUnderTest;
use swell_e2e::host;
use swell_e2e::requests::{self, mount_capability};
use swell_e2e::sweep::sweep;
use swell_local::{LocalBackend, LocalConfig};
use swell_storage::units::MIB;
use swell_storage::{Backend, Placement};
use tonic::Code;

fn capability(fs_type: &str, mode: Mode, flags: &[&str]) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.to_owned(),
            mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            ..Default::default()
        })),
    }
}

/// The per-mount options of the mount at `path`, from /proc/self/mountinfo.
fn mount_options(path: &str) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo.lines().rev().find(|l| l.split(' ').nth(4) == Some(path)).unwrap_or_else(|| panic!("{path} is not mounted"));
    line.split(' ').nth(5).unwrap().split(',').map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_filesystem_is_nosuid_nodev_and_options_off_the_list_attach_nothing() {
    let Some(mut rig) = rig("node_hostile_nosuid").await else { return };
    let id = rig.volume("pvc-nosuid", 512 * MIB).await.to_string();
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    for flags in [&["suid"][..], &["noatime,dev"][..], &["logdev=/dev/sda"][..]] {
        let status = rig.node.node_stage_volume(requests::stage(&id, &staging, capability("xfs", Mode::SingleNodeWriter, flags))).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{flags:?}: {status:?}");
        assert!(status.message().contains("not allowed"), "{}", status.message());
    }
    assert!(host::loop_devices_for(&rig.image(&id.parse().unwrap())).is_empty(), "a refused stage attached nothing");
    assert!(!host::is_mount_point(&rig.dir.join("staging")));

    rig.node.node_stage_volume(requests::stage(&id, &staging, capability("xfs", Mode::SingleNodeWriter, &["noatime"]))).await.unwrap();
    rig.node.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    for path in [&staging, &target] {
        let options = mount_options(path);
        for want in ["nosuid", "nodev", "noatime"] {
            assert!(options.iter().any(|o| o == want), "{path}: {options:?} lacks {want}");
        }
    }
    rig.node.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_capability_never_formats_repairs_or_grows() {
    let Some(mut rig) = rig("node_hostile_read_only").await else { return };
    let volume = rig.volume("pvc-reader", 64 * MIB).await;
    let (id, staging) = (volume.to_string(), rig.path("staging"));
    let reader = capability("ext4", Mode::SingleNodeReaderOnly, &[]);

    // Blank: refused, and still blank.
    let status = rig.node.node_stage_volume(requests::stage(&id, &staging, reader.clone())).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let blkid = std::process::Command::new("blkid").arg("-p").arg(rig.image(&volume)).output().unwrap();
    assert_eq!(blkid.status.code(), Some(2), "the blank volume was formatted: {}", String::from_utf8_lossy(&blkid.stdout));
    assert!(host::loop_devices_for(&rig.image(&volume)).is_empty(), "a refused stage leaves no loop device");

    // Formatted by a writer, then grown while unstaged: a reader mounts it as it is.
    rig.node.node_stage_volume(requests::stage(&id, &staging, mount_capability("ext4"))).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    let before = std::fs::read(rig.image(&volume)).unwrap();
    rig.grow(&volume, 128 * MIB).await;
    rig.node.node_stage_volume(requests::stage(&id, &staging, reader)).await.unwrap();
    let total = host::statvfs_total(&rig.dir.join("staging")).unwrap();
    assert!(total < 64 * MIB, "the filesystem was grown to {total} bytes under a read-only capability");
    assert!(mount_options(&staging).iter().any(|o| o == "ro"), "{:?}", mount_options(&staging));
    rig.node.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    let after = std::fs::read(rig.image(&volume)).unwrap();
    assert!(after[..before.len()] == before[..], "a read-only stage wrote to the volume (repair or grow)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_kubelet_dir_or_through_a_symlink_are_refused_and_foreign_mounts_and_files_are_left() {
    // Its own node, confined to `kubelet/` of a fresh directory (the rig's node is not confined).
    let Some(rig) = rig("node_hostile_paths").await else { return };
    let dir = rig.dir.join("confined");
    let kubelet = dir.join("kubelet");
    std::fs::create_dir_all(kubelet.join("pods")).unwrap();
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    let mut config = swell_node::NodeConfig::new("confined-node");
    config.state_dir = dir.join("node");
    config.local_state_dir = dir.join("local");
    config.kubelet_dir = Some(kubelet.clone());
    let backend = LocalBackend::open(&LocalConfig::new(&config.local_state_dir, dir.join("controller"))).unwrap();
    let node = NodeUnderTest::serve(&dir.join("node.sock"), &config).await.unwrap();
    let mut client = node.client.clone();
    let volume = backend.create_volume("pvc-confined", 512 * MIB, &Placement::default()).await.unwrap().info().id.clone();
    let id = volume.to_string();
    let at = |p: &std::path::Path| p.display().to_string();

    // Outside the kubelet directory, or through a symlink inside it: refused, nothing attached or mounted.
    std::os::unix::fs::symlink(dir.join("elsewhere"), kubelet.join("plugins")).unwrap();
    for staging in [dir.join("elsewhere/staging"), kubelet.join("plugins/staging"), dir.join("kubelet-other/staging")] {
        let status = client.node_stage_volume(requests::stage(&id, &at(&staging), mount_capability("xfs"))).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}: {status:?}", staging.display());
    }
    assert!(!host::is_mount_point(&dir.join("elsewhere/staging")));
    assert!(host::loop_devices_for(&swell_local::image_path(backend.state_dir(), &volume)).is_empty(), "a refused stage attached nothing");

    let staging = kubelet.join("staging");
    client.node_stage_volume(requests::stage(&id, &at(&staging), mount_capability("xfs"))).await.unwrap();

    // Stats and expansion paths too: refused outside, through the symlink, relative or climbing out with
    // `..`, in either of NodeExpandVolume's paths; served under the kubelet directory.
    let target = kubelet.join("pods/v/vol");
    client.node_publish_volume(requests::publish(&id, &at(&staging), &at(&target), mount_capability("xfs"), false)).await.unwrap();
    let expand = |volume_path: &std::path::Path, staging_path: &std::path::Path| {
        requests::node_expand(&id, &at(volume_path), &at(staging_path), (512 * MIB) as i64, mount_capability("xfs"))
    };
    let relative = std::path::PathBuf::from("pods/v/vol");
    for bad in [dir.join("elsewhere"), kubelet.join("plugins/vol"), relative, kubelet.join("pods/v/../../../elsewhere")] {
        let status = client.node_get_volume_stats(requests::stats(&id, &at(&bad))).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "stats at {}: {status:?}", bad.display());
        let status = client.node_expand_volume(expand(&bad, &staging)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "expand at {}: {status:?}", bad.display());
        let status = client.node_expand_volume(expand(&target, &bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "expand staged at {}: {status:?}", bad.display());
    }
    client.node_get_volume_stats(requests::stats(&id, &at(&target))).await.expect("stats under the kubelet directory");
    client.node_expand_volume(expand(&target, &staging)).await.expect("expand under the kubelet directory");
    client.node_unpublish_volume(requests::unpublish(&id, &at(&target))).await.unwrap();

    // A mount that is not the volume's at a target: unpublish leaves it and says why.
    let foreign = kubelet.join("pods/p/vol");
    std::fs::create_dir_all(&foreign).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&foreign).status().unwrap();
    assert!(mounted.success());
    let status = client.node_unpublish_volume(requests::unpublish(&id, &at(&foreign))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(host::is_mount_point(&foreign), "a foreign mount was unmounted");
    assert!(Command::new("umount").arg(&foreign).status().unwrap().success());

    // A file with data at a target: not what a publish makes, so not removed.
    let file = kubelet.join("pods/q/file");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"a tenant's data").unwrap();
    let status = client.node_unpublish_volume(requests::unpublish(&id, &at(&file))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"a tenant's data");

    client.node_unstage_volume(requests::unstage(&id, &at(&staging))).await.unwrap();
    assert!(!host::is_mount_point(&staging));
    drop(node);
    sweep(&dir);
}
