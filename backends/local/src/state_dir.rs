//! The local backend's state directory and what guards it, as the blocking
//! calls of [`crate::backend`] and [`crate::snapshots`] use it: the volumes'
//! files and records, the ledger of their sizes, and the claims of the
//! operations in flight (one per volume or snapshot key, held across
//! processes, with the pool bytes each has reserved in the ledger).

use std::fs::{self};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use swell_storage::file_locks::{FileLock, FileLocks};
use swell_storage::volume_id::is_name_digest;
use swell_storage::{BackendError, Capacity, VolumeId, VolumeInfo, durable};

use crate::layout::{all_keys, has_flat_files, move_flat_files, walk_keys};
use crate::ledger::{InFlight, Ledger};
use crate::paths::{
    KIND, image_path, locks_dir, record_path, snapshot_bucket, snapshot_digest, snapshot_record_path, snapshots_dir, volume_bucket, volumes_dir,
};
use crate::records::{SnapshotRecord, VolumeRecord};

/// An operation's claim on a volume or snapshot, held across every process
/// on the state directory (a lock file), and the pool bytes it reserved in
/// the ledger; dropping it ends both.
pub(crate) struct Reservation {
    lock: FileLock,
    ledger: Ledger,
    /// The key its bytes are reserved under in the ledger.
    key: String,
    reserved: AtomicBool,
    _in_flight: InFlight,
}

impl Reservation {
    /// Removes the claim's lock file: what it guarded is gone.
    pub(crate) fn forget_lock(&self) {
        if let Err(err) = self.lock.remove() {
            tracing::warn!(key = self.key, error = %err, "cannot remove the lock file of a deleted volume or snapshot");
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.reserved.load(Ordering::Acquire)
            && let Err(err) = self.ledger.release(&self.key)
        {
            // Dropped by the next repair, once nothing is in flight.
            tracing::warn!(key = self.key, error = %err, "cannot end a reservation in the local ledger");
        }
    }
}

/// The state directory, its ledger and the locks on it.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    pub(crate) path: PathBuf,
    capacity_bytes: Option<u64>,
    ledger: Ledger,
    /// `None` when opened read-only.
    locks: Option<FileLocks>,
}

fn read_only_error(step: String) -> BackendError {
    BackendError::io(step, io::Error::new(io::ErrorKind::PermissionDenied, "the local backend was opened read-only"))
}

impl StateDir {
    /// Opens (creating, 0700) the directory, summing its volumes into a new
    /// ledger when it has none; read-only, it creates and locks nothing.
    pub(crate) fn open(path: PathBuf, capacity_bytes: Option<u64>, read_only: bool) -> io::Result<Self> {
        if read_only {
            return Ok(StateDir { ledger: Ledger::read_only(&path), path, capacity_bytes, locks: None });
        }
        for dir in [path.clone(), volumes_dir(&path), snapshots_dir(&path)] {
            durable::private_dir(&dir)?;
        }
        let locks = FileLocks::open(&locks_dir(&path))?;
        move_flat_layout(&path)?;
        let ledger = Ledger::open(&path, &|| ledger_keys(&path), &|key| counted_bytes(&path, key))?;
        Ok(StateDir { path, capacity_bytes, ledger, locks: Some(locks) })
    }

    /// Claims `id` for one operation. A second operation on the same volume,
    /// in this process or another, is refused rather than queued.
    pub(crate) fn claim(&self, id: &VolumeId) -> Result<Reservation, BackendError> {
        let busy = || BackendError::Contended { step: format!("claim {id}"), reason: "another operation on it is in progress".into() };
        self.claim_as(id.key(), &format!("claim {id}"))?.ok_or_else(busy)
    }

    /// Claims snapshot `key`, `None` when another operation has it.
    pub(crate) fn claim_snapshot(&self, key: &str) -> Result<Option<Reservation>, BackendError> {
        self.claim_as(&snapshot_ledger_key(key), &format!("claim snapshot {key}"))
    }

    fn claim_as(&self, key: &str, step: &str) -> Result<Option<Reservation>, BackendError> {
        let locks = self.locks.as_ref().ok_or_else(|| read_only_error(step.to_owned()))?;
        let Some(lock) = locks.try_lock(key).map_err(|e| BackendError::io(format!("{step}: lock file"), e))? else { return Ok(None) };
        let in_flight = self.ledger.in_flight().map_err(|e| BackendError::io(format!("{step}: ledger"), e))?;
        Ok(Some(Reservation { lock, ledger: self.ledger.clone(), key: key.to_owned(), reserved: AtomicBool::new(false), _in_flight: in_flight }))
    }

    /// Reserves `bytes` of pool room for a claim, if the pool has them:
    /// decided and written in one step under the ledger's lock, against
    /// every process's reservations.
    pub(crate) fn claim_bytes(&self, claim: &Reservation, bytes: u64) -> Result<(), BackendError> {
        let total = self.total_bytes()?;
        let admitted = self.ledger.reserve(&claim.key, bytes, |others| {
            let available = total.saturating_sub(others);
            if bytes > available { Err(BackendError::NoSpace { requested: bytes, available }) } else { Ok(()) }
        });
        admitted.map_err(|e| BackendError::io("reserve room in the ledger of volume bytes", e))??;
        claim.reserved.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn read_volume(&self, id: &VolumeId) -> Result<Option<VolumeInfo>, BackendError> {
        if id.backend() != KIND {
            return Ok(None);
        }
        let record: Option<VolumeRecord> = durable::read_json(&record_path(&self.path, id)).map_err(|e| BackendError::io(format!("read record of {id}"), e))?;
        let Some(record) = record else { return Ok(None) };
        match fs::metadata(image_path(&self.path, id)) {
            Ok(meta) => Ok(Some(VolumeInfo { id: id.clone(), name: record.name, size_bytes: meta.len() })),
            // A record without its file is a create that crashed half-way.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::io(format!("stat backing file of {id}"), e)),
        }
    }

    /// Up to `limit` volumes (0: all) after the key `after`, by id: the
    /// names are listed, but only the page's records are read.
    pub(crate) fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<VolumeInfo>, BackendError> {
        let mut volumes = Vec::new();
        let mut failed = None;
        let walked = walk_keys(&volumes_dir(&self.path), volume_digest, after, &mut |key| {
            let Ok(id) = VolumeId::new(KIND, key) else { return Ok(true) };
            match self.read_volume(&id) {
                Ok(Some(info)) => volumes.push(info),
                Ok(None) => {}
                Err(err) => {
                    failed = Some(err);
                    return Ok(false);
                }
            }
            Ok(volumes.len() != limit)
        });
        if let Some(err) = failed {
            return Err(err);
        }
        walked.map_err(|e| BackendError::io("list volumes", e))?;
        Ok(volumes)
    }

    /// Runs `work`, which changes the files of `id`, with the ledger following.
    pub(crate) fn changing<T>(&self, id: &VolumeId, work: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
        self.changing_key(id.key(), work)
    }

    /// Runs `work`, which changes the record of snapshot `key`, with the ledger following.
    pub(crate) fn changing_snapshot<T>(&self, key: &str, work: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
        self.changing_key(&snapshot_ledger_key(key), work)
    }

    fn changing_key<T>(&self, key: &str, work: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
        let state_dir = &self.path;
        self.ledger
            .change(key, &|key| counted_bytes(state_dir, key), work)
            .map_err(|e| BackendError::io(format!("update the ledger of volume bytes for {key}"), e))?
    }

    pub(crate) fn capacity(&self) -> Result<Capacity, BackendError> {
        let total_bytes = self.total_bytes()?;
        let state_dir = &self.path;
        let promised = self
            .ledger
            .promised(&|| ledger_keys(state_dir), &|key| counted_bytes(state_dir, key))
            .map_err(|e| BackendError::io("read the ledger of volume bytes", e))?;
        Ok(Capacity { total_bytes, available_bytes: total_bytes.saturating_sub(promised) })
    }

    /// The bytes the backend may promise in all.
    fn total_bytes(&self) -> Result<u64, BackendError> {
        match self.capacity_bytes {
            Some(bytes) => Ok(bytes),
            None => {
                let stat = nix::sys::statvfs::statvfs(&self.path).map_err(|e| BackendError::io("statvfs of the state directory", io::Error::from(e)))?;
                Ok(stat.blocks().saturating_mul(stat.fragment_size()))
            }
        }
    }

    pub(crate) fn set_file_len(&self, id: &VolumeId, size: u64) -> Result<(), BackendError> {
        let path = image_path(&self.path, id);
        let file = durable::private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| BackendError::io(format!("open backing file of {id}"), e))?;
        file.set_len(size).map_err(|e| BackendError::io(format!("size backing file of {id} to {size}"), e))?;
        file.sync_all().map_err(|e| BackendError::io(format!("sync backing file of {id}"), e))
    }
}

/// The ledger's keys of every volume and snapshot record (names only: no
/// record is read); only a ledger made anew (first start, one left
/// unreadable, or one from before snapshots were counted) needs them all.
fn ledger_keys(state_dir: &Path) -> io::Result<Vec<String>> {
    let mut keys = all_keys(&volumes_dir(state_dir), volume_digest)?;
    keys.extend(all_keys(&snapshots_dir(state_dir), snapshot_digest)?.iter().map(|key| snapshot_ledger_key(key)));
    Ok(keys)
}

/// The key the ledger counts snapshot `key` under (and its claim's lock file).
fn snapshot_ledger_key(key: &str) -> String {
    format!("{SNAPSHOT_LEDGER_PREFIX}{key}")
}

const SNAPSHOT_LEDGER_PREFIX: &str = "snapshot.";

/// A volume key is its own digest.
fn volume_digest(key: &str) -> Option<&str> {
    is_name_digest(key).then_some(key)
}

/// Moves the volumes and snapshots an earlier version kept in one flat
/// directory each into their buckets ([`crate::layout`]), with every
/// process's operations held off; a start that finds nothing flat (one
/// listing of each top directory) takes no lock.
fn move_flat_layout(state_dir: &Path) -> io::Result<()> {
    let (volumes, snapshots) = (volumes_dir(state_dir), snapshots_dir(state_dir));
    if !has_flat_files(&volumes, volume_digest)? && !has_flat_files(&snapshots, snapshot_digest)? {
        return Ok(());
    }
    let _quiet = Ledger::quiet(state_dir)?;
    let moved = move_flat_files(&volumes, volume_digest, &|key| volume_bucket(state_dir, key))?
        + move_flat_files(&snapshots, snapshot_digest, &|key| snapshot_bucket(state_dir, key))?;
    tracing::info!(state_dir = %state_dir.display(), files = moved, "local backend: moved the files of the flat layout into their buckets");
    Ok(())
}

/// What the ledger counts for a volume: its backing file's length while it
/// has a record, else nothing; for a snapshot, its whole size while it has
/// a record (its copy may come to hold every block once its source is
/// rewritten, and counts from before the copy is made).
fn counted_bytes(state_dir: &Path, key: &str) -> io::Result<u64> {
    if let Some(snapshot) = key.strip_prefix(SNAPSHOT_LEDGER_PREFIX) {
        let record: Option<SnapshotRecord> = durable::read_json(&snapshot_record_path(state_dir, snapshot))?;
        return Ok(record.map_or(0, |r| r.size_bytes));
    }
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

/// A name whose id is held by a volume of another name (the names' hashes
/// collide): the caller must pick another name.
pub(crate) fn id_taken(name: &str, id: &VolumeId, owner: &str) -> BackendError {
    BackendError::NameTaken { name: name.to_owned(), reason: format!("its id {id} belongs to volume {owner:?}") }
}
