//! What a claim's owner can ask the node for, on real loop devices and
//! mounts: a tenant's filesystem is mounted nosuid,nodev (staged and
//! published), mount options outside the filesystem's allow-list are
//! INVALID_ARGUMENT and attach nothing, and a read-only capability never
//! formats a blank volume nor repairs or grows a filesystem. Needs root.
#![allow(clippy::unwrap_used)]

mod node_rig;

use csi_proto::v1::VolumeCapability;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use node_rig::rig;
use swell_e2e::host;
use swell_e2e::requests::{self, mount_capability};
use swell_storage::units::MIB;
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
