//! What several operations do to RBD images: make one (repairing a half-made
//! one), move a deleted volume's image away (kept, renamed, while Swell's
//! snapshots of it remain; else to the trash), find an image by the RBD id
//! it was made with, and take or drop a snapshot of one.

use std::time::SystemTime;

use swell_storage::volume_id::name_digest;
use swell_storage::{BackendError, VolumeId};

use crate::context::Pool;
use crate::errors::RbdError;
use crate::ffi::{Errno, IoCtx, RBD_FEATURE_LAYERING};
use crate::{header, trash};

/// The features of every image Swell creates: layering only, so no
/// exclusive lock is ever needed (or left behind by a dead client) and the
/// header can be grown in place.
pub(crate) const IMAGE_FEATURES: u64 = RBD_FEATURE_LAYERING;

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
pub(crate) fn make_image(pool: &Pool<'_>, id: &VolumeId, image: &str, size: u64, make: impl Fn() -> Result<(), Errno>) -> Result<Made, RbdError> {
    let Some(_making) = pool.call().shared().making().try_acquire(image) else {
        let reason = "an earlier create of it is still running in librbd".to_owned();
        return Err(BackendError::Contended { step: format!("create {id}"), reason }.into());
    };
    for _ in 0..2 {
        match make() {
            Ok(()) => return Ok(Made::New),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(RbdError::osd("make image", e, Some(id)).asking(size)),
        }
        if let Some(found) = pool.header(id, image)? {
            return Ok(Made::Existing(found.size));
        }
        tracing::warn!(volume.id = %id, "removing an image a killed create left half made");
        match pool.io().remove_image(image) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(RbdError::osd("rbd_remove of a half-made image", e, Some(id))),
        }
    }
    Err(RbdError::osd("rbd_create", Errno::EEXIST, Some(id)))
}

/// The name a deleted volume's image is kept under while snapshots of it
/// remain: a Swell image name (so the trash purge knows it), derived from
/// the image's RBD id (so a snapshot entry finds it from what it recorded).
pub(crate) fn retired_image(image_id: &str) -> String {
    format!("{}{}", swell_storage::rbd_volume::IMAGE_PREFIX, name_digest(&format!("retired:{image_id}")))
}

/// The name the image of RBD id `image_id` has now: the one it was made
/// with, or its retired name; `None` when it is gone.
pub(crate) fn image_named(io: &IoCtx, made_as: &str, image_id: &str) -> Result<Option<String>, Errno> {
    for name in [made_as.to_owned(), retired_image(image_id)] {
        if header::image_id(io, &name)?.as_deref() == Some(image_id) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Moves a deleted volume's image out of its name: kept as a retired image
/// while it has user snapshots (Swell's snapshots of it), else to the trash.
pub(crate) fn retire(io: &IoCtx, image: &str) -> Result<(), Errno> {
    let Some(id) = header::image_id(io, image)? else { return Ok(()) };
    let image_handle = match io.open_read_only(image) {
        Ok(handle) => handle,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let snapshots = image_handle.snapshots();
    image_handle.close()?;
    if snapshots?.is_empty() {
        return trash::move_to_trash(io, image);
    }
    let retired = retired_image(&id);
    tracing::info!(image, retired, "keeping a deleted volume's image for its snapshots");
    match io.rename_image(image, &retired) {
        // Moved away meanwhile (by the background work, or a create).
        Err(Errno::ENOENT) => Ok(()),
        other => other,
    }
}

/// Moves the image of volume `id` away, in its pool, if the call has time
/// left for it.
pub(crate) fn retire_volume(pool: &Pool<'_>, id: &VolumeId, image: &str) -> Result<(), RbdError> {
    pool.call().time_left("rbd_trash_move")?;
    retire(pool.io(), image).map_err(|e| RbdError::osd("move a deleted volume's image away", e, Some(id)))
}

/// Takes RBD snapshot `name` of `image` (an earlier, cut-off attempt's is
/// kept) and returns when it was taken.
pub(crate) fn take_snapshot(io: &IoCtx, image: &str, name: &str) -> Result<SystemTime, Errno> {
    let handle = io.open(image)?;
    let taken = match handle.create_snapshot(name) {
        Ok(()) | Err(Errno::EEXIST) => handle.snapshots().and_then(|snaps| {
            let snap = snaps.into_iter().find(|s| s.name == name).ok_or(Errno::ENOENT)?;
            handle.snapshot_time(snap.id)
        }),
        Err(e) => Err(e),
    };
    handle.close()?;
    taken
}

/// Removes RBD snapshot `name` of `image`; one that is gone already is fine.
pub(crate) fn drop_snapshot(io: &IoCtx, image: &str, name: &str) -> Result<(), Errno> {
    let handle = match io.open(image) {
        Ok(handle) => handle,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let removed = match handle.remove_snapshot(name) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    };
    handle.close()?;
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_made_without_exclusive_lock() {
        assert_eq!(IMAGE_FEATURES, RBD_FEATURE_LAYERING);
        assert_eq!(IMAGE_FEATURES & crate::ffi::RBD_FEATURE_EXCLUSIVE_LOCK, 0);
    }
}
