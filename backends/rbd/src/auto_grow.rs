//! An RBD volume's auto-grow state (docs/auto-grow.md), where the volume
//! lives rather than in the pool's state shards:
//!
//! - its policy record and the usage its node last read, as JSON in the
//!   image's own metadata (`rbd image-meta`), so they go with the image;
//! - the marks of the volumes wanting to grow, as omap keys (the image
//!   names) of one small object per pool and RADOS namespace
//!   ([`WANTED_OBJECT`]), so listing them costs what is marked, and
//!   settling one removes one key.
//!
//! The node writes the usage and the mark with the `rbd` and `rados` CLIs
//! under the same names (`swell_storage::auto_grow::rbd`).

use nix::errno::Errno;
use serde::Serialize;
use serde::de::DeserializeOwned;
use swell_storage::auto_grow::rbd::{RECORD_META, USAGE_META, WANTED_OBJECT};
use swell_storage::auto_grow::{AutoGrowRecord, Usage};
use swell_storage::{BackendError, RbdVolume, VolumeId};

use crate::context::Call;
use crate::errors::RbdError;
use crate::omap;

/// Stores `record` in the metadata of `volume`'s image (NotFound when the
/// image, or its pool, does not exist).
pub(crate) fn store_record(call: &Call<'_>, volume: &RbdVolume, record: &AutoGrowRecord) -> Result<(), RbdError> {
    let id = volume.id();
    let not_found = || RbdError::Refused(BackendError::NotFound(id.clone()));
    let pool = call.pool(&volume.pool)?.ok_or_else(not_found)?;
    let json = to_json(record, &id)?;
    call.time_left("rbd_metadata_set")?;
    let image = match pool.io().open(&volume.image) {
        Ok(image) => image,
        Err(Errno::ENOENT) => return Err(not_found()),
        Err(e) => return Err(RbdError::osd("open the image to store its auto-grow policy", e, Some(&id))),
    };
    let stored = image.set_metadata(RECORD_META, &json);
    image.close().map_err(|e| RbdError::osd("close the image", e, Some(&id)))?;
    stored.map_err(|e| RbdError::osd(format!("rbd_metadata_set {RECORD_META}"), e, Some(&id)))
}

/// The record and usage in the metadata of `volume`'s image, each `None`
/// when unset, both when the image (or its pool) does not exist.
pub(crate) fn read(call: &Call<'_>, volume: &RbdVolume) -> Result<(Option<AutoGrowRecord>, Option<Usage>), RbdError> {
    let id = volume.id();
    let Some(pool) = call.pool(&volume.pool)? else { return Ok((None, None)) };
    let image = match pool.io().open_read_only(&volume.image) {
        Ok(image) => image,
        Err(Errno::ENOENT) => return Ok((None, None)),
        Err(e) => return Err(RbdError::osd("open the image to read its auto-grow state", e, Some(&id))),
    };
    let read = image.metadata(RECORD_META).and_then(|record| Ok((record, image.metadata(USAGE_META)?)));
    image.close().map_err(|e| RbdError::osd("close the image", e, Some(&id)))?;
    let (record, usage) = read.map_err(|e| RbdError::osd("rbd_metadata_get of the auto-grow state", e, Some(&id)))?;
    Ok((from_json(record, RECORD_META, &id)?, from_json(usage, USAGE_META, &id)?))
}

/// The volumes marked as wanting to grow in every pool (this install's
/// namespace), in id order. A key that names no volume of ours is skipped.
pub(crate) fn wanted(call: &Call<'_>) -> Result<Vec<VolumeId>, RbdError> {
    let mut ids = Vec::new();
    for pool in call.pool_names()? {
        let Some(io) = call.conn().pool(&pool)? else { continue };
        let marks = omap::all_entries(&io, WANTED_OBJECT).map_err(|e| RbdError::osd(format!("read {WANTED_OBJECT} in pool {pool}"), e, None))?;
        ids.extend(marks.into_iter().filter_map(|(image, _)| call.volume_in(&pool, &image).ok()).map(|v| v.id()));
    }
    ids.sort();
    Ok(ids)
}

/// Takes `volume`'s mark away; a volume not marked is no error.
pub(crate) fn unmark(call: &Call<'_>, volume: &RbdVolume) -> Result<(), RbdError> {
    let Some(io) = call.conn().pool(&volume.pool)? else { return Ok(()) };
    call.time_left("remove an auto-grow mark")?;
    omap::remove_key(&io, WANTED_OBJECT, &volume.image).map_err(|e| RbdError::osd(format!("remove the mark from {WANTED_OBJECT}"), e, Some(&volume.id())))
}

fn to_json(value: &impl Serialize, id: &VolumeId) -> Result<String, RbdError> {
    serde_json::to_string(value).map_err(|e| RbdError::Refused(BackendError::corrupt(format!("encode the auto-grow policy of {id}"), e.to_string())))
}

fn from_json<T: DeserializeOwned>(raw: Option<String>, key: &str, id: &VolumeId) -> Result<Option<T>, RbdError> {
    raw.map(|raw| serde_json::from_str(&raw))
        .transpose()
        .map_err(|e| RbdError::Refused(BackendError::corrupt(format!("read image metadata {key} of {id}"), format!("unreadable: {e}"))))
}
