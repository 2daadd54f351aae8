//! [`RbdStore`]: the RBD backend's [`ExpansionStore`]. Records are the
//! entries of the pool's state object ([`super::state`]), holds are the
//! volumes' RADOS locks ([`super::lease`]); both live in the cluster, so a
//! controller started anywhere with an empty state directory finds every
//! interrupted grow, and replicas exclude each other.

use std::sync::Arc;

use swell_storage::{BackendError, ExpansionRecord, ExpansionStore, Hold, RbdVolume, VolumeId};

use super::backend::Shared;
use super::commit::{Change, Outcome};
use super::errors::RbdError;
use super::ffi::{Errno, WriteOp};
use super::lease::{Acquired, VolumeLease, lock_object};
use super::state::{self, Phase};

/// Records and holds of one cluster's RBD volumes.
pub struct RbdStore {
    shared: Arc<Shared>,
}

impl RbdStore {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        RbdStore { shared }
    }

    fn volume(&self, id: &VolumeId, step: &str) -> Result<RbdVolume, BackendError> {
        self.shared.ours(id, step)?.ok_or_else(|| BackendError::NotFound(id.clone()))
    }

    /// Every pool's records, listed by `list` (one call per pool).
    async fn each_pool<T: Send + 'static>(
        &self,
        step: &'static str,
        list: impl Fn(&str, &super::ffi::IoCtx) -> Result<Vec<T>, RbdError> + Send + 'static,
    ) -> Result<Vec<T>, BackendError> {
        let shared = Arc::clone(&self.shared);
        self.shared
            .connector
            .run(step, move |conn, _| {
                let mut pools = shared.readings.pools(conn)?;
                pools.sort();
                let mut found = Vec::new();
                for pool in pools {
                    if let Some(io) = conn.pool(&pool)? {
                        found.extend(list(&pool, &io)?);
                    }
                }
                Ok(found)
            })
            .await
    }
}

/// Removes a volume's lock object (and so the lock on it) while this
/// process holds it, so nobody else's lock is removed by mistake.
pub(crate) fn remove_lock_object(io: &super::ffi::IoCtx, volume: &RbdVolume) -> Result<(), RbdError> {
    let mut remove = WriteOp::default();
    remove.remove();
    match remove.operate(io, &lock_object(&volume.image)) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(RbdError::osd("remove lock object", e, Some(&volume.id()))),
    }
}

#[async_trait::async_trait]
impl ExpansionStore for RbdStore {
    async fn hold(&self, id: &VolumeId) -> Result<Option<Hold>, BackendError> {
        let volume = self.volume(id, "hold")?;
        if let Some(kept) = self.shared.lingering.take(&volume.pool, &volume.image).await {
            return Ok(Some(Hold::new(Box::new(kept))));
        }
        // This process may be giving the lock back this very moment (a kept
        // lock whose moment passed): wait for that rather than refuse.
        self.shared.lingering.wait_unlocked(&volume.pool, &volume.image, self.shared.connector.deadline()).await;
        let Some(local) = self.shared.local.try_acquire(&id.to_string()) else { return Ok(None) };
        let (leases, pool, image) = (Arc::clone(&self.shared.leases), volume.pool.clone(), volume.image.clone());
        let acquired = self
            .shared
            .connector
            .run("lock volume", move |conn, _| {
                let io = super::backend::Shared::io(conn, &pool)?;
                leases.acquire(conn, &io, &image)
            })
            .await?;
        match acquired {
            Acquired::Held(until) => {
                let lease = VolumeLease::start(
                    self.shared.connector.clone(),
                    Arc::clone(&self.shared.leases),
                    Arc::clone(&self.shared.lingering),
                    volume.pool,
                    volume.image,
                    until,
                    local,
                );
                Ok(Some(Hold::new(Box::new(lease))))
            }
            Acquired::Busy(by) => {
                tracing::debug!(volume.id = %id, held_by = by, "volume is held by another controller");
                Ok(None)
            }
        }
    }

    async fn record(&self, id: &VolumeId) -> Result<Option<ExpansionRecord>, BackendError> {
        let volume = self.volume(id, "read record")?;
        self.shared
            .connector
            .run("read expansion record", move |conn, _| match conn.pool(&volume.pool)? {
                Some(io) => Ok(state::read_entry(&io, &volume.image)?.map(|e| e.record)),
                None => Ok(None),
            })
            .await
    }

    async fn write(&self, hold: &Hold, record: ExpansionRecord) -> Result<ExpansionRecord, BackendError> {
        let id: VolumeId = record.volume_id.parse().map_err(|e| BackendError::corrupt("write expansion record", e))?;
        let volume = self.volume(&id, "write record")?;
        if !hold.still_held() {
            return Err(BackendError::Contended { step: format!("write expansion record of {id}"), reason: "the volume's lease ran out".into() });
        }
        let shared = Arc::clone(&self.shared);
        let outcome = self
            .shared
            .connector
            .run("write expansion record", move |conn, deadline| {
                let io = super::backend::Shared::io(conn, &volume.pool)?;
                shared.commit(conn, &io, &volume.pool, Change::Put { image: volume.image.clone(), name: None, phase: None, lineage: None, record }, deadline)
            })
            .await?;
        match outcome {
            Outcome::Stored(entry) => Ok(entry.record),
            _ => unreachable!("a put stores"),
        }
    }

    /// A deleted volume's entry stays as a tombstone until the background
    /// work has moved its image to the trash, and a create in flight is
    /// the background work's to judge; a made volume found gone goes now,
    /// with its lock object.
    async fn forget(&self, hold: Hold, id: &VolumeId) -> Result<(), BackendError> {
        let volume = self.volume(id, "forget")?;
        let shared = Arc::clone(&self.shared);
        let forgotten = self
            .shared
            .connector
            .run("remove expansion record", move |conn, deadline| {
                let Some(io) = conn.pool(&volume.pool)? else { return Ok(()) };
                match state::read_entry(&io, &volume.image)? {
                    Some(entry) if entry.phase == Phase::Ready => {
                        let remove = Change::Remove { image: volume.image.clone(), generation: Some(entry.record.generation) };
                        shared.commit(conn, &io, &volume.pool, remove, deadline)?;
                        remove_lock_object(&io, &volume)
                    }
                    _ => Ok(()),
                }
            })
            .await;
        hold.release_deleted().await;
        forgotten
    }

    async fn pending(&self) -> Result<Vec<ExpansionRecord>, BackendError> {
        let expansions = |_: &str, io: &super::ffi::IoCtx| {
            Ok(state::pending_entries(io)?.into_iter().filter(|(_, e)| e.live() && e.record.pending()).map(|(_, e)| e.record).collect())
        };
        self.each_pool("list pending expansions", expansions).await
    }

    async fn page(&self, after: Option<&VolumeId>, limit: usize) -> Result<Vec<ExpansionRecord>, BackendError> {
        let after = after.and_then(RbdVolume::parse);
        let shared = Arc::clone(&self.shared);
        self.shared
            .connector
            .run("list expansion records", move |conn, _| {
                let mut pools = shared.readings.pools(conn)?;
                pools.sort();
                let mut records = Vec::new();
                for pool in pools.into_iter().filter(|p| after.as_ref().is_none_or(|a| *p >= a.pool)) {
                    let Some(io) = conn.pool(&pool)? else { continue };
                    let mut from = after.as_ref().filter(|a| a.pool == pool).map(|a| a.image.clone());
                    // Deleted volumes' entries are skipped, not counted.
                    loop {
                        let left = limit.saturating_sub(records.len());
                        if left == 0 {
                            break;
                        }
                        let page = state::page_entries(&io, from.as_deref(), left)?;
                        let (read, last) = (page.len(), page.last().map(|(image, _)| image.clone()));
                        records.extend(page.into_iter().filter(|(_, e)| e.live()).map(|(_, e)| e.record));
                        if read < left {
                            break;
                        }
                        from = last;
                    }
                }
                Ok(records)
            })
            .await
    }
}
