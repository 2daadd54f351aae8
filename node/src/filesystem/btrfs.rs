//! btrfs: grows while mounted (`btrfs filesystem resize max`); its size is
//! the sum of its devices' sizes as `btrfs filesystem show --raw` reports.

use std::path::Path;

use super::{FORMAT_DEADLINE, FileSystem, FsType, GROW_DEADLINE, field_after};
use crate::error::NodeError;
use crate::system::{self, END_OF_OPTIONS, System};

/// The btrfs implementation.
pub(super) struct Btrfs;

#[async_trait::async_trait]
impl FileSystem for Btrfs {
    fn kind(&self) -> FsType {
        FsType::Btrfs
    }

    async fn mkfs(&self, sys: &dyn System, device: &Path) -> Result<(), NodeError> {
        sys.run("mkfs.btrfs", system::args([Path::new("-q"), Path::new(END_OF_OPTIONS), device]), FORMAT_DEADLINE)
            .await
            .map(drop)
            .map_err(|e| NodeError::command(format!("format {} as btrfs", device.display()), e))
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
        let step = format!("btrfs filesystem show {}", mount_point.display());
        let args = [Path::new("filesystem"), Path::new("show"), Path::new("--raw"), Path::new(END_OF_OPTIONS), mount_point];
        let out = sys.run("btrfs", system::args(args), GROW_DEADLINE).await.map_err(|e| NodeError::command(&step, e))?;
        parse_show(&out.stdout).ok_or(NodeError::Parse { step, detail: out.stdout })
    }
}

/// Sum of the `devid N size <bytes>` lines.
fn parse_show(text: &str) -> Option<u64> {
    let sizes: Vec<u64> = text.lines().filter(|l| l.trim_start().starts_with("devid")).filter_map(|l| field_after(l, " size ")).collect();
    if sizes.is_empty() { None } else { sizes.iter().try_fold(0u64, |acc, s| acc.checked_add(*s)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_device_sizes() {
        let text = "Label: none  uuid: 9a4d4b55\n\tTotal devices 1 FS bytes used 147456\n\
                    \tdevid    1 size 419430400 used 92274688 path /dev/loop0\n";
        assert_eq!(parse_show(text), Some(419430400));
        assert_eq!(parse_show("Label: none\n"), None);
    }
}
