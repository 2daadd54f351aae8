//! The embedded local backend: each volume is a sparse file under a state
//! directory, beside a durable JSON record of its name and desired size. No
//! server to run; the node attaches the file with a loop device.
//!
//! The file's length is the volume's current size and is read from the file
//! system on every call. The record says what was asked for; the file says
//! what is. The sum of every volume's size, which capacity decisions need,
//! is kept by a ledger beside them ([`ledger`]), so no call reads every
//! volume. Snapshots and clones are copies of those files ([`snapshots`]).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, Capacity, Created, Placement, VolumeInfo};
use crate::durable;
use crate::snapshot::{ContentSource, SnapshotId, SnapshotInfo};
use crate::volume_id::VolumeId;
use ledger::Ledger;

pub mod copy;
mod ledger;
mod snapshots;

pub use snapshots::snapshot_path;

/// The id prefix of local volumes.
pub const KIND: &str = "local";

/// How long one local metadata or file operation may take before the call
/// gives up (a wedged disk must not wedge an RPC).
const OP_DEADLINE: Duration = Duration::from_secs(20);

/// Where a local volume's backing file lives; the node attaches this path.
pub fn image_path(state_dir: &Path, id: &VolumeId) -> PathBuf {
    volumes_dir(state_dir).join(format!("{}.img", id.key()))
}

fn record_path(state_dir: &Path, id: &VolumeId) -> PathBuf {
    volumes_dir(state_dir).join(format!("{}.json", id.key()))
}

fn volumes_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("volumes")
}

fn snapshots_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("snapshots")
}

/// The durable record kept beside each backing file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    /// The CO's name for the volume.
    pub name: String,
    /// The size last asked for; the file may lag behind after a crash.
    pub desired_bytes: u64,
    /// When the volume was created, seconds since the epoch.
    pub created_unix: u64,
    /// What the volume was made from, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ContentSource>,
}

/// The local backend over one state directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    state_dir: PathBuf,
    capacity_bytes: Option<u64>,
    reservations: Reservations,
    ledger: Ledger,
}

/// Bytes promised to operations still in flight, by volume key. Only the
/// capacity check runs under this lock; the slow part (record write, file
/// growth, fsync) does not, so different volumes grow in parallel.
type Reservations = Arc<Mutex<HashMap<String, u64>>>;

/// An in-flight operation's claim on a volume and on pool bytes; dropping it
/// ends the claim.
struct Reservation {
    reservations: Reservations,
    key: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reservations.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

impl LocalBackend {
    /// Opens (creating if needed) a local backend under `state_dir`.
    /// `capacity_bytes` caps the bytes promised to volumes in all; without
    /// it, the size of the file system holding `state_dir` is the cap.
    pub fn open(state_dir: impl Into<PathBuf>, capacity_bytes: Option<u64>) -> io::Result<Self> {
        let state_dir = state_dir.into();
        fs::create_dir_all(volumes_dir(&state_dir))?;
        fs::create_dir_all(snapshots_dir(&state_dir))?;
        let ledger = Ledger::open(&state_dir, &|| volume_keys(&state_dir), &|key| counted_bytes(&state_dir, key))?;
        Ok(LocalBackend { state_dir, capacity_bytes, reservations: Arc::default(), ledger })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The id a volume of this name gets: a digest, so a retried create that
    /// crashed half-way lands on the same files.
    pub fn id_for_name(name: &str) -> VolumeId {
        VolumeId::new(KIND, &crate::volume_id::name_digest(name)).unwrap_or_else(|_| unreachable!("hex digests are valid keys"))
    }

    async fn blocking<T, F>(&self, step: &str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, BackendError> + Send + 'static,
    {
        let inner = Inner {
            state_dir: self.state_dir.clone(),
            capacity_bytes: self.capacity_bytes,
            reservations: self.reservations.clone(),
            ledger: self.ledger.clone(),
        };
        let task = tokio::task::spawn_blocking(move || work(&inner));
        match tokio::time::timeout(OP_DEADLINE, task).await {
            Err(_) => Err(BackendError::Timeout { step: step.to_owned(), after: OP_DEADLINE }),
            Ok(Err(join)) => Err(BackendError::io(step, io::Error::other(join.to_string()))),
            Ok(Ok(result)) => result,
        }
    }
}

struct Inner {
    state_dir: PathBuf,
    capacity_bytes: Option<u64>,
    reservations: Reservations,
    ledger: Ledger,
}

/// The keys of every volume record, unordered (names only: no record is read).
fn volume_keys(state_dir: &Path) -> io::Result<Vec<String>> {
    let mut keys = Vec::new();
    for entry in fs::read_dir(volumes_dir(state_dir))? {
        let file_name = entry?.file_name();
        if let Some(key) = file_name.to_str().and_then(|n| n.strip_suffix(".json")).filter(|k| VolumeId::new(KIND, k).is_ok()) {
            keys.push(key.to_owned());
        }
    }
    Ok(keys)
}

/// What the ledger counts for a volume: its backing file's length while it
/// has a record, else nothing.
fn counted_bytes(state_dir: &Path, key: &str) -> io::Result<u64> {
    let Ok(id) = VolumeId::new(KIND, key) else { return Ok(0) };
    if !record_path(state_dir, &id).exists() {
        return Ok(0);
    }
    match fs::metadata(image_path(state_dir, &id)) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

impl Inner {
    /// Claims `id` for one operation. A second operation on the same volume
    /// is refused rather than queued.
    fn claim(&self, id: &VolumeId) -> Result<Reservation, BackendError> {
        self.claim_key(id.key())
            .ok_or_else(|| BackendError::Unavailable { step: format!("claim {id}"), reason: "another operation on it is in progress".into() })
    }

    /// Claims a volume or snapshot key, `None` when another operation has it.
    fn claim_key(&self, key: &str) -> Option<Reservation> {
        let mut reservations = self.reservations.lock().unwrap_or_else(|p| p.into_inner());
        if reservations.contains_key(key) {
            return None;
        }
        reservations.insert(key.to_owned(), 0);
        Some(Reservation { reservations: self.reservations.clone(), key: key.to_owned() })
    }

    /// Raises a claim to `bytes` of pool room, if the pool has them.
    fn claim_bytes(&self, claim: &Reservation, bytes: u64) -> Result<(), BackendError> {
        let mut reservations = self.reservations.lock().unwrap_or_else(|p| p.into_inner());
        let available = self.capacity_with(&reservations)?.available_bytes;
        if bytes > available {
            return Err(BackendError::NoSpace { requested: bytes, available });
        }
        reservations.insert(claim.key.clone(), bytes);
        Ok(())
    }

    fn read_volume(&self, id: &VolumeId) -> Result<Option<VolumeInfo>, BackendError> {
        if id.backend() != KIND {
            return Ok(None);
        }
        let record: Option<VolumeRecord> =
            durable::read_json(&record_path(&self.state_dir, id)).map_err(|e| BackendError::io(format!("read record of {id}"), e))?;
        let Some(record) = record else { return Ok(None) };
        match fs::metadata(image_path(&self.state_dir, id)) {
            Ok(meta) => Ok(Some(VolumeInfo { id: id.clone(), name: record.name, size_bytes: meta.len() })),
            // A record without its file is a create that crashed half-way.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::io(format!("stat backing file of {id}"), e)),
        }
    }

    /// Up to `limit` volumes (0: all) after the key `after`, by id: the
    /// names are listed, but only the page's records are read.
    fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<VolumeInfo>, BackendError> {
        let mut keys = volume_keys(&self.state_dir).map_err(|e| BackendError::io("list volumes", e))?;
        keys.retain(|k| after.is_none_or(|a| k.as_str() > a));
        keys.sort_unstable();
        let mut volumes = Vec::new();
        for key in keys {
            let Ok(id) = VolumeId::new(KIND, &key) else { continue };
            if let Some(info) = self.read_volume(&id)? {
                volumes.push(info);
                if volumes.len() == limit {
                    break;
                }
            }
        }
        Ok(volumes)
    }

    /// Runs `work`, which changes the files of `id`, with the ledger following.
    fn changing<T>(&self, id: &VolumeId, work: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
        let state_dir = &self.state_dir;
        self.ledger
            .change(id.key(), &|key| counted_bytes(state_dir, key), work)
            .map_err(|e| BackendError::io(format!("update the ledger of volume bytes for {id}"), e))?
    }

    fn capacity(&self) -> Result<Capacity, BackendError> {
        let reservations = self.reservations.lock().unwrap_or_else(|p| p.into_inner());
        self.capacity_with(&reservations)
    }

    fn capacity_with(&self, reservations: &HashMap<String, u64>) -> Result<Capacity, BackendError> {
        let total_bytes = match self.capacity_bytes {
            Some(bytes) => bytes,
            None => {
                let stat = nix::sys::statvfs::statvfs(&self.state_dir).map_err(|e| BackendError::io("statvfs of the state directory", io::Error::from(e)))?;
                stat.blocks().saturating_mul(stat.fragment_size())
            }
        };
        let in_flight: u64 = reservations.values().sum();
        let state_dir = &self.state_dir;
        let volumes = self.ledger.total(&|key| counted_bytes(state_dir, key)).map_err(|e| BackendError::io("read the ledger of volume bytes", e))?;
        // A snapshot may come to hold its whole size (its source rewritten).
        let snapshots: u64 = self.snapshot_records()?.iter().map(|(_, r)| r.size_bytes).sum();
        let promised = volumes.saturating_add(snapshots).saturating_add(in_flight);
        Ok(Capacity { total_bytes, available_bytes: total_bytes.saturating_sub(promised) })
    }

    fn set_file_len(&self, id: &VolumeId, size: u64) -> Result<(), BackendError> {
        let path = image_path(&self.state_dir, id);
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| BackendError::io(format!("open backing file of {id}"), e))?;
        file.set_len(size).map_err(|e| BackendError::io(format!("size backing file of {id} to {size}"), e))?;
        file.sync_all().map_err(|e| BackendError::io(format!("sync backing file of {id}"), e))
    }
}

/// A name whose id is held by a volume of another name (the names' hashes
/// collide): the caller must pick another name.
fn id_taken(name: &str, id: &VolumeId, owner: &str) -> BackendError {
    BackendError::NameTaken { name: name.to_owned(), reason: format!("its id {id} belongs to volume {owner:?}") }
}

/// The local backend has one place for volumes: a pool is a mistake in the
/// StorageClass, not something to ignore.
fn no_pools(placement: &Placement) -> Result<(), BackendError> {
    match &placement.pool {
        Some(pool) => Err(BackendError::InvalidParameter { name: "pool".into(), reason: format!("the local backend has no pools (got {pool:?})") }),
        None => Ok(()),
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn create_volume(&self, name: &str, size_bytes: u64, placement: &Placement) -> Result<Created, BackendError> {
        no_pools(placement)?;
        let name = name.to_owned();
        self.blocking("create volume", move |inner| {
            let id = LocalBackend::id_for_name(&name);
            let claim = inner.claim(&id)?;
            let record_file = record_path(&inner.state_dir, &id);
            let existing: Option<VolumeRecord> = durable::read_json(&record_file).map_err(|e| BackendError::io(format!("read record of {id}"), e))?;
            // The record to write first (none when it is there already), and the size.
            let (record, size) = match existing {
                Some(record) if record.name != name => {
                    return Err(id_taken(&name, &id, &record.name));
                }
                Some(VolumeRecord { source: Some(source), .. }) => {
                    return Err(BackendError::NameTaken { name, reason: format!("volume {id} was made from {source}, not blank") });
                }
                Some(record) => match inner.read_volume(&id)? {
                    Some(info) => return Ok(Created::Existing(info)),
                    // The record exists but the file does not: finish that create.
                    None => (None, record.desired_bytes),
                },
                None => {
                    inner.claim_bytes(&claim, size_bytes)?;
                    (Some(VolumeRecord { name, desired_bytes: size_bytes, created_unix: now_unix(), source: None }), size_bytes)
                }
            };
            inner.changing(&id, || {
                if let Some(record) = &record {
                    durable::write_json(&record_file, record).map_err(|e| BackendError::io(format!("write record of {id}"), e))?;
                }
                inner.set_file_len(&id, size)
            })?;
            let info = inner.read_volume(&id)?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
            Ok(Created::New(info))
        })
        .await
    }

    async fn delete_volume(&self, id: &VolumeId) -> Result<(), BackendError> {
        if id.backend() != KIND {
            return Ok(());
        }
        let id = id.clone();
        self.blocking("delete volume", move |inner| {
            let _claim = inner.claim(&id)?;
            let image = image_path(&inner.state_dir, &id);
            inner.changing(&id, || {
                for file in [copy::partial_path(&image), image.clone()] {
                    match fs::remove_file(&file) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(BackendError::io(format!("remove {} of {id}", file.display()), e)),
                    }
                }
                durable::remove(&record_path(&inner.state_dir, &id)).map_err(|e| BackendError::io(format!("remove record of {id}"), e))
            })
        })
        .await
    }

    async fn volume(&self, id: &VolumeId) -> Result<Option<VolumeInfo>, BackendError> {
        let id = id.clone();
        self.blocking("read volume", move |inner| inner.read_volume(&id)).await
    }

    async fn list_volumes(&self, after: Option<&VolumeId>, limit: usize) -> Result<Vec<VolumeInfo>, BackendError> {
        let after = match after {
            Some(a) if a.backend() > KIND => return Ok(Vec::new()),
            Some(a) if a.backend() == KIND => Some(a.key().to_owned()),
            _ => None,
        };
        self.blocking("list volumes", move |inner| inner.page(after.as_deref(), limit)).await
    }

    async fn capacity(&self, placement: &Placement) -> Result<Capacity, BackendError> {
        no_pools(placement)?;
        self.blocking("read capacity", |inner| inner.capacity()).await
    }

    async fn grow_volume(&self, id: &VolumeId, new_size_bytes: u64) -> Result<u64, BackendError> {
        let id = id.clone();
        self.blocking("grow volume", move |inner| {
            let claim = inner.claim(&id)?;
            let current = inner.read_volume(&id)?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
            if new_size_bytes < current.size_bytes {
                return Err(BackendError::Shrink { id, current: current.size_bytes, requested: new_size_bytes });
            }
            if new_size_bytes == current.size_bytes {
                return Ok(current.size_bytes);
            }
            inner.claim_bytes(&claim, new_size_bytes - current.size_bytes)?;
            let record_file = record_path(&inner.state_dir, &id);
            let mut record: VolumeRecord = durable::read_json(&record_file)
                .map_err(|e| BackendError::io(format!("read record of {id}"), e))?
                .ok_or_else(|| BackendError::NotFound(id.clone()))?;
            record.desired_bytes = new_size_bytes;
            inner.changing(&id, || {
                durable::write_json(&record_file, &record).map_err(|e| BackendError::io(format!("write record of {id}"), e))?;
                inner.set_file_len(&id, new_size_bytes)
            })?;
            let after = inner.read_volume(&id)?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
            Ok(after.size_bytes)
        })
        .await
    }

    async fn collect_garbage(&self) -> Result<usize, BackendError> {
        self.blocking("restart snapshot copies", |inner| inner.restart_orphaned_copies()).await
    }

    async fn check_health(&self) -> Result<(), BackendError> {
        self.blocking("check state directory", |inner| {
            fs::read_dir(volumes_dir(&inner.state_dir)).map(drop).map_err(|e| BackendError::io("read state directory", e))
        })
        .await
    }

    async fn create_snapshot(&self, name: &str, source: &VolumeId) -> Result<Created<SnapshotInfo>, BackendError> {
        let (name, source) = (name.to_owned(), source.clone());
        self.blocking("create snapshot", move |inner| inner.create_snapshot(&name, &source)).await
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), BackendError> {
        let id = id.clone();
        self.blocking("delete snapshot", move |inner| inner.delete_snapshot(&id)).await
    }

    async fn snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotInfo>, BackendError> {
        let id = id.clone();
        self.blocking("read snapshot", move |inner| inner.read_snapshot(&id)).await
    }

    async fn list_snapshots(&self, source: Option<&VolumeId>) -> Result<Vec<SnapshotInfo>, BackendError> {
        let source = source.cloned();
        self.blocking("list snapshots", move |inner| inner.all_snapshots(source.as_ref())).await
    }

    async fn create_volume_from(&self, name: &str, size_bytes: u64, placement: &Placement, source: &ContentSource) -> Result<Created, BackendError> {
        no_pools(placement)?;
        let (name, source) = (name.to_owned(), source.clone());
        self.blocking("create volume from a source", move |inner| inner.create_volume_from(&name, size_bytes, &source)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::units::GIB;

    pub(super) fn backend(capacity: Option<u64>) -> (tempfile::TempDir, LocalBackend) {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::open(dir.path(), capacity).unwrap();
        (dir, backend)
    }

    #[tokio::test]
    async fn create_is_idempotent_by_name_and_sparse() {
        let (dir, b) = backend(None);
        let first = b.create_volume("pvc-1", GIB, &Placement::default()).await.unwrap();
        assert!(matches!(first, Created::New(_)));
        let again = b.create_volume("pvc-1", 2 * GIB, &Placement::default()).await.unwrap();
        assert_eq!(again, Created::Existing(first.info().clone()), "existing volume left as it was");
        let meta = fs::metadata(image_path(dir.path(), &first.info().id)).unwrap();
        assert_eq!(meta.len(), GIB);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < GIB / 100, "backing file is sparse");
    }

    #[tokio::test]
    async fn the_size_comes_from_the_file_not_the_record() {
        let (dir, b) = backend(None);
        let id = b.create_volume("pvc", GIB, &Placement::default()).await.unwrap().info().id.clone();
        // Another writer (or a crash between record and file) changes the file only.
        OpenOptions::new().write(true).open(image_path(dir.path(), &id)).unwrap().set_len(3 * GIB).unwrap();
        assert_eq!(b.volume(&id).await.unwrap().unwrap().size_bytes, 3 * GIB);
    }

    #[tokio::test]
    async fn grow_never_shrinks_and_respects_capacity() {
        let (_dir, b) = backend(Some(4 * GIB));
        let id = b.create_volume("pvc", GIB, &Placement::default()).await.unwrap().info().id.clone();
        assert_eq!(b.grow_volume(&id, 2 * GIB).await.unwrap(), 2 * GIB);
        assert!(matches!(b.grow_volume(&id, GIB).await, Err(BackendError::Shrink { .. })));
        assert!(matches!(b.grow_volume(&id, 5 * GIB).await, Err(BackendError::NoSpace { .. })));
        assert_eq!(b.volume(&id).await.unwrap().unwrap().size_bytes, 2 * GIB, "failed grow changed nothing");
        assert_eq!(b.capacity(&Placement::default()).await.unwrap(), Capacity { total_bytes: 4 * GIB, available_bytes: 2 * GIB });
    }

    #[tokio::test]
    async fn create_beyond_capacity_is_refused_without_leftovers() {
        let (_dir, b) = backend(Some(GIB));
        assert!(matches!(b.create_volume("big", 2 * GIB, &Placement::default()).await, Err(BackendError::NoSpace { .. })));
        assert!(b.list_volumes(None, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_half_done_create_is_finished_by_the_retry() {
        let (dir, b) = backend(None);
        let id = LocalBackend::id_for_name("pvc");
        let record = VolumeRecord { name: "pvc".into(), desired_bytes: GIB, created_unix: 0, source: None };
        durable::write_json(&record_path(dir.path(), &id), &record).unwrap();
        assert_eq!(b.volume(&id).await.unwrap(), None, "half-created volume is not visible");
        let created = b.create_volume("pvc", GIB, &Placement::default()).await.unwrap();
        assert_eq!(created.info().size_bytes, GIB);
    }

    #[tokio::test]
    async fn parallel_growth_never_promises_more_than_the_pool_holds() {
        let (_dir, b) = backend(Some(10 * GIB));
        let mut ids = Vec::new();
        for name in ["a", "b", "c", "d"] {
            ids.push(b.create_volume(name, GIB, &Placement::default()).await.unwrap().info().id.clone());
        }
        // 6 GiB free; four volumes each ask for 3 GiB more at once: at most two fit.
        let grows = ids.iter().map(|id| {
            let b = b.clone();
            let id = id.clone();
            tokio::spawn(async move { b.grow_volume(&id, 4 * GIB).await })
        });
        let mut grown = 0;
        for task in grows {
            match task.await.unwrap() {
                Ok(size) => {
                    assert_eq!(size, 4 * GIB);
                    grown += 1;
                }
                Err(BackendError::NoSpace { .. }) => {}
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!(grown, 2);
        assert_eq!(b.capacity(&Placement::default()).await.unwrap().available_bytes, 0);
    }

    #[tokio::test]
    async fn pages_follow_ids_and_read_only_their_records() {
        let (dir, b) = backend(None);
        let mut ids = Vec::new();
        for n in 0..7 {
            ids.push(b.create_volume(&format!("pvc-{n}"), GIB, &Placement::default()).await.unwrap().info().id.clone());
        }
        ids.sort();
        let keys = |page: Vec<VolumeInfo>| page.into_iter().map(|v| v.id).collect::<Vec<_>>();
        assert_eq!(keys(b.list_volumes(None, 3).await.unwrap()), ids[..3]);
        assert_eq!(keys(b.list_volumes(Some(&ids[2]), 3).await.unwrap()), ids[3..6]);
        assert_eq!(keys(b.list_volumes(Some(&ids[5]), 3).await.unwrap()), ids[6..]);
        assert!(b.list_volumes(Some(&"rbd:c:p:i".parse().unwrap()), 3).await.unwrap().is_empty(), "every local id comes before an rbd one");
        // A record past the page that cannot be read does not fail the page before it.
        fs::write(record_path(dir.path(), &ids[6]), b"{").unwrap();
        assert_eq!(keys(b.list_volumes(None, 2).await.unwrap()), ids[..2]);
    }

    #[tokio::test]
    async fn the_ledger_keeps_the_sum_of_the_files_across_restarts() {
        let (dir, b) = backend(Some(100 * GIB));
        let a = b.create_volume("a", GIB, &Placement::default()).await.unwrap().info().id.clone();
        let c = b.create_volume("c", 2 * GIB, &Placement::default()).await.unwrap().info().id.clone();
        b.grow_volume(&a, 5 * GIB).await.unwrap();
        b.delete_volume(&c).await.unwrap();
        let available = |b: &LocalBackend| {
            let b = b.clone();
            async move { b.capacity(&Placement::default()).await.unwrap().available_bytes }
        };
        assert_eq!(available(&b).await, 95 * GIB);
        // A state directory from before ledgers: summed from its files once.
        fs::remove_file(dir.path().join("ledger.json")).unwrap();
        let reopened = LocalBackend::open(dir.path(), Some(100 * GIB)).unwrap();
        assert_eq!(available(&reopened).await, 95 * GIB);
        b.create_volume("d", 3 * GIB, &Placement::default()).await.unwrap();
        assert_eq!(available(&reopened).await, 92 * GIB, "another process sees the change through the ledger file");
    }

    #[tokio::test]
    async fn delete_is_idempotent_and_lists_are_ordered() {
        let (_dir, b) = backend(None);
        for name in ["a", "b", "c"] {
            b.create_volume(name, GIB, &Placement::default()).await.unwrap();
        }
        let listed = b.list_volumes(None, 0).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.windows(2).all(|w| w[0].id < w[1].id));
        b.delete_volume(&listed[0].id).await.unwrap();
        b.delete_volume(&listed[0].id).await.unwrap();
        assert_eq!(b.list_volumes(None, 0).await.unwrap().len(), 2);
        assert_eq!(b.volume(&listed[0].id).await.unwrap(), None);
    }
}
