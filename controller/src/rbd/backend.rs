//! [`RbdBackend`]: Swell's [`Backend`] over RBD images.
//!
//! A volume named `n` is the image `swell-<32 hex of sha256(n)>` in its
//! pool (`swell_storage::rbd_volume`), so a retried create lands on the
//! same image. What Swell knows about it (the CO's name, its expansion
//! record, the bytes it promised) is its entry in the pool's state object
//! ([`super::state`]); its size is always read from its header.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use swell_storage::locks::KeyedLocks;
use swell_storage::{Backend, BackendError, Capacity, Created, ExpansionRecord, ExpansionStore, Placement, RbdVolume, VolumeId, VolumeInfo};

use super::commit::{Change, Committer, Outcome};
use super::connection::{ConnectSettings, Connection, Connector, ensure_time_left};
use super::errors::RbdError;
use super::ffi::{Errno, IoCtx, RBD_FEATURE_LAYERING};
use super::lease::{Acquired, Leases, Lingering};
use super::readings::{Readings, missing_pool};
use super::state::{self, Entry, Phase};
use super::store::{RbdStore, remove_lock_object};
use super::{KIND, RbdConfig, header, trash};

/// Ceph calls that may be outstanding at once, running or stuck in a hung
/// librados call: bounds the blocking threads a dead cluster can hold, far
/// above what healthy concurrency needs (every call returns within its
/// deadline's op timeouts).
const MAX_OUTSTANDING: usize = 256;
/// The features of every image Swell creates: layering only, so no
/// exclusive lock is ever needed (or left behind by a dead client) and the
/// header can be grown in place.
pub const IMAGE_FEATURES: u64 = RBD_FEATURE_LAYERING;
/// How often a grow whose header moved under it reads it again.
const GROW_ATTEMPTS: usize = 3;
/// How long a create may be in flight before the background work judges
/// its entry: every create ends within its call's deadline, so several of
/// those (and some clock skew between replicas) is plenty.
const CREATE_GRACE_DEADLINES: u32 = 4;

/// What the backend and its store share.
pub(crate) struct Shared {
    pub config: RbdConfig,
    pub connector: Connector,
    pub readings: Readings,
    pub committer: Committer,
    pub leases: Arc<Leases>,
    /// Locks kept a moment for this process's next operation on a volume.
    pub lingering: Arc<Lingering>,
    /// Holds of this process, so its own callers are refused before Ceph
    /// is asked (they would share its Ceph client and lock cookie).
    pub local: KeyedLocks,
    /// Images this process is making right now, until librbd returns (which
    /// may be after the call that asked was answered Timeout).
    pub making: KeyedLocks,
}

impl Shared {
    /// The io context of `pool`; a missing pool is a StorageClass error.
    pub fn io(conn: &Connection, pool: &str) -> Result<Arc<IoCtx>, RbdError> {
        conn.pool(pool)?.ok_or_else(|| missing_pool(pool))
    }

    /// The volume `id` names in this cluster; `Ok(None)` for ids that name
    /// no Swell RBD volume; an error for another cluster's volume.
    pub fn ours(&self, id: &VolumeId, step: &str) -> Result<Option<RbdVolume>, BackendError> {
        let Some(volume) = RbdVolume::parse(id) else { return Ok(None) };
        if volume.cluster != self.config.cluster_id {
            return Err(BackendError::Unavailable {
                step: format!("{step} {id}"),
                reason: format!("the volume belongs to Ceph cluster {:?}; this controller serves {:?}", volume.cluster, self.config.cluster_id),
            });
        }
        Ok(Some(volume))
    }

    /// Applies `change` to `pool`'s state object, admitting new promises
    /// against the pool's room.
    pub fn commit(&self, conn: &Connection, io: &IoCtx, pool: &str, change: Change, deadline: Instant) -> Result<Outcome, RbdError> {
        let room = |total| self.readings.room(conn, pool, total, self.config.overprovision_ratio, self.config.count_foreign_images);
        self.committer.apply(io, pool, change, deadline, &room)
    }
}

/// The RBD backend of one cluster.
#[derive(Clone)]
pub struct RbdBackend {
    shared: Arc<Shared>,
    store: Arc<RbdStore>,
}

/// Why an [`RbdConfig`] cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("rbd configuration: {0}")]
pub struct ConfigError(String);

impl RbdBackend {
    /// A backend for `config`. Nothing is contacted yet: the connection is
    /// made on the first call, so the controller starts while Ceph is down.
    pub fn new(config: RbdConfig) -> Result<Self, ConfigError> {
        for (what, value) in [("cluster id", &config.cluster_id), ("default pool", &config.default_pool)] {
            if VolumeId::new(KIND, value).is_err() || value.contains(':') {
                return Err(ConfigError(format!("{what} {value:?} must be lowercase [a-z0-9._-]")));
            }
        }
        if !(config.overprovision_ratio.is_finite() && config.overprovision_ratio > 0.0) {
            return Err(ConfigError(format!("over-provisioning ratio {} must be a positive number", config.overprovision_ratio)));
        }
        if config.op_timeout < Duration::from_secs(1) {
            return Err(ConfigError("op timeout must be at least 1 s (librados counts whole seconds)".into()));
        }
        if config.instance.is_empty() || config.instance.contains('\0') {
            return Err(ConfigError("the instance name must be a non-empty string".into()));
        }
        if config.lock_lease <= config.call_deadline() {
            return Err(ConfigError(format!(
                "the lock lease ({:?}) must outlast one call's deadline ({:?}), or a lock runs out under a call that still works",
                config.lock_lease,
                config.call_deadline()
            )));
        }
        let settings =
            ConnectSettings { ceph_conf: config.ceph_conf.clone(), keyring: config.keyring.clone(), user: config.user.clone(), op_timeout: config.op_timeout };
        let connector = Connector::new(settings, MAX_OUTSTANDING, config.call_deadline());
        let shared = Arc::new(Shared {
            readings: Readings::new(config.reading_max_age, config.op_timeout),
            leases: Arc::new(Leases { instance: config.instance.clone(), lease: config.lock_lease }),
            committer: Committer::default(),
            lingering: Lingering::new(config.lock_lease / 5),
            local: KeyedLocks::new(),
            making: KeyedLocks::new(),
            connector,
            config,
        });
        Ok(RbdBackend { store: Arc::new(RbdStore::new(Arc::clone(&shared))), shared })
    }

    /// How long one call may take before this backend answers Timeout.
    pub fn call_deadline(&self) -> Duration {
        self.shared.connector.deadline()
    }

    /// The id a volume named `name` gets in `pool`.
    pub fn id_for(&self, pool: &str, name: &str) -> Result<VolumeId, BackendError> {
        RbdVolume::for_name(&self.shared.config.cluster_id, pool, name)
            .map(|v| v.id())
            .map_err(|e| BackendError::InvalidParameter { name: "pool".into(), reason: format!("{pool:?} cannot be part of a volume id: {e}") })
    }

    /// Where the backend keeps its volumes' records and holds.
    pub fn store(&self) -> Arc<RbdStore> {
        Arc::clone(&self.store)
    }

    /// `pool`'s room: its usage at most a reading's age old, Swell's
    /// promised total read now.
    async fn pool_capacity(&self, pool: String) -> Result<Capacity, BackendError> {
        let shared = Arc::clone(&self.shared);
        self.shared
            .connector
            .run("read pool capacity", move |conn, _| {
                let io = Shared::io(conn, &pool)?;
                let swell = state::read_total(&io)?;
                shared.readings.capacity(conn, &pool, swell, shared.config.overprovision_ratio, shared.config.count_foreign_images)
            })
            .await
    }

    /// The bytes Swell has promised in `pool`, read now.
    pub async fn promised(&self, pool: &str) -> Result<u64, BackendError> {
        let pool = pool.to_owned();
        self.shared
            .connector
            .run("read promised total", move |conn, _| {
                let io = Shared::io(conn, &pool)?;
                state::read_total(&io)
            })
            .await
    }
}

fn belongs_elsewhere(name: &str, volume: &RbdVolume, owner: &str) -> RbdError {
    BackendError::io(format!("create {name}"), std::io::Error::other(format!("image {} already belongs to volume {owner:?}", volume.spec()))).into()
}

fn read_header(io: &IoCtx, id: &VolumeId, image: &str) -> Result<Option<header::Header>, RbdError> {
    header::read(io, image).map_err(|e| RbdError::osd("read image header", e, Some(id)))
}

fn create_blocking(shared: &Shared, conn: &Connection, deadline: Instant, volume: &RbdVolume, name: &str, size: u64) -> Result<Created, RbdError> {
    let id = volume.id();
    let (pool, image) = (&volume.pool, &volume.image);
    let io = Shared::io(conn, pool)?;
    let entry = state::read_entry(&io, image)?;
    let info = |size_bytes| VolumeInfo { id: id.clone(), name: name.to_owned(), size_bytes };
    match &entry {
        Some(e) if e.live() && e.name != name => return Err(belongs_elsewhere(name, volume, &e.name)),
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
            trash::move_to_trash(&io, image).map_err(|e| RbdError::osd("rbd_trash_move", e, Some(&id)))?;
        }
        None => {}
    }
    let generation = entry.map_or(0, |e| e.record.generation);
    let intent = ExpansionRecord { generation, ..ExpansionRecord::new(&id, size, size) };
    let change = Change::Put { image: image.clone(), name: Some(name.to_owned()), phase: Some(Phase::Creating), record: intent };
    shared.commit(conn, &io, pool, change, deadline)?;
    fail::fail_point!("rbd-create-after-intent");
    ensure_time_left(deadline, "rbd_create", shared.config.op_timeout)?;
    match make_image(shared, &io, &id, image, size)? {
        Made::New => Ok(Created::New(info(size))),
        // An image of this name Swell had no entry for (made before Swell
        // kept entries): adopted as it is; the background work records its
        // real size when it confirms the entry.
        Made::Existing(found) => Ok(Created::Existing(info(found))),
    }
}

/// What making an image found.
enum Made {
    New,
    Existing(u64),
}

/// Makes the image. librbd makes one in steps (directory entry, id object,
/// header): a create killed between them leaves a name that exists without
/// a header, which no one can open and every later create would trip on
/// (EEXIST). Such a half-made image is removed and made again: the caller
/// holds the volume, so no other process is making it, and `making` says
/// whether an earlier call of this process still is.
fn make_image(shared: &Shared, io: &IoCtx, id: &VolumeId, image: &str, size: u64) -> Result<Made, RbdError> {
    let Some(_making) = shared.making.try_acquire(image) else {
        let reason = "an earlier create of it is still running in librbd".to_owned();
        return Err(BackendError::Contended { step: format!("create {id}"), reason }.into());
    };
    for _ in 0..2 {
        match io.create_image(image, size, IMAGE_FEATURES) {
            Ok(()) => return Ok(Made::New),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(RbdError::osd("rbd_create", e, Some(id)).asking(size)),
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

fn volume_blocking(conn: &Connection, volume: &RbdVolume) -> Result<Option<VolumeInfo>, RbdError> {
    let id = volume.id();
    let Some(io) = conn.pool(&volume.pool)? else { return Ok(None) };
    // A volume is a live entry and an image with a header.
    let Some(entry) = state::read_entry(&io, &volume.image)?.filter(Entry::live) else { return Ok(None) };
    Ok(read_header(&io, &id, &volume.image)?.map(|h| VolumeInfo { id, name: entry.name, size_bytes: h.size }))
}

fn delete_blocking(shared: &Shared, conn: &Connection, deadline: Instant, volume: &RbdVolume) -> Result<(), RbdError> {
    let Some(io) = conn.pool(&volume.pool)? else { return Ok(()) };
    match state::read_entry(&io, &volume.image)? {
        Some(entry) if entry.live() => {
            let tombstone = Change::Put { image: volume.image.clone(), name: None, phase: Some(Phase::Deleting), record: entry.record };
            shared.commit(conn, &io, &volume.pool, tombstone, deadline).map(drop)
        }
        Some(_) => Ok(()),
        // An image without an entry (its delete was cut off after the entry
        // went, or it predates entries): moved away now.
        None => {
            ensure_time_left(deadline, "rbd_trash_move", shared.config.op_timeout)?;
            trash::move_to_trash(&io, &volume.image).map_err(|e| RbdError::osd("rbd_trash_move", e, Some(&volume.id())))
        }
    }
}

fn grow_blocking(shared: &Shared, conn: &Connection, deadline: Instant, volume: &RbdVolume, target: u64) -> Result<u64, RbdError> {
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

/// Tells the image's clients to re-read its size. A dead client's watch
/// lingers until the OSD expires it; it cannot be told, and it has nothing
/// mapped any more, so it is counted, not waited for.
fn announce(io: &IoCtx, id: &VolumeId, found: &header::Header) -> Result<(), RbdError> {
    let reply = header::announce(io, found).map_err(|e| RbdError::osd(format!("notify {}", found.object()), e, Some(id)))?;
    tracing::debug!(volume.id = %id, acked = reply.acked, silent = reply.timed_out, size = found.size, "announced the image's size to its watchers");
    Ok(())
}

fn list_blocking(shared: &Shared, conn: &Connection) -> Result<Vec<VolumeInfo>, RbdError> {
    let mut volumes = Vec::new();
    for pool in shared.readings.pools(conn)? {
        let Some(io) = conn.pool(&pool)? else { continue };
        let mut after: Option<String> = None;
        loop {
            let page = state::page_entries(&io, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (image, entry) in page {
                // Pools whose names cannot be part of an id hold no Swell volume.
                let Ok(volume) = RbdVolume::at(&shared.config.cluster_id, &pool, &image) else { continue };
                if entry.live() {
                    volumes.push(VolumeInfo { id: volume.id(), name: entry.name, size_bytes: entry.record.current_bytes });
                }
            }
        }
    }
    volumes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(volumes)
}

/// Finishes what creates and deletes left to the background, purges the
/// trash of every pool and, when other clients' images count, sums their
/// sizes. Returns the trashed images removed.
fn housekeeping_blocking(shared: &Shared, conn: &Connection, deadline: Instant) -> Result<usize, RbdError> {
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
        .filter(|(_, entry)| entry.phase != Phase::Ready)
        .filter_map(|(image, entry)| Some((RbdVolume::at(&shared.config.cluster_id, pool, &image).ok()?, entry)))
        .collect();
    trash::in_parallel(&owed, shared.config.purge_concurrency, deadline, shared.config.op_timeout, |(volume, entry)| {
        let finished = match entry.phase {
            Phase::Deleting => finish_delete(shared, conn, &io, volume, entry, deadline),
            Phase::Creating => confirm_create(shared, conn, &io, volume, entry, deadline),
            Phase::Ready => Ok(()),
        };
        if let Err(err) = finished {
            let err = err.into_backend(shared.config.op_timeout);
            tracing::warn!(volume.id = %volume, phase = ?entry.phase, error = %err, "cannot finish the volume's create or delete; retrying on the next pass");
        }
    });
    Ok(trash::purge(&io, pool, shared.config.purge_concurrency, deadline, shared.config.op_timeout)?.removed)
}

/// A deleted volume: its image to the trash, then its lock object (taken
/// first, so no operation that still holds it loses it), then its entry.
fn finish_delete(shared: &Shared, conn: &Connection, io: &IoCtx, volume: &RbdVolume, entry: &Entry, deadline: Instant) -> Result<(), RbdError> {
    let id = volume.id();
    trash::move_to_trash(io, &volume.image).map_err(|e| RbdError::osd("rbd_trash_move", e, Some(&id)))?;
    let Some(_local) = shared.local.try_acquire(&id.to_string()) else { return Ok(()) };
    if let Acquired::Busy(_) = shared.leases.acquire(conn, io, &volume.image)? {
        return Ok(());
    }
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
            Change::Put { image: volume.image.clone(), name: None, phase: Some(Phase::Ready), record }
        }
        None => {
            tracing::info!(volume.id = %id, "a create was cut off before its image was made; dropping its promise");
            Change::Remove { image: volume.image.clone(), generation: Some(generation) }
        }
    };
    shared.commit(conn, io, &volume.pool, change, deadline).map(drop)
}

#[async_trait::async_trait]
impl Backend for RbdBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn create_volume(&self, name: &str, size_bytes: u64, placement: &Placement) -> Result<Created, BackendError> {
        let pool = placement.pool.clone().unwrap_or_else(|| self.shared.config.default_pool.clone());
        let volume = RbdVolume::for_name(&self.shared.config.cluster_id, &pool, name)
            .map_err(|e| BackendError::InvalidParameter { name: "pool".into(), reason: format!("{pool:?} cannot be part of a volume id: {e}") })?;
        let id = volume.id();
        let Some(hold) = self.store.hold(&id).await? else {
            return Err(BackendError::Contended { step: format!("create {name}"), reason: format!("another operation on volume {id} is in progress") });
        };
        let (shared, name) = (Arc::clone(&self.shared), name.to_owned());
        let created =
            self.shared.connector.run("create volume", move |conn, deadline| create_blocking(&shared, conn, deadline, &volume, &name, size_bytes)).await;
        hold.release().await;
        created
    }

    async fn delete_volume(&self, id: &VolumeId) -> Result<(), BackendError> {
        let Some(volume) = self.shared.ours(id, "delete")? else { return Ok(()) };
        let shared = Arc::clone(&self.shared);
        self.shared.connector.run("delete volume", move |conn, deadline| delete_blocking(&shared, conn, deadline, &volume)).await
    }

    async fn volume(&self, id: &VolumeId) -> Result<Option<VolumeInfo>, BackendError> {
        let Some(volume) = RbdVolume::parse(id).filter(|v| v.cluster == self.shared.config.cluster_id) else { return Ok(None) };
        self.shared.connector.run("read volume", move |conn, _| volume_blocking(conn, &volume)).await
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, BackendError> {
        let shared = Arc::clone(&self.shared);
        self.shared.connector.run("list volumes", move |conn, _| list_blocking(&shared, conn)).await
    }

    async fn capacity(&self, placement: &Placement) -> Result<Capacity, BackendError> {
        self.pool_capacity(placement.pool.clone().unwrap_or_else(|| self.shared.config.default_pool.clone())).await
    }

    async fn room_for(&self, id: &VolumeId) -> Result<Capacity, BackendError> {
        let volume = self.shared.ours(id, "read pool capacity")?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        self.pool_capacity(volume.pool).await
    }

    async fn grow_volume(&self, id: &VolumeId, new_size_bytes: u64) -> Result<u64, BackendError> {
        let volume = self.shared.ours(id, "grow")?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        let shared = Arc::clone(&self.shared);
        self.shared.connector.run("grow volume", move |conn, deadline| grow_blocking(&shared, conn, deadline, &volume, new_size_bytes)).await
    }

    async fn announce_size(&self, id: &VolumeId) -> Result<(), BackendError> {
        let volume = self.shared.ours(id, "announce size")?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        self.shared
            .connector
            .run("announce size", move |conn, _| {
                let id = volume.id();
                let not_found = || RbdError::Refused(BackendError::NotFound(id.clone()));
                let io = conn.pool(&volume.pool)?.ok_or_else(not_found)?;
                let found = header::read(&io, &volume.image).map_err(|e| RbdError::osd("read image header", e, Some(&id)))?.ok_or_else(not_found)?;
                announce(&io, &id, &found)
            })
            .await
    }

    async fn collect_garbage(&self) -> Result<usize, BackendError> {
        let shared = Arc::clone(&self.shared);
        self.shared.connector.run("purge trashed images", move |conn, deadline| housekeeping_blocking(&shared, conn, deadline)).await
    }

    fn expansion_store(&self) -> Option<Arc<dyn ExpansionStore>> {
        Some(self.store.clone())
    }

    async fn check_health(&self) -> Result<(), BackendError> {
        let shared = Arc::clone(&self.shared);
        self.shared.connector.run("health check", move |conn, _| shared.readings.pool(conn, &shared.config.default_pool, true).map(drop)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_made_without_exclusive_lock() {
        assert_eq!(IMAGE_FEATURES, RBD_FEATURE_LAYERING);
        assert_eq!(IMAGE_FEATURES & super::super::ffi::RBD_FEATURE_EXCLUSIVE_LOCK, 0);
    }

    #[test]
    fn the_call_deadline_follows_the_op_timeout() {
        let mut config = RbdConfig::new("ceph-a", "/c", "/k");
        assert_eq!(RbdBackend::new(config.clone()).unwrap().call_deadline(), Duration::from_secs(7));
        config.op_timeout = Duration::from_secs(4);
        assert_eq!(RbdBackend::new(config).unwrap().call_deadline(), Duration::from_secs(9));
    }

    #[test]
    fn bad_configs_are_refused_before_connecting() {
        let ok = RbdConfig::new("ceph-a", "/etc/ceph/ceph.conf", "/etc/ceph/keyring");
        assert!(RbdBackend::new(ok.clone()).is_ok());
        for bad in [
            RbdConfig { cluster_id: "Ceph".into(), ..ok.clone() },
            RbdConfig { cluster_id: "a:b".into(), ..ok.clone() },
            RbdConfig { default_pool: "".into(), ..ok.clone() },
            RbdConfig { overprovision_ratio: 0.0, ..ok.clone() },
            RbdConfig { op_timeout: Duration::from_millis(10), ..ok.clone() },
            RbdConfig { instance: String::new(), ..ok.clone() },
            RbdConfig { lock_lease: Duration::from_secs(7), ..ok.clone() },
            RbdConfig { op_timeout: Duration::from_secs(u64::MAX), ..ok.clone() },
        ] {
            assert!(RbdBackend::new(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pools_that_cannot_be_in_an_id_are_invalid_parameters() {
        let b = RbdBackend::new(RbdConfig::new("ceph-a", "/c", "/k")).unwrap();
        assert!(matches!(b.id_for("Bad Pool", "pvc"), Err(BackendError::InvalidParameter { .. })));
        assert!(b.id_for("fast", "pvc").unwrap().to_string().starts_with("rbd:ceph-a:fast:swell-"));
    }
}
