//! The RBD backend's background work, run after each reconciler pass:
//! confirming creates and finishing deletes the request path left to it
//! (docs/rbd-state.md), of volumes and snapshots alike, flattening clones
//! past the chain depth limit, purging trashed images, and summing other
//! clients' image sizes when those count against a pool. Everything runs a
//! few at a time within the pass's deadline; what is left waits for the
//! next pass.

use swell_storage::{ExpansionRecord, RbdVolume};

use crate::commit::Change;
use crate::context::{Call, Pool};
use crate::errors::RbdError;
use crate::ffi::Errno;
use crate::images::retire;
use crate::lease::{Acquired, remove_lock_object};
use crate::parallel::in_parallel;
use crate::state::{self, Entry, Phase, SnapshotEntry};
use crate::{clones, snapshots, trash};

/// Finishes what creates and deletes left to the background, purges the
/// trash of every pool and, when other clients' images count, sums their
/// sizes. Returns the trashed images removed.
pub(crate) fn housekeeping(call: &Call<'_>) -> Result<usize, RbdError> {
    let mut removed = 0;
    for name in call.pool_names()? {
        // One pool's trouble must not keep the others' work from being done.
        let done = match call.pool(&name) {
            Ok(Some(pool)) => housekeep_pool(&pool),
            Ok(None) => Ok(0),
            Err(err) => Err(err),
        };
        match done {
            Ok(count) => removed += count,
            Err(err) => {
                tracing::warn!(pool = name, error = %err.into_backend(call.config().op_timeout), "background work on the pool failed; retrying on the next pass")
            }
        }
    }
    Ok(removed)
}

fn housekeep_pool(pool: &Pool<'_>) -> Result<usize, RbdError> {
    let call = pool.call();
    let (config, readings) = (call.config(), call.shared().readings());
    let (io, name) = (pool.io(), pool.name());
    if config.count_foreign_images && readings.foreign_due(name) {
        match io.provisioned_bytes() {
            Ok(all) => {
                let swell = state::read_total(io, pool.layout())?;
                readings.note_foreign(name, all, swell);
                tracing::debug!(pool = name, all_images = all, swell, "summed the sizes of the pool's images");
            }
            Err(Errno::ENOENT) => readings.note_foreign(name, 0, 0),
            Err(e) => tracing::warn!(pool = name, error = %e, "cannot sum the pool's image sizes; keeping the last sum"),
        }
    }
    let mut owed: Vec<(RbdVolume, Entry)> = Vec::new();
    for (image, entry) in state::pending_entries(io, pool.layout())? {
        // Pools whose names cannot be part of an id hold no Swell volume.
        let Ok(volume) = pool.volume(&image) else { continue };
        match entry {
            Ok(entry) if entry.phase != Phase::Ready || entry.lineage.flatten => owed.push((volume, entry)),
            Ok(_) => {}
            // The reconciler reports it: its expansion store lists it unreadable.
            Err(err) => tracing::debug!(volume.id = %volume, error = ?err, "an unreadable entry waits for an operator"),
        }
    }
    in_parallel(&owed, config.purge_concurrency, call.deadline(), config.op_timeout, |(volume, entry)| {
        let finished = match entry.phase {
            Phase::Deleting => finish_delete(pool, volume, entry),
            Phase::Creating => confirm_create(pool, volume, entry),
            Phase::Ready => clones::flatten(pool, volume, entry).map(drop),
        };
        if let Err(err) = finished {
            let err = err.into_backend(config.op_timeout);
            tracing::warn!(volume.id = %volume, phase = ?entry.phase, error = %err, "cannot finish the volume's create, delete or flatten; retrying on the next pass");
        }
    });
    let pending: Vec<(String, SnapshotEntry)> = state::pending_snapshots(io, pool.layout())?;
    in_parallel(&pending, config.purge_concurrency, call.deadline(), config.op_timeout, |(key, entry)| {
        let finished = match entry.phase {
            Phase::Deleting => snapshots::finish_delete(pool, key, entry),
            Phase::Creating => snapshots::confirm_create(pool, key, entry),
            Phase::Ready => Ok(()),
        };
        if let Err(err) = finished {
            let err = err.into_backend(config.op_timeout);
            tracing::warn!(pool = name, snapshot = key, phase = ?entry.phase, error = %err, "cannot finish the snapshot's create or delete; retrying on the next pass");
        }
    });
    Ok(trash::purge(io, name, config.purge_concurrency, call.deadline(), config.op_timeout)?.removed)
}

/// A deleted volume, under its lock (so a create of the same name that came
/// first, and made a new image there, keeps it): its image moved away (to
/// the trash, or kept for its snapshots), then its lock object, then its
/// entry.
fn finish_delete(pool: &Pool<'_>, volume: &RbdVolume, entry: &Entry) -> Result<(), RbdError> {
    let id = volume.id();
    let call = pool.call();
    let shared = call.shared();
    let Some(_local) = shared.local_holds().try_acquire(&id.to_string()) else { return Ok(()) };
    if let Acquired::Busy(_) = shared.leases().acquire(call.conn(), pool.io(), &volume.image)? {
        return Ok(());
    }
    let still_deleted = pool.entry(&volume.image)?.is_some_and(|e| e.phase == Phase::Deleting && e.record.generation == entry.record.generation);
    if !still_deleted {
        return shared.leases().release(pool.io(), &volume.image);
    }
    retire(pool.io(), &volume.image).map_err(|e| RbdError::osd("move a deleted volume's image away", e, Some(&id)))?;
    remove_lock_object(pool.io(), volume)?;
    pool.commit(Change::Remove { image: volume.image.clone(), generation: Some(entry.record.generation) })?;
    tracing::info!(volume.id = %id, "deleted volume's image moved to the trash");
    Ok(())
}

/// A create older than any create can take: confirmed with its image's
/// real size if the image exists, dropped with its promise if not.
fn confirm_create(pool: &Pool<'_>, volume: &RbdVolume, entry: &Entry) -> Result<(), RbdError> {
    let call = pool.call();
    if swell_storage::expansion::now_unix().saturating_sub(entry.record.updated_unix) < call.config().create_grace().as_secs() {
        return Ok(());
    }
    let id = volume.id();
    let generation = entry.record.generation;
    let change = match pool.header(&id, &volume.image)? {
        Some(found) => {
            // The image's real size, unless an expansion has taken over the
            // record since (then the expansion's record stands).
            let untouched = entry.record.desired_bytes == entry.record.current_bytes;
            let record = if untouched { ExpansionRecord { generation, ..ExpansionRecord::new(&id, found.size, found.size) } } else { entry.record.clone() };
            Change::Put { image: volume.image.clone(), name: None, phase: Some(Phase::Ready), lineage: None, record }
        }
        None => {
            clones::tidy_cut_off(call, volume, entry)?;
            tracing::info!(volume.id = %id, "a create was cut off before its image was made; dropping its promise");
            Change::Remove { image: volume.image.clone(), generation: Some(generation) }
        }
    };
    pool.commit(change).map(drop)
}
