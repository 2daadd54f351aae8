//! Encrypted volumes (StorageClass `encrypted: "true"`, docs/encryption.md):
//! each volume's data key is made by the node at its first stage, stored
//! only wrapped (`key`) with the volume itself (an RBD image's metadata),
//! and given to LUKS2 through cryptsetup (`luks`), whose clear-text mapping
//! is what gets a filesystem, or is the raw block device.

pub(crate) mod key;
pub(crate) mod luks;

use std::path::{Path, PathBuf};

use swell_storage::VolumeId;

use crate::error::NodeError;
use crate::format::{FormatLog, Found, Layer};
use crate::system::System;
use key::{DataKey, Kek, UnwrapError};

/// What `blkid` calls a LUKS header.
const LUKS_TYPE: &str = "crypto_LUKS";

/// Where a volume's wrapped data key is kept, with the volume.
#[async_trait::async_trait]
pub(crate) trait KeyStore: Send + Sync {
    /// The stored (wrapped) data key, `None` before the first stage.
    async fn wrapped_key(&self, volume: &VolumeId) -> Result<Option<String>, NodeError>;

    /// Stores the wrapped data key.
    async fn store_wrapped_key(&self, volume: &VolumeId, wrapped: &str) -> Result<(), NodeError>;
}

/// The volume's data key, unwrapped with `kek`. A volume without one gets
/// a new key, stored wrapped before any byte of the device is written, so
/// a stage cut off anywhere later finds it; a reader (`may_create` false)
/// never makes one.
///
/// A volume made from a snapshot or a volume holds its source's wrapped
/// key, bound to the source's id: `key_from` (from the volume context the
/// controller wrote) names that id. Such a key is unwrapped for it, then
/// wrapped again for this volume and stored before anything is attached,
/// so later stages find a key bound to this volume alone. A reader uses
/// the copied key without rewriting it.
pub(crate) async fn data_key(store: &dyn KeyStore, volume: &VolumeId, kek: &Kek, key_from: Option<&VolumeId>, may_create: bool) -> Result<DataKey, NodeError> {
    let id = volume.to_string();
    let refused = |e: UnwrapError| match e {
        UnwrapError::OtherKek { .. } | UnwrapError::Rejected => NodeError::WrongKey { volume: id.clone(), reason: e.to_string() },
        UnwrapError::Malformed(_) => NodeError::Parse { step: format!("the wrapped data key of volume {id}"), detail: e.to_string() },
    };
    match store.wrapped_key(volume).await? {
        Some(stored) => match (kek.unwrap(&id, &stored), key_from) {
            (Ok(key), _) => Ok(key),
            (Err(UnwrapError::Rejected), Some(source)) => {
                let key = kek.unwrap(&source.to_string(), &stored).map_err(|e| match e {
                    UnwrapError::Rejected => {
                        let reason = format!(
                            "the wrapped data key authenticates neither for this volume nor for its source {source} (altered, or copied from elsewhere)"
                        );
                        NodeError::WrongKey { volume: id.clone(), reason }
                    }
                    other => refused(other),
                })?;
                if may_create {
                    let wrapped =
                        kek.wrap(&id, &key).map_err(|reason| NodeError::WorkerFailed { step: format!("wrap the data key of volume {id}"), reason })?;
                    store.store_wrapped_key(volume, &wrapped).await?;
                    tracing::info!(kek = kek.id(), source = %source, "bound the data key copied from the source to this volume");
                }
                Ok(key)
            }
            (Err(e), _) => Err(refused(e)),
        },
        None if !may_create => Err(NodeError::ReadOnlyBlank { volume: id }),
        None => {
            let key = DataKey::generate().map_err(|reason| NodeError::WorkerFailed { step: format!("make the data key of volume {id}"), reason })?;
            let wrapped = kek.wrap(&id, &key).map_err(|reason| NodeError::WorkerFailed { step: format!("wrap the data key of volume {id}"), reason })?;
            store.store_wrapped_key(volume, &wrapped).await?;
            tracing::info!(kek = kek.id(), "made and stored the volume's wrapped data key");
            Ok(key)
        }
    }
}

/// Opens the LUKS2 volume on `device` (formatting it first only when the
/// device is blank or holds a luksFormat of Swell's that never finished,
/// `crate::format`) and returns the clear-text device. An open mapping on
/// this device is reused (a repeated stage, or a node plugin restarted).
/// A device holding anything but LUKS is refused untouched.
pub(crate) async fn open(
    sys: &dyn System,
    formats: &FormatLog,
    volume: &VolumeId,
    device: &Path,
    key: &DataKey,
    read_only: bool,
) -> Result<PathBuf, NodeError> {
    let name = luks::mapper_name(volume);
    if let Some(under) = luks::active_on(sys, volume, &name).await? {
        if sys.device_numbers(&under).await? == sys.device_numbers(device).await? {
            return Ok(luks::mapper_path(&name));
        }
        let reason = format!("LUKS mapping {name} is open on {}, not on the volume's {}", under.display(), device.display());
        return Err(NodeError::Conflict { volume: volume.to_string(), reason });
    }
    let layer = Layer::Luks(key);
    match formats.examine(sys, volume, layer, device).await? {
        Found::Holds(found) if found == LUKS_TYPE => {}
        Found::Blank | Found::Unfinished if read_only => return Err(NodeError::ReadOnlyBlank { volume: volume.to_string() }),
        found @ (Found::Blank | Found::Unfinished) => formats.make(sys, volume, device, layer, &found).await?,
        Found::Holds(found) => {
            let reason = format!("the volume is to be encrypted, and {} holds a {found} filesystem in the clear; refusing to touch it", device.display());
            return Err(NodeError::Conflict { volume: volume.to_string(), reason });
        }
    }
    luks::open(sys, volume, device, &name, key, read_only).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::fake::{Call, FakeSystem};

    fn volume() -> VolumeId {
        "rbd:c:rbd:swell-0123456789abcdef0123456789abcdef".parse().expect("id")
    }

    fn format_log() -> (tempfile::TempDir, FormatLog) {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = FormatLog::open(dir.path()).expect("format log");
        (dir, log)
    }

    fn ran(sys: &FakeSystem, verb: &str) -> bool {
        sys.calls().iter().any(|call| matches!(call, Call::Run(line) if line.starts_with(&format!("cryptsetup {verb} "))))
    }

    #[tokio::test]
    async fn a_blank_device_is_formatted_once_and_a_luks_one_only_opened() {
        let sys = FakeSystem::default();
        let device = Path::new("/dev/rbd0");
        let key = DataKey::generate().expect("key");
        let (_dir, log) = format_log();
        let opened = open(&sys, &log, &volume(), device, &key, false).await.expect("opens");
        assert_eq!(opened, luks::mapper_path(&luks::mapper_name(&volume())));
        assert!(ran(&sys, "luksFormat") && ran(&sys, "open"), "{:?}", sys.calls());
        sys.clear_calls();
        open(&sys, &log, &volume(), device, &key, false).await.expect("opens again");
        assert!(!ran(&sys, "luksFormat") && ran(&sys, "open"), "a LUKS header is never formatted again: {:?}", sys.calls());
    }

    #[tokio::test]
    async fn a_device_with_a_filesystem_in_the_clear_or_blank_for_a_reader_is_left_untouched() {
        let sys = FakeSystem::default();
        let device = Path::new("/dev/rbd0");
        sys.format(device, "xfs", 1 << 30);
        let key = DataKey::generate().expect("key");
        let (_dir, log) = format_log();
        let err = open(&sys, &log, &volume(), device, &key, false).await.expect_err("clear xfs");
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        assert!(err.to_string().contains("xfs"), "{err}");
        assert!(!ran(&sys, "luksFormat") && !ran(&sys, "open"), "{:?}", sys.calls());
        let blank = Path::new("/dev/rbd1");
        let err = open(&sys, &log, &volume(), blank, &key, true).await.expect_err("a reader never formats");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        assert!(!ran(&sys, "luksFormat"), "{:?}", sys.calls());
    }

    #[derive(Default)]
    struct Store(parking_lot::Mutex<Option<String>>);

    #[async_trait::async_trait]
    impl KeyStore for Store {
        async fn wrapped_key(&self, _volume: &VolumeId) -> Result<Option<String>, NodeError> {
            Ok(self.0.lock().clone())
        }

        async fn store_wrapped_key(&self, _volume: &VolumeId, wrapped: &str) -> Result<(), NodeError> {
            *self.0.lock() = Some(wrapped.to_owned());
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_first_stage_stores_a_key_the_next_ones_unwrap_and_a_wrong_kek_is_permission_denied() {
        let store = Store::default();
        let kek = Kek::from_secret(&[1; 32]).expect("kek");
        let reader = data_key(&store, &volume(), &kek, None, false).await.expect_err("a reader makes no key");
        assert_eq!(reader.code(), tonic::Code::FailedPrecondition);
        assert!(store.0.lock().is_none());
        let made = data_key(&store, &volume(), &kek, None, true).await.expect("made");
        let stored = store.0.lock().clone().expect("stored");
        assert_eq!(data_key(&store, &volume(), &kek, None, true).await.expect("unwrapped").bytes(), made.bytes());
        assert_eq!(store.0.lock().clone(), Some(stored.clone()), "the stored key is kept, not replaced");
        let other = Kek::from_secret(&[2; 32]).expect("kek");
        let err = data_key(&store, &volume(), &other, None, true).await.expect_err("wrong kek");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.to_string().contains(kek.id()) && err.to_string().contains(other.id()), "{err}");
        assert_eq!(store.0.lock().clone(), Some(stored), "a wrong KEK overwrites nothing");
    }

    #[tokio::test]
    async fn a_key_copied_from_its_source_is_bound_to_the_copy_at_its_first_stage_and_only_for_the_named_source() {
        let source: VolumeId = "rbd:c:rbd:swell-fedcba9876543210fedcba9876543210".parse().expect("id");
        let other: VolumeId = "rbd:c:rbd:swell-00000000000000000000000000000000".parse().expect("id");
        let kek = Kek::from_secret(&[1; 32]).expect("kek");
        let key = DataKey::generate().expect("key");
        let copied = kek.wrap(&source.to_string(), &key).expect("wrap");
        let store = Store(parking_lot::Mutex::new(Some(copied.clone())));
        // Without the source named, or naming another, the copy is refused untouched.
        for named in [None, Some(&other)] {
            let err = data_key(&store, &volume(), &kek, named, true).await.expect_err("bound to the source");
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
            assert_eq!(store.0.lock().clone(), Some(copied.clone()), "nothing rewritten");
        }
        let wrong = Kek::from_secret(&[2; 32]).expect("kek");
        assert_eq!(data_key(&store, &volume(), &wrong, Some(&source), true).await.expect_err("wrong kek").code(), tonic::Code::PermissionDenied);
        // A character inside the ciphertext: the last one also carries
        // padding bits, and changing those can make it fail to decode
        // (malformed) instead of failing to authenticate.
        let mut tampered: Vec<char> = copied.chars().collect();
        let at = tampered.len() - 10;
        tampered[at] = if tampered[at] == 'A' { 'B' } else { 'A' };
        let tampered: String = tampered.into_iter().collect();
        *store.0.lock() = Some(tampered.clone());
        assert_eq!(data_key(&store, &volume(), &kek, Some(&source), true).await.expect_err("tampered").code(), tonic::Code::PermissionDenied);
        assert_eq!(store.0.lock().clone(), Some(tampered), "a tampered key is not rewritten");
        // A reader opens the copy without rewriting it.
        *store.0.lock() = Some(copied.clone());
        assert_eq!(data_key(&store, &volume(), &kek, Some(&source), false).await.expect("reader").bytes(), key.bytes());
        assert_eq!(store.0.lock().clone(), Some(copied.clone()));
        // The first stage: the same data key, now stored for this volume alone.
        assert_eq!(data_key(&store, &volume(), &kek, Some(&source), true).await.expect("rebound").bytes(), key.bytes());
        let rebound = store.0.lock().clone().expect("stored");
        assert_ne!(rebound, copied);
        assert_eq!(kek.unwrap(&volume().to_string(), &rebound).expect("own id").bytes(), key.bytes());
        assert_eq!(kek.unwrap(&source.to_string(), &rebound).err(), Some(UnwrapError::Rejected), "no longer the source's");
        assert_eq!(data_key(&store, &volume(), &kek, None, true).await.expect("later stages").bytes(), key.bytes());
        assert_eq!(store.0.lock().clone(), Some(rebound), "bound once");
    }
}
