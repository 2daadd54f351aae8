//! Where the local backend keeps what, under its state directory, and the
//! ids it hands out: the on-disk layout in one place.
//!
//! - `volumes/<key>.img`: a volume's backing file (sparse; its length is the
//!   volume's size), the file the node attaches;
//! - `volumes/<key>.json`: its record ([`crate::records::VolumeRecord`]);
//! - `snapshots/<key>.img` and `snapshots/<key>.json`: a snapshot's copy and record;
//! - `ledger.json` (and its lock files): the sum of the volumes' sizes ([`crate::ledger`]).
//!
//! Expansion records live elsewhere: under the controller's state directory
//! ([`crate::expansions`]).

use std::path::{Path, PathBuf};

use swell_storage::volume_id::name_digest;
use swell_storage::{SnapshotId, VolumeId};

/// The id prefix of local volumes.
pub const KIND: &str = "local";

/// Where a local volume's backing file lives; the node attaches this path.
pub fn image_path(state_dir: &Path, id: &VolumeId) -> PathBuf {
    volumes_dir(state_dir).join(format!("{}.img", id.key()))
}

pub(crate) fn record_path(state_dir: &Path, id: &VolumeId) -> PathBuf {
    volumes_dir(state_dir).join(format!("{}.json", id.key()))
}

pub(crate) fn volumes_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("volumes")
}

pub(crate) fn snapshots_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("snapshots")
}

/// Where the copy of a local snapshot lives.
pub fn snapshot_path(state_dir: &Path, key: &str) -> PathBuf {
    snapshots_dir(state_dir).join(format!("{key}.img"))
}

pub(crate) fn snapshot_record_path(state_dir: &Path, key: &str) -> PathBuf {
    snapshots_dir(state_dir).join(format!("{key}.json"))
}

/// The id a volume of this name gets: a digest, so a retried create that
/// crashed half-way lands on the same files.
pub fn volume_id_for(name: &str) -> VolumeId {
    VolumeId::new(KIND, &name_digest(name)).unwrap_or_else(|_| unreachable!("hex digests are valid keys"))
}

/// The key of a local snapshot's id, `None` for another backend's.
pub(crate) fn local_snapshot(id: &SnapshotId) -> Option<&str> {
    (id.backend() == KIND && id.place().is_empty()).then(|| id.key())
}

/// The id of local snapshot `key`.
pub(crate) fn snapshot_id(key: &str) -> SnapshotId {
    SnapshotId::new(KIND, "", key).unwrap_or_else(|_| unreachable!("snapshot keys are valid id parts"))
}
