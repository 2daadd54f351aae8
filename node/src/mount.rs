//! Mounting and unmounting through `mount`/`umount` (never a shell), and the
//! question "what is mounted at this path", answered from the kernel's
//! mountinfo. Every call is idempotent-friendly: callers check first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use swell_storage::command;

use crate::error::NodeError;
use crate::mountinfo::{self, MountEntry};

/// Mount calls may hang on a sick device; they get a deadline.
const MOUNT_DEADLINE: Duration = Duration::from_secs(30);
/// How many stacked mounts an unmount loop peels off before giving up.
const MAX_STACKED: usize = 8;

/// Mounts `device` with `fs_type` at `target`, with `flags` as `-o`.
pub async fn mount(device: &Path, target: &Path, fs_type: &str, flags: &[String]) -> Result<(), NodeError> {
    let mut args = vec!["-t".into(), fs_type.into()];
    if !flags.is_empty() {
        args.push("-o".into());
        args.push(flags.join(","));
    }
    args.push(device.display().to_string());
    args.push(target.display().to_string());
    command::run("mount", &args, MOUNT_DEADLINE)
        .await
        .map(drop)
        .map_err(|e| NodeError::command(format!("mount {} at {}", device.display(), target.display()), e))
}

/// Bind-mounts `source` (a directory or a device node) onto `target`.
pub async fn bind(source: &Path, target: &Path) -> Result<(), NodeError> {
    command::run("mount", [Path::new("--bind"), source, target], MOUNT_DEADLINE)
        .await
        .map(drop)
        .map_err(|e| NodeError::command(format!("bind {} onto {}", source.display(), target.display()), e))
}

/// Makes a bind mount read-only (a bind cannot be made ro in one step).
pub async fn remount_read_only(target: &Path) -> Result<(), NodeError> {
    command::run("mount", [Path::new("-o"), Path::new("remount,bind,ro"), target], MOUNT_DEADLINE)
        .await
        .map(drop)
        .map_err(|e| NodeError::command(format!("remount {} read-only", target.display()), e))
}

/// Unmounts everything stacked at `target`; nothing mounted is success.
pub async fn unmount_all(target: &Path) -> Result<(), NodeError> {
    for _ in 0..MAX_STACKED {
        if mounted_at(target).await?.is_none() {
            return Ok(());
        }
        command::run("umount", [target], MOUNT_DEADLINE).await.map_err(|e| NodeError::command(format!("unmount {}", target.display()), e))?;
    }
    Err(NodeError::Internal(format!("{} still mounted after {MAX_STACKED} unmounts", target.display())))
}

/// The top-most mount at `path`, if any.
pub async fn mounted_at(path: &Path) -> Result<Option<MountEntry>, NodeError> {
    let path = normalize(path);
    let entries = read_mountinfo().await?;
    Ok(mountinfo::find(&entries, &path).cloned())
}

/// All current mounts.
pub async fn read_mountinfo() -> Result<Vec<MountEntry>, NodeError> {
    let text = tokio::fs::read_to_string("/proc/self/mountinfo").await.map_err(|e| NodeError::io("read /proc/self/mountinfo", e))?;
    Ok(mountinfo::parse(&text))
}

/// mountinfo shows resolved paths; resolve symlinks in the parent (not the
/// path itself: a stale mount at the leaf must not hang the lookup).
fn normalize(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent).map(|p| p.join(name)).unwrap_or_else(|_| path.to_owned()),
        _ => path.to_owned(),
    }
}
