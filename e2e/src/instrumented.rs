//! A backend wrapper for tests: it records every grow the engine is asked
//! for and every announcement, can add latency (to stand in for a remote
//! engine), fail or hang grows (an outage), and lie the ways real engines
//! do (a grow acknowledged but not made, a short grow, a stale answer, reads
//! that lag behind a grow, a grow that lands after its caller gave up),
//! while the real backend below does the actual work.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use swell_storage::auto_grow::{AutoGrowRecord, Usage};
use swell_storage::{Backend, BackendError, Capacity, ContentSource, Created, ExpansionStore, Placement, SnapshotId, SnapshotInfo, VolumeId, VolumeInfo};

/// How grows behave right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrowMode {
    /// Pass through to the real backend.
    Normal,
    /// Answer UNAVAILABLE without touching the volume.
    Fail,
    /// Never answer (the controller's deadline must cut it off).
    Hang,
    /// Answer OK with the size asked for and leave the engine as it was
    /// (Longhorn 13379: the engine reported the expansion done while a
    /// replica had not grown).
    AckWithoutGrowing,
    /// Grow half of the way and answer OK with the size reached.
    ShortGrow,
    /// Grow all the way but answer with the size from before (a read-back
    /// served from a stale cache).
    StaleAnswer,
    /// Grow and answer truthfully, but the next `n` reads of the volume
    /// answer the size from before (a replica or cache that lags the grow).
    LaggingReads(u32),
    /// Never answer; the engine takes the grow this long after the call,
    /// whether or not the caller still waits (a remote engine that keeps
    /// working after its client's deadline).
    LandsAfter(Duration),
    /// Truthful, but each grow first waits, after Swell recorded its wish
    /// and before the engine is asked, until [`InstrumentedBackend::release_held`]
    /// (a fault can be put inside the expansion).
    Held,
}

/// The wrapper.
pub struct InstrumentedBackend {
    inner: Arc<dyn Backend>,
    grow_latency: Duration,
    mode: Mutex<GrowMode>,
    grows: Mutex<Vec<(VolumeId, u64)>>,
    announcements: Mutex<Vec<VolumeId>>,
    /// Volumes whose reads still answer an old size: `(old size, reads left)`.
    lagging: Mutex<HashMap<VolumeId, (u64, u32)>>,
    lies: AtomicUsize,
    /// Grows asked for while the mode was a lie.
    asked_during_lies: AtomicUsize,
    /// Grows that reached the hold of [`GrowMode::Held`], and whether it is released.
    arrived: tokio::sync::watch::Sender<usize>,
    released: tokio::sync::watch::Sender<bool>,
}

impl InstrumentedBackend {
    /// Wraps `inner`; every grow first waits `grow_latency`.
    pub fn new(inner: Arc<dyn Backend>, grow_latency: Duration) -> Arc<Self> {
        Arc::new(InstrumentedBackend {
            inner,
            grow_latency,
            mode: Mutex::new(GrowMode::Normal),
            grows: Mutex::default(),
            announcements: Mutex::default(),
            lagging: Mutex::default(),
            lies: AtomicUsize::new(0),
            asked_during_lies: AtomicUsize::new(0),
            arrived: tokio::sync::watch::Sender::new(0),
            released: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Switches how grows behave.
    pub fn set_grow_mode(&self, mode: GrowMode) {
        if mode == GrowMode::Held {
            self.arrived.send_replace(0);
            self.released.send_replace(false);
        }
        *self.mode.lock() = mode;
    }

    /// Waits (at most `within`) until a grow waits at the hold; whether one does.
    pub async fn wait_held(&self, within: Duration) -> bool {
        let mut arrived = self.arrived.subscribe();
        tokio::time::timeout(within, arrived.wait_for(|n| *n > 0)).await.is_ok_and(|r| r.is_ok())
    }

    /// Lets every grow held, and every later one, go on to the engine.
    pub fn release_held(&self) {
        self.released.send_replace(true);
    }

    /// Every grow that reached the real backend, in order.
    pub fn grows(&self) -> Vec<(VolumeId, u64)> {
        self.grows.lock().clone()
    }

    /// Every volume whose size was announced to its clients, in order.
    pub fn announcements(&self) -> Vec<VolumeId> {
        self.announcements.lock().clone()
    }

    /// How many answers were lies (a size or a success the engine does not
    /// have, or a grow taken and never answered).
    pub fn lies_told(&self) -> usize {
        self.lies.load(Ordering::SeqCst)
    }

    /// How many grows Swell asked for while the mode was a lie.
    pub fn asked_during_lies(&self) -> usize {
        self.asked_during_lies.load(Ordering::SeqCst)
    }

    /// The volume's size as the engine below holds it, past every lie.
    pub async fn true_size(&self, id: &VolumeId) -> Result<Option<u64>, BackendError> {
        Ok(self.inner.volume(id).await?.map(|v| v.size_bytes))
    }

    async fn grow_inner(&self, id: &VolumeId, size: u64) -> Result<u64, BackendError> {
        self.grows.lock().push((id.clone(), size));
        self.inner.grow_volume(id, size).await
    }

    fn lie(&self) {
        self.lies.fetch_add(1, Ordering::SeqCst);
    }

    async fn current(&self, id: &VolumeId) -> Result<u64, BackendError> {
        self.true_size(id).await?.ok_or_else(|| BackendError::NotFound(id.clone()))
    }
}

#[async_trait::async_trait]
impl Backend for InstrumentedBackend {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn create_volume(&self, name: &str, size: u64, placement: &Placement) -> Result<Created, BackendError> {
        self.inner.create_volume(name, size, placement).await
    }

    async fn delete_volume(&self, id: &VolumeId) -> Result<(), BackendError> {
        self.inner.delete_volume(id).await
    }

    async fn volume(&self, id: &VolumeId) -> Result<Option<VolumeInfo>, BackendError> {
        let mut info = self.inner.volume(id).await?;
        let mut lagging = self.lagging.lock();
        if let (Some(info), Some((old, left))) = (info.as_mut(), lagging.get_mut(id)) {
            info.size_bytes = *old;
            *left -= 1;
            if *left == 0 {
                lagging.remove(id);
            }
            self.lie();
        }
        Ok(info)
    }

    async fn list_volumes(&self, after: Option<&VolumeId>, limit: usize) -> Result<Vec<VolumeInfo>, BackendError> {
        self.inner.list_volumes(after, limit).await
    }

    async fn capacity(&self, placement: &Placement) -> Result<Capacity, BackendError> {
        self.inner.capacity(placement).await
    }

    async fn grow_volume(&self, id: &VolumeId, new_size: u64) -> Result<u64, BackendError> {
        let mode = *self.mode.lock();
        if !matches!(mode, GrowMode::Normal | GrowMode::Fail | GrowMode::Hang | GrowMode::Held) {
            self.asked_during_lies.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(self.grow_latency).await;
        match mode {
            GrowMode::Normal => self.grow_inner(id, new_size).await,
            GrowMode::Fail => Err(BackendError::Unavailable { step: "grow volume".into(), reason: "injected outage".into() }),
            GrowMode::Hang => std::future::pending().await,
            GrowMode::Held => {
                self.arrived.send_modify(|n| *n += 1);
                let mut released = self.released.subscribe();
                let _ = released.wait_for(|r| *r).await;
                self.grow_inner(id, new_size).await
            }
            GrowMode::AckWithoutGrowing => {
                self.lie();
                Ok(new_size)
            }
            GrowMode::ShortGrow => {
                let before = self.current(id).await?;
                // Half way, on a MiB boundary (RBD sizes are whole MiB).
                let halfway = (before + (new_size.saturating_sub(before)) / 2) & !((1 << 20) - 1);
                let reached = self.grow_inner(id, halfway.max(before)).await?;
                if reached < new_size {
                    self.lie();
                }
                Ok(reached)
            }
            GrowMode::StaleAnswer => {
                let before = self.current(id).await?;
                self.grow_inner(id, new_size).await?;
                self.lie();
                Ok(before)
            }
            GrowMode::LaggingReads(reads) => {
                let before = self.current(id).await?;
                let after = self.grow_inner(id, new_size).await?;
                if reads > 0 {
                    self.lagging.lock().insert(id.clone(), (before, reads));
                }
                Ok(after)
            }
            GrowMode::LandsAfter(delay) => {
                // The engine has the request now and carries it out later.
                self.grows.lock().push((id.clone(), new_size));
                self.lie();
                let (inner, id) = (self.inner.clone(), id.clone());
                let landed = tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    inner.grow_volume(&id, new_size).await
                });
                // The grow goes on when the caller drops this future at its deadline.
                let _ = landed.await;
                std::future::pending().await
            }
        }
    }

    fn keeps_auto_grow(&self) -> bool {
        self.inner.keeps_auto_grow()
    }

    async fn set_auto_grow(&self, id: &VolumeId, record: &AutoGrowRecord) -> Result<(), BackendError> {
        self.inner.set_auto_grow(id, record).await
    }

    async fn auto_grow(&self, id: &VolumeId) -> Result<(Option<AutoGrowRecord>, Option<Usage>), BackendError> {
        self.inner.auto_grow(id).await
    }

    async fn wanting_to_grow(&self) -> Result<Vec<VolumeId>, BackendError> {
        self.inner.wanting_to_grow().await
    }

    async fn settle_auto_grow(&self, id: &VolumeId) -> Result<(), BackendError> {
        self.inner.settle_auto_grow(id).await
    }

    async fn announce_size(&self, id: &VolumeId) -> Result<(), BackendError> {
        self.announcements.lock().push(id.clone());
        self.inner.announce_size(id).await
    }

    async fn collect_garbage(&self) -> Result<usize, BackendError> {
        self.inner.collect_garbage().await
    }

    fn lists_recorded_sizes(&self) -> bool {
        self.inner.lists_recorded_sizes()
    }

    fn expansion_store(&self) -> Arc<dyn ExpansionStore> {
        self.inner.expansion_store()
    }

    async fn check_health(&self) -> Result<(), BackendError> {
        self.inner.check_health().await
    }

    async fn create_snapshot(&self, name: &str, source: &VolumeId) -> Result<Created<SnapshotInfo>, BackendError> {
        self.inner.create_snapshot(name, source).await
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), BackendError> {
        self.inner.delete_snapshot(id).await
    }

    async fn snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotInfo>, BackendError> {
        self.inner.snapshot(id).await
    }

    async fn list_snapshots(&self, source: Option<&VolumeId>) -> Result<Vec<SnapshotInfo>, BackendError> {
        self.inner.list_snapshots(source).await
    }

    async fn create_volume_from(&self, name: &str, size: u64, placement: &Placement, source: &ContentSource) -> Result<Created, BackendError> {
        self.inner.create_volume_from(name, size, placement, source).await
    }

    async fn source_encrypted(&self, source: &ContentSource) -> Result<bool, BackendError> {
        self.inner.source_encrypted(source).await
    }
}
