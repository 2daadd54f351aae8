//! Swell's CSI Node service: attaches a volume's backing object to this node
//! as a block device, formats and mounts it at the staging path, bind-mounts
//! it into pods, grows device and filesystem on expansion, and reports usage
//! and health. The gRPC layer (`service`) is thin; each RPC's domain logic
//! lives in a module of its own and knows nothing of gRPC. Every mount, loop
//! device and program reaches the host through `system`, so those decisions
//! are unit-tested against a recording double.

pub mod attach;
pub mod config;
pub mod error;
pub mod expand;
pub mod filesystem;
#[cfg(test)]
mod fixture;
pub mod metrics;
pub mod mount;
pub mod mountinfo;
pub mod publish;
pub mod server;
pub mod service;
pub mod stage;
pub mod staging;
pub mod stats;
pub mod system;
pub mod validate;

pub use config::NodeConfig;
pub use error::NodeError;
pub use service::NodeService;

use std::sync::Arc;

use swell_storage::locks::KeyedLocks;

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
        Self::with_system(config, Arc::new(system::HostSystem))
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
