//! NodeGetVolumeStats: usage from statvfs for a mounted volume, the device
//! size for a block volume, and the volume's condition: abnormal when its
//! device is detached, its backing object is gone, or its path is no longer
//! a mount point.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::NodeContext;
use crate::error::NodeError;
use crate::mount;
use crate::staging::Access;
use crate::validate::Stats;

/// statvfs on a hung mount blocks; the RPC must not.
const STATVFS_DEADLINE: Duration = Duration::from_secs(10);

/// What the volume uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    /// A filesystem, in bytes and inodes.
    Filesystem { bytes: Counts, inodes: Counts },
    /// A raw device: only its size is known.
    Block { total_bytes: u64 },
}

/// Total, available and used amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub total: u64,
    pub available: u64,
    pub used: u64,
}

/// Usage plus the abnormal condition, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeStats {
    pub usage: Usage,
    pub abnormal: Option<String>,
}

/// Reads a volume's stats at `volume_path`.
pub(crate) async fn stats(ctx: &NodeContext, req: Stats) -> Result<VolumeStats, NodeError> {
    ctx.attachers.for_volume(&req.volume, None)?;
    if let Err(e) = tokio::fs::symlink_metadata(&req.volume_path).await {
        return Err(NodeError::stat_failed(req.volume_path, e));
    }
    let record = ctx.staging.read(&req.volume).await?;
    let attacher = ctx.attachers.for_volume(&req.volume, record.as_ref().and_then(|r| r.rbd_mode))?;
    let backing = attacher.backing_size(&req.volume).await?;
    if record.is_none() && backing.is_none() {
        return Err(NodeError::VolumeNotFound { volume: req.volume.to_string(), reason: "not staged here and no backing object".into() });
    }
    let Some(record) = record else {
        let usage = filesystem_usage(req.volume_path).await?;
        return Ok(VolumeStats { usage, abnormal: Some(format!("volume {} is not staged on this node", req.volume)) });
    };
    let mut abnormal = attacher.condition(&req.volume, &record.device).await?;
    let usage = match record.access {
        Access::Block => Usage::Block { total_bytes: ctx.sys.device_size(record.data_device()).await.unwrap_or(0) },
        Access::Mount { .. } => {
            if abnormal.is_none() && mount::mounted_at(ctx.sys.as_ref(), &req.volume_path).await?.is_none() {
                abnormal = Some(format!("{} is no longer a mount point", req.volume_path.display()));
            }
            filesystem_usage(req.volume_path).await?
        }
    };
    Ok(VolumeStats { usage, abnormal })
}

pub(crate) async fn filesystem_usage(path: PathBuf) -> Result<Usage, NodeError> {
    let step = format!("statvfs {}", path.display());
    let task = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(Path::new(&path)));
    let stat = match tokio::time::timeout(STATVFS_DEADLINE, task).await {
        Err(_) => return Err(NodeError::Timeout { step, after: STATVFS_DEADLINE }),
        Ok(Err(join)) => return Err(NodeError::WorkerFailed { step, reason: join.to_string() }),
        Ok(Ok(result)) => result.map_err(|e| NodeError::io(&step, std::io::Error::from(e)))?,
    };
    Ok(usage_of(stat.blocks(), stat.blocks_free(), stat.blocks_available(), stat.fragment_size(), stat.files(), stat.files_free()))
}

/// Pure arithmetic over statvfs fields; saturating so odd values never panic.
fn usage_of(blocks: u64, free: u64, available: u64, fragment: u64, files: u64, files_free: u64) -> Usage {
    let bytes = |n: u64| n.saturating_mul(fragment);
    Usage::Filesystem {
        bytes: Counts { total: bytes(blocks), available: bytes(available), used: bytes(blocks.saturating_sub(free)) },
        inodes: Counts { total: files, available: files_free, used: files.saturating_sub(files_free) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_computed_in_bytes_and_never_underflows() {
        let usage = usage_of(1000, 600, 550, 4096, 100, 90);
        let expected = Usage::Filesystem {
            bytes: Counts { total: 4_096_000, available: 550 * 4096, used: 400 * 4096 },
            inodes: Counts { total: 100, available: 90, used: 10 },
        };
        assert_eq!(usage, expected);
        assert!(matches!(usage_of(1, 5, 5, 4096, 0, 3), Usage::Filesystem { bytes: Counts { used: 0, .. }, .. }));
    }
}
