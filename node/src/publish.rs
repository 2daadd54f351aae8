//! NodePublishVolume and NodeUnpublishVolume: bind the staged filesystem (or
//! the block device node) onto the pod's target path, read-only on request;
//! and take it away again, removing what the publish created.

use std::path::Path;

use nix::sys::stat::SFlag;

use crate::NodeContext;
use crate::confine::{self, Leaf};
use crate::error::NodeError;
use crate::mount;
use crate::staging::Access;
use crate::system::MountCall;
use crate::validate::{Publish, Unpublish};

/// Publishes a staged volume; idempotent when already published alike.
pub(crate) async fn publish(ctx: &NodeContext, req: Publish) -> Result<(), NodeError> {
    let _guard = ctx.lock(&req.volume).await?;
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
    let root = ctx.config.kubelet_dir.clone();
    let source = match &record.access {
        Access::Mount { .. } => {
            confine::create_dir(root, "target_path", &req.target_path).await?;
            record.staging_path.clone()
        }
        Access::Block => {
            confine::create_file(root, &req.target_path).await?;
            record.data_device().to_owned()
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
    let _guard = ctx.lock(&req.volume).await?;
    let record = ctx.staging.read(&req.volume).await?;
    mount::unmount_volume(ctx.sys.as_ref(), record.as_ref(), mount::Place::Target, &req.target_path).await?;
    let target = req.target_path.clone();
    let (root, volume) = (ctx.config.kubelet_dir.clone(), req.volume.to_string());
    let step = format!("remove {}", target.display());
    let removed = confine::off_thread(step, move || remove_target(root.as_deref(), &target, &volume)).await?;
    if removed {
        tracing::info!(target = %req.target_path.display(), "unpublished");
    }
    Ok(())
}

/// Removes what a publish made at `target` (a directory, or an empty file
/// for a block volume's bind) through its directory's descriptor; nothing
/// there is `false`, anything else is not ours and stays.
fn remove_target(root: Option<&Path>, target: &Path, volume: &str) -> Result<bool, NodeError> {
    let failed = |step: &str, e| confine::error("target_path", format!("{step} {}", target.display()), e);
    let not_ours = |found: String| NodeError::NotOurs { volume: volume.to_owned(), path: target.to_owned(), found };
    let leaf = match Leaf::of(root, target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        leaf => leaf.map_err(|e| failed("open the directory of", e))?,
    };
    let Some(stat) = leaf.stat().map_err(|e| failed("stat", e))? else { return Ok(false) };
    match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        // rmdir, never recursive: a non-empty directory here is not ours to delete.
        SFlag::S_IFDIR => {}
        SFlag::S_IFREG if stat.st_size == 0 => {}
        SFlag::S_IFREG => return Err(not_ours(format!("a file of {} bytes", stat.st_size))),
        _ => return Err(not_ours("something that is neither a directory nor a file".to_owned())),
    }
    leaf.remove(&stat).map_err(|e| failed("remove", e))?;
    Ok(true)
}

fn same_kind(staged: &Access, requested: &Access) -> bool {
    match (staged, requested) {
        (Access::Block, Access::Block) => true,
        (Access::Mount { fs_type: a, .. }, Access::Mount { fs_type: b, .. }) => a == b,
        _ => false,
    }
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
