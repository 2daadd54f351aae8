//! [`RbdBackend`]: Swell's [`Backend`] over RBD images.
//!
//! A volume named `n` is the image `swell-<32 hex of sha256(n)>` in its
//! pool (`swell_storage::rbd_volume`), so a retried create lands on the
//! same image. What Swell knows about it (the CO's name, its expansion
//! record, the bytes it promised) is its entry in the pool's state object
//! ([`crate::state`]); its size is always read from its header, except in
//! a ListVolumes page, which shows the sizes the records last saw
//! ([`crate::volumes::list`]). The operations themselves are in
//! [`crate::volumes`], [`crate::snapshots`] and [`crate::clones`], the work
//! they leave to the background in [`crate::housekeeping`], auto-grow's
//! state in [`crate::auto_grow`].

use std::sync::Arc;
use std::time::Duration;

use swell_storage::auto_grow::{AutoGrowRecord, Usage};
use swell_storage::{
    Backend, BackendError, Capacity, ContentSource, Created, ExpansionStore, Hold, Placement, RbdVolume, SnapshotId, SnapshotInfo, VolumeId, VolumeInfo,
};

use crate::config::RbdConfig;
use crate::context::Shared;
use crate::store::RbdStore;
use crate::{KIND, auto_grow, clones, housekeeping, snapshots, state, volumes};
use swell_storage::rbd_volume::namespace_problem;

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
        check(&config)?;
        let shared = Arc::new(Shared::new(config));
        Ok(RbdBackend { store: Arc::new(RbdStore::new(Arc::clone(&shared))), shared })
    }

    /// How long one call may take before this backend answers Timeout.
    pub fn call_deadline(&self) -> Duration {
        self.shared.call_deadline()
    }

    /// `pool`'s room: its usage at most a reading's age old, Swell's
    /// promised total read now.
    async fn pool_capacity(&self, pool: String) -> Result<Capacity, BackendError> {
        self.shared
            .run("read pool capacity", move |call| {
                let pool = call.existing_pool(&pool)?;
                let swell = state::read_total(pool.io(), pool.layout())?;
                let config = call.config();
                call.shared().readings().capacity(call.conn(), pool.name(), swell, config.overprovision_ratio, config.count_foreign_images)
            })
            .await
    }

    /// The volume a CO name gets in the pool `placement` names (or the default).
    fn volume_for(&self, name: &str, placement: &Placement) -> Result<RbdVolume, BackendError> {
        let config = self.shared.config();
        let pool = placement.pool.clone().unwrap_or_else(|| config.default_pool.clone());
        RbdVolume::for_name_in(&config.access.cluster_id, &pool, &config.namespace, name)
            .map_err(|e| BackendError::InvalidParameter { name: "pool".into(), reason: format!("{pool:?} cannot be part of a volume id: {e}") })
    }

    /// Holds `volume` for `step`, or answers Contended at once.
    async fn hold(&self, volume: &RbdVolume, step: String) -> Result<Hold, BackendError> {
        let id = volume.id();
        self.store
            .hold_volume(&id, false)
            .await?
            .ok_or_else(|| BackendError::Contended { step, reason: format!("another operation on volume {id} is in progress") })
    }

    /// The bytes Swell has promised in `pool`, read now.
    #[cfg(feature = "test-util")]
    pub async fn promised(&self, pool: &str) -> Result<u64, BackendError> {
        let pool = pool.to_owned();
        self.shared
            .run("read promised total", move |call| {
                let pool = call.existing_pool(&pool)?;
                state::read_total(pool.io(), pool.layout())
            })
            .await
    }
}

/// Refuses a configuration before anything is contacted.
fn check(config: &RbdConfig) -> Result<(), ConfigError> {
    for (what, value) in [("cluster id", &config.access.cluster_id), ("default pool", &config.default_pool)] {
        if VolumeId::new(KIND, value).is_err() || value.contains(':') {
            return Err(ConfigError(format!("{what} {value:?} must be lowercase [a-z0-9._-]")));
        }
    }
    if let Some(problem) = namespace_problem(&config.namespace) {
        return Err(ConfigError(format!("RADOS namespace {:?} {problem}", config.namespace)));
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
    Ok(())
}

#[async_trait::async_trait]
impl Backend for RbdBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn create_volume(&self, name: &str, size_bytes: u64, placement: &Placement) -> Result<Created, BackendError> {
        let volume = self.volume_for(name, placement)?;
        let hold = self.hold(&volume, format!("create {name}")).await?;
        let name = name.to_owned();
        let created = self.shared.run("create volume", move |call| volumes::create(call, &volume, &name, size_bytes)).await;
        hold.release().await;
        created
    }

    async fn delete_volume(&self, id: &VolumeId) -> Result<(), BackendError> {
        let Some(volume) = self.shared.ours(id, "delete")? else { return Ok(()) };
        self.shared.run("delete volume", move |call| volumes::delete(call, &volume)).await
    }

    async fn volume(&self, id: &VolumeId) -> Result<Option<VolumeInfo>, BackendError> {
        let Some(volume) = self.shared.ours_quietly(id) else { return Ok(None) };
        self.shared.run("read volume", move |call| volumes::read(call, &volume)).await
    }

    async fn list_volumes(&self, after: Option<&VolumeId>, limit: usize) -> Result<Vec<VolumeInfo>, BackendError> {
        let after = after.cloned();
        self.shared.run("list volumes", move |call| volumes::list(call, after.as_ref(), limit)).await
    }

    fn lists_recorded_sizes(&self) -> bool {
        true
    }

    async fn capacity(&self, placement: &Placement) -> Result<Capacity, BackendError> {
        self.pool_capacity(placement.pool.clone().unwrap_or_else(|| self.shared.config().default_pool.clone())).await
    }

    async fn room_for(&self, id: &VolumeId) -> Result<Capacity, BackendError> {
        let volume = self.shared.ours(id, "read pool capacity")?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        self.pool_capacity(volume.pool).await
    }

    async fn grow_volume(&self, id: &VolumeId, new_size_bytes: u64) -> Result<u64, BackendError> {
        let volume = self.shared.ours(id, "grow")?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        self.shared.run("grow volume", move |call| volumes::grow(call, &volume, new_size_bytes)).await
    }

    async fn announce_size(&self, id: &VolumeId) -> Result<(), BackendError> {
        let volume = self.shared.ours(id, "announce size")?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        self.shared.run("announce size", move |call| volumes::announce_size(call, &volume)).await
    }

    async fn collect_garbage(&self) -> Result<usize, BackendError> {
        self.shared.run("purge trashed images", housekeeping::housekeeping).await
    }

    fn expansion_store(&self) -> Arc<dyn ExpansionStore> {
        self.store.clone()
    }

    fn keeps_auto_grow(&self) -> bool {
        true
    }

    async fn set_auto_grow(&self, id: &VolumeId, record: &AutoGrowRecord) -> Result<(), BackendError> {
        let volume = self.shared.ours(id, "store auto-grow policy")?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        let record = record.clone();
        self.shared.run("store auto-grow policy", move |call| auto_grow::store_record(call, &volume, &record)).await
    }

    async fn auto_grow(&self, id: &VolumeId) -> Result<(Option<AutoGrowRecord>, Option<Usage>), BackendError> {
        let Some(volume) = self.shared.ours_quietly(id) else { return Ok((None, None)) };
        self.shared.run("read auto-grow state", move |call| auto_grow::read(call, &volume)).await
    }

    async fn wanting_to_grow(&self) -> Result<Vec<VolumeId>, BackendError> {
        self.shared.run("list volumes wanting to grow", auto_grow::wanted).await
    }

    async fn settle_auto_grow(&self, id: &VolumeId) -> Result<(), BackendError> {
        let Some(volume) = self.shared.ours_quietly(id) else { return Ok(()) };
        self.shared.run("settle auto-grow", move |call| auto_grow::unmark(call, &volume)).await
    }

    async fn create_snapshot(&self, name: &str, source: &VolumeId) -> Result<Created<SnapshotInfo>, BackendError> {
        let volume = self.shared.ours(source, "snapshot")?.ok_or_else(|| BackendError::NotFound(source.clone()))?;
        // Held: the source neither grows nor goes while it is cut.
        let hold = self.hold(&volume, format!("snapshot {name}")).await?;
        let name = name.to_owned();
        let created = self.shared.run("create snapshot", move |call| snapshots::create(call, &volume, &name)).await;
        hold.release().await;
        created
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), BackendError> {
        let Some(pool) = snapshots::pool_of(self.shared.config(), id) else { return Ok(()) };
        let key = id.key().to_owned();
        self.shared.run("delete snapshot", move |call| snapshots::delete(call, &pool, &key)).await
    }

    async fn snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotInfo>, BackendError> {
        let Some(pool) = snapshots::pool_of(self.shared.config(), id) else { return Ok(None) };
        let key = id.key().to_owned();
        self.shared.run("read snapshot", move |call| snapshots::read(call, &pool, &key)).await
    }

    async fn list_snapshots(&self, source: Option<&VolumeId>) -> Result<Vec<SnapshotInfo>, BackendError> {
        let source = match source {
            Some(id) => match self.shared.ours_quietly(id) {
                Some(volume) => Some(volume),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        self.shared.run("list snapshots", move |call| snapshots::list(call, source.as_ref())).await
    }

    async fn create_volume_from(&self, name: &str, size_bytes: u64, placement: &Placement, source: &ContentSource) -> Result<Created, BackendError> {
        let volume = self.volume_for(name, placement)?;
        let hold = self.hold(&volume, format!("create {name}")).await?;
        let (name, source) = (name.to_owned(), source.clone());
        let created = self.shared.run("create volume from a source", move |call| clones::create_from(call, &volume, &name, size_bytes, &source)).await;
        hold.release().await;
        created
    }

    async fn source_encrypted(&self, source: &ContentSource) -> Result<bool, BackendError> {
        let source = source.clone();
        self.shared.run("read the source's encryption", move |call| clones::source_encrypted(call, &source)).await
    }

    async fn check_health(&self) -> Result<(), BackendError> {
        // Its own slot: a probe polled fast never starves CSI calls.
        self.shared.run_health("health check", |call| call.shared().readings().pool(call.conn(), &call.config().default_pool, true).map(drop)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            RbdConfig { namespace: "-team".into(), ..ok.clone() },
            RbdConfig { namespace: "team/b".into(), ..ok.clone() },
            RbdConfig { namespace: "n".repeat(33), ..ok.clone() },
        ] {
            assert!(RbdBackend::new(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pools_that_cannot_be_in_an_id_are_invalid_parameters() {
        let b = RbdBackend::new(RbdConfig::new("ceph-a", "/c", "/k")).unwrap();
        let placed = |pool: &str| b.volume_for("pvc", &Placement { pool: Some(pool.into()) });
        assert!(matches!(placed("Bad Pool"), Err(BackendError::InvalidParameter { .. })));
        assert!(placed("fast").unwrap().id().to_string().starts_with("rbd:ceph-a:fast:swell-"));
        let spaced = RbdBackend::new(RbdConfig { namespace: "team-b".into(), ..RbdConfig::new("ceph-a", "/c", "/k") }).unwrap();
        let volume = spaced.volume_for("pvc", &Placement { pool: Some("fast".into()) }).unwrap();
        assert!(volume.id().to_string().starts_with("rbd:ceph-a:fast:team-b:swell-"), "{volume}");
    }
}
