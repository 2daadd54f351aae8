//! What is mounted at a path (the kernel's mountinfo, read through the
//! system seam), whether that mount is a given volume's, and unmounting
//! everything stacked there. Callers check
//! before they act, so every step is idempotent.

use std::path::{Path, PathBuf};

use crate::error::NodeError;
use crate::mountinfo::{self, MountEntry};
use crate::staging::{Access, StagingRecord};
use crate::system::System;

/// How many stacked mounts an unmount loop peels off before giving up.
const MAX_STACKED: usize = 8;

/// Unmounts everything stacked at `target`; nothing mounted is success.
pub(crate) async fn unmount_all(sys: &dyn System, target: &Path) -> Result<(), NodeError> {
    for _ in 0..MAX_STACKED {
        if mounted_at(sys, target).await?.is_none() {
            return Ok(());
        }
        sys.unmount(target, false).await?;
    }
    Err(NodeError::StillMounted { path: target.to_owned(), unmounts: MAX_STACKED })
}

/// Where a volume's mounts are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// Its staging path: its filesystem on its device.
    Staging,
    /// A target path: a bind of its staged filesystem or device node.
    Target,
}

/// Unmounts the mounts stacked at `path` as long as they are the volume's
/// (`record`); one that is not is left, and answered FAILED_PRECONDITION:
/// the node unmounts only what it made. Without a record (lost with the
/// node's state) every mount there goes, as before records.
pub(crate) async fn unmount_volume(sys: &dyn System, record: Option<&StagingRecord>, place: Place, path: &Path) -> Result<(), NodeError> {
    let Some(record) = record else { return unmount_all(sys, path).await };
    for _ in 0..MAX_STACKED {
        let Some(top) = mounted_at(sys, path).await? else { return Ok(()) };
        let ours = match (place, &record.access) {
            (Place::Target, _) => holds_volume(sys, record, &top).await?,
            (Place::Staging, Access::Mount { .. }) => {
                top.source == record.data_device().to_string_lossy() || top.major_minor == sys.device_numbers(record.data_device()).await?
            }
            // A block volume's staging path holds no mount of Swell's.
            (Place::Staging, Access::Block) => false,
        };
        if !ours {
            let found = format!("a {} mount of {}", top.fs_type, top.source);
            return Err(NodeError::NotOurs { volume: record.volume_id.clone(), path: path.to_owned(), found });
        }
        sys.unmount(path, false).await?;
    }
    Err(NodeError::StillMounted { path: path.to_owned(), unmounts: MAX_STACKED })
}

/// The top-most mount at `path`, if any.
pub(crate) async fn mounted_at(sys: &dyn System, path: &Path) -> Result<Option<MountEntry>, NodeError> {
    let path = normalize(path);
    let entries = sys.mounts().await?;
    Ok(mountinfo::find(&entries, &path).cloned())
}

/// Whether a mount is this staged volume's: its device node bound there
/// (block), or its staged filesystem (the same `major:minor`).
pub(crate) async fn holds_volume(sys: &dyn System, record: &StagingRecord, mount: &MountEntry) -> Result<bool, NodeError> {
    match &record.access {
        Access::Block => {
            let device = std::fs::canonicalize(record.data_device()).unwrap_or_else(|_| record.data_device().to_owned());
            Ok(mount.root.file_name().is_some() && mount.root.file_name() == device.file_name())
        }
        Access::Mount { .. } => {
            let staged = match mounted_at(sys, &record.staging_path).await? {
                Some(entry) => entry.major_minor,
                None => sys.device_numbers(record.data_device()).await?,
            };
            Ok(mount.major_minor == staged)
        }
    }
}

/// mountinfo shows resolved paths; resolve symlinks in the parent (not the
/// path itself: a stale mount at the leaf must not hang the lookup).
fn normalize(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent).map(|p| p.join(name)).unwrap_or_else(|_| path.to_owned()),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::MountCall;
    use crate::system::fake::{Call, FakeSystem};

    #[tokio::test]
    async fn unmounts_every_stacked_mount_and_nothing_is_success() {
        let sys = FakeSystem::default();
        let dir = tempfile::tempdir().expect("temp dir");
        let target = std::fs::canonicalize(dir.path()).expect("resolve").join("vol");
        unmount_all(&sys, &target).await.expect("nothing mounted");
        assert!(sys.calls().is_empty(), "no unmount of what is not mounted");
        sys.add_foreign_mount(&target, "tmpfs", "tmpfs");
        sys.mount(MountCall::Bind { source: "/dev/loop3".into(), target: target.clone() }).await.expect("bind");
        sys.clear_calls();
        unmount_all(&sys, &target).await.expect("unmount");
        assert_eq!(sys.calls(), vec![Call::Unmount(target.clone()), Call::Unmount(target.clone())]);
        assert!(mounted_at(&sys, &target).await.expect("read").is_none());
    }

    #[tokio::test]
    async fn a_mount_that_will_not_go_is_an_error_not_a_loop() {
        let sys = FakeSystem::default();
        let target = PathBuf::from("/nonexistent-parent/vol");
        for _ in 0..MAX_STACKED + 1 {
            sys.add_foreign_mount(&target, "tmpfs", "tmpfs");
        }
        let err = unmount_all(&sys, &target).await.expect_err("still mounted");
        assert!(err.to_string().contains("still mounted"), "{err}");
        sys.fail("unmount", "EBUSY");
        assert!(unmount_all(&sys, &target).await.is_err());
    }
}
