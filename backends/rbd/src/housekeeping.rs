//! The RBD backend's background work, run after each reconciler pass:
//! confirming creates and finishing deletes the request path left to it
//! (docs/rbd-state.md), of volumes and snapshots alike, flattening clones
//! past the chain depth limit, purging trashed images, and summing other
//! clients' image sizes when those count against a pool. Everything runs a
//! few at a time within the pass's deadline; what is left waits for the
//! next pass.

use std::time::Instant;

use swell_storage::{ExpansionRecord, RbdVolume};

use super::backend::Shared;
use super::commit::Change;
use super::connection::Connection;
use super::errors::RbdError;
use super::ffi::{Errno, IoCtx};
use super::lease::Acquired;
use super::state::{self, Entry, Phase, SnapshotEntry};
use super::store::remove_lock_object;
use super::volumes::read_header;
use super::{clones, snapshots, trash};

/// How long a create may be in flight before the background work judges
/// its entry: every create ends within its call's deadline, so several of
/// those (and some clock skew between replicas) is plenty.
pub(crate) const CREATE_GRACE_DEADLINES: u32 = 4;

/// Finishes what creates and deletes left to the background, purges the
/// trash of every pool and, when other clients' images count, sums their
/// sizes. Returns the trashed images removed.
pub(crate) fn housekeeping_blocking(shared: &Shared, conn: &Connection, deadline: Instant) -> Result<usize, RbdError> {
    let mut pools = shared.readings.pools(conn)?;
    pools.sort();
    let mut removed = 0;
    for pool in pools {
        // One pool's trouble must not keep the others' work from being done.
        match housekeep_pool(shared, conn, &pool, deadline) {
            Ok(count) => removed += count,
            Err(err) => {
                tracing::warn!(pool, error = %err.into_backend(shared.config.op_timeout), "background work on the pool failed; retrying on the next pass")
            }
        }
    }
    Ok(removed)
}

fn housekeep_pool(shared: &Shared, conn: &Connection, pool: &str, deadline: Instant) -> Result<usize, RbdError> {
    let Some(io) = conn.pool(pool)? else { return Ok(0) };
    if shared.config.count_foreign_images && shared.readings.foreign_due(pool) {
        match io.provisioned_bytes() {
            Ok(all) => {
                let swell = state::read_total(&io)?;
                shared.readings.note_foreign(pool, all, swell);
                tracing::debug!(pool, all_images = all, swell, "summed the sizes of the pool's images");
            }
            Err(Errno::ENOENT) => shared.readings.note_foreign(pool, 0, 0),
            Err(e) => tracing::warn!(pool, error = %e, "cannot sum the pool's image sizes; keeping the last sum"),
        }
    }
    let owed: Vec<(RbdVolume, Entry)> = state::pending_entries(&io)?
        .into_iter()
        .filter(|(_, entry)| entry.phase != Phase::Ready || entry.lineage.flatten)
        .filter_map(|(image, entry)| Some((RbdVolume::at(&shared.config.access.cluster_id, pool, &image).ok()?, entry)))
        .collect();
    trash::in_parallel(&owed, shared.config.purge_concurrency, deadline, shared.config.op_timeout, |(volume, entry)| {
        let finished = match entry.phase {
            Phase::Deleting => finish_delete(shared, conn, &io, volume, entry, deadline),
            Phase::Creating => confirm_create(shared, conn, &io, volume, entry, deadline),
            Phase::Ready => clones::flatten_blocking(shared, conn, &io, volume, entry, deadline).map(drop),
        };
        if let Err(err) = finished {
            let err = err.into_backend(shared.config.op_timeout);
            tracing::warn!(volume.id = %volume, phase = ?entry.phase, error = %err, "cannot finish the volume's create, delete or flatten; retrying on the next pass");
        }
    });
    let snapshots: Vec<(String, SnapshotEntry)> = state::pending_snapshots(&io)?;
    trash::in_parallel(&snapshots, shared.config.purge_concurrency, deadline, shared.config.op_timeout, |(key, entry)| {
        let finished = match entry.phase {
            Phase::Deleting => snapshots::finish_delete(shared, conn, &io, pool, key, entry, deadline),
            Phase::Creating => snapshots::confirm_create(shared, conn, &io, pool, key, entry, deadline),
            Phase::Ready => Ok(()),
        };
        if let Err(err) = finished {
            let err = err.into_backend(shared.config.op_timeout);
            tracing::warn!(pool, snapshot = key, phase = ?entry.phase, error = %err, "cannot finish the snapshot's create or delete; retrying on the next pass");
        }
    });
    Ok(trash::purge(&io, pool, shared.config.purge_concurrency, deadline, shared.config.op_timeout)?.removed)
}

/// A deleted volume, under its lock (so a create of the same name that came
/// first, and made a new image there, keeps it): its image moved away (to
/// the trash, or kept for its snapshots), then its lock object, then its
/// entry.
fn finish_delete(shared: &Shared, conn: &Connection, io: &IoCtx, volume: &RbdVolume, entry: &Entry, deadline: Instant) -> Result<(), RbdError> {
    let id = volume.id();
    let Some(_local) = shared.local.try_acquire(&id.to_string()) else { return Ok(()) };
    if let Acquired::Busy(_) = shared.leases.acquire(conn, io, &volume.image)? {
        return Ok(());
    }
    let still_deleted = state::read_entry(io, &volume.image)?.is_some_and(|e| e.phase == Phase::Deleting && e.record.generation == entry.record.generation);
    if !still_deleted {
        return shared.leases.release(io, &volume.image);
    }
    super::snapshots::retire(io, &volume.image).map_err(|e| RbdError::osd("move a deleted volume's image away", e, Some(&id)))?;
    remove_lock_object(io, volume)?;
    shared.commit(conn, io, &volume.pool, Change::Remove { image: volume.image.clone(), generation: Some(entry.record.generation) }, deadline)?;
    tracing::info!(volume.id = %id, "deleted volume's image moved to the trash");
    Ok(())
}

/// A create older than any create can take: confirmed with its image's
/// real size if the image exists, dropped with its promise if not.
fn confirm_create(shared: &Shared, conn: &Connection, io: &IoCtx, volume: &RbdVolume, entry: &Entry, deadline: Instant) -> Result<(), RbdError> {
    let grace = shared.config.call_deadline().saturating_mul(CREATE_GRACE_DEADLINES).as_secs();
    if swell_storage::expansion::now_unix().saturating_sub(entry.record.updated_unix) < grace {
        return Ok(());
    }
    let id = volume.id();
    let generation = entry.record.generation;
    let change = match read_header(io, &id, &volume.image)? {
        Some(found) => {
            // The image's real size, unless an expansion has taken over the
            // record since (then the expansion's record stands).
            let untouched = entry.record.desired_bytes == entry.record.current_bytes;
            let record = if untouched { ExpansionRecord { generation, ..ExpansionRecord::new(&id, found.size, found.size) } } else { entry.record.clone() };
            Change::Put { image: volume.image.clone(), name: None, phase: Some(Phase::Ready), lineage: None, record }
        }
        None => {
            clones::tidy_cut_off(shared, conn, volume, entry)?;
            tracing::info!(volume.id = %id, "a create was cut off before its image was made; dropping its promise");
            Change::Remove { image: volume.image.clone(), generation: Some(generation) }
        }
    };
    shared.commit(conn, io, &volume.pool, change, deadline).map(drop)
}
