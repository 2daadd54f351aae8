//! RBD snapshots: a CSI snapshot is an RBD snapshot named by its key
//! (`snap-<32 hex>`) on its source volume's image, and an entry `s.<key>`
//! in the pool's state object (docs/rbd-state.md) that promises its size.
//!
//! - create (under the source volume's hold): record the entry as
//!   `creating`, its size admitted against the pool; take the RBD snapshot;
//!   mark the entry `ready` with the snapshot's own timestamp. A create cut
//!   off in between is finished by its retry, or judged by the background
//!   work once every create would have ended.
//! - delete: mark the entry `deleting` (its promise ends) and answer; the
//!   background work removes the RBD snapshot (one that format-2 clones
//!   still read from moves to the image's snapshot trash and goes with its
//!   last clone, so clones never break) and then the entry.
//! - a volume deleted while it has snapshots keeps its image under a name
//!   derived from the image's RBD id ([`crate::images`]), so its snapshots
//!   stay listed and restorable and its own name is free at once; the image
//!   goes to the trash with its last snapshot.

use swell_storage::snapshot::{from_unix_nanos, snapshot_key, unix_nanos};
use swell_storage::{BackendError, Created, RbdVolume, SnapshotId, SnapshotInfo};

use swell_storage::rbd_volume::key_prefix;

use crate::KIND;
use crate::commit::{Change, Outcome};
use crate::config::RbdConfig;
use crate::context::{Call, Pool};
use crate::errors::RbdError;
use crate::images::{drop_snapshot, image_named, take_snapshot};
use crate::state::{self, Entry, Phase, SnapshotEntry};
use crate::trash;

/// Where this install's snapshots in `pool` live, as their ids say it:
/// `<cluster>:<pool>`, or `<cluster>:<pool>:<namespace>` in a namespace
/// (as volume ids, [`key_prefix`]).
fn place(config: &RbdConfig, pool: &str) -> String {
    key_prefix(&config.access.cluster_id, pool, &config.namespace).trim_end_matches(':').to_owned()
}

/// The id of snapshot `key` in `pool`.
fn snapshot_id(config: &RbdConfig, pool: &str, key: &str) -> Result<SnapshotId, BackendError> {
    SnapshotId::new(KIND, &place(config, pool), key)
        .map_err(|e| BackendError::InvalidParameter { name: "pool".into(), reason: format!("{pool:?} cannot be part of a snapshot id: {e}") })
}

/// The pool of one of this install's snapshots (its cluster and
/// namespace), `None` for anyone else's.
pub(crate) fn pool_of(config: &RbdConfig, id: &SnapshotId) -> Option<String> {
    let pool = id.place().split(':').nth(1)?;
    (id.backend() == KIND && place(config, pool) == id.place()).then(|| pool.to_owned())
}

fn info(config: &RbdConfig, pool: &str, key: &str, entry: &SnapshotEntry) -> Result<SnapshotInfo, RbdError> {
    Ok(SnapshotInfo {
        id: snapshot_id(config, pool, key)?,
        name: entry.name.clone(),
        source: entry.source_volume.clone(),
        size_bytes: entry.size_bytes,
        created: from_unix_nanos(entry.created_unix_nanos),
        ready: entry.phase == Phase::Ready,
    })
}

/// CreateSnapshot's work, the caller holding the source volume.
pub(crate) fn create(call: &Call<'_>, source: &RbdVolume, name: &str) -> Result<Created<SnapshotInfo>, RbdError> {
    let source_id = source.id();
    let pool = call.existing_pool(&source.pool)?;
    let key = snapshot_key(name);
    let config = call.config();
    let existing = pool.snapshot_entry(&key)?;
    let generation = match &existing {
        Some(entry) if entry.phase != Phase::Deleting && entry.source_volume != source_id => {
            let reason = format!("snapshot {} is of volume {}, not {source_id}", snapshot_id(config, &source.pool, &key)?, entry.source_volume);
            return Err(BackendError::NameTaken { name: name.to_owned(), reason }.into());
        }
        Some(entry) if entry.phase == Phase::Ready => return Ok(Created::Existing(info(config, &source.pool, &key, entry)?)),
        // A deleted snapshot of that name: finished now, so the name is free.
        Some(entry) if entry.phase == Phase::Deleting => {
            finish_delete(&pool, &key, entry)?;
            0
        }
        Some(entry) => entry.generation,
        None => 0,
    };
    let volume = pool.entry(&source.image)?.filter(Entry::live);
    let header = pool.header(&source_id, &source.image)?;
    let (Some(volume), Some(header)) = (volume, header) else { return Err(BackendError::NotFound(source_id).into()) };
    let mut entry = SnapshotEntry {
        name: name.to_owned(),
        source_volume: source_id.clone(),
        source_image: source.image.clone(),
        source_image_id: header.id.clone(),
        size_bytes: header.size,
        created_unix_nanos: 0,
        phase: Phase::Creating,
        depth: volume.lineage.depth,
        updated_unix: 0,
        generation,
    };
    entry = stored(pool.commit(Change::PutSnapshot { key: key.clone(), entry })?)?;
    fail::fail_point!("rbd-snapshot-after-intent");
    call.time_left("rbd_snap_create")?;
    entry.created_unix_nanos = unix_nanos(take_snapshot(pool.io(), &source.image, &key).map_err(|e| RbdError::osd("rbd_snap_create", e, Some(&source_id)))?);
    entry.phase = Phase::Ready;
    let entry = stored(pool.commit(Change::PutSnapshot { key: key.clone(), entry })?)?;
    Ok(Created::New(info(config, &source.pool, &key, &entry)?))
}

fn stored(outcome: Outcome) -> Result<SnapshotEntry, RbdError> {
    match outcome {
        Outcome::SnapshotStored(entry) => Ok(entry),
        other => Err(BackendError::corrupt("record snapshot", format!("unexpected outcome {other:?}")).into()),
    }
}

/// DeleteSnapshot's work: the entry marked deleted (its promise ends); the
/// rest is the background work's ([`finish_delete`]).
pub(crate) fn delete(call: &Call<'_>, pool: &str, key: &str) -> Result<(), RbdError> {
    let Some(pool) = call.pool(pool)? else { return Ok(()) };
    match pool.snapshot_entry(key)? {
        Some(entry) if entry.phase != Phase::Deleting => {
            let tombstone = SnapshotEntry { phase: Phase::Deleting, ..entry };
            pool.commit(Change::PutSnapshot { key: key.to_owned(), entry: tombstone }).map(drop)
        }
        _ => Ok(()),
    }
}

/// A deleted snapshot: its RBD snapshot removed, its image to the trash if
/// the image was kept only for its snapshots and this was the last, then
/// its entry removed.
pub(crate) fn finish_delete(pool: &Pool<'_>, key: &str, entry: &SnapshotEntry) -> Result<(), RbdError> {
    let fail = |step: &str, e| RbdError::osd(format!("{step} of snapshot {key}"), e, None);
    if let Some(image) = image_named(pool.io(), &entry.source_image, &entry.source_image_id).map_err(|e| fail("find the image", e))? {
        pool.call().time_left("rbd_snap_remove")?;
        drop_snapshot(pool.io(), &image, key).map_err(|e| fail("rbd_snap_remove", e))?;
        if image != entry.source_image {
            let handle = pool.io().open_read_only(&image).map_err(|e| fail("open the retired image", e))?;
            let left = handle.snapshots();
            handle.close().map_err(|e| fail("close the retired image", e))?;
            if left.map_err(|e| fail("list snapshots", e))?.is_empty() {
                tracing::info!(image, "the last snapshot of a deleted volume went; its image goes to the trash");
                trash::move_to_trash(pool.io(), &image).map_err(|e| fail("rbd_trash_move", e))?;
            }
        }
    }
    pool.commit(Change::RemoveSnapshot { key: key.to_owned(), generation: Some(entry.generation) }).map(drop)
}

/// A create older than any create can take: ready when its RBD snapshot
/// exists, dropped with its promise when not.
pub(crate) fn confirm_create(pool: &Pool<'_>, key: &str, entry: &SnapshotEntry) -> Result<(), RbdError> {
    if swell_storage::expansion::now_unix().saturating_sub(entry.updated_unix) < pool.call().config().create_grace().as_secs() {
        return Ok(());
    }
    let fail = |e| RbdError::osd(format!("find the RBD snapshot {key}"), e, None);
    let taken = match image_named(pool.io(), &entry.source_image, &entry.source_image_id).map_err(fail)? {
        Some(image) => {
            let handle = pool.io().open_read_only(&image).map_err(fail)?;
            let found = handle.snapshots().and_then(|snaps| snaps.iter().find(|s| s.name == key).map(|s| handle.snapshot_time(s.id)).transpose());
            handle.close().map_err(fail)?;
            found.map_err(fail)?
        }
        None => None,
    };
    let change = match taken {
        Some(time) => {
            Change::PutSnapshot { key: key.to_owned(), entry: SnapshotEntry { phase: Phase::Ready, created_unix_nanos: unix_nanos(time), ..entry.clone() } }
        }
        None => {
            tracing::info!(snapshot = key, "a snapshot's create was cut off before it was taken; dropping its promise");
            Change::RemoveSnapshot { key: key.to_owned(), generation: Some(entry.generation) }
        }
    };
    pool.commit(change).map(drop)
}

/// A snapshot, read now; `None` unless it is cut (ready).
pub(crate) fn read(call: &Call<'_>, pool: &str, key: &str) -> Result<Option<SnapshotInfo>, RbdError> {
    let Some(pool) = call.pool(pool)? else { return Ok(None) };
    match pool.snapshot_entry(key)? {
        Some(entry) if entry.phase == Phase::Ready => Ok(Some(info(call.config(), pool.name(), key, &entry)?)),
        _ => Ok(None),
    }
}

/// Every snapshot that is cut (of `source` only, when given), in id order.
pub(crate) fn list(call: &Call<'_>, source: Option<&RbdVolume>) -> Result<Vec<SnapshotInfo>, RbdError> {
    let config = call.config();
    let wanted = source.map(RbdVolume::id);
    let cut = |pool: &Pool<'_>| -> Result<Vec<SnapshotInfo>, RbdError> {
        let entries = state::all_snapshots(pool.io(), pool.layout())?;
        Ok(entries
            .into_iter()
            .filter(|(_, entry)| entry.phase == Phase::Ready && wanted.as_ref().is_none_or(|w| *w == entry.source_volume))
            // A pool whose name cannot be part of an id holds no Swell snapshot.
            .filter_map(|(key, entry)| info(config, pool.name(), &key, &entry).ok())
            .collect())
    };
    let mut found = match source {
        Some(volume) => call.pool(&volume.pool)?.map(|pool| cut(&pool)).transpose()?.unwrap_or_default(),
        None => call.each_pool(cut)?,
    };
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}
