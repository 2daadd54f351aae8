//! Staging and target paths come from the CO, and the node mounts over
//! them and removes them as root: each must lie under the kubelet
//! directory, and no directory on the way from it may be a symlink, which
//! would carry a mount or a removal anywhere on the host. Components that
//! do not exist yet are made by the node itself, as directories.

use std::path::{Component, Path};

use crate::error::NodeError;

/// Checks `path` (absolute, without `..`: [`crate::validate`]) against
/// `root`; `None` checks nothing.
pub(crate) async fn confined(field: &'static str, path: &Path, root: Option<&Path>) -> Result<(), NodeError> {
    let Some(root) = root else { return Ok(()) };
    let invalid = |reason: String| NodeError::InvalidArgument { field, reason };
    let Ok(below) = path.strip_prefix(root) else {
        return Err(invalid(format!("{} is not under the kubelet directory {}", path.display(), root.display())));
    };
    let mut at = root.to_path_buf();
    for part in below.components() {
        let Component::Normal(name) = part else { continue };
        at.push(name);
        match tokio::fs::symlink_metadata(&at).await {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(invalid(format!("{} is a symlink; Swell follows none on the way to a mount point", at.display())));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // A mount point whose filesystem is dead (xfs shut down after
            // its device failed: EIO; a FUSE without its daemon: ENOTCONN)
            // fails its stat, yet is no symlink: nothing mounts on one. Its
            // unpublish or unstage is what clears it.
            Err(_) if is_mount_point(&at).await => {}
            Err(e) => return Err(NodeError::io(format!("stat {}", at.display()), e)),
        }
    }
    Ok(())
}

/// Whether mountinfo lists a mount at `path` (read from /proc, which never
/// touches the mounted filesystem).
async fn is_mount_point(path: &Path) -> bool {
    let Ok(text) = tokio::fs::read_to_string("/proc/self/mountinfo").await else { return false };
    crate::mountinfo::find(&crate::mountinfo::parse(&text), path).is_some()
}

#[cfg(test)]
#[path = "confine_tests.rs"]
mod dead_mount_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paths_outside_the_kubelet_dir_or_through_a_symlink_are_invalid() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("kubelet");
        std::fs::create_dir_all(root.join("pods/p")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", root.join("pods/evil")).expect("symlink");
        assert!(confined("target_path", &root.join("pods/p/volumes/v"), Some(&root)).await.is_ok(), "a path still to be made");
        assert!(confined("target_path", Path::new("/etc/passwd"), None).await.is_ok(), "no root, no check");
        for bad in [Path::new("/etc/passwd").to_path_buf(), dir.path().join("kubelet-other/x"), root.join("pods/evil/passwd"), root.join("pods/evil")] {
            let err = confined("target_path", &bad, Some(&root)).await.expect_err("refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}: {err}", bad.display());
        }
    }
}
