//! Loop devices left over a dead rbd-fuse, on real loop devices: a tmpfs
//! stands in for the FUSE mount and its lazy unmount for the end of the node
//! plugin's container, which leaves sysfs naming the file `/<image>`, as
//! kubelet's node-kill left `/swell-<hex>` on the host.

use std::path::{Path, PathBuf};
use std::process::Command;

use swell_storage::rbd_attach::MapOptions;
use swell_storage::{CephAccess, RbdVolume};

use super::{Cluster, FuseAttacher, names_image_file};
use crate::attach::Attacher;
use crate::system::{self, HostSystem, System};

#[test]
fn a_loop_device_behind_a_gone_mount_names_its_image_by_name() {
    let image = RbdVolume::for_name("ceph-a", "rbd", "pvc-1").expect("image");
    let file = Path::new("/var/lib/swell/rbd-fuse/ceph-a/rbd").join(&image.image).join(&image.image);
    assert!(names_image_file(&file.display().to_string(), &file));
    assert!(names_image_file(&format!("/{}", image.image), &file));
    assert!(names_image_file(&format!("/{} (deleted)", image.image), &file));
    let other = RbdVolume::for_name("ceph-a", "rbd", "pvc-2").expect("image");
    assert!(!names_image_file(&format!("/{}", other.image), &file));
    assert!(!names_image_file(&format!("/x/{}", image.image), &file));
    assert!(!names_image_file(&image.image, &file));
}

/// The attacher under a temp dir, and one image's loop device whose mount
/// is gone; the device is detached when dropped, if a test left it.
struct DeadMount {
    fuse: FuseAttacher,
    image: RbdVolume,
    device: PathBuf,
    _dir: tempfile::TempDir,
}

impl DeadMount {
    /// Each test its own image: a detach finds devices by the image's name.
    async fn new(test: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("swell-dead-fuse-").tempdir_in("/var/tmp").expect("temp dir");
        let access =
            CephAccess { cluster_id: "ceph-a".into(), ceph_conf: dir.path().join("none.conf"), keyring: dir.path().join("none.keyring"), user: "swell".into() };
        let fuse = FuseAttacher::new(Cluster::new(access, std::sync::Arc::new(HostSystem::default())), &dir.path().join("rbd-fuse/ceph-a")).expect("attacher");
        let image = RbdVolume::for_name("ceph-a", "rbd", test).expect("image");
        let mount_dir = fuse.mount_dir(&image);
        std::fs::create_dir_all(&mount_dir).expect("mount point");
        let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=16m", "swell-dead-fuse"]).arg(&mount_dir).status().expect("run mount");
        assert!(mounted.success(), "mount a tmpfs at {}", mount_dir.display());
        let file = fuse.image_file(&image);
        std::fs::File::create(&file).and_then(|f| f.set_len(8 << 20)).expect("image file");
        let device = HostSystem::default().loop_attach(&file).await.expect("attach a loop device");
        HostSystem::default().unmount(&mount_dir, true).await.expect("lazy unmount");
        let shown = system::loop_backing(&HostSystem::default(), &device).await.expect("sysfs");
        assert_eq!(shown, Some(format!("/{}", image.image)), "sysfs names the file from the gone mount's root");
        DeadMount { fuse, image, device, _dir: dir }
    }

    /// One for `test`, or `None` where it cannot run (see [`crate::fixture::root_or_skip`]).
    async fn for_test(test: &str) -> Option<Self> {
        if crate::fixture::root_or_skip(test) { Some(Self::new(test).await) } else { None }
    }

    async fn device_attached(&self) -> bool {
        system::loop_backing(&HostSystem::default(), &self.device).await.expect("sysfs").is_some_and(|b| b.contains(&self.image.image))
    }
}

impl Drop for DeadMount {
    fn drop(&mut self) {
        let backing = std::fs::read_to_string(Path::new("/sys/block").join(self.device.file_name().unwrap_or_default()).join("loop/backing_file"));
        if backing.is_ok_and(|b| b.contains(&self.image.image)) {
            let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        }
    }
}

#[tokio::test]
async fn unstage_detaches_the_recorded_loop_device_of_a_dead_rbd_fuse() {
    let Some(dead) = DeadMount::for_test("unstage_detaches_the_recorded_loop_device_of_a_dead_rbd_fuse").await else { return };
    dead.fuse.detach(&dead.image.id(), Some(&dead.device)).await.expect("detach");
    assert!(!dead.device_attached().await, "{} was left attached over the dead mount", dead.device.display());
}

#[tokio::test]
async fn unstage_without_a_record_finds_the_loop_device_of_a_dead_rbd_fuse() {
    let Some(dead) = DeadMount::for_test("unstage_without_a_record_finds_the_loop_device_of_a_dead_rbd_fuse").await else { return };
    dead.fuse.detach(&dead.image.id(), None).await.expect("detach");
    assert!(!dead.device_attached().await, "{} was left attached over the dead mount", dead.device.display());
}

#[tokio::test]
async fn a_restage_detaches_the_loop_device_of_a_dead_rbd_fuse_before_mounting_anew() {
    let Some(dead) = DeadMount::for_test("a_restage_detaches_the_loop_device_of_a_dead_rbd_fuse_before_mounting_anew").await else { return };
    // No cluster behind the config: the new rbd-fuse mount fails, after
    // the stale device went.
    let attached = dead.fuse.attach(&dead.image.id(), &MapOptions::default()).await;
    assert!(attached.is_err(), "attached without a cluster: {attached:?}");
    assert!(!dead.device_attached().await, "{} was left attached over the dead mount", dead.device.display());
}
