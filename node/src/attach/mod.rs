//! Turning a volume into a block device on this node. One attacher per way
//! of attaching, chosen by the volume id's backend: `local:` volumes are
//! sparse files attached with a loop device; `rbd:` volumes of the
//! configured Ceph cluster go through one of three RBD attachers (krbd,
//! rbd-nbd, or an rbd-fuse file behind a loop device), the one this host
//! supports, detected once at start-up (see `rbd`). Nothing above this
//! module knows which.

mod loop_device;
pub mod rbd;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use swell_storage::VolumeId;

pub use loop_device::LoopAttacher;

use crate::NodeConfig;
use crate::error::NodeError;
use crate::system::System;

/// One way of attaching volumes as block devices.
#[async_trait::async_trait]
pub trait Attacher: Send + Sync + std::fmt::Debug {
    /// The size of the backing object now, read fresh; `None` when the
    /// volume does not exist.
    async fn backing_size(&self, volume: &VolumeId) -> Result<Option<u64>, NodeError>;

    /// Attaches the volume and returns its device; an existing attachment
    /// is reused, so a retried stage never attaches twice.
    async fn attach(&self, volume: &VolumeId) -> Result<PathBuf, NodeError>;

    /// The device the volume is attached as now, if any.
    async fn find(&self, volume: &VolumeId) -> Result<Option<PathBuf>, NodeError>;

    /// Detaches the volume: `device` (from the staging record) if it still
    /// belongs to the volume, and any attachment `find` sees.
    async fn detach(&self, volume: &VolumeId, device: Option<&Path>) -> Result<(), NodeError>;

    /// Asks the device to re-read the backing object's size. The caller
    /// then waits until the device's size shows it.
    async fn refresh_capacity(&self, volume: &VolumeId, device: &Path) -> Result<(), NodeError>;

    /// Why the attachment is unhealthy, `None` when it is fine.
    async fn condition(&self, volume: &VolumeId, device: &Path) -> Result<Option<String>, NodeError>;
}

/// The attachers, one per backend.
#[derive(Debug)]
pub struct Attachers {
    local: LoopAttacher,
    rbd: Option<rbd::RbdAttachers>,
}

impl Attachers {
    /// Attachers for this node's configuration; with a Ceph cluster
    /// configured, detects (and logs) how this host attaches RBD images.
    pub fn new(config: &NodeConfig, sys: Arc<dyn System>) -> Result<Self, NodeError> {
        let rbd = match &config.rbd {
            Some(rbd_config) => Some(rbd::RbdAttachers::new(rbd_config, &config.state_dir, sys.clone())?),
            None => None,
        };
        Ok(Attachers { local: LoopAttacher::new(config.local_state_dir.clone(), sys), rbd })
    }

    /// How RBD images are attached here, `None` without a Ceph cluster.
    pub fn rbd_mode(&self) -> Option<rbd::AttachMode> {
        self.rbd.as_ref().map(rbd::RbdAttachers::mode)
    }

    /// The attacher for a volume's backend; an unknown backend is an
    /// unknown volume to this node.
    pub fn for_volume(&self, volume: &VolumeId) -> Result<&dyn Attacher, NodeError> {
        match volume.backend() {
            swell_local::KIND => Ok(&self.local),
            swell_storage::rbd_volume::KIND => match &self.rbd {
                Some(rbd) => rbd.for_volume(volume),
                None => Err(NodeError::VolumeNotFound { volume: volume.to_string(), reason: "no Ceph cluster is configured on this node".into() }),
            },
            other => Err(NodeError::VolumeNotFound { volume: volume.to_string(), reason: format!("backend {other:?} is not supported on this node") }),
        }
    }
}
