//! Where the local backend keeps what, under its state directory, and the
//! ids it hands out: the on-disk layout in one place (docs/local-backend.md).
//!
//! - `volumes/<k0k1>/<k2k3>/<key>.img`: a volume's backing file (sparse; its
//!   length is the volume's size), the file the node attaches, in the
//!   directory named by the first two and next two hex digits of its key;
//! - `volumes/<k0k1>/<k2k3>/<key>.json`: its record ([`crate::records::VolumeRecord`]);
//! - `volumes/<k0k1>/<k2k3>/<key>.auto-grow.json` and `<key>.usage.json`: its
//!   auto-grow policy and its node's last usage reading ([`crate::auto_grow`]);
//! - `volumes/<k0k1>/<k2k3>/<key>.wrapped-key`: an encrypted volume's data
//!   key, wrapped ([`crate::keys`]);
//! - `snapshots/<d0d1>/<d2d3>/<key>.img`, `.json` and `.wrapped-key`: a
//!   snapshot's copy, record and copy of its volume's wrapped key, spread by
//!   the digest that follows the key's prefix;
//! - `auto-grow-wanted/<key>`: the marks of volumes that want to grow;
//! - `ledger.json` (and its lock files): the sum of the volumes' sizes ([`crate::ledger`]);
//! - `locks/<key>.lock`: the claims of operations in flight, one per volume or snapshot.
//!
//! Keys are hex digests, so the two levels of 256 directories share them out
//! evenly and, walked in name order, give the keys in order: no directory
//! grows past a few hundred entries below 10 million volumes, and a page of
//! keys is found without listing the others. A key that is no digest (an id
//! Swell never handed out) lands in [`ODD`], where nothing is ever made.
//!
//! Files are 0600 and directories 0700: a tenant's data is root's alone.
//!
//! Expansion records live elsewhere: under the controller's state directory
//! ([`crate::expansions`]).

use std::path::{Path, PathBuf};

use swell_storage::snapshot::is_snapshot_key;
use swell_storage::volume_id::{is_name_digest, name_digest};
use swell_storage::{SnapshotId, VolumeId};

/// The id prefix of local volumes.
pub const KIND: &str = "local";

/// The directory of keys that are no digest: Swell makes none, so lookups
/// of such ids find nothing, and no key can climb out through `..`.
pub(crate) const ODD: &str = "_";

/// Where a local volume's backing file lives; the node attaches this path.
pub fn image_path(state_dir: &Path, id: &VolumeId) -> PathBuf {
    volume_bucket(state_dir, id.key()).join(format!("{}.img", id.key()))
}

pub(crate) fn record_path(state_dir: &Path, id: &VolumeId) -> PathBuf {
    volume_bucket(state_dir, id.key()).join(format!("{}.json", id.key()))
}

/// A volume's auto-grow policy ([`crate::auto_grow`]).
pub(crate) fn policy_path(state_dir: &Path, id: &VolumeId) -> PathBuf {
    volume_bucket(state_dir, id.key()).join(format!("{}.auto-grow.json", id.key()))
}

/// The usage its node last reported ([`crate::auto_grow`]).
pub(crate) fn usage_path(state_dir: &Path, id: &VolumeId) -> PathBuf {
    volume_bucket(state_dir, id.key()).join(format!("{}.usage.json", id.key()))
}

/// An encrypted volume's wrapped data key ([`crate::keys`]).
pub fn wrapped_key_path(state_dir: &Path, id: &VolumeId) -> PathBuf {
    volume_bucket(state_dir, id.key()).join(format!("{}.{WRAPPED_KEY_SUFFIX}", id.key()))
}

/// The copy of its volume's wrapped data key a snapshot keeps ([`crate::keys`]).
pub(crate) fn snapshot_wrapped_key_path(state_dir: &Path, key: &str) -> PathBuf {
    snapshot_bucket(state_dir, key).join(format!("{key}.{WRAPPED_KEY_SUFFIX}"))
}

const WRAPPED_KEY_SUFFIX: &str = "wrapped-key";

/// The marks of the volumes that want to grow ([`crate::auto_grow`]).
pub(crate) fn wanted_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("auto-grow-wanted")
}

/// Volume `id`'s mark.
pub(crate) fn wanted_path(state_dir: &Path, id: &VolumeId) -> PathBuf {
    wanted_dir(state_dir).join(id.key())
}

/// The directory of volume `key`'s files.
pub(crate) fn volume_bucket(state_dir: &Path, key: &str) -> PathBuf {
    bucket(&volumes_dir(state_dir), is_name_digest(key).then_some(key))
}

/// The directory of snapshot `key`'s files.
pub(crate) fn snapshot_bucket(state_dir: &Path, key: &str) -> PathBuf {
    bucket(&snapshots_dir(state_dir), snapshot_digest(key))
}

/// The digest a snapshot key is spread by, `None` for a key of another shape.
pub(crate) fn snapshot_digest(key: &str) -> Option<&str> {
    is_snapshot_key(key).then(|| &key[key.len() - 32..])
}

fn bucket(top: &Path, digest: Option<&str>) -> PathBuf {
    match digest {
        Some(hex) => top.join(&hex[..2]).join(&hex[2..4]),
        None => top.join(ODD),
    }
}

/// Whether `name` is one of the 256 names of a level of buckets.
pub(crate) fn is_bucket_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn volumes_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("volumes")
}

/// Where the lock files of operations in flight live ([`crate::state_dir`]).
pub(crate) fn locks_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("locks")
}

pub(crate) fn snapshots_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("snapshots")
}

/// Where the copy of a local snapshot lives.
pub fn snapshot_path(state_dir: &Path, key: &str) -> PathBuf {
    snapshot_bucket(state_dir, key).join(format!("{key}.img"))
}

pub(crate) fn snapshot_record_path(state_dir: &Path, key: &str) -> PathBuf {
    snapshot_bucket(state_dir, key).join(format!("{key}.json"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_two_levels_in_key_order_and_odd_keys_stay_inside() {
        let root = Path::new("/s");
        let id = VolumeId::new(KIND, "0a1b2c3d4e5f60718293a4b5c6d7e8f9").unwrap();
        assert_eq!(image_path(root, &id), Path::new("/s/volumes/0a/1b/0a1b2c3d4e5f60718293a4b5c6d7e8f9.img"));
        let snapshot = swell_storage::snapshot::snapshot_key("snap");
        let digest = snapshot_digest(&snapshot).unwrap();
        assert_eq!(snapshot_path(root, &snapshot), Path::new(&format!("/s/snapshots/{}/{}/{snapshot}.img", &digest[..2], &digest[2..4])));
        for odd in ["a....", "ab", "a..b.c"] {
            let id = VolumeId::new(KIND, odd).unwrap();
            assert_eq!(image_path(root, &id), Path::new(&format!("/s/volumes/_/{odd}.img")), "{odd}");
        }
    }
}
