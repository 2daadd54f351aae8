//! [`RbdBackend`]: Swell's [`Backend`] over RBD images.
//!
//! A volume named `n` is the image `swell-<32 hex of sha256(n)>` in its
//! pool (`swell_storage::rbd_volume`), so a retried create lands on the
//! same image. What Swell knows about it (the CO's name, its expansion
//! record, the bytes it promised) is its entry in the pool's state object
//! ([`super::state`]); its size is always read from its header. The
//! operations themselves are in [`super::volumes`], the work they leave to
//! the background in [`super::housekeeping`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use swell_storage::locks::KeyedLocks;
use swell_storage::{
    Backend, BackendError, Capacity, ContentSource, Created, ExpansionStore, Placement, RbdVolume, SnapshotId, SnapshotInfo, VolumeId, VolumeInfo,
};

use super::commit::{Change, Committer, Outcome};
use super::connection::{ConnectSettings, Connection, Connector};
use super::errors::RbdError;
use super::ffi::{IoCtx, RBD_FEATURE_LAYERING};
use super::housekeeping::housekeeping_blocking;
use super::lease::{Leases, Lingering};
use super::readings::{Readings, missing_pool};
use super::state;
use super::store::RbdStore;
use super::volumes::{announce_blocking, create_blocking, delete_blocking, grow_blocking, list_blocking, volume_blocking};
use super::{KIND, RbdConfig, clones, snapshots};

/// Ceph calls that may be outstanding at once, running or stuck in a hung
/// librados call: bounds the blocking threads a dead cluster can hold, far
/// above what healthy concurrency needs (every call returns within its
/// deadline's op timeouts).
const MAX_OUTSTANDING: usize = 256;
/// The features of every image Swell creates: layering only, so no
/// exclusive lock is ever needed (or left behind by a dead client) and the
/// header can be grown in place.
pub const IMAGE_FEATURES: u64 = RBD_FEATURE_LAYERING;

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
        if volume.cluster != self.config.access.cluster_id {
            return Err(BackendError::Unavailable {
                step: format!("{step} {id}"),
                reason: format!("the volume belongs to Ceph cluster {:?}; this controller serves {:?}", volume.cluster, self.config.access.cluster_id),
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
        for (what, value) in [("cluster id", &config.access.cluster_id), ("default pool", &config.default_pool)] {
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
        let settings = ConnectSettings { access: config.access.clone(), op_timeout: config.op_timeout };
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
        RbdVolume::for_name(&self.shared.config.access.cluster_id, pool, name)
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

    /// The volume a CO name gets in the pool `placement` names (or the default).
    fn volume_for(&self, name: &str, placement: &Placement) -> Result<RbdVolume, BackendError> {
        let pool = placement.pool.clone().unwrap_or_else(|| self.shared.config.default_pool.clone());
        RbdVolume::for_name(&self.shared.config.access.cluster_id, &pool, name)
            .map_err(|e| BackendError::InvalidParameter { name: "pool".into(), reason: format!("{pool:?} cannot be part of a volume id: {e}") })
    }

    /// Holds `volume` for `step`, or answers Contended at once.
    async fn hold(&self, volume: &RbdVolume, step: String) -> Result<swell_storage::Hold, BackendError> {
        let id = volume.id();
        self.store.hold(&id).await?.ok_or_else(|| BackendError::Contended { step, reason: format!("another operation on volume {id} is in progress") })
    }

    /// The pool of one of this cluster's snapshots, `None` for another's.
    fn snapshot_pool(&self, id: &SnapshotId) -> Option<String> {
        let (cluster, pool) = id.place().split_once(':')?;
        (id.backend() == KIND && cluster == self.shared.config.access.cluster_id && !pool.contains(':')).then(|| pool.to_owned())
    }

    /// The bytes Swell has promised in `pool`, read now.
    #[cfg(feature = "test-util")]
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

#[async_trait::async_trait]
impl Backend for RbdBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn create_volume(&self, name: &str, size_bytes: u64, placement: &Placement) -> Result<Created, BackendError> {
        let volume = self.volume_for(name, placement)?;
        let hold = self.hold(&volume, format!("create {name}")).await?;
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
        let Some(volume) = RbdVolume::parse(id).filter(|v| v.cluster == self.shared.config.access.cluster_id) else { return Ok(None) };
        self.shared.connector.run("read volume", move |conn, _| volume_blocking(conn, &volume)).await
    }

    async fn list_volumes(&self, after: Option<&VolumeId>, limit: usize) -> Result<Vec<VolumeInfo>, BackendError> {
        let (shared, after) = (Arc::clone(&self.shared), after.cloned());
        self.shared.connector.run("list volumes", move |conn, _| list_blocking(&shared, conn, after.as_ref(), limit)).await
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
        self.shared.connector.run("announce size", move |conn, _| announce_blocking(conn, &volume)).await
    }

    async fn collect_garbage(&self) -> Result<usize, BackendError> {
        let shared = Arc::clone(&self.shared);
        self.shared.connector.run("purge trashed images", move |conn, deadline| housekeeping_blocking(&shared, conn, deadline)).await
    }

    fn expansion_store(&self) -> Arc<dyn ExpansionStore> {
        self.store.clone()
    }

    async fn create_snapshot(&self, name: &str, source: &VolumeId) -> Result<Created<SnapshotInfo>, BackendError> {
        let volume = self.shared.ours(source, "snapshot")?.ok_or_else(|| BackendError::NotFound(source.clone()))?;
        // Held: the source neither grows nor goes while it is cut.
        let hold = self.hold(&volume, format!("snapshot {name}")).await?;
        let (shared, name) = (Arc::clone(&self.shared), name.to_owned());
        let created =
            self.shared.connector.run("create snapshot", move |conn, deadline| snapshots::create_blocking(&shared, conn, deadline, &volume, &name)).await;
        hold.release().await;
        created
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), BackendError> {
        let Some(pool) = self.snapshot_pool(id) else { return Ok(()) };
        let (shared, key) = (Arc::clone(&self.shared), id.key().to_owned());
        self.shared.connector.run("delete snapshot", move |conn, deadline| snapshots::delete_blocking(&shared, conn, deadline, &pool, &key)).await
    }

    async fn snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotInfo>, BackendError> {
        let Some(pool) = self.snapshot_pool(id) else { return Ok(None) };
        let (shared, key) = (Arc::clone(&self.shared), id.key().to_owned());
        self.shared.connector.run("read snapshot", move |conn, _| snapshots::read_blocking(&shared, conn, &pool, &key)).await
    }

    async fn list_snapshots(&self, source: Option<&VolumeId>) -> Result<Vec<SnapshotInfo>, BackendError> {
        let source = match source {
            Some(id) => match RbdVolume::parse(id).filter(|v| v.cluster == self.shared.config.access.cluster_id) {
                Some(volume) => Some(volume),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let shared = Arc::clone(&self.shared);
        self.shared.connector.run("list snapshots", move |conn, _| snapshots::list_blocking(&shared, conn, source.as_ref())).await
    }

    async fn create_volume_from(&self, name: &str, size_bytes: u64, placement: &Placement, source: &ContentSource) -> Result<Created, BackendError> {
        let volume = self.volume_for(name, placement)?;
        let hold = self.hold(&volume, format!("create {name}")).await?;
        let (shared, name, source) = (Arc::clone(&self.shared), name.to_owned(), source.clone());
        let created = self
            .shared
            .connector
            .run("create volume from a source", move |conn, deadline| {
                clones::create_from_blocking(&shared, conn, deadline, &volume, &name, size_bytes, &source)
            })
            .await;
        hold.release().await;
        created
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
            RbdConfig { access: swell_storage::CephAccess { cluster_id: "Ceph".into(), ..ok.access.clone() }, ..ok.clone() },
            RbdConfig { access: swell_storage::CephAccess { cluster_id: "a:b".into(), ..ok.access.clone() }, ..ok.clone() },
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
