//! ext4: `resize2fs` grows it mounted or not, but online growth needs
//! CAP_SYS_RESOURCE. Without it the node answers FAILED_PRECONDITION and
//! grows the filesystem offline (fsck, then resize2fs) at the next stage.
//! Its size is block count × block size from `dumpe2fs -h`.

use std::path::Path;

use swell_storage::command::CommandError;

use super::{FORMAT_DEADLINE, FileSystem, Format, FsType, GROW_DEADLINE, fills_device};
use crate::error::NodeError;
use crate::system::{self, END_OF_OPTIONS, System};

/// The ext4 implementation.
pub(super) struct Ext4;

#[async_trait::async_trait]
impl FileSystem for Ext4 {
    fn kind(&self) -> FsType {
        FsType::Ext4
    }

    /// `-F` always: mke2fs writes its superblock last, so an unfinished
    /// format of ours is found blank, and blkid already ruled out others.
    async fn mkfs(&self, sys: &dyn System, device: &Path, format: &Format) -> Result<(), NodeError> {
        let args = system::args([Path::new("-q"), Path::new("-F"), Path::new("-U"), Path::new(&format.uuid), Path::new(END_OF_OPTIONS), device]);
        sys.run("mkfs.ext4", args, format.deadline).await.map(drop).map_err(|e| NodeError::command(format!("format {} as ext4", device.display()), e))
    }

    async fn grow_online(&self, sys: &dyn System, volume: &str, device: &Path, _mount_point: &Path) -> Result<(), NodeError> {
        match sys.run("resize2fs", system::args([Path::new(END_OF_OPTIONS), device]), GROW_DEADLINE).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_permitted(&e) => Err(NodeError::OnlineGrowNotPermitted { volume: volume.to_owned(), source: e }),
            Err(e) => Err(NodeError::command(format!("grow ext4 on {}", device.display()), e)),
        }
    }

    async fn grow_offline(&self, sys: &dyn System, device: &Path, device_bytes: u64) -> Result<(), NodeError> {
        if fills_device(dumpe2fs_size(sys, device).await?, device_bytes) {
            return Ok(());
        }
        // resize2fs refuses an unchecked filesystem; exit 1 means "errors fixed".
        match sys.run("e2fsck", system::args([Path::new("-f"), Path::new("-p"), Path::new(END_OF_OPTIONS), device]), FORMAT_DEADLINE).await {
            Ok(_) => {}
            Err(e) if e.exit_code() == Some(1) => {}
            Err(e) => return Err(NodeError::command(format!("check ext4 on {} before growing", device.display()), e)),
        }
        sys.run("resize2fs", system::args([Path::new(END_OF_OPTIONS), device]), GROW_DEADLINE)
            .await
            .map(drop)
            .map_err(|e| NodeError::command(format!("grow ext4 on {} offline", device.display()), e))
    }

    async fn size(&self, sys: &dyn System, device: &Path, _mount_point: &Path) -> Result<u64, NodeError> {
        dumpe2fs_size(sys, device).await
    }
}

async fn dumpe2fs_size(sys: &dyn System, device: &Path) -> Result<u64, NodeError> {
    let step = format!("dumpe2fs -h {}", device.display());
    let out = sys
        .run("dumpe2fs", system::args([Path::new("-h"), Path::new(END_OF_OPTIONS), device]), GROW_DEADLINE)
        .await
        .map_err(|e| NodeError::command(&step, e))?;
    parse_dumpe2fs(&out.stdout).ok_or(NodeError::Parse { step, detail: out.stdout })
}

/// resize2fs words EPERM from the resize ioctl in more than one way.
fn is_not_permitted(error: &CommandError) -> bool {
    let text = error.output_text();
    text.contains("Operation not permitted") || text.contains("Permission denied to resize")
}

fn parse_dumpe2fs(text: &str) -> Option<u64> {
    let value = |key: &str| -> Option<u64> { text.lines().find_map(|l| l.strip_prefix(key)).and_then(|rest| rest.trim().parse().ok()) };
    value("Block count:")?.checked_mul(value("Block size:")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_block_count_and_size() {
        let text = "Filesystem volume name:   <none>\nBlock count:              65536\n\
                    Reserved block count:     3276\nBlock size:               1024\n";
        assert_eq!(parse_dumpe2fs(text), Some(65536 * 1024));
        assert_eq!(parse_dumpe2fs("Block count: x\n"), None);
    }

    #[test]
    fn recognises_both_eperm_wordings() {
        let failed =
            |stderr: &str| CommandError::Failed { command: "resize2fs /dev/loop0".into(), code: Some(1), stderr: stderr.into(), stdout: String::new() };
        assert!(is_not_permitted(&failed("resize2fs: Permission denied to resize filesystem")));
        assert!(is_not_permitted(&failed("resize2fs: Operation not permitted While checking")));
        assert!(!is_not_permitted(&failed("resize2fs: No space left on device")));
    }
}
