//! The seam itself: the one mount(2) call shape, loop devices as sysfs
//! shows them, the [`System`] trait every host access goes through, and the
//! small helpers built on it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use swell_storage::command::{CommandError, Output};

use crate::error::NodeError;
use crate::mountinfo::MountEntry;

/// One mount(2) the node makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    /// A filesystem on a block device, with the CSI mount flags.
    Filesystem {
        /// The block device.
        device: PathBuf,
        /// Where it goes.
        target: PathBuf,
        /// The filesystem type, as mount(2) names it.
        fs_type: String,
        /// The mount flags as the CO gave them (`ro`, `noatime`, `nouuid`, ...).
        options: Vec<String>,
    },
    /// A bind mount of a directory or a device node.
    Bind {
        /// What is bound.
        source: PathBuf,
        /// Onto what.
        target: PathBuf,
    },
    /// Makes an existing bind mount read-only (a bind cannot be made read-only
    /// in one step).
    RemountReadOnly {
        /// The bind mount.
        target: PathBuf,
    },
}

/// A loop device and the file behind it, as sysfs reports it (the kernel
/// appends " (deleted)" once the file is unlinked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// sysfs `loop/backing_file`, without its trailing newline.
    pub backing_file: String,
}

/// What the node asks of the host. Every call that can hang carries a
/// deadline inside the implementation: a blocking syscall runs off the async
/// threads, and the caller stops waiting when the deadline passes.
#[async_trait::async_trait]
pub trait System: Send + Sync + std::fmt::Debug {
    /// mount(2).
    async fn mount(&self, call: MountCall) -> Result<(), NodeError>;

    /// umount2(2) of the top-most mount at `target`; `lazy` detaches it
    /// (MNT_DETACH), for a FUSE mount whose daemon is gone.
    async fn unmount(&self, target: &Path, lazy: bool) -> Result<(), NodeError>;

    /// Everything mounted now, in mountinfo order.
    async fn mounts(&self) -> Result<Vec<MountEntry>, NodeError>;

    /// Attaches `file` to a free loop device and returns the device.
    async fn loop_attach(&self, file: &Path) -> Result<PathBuf, NodeError>;

    /// Makes a loop device re-read its backing file's size (LOOP_SET_CAPACITY).
    async fn loop_refresh(&self, device: &Path) -> Result<(), NodeError>;

    /// Detaches a loop device (LOOP_CLR_FD).
    async fn loop_detach(&self, device: &Path) -> Result<(), NodeError>;

    /// Every attached loop device with its backing file, from sysfs only: no
    /// backing file is touched, so a hung FUSE mount cannot hang the listing.
    async fn loop_devices(&self) -> Result<Vec<LoopDevice>, NodeError>;

    /// A block device's size, from sysfs (no open of the device).
    async fn device_size(&self, device: &Path) -> Result<u64, NodeError>;

    /// A block device's `major:minor`, as mountinfo shows it.
    async fn device_numbers(&self, device: &Path) -> Result<String, NodeError>;

    /// The bytes the mounted XFS at `mount_point` spans: its data section,
    /// from its own geometry (the ioctl `xfs_spaceman -c info` makes).
    async fn xfs_data_bytes(&self, mount_point: &Path) -> Result<u64, NodeError>;

    /// The bytes the mounted btrfs at `mount_point` spans: the sum of its
    /// devices' sizes as it records them (what `btrfs filesystem show`
    /// prints for a mounted filesystem).
    async fn btrfs_device_bytes(&self, mount_point: &Path) -> Result<u64, NodeError>;

    /// Runs an external program (mkfs, blkid, xfs_growfs, rbd, rbd-fuse...)
    /// with no shell, killing it at `deadline`.
    async fn run(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output, CommandError>;

    /// Runs a program with `secret` on its stdin (a key for cryptsetup),
    /// never in its arguments.
    async fn run_with_secret(&self, program: &str, args: Vec<OsString>, secret: &[u8], deadline: Duration) -> Result<Output, CommandError>;

    /// Runs a program that leaves a daemon serving a device (`rbd-nbd
    /// map`), in a process group of its own: a kill of the node's group (a
    /// supervisor stopping it) must not take the volumes' I/O with it.
    async fn run_leaving_daemon(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output, CommandError> {
        self.run(program, args, deadline).await
    }
}

/// The loop device `device` reads, if attached (sysfs `backing_file`).
pub(crate) async fn loop_backing(sys: &dyn System, device: &Path) -> Result<Option<String>, NodeError> {
    let device = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_owned());
    Ok(sys.loop_devices().await?.into_iter().find(|l| l.device == device).map(|l| l.backing_file))
}

/// The loop devices whose backing file is `file` (an absolute path, also
/// after it was deleted).
pub(crate) async fn loop_devices_backing(sys: &dyn System, file: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let mut devices: Vec<PathBuf> = sys.loop_devices().await?.into_iter().filter(|l| same_file(&l.backing_file, file)).map(|l| l.device).collect();
    devices.sort();
    Ok(devices)
}

/// Whether a sysfs `backing_file` value names `file`.
pub(crate) fn same_file(backing: &str, file: &Path) -> bool {
    Path::new(backing.strip_suffix(" (deleted)").unwrap_or(backing)) == file
}

/// Whether a sysfs `backing_file` value names `file`: its path, or a
/// trailing part of it, at least `min_tail` components long, that names
/// nothing here. The kernel prints the latter for a loop device attached
/// through a mount that has since left every mount namespace (an earlier
/// node plugin container's): the path from that mount's root.
pub(crate) fn names_file(backing: &str, file: &Path, min_tail: usize) -> bool {
    if same_file(backing, file) {
        return true;
    }
    let shown = Path::new(backing.strip_suffix(" (deleted)").unwrap_or(backing));
    let Ok(tail) = shown.strip_prefix("/") else { return false };
    tail.components().count() >= min_tail && file.ends_with(tail) && !shown.exists()
}

/// `--`, before every path or name a program is given that came from a
/// request or from what Swell made for one: a device or mount point named
/// `-V` would otherwise be an option, and e.g. `mkfs.xfs -q -V` prints its
/// version and exits 0 having formatted nothing.
pub(crate) const END_OF_OPTIONS: &str = "--";

/// Arguments as the command runner takes them.
pub(crate) fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    items.into_iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_backing_file_still_names_its_file() {
        let file = Path::new("/var/lib/swell/rbd-fuse/c/rbd/img");
        assert!(same_file("/var/lib/swell/rbd-fuse/c/rbd/img", file));
        assert!(same_file("/var/lib/swell/rbd-fuse/c/rbd/img (deleted)", file));
        assert!(!same_file("/var/lib/swell/rbd-fuse/c/rbd/img2", file));
    }
}
