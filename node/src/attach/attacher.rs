//! What one way of attaching volumes as block devices offers the node.

use std::path::{Path, PathBuf};

use swell_storage::VolumeId;
use swell_storage::rbd_attach::MapOptions;

use crate::error::NodeError;

/// One way of attaching volumes as block devices.
#[async_trait::async_trait]
pub trait Attacher: Send + Sync + std::fmt::Debug {
    /// The size of the backing object now, read fresh; `None` when the
    /// volume does not exist.
    async fn backing_size(&self, volume: &VolumeId) -> Result<Option<u64>, NodeError>;

    /// The backing object's size when reading it costs no more than a
    /// local `stat` (a local volume's file), for the background grower's
    /// frequent look; `None` when only a cluster round trip would tell.
    /// Those modes' devices show a grow by themselves (krbd, rbd-nbd follow
    /// the image's header) or not until refreshed (rbd-fuse: kubelet's
    /// NodeExpandVolume grows those).
    async fn backing_size_if_cheap(&self, _volume: &VolumeId) -> Result<Option<u64>, NodeError> {
        Ok(None)
    }

    /// Attaches the volume and returns its device; an existing attachment
    /// is reused, so a retried stage never attaches twice. `options` are
    /// the StorageClass's kernel map options, for the mappers that take them.
    async fn attach(&self, volume: &VolumeId, options: &MapOptions) -> Result<PathBuf, NodeError>;

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
