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
//!   derived from the image's RBD id (`retired_image`), so its snapshots
//!   stay listed and restorable and its own name is free at once; the image
//!   goes to the trash with its last snapshot.

use std::time::{Instant, SystemTime};

use swell_storage::snapshot::{snapshot_key, unix_nanos};
use swell_storage::volume_id::name_digest;
use swell_storage::{BackendError, Created, RbdVolume, SnapshotId, SnapshotInfo, VolumeId};

use super::backend::Shared;
use super::commit::{Change, Outcome};
use super::connection::{Connection, ensure_time_left};
use super::errors::RbdError;
use super::ffi::{Errno, IoCtx};
use super::state::{self, Entry, Phase, SnapshotEntry};
use super::{KIND, header, trash};

/// Where the snapshots of `pool` in `cluster` live, as their ids say it.
pub fn place(cluster: &str, pool: &str) -> String {
    format!("{cluster}:{pool}")
}

/// The id of snapshot `key` in `pool`.
pub fn snapshot_id(cluster: &str, pool: &str, key: &str) -> Result<SnapshotId, BackendError> {
    SnapshotId::new(KIND, &place(cluster, pool), key)
        .map_err(|e| BackendError::InvalidParameter { name: "pool".into(), reason: format!("{pool:?} cannot be part of a snapshot id: {e}") })
}

/// The name a deleted volume's image is kept under while snapshots of it
/// remain: a Swell image name (so the trash purge knows it), derived from
/// the image's RBD id (so a snapshot entry finds it from what it recorded).
pub fn retired_image(image_id: &str) -> String {
    format!("{}{}", swell_storage::rbd_volume::IMAGE_PREFIX, name_digest(&format!("retired:{image_id}")))
}

/// The name the image of RBD id `image_id` has now: the one it was made
/// with, or its retired name; `None` when it is gone.
pub fn image_named(io: &IoCtx, made_as: &str, image_id: &str) -> Result<Option<String>, Errno> {
    for name in [made_as.to_owned(), retired_image(image_id)] {
        if header::image_id(io, &name)?.as_deref() == Some(image_id) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Moves a deleted volume's image out of its name: kept as a retired image
/// while it has user snapshots (Swell's snapshots of it), else to the trash.
pub fn retire(io: &IoCtx, image: &str) -> Result<(), Errno> {
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

fn info(cluster: &str, pool: &str, key: &str, entry: &SnapshotEntry) -> Result<SnapshotInfo, RbdError> {
    let source: VolumeId = entry.source_volume.parse().map_err(|e| BackendError::corrupt(format!("read snapshot {key}"), e))?;
    Ok(SnapshotInfo {
        id: snapshot_id(cluster, pool, key)?,
        name: entry.name.clone(),
        source,
        size_bytes: entry.size_bytes,
        created: swell_storage::snapshot::from_unix_nanos(entry.created_unix_nanos),
        ready: entry.phase == Phase::Ready,
    })
}

/// CreateSnapshot's work, the caller holding the source volume.
pub(crate) fn create_blocking(
    shared: &Shared,
    conn: &Connection,
    deadline: Instant,
    source: &RbdVolume,
    name: &str,
) -> Result<Created<SnapshotInfo>, RbdError> {
    let source_id = source.id();
    let io = Shared::io(conn, &source.pool)?;
    let key = snapshot_key(name);
    let cluster = &shared.config.access.cluster_id;
    let existing = state::read_snapshot(&io, &key)?;
    let generation = match &existing {
        Some(entry) if entry.phase != Phase::Deleting && entry.source_volume != source_id.to_string() => {
            let reason = format!("snapshot {} is of volume {}, not {source_id}", snapshot_id(cluster, &source.pool, &key)?, entry.source_volume);
            return Err(BackendError::NameTaken { name: name.to_owned(), reason }.into());
        }
        Some(entry) if entry.phase == Phase::Ready => return Ok(Created::Existing(info(cluster, &source.pool, &key, entry)?)),
        // A deleted snapshot of that name: finished now, so the name is free.
        Some(entry) if entry.phase == Phase::Deleting => {
            finish_delete(shared, conn, &io, &source.pool, &key, entry, deadline)?;
            0
        }
        Some(entry) => entry.generation,
        None => 0,
    };
    let volume = state::read_entry(&io, &source.image)?.filter(Entry::live);
    let header = super::volumes::read_header(&io, &source_id, &source.image)?;
    let (Some(volume), Some(header)) = (volume, header) else { return Err(BackendError::NotFound(source_id).into()) };
    let mut entry = SnapshotEntry {
        name: name.to_owned(),
        source_volume: source_id.to_string(),
        source_image: source.image.clone(),
        source_image_id: header.id.clone(),
        size_bytes: header.size,
        created_unix_nanos: 0,
        phase: Phase::Creating,
        depth: volume.lineage.depth,
        updated_unix: 0,
        generation,
    };
    entry = stored(shared.commit(conn, &io, &source.pool, Change::PutSnapshot { key: key.clone(), entry }, deadline)?)?;
    fail::fail_point!("rbd-snapshot-after-intent");
    ensure_time_left(deadline, "rbd_snap_create", shared.config.op_timeout)?;
    entry.created_unix_nanos = unix_nanos(take_snapshot(&io, &source.image, &key).map_err(|e| RbdError::osd("rbd_snap_create", e, Some(&source_id)))?);
    entry.phase = Phase::Ready;
    let entry = stored(shared.commit(conn, &io, &source.pool, Change::PutSnapshot { key: key.clone(), entry }, deadline)?)?;
    Ok(Created::New(info(cluster, &source.pool, &key, &entry)?))
}

fn stored(outcome: Outcome) -> Result<SnapshotEntry, RbdError> {
    match outcome {
        Outcome::SnapshotStored(entry) => Ok(entry),
        other => Err(BackendError::corrupt("record snapshot", format!("unexpected outcome {other:?}")).into()),
    }
}

/// Takes RBD snapshot `name` of `image` (an earlier, cut-off attempt's is
/// kept) and returns when it was taken.
pub fn take_snapshot(io: &IoCtx, image: &str, name: &str) -> Result<SystemTime, Errno> {
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
pub fn drop_snapshot(io: &IoCtx, image: &str, name: &str) -> Result<(), Errno> {
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

/// DeleteSnapshot's work: the entry marked deleted (its promise ends); the
/// rest is the background work's ([`finish_delete`]).
pub(crate) fn delete_blocking(shared: &Shared, conn: &Connection, deadline: Instant, pool: &str, key: &str) -> Result<(), RbdError> {
    let Some(io) = conn.pool(pool)? else { return Ok(()) };
    match state::read_snapshot(&io, key)? {
        Some(entry) if entry.phase != Phase::Deleting => {
            let tombstone = SnapshotEntry { phase: Phase::Deleting, ..entry };
            shared.commit(conn, &io, pool, Change::PutSnapshot { key: key.to_owned(), entry: tombstone }, deadline).map(drop)
        }
        _ => Ok(()),
    }
}

/// A deleted snapshot: its RBD snapshot removed, its image to the trash if
/// the image was kept only for its snapshots and this was the last, then
/// its entry removed.
pub(crate) fn finish_delete(
    shared: &Shared,
    conn: &Connection,
    io: &IoCtx,
    pool: &str,
    key: &str,
    entry: &SnapshotEntry,
    deadline: Instant,
) -> Result<(), RbdError> {
    let fail = |step: &str, e| RbdError::osd(format!("{step} of snapshot {key}"), e, None);
    if let Some(image) = image_named(io, &entry.source_image, &entry.source_image_id).map_err(|e| fail("find the image", e))? {
        ensure_time_left(deadline, "rbd_snap_remove", shared.config.op_timeout)?;
        drop_snapshot(io, &image, key).map_err(|e| fail("rbd_snap_remove", e))?;
        if image != entry.source_image {
            let handle = io.open_read_only(&image).map_err(|e| fail("open the retired image", e))?;
            let left = handle.snapshots();
            handle.close().map_err(|e| fail("close the retired image", e))?;
            if left.map_err(|e| fail("list snapshots", e))?.is_empty() {
                tracing::info!(image, "the last snapshot of a deleted volume went; its image goes to the trash");
                trash::move_to_trash(io, &image).map_err(|e| fail("rbd_trash_move", e))?;
            }
        }
    }
    shared.commit(conn, io, pool, Change::RemoveSnapshot { key: key.to_owned(), generation: Some(entry.generation) }, deadline).map(drop)
}

/// A create older than any create can take: ready when its RBD snapshot
/// exists, dropped with its promise when not.
pub(crate) fn confirm_create(
    shared: &Shared,
    conn: &Connection,
    io: &IoCtx,
    pool: &str,
    key: &str,
    entry: &SnapshotEntry,
    deadline: Instant,
) -> Result<(), RbdError> {
    let grace = shared.config.call_deadline().saturating_mul(super::housekeeping::CREATE_GRACE_DEADLINES).as_secs();
    if swell_storage::expansion::now_unix().saturating_sub(entry.updated_unix) < grace {
        return Ok(());
    }
    let fail = |e| RbdError::osd(format!("find the RBD snapshot {key}"), e, None);
    let taken = match image_named(io, &entry.source_image, &entry.source_image_id).map_err(fail)? {
        Some(image) => {
            let handle = io.open_read_only(&image).map_err(fail)?;
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
    shared.commit(conn, io, pool, change, deadline).map(drop)
}

/// A snapshot, read now; `None` unless it is cut (ready) or being cut.
pub(crate) fn read_blocking(shared: &Shared, conn: &Connection, pool: &str, key: &str) -> Result<Option<SnapshotInfo>, RbdError> {
    let Some(io) = conn.pool(pool)? else { return Ok(None) };
    match state::read_snapshot(&io, key)? {
        Some(entry) if entry.phase == Phase::Ready => Ok(Some(info(&shared.config.access.cluster_id, pool, key, &entry)?)),
        _ => Ok(None),
    }
}

/// Every snapshot that is cut (of `source` only, when given), in id order.
pub(crate) fn list_blocking(shared: &Shared, conn: &Connection, source: Option<&RbdVolume>) -> Result<Vec<SnapshotInfo>, RbdError> {
    let pools = match source {
        Some(volume) => vec![volume.pool.clone()],
        None => shared.readings.pools(conn)?,
    };
    let wanted = source.map(|v| v.id().to_string());
    let mut found = Vec::new();
    for pool in pools {
        let Some(io) = conn.pool(&pool)? else { continue };
        for (key, entry) in state::all_snapshots(&io)? {
            if entry.phase == Phase::Ready && wanted.as_ref().is_none_or(|w| *w == entry.source_volume) {
                // A pool whose name cannot be part of an id holds no Swell snapshot.
                if let Ok(info) = info(&shared.config.access.cluster_id, &pool, &key, &entry) {
                    found.push(info);
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}
