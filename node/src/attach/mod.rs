//! Turning a volume into a block device on this node. One attacher per way
//! of attaching, chosen by the volume id's backend: `local:` volumes are
//! sparse files attached with a loop device; `rbd:` volumes of the
//! configured Ceph cluster go through one of three RBD attachers (krbd,
//! rbd-nbd, or an rbd-fuse file behind a loop device), the one this host
//! supports, detected once at start-up (see `rbd`). Nothing above this
//! module knows which.

mod attacher;
mod loop_device;
pub(crate) mod rbd;

use std::sync::Arc;

use swell_storage::VolumeId;

pub(crate) use attacher::Attacher;
pub(crate) use loop_device::LoopAttacher;

use crate::NodeConfig;
use crate::error::NodeError;
use crate::system::System;

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
