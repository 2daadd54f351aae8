//! A local volume's auto-grow files, beside its record in its bucket
//! (docs/auto-grow.md):
//!
//! - `<key>.auto-grow.json`: the policy and claim the controller stored at create;
//! - `<key>.usage.json`: the usage the node that stages the volume last read;
//! - `auto-grow-wanted/<key>`: an empty marker the node leaves when the
//!   volume crossed its threshold, so the controller finds the volumes that
//!   want to grow by listing this directory, whose size follows the volumes
//!   crossing now, not every volume's usage.
//!
//! Both names end in something other than `<key>.json`, so the walks that
//! list records never take them for volumes. The node writes usage through
//! [`write_usage`] with no other access to the backend: it needs the
//! state directory it already attaches backing files from, and no
//! Kubernetes credentials.

use std::io;
use std::path::Path;

use swell_storage::VolumeId;
use swell_storage::auto_grow::{AutoGrowRecord, Usage};
use swell_storage::durable;

use crate::layout::names_in;
use crate::paths::{KIND, policy_path, record_path, usage_path, wanted_dir, wanted_path};

/// Stores `record` with volume `id` (synced: it decides future grows).
pub(crate) fn write_record(state_dir: &Path, id: &VolumeId, record: &AutoGrowRecord) -> io::Result<()> {
    durable::write_json(&policy_path(state_dir, id), record)
}

/// The auto-grow record stored with volume `id`, if any.
pub fn read_record(state_dir: &Path, id: &VolumeId) -> io::Result<Option<AutoGrowRecord>> {
    durable::read_json(&policy_path(state_dir, id))
}

/// Records the usage of volume `id` as its node read it. Not synced: a
/// reading lost in a crash is replaced by the next one, and a stale one is
/// never acted on. Refused (NotFound) for a volume that has no record, so
/// a node never leaves files of a deleted volume behind.
pub fn write_usage(state_dir: &Path, id: &VolumeId, usage: &Usage) -> io::Result<()> {
    if !record_path(state_dir, id).is_file() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no local volume {id}")));
    }
    let bytes = serde_json::to_vec(usage).map_err(io::Error::other)?;
    durable::replace(&usage_path(state_dir, id), &bytes, false)
}

/// The file volume `id`'s usage is written to (for measuring how often).
pub fn usage_file(state_dir: &Path, id: &VolumeId) -> std::path::PathBuf {
    usage_path(state_dir, id)
}

/// The usage last recorded for volume `id`, if any.
pub fn read_usage(state_dir: &Path, id: &VolumeId) -> io::Result<Option<Usage>> {
    durable::read_json(&usage_path(state_dir, id))
}

/// Marks volume `id` as wanting to grow (its usage crossed its threshold).
pub fn mark_wanted(state_dir: &Path, id: &VolumeId) -> io::Result<()> {
    let dir = wanted_dir(state_dir);
    if !dir.is_dir() {
        durable::private_dir(&dir)?;
    }
    durable::replace(&wanted_path(state_dir, id), b"", false)
}

/// Takes volume `id`'s mark away (it grew, or is no longer short of room).
pub fn unmark_wanted(state_dir: &Path, id: &VolumeId) -> io::Result<()> {
    durable::remove(&wanted_path(state_dir, id))
}

/// The volumes marked as wanting to grow, in id order.
pub fn wanted(state_dir: &Path) -> io::Result<Vec<VolumeId>> {
    // Temporary files of a mark being written start with a dot; other
    // names are no marks of ours.
    names_in(&wanted_dir(state_dir), |key| key.strip_prefix('.').is_none().then(|| format!("{KIND}:{key}").parse::<VolumeId>().ok()).flatten())
}

/// Removes the files and the mark of a deleted volume.
pub(crate) fn remove(state_dir: &Path, id: &VolumeId) -> io::Result<()> {
    unmark_wanted(state_dir, id)?;
    durable::remove(&usage_path(state_dir, id))?;
    durable::remove(&policy_path(state_dir, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::backend;
    use swell_storage::Backend;
    use swell_storage::auto_grow::{Amount, AutoGrowPolicy, ClaimRef};
    use swell_storage::units::{GIB, MIB};

    #[tokio::test]
    async fn the_policy_and_usage_live_beside_the_volume_unseen_by_listings_and_go_with_it() {
        let (dir, local) = backend(None);
        let volume = local.create_volume("pvc-1", 64 * MIB, &Default::default()).await.unwrap().info().clone();
        let policy = AutoGrowPolicy { on: true, free_below: Amount::Percent(10), inodes_free_below_percent: None, step: Amount::Percent(20), limit_bytes: GIB };
        let policy = AutoGrowRecord { policy, claim: Some(ClaimRef { namespace: "db".into(), name: "data".into() }) };
        local.set_auto_grow(&volume.id, &policy).await.unwrap();
        let usage = Usage { bytes_used: 60 * MIB, bytes_total: 62 * MIB, inodes_used: 12, inodes_total: 4096, read_unix: 1_765_000_000, skipped: None };
        write_usage(dir.path(), &volume.id, &usage).unwrap();
        assert_eq!(local.auto_grow(&volume.id).await.unwrap(), (Some(policy.clone()), Some(usage)));
        assert_eq!(local.list_volumes(None, 0).await.unwrap(), vec![volume.clone()], "the extra files are no volumes");

        mark_wanted(dir.path(), &volume.id).unwrap();
        mark_wanted(dir.path(), &volume.id).unwrap();
        assert_eq!(local.wanting_to_grow().await.unwrap(), vec![volume.id.clone()], "marked once however often");
        local.settle_auto_grow(&volume.id).await.unwrap();
        assert_eq!(wanted(dir.path()).unwrap(), vec![]);
        mark_wanted(dir.path(), &volume.id).unwrap();

        local.delete_volume(&volume.id).await.unwrap();
        assert_eq!(wanted(dir.path()).unwrap(), vec![], "the mark goes with the volume");
        assert_eq!(local.auto_grow(&volume.id).await.unwrap(), (None, None), "gone with the volume");
        let late = write_usage(dir.path(), &volume.id, &usage).unwrap_err();
        assert_eq!(late.kind(), io::ErrorKind::NotFound, "a node never leaves usage of a deleted volume");
        assert!(!usage_path(dir.path(), &volume.id).exists());
        let unknown = local.set_auto_grow(&volume.id, &policy).await.unwrap_err();
        assert!(matches!(unknown, swell_storage::BackendError::NotFound(_)), "{unknown:?}");
    }
}
