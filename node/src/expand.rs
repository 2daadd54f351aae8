//! NodeExpandVolume: make the device see the backing object's new size,
//! then grow the filesystem online and check that it really grew. Works from
//! the volume id and the staging record alone (csi-sanity sends neither a
//! staging path nor a capability).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::NodeContext;
use crate::attach::Attacher;
use crate::error::NodeError;
use crate::filesystem::fills_device;
use crate::mount;
use crate::staging::{Access, StagingRecord};
use crate::system::System;
use crate::validate::Expand;
use swell_storage::VolumeId;

/// How long the device may take to report the backing object's size.
const REFRESH_DEADLINE: Duration = Duration::from_secs(10);
const REFRESH_POLL: Duration = Duration::from_millis(50);

/// Expands a staged volume; returns the capacity it now has.
pub(crate) async fn expand(ctx: &NodeContext, req: Expand) -> Result<u64, NodeError> {
    let volume = req.volume.to_string();
    // Every mode reads the backing size the same way; the one staged is
    // known once the record is read.
    if ctx.attachers.for_volume(&req.volume, None)?.backing_size(&req.volume).await?.is_none() {
        return Err(NodeError::VolumeNotFound { volume, reason: "its backing object does not exist".into() });
    }
    if let Err(e) = tokio::fs::symlink_metadata(&req.volume_path).await {
        return Err(NodeError::stat_failed(req.volume_path, e));
    }
    let _guard = ctx.lock(&req.volume).await?;
    let Some(record) = ctx.staging.read(&req.volume).await? else {
        return Err(NodeError::NotStaged { volume, path: req.volume_path });
    };
    let sys = ctx.sys.as_ref();
    // Only this volume's own mounts are grown: its staging path, or a
    // publish of it. Any other path (another volume's, a plain directory)
    // would have the wrong filesystem grown or none at all.
    if req.volume_path != record.staging_path {
        let ours = match mount::mounted_at(sys, &req.volume_path).await? {
            Some(entry) => mount::holds_volume(sys, &record, &entry).await?,
            None => false,
        };
        if !ours {
            return Err(NodeError::NotAtPath { volume, path: req.volume_path });
        }
    }
    let grown = grow_staged(ctx, &req.volume, &record, req.required_bytes).await?;
    Ok(grown.device_bytes)
}

/// What [`grow_staged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grown {
    /// The device's size now.
    pub device_bytes: u64,
    /// Whether the filesystem had to be grown (false: it already filled
    /// the device, or the volume is raw block).
    pub filesystem_grown: bool,
}

/// Grows a staged volume to its backing object's size: refreshes the
/// device, grows the filesystem online if it is short, and checks it fills
/// the device. The one path for kubelet's NodeExpandVolume and the
/// background grower; the caller holds the volume's lock.
pub(crate) async fn grow_staged(ctx: &NodeContext, id: &VolumeId, record: &StagingRecord, required_bytes: u64) -> Result<Grown, NodeError> {
    let volume = id.to_string();
    let attacher = ctx.attachers.for_volume(id, record.rbd_mode)?;
    let sys = ctx.sys.as_ref();
    if let Some(problem) = attacher.condition(id, &record.device).await? {
        return Err(NodeError::AttachmentUnhealthy { volume, problem });
    }
    attacher.refresh_capacity(id, &record.device).await?;
    let (backing_bytes, device_bytes) = wait_for_backing_size(sys, attacher, id, &record.device).await?;
    check_required(&volume, required_bytes, backing_bytes)?;
    // An encrypted volume's clear-text mapping is grown to its device, and
    // then is what the filesystem must fill.
    let data_bytes = match &record.mapper {
        Some(mapper) => {
            crate::crypt::luks::resize(sys, id, &crate::crypt::luks::mapper_name(id)).await?;
            sys.device_size(mapper).await?
        }
        None => device_bytes,
    };
    let Access::Mount { fs_type, .. } = record.access else {
        return Ok(Grown { device_bytes, filesystem_grown: false });
    };
    let staging = &record.staging_path;
    if mount::mounted_at(sys, staging).await?.is_none() {
        return Err(NodeError::StagingNotMounted { volume, path: staging.clone() });
    }
    let fs = fs_type.ops();
    // Grow only when short, so a repeated call (or an ext4 grown offline)
    // succeeds without touching the filesystem.
    let data = record.data_device();
    let filesystem_grown = !fills_device(fs.size(sys, data, staging).await?, data_bytes);
    if filesystem_grown {
        ctx.metrics.time_grow(fs_type, fs.grow_online(sys, &volume, data, staging)).await?;
    }
    let fs_bytes = fs.size(sys, data, staging).await?;
    verify_grown(&volume, fs_bytes, data_bytes)?;
    tracing::info!(volume = %id, device_bytes, fs_bytes, filesystem_grown, "expanded");
    Ok(Grown { device_bytes, filesystem_grown })
}

/// Polls until the device reports the backing object's size: a refresh that
/// reads a stale (cached) size would otherwise be a silent half-expansion.
/// Returns the backing object's size and the device's: its whole sectors,
/// less when the size is not a multiple of 512.
async fn wait_for_backing_size(sys: &dyn System, attacher: &dyn Attacher, volume: &VolumeId, device: &Path) -> Result<(u64, u64), NodeError> {
    let started = Instant::now();
    loop {
        let backing = attacher.backing_size(volume).await?.unwrap_or(0);
        let expected = backing / 512 * 512; // block devices count whole sectors
        let actual = sys.device_size(device).await?;
        if actual == expected {
            return Ok((backing, actual));
        }
        if started.elapsed() >= REFRESH_DEADLINE {
            return Err(NodeError::RefreshTimeout { volume: volume.to_string(), device: device.to_owned(), expected, actual, after: REFRESH_DEADLINE });
        }
        tokio::time::sleep(REFRESH_POLL).await;
    }
}

/// The backend must hold what was asked for; if it is smaller, no amount of
/// retrying on this node helps (OUT_OF_RANGE, see `error`). Compared with
/// the backing object, not the device: a size granted that is not a
/// multiple of 512 shows as its whole sectors, and would never be met.
fn check_required(volume: &str, required_bytes: u64, backing_bytes: u64) -> Result<(), NodeError> {
    if required_bytes > backing_bytes {
        return Err(NodeError::BackendTooSmall { volume: volume.to_owned(), backing_bytes, required_bytes });
    }
    Ok(())
}

/// Success is only claimed once the filesystem says it fills the device.
fn verify_grown(volume: &str, fs_bytes: u64, device_bytes: u64) -> Result<(), NodeError> {
    if !fills_device(fs_bytes, device_bytes) {
        return Err(NodeError::GrowIncomplete { volume: volume.to_owned(), fs_bytes, device_bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    use swell_storage::units::GIB;

    #[test]
    fn a_backend_smaller_than_required_is_out_of_range() {
        assert!(check_required("v", 0, GIB).is_ok(), "no requirement");
        assert!(check_required("v", 2 * GIB, 2 * GIB).is_ok());
        let err = check_required("v", 2 * GIB, GIB).expect_err("too small");
        assert_eq!(err.code(), Code::OutOfRange);
        assert!(err.to_string().contains("smaller than the required"), "{err}");
    }

    #[test]
    fn an_unverified_grow_is_never_success() {
        assert!(verify_grown("v", 2 * GIB - 4096, 2 * GIB).is_ok());
        let err = verify_grown("v", GIB, 2 * GIB).expect_err("not grown");
        assert_eq!(err.code(), Code::Internal);
    }
}

#[cfg(test)]
#[path = "expand_tests.rs"]
mod decisions;
