//! NodeStageVolume and NodeUnstageVolume: attach the volume, make sure it
//! holds the requested filesystem (formatting only a blank device), grow a
//! filesystem that is smaller than its device, mount it at the staging path
//! and record all of it. Every step checks before acting, so a retried or
//! repeated stage (also after a node reboot) converges instead of failing.

use std::path::{Path, PathBuf};

use crate::NodeContext;
use crate::crypt::{self, key::DataKey};
use crate::error::NodeError;
use crate::filesystem::options::DEFAULT_OPTIONS;
use crate::filesystem::{FsType, fills_device};
use crate::format::{FormatLog, Found, Layer};
use crate::mount;
use crate::staging::{Access, StagingRecord};
use crate::system::{MountCall, System};
use crate::validate::{Stage, Unstage};
use swell_storage::VolumeId;
use swell_storage::command::CommandError;

/// Stages a volume; idempotent for the same path and capability.
pub(crate) async fn stage(ctx: &NodeContext, req: Stage) -> Result<(), NodeError> {
    let _guard = ctx.lock(&req.volume).await?;
    let volume = req.volume.to_string();
    let rbd_mode = ctx.attachers.stage_mode(&req.volume, req.attach.mounter);
    let attacher = ctx.attachers.for_volume(&req.volume, rbd_mode)?;
    if attacher.backing_size(&req.volume).await?.is_none() {
        return Err(NodeError::VolumeNotFound { volume, reason: "its backing object does not exist".into() });
    }
    if let Some(existing) = ctx.staging.read(&req.volume).await? {
        if existing.staging_path != req.staging_path {
            let reason = format!("already staged at {}", existing.staging_path.display());
            return Err(NodeError::Conflict { volume, reason });
        }
        if existing.access != req.access {
            return Err(NodeError::Conflict { volume, reason: format!("already staged as {:?}", existing.access) });
        }
        if ctx.attachers.stage_mode(&req.volume, existing.rbd_mode) != rbd_mode {
            let staged = existing.rbd_mode.map_or_else(|| "the detected mode".to_owned(), |m| m.to_string());
            return Err(NodeError::Conflict { volume, reason: format!("already attached with {staged}") });
        }
    }
    // An encrypted volume's key is unwrapped before anything is attached:
    // a wrong or missing secret leaves the volume untouched.
    let data_key = match &req.kek {
        Some(kek) => Some(crypt::data_key(ctx.attachers.key_store(&req.volume)?, &req.volume, kek, req.key_from.as_ref(), !req.read_only).await?),
        None => None,
    };
    let device = attacher.attach(&req.volume, &req.attach.map_options).await?;
    let mapper = match stage_attached(ctx, &req, &device, data_key.as_ref()).await {
        Ok(mapper) => mapper,
        Err(error) => {
            // Leave nothing attached when nothing got mounted, unless a
            // step ran out of time and may still be running: a mount on its
            // thread, or a program SIGKILL has not ended yet (blocked in the
            // kernel); detaching under it would act after the caller was
            // answered. The next stage or unstage converges.
            let still_running = matches!(error, NodeError::Timeout { .. } | NodeError::Command { source: CommandError::Timeout { reaped: false, .. }, .. });
            if !still_running && matches!(mount::mounted_at(ctx.sys.as_ref(), &req.staging_path).await, Ok(None)) {
                let closed = match data_key {
                    Some(_) => crypt::luks::close(ctx.sys.as_ref(), &req.volume, &crypt::luks::mapper_name(&req.volume)).await,
                    None => Ok(()),
                };
                if let Err(e) = closed.and(attacher.detach(&req.volume, Some(&device)).await) {
                    tracing::warn!(error = %e.full_message(), "detach after a failed stage");
                }
            }
            return Err(error);
        }
    };
    let record = StagingRecord { volume_id: volume, device: device.clone(), staging_path: req.staging_path.clone(), access: req.access, rbd_mode, mapper };
    ctx.staging.write(&req.volume, &record).await?;
    tracing::info!(device = %device.display(), mode = ?rbd_mode, encrypted = data_key.is_some(), "staged");
    Ok(())
}

/// What follows the attach: an encrypted volume's LUKS2 mapping opened
/// (returned), then the filesystem made and mounted for a mount volume.
async fn stage_attached(ctx: &NodeContext, req: &Stage, device: &Path, data_key: Option<&DataKey>) -> Result<Option<PathBuf>, NodeError> {
    let sys = ctx.sys.as_ref();
    let mapper = match data_key {
        Some(key) => Some(crypt::open(sys, &ctx.formats, &req.volume, device, key, req.read_only).await?),
        None => None,
    };
    if let Access::Mount { fs_type, mount_flags } = &req.access {
        let data = mapper.as_deref().unwrap_or(device);
        crate::confine::create_dir(ctx.config.kubelet_dir.clone(), "staging_target_path", &req.staging_path).await?;
        let target = Target { device: data, staging: &req.staging_path, fs_type: *fs_type, flags: mount_flags, read_only: req.read_only };
        stage_filesystem(sys, &ctx.formats, &req.volume, &target).await?;
    }
    Ok(mapper)
}

/// Where and how a filesystem is staged.
struct Target<'a> {
    device: &'a Path,
    staging: &'a Path,
    fs_type: FsType,
    flags: &'a [String],
    read_only: bool,
}

async fn stage_filesystem(sys: &dyn System, formats: &FormatLog, volume_id: &VolumeId, target: &Target<'_>) -> Result<(), NodeError> {
    let Target { device, staging, fs_type, flags, read_only } = *target;
    let volume = &volume_id.to_string();
    let fs = fs_type.ops();
    let device_bytes = sys.device_size(device).await?;
    match mount::mounted_at(sys, staging).await? {
        Some(entry) => {
            if entry.major_minor != sys.device_numbers(device).await? && entry.source != device.to_string_lossy() {
                let reason = format!("{} already holds {} from {}", staging.display(), entry.fs_type, entry.source);
                return Err(NodeError::Conflict { volume: volume.to_owned(), reason });
            }
        }
        None => {
            let layer = Layer::Filesystem(fs_type);
            match formats.examine(sys, volume_id, layer, device).await? {
                // A reader gets what is there, or nothing: never a new filesystem.
                Found::Blank | Found::Unfinished if read_only => return Err(NodeError::ReadOnlyBlank { volume: volume.to_owned() }),
                found @ (Found::Blank | Found::Unfinished) => formats.make(sys, volume_id, device, layer, &found).await?,
                Found::Holds(found) if found == fs_type.as_str() && read_only => {}
                Found::Holds(found) if found == fs_type.as_str() => fs.grow_offline(sys, device, device_bytes).await?,
                Found::Holds(found) => {
                    let reason = format!("device holds a {found} filesystem, not the requested {fs_type}");
                    return Err(NodeError::Conflict { volume: volume.to_owned(), reason });
                }
            }
            let call = MountCall::Filesystem {
                device: device.to_owned(),
                target: staging.to_owned(),
                fs_type: fs_type.as_str().into(),
                options: mount_options(fs_type, flags, read_only),
            };
            sys.mount(call).await.map_err(|e| e.for_volume(&volume))?;
        }
    }
    if read_only {
        return Ok(());
    }
    // A device larger than its filesystem (grown while unstaged) is grown now.
    if !fills_device(fs.size(sys, device, staging).await?, device_bytes) {
        match fs.grow_online(sys, volume, device, staging).await {
            Err(e @ NodeError::OnlineGrowNotPermitted { .. }) => {
                tracing::warn!(error = %e.full_message(), "staged without growing");
                return Ok(());
            }
            other => other?,
        }
        let fs_bytes = fs.size(sys, device, staging).await?;
        if !fills_device(fs_bytes, device_bytes) {
            return Err(NodeError::GrowIncomplete { volume: volume.to_owned(), fs_bytes, device_bytes });
        }
    }
    Ok(())
}

/// `nosuid,nodev` first (a capability may not undo them: its flags are
/// checked against an allow-list), the capability's flags, `ro` for a
/// reader, and what the filesystem itself needs.
fn mount_options(fs_type: FsType, flags: &[String], read_only: bool) -> Vec<String> {
    let mut words: Vec<String> = DEFAULT_OPTIONS.iter().map(|w| (*w).to_owned()).collect();
    words.extend(flags.iter().cloned());
    if read_only {
        words.push("ro".to_owned());
    }
    fs_type.ops().mount_options(&words)
}

/// Unstages a volume; nothing staged is success.
pub(crate) async fn unstage(ctx: &NodeContext, req: Unstage) -> Result<(), NodeError> {
    let _guard = ctx.lock(&req.volume).await?;
    // Without a record (a stage cut off before writing it), any mode may
    // have attached the volume: look in every one.
    let attachers = ctx.attachers.all_for(&req.volume)?;
    let record = ctx.staging.read(&req.volume).await?;
    if let Some(record) = &record
        && record.staging_path != req.staging_path
    {
        tracing::warn!(staged_at = %record.staging_path.display(), "unstage of a path the volume is not staged at");
        return Ok(());
    }
    mount::unmount_volume(ctx.sys.as_ref(), record.as_ref(), mount::Place::Staging, &req.staging_path).await?;
    // An encrypted volume's mapping holds its device: closed first.
    let mapper = crypt::luks::mapper_name(&req.volume);
    let recorded = record.as_ref().is_some_and(|r| r.mapper.is_some());
    if recorded || tokio::fs::symlink_metadata(crypt::luks::mapper_path(&mapper)).await.is_ok() {
        crypt::luks::close(ctx.sys.as_ref(), &req.volume, &mapper).await?;
    }
    match &record {
        Some(record) => ctx.attachers.for_volume(&req.volume, record.rbd_mode)?.detach(&req.volume, Some(&record.device)).await?,
        None => {
            for attacher in attachers {
                attacher.detach(&req.volume, None).await?;
            }
        }
    }
    ctx.staging.remove(&req.volume).await?;
    tracing::info!("unstaged");
    Ok(())
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
