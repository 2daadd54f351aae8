//! Turning a volume into a block device on this node. One attacher per way
//! of attaching, chosen by the volume id's backend: `local:` volumes are
//! sparse files attached with a loop device. Ceph RBD will add three more
//! (krbd `rbd map`, `rbd-nbd`, and an rbd-fuse file behind a loop device)
//! selected the same way; nothing above this module needs to change.

mod loop_device;

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

    /// Asks the device to re-read the backing object's size.
    async fn refresh_capacity(&self, device: &Path) -> Result<(), NodeError>;

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
}

impl Attachers {
    /// Attachers for this node's configuration.
    pub fn new(config: &NodeConfig) -> Self {
        Attachers { local: LoopAttacher::new(config.local_state_dir.clone()) }
    }

    /// The attacher for a volume's backend; an unknown backend is an
    /// unknown volume to this node.
    pub fn for_volume(&self, volume: &VolumeId) -> Result<&dyn Attacher, NodeError> {
        match volume.backend() {
            swell_storage::local::KIND => Ok(&self.local),
            other => Err(NodeError::VolumeNotFound {
                volume: volume.to_string(),
                reason: format!("backend {other:?} is not supported on this node"),
            }),
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
    let name = real
        .file_name()
        .ok_or_else(|| NodeError::Internal(format!("device path {} has no name", device.display())))?;
    Ok(Path::new("/sys/class/block").join(name))
}

/// The device's `major:minor`, as mountinfo shows it.
pub async fn device_numbers(device: &Path) -> Result<String, NodeError> {
    let path = sysfs_dir(device)?.join("dev");
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| NodeError::io(format!("read {}", path.display()), e))?;
    Ok(text.trim().to_owned())
}
