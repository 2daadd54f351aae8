//! [`NodeContext`]: what every RPC's domain logic shares.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use swell_storage::locks::KeyedLocks;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::{attach, format, metrics, staging, system};

/// What every RPC's domain logic shares: configuration, the per-volume
/// locks, the staging records, the attachers and the host they act on.
#[derive(Debug)]
pub struct NodeContext {
    /// The node's configuration.
    pub config: NodeConfig,
    /// One fail-fast lock per volume id, shared by all mutating RPCs.
    pub locks: KeyedLocks,
    /// The volumes the background grower holds (see `background_grow`):
    /// an RPC that finds one of them busy waits for that grow instead of
    /// failing.
    pub(crate) growing: KeyedLocks,
    /// Woken each time a background grow lets its volume go.
    grow_done: Arc<Notify>,
    /// Durable records of what is staged where.
    pub staging: staging::StagingStore,
    /// Durable records of formats begun and not yet finished.
    pub(crate) formats: format::FormatLog,
    /// The attachers, chosen by volume id backend.
    pub attachers: attach::Attachers,
    /// The host's mounts, loop devices and programs.
    pub sys: Arc<dyn system::System>,
    /// What the node counts and times.
    pub metrics: metrics::NodeMetrics,
}

impl NodeContext {
    /// Builds the context, creating the node's state directory.
    pub fn new(config: NodeConfig) -> Result<Self, NodeError> {
        let sys = Arc::new(system::HostSystem::confined_to(config.kubelet_dir.clone()));
        Self::with_system(config, sys)
    }

    /// Builds the context over `sys` (a test double in unit tests).
    pub fn with_system(config: NodeConfig, sys: Arc<dyn system::System>) -> Result<Self, NodeError> {
        let staging = staging::StagingStore::open(&config.state_dir)?;
        let formats = format::FormatLog::open(&config.state_dir)?;
        let attachers = attach::Attachers::new(&config, sys.clone())?;
        Ok(NodeContext {
            config,
            locks: KeyedLocks::new(),
            growing: KeyedLocks::new(),
            grow_done: Arc::default(),
            staging,
            formats,
            attachers,
            sys,
            metrics: metrics::NodeMetrics::default(),
        })
    }

    /// Takes the volume's lock, or fails at once with ABORTED while another
    /// RPC holds it. A background grow of the volume is waited for (at most
    /// [`BACKGROUND_GROW_WAIT`]): it is short and bounded, and kubelet's
    /// NodeExpandVolume or NodeUnstageVolume arriving meanwhile should find
    /// it done rather than be sent into backoff.
    pub async fn lock(&self, volume: &swell_storage::VolumeId) -> Result<swell_storage::locks::KeyGuard, NodeError> {
        let key = volume.to_string();
        let started = Instant::now();
        loop {
            // Registered before the checks, so a grow ending between them
            // still wakes this call.
            let grow_done = self.grow_done.notified();
            if let Some(guard) = self.locks.try_acquire(&key) {
                return Ok(guard);
            }
            let left = BACKGROUND_GROW_WAIT.saturating_sub(started.elapsed());
            if !self.growing.is_held(&key) || left.is_zero() || tokio::time::timeout(left, grow_done).await.is_err() {
                return Err(NodeError::Busy { volume: key });
            }
        }
    }
}

/// How long an RPC waits for a background grow of its volume: far longer
/// than such a grow takes when the host is well (a device refresh, an online
/// grow, a check: 0.1 s measured), shorter than kubelet's deadline for the
/// call (2 min). Past it the RPC answers ABORTED and kubelet retries.
const BACKGROUND_GROW_WAIT: Duration = Duration::from_secs(60);

impl NodeContext {
    /// Takes the volume's lock for a background grow, marked as such, if
    /// nobody holds it; `None` leaves the volume to its RPC.
    pub(crate) fn try_lock_for_background(&self, volume: &swell_storage::VolumeId) -> Option<BackgroundHold> {
        let key = volume.to_string();
        // Marked first, so an RPC never sees the lock held unmarked.
        let mark = self.growing.try_acquire(&key)?;
        let lock = self.locks.try_acquire(&key)?;
        Some(BackgroundHold { _lock: lock, _mark: mark, _announce: AnnounceOnDrop(self.grow_done.clone()) })
    }
}

/// A volume's lock held by the background grower. Fields drop in order:
/// the lock before the mark, so a waiting RPC never sees the lock still
/// held without the mark and gives up; then the RPCs waiting are woken.
#[derive(Debug)]
pub(crate) struct BackgroundHold {
    _lock: swell_storage::locks::KeyGuard,
    _mark: swell_storage::locks::KeyGuard,
    _announce: AnnounceOnDrop,
}

/// Wakes every RPC waiting for a background grow when dropped.
#[derive(Debug)]
struct AnnounceOnDrop(Arc<Notify>);

impl Drop for AnnounceOnDrop {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}
