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

use swell_storage::VolumeId;

pub use loop_device::LoopAttacher;

use crate::NodeConfig;
use crate::error::NodeError;

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
    /// then waits until `device_size` shows it.
    async fn refresh_capacity(&self, volume: &VolumeId, device: &Path) -> Result<(), NodeError>;

    /// Why the attachment is unhealthy, `None` when it is fine.
    async fn condition(&self, volume: &VolumeId, device: &Path) -> Result<Option<String>, NodeError>;

    /// The device's size as the kernel sees it.
    async fn device_size(&self, device: &Path) -> Result<u64, NodeError> {
        sysfs_size(device).await
    }
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
    pub fn new(config: &NodeConfig) -> Result<Self, NodeError> {
        let rbd = match &config.rbd {
            Some(rbd_config) => Some(rbd::RbdAttachers::new(rbd_config, &config.state_dir)?),
            None => None,
        };
        Ok(Attachers { local: LoopAttacher::new(config.local_state_dir.clone()), rbd })
    }

    /// How RBD images are attached here, `None` without a Ceph cluster.
    pub fn rbd_mode(&self) -> Option<rbd::AttachMode> {
        self.rbd.as_ref().map(rbd::RbdAttachers::mode)
    }

    /// The attacher for a volume's backend; an unknown backend is an
    /// unknown volume to this node.
    pub fn for_volume(&self, volume: &VolumeId) -> Result<&dyn Attacher, NodeError> {
        match volume.backend() {
            swell_storage::local::KIND => Ok(&self.local),
            swell_storage::rbd_volume::KIND => match &self.rbd {
                Some(rbd) => rbd.for_volume(volume),
                None => Err(NodeError::VolumeNotFound { volume: volume.to_string(), reason: "no Ceph cluster is configured on this node".into() }),
            },
            other => Err(NodeError::VolumeNotFound { volume: volume.to_string(), reason: format!("backend {other:?} is not supported on this node") }),
        }
    }
}

/// A block device's size from sysfs (512-byte sectors): no open() of the
/// device, so a wedged device cannot hang the read.
pub async fn sysfs_size(device: &Path) -> Result<u64, NodeError> {
    let path = sysfs_dir(device)?.join("size");
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| NodeError::io(format!("read {}", path.display()), e))?;
    text.trim()
        .parse::<u64>()
        .ok()
        .and_then(|sectors| sectors.checked_mul(512))
        .ok_or_else(|| NodeError::Parse { step: format!("read {}", path.display()), detail: text })
}

/// `/sys/class/block/<name>` for a device path (symlinks resolved).
pub fn sysfs_dir(device: &Path) -> Result<PathBuf, NodeError> {
    let real = std::fs::canonicalize(device).map_err(|e| NodeError::io(format!("resolve {}", device.display()), e))?;
    let name = real.file_name().ok_or_else(|| NodeError::Internal(format!("device path {} has no name", device.display())))?;
    Ok(Path::new("/sys/class/block").join(name))
}

/// The device's `major:minor`, as mountinfo shows it.
pub async fn device_numbers(device: &Path) -> Result<String, NodeError> {
    let path = sysfs_dir(device)?.join("dev");
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| NodeError::io(format!("read {}", path.display()), e))?;
    Ok(text.trim().to_owned())
}
