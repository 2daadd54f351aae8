//! Deletes that do not wait: DeleteVolume moves the image to the pool's
//! RBD trash, which frees its name at once and keeps its data, and answers.
//! Removing the data (which takes longer the more the image holds) happens
//! in the background: every housekeeping pass removes Swell's trashed
//! images, a few at once, within the call's deadline.
//!
//! Swell's trashed images are the ones whose name has the shape of a Swell
//! image (`swell-<32 hex>`, see `swell_storage::rbd_volume`): the marker,
//! as other clients' images in the same pool never have it. A trashed image
//! that some client still watches (a node that has not let go, or a watch
//! Ceph still lists for a dead client) is refused by librbd (EBUSY) and
//! stays for a later pass: nothing is ever removed under a watcher, nor
//! under a clone that still reads from it (ENOTEMPTY: its snapshot trash
//! keeps the clones' parent snapshots).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use swell_storage::rbd_volume::is_swell_image;

use crate::errors::RbdError;
use crate::ffi::{Errno, IoCtx, TrashEntry};
use crate::parallel::in_parallel;

/// Moves `image` to the trash; an image already gone is no error.
pub(crate) fn move_to_trash(io: &IoCtx, image: &str) -> Result<(), Errno> {
    match io.trash_move(image) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
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
    let entries: Vec<TrashEntry> = match io.trash_list() {
        Ok(entries) => entries.into_iter().filter(|e| is_swell_image(&e.name)).collect(),
        Err(Errno::ENOENT) => return Ok(Purged::default()),
        Err(e) => return Err(RbdError::osd(format!("rbd_trash_list in pool {pool}"), e, None)),
    };
    let purged = Mutex::new(Purged::default());
    in_parallel(&entries, concurrency, deadline, op_timeout, |entry| {
        let outcome = io.trash_remove(&entry.id);
        let mut purged = purged.lock();
        match outcome {
            Ok(()) | Err(Errno::ENOENT) => {
                tracing::info!(pool, image = entry.name, trash_id = entry.id, "removed a trashed image");
                purged.removed += 1;
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
