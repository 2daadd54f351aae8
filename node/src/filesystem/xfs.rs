//! XFS: grows only while mounted (`xfs_growfs`), reports its size through
//! its geometry ioctl (data blocks × block size). Not `xfs_info`: that
//! script first runs `losetup -j` on its argument, which stats every loop
//! device's backing file and hangs for as long as any loop device on the
//! host sits on a hung FUSE mount (an rbd-fuse whose cluster has inactive
//! PGs).

use std::path::Path;

use super::{FileSystem, Format, FsType, GROW_DEADLINE};
use crate::error::NodeError;
use crate::system::{self, END_OF_OPTIONS, System};

/// The XFS implementation.
pub(super) struct Xfs;

#[async_trait::async_trait]
impl FileSystem for Xfs {
    fn kind(&self) -> FsType {
        FsType::Xfs
    }

    async fn mkfs(&self, sys: &dyn System, device: &Path, format: &Format) -> Result<(), NodeError> {
        let uuid = format!("uuid={}", format.uuid);
        let mut args = system::args([Path::new("-q"), Path::new("-m"), Path::new(&uuid)]);
        if format.overwrite {
            args.push("-f".into());
        }
        args.extend(system::args([Path::new(END_OF_OPTIONS), device]));
        sys.run("mkfs.xfs", args, format.deadline).await.map(drop).map_err(|e| NodeError::command(format!("format {} as xfs", device.display()), e))
    }

    async fn grow_online(&self, sys: &dyn System, _volume: &str, _device: &Path, mount_point: &Path) -> Result<(), NodeError> {
        sys.run("xfs_growfs", system::args([Path::new(END_OF_OPTIONS), mount_point]), GROW_DEADLINE)
            .await
            .map(drop)
            .map_err(|e| NodeError::command(format!("grow xfs at {}", mount_point.display()), e))
    }

    async fn grow_offline(&self, _sys: &dyn System, _device: &Path, _device_bytes: u64) -> Result<(), NodeError> {
        Ok(())
    }

    /// `nouuid`: a restore or clone carries its source's UUID, and XFS
    /// refuses to mount a second filesystem of one UUID on a host.
    fn mount_options(&self, flags: &[String]) -> Vec<String> {
        let mut options = flags.to_vec();
        if !flags.iter().flat_map(|f| f.split(',')).any(|word| word.trim() == "nouuid") {
            options.push("nouuid".to_owned());
        }
        options
    }

    async fn size(&self, sys: &dyn System, _device: &Path, mount_point: &Path) -> Result<u64, NodeError> {
        sys.xfs_data_bytes(mount_point).await
    }
}
