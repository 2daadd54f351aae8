//! Deletes that do not wait: DeleteVolume moves the image to the pool's
//! RBD trash, which frees its name at once and keeps its data, and answers.
//! Removing the data (which takes longer the more the image holds) happens
//! in the background: every housekeeping pass removes Swell's trashed
//! images, a few at once, within the call's deadline.
//!
//! A pool is shared with other installs of Swell and other tools, and an
//! image name of Swell's shape (`swell-<32 hex>`) proves nothing. So before
//! Swell moves an image to the trash it records the image's RBD id (which
//! names it in the trash) in the pool's `swell.trashed` object, and a purge
//! removes only trashed images recorded there; an entry leaves the record
//! once its image is gone. A trashed image that some client still watches
//! (a node that has not let go, or a watch Ceph still lists for a dead
//! client) is refused by librbd (EBUSY) and stays for a later pass: nothing
//! is ever removed under a watcher, nor under a clone that still reads from
//! it (ENOTEMPTY: its snapshot trash keeps the clones' parent snapshots).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::errors::RbdError;
use crate::ffi::{Errno, IoCtx, TrashEntry, WriteOp};
use crate::header;
use crate::omap;
use crate::parallel::in_parallel;

/// The object whose omap keys are the RBD ids of the images Swell moved to
/// the pool's trash (values: the names they had).
pub(crate) const TRASHED_OBJECT: &str = "swell.trashed";

/// Records `image` as Swell's and moves it to the trash; an image already
/// gone is no error.
pub(crate) fn move_to_trash(io: &IoCtx, image: &str) -> Result<(), Errno> {
    let Some(image_id) = header::image_id(io, image)? else { return Ok(()) };
    let mut record = WriteOp::default();
    record.create(false).omap_set(&[(image_id.as_str(), image.as_bytes())]);
    record.operate(io, TRASHED_OBJECT)?;
    match io.trash_move(image) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The RBD ids Swell recorded as moved to the trash, with the names.
fn recorded(io: &IoCtx) -> Result<BTreeMap<String, String>, Errno> {
    let entries = omap::all_entries(io, TRASHED_OBJECT)?;
    Ok(entries.into_iter().map(|(id, name)| (id, String::from_utf8_lossy(&name).into_owned())).collect())
}

/// Drops `image_id` from the record: its image is gone.
fn forget(io: &IoCtx, image_id: &str) -> Result<(), Errno> {
    omap::remove_key(io, TRASHED_OBJECT, image_id)
}

/// What a purge of one pool did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Purged {
    /// Images removed.
    pub removed: usize,
    /// Images left because a client still watches them.
    pub watched: usize,
    /// Images left because clones still read from them.
    pub parent: usize,
}

/// Removes Swell's trashed images in `pool`, `concurrency` at a time,
/// within `deadline` (see [`crate::parallel::in_parallel`]).
pub(crate) fn purge(io: &IoCtx, pool: &str, concurrency: usize, deadline: Instant, op_timeout: Duration) -> Result<Purged, RbdError> {
    let ours = recorded(io).map_err(|e| RbdError::osd(format!("read {TRASHED_OBJECT} in pool {pool}"), e, None))?;
    if ours.is_empty() {
        return Ok(Purged::default());
    }
    let entries: Vec<TrashEntry> = match io.trash_list() {
        Ok(entries) => entries.into_iter().filter(|e| ours.contains_key(&e.id)).collect(),
        Err(Errno::ENOENT) => Vec::new(),
        Err(e) => return Err(RbdError::osd(format!("rbd_trash_list in pool {pool}"), e, None)),
    };
    // Recorded but not in the trash: gone (or restored by someone), unless
    // the image still has that id under its name (its move is still coming).
    for (image_id, name) in ours.iter().filter(|(id, _)| !entries.iter().any(|e| &&e.id == id)) {
        let moving = header::image_id(io, name).map_err(|e| RbdError::osd(format!("read the id of {name} in pool {pool}"), e, None))?;
        if moving.as_deref() != Some(image_id.as_str()) {
            forget(io, image_id).map_err(|e| RbdError::osd(format!("update {TRASHED_OBJECT} in pool {pool}"), e, None))?;
        }
    }
    let purged = Mutex::new(Purged::default());
    in_parallel(&entries, concurrency, deadline, op_timeout, |entry| {
        let outcome = io.trash_remove(&entry.id);
        let mut purged = purged.lock();
        match outcome {
            Ok(()) | Err(Errno::ENOENT) => {
                tracing::info!(pool, image = entry.name, trash_id = entry.id, "removed a trashed image");
                purged.removed += 1;
                // Left in the record if this fails: the next pass finds the image gone (ENOENT) and tries again.
                if let Err(e) = forget(io, &entry.id) {
                    tracing::warn!(pool, trash_id = entry.id, error = %e, "cannot drop a removed image from the trash record");
                }
            }
            Err(Errno::EBUSY) => {
                tracing::debug!(pool, image = entry.name, "trashed image still has watchers");
                purged.watched += 1;
            }
            // Format-2 clones still read from its snapshot trash; it goes
            // once the last of them is flattened or deleted.
            Err(Errno::ENOTEMPTY) => {
                tracing::debug!(pool, image = entry.name, "trashed image still has clones reading from it");
                purged.parent += 1;
            }
            Err(e) => tracing::warn!(pool, image = entry.name, error = %e, "cannot remove a trashed image; retrying on the next pass"),
        }
    });
    Ok(purged.into_inner())
}
