//! The RBD volume operations, each one blocking call on the shared
//! connection, in the context of a [`Call`] (its deadline and the shared
//! parts of the backend).
//!
//! Each step, and why it is there:
//! - create: hold the volume (no other replica creates, grows or deletes it
//!   meanwhile); record it as being created, its bytes promised and
//!   admitted against the pool in the same write (the only way two creates
//!   cannot both take the last free bytes); then make the image. The background work confirms the entry
//!   once the image exists, or drops it (and its promise) if the create was
//!   cut off before the image was made and never retried.
//! - grow: read the header and grow it in place in one compare-and-set
//!   write ([`crate::header`]), then tell the image's clients. The
//!   expander around it holds the volume and records the wish and the
//!   outcome.
//! - delete: under the volume's hold, take away its auto-grow mark, mark
//!   its entry deleted (its promise ends) and answer. The background work moves the image to the trash
//!   (freeing the name; a create of the same name that comes first does it
//!   itself), drops the entry, and removes the trashed data
//!   ([`crate::trash`]).

use swell_storage::{BackendError, Created, ExpansionRecord, RbdVolume, VolumeId, VolumeInfo};

use crate::commit::Change;
use crate::context::{Call, Pool};
use crate::errors::RbdError;
use crate::ffi::Errno;
use crate::header::{self, Header};
use crate::images::{IMAGE_FEATURES, Made, make_image, retire_volume};
use crate::state::{Entry, Lineage, Phase};

/// How often a grow whose header moved under it reads it again.
const GROW_ATTEMPTS: usize = 3;

/// A name whose image is live under another volume's name (the names'
/// hashes collide): the caller must pick another name.
pub(crate) fn belongs_elsewhere(name: &str, volume: &RbdVolume, owner: &str) -> RbdError {
    BackendError::NameTaken { name: name.to_owned(), reason: format!("its image {} belongs to volume {owner:?}", volume.spec()) }.into()
}

/// CreateVolume's work, the caller holding the volume.
pub(crate) fn create(call: &Call<'_>, volume: &RbdVolume, name: &str, size: u64) -> Result<Created, RbdError> {
    let id = volume.id();
    let image = &volume.image;
    let pool = call.existing_pool(&volume.pool)?;
    let entry = pool.entry(image)?;
    let info = |size_bytes| VolumeInfo { id: id.clone(), name: name.to_owned(), size_bytes };
    match &entry {
        Some(e) if e.live() && e.name != name => return Err(belongs_elsewhere(name, volume, &e.name)),
        Some(Entry { lineage: Lineage { source: Some(source), .. }, phase, .. }) if *phase != Phase::Deleting => {
            let reason = format!("volume {id} was made from {source}, not blank");
            return Err(BackendError::NameTaken { name: name.to_owned(), reason }.into());
        }
        // A retried create: the image is there (or a first attempt that was
        // cut off made it); an entry without its image is made again below.
        Some(e) if e.live() => {
            if let Some(found) = pool.header(&id, image)? {
                return Ok(Created::Existing(info(found.size)));
            }
        }
        // A deleted volume whose image the background work has not moved
        // away yet: move it now, so the name is free at once.
        Some(_) => retire_volume(&pool, &id, image)?,
        None => {}
    }
    let generation = entry.map_or(0, |e| e.record.generation);
    let intent = ExpansionRecord { generation, ..ExpansionRecord::new(&id, size, size) };
    let change =
        Change::Put { image: image.clone(), name: Some(name.to_owned()), phase: Some(Phase::Creating), lineage: Some(Lineage::default()), record: intent };
    pool.commit(change)?;
    fail::fail_point!("rbd-create-after-intent");
    call.time_left("rbd_create")?;
    match make_image(&pool, &id, image, size, || pool.io().create_image(image, size, IMAGE_FEATURES))? {
        Made::New => Ok(Created::New(info(size))),
        // An image of this name Swell had no entry for (made before Swell
        // kept entries): adopted as it is; the background work records its
        // real size when it confirms the entry.
        Made::Existing(found) => Ok(Created::Existing(info(found))),
    }
}

/// A volume, read now: a live entry and an image with a header.
pub(crate) fn read(call: &Call<'_>, volume: &RbdVolume) -> Result<Option<VolumeInfo>, RbdError> {
    let id = volume.id();
    let Some(pool) = call.pool(&volume.pool)? else { return Ok(None) };
    let Some(entry) = pool.entry(&volume.image)?.filter(Entry::live) else { return Ok(None) };
    Ok(pool.header(&id, &volume.image)?.map(|h| VolumeInfo { id, name: entry.name, size_bytes: h.size }))
}

/// DeleteVolume's work, the caller holding the volume.
pub(crate) fn delete(call: &Call<'_>, volume: &RbdVolume) -> Result<(), RbdError> {
    let Some(pool) = call.pool(&volume.pool)? else { return Ok(()) };
    // First, so a retried delete that finds the entry gone still takes it.
    crate::auto_grow::unmark(call, volume)?;
    match pool.entry(&volume.image)? {
        Some(entry) if entry.live() => {
            let tombstone = Change::Put { image: volume.image.clone(), name: None, phase: Some(Phase::Deleting), lineage: None, record: entry.record };
            pool.commit(tombstone).map(drop)
        }
        Some(_) => Ok(()),
        // No entry: not a volume of this install (another install's on a
        // shared pool, or an image another tool made with a Swell-shaped
        // name), or one whose delete finished. Deleted, as the CSI spec
        // lets an unknown id be, and left alone.
        None => {
            tracing::info!(volume.id = %volume.id(), "delete of a volume with no entry in the pool's state: nothing of ours to delete");
            Ok(())
        }
    }
}

/// Grows the volume's image to `target` (never shrinks it) and tells its
/// clients; the size read back.
pub(crate) fn grow(call: &Call<'_>, volume: &RbdVolume, target: u64) -> Result<u64, RbdError> {
    fail::fail_point!("rbd-grow-before-resize");
    let id = volume.id();
    let not_found = || RbdError::Refused(BackendError::NotFound(id.clone()));
    let pool = call.pool(&volume.pool)?.ok_or_else(not_found)?;
    let read = || pool.header(&id, &volume.image)?.ok_or_else(not_found);
    let mut found = read()?;
    for _ in 0..GROW_ATTEMPTS {
        if found.size >= target {
            break;
        }
        call.time_left("grow image")?;
        let grown = if found.grows_in_place() {
            header::grow(pool.io(), &found, target)
        } else {
            pool.io().open(&volume.image).and_then(|img| {
                img.grow(target)?;
                img.close()
            })
        };
        match grown {
            Ok(()) => {
                // Each resize the engine made, for the tests to count per size.
                tracing::debug!(volume.id = %id, from = found.size, to = target, "resized the image");
                found = read()?;
            }
            // The header moved since it was read: read it again and decide anew.
            Err(Errno::ECANCELED) => found = read()?,
            Err(e) => return Err(RbdError::osd("grow image", e, Some(&id)).asking(target.saturating_sub(found.size))),
        }
    }
    fail::fail_point!("rbd-grow-before-announce");
    announce(&pool, &id, &found)?;
    Ok(found.size)
}

/// Tells the clients of `volume`'s image to re-read its size.
pub(crate) fn announce_size(call: &Call<'_>, volume: &RbdVolume) -> Result<(), RbdError> {
    let id = volume.id();
    let not_found = || RbdError::Refused(BackendError::NotFound(id.clone()));
    let pool = call.pool(&volume.pool)?.ok_or_else(not_found)?;
    let found = pool.header(&id, &volume.image)?.ok_or_else(not_found)?;
    announce(&pool, &id, &found)
}

/// Tells the image's clients to re-read its size. A dead client's watch
/// lingers until the OSD expires it; it cannot be told, and it has nothing
/// mapped any more, so it is counted, not waited for.
fn announce(pool: &Pool<'_>, id: &VolumeId, found: &Header) -> Result<(), RbdError> {
    let reply = header::announce(pool.io(), found).map_err(|e| RbdError::osd(format!("notify {}", found.object()), e, Some(id)))?;
    tracing::debug!(volume.id = %id, acked = reply.acked, silent = reply.timed_out, size = found.size, "announced the image's size to its watchers");
    Ok(())
}

/// Up to `limit` volumes (0: all) whose ids come after `after`, in id
/// order ([`Call::volumes_after`]). Their sizes are the ones their records
/// last saw, not read from every header: a page costs one omap read per
/// 512 volumes, and the reconciler's sweep compares each record with its
/// header (docs/expansion-state.md).
pub(crate) fn list(call: &Call<'_>, after: Option<&VolumeId>, limit: usize) -> Result<Vec<VolumeInfo>, RbdError> {
    let volumes = call.volumes_after(after, limit)?;
    Ok(volumes
        .into_iter()
        .filter_map(|(volume, entry)| match entry {
            Ok(entry) => Some(VolumeInfo { id: volume.id(), name: entry.name, size_bytes: entry.record.current_bytes }),
            Err(err) => {
                let err = err.into_backend(call.config().op_timeout);
                tracing::warn!(volume.id = %volume, error = %err, "ListVolumes leaves out a volume whose entry cannot be read");
                None
            }
        })
        .collect())
}
