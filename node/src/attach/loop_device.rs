//! The local backend's attacher: the volume's sparse backing file behind a
//! loop device, managed with `losetup`. The file is the source of truth for
//! the size; `losetup -c` makes the device re-read it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use swell_storage::command;
use swell_storage::{VolumeId, local};

use super::{Attacher, sysfs_dir};
use crate::error::NodeError;

/// losetup scans every loop device; on a busy host that once took over 10 s.
const LOSETUP_DEADLINE: Duration = Duration::from_secs(30);

/// Attaches `local:` volumes as loop devices.
#[derive(Debug, Clone)]
pub struct LoopAttacher {
    state_dir: PathBuf,
}

impl LoopAttacher {
    /// An attacher for backing files under the local backend's `state_dir`.
    pub fn new(state_dir: PathBuf) -> Self {
        LoopAttacher { state_dir }
    }

    fn image(&self, volume: &VolumeId) -> PathBuf {
        local::image_path(&self.state_dir, volume)
    }

    async fn losetup(&self, volume: &VolumeId, step: &str, args: &[&Path]) -> Result<String, NodeError> {
        command::run("losetup", args, LOSETUP_DEADLINE)
            .await
            .map(|out| out.stdout)
            .map_err(|e| NodeError::command(format!("{step} for volume {volume}"), e))
    }
}

#[async_trait::async_trait]
impl Attacher for LoopAttacher {
    async fn backing_size(&self, volume: &VolumeId) -> Result<Option<u64>, NodeError> {
        let image = self.image(volume);
        match tokio::fs::metadata(&image).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::io(format!("stat {}", image.display()), e)),
        }
    }

    async fn attach(&self, volume: &VolumeId) -> Result<PathBuf, NodeError> {
        if let Some(device) = self.find(volume).await? {
            return Ok(device);
        }
        let image = self.image(volume);
        let out = self.losetup(volume, "attach loop device", &[Path::new("--find"), Path::new("--show"), &image]).await?;
        let device = out.trim();
        if device.is_empty() {
            return Err(NodeError::Parse { step: "losetup --find --show".into(), detail: out });
        }
        Ok(PathBuf::from(device))
    }

    async fn find(&self, volume: &VolumeId) -> Result<Option<PathBuf>, NodeError> {
        let image = self.image(volume);
        // losetup -j needs the file; a deleted file has no loop device we can name.
        if tokio::fs::metadata(&image).await.is_err() {
            return Ok(None);
        }
        let out = self.losetup(volume, "find loop device", &[Path::new("-j"), &image]).await?;
        Ok(parse_associated(&out).into_iter().next())
    }

    async fn detach(&self, volume: &VolumeId, device: Option<&Path>) -> Result<(), NodeError> {
        let mut devices: Vec<PathBuf> = self.find(volume).await?.into_iter().collect();
        if let Some(recorded) = device {
            // A recorded device may since have been reused for another file.
            if !devices.iter().any(|d| d == recorded) && backs(recorded, &self.image(volume)) {
                devices.push(recorded.to_owned());
            }
        }
        for device in devices {
            self.losetup(volume, "detach loop device", &[Path::new("-d"), &device]).await?;
        }
        Ok(())
    }

    async fn refresh_capacity(&self, device: &Path) -> Result<(), NodeError> {
        command::run("losetup", [Path::new("-c"), device], LOSETUP_DEADLINE)
            .await
            .map(drop)
            .map_err(|e| NodeError::command(format!("refresh capacity of {}", device.display()), e))
    }

    async fn condition(&self, volume: &VolumeId, device: &Path) -> Result<Option<String>, NodeError> {
        let image = self.image(volume);
        if tokio::fs::metadata(&image).await.is_err() {
            return Ok(Some(format!("backing file {} of volume {volume} is gone", image.display())));
        }
        let Some(backing) = backing_file(device) else {
            return Ok(Some(format!("loop device {} of volume {volume} is detached", device.display())));
        };
        if backing.ends_with(" (deleted)") {
            return Ok(Some(format!("loop device {} backs a deleted file", device.display())));
        }
        if !backs(device, &image) {
            return Ok(Some(format!("loop device {} now backs {backing}, not volume {volume}", device.display())));
        }
        Ok(None)
    }
}

/// The file a loop device reads, from sysfs; `None` when it is detached.
fn backing_file(device: &Path) -> Option<String> {
    let path = sysfs_dir(device).ok()?.join("loop/backing_file");
    std::fs::read_to_string(path).ok().map(|s| s.trim_end_matches('\n').to_owned())
}

/// Whether `device` is a loop device backed by `image`, also after the
/// file was deleted (the kernel then appends " (deleted)").
fn backs(device: &Path, image: &Path) -> bool {
    let image = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_owned());
    backing_file(device).is_some_and(|b| Path::new(b.strip_suffix(" (deleted)").unwrap_or(&b)) == image)
}

/// Device paths from `losetup -j` output (`/dev/loop0: [2049]:12 (/file)`).
fn parse_associated(text: &str) -> Vec<PathBuf> {
    text.lines().filter_map(|l| l.split_once(": ")).map(|(dev, _)| PathBuf::from(dev.trim())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_devices_from_losetup_j() {
        let text = "/dev/loop0: [65024]:10010748 (/var/lib/swell/local/volumes/ab.img)\n/dev/loop3: [65024]:10010748 (/x)\n";
        assert_eq!(parse_associated(text), vec![PathBuf::from("/dev/loop0"), PathBuf::from("/dev/loop3")]);
        assert!(parse_associated("").is_empty());
    }
}
