//! RBD clones: a volume made from a snapshot or a volume is a format-2
//! clone (no protect step) of an RBD snapshot, grown to the size asked for
//! in the same create.
//!
//! - From a snapshot: a clone of the snapshot's RBD snapshot, on its image
//!   (found by the image's RBD id, also after its volume was deleted).
//! - From a volume: a clone of a snapshot taken for it on the source
//!   (`clone.<new image>`), removed right after, which moves it to the
//!   source's snapshot trash until the clone no longer reads from it.
//!
//! A clone reads what it has not written from its parent, and the parent
//! from its own: every level makes reads slower, so a volume whose chain
//! passes the configured depth is marked and flattened by the background
//! work (copied up, then detached; see [`flatten`]).
//!
//! Crash safety follows plain creates (docs/rbd-state.md): the entry is
//! written `creating`, with its source and its size promised, before
//! anything is made; a retry finishes (clone, grow); the background work
//! confirms or drops it and removes a left-over source snapshot.

use std::time::{Duration, Instant};

use swell_storage::rbd_attach::WRAPPED_KEY_META;
use swell_storage::{BackendError, ContentSource, Created, ExpansionRecord, RbdVolume, VolumeInfo};

use crate::commit::Change;
use crate::context::{Call, Pool};
use crate::errors::RbdError;
use crate::ffi::Errno;
use crate::images::{IMAGE_FEATURES, Made, drop_snapshot, image_named, make_image, retire_volume, take_snapshot};
use crate::lease::Acquired;
use crate::state::{Entry, Lineage, Phase};
use crate::volumes::{belongs_elsewhere, grow};

/// What a clone reads from.
struct Parent<'a> {
    pool: Pool<'a>,
    image: String,
    /// The snapshot to clone; `None` for a volume source, which gets one
    /// taken for this clone and removed once cloned.
    snapshot: Option<String>,
    size: u64,
    depth: u32,
}

/// The snapshot taken on a source volume for cloning `image` from it.
fn clone_snapshot(image: &str) -> String {
    format!("clone.{image}")
}

/// CreateVolume from a source, the caller holding the new volume.
pub(crate) fn create_from(call: &Call<'_>, volume: &RbdVolume, name: &str, size: u64, source: &ContentSource) -> Result<Created, RbdError> {
    let id = volume.id();
    let pool = call.existing_pool(&volume.pool)?;
    let info = |size_bytes| VolumeInfo { id: id.clone(), name: name.to_owned(), size_bytes };
    let entry = pool.entry(&volume.image)?;
    match &entry {
        Some(e) if e.live() && e.name != name => {
            return Err(belongs_elsewhere(name, volume, &e.name));
        }
        Some(e) if e.live() && e.lineage.source.as_ref() != Some(source) => {
            let was = e.lineage.source.as_ref().map_or_else(|| "blank".to_owned(), |s| format!("made from {s}"));
            return Err(BackendError::NameTaken { name: name.to_owned(), reason: format!("volume {id} was {was}, not made from {source}") }.into());
        }
        // A retry: the clone is there (grown here if a cut-off create left
        // it short), or is made below.
        Some(e) if e.live() => {
            if let Some(found) = pool.header(&id, &volume.image)? {
                return Ok(Created::Existing(info(grow(call, volume, size.max(found.size))?)));
            }
        }
        Some(_) => retire_volume(&pool, &id, &volume.image)?,
        None => {}
    }
    let parent = parent_of(call, source)?;
    if size < parent.size {
        return Err(BackendError::Shrink { id, current: parent.size, requested: size }.into());
    }
    let depth = parent.depth + 1;
    let lineage = Lineage { source: Some(source.clone()), depth, flatten: depth > call.config().max_clone_depth };
    let generation = entry.map_or(0, |e| e.record.generation);
    let intent = ExpansionRecord { generation, ..ExpansionRecord::new(&id, size, size) };
    let change = Change::Put { image: volume.image.clone(), name: Some(name.to_owned()), phase: Some(Phase::Creating), lineage: Some(lineage), record: intent };
    pool.commit(change)?;
    fail::fail_point!("rbd-clone-after-intent");
    let fail = |step: &str, e| RbdError::osd(step.to_owned(), e, Some(&id));
    let parent_io = parent.pool.io();
    let (snapshot, temporary) = match &parent.snapshot {
        Some(snapshot) => (snapshot.clone(), false),
        None => (clone_snapshot(&volume.image), true),
    };
    if temporary {
        call.time_left("rbd_snap_create")?;
        take_snapshot(parent_io, &parent.image, &snapshot).map_err(|e| fail("snapshot the source volume", e))?;
    }
    call.time_left("rbd_clone3")?;
    let made = make_image(&pool, &id, &volume.image, size, || pool.io().clone_image(parent_io, &parent.image, &snapshot, &volume.image, IMAGE_FEATURES))?;
    if temporary {
        drop_snapshot(parent_io, &parent.image, &snapshot).map_err(|e| fail("remove the snapshot taken for cloning", e))?;
    }
    fail::fail_point!("rbd-clone-before-grow");
    let grown = grow(call, volume, size)?;
    Ok(match made {
        Made::New => Created::New(info(grown)),
        Made::Existing(_) => Created::Existing(info(grown)),
    })
}

/// Whether the data `source` holds is encrypted: the image a clone of it
/// reads from holds a wrapped data key, which librbd copies into the clone
/// with the rest of that image's metadata (docs/encryption.md).
pub(crate) fn source_encrypted(call: &Call<'_>, source: &ContentSource) -> Result<bool, RbdError> {
    let parent = parent_of(call, source)?;
    let fail = |step: &str, e| RbdError::osd(format!("{step} of {source}"), e, None);
    let image = parent.pool.io().open_read_only(&parent.image).map_err(|e| fail("open the image", e))?;
    let key = image.metadata(WRAPPED_KEY_META);
    image.close().map_err(|e| fail("close the image", e))?;
    Ok(key.map_err(|e| fail(&format!("rbd_metadata_get {WRAPPED_KEY_META}"), e))?.is_some())
}

/// The image and RBD snapshot a clone of `source` reads from.
fn parent_of<'a>(call: &'a Call<'a>, source: &ContentSource) -> Result<Parent<'a>, RbdError> {
    match source {
        ContentSource::Snapshot(snapshot) => {
            let missing = || RbdError::Refused(BackendError::SnapshotNotFound(snapshot.clone()));
            let pool = crate::snapshots::pool_of(call.config(), snapshot).ok_or_else(missing)?;
            let pool = call.pool(&pool)?.ok_or_else(missing)?;
            let entry = pool.snapshot_entry(snapshot.key())?.ok_or_else(missing)?;
            match entry.phase {
                Phase::Ready => {}
                Phase::Creating => {
                    let reason = "it is still being cut".to_owned();
                    return Err(BackendError::Contended { step: format!("restore snapshot {snapshot}"), reason }.into());
                }
                Phase::Deleting => return Err(missing()),
            }
            let parent = image_named(pool.io(), &entry.source_image, &entry.source_image_id)
                .map_err(|e| RbdError::osd(format!("find the image of snapshot {snapshot}"), e, None))?
                .ok_or_else(missing)?;
            Ok(Parent { pool, image: parent, snapshot: Some(snapshot.key().to_owned()), size: entry.size_bytes, depth: entry.depth })
        }
        ContentSource::Volume(id) => {
            let missing = || RbdError::Refused(BackendError::NotFound(id.clone()));
            let source = call.shared().ours(id, "clone")?.ok_or_else(missing)?;
            let pool = call.pool(&source.pool)?.ok_or_else(missing)?;
            let entry = pool.entry(&source.image)?.filter(Entry::live).ok_or_else(missing)?;
            let header = pool.header(id, &source.image)?.ok_or_else(missing)?;
            Ok(Parent { pool, image: source.image, snapshot: None, size: header.size, depth: entry.lineage.depth })
        }
    }
}

/// After a clone's create was cut off: the snapshot it took of its source
/// volume, if it is still there, is removed (it moves to the source's
/// snapshot trash while the clone reads from it).
pub(crate) fn tidy_cut_off(call: &Call<'_>, volume: &RbdVolume, entry: &Entry) -> Result<(), RbdError> {
    let Some(ContentSource::Volume(id)) = &entry.lineage.source else { return Ok(()) };
    let Some(source) = call.shared().ours(id, "tidy a cut-off clone").ok().flatten() else { return Ok(()) };
    let Some(pool) = call.pool(&source.pool)? else { return Ok(()) };
    drop_snapshot(pool.io(), &source.image, &clone_snapshot(&volume.image)).map_err(|e| RbdError::osd("remove the snapshot taken for cloning", e, Some(id)))
}

/// Flattens a volume marked for it, holding it for the work: copies what
/// it still reads from its parents into it, until the call's deadline (less
/// a margin); unfinished, it goes on at the next pass from where it stopped
/// (copied objects stay). Done, its entry says it reads from no parent.
pub(crate) fn flatten(pool: &Pool<'_>, volume: &RbdVolume, entry: &Entry) -> Result<bool, RbdError> {
    let id = volume.id();
    let call = pool.call();
    let shared = call.shared();
    let Some(_local) = shared.local_holds().try_acquire(&id.to_string()) else { return Ok(false) };
    if let Acquired::Busy(_) = shared.leases().acquire(call.conn(), pool.io(), &volume.image)? {
        return Ok(false);
    }
    let deadline = call.deadline();
    let stop = deadline.checked_sub(call.config().op_timeout).unwrap_or(deadline).max(Instant::now() + Duration::from_millis(100));
    let flattened = pool.io().open(&volume.image).and_then(|image| {
        let result = image.flatten(stop);
        image.close().and(result)
    });
    let done = match flattened {
        // EINVAL: no parent left (an earlier pass finished before its entry was written).
        Ok(()) | Err(Errno::EINVAL) => {
            let lineage = Lineage { depth: 0, flatten: false, ..entry.lineage.clone() };
            let change = Change::Put { image: volume.image.clone(), name: None, phase: None, lineage: Some(lineage), record: entry.record.clone() };
            pool.commit(change).map(|_| true)
        }
        Err(Errno::ETIMEDOUT) | Err(Errno::ECANCELED) | Err(Errno::ERESTART) => Ok(false),
        Err(e) => Err(RbdError::osd("rbd_flatten", e, Some(&id))),
    };
    if let Err(err) = shared.leases().release(pool.io(), &volume.image) {
        tracing::warn!(volume.id = %id, error = ?err, "cannot release the lock after flattening; it runs out with its lease");
    }
    if matches!(done, Ok(true)) {
        tracing::info!(volume.id = %id, depth = entry.lineage.depth, "flattened a clone past the chain depth limit");
    }
    done
}
