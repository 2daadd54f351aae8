//! XFS: grows only while mounted (`xfs_growfs`), reports its size through
//! `xfs_spaceman -c info` (data blocks × block size). Not `xfs_info`: that
//! script first runs `losetup -j` on its argument, which stats every loop
//! device's backing file and hangs for as long as any loop device on the
//! host sits on a hung FUSE mount (an rbd-fuse whose cluster has inactive
//! PGs). For a mounted filesystem xfs_info runs exactly this command.

use std::path::Path;

use super::{FORMAT_DEADLINE, FileSystem, FsType, GROW_DEADLINE, field_after};
use crate::error::NodeError;
use crate::system::{self, END_OF_OPTIONS, System};

/// The XFS implementation.
pub(super) struct Xfs;

#[async_trait::async_trait]
impl FileSystem for Xfs {
    fn kind(&self) -> FsType {
        FsType::Xfs
    }

    async fn mkfs(&self, sys: &dyn System, device: &Path) -> Result<(), NodeError> {
        sys.run("mkfs.xfs", system::args([Path::new("-q"), Path::new(END_OF_OPTIONS), device]), FORMAT_DEADLINE)
            .await
            .map(drop)
            .map_err(|e| NodeError::command(format!("format {} as xfs", device.display()), e))
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
        let step = format!("xfs_spaceman -c info {}", mount_point.display());
        let args = [Path::new("-c"), Path::new("info"), Path::new(END_OF_OPTIONS), mount_point];
        let out = sys.run("xfs_spaceman", system::args(args), GROW_DEADLINE).await.map_err(|e| NodeError::command(&step, e))?;
        parse_xfs_info(&out.stdout).ok_or(NodeError::Parse { step, detail: out.stdout })
    }
}

/// Data section size from `xfs_info` output.
fn parse_xfs_info(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.trim_start().starts_with("data"))?;
    field_after(line, "bsize=")?.checked_mul(field_after(line, "blocks=")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_data_section() {
        let text = "meta-data=/dev/loop0 isize=512 agcount=4, agsize=25600 blks\n\
                    \x20        =  sectsz=512 attr=2\n\
                    data     =                       bsize=4096   blocks=102400, imaxpct=25\n\
                    log      =internal log           bsize=4096   blocks=16384, version=2\n";
        assert_eq!(parse_xfs_info(text), Some(4096 * 102400));
        assert_eq!(parse_xfs_info("garbage"), None);
    }
}
