//! The node's durable record of each staged volume: which device it was
//! attached as, where it is staged and how (block or a filesystem with mount
//! flags). Publish, expand, stats and unstage read it; it survives restarts
//! of the node plugin, so nothing depends on in-memory state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use swell_storage::rbd_attach::AttachMode;
use swell_storage::{VolumeId, durable};

use crate::error::NodeError;
use crate::filesystem::FsType;

/// How a volume is staged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Access {
    /// A raw block device; nothing is mounted at the staging path.
    Block,
    /// A filesystem mounted at the staging path.
    Mount {
        /// The filesystem kind.
        fs_type: FsType,
        /// The flags it was mounted with.
        mount_flags: Vec<String>,
    },
}

/// One staged volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingRecord {
    /// The volume id.
    pub volume_id: String,
    /// The block device the volume is attached as.
    pub device: PathBuf,
    /// An encrypted volume's clear-text device (its LUKS2 mapping), which
    /// holds the filesystem or is published as the raw block device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapper: Option<PathBuf>,
    /// The staging path kubelet chose.
    pub staging_path: PathBuf,
    /// Block or mount, with the filesystem details.
    pub access: Access,
    /// How an RBD volume was attached; absent for other volumes, and in
    /// records of nodes that attached every RBD volume the detected way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd_mode: Option<AttachMode>,
}

impl StagingRecord {
    /// The device the volume's data is read through: the clear-text mapping
    /// of an encrypted volume, else the attached device.
    pub fn data_device(&self) -> &Path {
        self.mapper.as_deref().unwrap_or(&self.device)
    }
}

/// The records, one JSON file per volume under `<state_dir>/staged`.
#[derive(Debug, Clone)]
pub struct StagingStore {
    dir: PathBuf,
}

impl StagingStore {
    /// Opens the store, creating its directory (0700: records name devices
    /// and paths of every tenant's volumes).
    pub fn open(state_dir: &Path) -> Result<Self, NodeError> {
        let dir = state_dir.join("staged");
        for dir in [state_dir, &dir] {
            durable::private_dir(dir).map_err(|e| NodeError::io(format!("create {}", dir.display()), e))?;
        }
        Ok(StagingStore { dir })
    }

    fn path(&self, volume: &VolumeId) -> PathBuf {
        // Volume ids are validated to [a-z0-9._-:], safe as file names.
        self.dir.join(format!("{volume}.json"))
    }

    /// The record of a volume, if staged.
    pub async fn read(&self, volume: &VolumeId) -> Result<Option<StagingRecord>, NodeError> {
        let path = self.path(volume);
        blocking(move || durable::read_json(&path)).await.map_err(|e| NodeError::io(format!("read staging record of {volume}"), e))
    }

    /// Writes (or replaces) a record, crash-safely.
    pub async fn write(&self, volume: &VolumeId, record: &StagingRecord) -> Result<(), NodeError> {
        let path = self.path(volume);
        let record = record.clone();
        blocking(move || durable::write_json(&path, &record)).await.map_err(|e| NodeError::io(format!("write staging record of {volume}"), e))
    }

    /// The volumes staged on this node: one directory read, so its cost
    /// follows this node's volumes alone. Names that are not a record's
    /// (a write's temporary file) are passed over.
    pub async fn staged(&self) -> Result<Vec<VolumeId>, NodeError> {
        let dir = self.dir.clone();
        let names = blocking(move || std::fs::read_dir(&dir)?.map(|entry| entry.map(|e| e.file_name())).collect::<std::io::Result<Vec<_>>>())
            .await
            .map_err(|e| NodeError::io(format!("list {}", self.dir.display()), e))?;
        let mut volumes: Vec<VolumeId> = names.iter().filter_map(|name| name.to_str()?.strip_suffix(".json")?.parse().ok()).collect();
        volumes.sort();
        Ok(volumes)
    }

    /// Removes a record; a missing record is fine.
    pub async fn remove(&self, volume: &VolumeId) -> Result<(), NodeError> {
        let path = self.path(volume);
        blocking(move || durable::remove(&path)).await.map_err(|e| NodeError::io(format!("remove staging record of {volume}"), e))
    }
}

/// Runs file work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_round_trip_and_vanish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StagingStore::open(dir.path()).expect("open");
        let id: VolumeId = "local:0123".parse().expect("id");
        assert_eq!(store.read(&id).await.expect("read"), None);
        let record = StagingRecord {
            volume_id: id.to_string(),
            device: "/dev/loop4".into(),
            staging_path: "/staging/pv".into(),
            access: Access::Mount { fs_type: FsType::Ext4, mount_flags: vec!["noatime".into()] },
            rbd_mode: None,
            mapper: None,
        };
        store.write(&id, &record).await.expect("write");
        assert_eq!(store.read(&id).await.expect("read"), Some(record.clone()));
        let json = std::fs::read_to_string(dir.path().join("staged").join(format!("{id}.json"))).expect("record file");
        assert!(!json.contains("rbd_mode") && !json.contains("mapper"), "a local volume's record stays as before: {json}");
        // Records name every tenant's devices and paths: root's alone.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!((mode(dir.path()), mode(&dir.path().join("staged")), mode(&store.path(&id))), (0o700, 0o700, 0o600));
        let rbd = StagingRecord { rbd_mode: Some(AttachMode::Nbd), ..record.clone() };
        store.write(&id, &rbd).await.expect("write");
        assert_eq!(store.read(&id).await.expect("read"), Some(rbd));
        std::fs::write(dir.path().join("staged").join(format!(".{id}.json.x1.tmp")), b"{").expect("a write's temporary file");
        assert_eq!(store.staged().await.expect("list"), vec![id.clone()], "only records are listed");
        store.remove(&id).await.expect("remove");
        store.remove(&id).await.expect("remove again");
        assert_eq!(store.staged().await.expect("list"), Vec::<VolumeId>::new());
        assert_eq!(store.read(&id).await.expect("read"), None);
    }
}
