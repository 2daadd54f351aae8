//! Turning a volume into a block device on this node. One attacher per way
//! of attaching, chosen by the volume id's backend: `local:` volumes are
//! sparse files attached with a loop device; `rbd:` volumes of the
//! configured Ceph cluster go through one of three RBD attachers (krbd,
//! rbd-nbd, or an rbd-fuse file behind a loop device): the one the volume's
//! StorageClass names, else the one this host supports, detected once at
//! start-up (see `rbd`). The mode a volume was staged with is kept in its
//! staging record; above this module only that choice is known.

mod attacher;
mod local_usage;
mod loop_device;
pub(crate) mod rbd;

use std::sync::Arc;

use swell_storage::VolumeId;
use swell_storage::rbd_attach::AttachMode;

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

    /// How RBD images are attached here when a volume names no mode,
    /// `None` without a Ceph cluster.
    pub fn rbd_mode(&self) -> Option<AttachMode> {
        self.rbd.as_ref().map(rbd::RbdAttachers::mode)
    }

    /// The mode a stage of `volume` attaches with: `requested` (from its
    /// StorageClass), else the detected one; `None` for volumes that are
    /// not RBD (or with no Ceph cluster here, which `for_volume` refuses).
    pub fn stage_mode(&self, volume: &VolumeId, requested: Option<AttachMode>) -> Option<AttachMode> {
        match (volume.backend(), &self.rbd) {
            (swell_storage::rbd_volume::KIND, Some(rbd)) => Some(requested.unwrap_or(rbd.mode())),
            _ => None,
        }
    }

    /// The attacher for a volume's backend, in `rbd_mode` for RBD volumes
    /// (the detected mode when `None`: a staging record written before
    /// modes were recorded); an unknown backend is an unknown volume here.
    pub fn for_volume(&self, volume: &VolumeId, rbd_mode: Option<AttachMode>) -> Result<&dyn Attacher, NodeError> {
        match volume.backend() {
            swell_local::KIND => Ok(&self.local),
            swell_storage::rbd_volume::KIND => self.rbd(volume)?.for_volume(volume, rbd_mode),
            other => Err(unsupported(volume, other)),
        }
    }

    /// Every attacher that may hold `volume` when no staging record says
    /// which one attached it.
    pub fn all_for(&self, volume: &VolumeId) -> Result<Vec<&dyn Attacher>, NodeError> {
        match volume.backend() {
            swell_local::KIND => Ok(vec![&self.local]),
            swell_storage::rbd_volume::KIND => self.rbd(volume)?.all_for(volume),
            other => Err(unsupported(volume, other)),
        }
    }

    /// Where `volume`'s wrapped data key is kept: RBD image metadata, or
    /// beside a local volume's record.
    pub(crate) fn key_store(&self, volume: &VolumeId) -> Result<&dyn crate::crypt::KeyStore, NodeError> {
        match volume.backend() {
            swell_local::KIND => Ok(&self.local),
            swell_storage::rbd_volume::KIND => Ok(self.rbd(volume)?),
            other => Err(NodeError::InvalidArgument { field: "volume_context.encrypted", reason: format!("{other} volumes are not encrypted by Swell") }),
        }
    }

    /// Where `volume`'s auto-grow policy and usage are kept: the local
    /// state directory's files, or, for the RBD volumes of this node's
    /// cluster, the image's metadata and the pool's marks object.
    pub(crate) fn usage_store(&self, volume: &VolumeId) -> Result<&dyn crate::usage_store::UsageStore, NodeError> {
        match volume.backend() {
            swell_local::KIND => Ok(&self.local),
            swell_storage::rbd_volume::KIND => Ok(self.rbd(volume)?),
            other => Err(unsupported(volume, other)),
        }
    }

    fn rbd(&self, volume: &VolumeId) -> Result<&rbd::RbdAttachers, NodeError> {
        self.rbd.as_ref().ok_or_else(|| NodeError::VolumeNotFound { volume: volume.to_string(), reason: "no Ceph cluster is configured on this node".into() })
    }
}

fn unsupported(volume: &VolumeId, backend: &str) -> NodeError {
    NodeError::VolumeNotFound { volume: volume.to_string(), reason: format!("backend {backend:?} is not supported on this node") }
}
