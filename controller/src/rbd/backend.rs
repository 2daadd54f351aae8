//! [`RbdBackend`]: Swell's [`Backend`] over RBD images.
//!
//! A volume named `n` is the image `swell-<32 hex of sha256(n)>` in its pool,
//! so a retried create lands on the same image; the CO's name is kept in the
//! image's metadata (`swell.volume-name`), written right after the image is
//! made. An image without it is a create that stopped half-way: invisible
//! until the retried create finishes it. Sizes are always read from librbd.
//!
//! Creates and grows are admitted against the pool's capacity policy (and
//! refused on a full pool) before anything is written, because librbd on a
//! full pool hangs instead of answering. The pool is read fresh for every
//! admission, side by side with other admissions; only the final check
//! against the [`Ledger`] of bytes promised to operations in flight is
//! serialised, so two grows cannot both take the last free bytes.
//!
//! Images are created with the `layering` feature only (as ceph-csi does):
//! without exclusive-lock, a resize never waits for a lock held by another
//! client, alive or dead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use swell_storage::rbd_volume::is_swell_image;
use swell_storage::{Backend, BackendError, Capacity, Created, RbdVolume, VolumeId, VolumeInfo};

use super::capacity::{self, PoolSettings, PoolUsage};
use super::coalesce::{Coalescer, Missed};
use super::connection::{ConnectSettings, Connection, Connector, ensure_time_left};
use super::errors::RbdError;
use super::fence::Fence;
use super::ffi::{IoCtx, RBD_FEATURE_LAYERING};
use super::ledger::{Ledger, Promise, Snapshot};
use super::{KIND, RbdConfig};

/// Image metadata key holding the CO's volume name.
pub const NAME_KEY: &str = "swell.volume-name";
const ENOENT: i32 = 2;
const EBUSY: i32 = 16;
/// Ceph calls that may be outstanding at once, running or stuck in a hung
/// librados call: bounds the blocking threads a dead cluster can hold, far
/// above what healthy concurrency needs (every call returns within its
/// deadline's op timeouts).
const MAX_OUTSTANDING: usize = 256;
/// The features of every image Swell creates: layering only, so no
/// exclusive lock is ever needed (or left behind by a dead client).
pub const IMAGE_FEATURES: u64 = RBD_FEATURE_LAYERING;
/// How long an announcement waits for watchers to acknowledge. Live ones
/// answer in milliseconds; only dead clients' watches use it all up.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// The RBD backend of one cluster.
#[derive(Clone)]
pub struct RbdBackend {
    config: Arc<RbdConfig>,
    connector: Connector,
    ledger: Ledger,
    readings: Arc<Readings>,
}

/// Pool readings shared by concurrent admissions, each with the ledger
/// snapshot taken just before it.
type Readings = Coalescer<(Snapshot, PoolReading), RbdError>;

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
        let settings =
            ConnectSettings { ceph_conf: config.ceph_conf.clone(), keyring: config.keyring.clone(), user: config.user.clone(), op_timeout: config.op_timeout };
        let mut connector = Connector::new(settings, MAX_OUTSTANDING, config.call_deadline());
        if let Some(record) = config.client_record() {
            connector = connector.with_fence(Fence::new(record));
        }
        Ok(RbdBackend { connector, config: Arc::new(config), ledger: Ledger::default(), readings: Arc::default() })
    }

    /// How long one call may take before this backend answers Timeout.
    pub fn call_deadline(&self) -> Duration {
        self.connector.deadline()
    }

    /// The id a volume named `name` gets in `pool`.
    pub fn id_for(&self, pool: &str, name: &str) -> Result<VolumeId, BackendError> {
        RbdVolume::for_name(&self.config.cluster_id, pool, name)
            .map(|v| v.id())
            .map_err(|e| BackendError::InvalidParameter { name: "pool".into(), reason: format!("{pool:?} cannot be part of a volume id: {e}") })
    }

    /// The location of a volume of this cluster; `Ok(None)` for ids that
    /// cannot name an RBD volume; an error for another cluster's volume.
    fn ours(&self, id: &VolumeId, step: &str) -> Result<Option<RbdVolume>, BackendError> {
        let Some(location) = RbdVolume::parse(id) else { return Ok(None) };
        if location.cluster != self.config.cluster_id {
            return Err(BackendError::Unavailable {
                step: format!("{step} {id}"),
                reason: format!("the volume belongs to Ceph cluster {:?}; this controller serves {:?}", location.cluster, self.config.cluster_id),
            });
        }
        Ok(Some(location))
    }

    /// The room of `pool` under the capacity policy, counting the bytes
    /// promised to this process's operations in flight.
    async fn pool_capacity(&self, pool: String) -> Result<Capacity, BackendError> {
        let settings = self.settings();
        self.connector
            .run("read pool capacity", move |conn, deadline| {
                let io = conn.pool(&pool)?.ok_or_else(|| missing_pool(&pool))?;
                let shared = settings.read_pool(conn, &io, &pool, deadline)?;
                let (snapshot, reading) = &*shared;
                Ok(reading.room(snapshot.promised(&pool), settings.ratio).capacity)
            })
            .await
    }

    fn settings(&self) -> Settings {
        Settings {
            ratio: self.config.overprovision_ratio,
            op_timeout: self.config.op_timeout,
            ledger: self.ledger.clone(),
            readings: Arc::clone(&self.readings),
        }
    }
}

/// What the blocking work needs from the backend.
struct Settings {
    ratio: f64,
    op_timeout: Duration,
    ledger: Ledger,
    readings: Arc<Readings>,
}

impl Settings {
    /// A reading of `pool` that started after this call (shared with the
    /// calls that arrived with it), with its ledger snapshot.
    fn read_pool(&self, conn: &Connection, io: &IoCtx, pool: &str, deadline: Instant) -> Result<Arc<(Snapshot, PoolReading)>, RbdError> {
        let read = || {
            let snapshot = self.ledger.snapshot();
            PoolReading::read(conn, io, pool).map(|reading| (snapshot, reading))
        };
        self.readings.read(pool, deadline, read, RbdError::duplicate).map_err(|missed| match missed {
            Missed::Failed(err) => err,
            Missed::Deadline => RbdError::Refused(BackendError::Timeout { step: format!("read pool {pool}"), after: self.op_timeout }),
        })
    }
}

fn bad_json(step: &str, err: impl std::fmt::Display) -> RbdError {
    RbdError::Refused(BackendError::io(step, std::io::Error::other(format!("unexpected monitor output: {err}"))))
}

/// Reads a volume's size and name; `None` when the image is missing or has
/// no name yet (a half-done create).
fn read_volume(io: &IoCtx, id: &VolumeId, image: &str) -> Result<Option<VolumeInfo>, RbdError> {
    let img = match io.open_read_only(image) {
        Ok(img) => img,
        Err(ENOENT) => return Ok(None),
        Err(e) => return Err(RbdError::osd("rbd_open_read_only", e, Some(id))),
    };
    let size = img.size().map_err(|e| RbdError::osd("rbd_stat", e, Some(id)))?;
    let name = img.metadata(NAME_KEY).map_err(|e| RbdError::osd("rbd_metadata_get", e, Some(id)))?;
    img.close().map_err(|e| RbdError::osd("rbd_close", e, Some(id)))?;
    Ok(name.map(|name| VolumeInfo { id: id.clone(), name, size_bytes: size }))
}

/// Removes the Swell images that a delete moved to the trash because Ceph
/// still listed watchers. Measured on Ceph 16.2.15 after the chaos test's
/// SIGKILLs: the OSD had dropped the dead clients' watches (`dump_watchers`
/// listed none) while the object's own watcher list, which `rbd_remove`
/// checks, kept some for minutes. One that is still watched stays for the
/// next pass; nothing is forced.
fn purge_trash(conn: &Connection, deadline: Instant, op_timeout: Duration, default_pool: &str) -> Result<usize, RbdError> {
    let mut pools = conn.opened_pools();
    if !pools.iter().any(|p| p == default_pool) {
        pools.push(default_pool.to_owned());
    }
    let mut removed = 0;
    for pool in pools {
        let Some(io) = conn.pool(&pool)? else { continue };
        let entries = io.trash_list().map_err(|e| RbdError::osd(format!("rbd_trash_list in pool {pool}"), e, None))?;
        for entry in entries.into_iter().filter(|e| is_swell_image(&e.name)) {
            if deadline.saturating_duration_since(Instant::now()) < op_timeout {
                return Ok(removed); // the rest on the next pass
            }
            match io.trash_remove(&entry.id) {
                Ok(()) | Err(ENOENT) => {
                    tracing::info!(pool, image = entry.name, trash_id = entry.id, "removed a trashed image");
                    removed += 1;
                }
                Err(EBUSY) => tracing::debug!(pool, image = entry.name, "trashed image still has watchers"),
                Err(e) => tracing::warn!(pool, image = entry.name, errno = e, "cannot remove a trashed image; retrying on the next pass"),
            }
        }
    }
    Ok(removed)
}

/// Sends the header-update notification librbd sends after a resize (an
/// empty payload; librbd and krbd both read it as "re-read the header"), so
/// every client with the image open sees the size the header holds now.
/// A read-only open finds the header's name without adding a watcher.
fn announce_blocking(conn: &Connection, id: &VolumeId, location: &RbdVolume) -> Result<(), RbdError> {
    let not_found = || RbdError::Refused(BackendError::NotFound(id.clone()));
    let io = conn.pool(&location.pool)?.ok_or_else(not_found)?;
    let img = match io.open_read_only(&location.image) {
        Ok(img) => img,
        Err(ENOENT) => return Err(not_found()),
        Err(e) => return Err(RbdError::osd("rbd_open_read_only", e, Some(id))),
    };
    let image_id = img.id().map_err(|e| RbdError::osd("rbd_get_id", e, Some(id)))?;
    img.close().map_err(|e| RbdError::osd("rbd_close", e, Some(id)))?;
    let header = format!("rbd_header.{image_id}");
    let reply = io.notify_empty(&header, ANNOUNCE_TIMEOUT).map_err(|e| RbdError::osd(format!("rados_notify2 on {header}"), e, Some(id)))?;
    // A dead client's watch lingers until the OSD expires it; it cannot be
    // told, and it has nothing mapped any more.
    tracing::info!(volume.id = %id, header, acked = reply.acked, silent = reply.timed_out, "announced the image's size to its watchers");
    Ok(())
}

/// The sum of the sizes of all images in the pool (Swell's or not: all take
/// room), from librbd's pool stats: one read of each image's header, no
/// image opened. A pool without RBD images yet has no directory (ENOENT).
fn provisioned(io: &IoCtx, pool: &str) -> Result<u64, RbdError> {
    match io.provisioned_bytes() {
        Ok(bytes) => Ok(bytes),
        Err(ENOENT) => Ok(0),
        Err(e) => Err(RbdError::osd(format!("rbd_pool_stats_get in pool {pool}"), e, None)),
    }
}

/// What the pool holds now, read fresh (never cached: other clients change it).
struct PoolReading {
    usage: PoolUsage,
    settings: PoolSettings,
    provisioned: u64,
}

impl PoolReading {
    fn read(conn: &Connection, io: &IoCtx, pool: &str) -> Result<Self, RbdError> {
        let df = conn.mon_command("ceph df", r#"{"prefix":"df","format":"json"}"#)?;
        let detail = conn.mon_command("osd pool ls detail", r#"{"prefix":"osd pool ls","detail":"detail","format":"json"}"#)?;
        let usage = capacity::parse_df(&df, pool).map_err(|e| bad_json("ceph df", e))?.ok_or_else(|| missing_pool(pool))?;
        let settings = capacity::parse_pool_detail(&detail, pool).map_err(|e| bad_json("osd pool ls detail", e))?.ok_or_else(|| missing_pool(pool))?;
        Ok(PoolReading { usage, settings, provisioned: provisioned(io, pool)? })
    }

    /// The pool's room, counting `promised` bytes the reading may not include.
    fn room(&self, promised: u64, ratio: f64) -> capacity::PoolRoom {
        capacity::room(self.usage, &self.settings, self.provisioned.saturating_add(promised), ratio)
    }
}

fn missing_pool(pool: &str) -> RbdError {
    RbdError::Refused(BackendError::InvalidParameter { name: "pool".into(), reason: format!("pool {pool:?} does not exist") })
}

/// Admits `bytes` more in `pool` for `key`, or refuses with NoSpace. The
/// pool is read without any lock (admissions of different images overlap);
/// only the check against the bytes promised to operations in flight is
/// made under the ledger's lock, so two admissions never both count the
/// same free bytes.
fn admit(conn: &Connection, io: &IoCtx, pool: &str, key: &str, bytes: u64, settings: &Settings, deadline: Instant) -> Result<Promise, RbdError> {
    let shared = settings.read_pool(conn, io, pool, deadline)?;
    admit_with(&shared, pool, key, bytes, settings)
}

/// The check of [`admit`] against a reading already made.
fn admit_with(shared: &(Snapshot, PoolReading), pool: &str, key: &str, bytes: u64, settings: &Settings) -> Result<Promise, RbdError> {
    let (snapshot, reading) = shared;
    snapshot.admit(pool, bytes, |promised| {
        let room = reading.room(promised, settings.ratio);
        if let Some(reason) = &room.full {
            tracing::warn!(pool, key, bytes, reason, "refusing: pool is full");
            return Err(BackendError::NoSpace { requested: bytes, available: 0 }.into());
        }
        if bytes > room.capacity.available_bytes {
            return Err(BackendError::NoSpace { requested: bytes, available: room.capacity.available_bytes }.into());
        }
        Ok(())
    })
}

/// Opens `image` read-write, records the volume name, and returns the size.
fn name_image(io: &IoCtx, id: &VolumeId, image: &str, name: &str) -> Result<u64, RbdError> {
    let img = io.open(image).map_err(|e| RbdError::osd("rbd_open", e, Some(id)))?;
    img.set_metadata(NAME_KEY, name).map_err(|e| RbdError::osd("rbd_metadata_set", e, Some(id)))?;
    let size = img.size().map_err(|e| RbdError::osd("rbd_stat", e, Some(id)))?;
    img.close().map_err(|e| RbdError::osd("rbd_close", e, Some(id)))?;
    Ok(size)
}

fn create_blocking(conn: &Connection, deadline: Instant, settings: &Settings, id: &VolumeId, pool: &str, name: &str, size: u64) -> Result<Created, RbdError> {
    let image = RbdVolume::parse(id).map(|l| l.image).unwrap_or_else(|| unreachable!("ids made by id_for parse"));
    let io = conn.pool(pool)?.ok_or_else(|| missing_pool(pool))?;
    let existing = match io.open_read_only(&image) {
        Ok(img) => {
            let current = img.size().map_err(|e| RbdError::osd("rbd_stat", e, Some(id)))?;
            let recorded = img.metadata(NAME_KEY).map_err(|e| RbdError::osd("rbd_metadata_get", e, Some(id)))?;
            img.close().map_err(|e| RbdError::osd("rbd_close", e, Some(id)))?;
            Some((current, recorded))
        }
        Err(ENOENT) => None,
        Err(e) => return Err(RbdError::osd("rbd_open_read_only", e, Some(id))),
    };
    match existing {
        Some((current, Some(recorded))) if recorded == name => Ok(Created::Existing(VolumeInfo { id: id.clone(), name: name.to_owned(), size_bytes: current })),
        Some((_, Some(recorded))) => {
            Err(BackendError::io(format!("create {name}"), std::io::Error::other(format!("image {pool}/{image} already belongs to volume {recorded:?}")))
                .into())
        }
        Some((_, None)) => {
            // A create that stopped before naming its image: finish it. The
            // metadata write needs a writable pool, so check for fullness first.
            let _promise = admit(conn, &io, pool, &id.to_string(), 0, settings, deadline)?;
            ensure_time_left(deadline, "name image", settings.op_timeout)?;
            let size_bytes = name_image(&io, id, &image, name)?;
            Ok(Created::New(VolumeInfo { id: id.clone(), name: name.to_owned(), size_bytes }))
        }
        None => {
            let _promise = admit(conn, &io, pool, &id.to_string(), size, settings, deadline)?;
            ensure_time_left(deadline, "rbd_create", settings.op_timeout)?;
            io.create_image(&image, size, IMAGE_FEATURES).map_err(|e| RbdError::osd("rbd_create", e, Some(id)).asking(size))?;
            let size_bytes = name_image(&io, id, &image, name)?;
            Ok(Created::New(VolumeInfo { id: id.clone(), name: name.to_owned(), size_bytes }))
        }
    }
}

fn grow_blocking(conn: &Connection, deadline: Instant, settings: &Settings, id: &VolumeId, location: &RbdVolume, new_size: u64) -> Result<u64, RbdError> {
    let not_found = || RbdError::Refused(BackendError::NotFound(id.clone()));
    let pool = &location.pool;
    let io = conn.pool(pool)?.ok_or_else(not_found)?;
    let shared = settings.read_pool(conn, &io, pool, deadline)?;
    if let Some(reason) = &shared.1.room(0, settings.ratio).full {
        // A read-write open needs writes and would hang on a full pool: read
        // only, so a retry of a grow that is already done still succeeds.
        let current = read_volume(&io, id, &location.image)?.ok_or_else(not_found)?.size_bytes;
        if new_size < current {
            return Err(BackendError::Shrink { id: id.clone(), current, requested: new_size }.into());
        }
        if new_size == current {
            return Ok(current);
        }
        tracing::warn!(pool, volume.id = %id, bytes = new_size - current, reason, "refusing: pool is full");
        return Err(BackendError::NoSpace { requested: new_size - current, available: 0 }.into());
    }
    // One read-write open for the whole grow: read, decide, resize, read back.
    let img = match io.open(&location.image) {
        Ok(img) => img,
        Err(ENOENT) => return Err(not_found()),
        Err(e) => return Err(RbdError::osd("rbd_open", e, Some(id))),
    };
    let current = img.size().map_err(|e| RbdError::osd("rbd_stat", e, Some(id)))?;
    if img.metadata(NAME_KEY).map_err(|e| RbdError::osd("rbd_metadata_get", e, Some(id)))?.is_none() {
        // A create that stopped before naming its image: not a volume yet.
        return Err(not_found());
    }
    if new_size < current {
        return Err(BackendError::Shrink { id: id.clone(), current, requested: new_size }.into());
    }
    if new_size > current {
        let _promise = admit_with(&shared, pool, &id.to_string(), new_size - current, settings)?;
        drop(shared);
        ensure_time_left(deadline, "rbd_resize2", settings.op_timeout)?;
        img.grow(new_size).map_err(|e| RbdError::osd("rbd_resize2", e, Some(id)).asking(new_size - current))?;
    }
    let after = img.size().map_err(|e| RbdError::osd("rbd_stat", e, Some(id)))?;
    img.close().map_err(|e| RbdError::osd("rbd_close", e, Some(id)))?;
    Ok(after)
}

fn list_blocking(conn: &Connection, cluster: &str) -> Result<Vec<VolumeInfo>, RbdError> {
    #[derive(serde::Deserialize)]
    struct Pool {
        poolname: String,
    }
    let raw = conn.mon_command("osd lspools", r#"{"prefix":"osd lspools","format":"json"}"#)?;
    let pools: Vec<Pool> = serde_json::from_slice(&raw).map_err(|e| bad_json("osd lspools", e))?;
    let mut volumes = Vec::new();
    for pool in pools {
        let Some(io) = conn.pool(&pool.poolname)? else { continue };
        let images = match io.list_images() {
            Ok(images) => images,
            Err(ENOENT) => continue,
            Err(e) => return Err(RbdError::osd(format!("rbd_list2 in pool {}", pool.poolname), e, None)),
        };
        for image in images.into_iter().filter(|i| is_swell_image(i)) {
            // Pools whose names cannot be part of an id hold no Swell volume.
            let Ok(id) = VolumeId::new(KIND, &format!("{cluster}:{}:{image}", pool.poolname)) else { continue };
            if let Some(info) = read_volume(&io, &id, &image)? {
                volumes.push(info);
            }
        }
    }
    volumes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(volumes)
}

#[async_trait::async_trait]
impl Backend for RbdBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn create_volume(&self, name: &str, size_bytes: u64, parameters: &BTreeMap<String, String>) -> Result<Created, BackendError> {
        let pool = parameters.get("pool").cloned().unwrap_or_else(|| self.config.default_pool.clone());
        let id = self.id_for(&pool, name)?;
        let (name, settings) = (name.to_owned(), self.settings());
        self.connector.run("create volume", move |conn, deadline| create_blocking(conn, deadline, &settings, &id, &pool, &name, size_bytes)).await
    }

    async fn delete_volume(&self, id: &VolumeId) -> Result<(), BackendError> {
        let Some(location) = self.ours(id, "delete")? else { return Ok(()) };
        let (id, op_timeout) = (id.clone(), self.config.op_timeout);
        self.connector
            .run("delete volume", move |conn, deadline| {
                let Some(io) = conn.pool(&location.pool)? else { return Ok(()) };
                ensure_time_left(deadline, "rbd_remove", op_timeout)?;
                match io.remove_image(&location.image) {
                    Ok(()) | Err(ENOENT) => Ok(()),
                    // Watchers: Ceph can list a crashed client's watch for
                    // minutes (see `collect_garbage`). The trash frees the
                    // name now and keeps the data until the last watcher is
                    // gone, so a delete never waits on a dead client.
                    Err(EBUSY) => {
                        ensure_time_left(deadline, "rbd_trash_move", op_timeout)?;
                        match io.trash_move(&location.image) {
                            Ok(()) | Err(ENOENT) => {
                                tracing::info!(volume.id = %id, "image still has watchers: moved to the trash, removed once they are gone");
                                Ok(())
                            }
                            Err(e) => Err(RbdError::osd("rbd_trash_move", e, Some(&id))),
                        }
                    }
                    Err(e) => Err(RbdError::osd("rbd_remove", e, Some(&id))),
                }
            })
            .await
    }

    async fn volume(&self, id: &VolumeId) -> Result<Option<VolumeInfo>, BackendError> {
        let Some(location) = RbdVolume::parse(id) else { return Ok(None) };
        if location.cluster != self.config.cluster_id {
            return Ok(None);
        }
        let id = id.clone();
        self.connector
            .run("read volume", move |conn, _| match conn.pool(&location.pool)? {
                Some(io) => read_volume(&io, &id, &location.image),
                None => Ok(None),
            })
            .await
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, BackendError> {
        let cluster = self.config.cluster_id.clone();
        self.connector.run("list volumes", move |conn, _| list_blocking(conn, &cluster)).await
    }

    async fn capacity(&self) -> Result<Capacity, BackendError> {
        self.pool_capacity(self.config.default_pool.clone()).await
    }

    async fn capacity_for(&self, id: &VolumeId) -> Result<Capacity, BackendError> {
        let location = self.ours(id, "read capacity")?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        self.pool_capacity(location.pool).await
    }

    async fn grow_volume(&self, id: &VolumeId, new_size_bytes: u64) -> Result<u64, BackendError> {
        let location = self.ours(id, "grow")?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        let (id, settings) = (id.clone(), self.settings());
        self.connector.run("grow volume", move |conn, deadline| grow_blocking(conn, deadline, &settings, &id, &location, new_size_bytes)).await
    }

    async fn announce_size(&self, id: &VolumeId) -> Result<(), BackendError> {
        let location = self.ours(id, "announce size")?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        let id = id.clone();
        self.connector.run("announce size", move |conn, _| announce_blocking(conn, &id, &location)).await
    }

    async fn collect_garbage(&self) -> Result<usize, BackendError> {
        let (default_pool, op_timeout) = (self.config.default_pool.clone(), self.config.op_timeout);
        self.connector.run("purge trashed images", move |conn, deadline| purge_trash(conn, deadline, op_timeout, &default_pool)).await
    }

    async fn check_health(&self) -> Result<(), BackendError> {
        let pool = self.config.default_pool.clone();
        self.connector
            .run("health check", move |conn, _| {
                let df = conn.mon_command("ceph df", r#"{"prefix":"df","format":"json"}"#)?;
                capacity::parse_df(&df, &pool).map_err(|e| bad_json("ceph df", e))?.ok_or_else(|| missing_pool(&pool))?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_made_without_exclusive_lock() {
        assert_eq!(IMAGE_FEATURES, super::super::ffi::RBD_FEATURE_LAYERING);
        assert_eq!(IMAGE_FEATURES & super::super::ffi::RBD_FEATURE_EXCLUSIVE_LOCK, 0);
    }

    #[test]
    fn the_call_deadline_follows_the_op_timeout_and_fencing_needs_a_state_dir() {
        let mut config = RbdConfig::new("ceph-a", "/c", "/k");
        assert_eq!(RbdBackend::new(config.clone()).unwrap().call_deadline(), Duration::from_secs(7));
        assert_eq!(config.client_record(), None);
        config.state_dir = Some("/var/lib/swell/controller".into());
        assert_eq!(config.client_record(), Some("/var/lib/swell/controller/rbd-ceph-a-clients.json".into()));
        config.op_timeout = Duration::from_secs(5);
        assert_eq!(RbdBackend::new(config).unwrap().call_deadline(), Duration::from_secs(11));
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
