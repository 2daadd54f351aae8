//! A node rebooted between ControllerExpandVolume and NodeExpandVolume, on
//! real loop devices and xfs, with swell-node as a process: the reboot
//! leaves the staging record but no mount and no loop device, and the
//! record's loop device number is then taken by another file. Kubelet's
//! NodeExpandVolume before the restage is refused and touches nothing; after
//! the restage the right device is grown, and neither the file now on the
//! old loop device nor another volume staged meanwhile is touched.
#![allow(clippy::unwrap_used)]

mod node_rig;

use std::path::Path;
use std::process::Command;

use node_rig::{Rig, rig};
use swell_e2e::host::{self, statvfs_total};
use swell_e2e::requests::{self, mount_capability};
use swell_storage::VolumeId;
use swell_storage::units::MIB;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn stage_publish(rig: &mut Rig, id: &VolumeId, staging: &str, target: &str) {
    let (staging, target) = (rig.path(staging), rig.path(target));
    rig.node.node_stage_volume(requests::stage(&id.to_string(), &staging, mount_capability("xfs"))).await.unwrap();
    rig.node.node_publish_volume(requests::publish(&id.to_string(), &staging, &target, mount_capability("xfs"), false)).await.unwrap();
}

/// Starts the node as a process and stages and publishes volume A (320 MiB
/// of xfs) with 4 MiB written: its id, the file and the file's digest.
async fn volume_a_published_with_data(rig: &mut Rig) -> (VolumeId, std::path::PathBuf, String) {
    rig.serve_as_process(&[]).await;
    let a = rig.volume("pvc-a", 320 * MIB).await;
    stage_publish(rig, &a, "staging-a", "pods/a/vol").await;
    let a_data = rig.dir.join("pods/a/vol/data.bin");
    host::write_pattern(&a_data, 4 << 20, 1).unwrap();
    let a_sum = host::sha256_file(&a_data).unwrap();
    (a, a_data, a_sum)
}

fn only_loop_device(file: &Path) -> String {
    let devices = host::loop_devices_for(file);
    assert_eq!(devices.len(), 1, "{}: {devices:?}", file.display());
    devices[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_with_loop_numbers_reused_the_right_device_is_grown_and_no_other_touched() {
    let Some(mut rig) = rig("after_a_reboot_with_loop_numbers_reused_the_right_device_is_grown_and_no_other_touched").await else { return };
    let (a, a_data, a_sum) = volume_a_published_with_data(&mut rig).await;
    let old_device = only_loop_device(&rig.image(&a));
    // ControllerExpandVolume: the backing volume grows.
    rig.grow(&a, 640 * MIB).await;

    // The reboot: the node gone, no mount, no loop device; the record stays.
    rig.serve_as_process(&[]).await;
    for mount in ["pods/a/vol", "staging-a"] {
        run("umount", &[&rig.path(mount)]);
    }
    run("losetup", &["-d", &old_device]);
    assert!(rig.staging_record_exists(&a), "the reboot keeps the staging record");
    // Its loop number now holds another xfs, and another volume is staged.
    let foreign = rig.dir.join("foreign.img");
    run("truncate", &["-s", "320M", &foreign.display().to_string()]);
    run("mkfs.xfs", &["-q", &foreign.display().to_string()]);
    run("losetup", &[&old_device, &foreign.display().to_string()]);
    let foreign_sum = host::sha256_file(&foreign).unwrap();
    let b = rig.volume("pvc-b", 320 * MIB).await;
    stage_publish(&mut rig, &b, "staging-b", "pods/b/vol").await;
    let b_data = rig.dir.join("pods/b/vol/data.bin");
    host::write_pattern(&b_data, 4 << 20, 2).unwrap();
    let (b_sum, b_total) = (host::sha256_file(&b_data).unwrap(), statvfs_total(&rig.dir.join("pods/b/vol")).unwrap());

    // NodeExpandVolume before the restage, at the pod's path and at the
    // staging path: refused, nothing grown.
    for path in ["pods/a/vol", "staging-a"] {
        let expand = requests::node_expand(&a.to_string(), &rig.path(path), &rig.path("staging-a"), (640 * MIB) as i64, mount_capability("xfs"));
        let status = rig.node.node_expand_volume(expand).await.expect_err("expand of a volume the reboot unstaged");
        println!("NodeExpandVolume at {path} before the restage: {:?} {}", status.code(), status.message());
        if path == "staging-a" {
            // The record names the old device: the node sees it holds another file.
            let foreign_named = format!("{old_device} now backs {}", foreign.display());
            assert!(status.message().contains(&foreign_named), "{}", status.message());
            // Kubelet retries it no more on this node, and grows at the restage.
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{}", status.message());
        } else {
            assert_eq!(status.code(), tonic::Code::NotFound, "{}", status.message());
        }
    }
    assert_eq!(host::sha256_file(&foreign).unwrap(), foreign_sum, "the file on the old loop device was written");
    assert_eq!(only_loop_device(&foreign), old_device);

    // Kubelet restages and publishes, then expands: A is grown, on its own device.
    stage_publish(&mut rig, &a, "staging-a", "pods/a/vol").await;
    let new_device = only_loop_device(&rig.image(&a));
    assert_ne!(new_device, old_device, "A was staged on the device the record named, now another file's");
    let expand = requests::node_expand(&a.to_string(), &rig.path("pods/a/vol"), &rig.path("staging-a"), (640 * MIB) as i64, mount_capability("xfs"));
    assert_eq!(rig.node.node_expand_volume(expand).await.unwrap().into_inner().capacity_bytes as u64, 640 * MIB);
    let a_total = statvfs_total(&rig.dir.join("pods/a/vol")).unwrap();
    assert!(a_total > 640 * MIB * 85 / 100, "A grew to {a_total}");
    assert_eq!(host::sha256_file(&a_data).unwrap(), a_sum, "A's data intact");

    // Nothing else touched.
    assert_eq!(statvfs_total(&rig.dir.join("pods/b/vol")).unwrap(), b_total, "B's filesystem changed size");
    assert_eq!(host::sha256_file(&b_data).unwrap(), b_sum, "B's data changed");
    run("losetup", &["-d", &old_device]);
    assert_eq!(host::sha256_file(&foreign).unwrap(), foreign_sum, "the file on the old loop device was written");
    for (id, staging, target) in [(&a, "staging-a", "pods/a/vol"), (&b, "staging-b", "pods/b/vol")] {
        rig.node.node_unpublish_volume(requests::unpublish(&id.to_string(), &rig.path(target))).await.unwrap();
        rig.node.node_unstage_volume(requests::unstage(&id.to_string(), &rig.path(staging))).await.unwrap();
        assert!(host::loop_devices_for(&rig.image(id)).is_empty(), "{id}: a loop device left");
    }
}

/// A staging mount lost while its device stays attached (unmounted by
/// another program, or a mount namespace gone): the record says staged, so
/// NodeExpandVolume answers FAILED_PRECONDITION (no retry on this node could
/// grow it; INTERNAL would have kubelet retry it for good), and the restage
/// mounts it again and grows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_mount_lost_under_an_attached_device_is_refused_as_a_precondition_and_the_restage_grows_it() {
    let Some(mut rig) = rig("a_staging_mount_lost_under_an_attached_device_is_refused_as_a_precondition_and_the_restage_grows_it").await else { return };
    let (a, a_data, a_sum) = volume_a_published_with_data(&mut rig).await;
    let device = only_loop_device(&rig.image(&a));
    for mount in ["pods/a/vol", "staging-a"] {
        run("umount", &[&rig.path(mount)]);
    }
    rig.grow(&a, 640 * MIB).await;

    let expand = requests::node_expand(&a.to_string(), &rig.path("staging-a"), &rig.path("staging-a"), (640 * MIB) as i64, mount_capability("xfs"));
    let status = rig.node.node_expand_volume(expand).await.expect_err("expand of a staging path with nothing mounted");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{}", status.message());
    assert!(status.message().contains("is not mounted"), "{}", status.message());
    assert_eq!(only_loop_device(&rig.image(&a)), device, "the refused expand changed the attachment");

    stage_publish(&mut rig, &a, "staging-a", "pods/a/vol").await;
    let expand = requests::node_expand(&a.to_string(), &rig.path("pods/a/vol"), &rig.path("staging-a"), (640 * MIB) as i64, mount_capability("xfs"));
    assert_eq!(rig.node.node_expand_volume(expand).await.unwrap().into_inner().capacity_bytes as u64, 640 * MIB);
    let total = statvfs_total(&rig.dir.join("pods/a/vol")).unwrap();
    assert!(total > 640 * MIB * 85 / 100, "A grew to {total}");
    assert_eq!(host::sha256_file(&a_data).unwrap(), a_sum, "A's data intact");
    rig.node.node_unpublish_volume(requests::unpublish(&a.to_string(), &rig.path("pods/a/vol"))).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(&a.to_string(), &rig.path("staging-a"))).await.unwrap();
    assert!(host::loop_devices_for(&rig.image(&a)).is_empty(), "a loop device left");
}
