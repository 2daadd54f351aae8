//! Loop devices: the local backend's attacher (the volume's sparse backing
//! file behind a loop device), and the file-level helpers the rbd-fuse
//! attacher shares. The file is the source of truth for the size;
//! LOOP_SET_CAPACITY makes the device re-read it.
//!
//! Devices are found from sysfs (`/sys/block/loopN/loop/backing_file`),
//! never by asking each loop device for its status (`losetup -j`): that
//! stats each backing file, and one loop device over a hung FUSE mount (an
//! rbd-fuse of a cluster with inactive PGs) blocks it in D state for as long
//! as the cluster is down (observed: >10 min).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use swell_storage::VolumeId;
use swell_storage::rbd_attach::MapOptions;

use super::attacher::Attacher;
use crate::error::NodeError;
use crate::system::{self, System};

/// Attaches `local:` volumes as loop devices.
#[derive(Debug, Clone)]
pub(crate) struct LoopAttacher {
    state_dir: PathBuf,
    sys: Arc<dyn System>,
}

impl LoopAttacher {
    /// An attacher for backing files under the local backend's `state_dir`.
    pub(crate) fn new(state_dir: PathBuf, sys: Arc<dyn System>) -> Self {
        LoopAttacher { state_dir, sys }
    }

    /// The local backend's state directory.
    pub(super) fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn image(&self, volume: &VolumeId) -> PathBuf {
        swell_local::image_path(&self.state_dir, volume)
    }

    /// Whether `device` is attached to the local file `image`.
    async fn backs(&self, device: &Path, image: &Path) -> Result<bool, NodeError> {
        let image = resolved(image).await;
        Ok(system::loop_backing(self.sys.as_ref(), device).await?.is_some_and(|b| names_image(&b, &image)))
    }
}

/// `image` as sysfs prints it: resolved through its directory, which stays
/// when the file is deleted, so that a device left over a deleted file is
/// still found (an unstage without a staging record detaches it).
async fn resolved(image: &Path) -> PathBuf {
    let (Some(dir), Some(name)) = (image.parent(), image.file_name()) else { return image.to_owned() };
    tokio::fs::canonicalize(dir).await.map(|dir| dir.join(name)).unwrap_or_else(|_| image.to_owned())
}

/// Attaches `file` to a free loop device and returns the device.
pub(crate) async fn attach_file(sys: &dyn System, volume: &VolumeId, file: &Path) -> Result<PathBuf, NodeError> {
    sys.loop_attach(file).await.map_err(|e| e.for_volume(volume))
}

/// Detaches one loop device.
pub(crate) async fn detach_device(sys: &dyn System, volume: &VolumeId, device: &Path) -> Result<(), NodeError> {
    sys.loop_detach(device).await.map_err(|e| e.for_volume(volume))
}

/// Whether sysfs's `backing` names the local backing file `image`: its path,
/// or, for a device attached by an earlier node plugin container, the path
/// from the root of that container's hostPath mount of /var/lib/swell
/// (`/local/volumes/ab/cd/<key>.img`). At least the file's name and its
/// directory: a bare name could be anyone's.
fn names_image(backing: &str, image: &Path) -> bool {
    system::names_file(backing, image, 2)
}

/// The loop devices backing the local file `image` (see [`names_image`]).
async fn devices_backing(sys: &dyn System, image: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let mut devices: Vec<PathBuf> = sys.loop_devices().await?.into_iter().filter(|l| names_image(&l.backing_file, image)).map(|l| l.device).collect();
    devices.sort();
    Ok(devices)
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

    async fn backing_size_if_cheap(&self, volume: &VolumeId) -> Result<Option<u64>, NodeError> {
        self.backing_size(volume).await
    }

    async fn attach(&self, volume: &VolumeId, _options: &MapOptions) -> Result<PathBuf, NodeError> {
        if let Some(device) = self.find(volume).await? {
            return Ok(device);
        }
        attach_file(self.sys.as_ref(), volume, &self.image(volume)).await
    }

    async fn find(&self, volume: &VolumeId) -> Result<Option<PathBuf>, NodeError> {
        let image = resolved(&self.image(volume)).await;
        Ok(devices_backing(self.sys.as_ref(), &image).await?.into_iter().next())
    }

    async fn detach(&self, volume: &VolumeId, device: Option<&Path>) -> Result<(), NodeError> {
        let mut devices: Vec<PathBuf> = self.find(volume).await?.into_iter().collect();
        if let Some(recorded) = device {
            // A recorded device may since have been reused for another file.
            if !devices.iter().any(|d| d == recorded) && self.backs(recorded, &self.image(volume)).await? {
                devices.push(recorded.to_owned());
            }
        }
        for device in devices {
            detach_device(self.sys.as_ref(), volume, &device).await?;
        }
        Ok(())
    }

    async fn refresh_capacity(&self, volume: &VolumeId, device: &Path) -> Result<(), NodeError> {
        self.sys.loop_refresh(device).await.map_err(|e| e.for_volume(volume))
    }

    async fn condition(&self, volume: &VolumeId, device: &Path) -> Result<Option<String>, NodeError> {
        let image = self.image(volume);
        if tokio::fs::metadata(&image).await.is_err() {
            return Ok(Some(format!("backing file {} of volume {volume} is gone", image.display())));
        }
        let Some(backing) = system::loop_backing(self.sys.as_ref(), device).await? else {
            return Ok(Some(format!("loop device {} of volume {volume} is detached", device.display())));
        };
        if backing.ends_with(" (deleted)") {
            return Ok(Some(format!("loop device {} backs a deleted file", device.display())));
        }
        if !self.backs(device, &image).await? {
            return Ok(Some(format!("loop device {} now backs {backing}, not volume {volume}", device.display())));
        }
        Ok(None)
    }
}

/// How long a read or write of a local volume's wrapped key may take: a
/// wedged state directory must not hold a stage (and the volume's lock)
/// for ever.
const KEY_FILE_DEADLINE: Duration = Duration::from_secs(10);

/// An encrypted local volume's wrapped data key lives beside its record,
/// in the state directory its backing file is attached from
/// ([`swell_local::keys`]).
#[async_trait::async_trait]
impl crate::crypt::KeyStore for LoopAttacher {
    async fn wrapped_key(&self, volume: &VolumeId) -> Result<Option<String>, NodeError> {
        let (state_dir, id) = (self.state_dir.clone(), volume.clone());
        let step = format!("read the wrapped data key of volume {volume}");
        system::blocking(step, KEY_FILE_DEADLINE, move || swell_local::keys::read_wrapped_key(&state_dir, &id)).await
    }

    async fn store_wrapped_key(&self, volume: &VolumeId, wrapped: &str) -> Result<(), NodeError> {
        let (state_dir, id, wrapped) = (self.state_dir.clone(), volume.clone(), wrapped.to_owned());
        let step = format!("store the wrapped data key of volume {volume}");
        system::blocking(step, KEY_FILE_DEADLINE, move || swell_local::keys::write_wrapped_key(&state_dir, &id, &wrapped)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::key::Kek;
    use crate::crypt::{KeyStore, data_key};
    use crate::system::fake::FakeSystem;
    use swell_storage::Backend;

    /// A loop attacher over a local backend's state directory holding one volume.
    async fn local_volume() -> (tempfile::TempDir, LoopAttacher, VolumeId) {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = swell_local::LocalBackend::open(&swell_local::LocalConfig::new(dir.path().join("local"), dir.path().join("controller"))).expect("open");
        let id = backend.create_volume("pvc-1", 16 << 20, &Default::default()).await.expect("create").info().id.clone();
        let attacher = LoopAttacher::new(dir.path().join("local"), Arc::new(FakeSystem::default()));
        (dir, attacher, id)
    }

    #[tokio::test]
    async fn a_local_volumes_key_is_made_once_stored_wrapped_beside_its_record_and_unwrapped_at_the_next_stage() {
        let (dir, store, id) = local_volume().await;
        let kek = Kek::from_secret(&[1; 32]).expect("kek");
        assert_eq!(store.wrapped_key(&id).await.expect("read"), None);
        let made = data_key(&store, &id, &kek, None, true).await.expect("first stage");
        let stored = store.wrapped_key(&id).await.expect("read").expect("stored");
        let file = swell_local::wrapped_key_path(&dir.path().join("local"), &id);
        assert_eq!(std::fs::read_to_string(&file).expect("key file"), format!("{stored}\n"));
        assert_eq!(kek.unwrap(&id.to_string(), &stored).expect("wrapped for this volume").bytes(), made.bytes());
        assert_eq!(data_key(&store, &id, &kek, None, true).await.expect("next stage").bytes(), made.bytes());
        assert_eq!(store.wrapped_key(&id).await.expect("read"), Some(stored), "kept, not replaced");
        let other = Kek::from_secret(&[2; 32]).expect("kek");
        assert_eq!(data_key(&store, &id, &other, None, true).await.expect_err("wrong secret").code(), tonic::Code::PermissionDenied);
    }

    #[tokio::test]
    async fn a_malformed_local_key_file_fails_the_stage_naming_it_and_is_never_replaced_by_a_new_key() {
        let (dir, store, id) = local_volume().await;
        let kek = Kek::from_secret(&[1; 32]).expect("kek");
        let file = swell_local::wrapped_key_path(&dir.path().join("local"), &id);
        for (bytes, says) in [(&b""[..], "empty"), (&b"\xff\xfe\n"[..], "not text"), (&b"not-a-wrapped-key\n"[..], "malformed")] {
            std::fs::write(&file, bytes).expect("write");
            let err = data_key(&store, &id, &kek, None, true).await.expect_err("malformed");
            assert_eq!(err.code(), tonic::Code::Internal, "{err}");
            let message = err.full_message();
            assert!(message.contains(&id.to_string()) && message.contains(says), "{message}");
            assert_eq!(std::fs::read(&file).expect("read"), bytes, "left as it was");
        }
    }

    #[tokio::test]
    async fn no_key_is_stored_for_a_local_volume_without_a_record() {
        let (dir, store, _) = local_volume().await;
        let gone: VolumeId = "local:0123456789abcdef0123456789abcdef".parse().expect("id");
        let err = store.store_wrapped_key(&gone, "v1:x").await.expect_err("no record");
        assert!(err.full_message().contains("no local volume"), "{}", err.full_message());
        assert!(!swell_local::wrapped_key_path(&dir.path().join("local"), &gone).exists());
    }

    #[test]
    fn a_loop_device_of_a_gone_container_still_names_its_local_file() {
        let image = Path::new("/var/lib/swell/local/volumes/0123abcd.img");
        assert!(names_image("/var/lib/swell/local/volumes/0123abcd.img", image));
        assert!(names_image("/var/lib/swell/local/volumes/0123abcd.img (deleted)", image));
        // Seen from the root of the dead container's hostPath mount.
        assert!(names_image("/local/volumes/0123abcd.img", image));
        assert!(names_image("/volumes/0123abcd.img (deleted)", image));
        // Another file, or a bare file name that could be anyone's.
        assert!(!names_image("/local/volumes/0123abcd.img2", image));
        assert!(!names_image("/tmp/x/local/volumes/0123abcd.img", image));
        assert!(!names_image("/0123abcd.img", image));
        assert!(!names_image("local/volumes/0123abcd.img", image));
        // A trailing part that names a file here is that file, not ours.
        let dir = tempfile::tempdir().expect("temp dir");
        let here = dir.path().join("volumes/0123abcd.img");
        std::fs::create_dir_all(here.parent().expect("parent")).expect("mkdir");
        std::fs::write(&here, b"").expect("file");
        let longer = Path::new("/srv").join(here.strip_prefix("/").expect("absolute"));
        assert!(!names_image(&here.display().to_string(), &longer));
    }
}
