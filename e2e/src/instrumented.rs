//! A backend wrapper for tests: it records every grow the engine is asked for,
//! can add latency (to stand in for a remote engine) and can fail or hang
//! grows on demand (to stand in for an outage), while the real backend below
//! does the actual work.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swell_storage::{Backend, BackendError, Capacity, Created, ExpansionStore, VolumeId, VolumeInfo};

/// How grows behave right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GrowMode {
    /// Pass through to the real backend.
    Normal = 0,
    /// Answer UNAVAILABLE without touching the volume.
    Fail = 1,
    /// Never answer (the controller's deadline must cut it off).
    Hang = 2,
}

/// The wrapper.
pub struct InstrumentedBackend {
    inner: Arc<dyn Backend>,
    grow_latency: Duration,
    mode: AtomicU8,
    grows: Mutex<Vec<(VolumeId, u64)>>,
    announcements: Mutex<Vec<VolumeId>>,
}

impl InstrumentedBackend {
    /// Wraps `inner`; every grow first waits `grow_latency`.
    pub fn new(inner: Arc<dyn Backend>, grow_latency: Duration) -> Arc<Self> {
        Arc::new(InstrumentedBackend {
            inner,
            grow_latency,
            mode: AtomicU8::new(GrowMode::Normal as u8),
            grows: Mutex::default(),
            announcements: Mutex::default(),
        })
    }

    /// Switches how grows behave.
    pub fn set_grow_mode(&self, mode: GrowMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Every grow that reached the real backend, in order.
    pub fn grows(&self) -> Vec<(VolumeId, u64)> {
        self.grows.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every volume whose size was announced to its clients, in order.
    pub fn announcements(&self) -> Vec<VolumeId> {
        self.announcements.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl Backend for InstrumentedBackend {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn create_volume(&self, name: &str, size: u64, params: &BTreeMap<String, String>) -> Result<Created, BackendError> {
        self.inner.create_volume(name, size, params).await
    }

    async fn delete_volume(&self, id: &VolumeId) -> Result<(), BackendError> {
        self.inner.delete_volume(id).await
    }

    async fn volume(&self, id: &VolumeId) -> Result<Option<VolumeInfo>, BackendError> {
        self.inner.volume(id).await
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, BackendError> {
        self.inner.list_volumes().await
    }

    async fn capacity(&self) -> Result<Capacity, BackendError> {
        self.inner.capacity().await
    }

    async fn grow_volume(&self, id: &VolumeId, new_size: u64) -> Result<u64, BackendError> {
        match self.mode.load(Ordering::SeqCst) {
            1 => return Err(BackendError::Unavailable { step: "grow volume".into(), reason: "injected outage".into() }),
            2 => std::future::pending::<()>().await,
            _ => {}
        }
        tokio::time::sleep(self.grow_latency).await;
        self.grows.lock().unwrap_or_else(|p| p.into_inner()).push((id.clone(), new_size));
        self.inner.grow_volume(id, new_size).await
    }

    async fn announce_size(&self, id: &VolumeId) -> Result<(), BackendError> {
        self.announcements.lock().unwrap_or_else(|p| p.into_inner()).push(id.clone());
        self.inner.announce_size(id).await
    }

    async fn collect_garbage(&self) -> Result<usize, BackendError> {
        self.inner.collect_garbage().await
    }

    fn expansion_store(&self) -> Option<Arc<dyn ExpansionStore>> {
        self.inner.expansion_store()
    }

    async fn check_health(&self) -> Result<(), BackendError> {
        self.inner.check_health().await
    }
}
