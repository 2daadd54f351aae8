//! [`NodeContext`]: what every RPC's domain logic shares.

use std::sync::Arc;

use swell_storage::locks::KeyedLocks;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::{attach, metrics, staging, system};

/// What every RPC's domain logic shares: configuration, the per-volume
/// locks, the staging records, the attachers and the host they act on.
#[derive(Debug)]
pub struct NodeContext {
    /// The node's configuration.
    pub config: NodeConfig,
    /// One fail-fast lock per volume id, shared by all mutating RPCs.
    pub locks: KeyedLocks,
    /// Durable records of what is staged where.
    pub staging: staging::StagingStore,
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
        let sys = Arc::new(system::ConfinedHost::new(config.kubelet_dir.clone()));
        Self::with_system(config, sys)
    }

    /// Builds the context over `sys` (a test double in unit tests).
    pub fn with_system(config: NodeConfig, sys: Arc<dyn system::System>) -> Result<Self, NodeError> {
        let staging = staging::StagingStore::open(&config.state_dir)?;
        let attachers = attach::Attachers::new(&config, sys.clone())?;
        Ok(NodeContext { config, locks: KeyedLocks::new(), staging, attachers, sys, metrics: metrics::NodeMetrics::default() })
    }

    /// Takes the volume's lock or fails at once with ABORTED.
    pub fn lock(&self, volume: &swell_storage::VolumeId) -> Result<swell_storage::locks::KeyGuard, NodeError> {
        self.locks.try_acquire(&volume.to_string()).ok_or_else(|| NodeError::Busy { volume: volume.to_string() })
    }
}
