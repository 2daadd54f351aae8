//! btrfs: grows while mounted (`btrfs filesystem resize max`); its size is
//! the sum of its devices' sizes as it records them (its device-info ioctl,
//! what `btrfs filesystem show` prints).

use std::path::Path;

use super::{FileSystem, Format, FsType, GROW_DEADLINE};
use crate::error::NodeError;
use crate::system::{self, END_OF_OPTIONS, System};

/// The btrfs implementation.
pub(super) struct Btrfs;

#[async_trait::async_trait]
impl FileSystem for Btrfs {
    fn kind(&self) -> FsType {
        FsType::Btrfs
    }

    async fn mkfs(&self, sys: &dyn System, device: &Path, format: &Format) -> Result<(), NodeError> {
        let mut args = system::args([Path::new("-q"), Path::new("-U"), Path::new(&format.uuid)]);
        if format.overwrite {
            args.push("-f".into());
        }
        args.extend(system::args([Path::new(END_OF_OPTIONS), device]));
        sys.run("mkfs.btrfs", args, format.deadline).await.map(drop).map_err(|e| NodeError::command(format!("format {} as btrfs", device.display()), e))
    }

    async fn grow_online(&self, sys: &dyn System, _volume: &str, _device: &Path, mount_point: &Path) -> Result<(), NodeError> {
        let args = [Path::new("filesystem"), Path::new("resize"), Path::new(END_OF_OPTIONS), Path::new("max"), mount_point];
        sys.run("btrfs", system::args(args), GROW_DEADLINE)
            .await
            .map(drop)
            .map_err(|e| NodeError::command(format!("grow btrfs at {}", mount_point.display()), e))
    }

    async fn grow_offline(&self, _sys: &dyn System, _device: &Path, _device_bytes: u64) -> Result<(), NodeError> {
        Ok(())
    }

    async fn size(&self, sys: &dyn System, _device: &Path, mount_point: &Path) -> Result<u64, NodeError> {
        sys.btrfs_device_bytes(mount_point).await
    }
}
