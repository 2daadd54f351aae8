//! NodePublishVolume and NodeUnpublishVolume: bind the staged filesystem (or
//! the block device node) onto the pod's target path, read-only on request;
//! and take it away again, removing what the publish created.

use std::path::Path;

use crate::NodeContext;
use crate::error::NodeError;
use crate::mount;
use crate::staging::Access;
use crate::system::MountCall;
use crate::validate::{Publish, Unpublish};

/// Publishes a staged volume; idempotent when already published alike.
pub(crate) async fn publish(ctx: &NodeContext, req: Publish) -> Result<(), NodeError> {
    let _guard = ctx.lock(&req.volume)?;
    let volume = req.volume.to_string();
    let record = match ctx.staging.read(&req.volume).await? {
        Some(record) if record.staging_path == req.staging_path => record,
        _ => return Err(NodeError::NotStaged { volume, path: req.staging_path }),
    };
    if !same_kind(&record.access, &req.access) {
        let reason = format!("volume is staged as {:?}, not as {:?}", record.access, req.access);
        return Err(NodeError::InvalidArgument { field: "volume_capability", reason });
    }
    let sys = ctx.sys.as_ref();
    if let Some(existing) = mount::mounted_at(sys, &req.target_path).await? {
        if mount::holds_volume(sys, &record, &existing).await? && existing.read_only() == req.read_only {
            return Ok(());
        }
        let reason = format!("{} already holds an incompatible mount ({})", req.target_path.display(), existing.source);
        return Err(NodeError::Conflict { volume, reason });
    }
    let source = match &record.access {
        Access::Mount { .. } => {
            create_dir(&req.target_path).await?;
            record.staging_path.clone()
        }
        Access::Block => {
            if let Some(parent) = req.target_path.parent() {
                create_dir(parent).await?;
            }
            create_file(&req.target_path).await?;
            record.device.clone()
        }
    };
    sys.mount(MountCall::Bind { source, target: req.target_path.clone() }).await.map_err(|e| e.for_volume(&volume))?;
    if req.read_only
        && let Err(error) = sys.mount(MountCall::RemountReadOnly { target: req.target_path.clone() }).await
    {
        // Never leave a writable mount behind a read-only request.
        if let Err(e) = mount::unmount_all(sys, &req.target_path).await {
            tracing::warn!(error = %e.full_message(), "unmount after a failed read-only remount");
        }
        return Err(error.for_volume(&volume));
    }
    tracing::info!(target = %req.target_path.display(), read_only = req.read_only, "published");
    Ok(())
}

/// Unpublishes; nothing at the target is success.
pub(crate) async fn unpublish(ctx: &NodeContext, req: Unpublish) -> Result<(), NodeError> {
    let _guard = ctx.lock(&req.volume)?;
    mount::unmount_all(ctx.sys.as_ref(), &req.target_path).await?;
    let target = &req.target_path;
    match tokio::fs::symlink_metadata(target).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(NodeError::io(format!("stat {}", target.display()), e)),
        // remove_dir, not remove_dir_all: a non-empty directory here is not ours to delete.
        Ok(meta) if meta.is_dir() => tokio::fs::remove_dir(target).await,
        Ok(_) => tokio::fs::remove_file(target).await,
    }
    .map_err(|e| NodeError::io(format!("remove {}", target.display()), e))?;
    tracing::info!(target = %target.display(), "unpublished");
    Ok(())
}

fn same_kind(staged: &Access, requested: &Access) -> bool {
    match (staged, requested) {
        (Access::Block, Access::Block) => true,
        (Access::Mount { fs_type: a, .. }, Access::Mount { fs_type: b, .. }) => a == b,
        _ => false,
    }
}

async fn create_dir(path: &Path) -> Result<(), NodeError> {
    tokio::fs::create_dir_all(path).await.map_err(|e| NodeError::io(format!("create {}", path.display()), e))
}

async fn create_file(path: &Path) -> Result<(), NodeError> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .await
        .map(drop)
        .map_err(|e| NodeError::io(format!("create {}", path.display()), e))
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
