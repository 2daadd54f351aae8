//! Growing a staged volume as soon as its backend has grown, without
//! waiting for kubelet: kubelet calls NodeExpandVolume only at its next
//! periodic sync of the pod (up to a minute after the claim was patched),
//! which is longer than a fast writer needs to fill what was left.
//!
//! Every interval the node walks its own staging records (so the cost
//! follows the volumes staged here, not the cluster's) and, for a volume
//! whose backing object is larger than its device (a local file's length)
//! or whose device changed size since it was last seen filled (krbd and
//! rbd-nbd follow the image by themselves), runs the path NodeExpandVolume
//! runs (`expand::grow_staged`) under the volume's lock. Kubelet's later
//! call then finds the filesystem filling the device and answers at once.
//! An RPC that finds the volume busy with such a grow waits for it
//! (`NodeContext::lock`); a volume an RPC holds is left for the next pass.
//! Nothing is kept on disk: after a restart every staged volume is looked
//! at once more.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use swell_storage::VolumeId;
use tokio::time::Instant;

use crate::NodeContext;
use crate::error::NodeError;
use crate::expand::grow_staged;
use crate::metrics::BackgroundOutcome;
use crate::staged_passes::{self, StagedPass};
use crate::staging::Access;

/// How long a volume whose grow failed is left alone, unless its sizes
/// change: the failure is logged and counted once, not every interval.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(30);

/// What the grower remembers of a volume between passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    device_bytes: u64,
    backing_bytes: Option<u64>,
    failed_at: Option<Instant>,
}

/// Starts the grower over `ctx`, looking every `interval`; it stops by
/// itself once the node is gone.
pub(crate) fn spawn(ctx: &Arc<NodeContext>, interval: Duration) {
    tracing::info!(interval_ms = interval.as_millis() as u64, "growing volumes when their backend grows");
    staged_passes::spawn(ctx, interval, Grower);
}

struct Grower;

impl StagedPass for Grower {
    type Kept = Seen;
    const NAME: &'static str = "background grow";

    async fn visit(&self, ctx: &NodeContext, volume: &VolumeId, seen: &mut HashMap<VolumeId, Seen>) {
        if let Err(e) = look_at(ctx, volume, seen).await {
            // Reading sizes failed (a device gone under an unstage, say): the
            // RPCs report such trouble; this pass only grows.
            tracing::debug!(%volume, error = %e.full_message(), "background grow: sizes unreadable");
        }
    }
}

/// Grows `volume` if its backend or device grew since it was last seen filled.
async fn look_at(ctx: &NodeContext, volume: &VolumeId, seen: &mut HashMap<VolumeId, Seen>) -> Result<(), NodeError> {
    let Some(record) = ctx.staging.read(volume).await? else { return Ok(()) };
    let attacher = ctx.attachers.for_volume(volume, record.rbd_mode)?;
    let now = Seen { device_bytes: ctx.sys.device_size(&record.device).await?, backing_bytes: attacher.backing_size_if_cheap(volume).await?, failed_at: None };
    let before = seen.get(volume).copied();
    if !needs_grow(before, now, Instant::now()) {
        return Ok(());
    }
    let Some(_hold) = ctx.try_lock_for_background(volume) else { return Ok(()) };
    // Read again under the lock: an unstage may have finished meanwhile.
    let Some(record) = ctx.staging.read(volume).await? else {
        seen.remove(volume);
        return Ok(());
    };
    let started = Instant::now();
    let outcome = match grow_staged(ctx, volume, &record, 0).await {
        Ok(grown) => {
            seen.insert(volume.clone(), Seen { device_bytes: grown.device_bytes, ..now });
            let outcome =
                if grown.filesystem_grown || grown.device_bytes > now.device_bytes { BackgroundOutcome::Grown } else { BackgroundOutcome::AlreadyDone };
            if outcome == BackgroundOutcome::Grown {
                let block = matches!(record.access, Access::Block);
                tracing::info!(%volume, device_bytes = grown.device_bytes, block, took_ms = started.elapsed().as_millis() as u64, "grown in the background, before kubelet asked");
            }
            outcome
        }
        // Staged but not mounted (a node rebooted, kubelet not yet back):
        // nothing to grow until it stages again.
        Err(NodeError::StagingNotMounted { .. }) => return Ok(()),
        Err(e) => {
            seen.insert(volume.clone(), Seen { failed_at: Some(Instant::now()), ..now });
            tracing::warn!(%volume, error = %e.full_message(), "background grow failed; kubelet's NodeExpandVolume will try again");
            BackgroundOutcome::Failed
        }
    };
    ctx.metrics.count_background_grow(outcome);
    Ok(())
}

/// Whether a volume seen `before` (`None`: not yet) and `now` needs the
/// grow path: its backing object is larger than its device (only known
/// where reading it is cheap), or its device changed size since it was
/// last seen filled. A failed volume waits [`RETRY_FAILED_AFTER`] unless
/// its sizes change.
fn needs_grow(before: Option<Seen>, now: Seen, at: Instant) -> bool {
    let Some(before) = before else { return true };
    let sizes_changed = before.device_bytes != now.device_bytes || before.backing_bytes != now.backing_bytes;
    if let Some(failed_at) = before.failed_at {
        return sizes_changed || at.duration_since(failed_at) >= RETRY_FAILED_AFTER;
    }
    // Block devices count whole sectors of the backing object.
    let backend_ahead = now.backing_bytes.is_some_and(|backing| backing / 512 * 512 > now.device_bytes);
    backend_ahead || sizes_changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_storage::units::MIB;

    fn seen(device_bytes: u64, backing_bytes: Option<u64>) -> Seen {
        Seen { device_bytes, backing_bytes, failed_at: None }
    }

    #[test]
    fn a_volume_is_grown_when_first_seen_when_its_backend_is_ahead_or_when_its_device_changed() {
        let at = Instant::now();
        assert!(needs_grow(None, seen(64 * MIB, Some(64 * MIB)), at), "first seen (after a start): looked at once");
        assert!(!needs_grow(Some(seen(64 * MIB, Some(64 * MIB))), seen(64 * MIB, Some(64 * MIB)), at), "nothing changed");
        assert!(needs_grow(Some(seen(64 * MIB, Some(64 * MIB))), seen(64 * MIB, Some(128 * MIB)), at), "the local file grew");
        assert!(needs_grow(Some(seen(64 * MIB, None)), seen(128 * MIB, None), at), "a krbd device followed its image");
        assert!(!needs_grow(Some(seen(64 * MIB, Some(64 * MIB + 100))), seen(64 * MIB, Some(64 * MIB + 100)), at), "a partial sector is not a grow");
    }

    #[test]
    fn a_failed_volume_waits_unless_its_sizes_change() {
        let at = Instant::now();
        let failed = Seen { failed_at: Some(at), ..seen(64 * MIB, Some(128 * MIB)) };
        assert!(!needs_grow(Some(failed), seen(64 * MIB, Some(128 * MIB)), at), "backend still ahead, but it just failed");
        assert!(needs_grow(Some(failed), seen(64 * MIB, Some(128 * MIB)), at + RETRY_FAILED_AFTER), "tried again later");
        assert!(needs_grow(Some(failed), seen(64 * MIB, Some(256 * MIB)), at), "a new grow is tried at once");
    }
}
