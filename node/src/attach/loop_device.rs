//! Loop devices: the local backend's attacher (the volume's sparse backing
//! file behind a loop device), and the file-level helpers the rbd-fuse
//! attacher shares. The file is the source of truth for the size;
//! `losetup -c` makes the device re-read it.
//!
//! Devices are found from sysfs (`/sys/block/loopN/loop/backing_file`),
//! never with `losetup -j`: that asks every loop device for its status,
//! which stats each backing file, and one loop device over a hung FUSE
//! mount (an rbd-fuse of a cluster with inactive PGs) blocks it in D state
//! for as long as the cluster is down (observed: >10 min).

use std::path::{Path, PathBuf};
use std::time::Duration;

use swell_storage::command;
use swell_storage::{VolumeId, local};

use super::{Attacher, sysfs_dir};
use crate::error::NodeError;

/// `losetup --find` and `-d` touch one device, but a busy host was once slow.
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
}

/// Attaches `file` to a free loop device and returns the device.
pub(crate) async fn attach_file(volume: &VolumeId, file: &Path) -> Result<PathBuf, NodeError> {
    let out = losetup(volume, "attach loop device", &[Path::new("--find"), Path::new("--show"), file]).await?;
    let device = out.trim();
    if device.is_empty() {
        return Err(NodeError::Parse { step: "losetup --find --show".into(), detail: out });
    }
    Ok(PathBuf::from(device))
}

/// Detaches one loop device.
pub(crate) async fn detach_device(volume: &VolumeId, device: &Path) -> Result<(), NodeError> {
    losetup(volume, "detach loop device", &[Path::new("-d"), device]).await.map(drop)
}

/// Makes a loop device re-read its backing file's size.
pub(crate) async fn refresh_device(device: &Path) -> Result<(), NodeError> {
    command::run("losetup", [Path::new("-c"), device], LOSETUP_DEADLINE)
        .await
        .map(drop)
        .map_err(|e| NodeError::command(format!("refresh capacity of {}", device.display()), e))
}

async fn losetup(volume: &VolumeId, step: &str, args: &[&Path]) -> Result<String, NodeError> {
    command::run("losetup", args, LOSETUP_DEADLINE).await.map(|out| out.stdout).map_err(|e| NodeError::command(format!("{step} for volume {volume}"), e))
}

/// The loop devices whose backing file is `file` (an absolute path,
/// compared as sysfs prints it, also after the file was deleted); read from
/// sysfs only, so no backing file is ever touched.
pub(crate) fn devices_backing(file: &Path) -> Result<Vec<PathBuf>, NodeError> {
    devices_backing_in(Path::new("/sys/block"), file)
}

fn devices_backing_in(sys_block: &Path, file: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let entries = std::fs::read_dir(sys_block).map_err(|e| NodeError::io(format!("list {}", sys_block.display()), e))?;
    let mut devices = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else { continue };
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else { continue };
        if same_file(&backing, file) {
            devices.push(Path::new("/dev").join(name));
        }
    }
    devices.sort();
    Ok(devices)
}

/// Whether a sysfs `backing_file` value names `file`.
fn same_file(backing: &str, file: &Path) -> bool {
    let backing = backing.trim_end_matches('\n');
    Path::new(backing.strip_suffix(" (deleted)").unwrap_or(backing)) == file
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
        attach_file(volume, &self.image(volume)).await
    }

    async fn find(&self, volume: &VolumeId) -> Result<Option<PathBuf>, NodeError> {
        let image = self.image(volume);
        // Only a file that exists can be resolved to the path sysfs shows.
        let Ok(image) = tokio::fs::canonicalize(&image).await else {
            return Ok(None);
        };
        Ok(devices_backing(&image)?.into_iter().next())
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
            detach_device(volume, &device).await?;
        }
        Ok(())
    }

    async fn refresh_capacity(&self, _volume: &VolumeId, device: &Path) -> Result<(), NodeError> {
        refresh_device(device).await
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
pub(crate) fn backing_file(device: &Path) -> Option<String> {
    let path = sysfs_dir(device).ok()?.join("loop/backing_file");
    std::fs::read_to_string(path).ok().map(|s| s.trim_end_matches('\n').to_owned())
}

/// Whether `device` is a loop device backed by `image`, also after the
/// file was deleted (the kernel then appends " (deleted)").
fn backs(device: &Path, image: &Path) -> bool {
    let image = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_owned());
    backing_file(device).is_some_and(|b| same_file(&b, &image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_loop_devices_by_their_sysfs_backing_file() {
        let sys = tempfile::tempdir().expect("temp dir");
        let add = |name: &str, backing: Option<&str>| {
            let dir = sys.path().join(name).join("loop");
            std::fs::create_dir_all(&dir).expect("mkdir");
            if let Some(b) = backing {
                std::fs::write(dir.join("backing_file"), format!("{b}\n")).expect("write");
            }
        };
        add("loop0", Some("/var/lib/swell/rbd-fuse/c/rbd/img"));
        add("loop1", None); // detached
        add("loop2", Some("/other"));
        add("loop3", Some("/var/lib/swell/rbd-fuse/c/rbd/img (deleted)"));
        add("sda", Some("/var/lib/swell/rbd-fuse/c/rbd/img"));
        let found = devices_backing_in(sys.path(), Path::new("/var/lib/swell/rbd-fuse/c/rbd/img")).expect("scan");
        assert_eq!(found, vec![PathBuf::from("/dev/loop0"), PathBuf::from("/dev/loop3")]);
        assert!(!same_file("/var/lib/swell/rbd-fuse/c/rbd/img2", Path::new("/var/lib/swell/rbd-fuse/c/rbd/img")));
    }
}
