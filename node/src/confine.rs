//! Staging and target paths come from the CO, and the node mounts over
//! them and removes them as root: each must lie under the kubelet
//! directory, and no directory on the way from it may be a symlink, which
//! would carry a mount or a removal anywhere on the host. Components that
//! do not exist yet are made by the node itself, as directories.
//!
//! [`confined`] answers a request early with INVALID_ARGUMENT; the acts
//! themselves go through file descriptors opened with openat2
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` from the kubelet directory), so
//! a symlink swapped in after the check is refused by the kernel (ELOOP)
//! instead of followed.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use crate::error::NodeError;

/// Checks `path` against `root`; `None` checks nothing. A relative path or
/// one with `..` is refused here too: not every RPC's validation rules them
/// out (NodeGetVolumeStats answers NOT_FOUND for a relative path when
/// unconfined), and `..` would climb out after the prefix check.
pub(crate) async fn confined(field: &'static str, path: &Path, root: Option<&Path>) -> Result<(), NodeError> {
    let Some(root) = root else { return Ok(()) };
    let invalid = |reason: String| NodeError::InvalidArgument { field, reason };
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!("{} is not an absolute path without '..'", path.display())));
    }
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

/// Opens `path` (with `O_CLOEXEC` added): when it lies under `root`,
/// through openat2 from `root`, failing with ELOOP at any symlink and EXDEV
/// at any escape; any other path as given (the node's own directories).
pub(crate) fn open(root: Option<&Path>, path: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    let flags = flags | OFlag::O_CLOEXEC;
    let Some((root, below)) = root.and_then(|root| path.strip_prefix(root).ok().map(|below| (root, below))) else {
        return Ok(nix::fcntl::open(path, flags, Mode::empty())?);
    };
    let start = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let below = if below.as_os_str().is_empty() { Path::new(".") } else { below };
    let how = OpenHow::new().flags(flags).resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    Ok(nix::fcntl::openat2(&start, below, how)?)
}

/// The path through which a syscall that takes only a path reaches what
/// `fd` holds, without resolving any name again.
pub(crate) fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The last component of a path, held as its directory's descriptor and
/// its name, so that acting on it resolves nothing on the way again.
#[derive(Debug)]
pub(crate) struct Leaf {
    dir: OwnedFd,
    name: OsString,
}

impl Leaf {
    /// `path`'s directory, opened as [`open`] does.
    pub(crate) fn of(root: Option<&Path>, path: &Path) -> io::Result<Leaf> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a path without a last component"));
        };
        Ok(Leaf { dir: open(root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?, name: name.to_owned() })
    }

    /// The leaf through its directory's descriptor, for path-only syscalls
    /// (`umount2` with `UMOUNT_NOFOLLOW`).
    pub(crate) fn path(&self) -> PathBuf {
        fd_path(&self.dir).join(&self.name)
    }

    /// lstat of the leaf; `None` when there is nothing.
    pub(crate) fn stat(&self) -> io::Result<Option<FileStat>> {
        match nix::sys::stat::fstatat(&self.dir, self.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the leaf a directory; one already there is fine.
    fn make_dir(&self) -> io::Result<()> {
        match nix::sys::stat::mkdirat(&self.dir, self.name.as_os_str(), Mode::from_bits_truncate(0o777)) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the leaf an empty file unless a file is there; a symlink is
    /// ELOOP, a FIFO does not block the node.
    pub(crate) fn make_file(&self) -> io::Result<()> {
        let flags = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        nix::fcntl::openat(&self.dir, self.name.as_os_str(), flags, Mode::from_bits_truncate(0o666)).map(drop).map_err(Into::into)
    }

    /// Removes the leaf, an empty directory or a file, as `stat` found it.
    pub(crate) fn remove(&self, stat: &FileStat) -> io::Result<()> {
        let dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        let flag = if dir { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
        nix::unistd::unlinkat(&self.dir, self.name.as_os_str(), flag).map_err(Into::into)
    }
}

/// `create_dir_all` that makes each missing directory through its parent's
/// descriptor, as [`Leaf`] does.
pub(crate) fn make_dirs(root: Option<&Path>, path: &Path) -> io::Result<()> {
    match open(root, path, OFlag::O_PATH | OFlag::O_DIRECTORY) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent() {
        make_dirs(root, parent)?;
    }
    Leaf::of(root, path)?.make_dir()
}

/// The node's error for `step` on a request's path: a symlink met (ELOOP)
/// or an escape (EXDEV) is the caller's INVALID_ARGUMENT.
pub(crate) fn error(field: &'static str, step: String, e: io::Error) -> NodeError {
    match e.raw_os_error() {
        Some(code) if code == Errno::ELOOP as i32 || code == Errno::EXDEV as i32 => {
            NodeError::InvalidArgument { field, reason: format!("{step}: a symlink on the way, and Swell follows none ({e})") }
        }
        _ => NodeError::io(step, e),
    }
}

/// Makes `path` and its missing parents as directories, beneath `root`.
pub(crate) async fn create_dir(root: Option<PathBuf>, field: &'static str, path: &Path) -> Result<(), NodeError> {
    let (path, step) = (path.to_owned(), format!("create {}", path.display()));
    off_thread(step.clone(), move || make_dirs(root.as_deref(), &path).map_err(|e| error(field, step, e))).await
}

/// Makes the empty file a block volume is bound onto, and its parents.
pub(crate) async fn create_file(root: Option<PathBuf>, path: &Path) -> Result<(), NodeError> {
    let (path, step) = (path.to_owned(), format!("create {}", path.display()));
    let work = move || {
        if let Some(parent) = path.parent() {
            make_dirs(root.as_deref(), parent)?;
        }
        Leaf::of(root.as_deref(), &path)?.make_file()
    };
    off_thread(step.clone(), move || work().map_err(|e| error("target_path", step, e))).await
}

/// Runs path work on the blocking pool: a walk can wait on a slow filesystem.
pub(crate) async fn off_thread<T: Send + 'static>(step: String, work: impl FnOnce() -> Result<T, NodeError> + Send + 'static) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| NodeError::WorkerFailed { step, reason: e.to_string() })?
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
        let (relative, climbing) = (PathBuf::from("pods/p"), root.join("pods/../../etc"));
        for bad in [
            Path::new("/etc/passwd").to_path_buf(),
            dir.path().join("kubelet-other/x"),
            root.join("pods/evil/passwd"),
            root.join("pods/evil"),
            relative,
            climbing,
        ] {
            let err = confined("target_path", &bad, Some(&root)).await.expect_err("refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}: {err}", bad.display());
        }
    }
}
