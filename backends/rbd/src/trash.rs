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

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use swell_storage::rbd_volume::is_swell_image;

use super::errors::RbdError;
use super::ffi::{Errno, IoCtx, TrashEntry};

/// Moves `image` to the trash; an image already gone is no error.
pub fn move_to_trash(io: &IoCtx, image: &str) -> Result<(), Errno> {
    match io.trash_move(image) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a purge of one pool did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Images removed.
    pub removed: usize,
    /// Images left because a client still watches them.
    pub watched: usize,
    /// Images left because clones still read from them.
    pub parent: usize,
}

/// Runs `work` on each of `items`, `concurrency` at a time, starting none
/// once less than `op_timeout` is left before `deadline` (the rest wait for
/// the next pass).
pub fn in_parallel<T: Sync>(items: &[T], concurrency: usize, deadline: Instant, op_timeout: Duration, work: impl Fn(&T) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..concurrency.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if deadline.saturating_duration_since(Instant::now()) < op_timeout {
                        return;
                    }
                    work(item);
                }
            });
        }
    });
}

/// Removes Swell's trashed images in `pool`, `concurrency` at a time,
/// within `deadline` (see [`in_parallel`]).
pub fn purge(io: &IoCtx, pool: &str, concurrency: usize, deadline: Instant, op_timeout: Duration) -> Result<Purged, RbdError> {
    let entries: Vec<TrashEntry> = match io.trash_list() {
        Ok(entries) => entries.into_iter().filter(|e| is_swell_image(&e.name)).collect(),
        Err(Errno::ENOENT) => return Ok(Purged::default()),
        Err(e) => return Err(RbdError::osd(format!("rbd_trash_list in pool {pool}"), e, None)),
    };
    let purged = Mutex::new(Purged::default());
    in_parallel(&entries, concurrency, deadline, op_timeout, |entry| {
        let outcome = io.trash_remove(&entry.id);
        let mut purged = purged.lock().unwrap_or_else(|p| p.into_inner());
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
    Ok(purged.into_inner().unwrap_or_else(|p| p.into_inner()))
}
