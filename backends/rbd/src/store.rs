//! [`RbdStore`]: the RBD backend's [`ExpansionStore`]. Records are the
//! entries of the pool's state object ([`crate::state`]), holds are the
//! volumes' RADOS locks ([`crate::lease`]); both live in the cluster, so a
//! controller started anywhere with an empty state directory finds every
//! interrupted grow, and replicas exclude each other.

use std::sync::Arc;
use std::time::Duration;

use swell_storage::{BackendError, ExpansionRecord, ExpansionStore, Hold, RbdVolume, Records, Unreadable, VolumeId};

use crate::commit::{Change, Outcome};
use crate::context::{ListedVolume, Shared};
use crate::errors::RbdError;
use crate::lease::{Acquired, VolumeLease, remove_lock_object};
use crate::state::{self, Entry, Phase};

/// Records and holds of one cluster's RBD volumes.
pub(crate) struct RbdStore {
    shared: Arc<Shared>,
}

impl RbdStore {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        RbdStore { shared }
    }

    fn volume(&self, id: &VolumeId, step: &str) -> Result<RbdVolume, BackendError> {
        self.shared.ours(id, step)?.ok_or_else(|| BackendError::NotFound(id.clone()))
    }

    /// Holds `id`'s volume: its RADOS lock, which is a write of the lock
    /// object. With `existing_only`, an id the pool's state has no entry
    /// for is NotFound and nothing is written: a crafted id must not leave
    /// a `swell.lock.<image>` object behind. Creates hold a volume before
    /// its entry exists, so they do not ask for that.
    pub(crate) async fn hold_volume(&self, id: &VolumeId, existing_only: bool) -> Result<Option<Hold>, BackendError> {
        let volume = self.volume(id, "hold")?;
        let shared = &self.shared;
        if let Some(kept) = shared.lingering().take(&volume.pool, &volume.image).await {
            return Ok(Some(Hold::new(Box::new(kept))));
        }
        // This process may be giving the lock back this very moment (a kept
        // lock whose moment passed): wait for that rather than refuse.
        shared.lingering().wait_unlocked(&volume.pool, &volume.image, shared.call_deadline()).await;
        let Some(local) = shared.local_holds().try_acquire(&id.to_string()) else { return Ok(None) };
        let (pool, image, unknown) = (volume.pool.clone(), volume.image.clone(), id.clone());
        let acquired = shared
            .run("lock volume", move |call| {
                let pool = call.existing_pool(&pool)?;
                if existing_only && pool.entry(&image)?.is_none() {
                    return Err(RbdError::Refused(BackendError::NotFound(unknown)));
                }
                call.shared().leases().acquire(call.conn(), pool.io(), &image)
            })
            .await?;
        match acquired {
            Acquired::Held(until) => {
                let lease = VolumeLease::start(
                    shared.connector().clone(),
                    Arc::clone(shared.leases()),
                    Arc::clone(shared.lingering()),
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
}

#[async_trait::async_trait]
impl ExpansionStore for RbdStore {
    async fn hold(&self, id: &VolumeId) -> Result<Option<Hold>, BackendError> {
        self.hold_volume(id, true).await
    }

    async fn record(&self, id: &VolumeId) -> Result<Option<ExpansionRecord>, BackendError> {
        let volume = self.volume(id, "read record")?;
        self.shared
            .run("read expansion record", move |call| match call.pool(&volume.pool)? {
                Some(pool) => Ok(pool.entry(&volume.image)?.map(|e| e.record)),
                None => Ok(None),
            })
            .await
    }

    async fn write(&self, hold: &Hold, record: ExpansionRecord) -> Result<ExpansionRecord, BackendError> {
        let id = record.volume_id.clone();
        let volume = self.volume(&id, "write record")?;
        if !hold.still_held() {
            return Err(BackendError::Contended { step: format!("write expansion record of {id}"), reason: "the volume's lease ran out".into() });
        }
        let outcome = self
            .shared
            .run("write expansion record", move |call| {
                let pool = call.existing_pool(&volume.pool)?;
                pool.commit(Change::Put { image: volume.image.clone(), name: None, phase: None, lineage: None, record })
            })
            .await?;
        match outcome {
            Outcome::Stored(entry) => Ok(entry.record),
            other => Err(BackendError::corrupt(format!("write expansion record of {id}"), format!("a put answered {other:?}"))),
        }
    }

    /// A deleted volume's entry stays as a tombstone until the background
    /// work has moved its image to the trash, and a create in flight is
    /// the background work's to judge; a made volume found gone goes now,
    /// with its lock object.
    async fn forget(&self, hold: Hold, id: &VolumeId) -> Result<(), BackendError> {
        let volume = self.volume(id, "forget")?;
        let forgotten = self
            .shared
            .run("remove expansion record", move |call| {
                let Some(pool) = call.pool(&volume.pool)? else { return Ok(()) };
                match pool.entry(&volume.image)? {
                    Some(entry) if entry.phase == Phase::Ready => {
                        pool.commit(Change::Remove { image: volume.image.clone(), generation: Some(entry.record.generation) })?;
                        remove_lock_object(pool.io(), &volume)
                    }
                    _ => Ok(()),
                }
            })
            .await;
        hold.release_deleted().await;
        forgotten
    }

    async fn pending(&self) -> Result<Records, BackendError> {
        self.shared
            .run("list pending expansions", |call| {
                let listed = call.each_pool(|pool| {
                    let entries = state::pending_entries(pool.io(), pool.layout())?;
                    // Pools whose names cannot be part of an id hold no Swell volume.
                    Ok(entries.into_iter().filter_map(|(image, entry)| Some((pool.volume(&image).ok()?, entry))).collect())
                })?;
                Ok(records(listed, |entry| entry.live() && entry.record.pending(), call.config().op_timeout))
            })
            .await
    }

    async fn page(&self, after: Option<&VolumeId>, limit: usize) -> Result<Records, BackendError> {
        if limit == 0 {
            return Ok(Records::default());
        }
        let after = after.cloned();
        self.shared.run("list expansion records", move |call| Ok(records(call.volumes_after(after.as_ref(), limit)?, |_| true, call.config().op_timeout))).await
    }
}

/// The records of `listed` entries `wanted` keeps, and the unreadable ones.
fn records(listed: Vec<ListedVolume>, wanted: impl Fn(&Entry) -> bool, op_timeout: Duration) -> Records {
    let mut records = Records::default();
    for (volume, entry) in listed {
        match entry {
            Ok(entry) if wanted(&entry) => records.readable.push(entry.record),
            Ok(_) => {}
            Err(err) => records.unreadable.push(Unreadable { volume: volume.id(), reason: err.into_backend(op_timeout).to_string() }),
        }
    }
    records
}
