//! A target whose filesystem shut down, on a real loop device and xfs (as
//! one over a dead rbd-fuse ends): its stat fails with EIO, and the path
//! check must still let kubelet's unpublish and unstage through to clear it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::confined;
use crate::fixture::root_or_skip;

/// An xfs on a loop device mounted at `target`, lazily unmounted when
/// dropped (the loop device, attached with autoclear, goes with it).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(program: &str, args: &[&Path]) {
    let status = Command::new(program).args(args).status().unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

#[tokio::test]
async fn a_mount_point_whose_filesystem_shut_down_passes_the_path_check() {
    let test = "a_mount_point_whose_filesystem_shut_down_passes_the_path_check";
    if !root_or_skip(test) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("swell-confine-").tempdir_in("/var/tmp").expect("temp dir");
    let root = dir.path().join("kubelet");
    let target = root.join("pods/p/volumes/v/mount");
    std::fs::create_dir_all(&target).expect("target");
    let image = dir.path().join("fs.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(300 << 20)).expect("image");
    run("mkfs.xfs", &[Path::new("-q"), &image]);
    run("mount", &[Path::new("-o"), Path::new("loop"), &image, &target]);
    let _mounted = Mounted(target.clone());
    run("xfs_io", &[Path::new("-x"), Path::new("-c"), Path::new("shutdown"), &target]);
    let stat = std::fs::symlink_metadata(&target).expect_err("a shut down xfs fails its stat");
    assert_eq!(stat.raw_os_error(), Some(nix::libc::EIO), "{stat}");
    confined("target_path", &target, Some(&root)).await.expect("a dead mount point is still under the kubelet dir");
    // Below the dead mount nothing is a mount point: the stat's error stands.
    confined("target_path", &target.join("below"), Some(&root)).await.expect_err("a path inside a dead filesystem");
}
