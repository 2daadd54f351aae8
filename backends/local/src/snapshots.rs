//! Local snapshots and clones: a snapshot is a copy of its volume's backing
//! file under `snapshots/`, beside a durable record of its name, source and
//! size; a clone or a restore is a new volume whose backing file starts as a
//! copy of its source's ([`crate::copy`]: a reflink where the filesystem
//! shares blocks, else a copy of the data that keeps the holes). The
//! source's wrapped data key, if it has one, is copied first ([`crate::keys`]),
//! so a copy that is complete has its key.
//!
//! Each copy runs on a blocking thread under the claims of the keys it
//! touches only (the snapshot or new volume, and a source volume, which
//! must not grow or go while it is read), so other volumes' calls never wait
//! for it. A copy that outlives its caller's deadline goes on; a retried
//! call finds it running (a snapshot reports `ready: false` meanwhile) or
//! done. A record without its file is a copy a crash cut off: a retry (or,
//! for a snapshot, the background work) makes it again.
//!
//! A reflink copy is a point-in-time image of the source; a data copy is
//! one only while nothing writes the source during the copy.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use swell_storage::expansion::now_unix;
use swell_storage::snapshot::{from_unix_nanos, snapshot_key, unix_nanos};
use swell_storage::{BackendError, ContentSource, Created, SnapshotId, SnapshotInfo, VolumeId, VolumeInfo, durable};

use crate::layout::{all_keys, make_bucket};
use crate::paths::{
    KIND, image_path, local_snapshot, record_path, snapshot_digest, snapshot_id, snapshot_path, snapshot_record_path, snapshot_wrapped_key_path, snapshots_dir,
    volume_id_for, wrapped_key_path,
};
use crate::records::{SnapshotRecord, VolumeRecord};
use crate::state_dir::{Reservation, StateDir, id_taken};
use crate::{copy, keys};

impl StateDir {
    fn snapshot_info(&self, key: &str, record: SnapshotRecord) -> Result<SnapshotInfo, BackendError> {
        let source = record.source;
        let ready = snapshot_path(&self.path, key).exists();
        Ok(SnapshotInfo {
            id: snapshot_id(key),
            name: record.name,
            source,
            size_bytes: record.size_bytes,
            created: from_unix_nanos(record.created_unix_nanos),
            ready,
        })
    }

    fn snapshot_record(&self, key: &str) -> Result<Option<SnapshotRecord>, BackendError> {
        durable::read_json(&snapshot_record_path(&self.path, key)).map_err(|e| BackendError::io(format!("read record of snapshot {key}"), e))
    }

    /// Every snapshot record, by key.
    pub(crate) fn snapshot_records(&self) -> Result<Vec<(String, SnapshotRecord)>, BackendError> {
        let keys = all_keys(&snapshots_dir(&self.path), snapshot_digest).map_err(|e| BackendError::io("list snapshots", e))?;
        let mut records = Vec::new();
        for key in keys {
            if let Some(record) = self.snapshot_record(&key)? {
                records.push((key, record));
            }
        }
        Ok(records)
    }

    pub(crate) fn read_snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotInfo>, BackendError> {
        let Some(key) = local_snapshot(id) else { return Ok(None) };
        self.snapshot_record(key)?.map(|record| self.snapshot_info(key, record)).transpose()
    }

    pub(crate) fn all_snapshots(&self, source: Option<&VolumeId>) -> Result<Vec<SnapshotInfo>, BackendError> {
        let wanted = source.cloned();
        self.snapshot_records()?
            .into_iter()
            .filter(|(_, record)| wanted.as_ref().is_none_or(|w| *w == record.source))
            .map(|(key, record)| self.snapshot_info(&key, record))
            .collect()
    }

    pub(crate) fn create_snapshot(&self, name: &str, source: &VolumeId) -> Result<Created<SnapshotInfo>, BackendError> {
        let key = snapshot_key(name);
        let existing = self.snapshot_record(&key)?;
        if let Some(record) = &existing
            && record.source != *source
        {
            return Err(BackendError::NameTaken {
                name: name.to_owned(),
                reason: format!("snapshot {} is of volume {}, not {source}", snapshot_id(&key), record.source),
            });
        }
        let Some(claim) = self.claim_snapshot(&key)? else {
            // Its copy is running: it exists, and is not ready yet.
            let record = existing
                .ok_or_else(|| BackendError::Contended { step: format!("create snapshot {name}"), reason: "another create of it is running".into() })?;
            return Ok(Created::Existing(self.snapshot_info(&key, record)?));
        };
        match existing {
            Some(record) if snapshot_path(&self.path, &key).exists() => Ok(Created::Existing(self.snapshot_info(&key, record)?)),
            // A copy a crash cut off: cut again from the volume as it is now.
            Some(_) => self.cut(&claim, &key, name, source, false).map(Created::Existing),
            None => self.cut(&claim, &key, name, source, true).map(Created::New),
        }
    }

    /// Copies `source` into snapshot `key` under the snapshot's claim and
    /// the source's (which keeps it from growing or going meanwhile); a new
    /// snapshot's bytes are promised first.
    fn cut(&self, claim: &Reservation, key: &str, name: &str, source: &VolumeId, new: bool) -> Result<SnapshotInfo, BackendError> {
        let _source_claim = self.claim(source)?;
        let volume = self.read_volume(source)?.ok_or_else(|| BackendError::NotFound(source.clone()))?;
        if new {
            self.claim_bytes(claim, volume.size_bytes)?;
        }
        let record =
            SnapshotRecord { name: name.to_owned(), source: source.clone(), size_bytes: volume.size_bytes, created_unix_nanos: unix_nanos(SystemTime::now()) };
        let record_file = snapshot_record_path(&self.path, key);
        // The ledger counts the snapshot from its record on; till then its reservation.
        self.changing_snapshot(key, || {
            make_bucket(&record_file)
                .and_then(|()| durable::write_json(&record_file, &record))
                .map_err(|e| BackendError::io(format!("write record of snapshot {key}"), e))
        })?;
        keys::copy_key(&wrapped_key_path(&self.path, source), &snapshot_wrapped_key_path(&self.path, key))
            .map_err(|e| BackendError::io(format!("copy the wrapped key of volume {source} into snapshot {key}"), e))?;
        let method = copy::copy_file(&image_path(&self.path, source), &snapshot_path(&self.path, key), volume.size_bytes)
            .map_err(|e| BackendError::io(format!("copy volume {source} into snapshot {key}"), e))?;
        tracing::info!(snapshot = key, volume.id = %source, bytes = volume.size_bytes, ?method, "snapshot cut");
        self.snapshot_info(key, record)
    }

    pub(crate) fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), BackendError> {
        let Some(key) = local_snapshot(id) else { return Ok(()) };
        let claim = self
            .claim_snapshot(key)?
            .ok_or_else(|| BackendError::Contended { step: format!("delete snapshot {id}"), reason: "its copy is still being made".into() })?;
        let copy = snapshot_path(&self.path, key);
        for file in [copy::partial_path(&copy), copy] {
            match fs::remove_file(&file) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(BackendError::io(format!("remove {} of snapshot {id}", file.display()), e)),
                _ => {}
            }
        }
        durable::remove(&snapshot_wrapped_key_path(&self.path, key)).map_err(|e| BackendError::io(format!("remove wrapped key of snapshot {id}"), e))?;
        self.changing_snapshot(key, || {
            durable::remove(&snapshot_record_path(&self.path, key)).map_err(|e| BackendError::io(format!("remove record of snapshot {id}"), e))
        })?;
        claim.forget_lock();
        Ok(())
    }

    pub(crate) fn create_volume_from(&self, name: &str, size: u64, source: &ContentSource) -> Result<Created, BackendError> {
        let id = volume_id_for(name);
        let claim = self.claim(&id)?;
        let record_file = record_path(&self.path, &id);
        let existing: Option<VolumeRecord> = durable::read_json(&record_file).map_err(|e| BackendError::io(format!("read record of {id}"), e))?;
        let size = match existing {
            Some(record) if record.name != name => {
                return Err(id_taken(name, &id, &record.name));
            }
            Some(record) if record.source.as_ref() != Some(source) => {
                let was = record.source.map_or_else(|| "blank".to_owned(), |s| format!("made from {s}"));
                return Err(BackendError::NameTaken { name: name.to_owned(), reason: format!("volume {id} was {was}, not made from {source}") });
            }
            Some(record) => match self.read_volume(&id)? {
                Some(info) => return Ok(Created::Existing(info)),
                // The record exists but the copy does not: finish that create.
                None => record.desired_bytes,
            },
            None => size,
        };
        let from = self.source_files(source)?;
        if size < from.bytes {
            return Err(BackendError::Shrink { id, current: from.bytes, requested: size });
        }
        let new = !record_file.exists();
        if new {
            self.claim_bytes(&claim, size)?;
        }
        // The ledger counts the new volume's file once the copy is in place.
        let method = self.changing(&id, || {
            if new {
                let record = VolumeRecord { name: name.to_owned(), desired_bytes: size, created_unix: now_unix(), source: Some(source.clone()) };
                make_bucket(&record_file)
                    .and_then(|()| durable::write_json(&record_file, &record))
                    .map_err(|e| BackendError::io(format!("write record of {id}"), e))?;
            }
            keys::copy_key(&from.wrapped_key, &wrapped_key_path(&self.path, &id))
                .map_err(|e| BackendError::io(format!("copy the wrapped key of {source} into volume {id}"), e))?;
            copy::copy_file(&from.data, &image_path(&self.path, &id), size).map_err(|e| BackendError::io(format!("copy {source} into volume {id}"), e))
        })?;
        tracing::info!(volume.id = %id, %source, bytes = size, ?method, "volume made from its source");
        let info: VolumeInfo = self.read_volume(&id)?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
        Ok(Created::New(info))
    }

    /// Whether `source` holds encrypted data: a wrapped data key is kept
    /// with it (a snapshot's copy, or the volume's own).
    pub(crate) fn source_encrypted(&self, source: &ContentSource) -> Result<bool, BackendError> {
        let key_file = match source {
            ContentSource::Snapshot(snapshot) => {
                let key = local_snapshot(snapshot).ok_or_else(|| BackendError::SnapshotNotFound(snapshot.clone()))?;
                snapshot_wrapped_key_path(&self.path, key)
            }
            ContentSource::Volume(volume) if volume.backend() == KIND => wrapped_key_path(&self.path, volume),
            ContentSource::Volume(volume) => return Err(BackendError::NotFound(volume.clone())),
        };
        keys::holds_key(&key_file).map_err(|e| BackendError::io(format!("read the wrapped key of {source}"), e))
    }

    /// The files a new volume is copied from.
    fn source_files(&self, source: &ContentSource) -> Result<SourceFiles, BackendError> {
        match source {
            ContentSource::Snapshot(snapshot) => {
                let missing = || BackendError::SnapshotNotFound(snapshot.clone());
                let key = local_snapshot(snapshot).ok_or_else(missing)?;
                let record = self.snapshot_record(key)?.ok_or_else(missing)?;
                let copy = snapshot_path(&self.path, key);
                if !copy.exists() {
                    return Err(BackendError::Contended { step: format!("restore snapshot {snapshot}"), reason: "its copy is still being made".into() });
                }
                Ok(SourceFiles { data: copy, wrapped_key: snapshot_wrapped_key_path(&self.path, key), bytes: record.size_bytes, _claim: None })
            }
            ContentSource::Volume(volume) => {
                if volume.backend() != KIND {
                    return Err(BackendError::NotFound(volume.clone()));
                }
                let claim = self.claim(volume)?;
                let info = self.read_volume(volume)?.ok_or_else(|| BackendError::NotFound(volume.clone()))?;
                let (data, wrapped_key) = (image_path(&self.path, volume), wrapped_key_path(&self.path, volume));
                Ok(SourceFiles { data, wrapped_key, bytes: info.size_bytes, _claim: Some(claim) })
            }
        }
    }

    /// Makes again, in the background, the copies of snapshots whose
    /// record has no copy and no call working on it (a crash cut them off);
    /// returns how many it started.
    pub(crate) fn restart_orphaned_copies(&self) -> Result<usize, BackendError> {
        let mut started = 0;
        for (key, record) in self.snapshot_records()? {
            if snapshot_path(&self.path, &key).exists() {
                continue;
            }
            let Some(claim) = self.claim_snapshot(&key)? else { continue };
            let source = record.source.clone();
            let dir = self.clone();
            started += 1;
            std::thread::spawn(move || {
                if let Err(err) = dir.cut(&claim, &key, &record.name, &source, false) {
                    tracing::warn!(snapshot = key, error = %err, "cannot make a snapshot's copy again; retrying on the next pass");
                }
            });
        }
        Ok(started)
    }
}

/// What a new volume is copied from: its source's data and wrapped key.
struct SourceFiles {
    data: PathBuf,
    wrapped_key: PathBuf,
    /// The source's size.
    bytes: u64,
    /// A source volume's claim, which keeps it from growing or going during the copy.
    _claim: Option<Reservation>,
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::path::Path;

    use super::*;
    use swell_storage::units::MIB;
    use swell_storage::{Backend, Placement};

    use crate::backend::tests::backend;

    fn write(dir: &Path, id: &VolumeId, at: u64, bytes: &[u8]) {
        let mut file = OpenOptions::new().write(true).open(image_path(dir, id)).unwrap();
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(bytes).unwrap();
    }

    fn read(path: &Path, at: u64, len: usize) -> Vec<u8> {
        let mut file = fs::File::open(path).unwrap();
        file.seek(SeekFrom::Start(at)).unwrap();
        let mut buf = vec![0; len];
        file.read_exact(&mut buf).unwrap();
        buf
    }

    #[tokio::test]
    async fn a_snapshot_keeps_the_old_data_and_restores_larger() {
        let (dir, b) = backend(None);
        let source = b.create_volume("pvc", 64 * MIB, &Placement::default()).await.unwrap().info().id.clone();
        write(dir.path(), &source, 4096, b"old");
        let snap = b.create_snapshot("snap", &source).await.unwrap();
        let Created::New(snap) = snap else { panic!("{snap:?}") };
        assert!(snap.ready && snap.size_bytes == 64 * MIB && snap.source == source);
        write(dir.path(), &source, 4096, b"new");
        let again = b.create_snapshot("snap", &source).await.unwrap();
        assert_eq!(again, Created::Existing(snap.clone()), "idempotent by name");

        let from = ContentSource::Snapshot(snap.id.clone());
        let restored = b.create_volume_from("restored", 128 * MIB, &Placement::default(), &from).await.unwrap();
        let restored = restored.info().clone();
        assert_eq!(restored.size_bytes, 128 * MIB, "made at the size asked for");
        assert_eq!(read(&image_path(dir.path(), &restored.id), 4096, 3), b"old");
        assert_eq!(b.create_volume_from("restored", 128 * MIB, &Placement::default(), &from).await.unwrap(), Created::Existing(restored.clone()));

        let clone = b.create_volume_from("clone", 64 * MIB, &Placement::default(), &ContentSource::Volume(source.clone())).await.unwrap();
        assert_eq!(read(&image_path(dir.path(), &clone.info().id), 4096, 3), b"new");
        write(dir.path(), &clone.info().id, 4096, b"cln");
        assert_eq!(read(&image_path(dir.path(), &source), 4096, 3), b"new", "the clone changes apart from its source");
    }

    #[tokio::test]
    async fn bad_sources_and_reused_names_change_nothing() {
        let (_dir, b) = backend(None);
        let a = b.create_volume("a", 8 * MIB, &Placement::default()).await.unwrap().info().id.clone();
        let c = b.create_volume("c", 8 * MIB, &Placement::default()).await.unwrap().info().id.clone();
        let unknown: VolumeId = "local:0123456789abcdef0123456789abcdef".parse().unwrap();
        assert!(matches!(b.create_snapshot("s", &unknown).await, Err(BackendError::NotFound(v)) if v == unknown));
        let snap = b.create_snapshot("s", &a).await.unwrap().info().clone();
        assert!(matches!(b.create_snapshot("s", &c).await, Err(BackendError::NameTaken { .. })));
        let missing = SnapshotId::new(KIND, "", &snapshot_key("none")).unwrap();
        let from_missing = b.create_volume_from("r", 8 * MIB, &Placement::default(), &ContentSource::Snapshot(missing)).await;
        assert!(matches!(from_missing, Err(BackendError::SnapshotNotFound(_))), "{from_missing:?}");
        let smaller = b.create_volume_from("r", 4 * MIB, &Placement::default(), &ContentSource::Snapshot(snap.id.clone())).await;
        assert!(matches!(smaller, Err(BackendError::Shrink { .. })), "{smaller:?}");
        assert!(matches!(b.create_volume("a", 8 * MIB, &Placement::default()).await, Ok(Created::Existing(_))));
        let clash = b.create_volume_from("a", 8 * MIB, &Placement::default(), &ContentSource::Snapshot(snap.id.clone())).await;
        assert!(matches!(clash, Err(BackendError::NameTaken { .. })), "a blank volume's name, asked with a source: {clash:?}");
        assert_eq!(b.list_volumes(None, 0).await.unwrap().len(), 2, "no volume made by a refused call");
        assert_eq!(b.list_snapshots(None).await.unwrap(), vec![snap]);
    }

    #[tokio::test]
    async fn snapshots_outlive_their_volume_count_against_capacity_and_go() {
        let (_dir, b) = backend(Some(40 * MIB));
        let a = b.create_volume("a", 16 * MIB, &Placement::default()).await.unwrap().info().id.clone();
        let snap = b.create_snapshot("s", &a).await.unwrap().info().clone();
        assert_eq!(b.capacity(&Placement::default()).await.unwrap().available_bytes, 8 * MIB, "volume and snapshot both promise 16 MiB");
        assert!(matches!(b.create_snapshot("t", &a).await, Err(BackendError::NoSpace { .. })));
        b.delete_volume(&a).await.unwrap();
        assert_eq!(b.list_snapshots(Some(&a)).await.unwrap(), vec![snap.clone()], "listed after its volume went");
        let restored = b.create_volume_from("r", 16 * MIB, &Placement::default(), &ContentSource::Snapshot(snap.id.clone())).await.unwrap();
        assert_eq!(restored.info().size_bytes, 16 * MIB);
        b.delete_snapshot(&snap.id).await.unwrap();
        b.delete_snapshot(&snap.id).await.unwrap();
        assert_eq!(b.snapshot(&snap.id).await.unwrap(), None);
        assert_eq!(b.capacity(&Placement::default()).await.unwrap().available_bytes, 24 * MIB);
    }

    #[tokio::test]
    async fn capacity_counts_snapshots_from_the_ledger_without_reading_their_records() {
        let (dir, b) = backend(Some(64 * MIB));
        let a = b.create_volume("a", 16 * MIB, &Placement::default()).await.unwrap().info().id.clone();
        let snap = b.create_snapshot("s", &a).await.unwrap().info().clone();
        // A record that cannot be read: a call that sums the records fails on it.
        fs::write(snapshot_record_path(dir.path(), snap.id.key()), b"{").unwrap();
        assert_eq!(b.capacity(&Placement::default()).await.unwrap().available_bytes, 32 * MIB, "volume and snapshot both counted");
        assert_eq!(b.grow_volume(&a, 48 * MIB).await.unwrap(), 48 * MIB, "the last free bytes granted");
        assert!(matches!(b.grow_volume(&a, 49 * MIB).await, Err(BackendError::NoSpace { available: 0, .. })));
    }

    #[tokio::test]
    async fn a_copy_cut_off_by_a_crash_is_made_again() {
        let (dir, b) = backend(None);
        let a = b.create_volume("a", 8 * MIB, &Placement::default()).await.unwrap().info().id.clone();
        let snap = b.create_snapshot("s", &a).await.unwrap().info().clone();
        fs::remove_file(snapshot_path(dir.path(), snap.id.key())).unwrap();
        assert!(!b.snapshot(&snap.id).await.unwrap().unwrap().ready, "a record without its copy is not ready");
        assert_eq!(b.collect_garbage().await.unwrap(), 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !b.snapshot(&snap.id).await.unwrap().unwrap().ready {
            assert!(std::time::Instant::now() < deadline, "the copy was not made again");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
