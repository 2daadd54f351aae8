//! The RBD volume operations, each one blocking call on the shared
//! connection (run under a deadline by [`super::connection::Connector`]).
//!
//! Each step, and why it is there:
//! - create: hold the volume (no other replica creates, grows or deletes it
//!   meanwhile); record it as being created, its bytes promised and
//!   admitted against the pool in the same write (the only way two creates
//!   cannot both take the last free bytes); then make the image. The background work confirms the entry
//!   once the image exists, or drops it (and its promise) if the create was
//!   cut off before the image was made and never retried.
//! - grow: read the header and grow it in place in one compare-and-set
//!   write ([`super::header`]), then tell the image's clients. The
//!   expander around it holds the volume and records the wish and the
//!   outcome.
//! - delete: under the volume's hold, mark its entry deleted (its promise
//!   ends) and answer. The background work moves the image to the trash
//!   (freeing the name; a create of the same name that comes first does it
//!   itself), drops the entry, and removes the trashed data
//!   ([`super::trash`]).

use std::time::Instant;

use swell_storage::{BackendError, Created, ExpansionRecord, RbdVolume, VolumeId, VolumeInfo};

use super::backend::{IMAGE_FEATURES, Shared};
use super::commit::Change;
use super::connection::{Connection, ensure_time_left};
use super::errors::RbdError;
use super::ffi::{Errno, IoCtx};
use super::state::{self, Entry, Lineage, Phase};
use super::{header, snapshots};

/// How often a grow whose header moved under it reads it again.
const GROW_ATTEMPTS: usize = 3;

/// A name whose image is live under another volume's name (the names'
/// hashes collide): the caller must pick another name.
pub(crate) fn belongs_elsewhere(name: &str, volume: &RbdVolume, owner: &str) -> RbdError {
    BackendError::NameTaken { name: name.to_owned(), reason: format!("its image {} belongs to volume {owner:?}", volume.spec()) }.into()
}

pub(crate) fn read_header(io: &IoCtx, id: &VolumeId, image: &str) -> Result<Option<header::Header>, RbdError> {
    header::read(io, image).map_err(|e| RbdError::osd("read image header", e, Some(id)))
}

pub(crate) fn create_blocking(shared: &Shared, conn: &Connection, deadline: Instant, volume: &RbdVolume, name: &str, size: u64) -> Result<Created, RbdError> {
    let id = volume.id();
    let (pool, image) = (&volume.pool, &volume.image);
    let io = Shared::io(conn, pool)?;
    let entry = state::read_entry(&io, image)?;
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
            if let Some(found) = read_header(&io, &id, image)? {
                return Ok(Created::Existing(info(found.size)));
            }
        }
        // A deleted volume whose image the background work has not moved
        // away yet: move it now, so the name is free at once.
        Some(_) => {
            ensure_time_left(deadline, "rbd_trash_move", shared.config.op_timeout)?;
            snapshots::retire(&io, image).map_err(|e| RbdError::osd("move a deleted volume's image away", e, Some(&id)))?;
        }
        None => {}
    }
    let generation = entry.map_or(0, |e| e.record.generation);
    let intent = ExpansionRecord { generation, ..ExpansionRecord::new(&id, size, size) };
    let change =
        Change::Put { image: image.clone(), name: Some(name.to_owned()), phase: Some(Phase::Creating), lineage: Some(Lineage::default()), record: intent };
    shared.commit(conn, &io, pool, change, deadline)?;
    fail::fail_point!("rbd-create-after-intent");
    ensure_time_left(deadline, "rbd_create", shared.config.op_timeout)?;
    match make_image(shared, &io, &id, image, size, || io.create_image(image, size, IMAGE_FEATURES))? {
        Made::New => Ok(Created::New(info(size))),
        // An image of this name Swell had no entry for (made before Swell
        // kept entries): adopted as it is; the background work records its
        // real size when it confirms the entry.
        Made::Existing(found) => Ok(Created::Existing(info(found))),
    }
}

/// What making an image found.
pub(crate) enum Made {
    New,
    Existing(u64),
}

/// Makes the image. librbd makes one in steps (directory entry, id object,
/// header): a create killed between them leaves a name that exists without
/// a header, which no one can open and every later create would trip on
/// (EEXIST). Such a half-made image is removed and made again: the caller
/// holds the volume, so no other process is making it, and `making` says
/// whether an earlier call of this process still is.
/// `make` is the librbd call that makes it (a create, or a clone).
pub(crate) fn make_image(shared: &Shared, io: &IoCtx, id: &VolumeId, image: &str, size: u64, make: impl Fn() -> Result<(), Errno>) -> Result<Made, RbdError> {
    let Some(_making) = shared.making.try_acquire(image) else {
        let reason = "an earlier create of it is still running in librbd".to_owned();
        return Err(BackendError::Contended { step: format!("create {id}"), reason }.into());
    };
    for _ in 0..2 {
        match make() {
            Ok(()) => return Ok(Made::New),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(RbdError::osd("make image", e, Some(id)).asking(size)),
        }
        if let Some(found) = read_header(io, id, image)? {
            return Ok(Made::Existing(found.size));
        }
        tracing::warn!(volume.id = %id, "removing an image a killed create left half made");
        match io.remove_image(image) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(RbdError::osd("rbd_remove of a half-made image", e, Some(id))),
        }
    }
    Err(RbdError::osd("rbd_create", Errno::EEXIST, Some(id)))
}

pub(crate) fn volume_blocking(conn: &Connection, volume: &RbdVolume) -> Result<Option<VolumeInfo>, RbdError> {
    let id = volume.id();
    let Some(io) = conn.pool(&volume.pool)? else { return Ok(None) };
    // A volume is a live entry and an image with a header.
    let Some(entry) = state::read_entry(&io, &volume.image)?.filter(Entry::live) else { return Ok(None) };
    Ok(read_header(&io, &id, &volume.image)?.map(|h| VolumeInfo { id, name: entry.name, size_bytes: h.size }))
}

pub(crate) fn delete_blocking(shared: &Shared, conn: &Connection, deadline: Instant, volume: &RbdVolume) -> Result<(), RbdError> {
    let Some(io) = conn.pool(&volume.pool)? else { return Ok(()) };
    match state::read_entry(&io, &volume.image)? {
        Some(entry) if entry.live() => {
            let tombstone = Change::Put { image: volume.image.clone(), name: None, phase: Some(Phase::Deleting), lineage: None, record: entry.record };
            shared.commit(conn, &io, &volume.pool, tombstone, deadline).map(drop)
        }
        Some(_) => Ok(()),
        // An image without an entry (its delete was cut off after the entry
        // went, or it predates entries): moved away now.
        None => {
            ensure_time_left(deadline, "rbd_trash_move", shared.config.op_timeout)?;
            snapshots::retire(&io, &volume.image).map_err(|e| RbdError::osd("move a deleted volume's image away", e, Some(&volume.id())))
        }
    }
}

pub(crate) fn grow_blocking(shared: &Shared, conn: &Connection, deadline: Instant, volume: &RbdVolume, target: u64) -> Result<u64, RbdError> {
    fail::fail_point!("rbd-grow-before-resize");
    let id = volume.id();
    let not_found = || RbdError::Refused(BackendError::NotFound(id.clone()));
    let io = conn.pool(&volume.pool)?.ok_or_else(not_found)?;
    let read = || header::read(&io, &volume.image).map_err(|e| RbdError::osd("read image header", e, Some(&id)))?.ok_or_else(not_found);
    let mut found = read()?;
    for _ in 0..GROW_ATTEMPTS {
        if found.size >= target {
            break;
        }
        ensure_time_left(deadline, "grow image", shared.config.op_timeout)?;
        let grown = if found.grows_in_place() {
            header::grow(&io, &found, target)
        } else {
            io.open(&volume.image).and_then(|img| {
                img.grow(target)?;
                img.close()
            })
        };
        match grown {
            // The header moved since it was read: read it again and decide anew.
            Ok(()) | Err(Errno::ECANCELED) => found = read()?,
            Err(e) => return Err(RbdError::osd("grow image", e, Some(&id)).asking(target.saturating_sub(found.size))),
        }
    }
    fail::fail_point!("rbd-grow-before-announce");
    announce(&io, &id, &found)?;
    Ok(found.size)
}

/// Tells the clients of `volume`'s image to re-read its size.
pub(crate) fn announce_blocking(conn: &Connection, volume: &RbdVolume) -> Result<(), RbdError> {
    let id = volume.id();
    let not_found = || RbdError::Refused(BackendError::NotFound(id.clone()));
    let io = conn.pool(&volume.pool)?.ok_or_else(not_found)?;
    let found = read_header(&io, &id, &volume.image)?.ok_or_else(not_found)?;
    announce(&io, &id, &found)
}

/// Tells the image's clients to re-read its size. A dead client's watch
/// lingers until the OSD expires it; it cannot be told, and it has nothing
/// mapped any more, so it is counted, not waited for.
fn announce(io: &IoCtx, id: &VolumeId, found: &header::Header) -> Result<(), RbdError> {
    let reply = header::announce(io, found).map_err(|e| RbdError::osd(format!("notify {}", found.object()), e, Some(id)))?;
    tracing::debug!(volume.id = %id, acked = reply.acked, silent = reply.timed_out, size = found.size, "announced the image's size to its watchers");
    Ok(())
}

/// Up to `limit` volumes (0: all) whose ids come after `after`, in id
/// order: pools in the order their ids sort (`<pool>:` as a string), and in
/// each pool the state object's entries, read a page at a time from where
/// the window starts (so a page costs what it returns).
pub(crate) fn list_blocking(shared: &Shared, conn: &Connection, after: Option<&VolumeId>, limit: usize) -> Result<Vec<VolumeInfo>, RbdError> {
    let cluster = &shared.config.access.cluster_id;
    let mut pools = shared.readings.pools(conn)?;
    pools.sort_by_key(|pool| format!("{pool}:"));
    let mut volumes = Vec::new();
    for pool in pools {
        let prefix = format!("{cluster}:{pool}:");
        let mut from = match after.map(VolumeId::key) {
            Some(key) if key.starts_with(&prefix) => Some(key[prefix.len()..].to_owned()),
            // Every id of this pool sorts before the window's start.
            Some(key) if prefix.as_str() < key => continue,
            _ => None,
        };
        let Some(io) = conn.pool(&pool)? else { continue };
        loop {
            let wanted = if limit == 0 { 4096 } else { limit - volumes.len() };
            if wanted == 0 {
                return Ok(volumes);
            }
            let page = state::page_entries(&io, from.as_deref(), wanted)?;
            let read = page.len();
            from = page.last().map(|(image, _)| image.clone());
            for (image, entry) in page {
                // Pools whose names cannot be part of an id hold no Swell volume.
                let Ok(volume) = RbdVolume::at(cluster, &pool, &image) else { continue };
                if entry.live() {
                    volumes.push(VolumeInfo { id: volume.id(), name: entry.name, size_bytes: entry.record.current_bytes });
                }
            }
            if read < wanted {
                break;
            }
        }
    }
    Ok(volumes)
}
