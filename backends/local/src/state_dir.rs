//! The local backend's state directory and what guards it, as the blocking
//! calls of [`crate::backend`] and [`crate::snapshots`] use it: the volumes'
//! files and records, the ledger of their sizes, and the claims of the
//! operations in flight (one per volume or snapshot key, with the pool
//! bytes each has promised).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use swell_storage::{BackendError, Capacity, VolumeId, VolumeInfo, durable};

use crate::ledger::Ledger;
use crate::paths::{KIND, image_path, record_path, snapshots_dir, volumes_dir};
use crate::records::VolumeRecord;

/// Bytes promised to operations still in flight, by volume key. Only the
/// capacity check runs under this lock; the slow part (record write, file
/// growth, fsync) does not, so different volumes grow in parallel.
type Reservations = Arc<Mutex<HashMap<String, u64>>>;

/// An in-flight operation's claim on a volume and on pool bytes; dropping it
/// ends the claim.
pub(crate) struct Reservation {
    reservations: Reservations,
    key: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reservations.lock().remove(&self.key);
    }
}

/// The state directory, its ledger and the claims on it.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    pub(crate) path: PathBuf,
    capacity_bytes: Option<u64>,
    reservations: Reservations,
    ledger: Ledger,
}

impl StateDir {
    /// Opens (creating) the directory, summing its volumes into a new
    /// ledger when it has none.
    pub(crate) fn open(path: PathBuf, capacity_bytes: Option<u64>) -> io::Result<Self> {
        fs::create_dir_all(volumes_dir(&path))?;
        fs::create_dir_all(snapshots_dir(&path))?;
        let ledger = Ledger::open(&path, &|| volume_keys(&path), &|key| counted_bytes(&path, key))?;
        Ok(StateDir { path, capacity_bytes, reservations: Arc::default(), ledger })
    }

    /// Claims `id` for one operation. A second operation on the same volume
    /// is refused rather than queued.
    pub(crate) fn claim(&self, id: &VolumeId) -> Result<Reservation, BackendError> {
        self.claim_key(id.key()).ok_or_else(|| BackendError::Contended { step: format!("claim {id}"), reason: "another operation on it is in progress".into() })
    }

    /// Claims a volume or snapshot key, `None` when another operation has it.
    pub(crate) fn claim_key(&self, key: &str) -> Option<Reservation> {
        let mut reservations = self.reservations.lock();
        if reservations.contains_key(key) {
            return None;
        }
        reservations.insert(key.to_owned(), 0);
        Some(Reservation { reservations: self.reservations.clone(), key: key.to_owned() })
    }

    /// Raises a claim to `bytes` of pool room, if the pool has them.
    pub(crate) fn claim_bytes(&self, claim: &Reservation, bytes: u64) -> Result<(), BackendError> {
        let mut reservations = self.reservations.lock();
        let available = self.capacity_with(&reservations)?.available_bytes;
        if bytes > available {
            return Err(BackendError::NoSpace { requested: bytes, available });
        }
        reservations.insert(claim.key.clone(), bytes);
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
        let mut keys = volume_keys(&self.path).map_err(|e| BackendError::io("list volumes", e))?;
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
    pub(crate) fn changing<T>(&self, id: &VolumeId, work: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
        let state_dir = &self.path;
        self.ledger
            .change(id.key(), &|key| counted_bytes(state_dir, key), work)
            .map_err(|e| BackendError::io(format!("update the ledger of volume bytes for {id}"), e))?
    }

    pub(crate) fn capacity(&self) -> Result<Capacity, BackendError> {
        let reservations = self.reservations.lock();
        self.capacity_with(&reservations)
    }

    fn capacity_with(&self, reservations: &HashMap<String, u64>) -> Result<Capacity, BackendError> {
        let total_bytes = match self.capacity_bytes {
            Some(bytes) => bytes,
            None => {
                let stat = nix::sys::statvfs::statvfs(&self.path).map_err(|e| BackendError::io("statvfs of the state directory", io::Error::from(e)))?;
                stat.blocks().saturating_mul(stat.fragment_size())
            }
        };
        let in_flight: u64 = reservations.values().sum();
        let state_dir = &self.path;
        let volumes = self.ledger.total(&|key| counted_bytes(state_dir, key)).map_err(|e| BackendError::io("read the ledger of volume bytes", e))?;
        // A snapshot may come to hold its whole size (its source rewritten).
        let snapshots: u64 = self.snapshot_records()?.iter().map(|(_, r)| r.size_bytes).sum();
        let promised = volumes.saturating_add(snapshots).saturating_add(in_flight);
        Ok(Capacity { total_bytes, available_bytes: total_bytes.saturating_sub(promised) })
    }

    pub(crate) fn set_file_len(&self, id: &VolumeId, size: u64) -> Result<(), BackendError> {
        let path = image_path(&self.path, id);
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| BackendError::io(format!("open backing file of {id}"), e))?;
        file.set_len(size).map_err(|e| BackendError::io(format!("size backing file of {id} to {size}"), e))?;
        file.sync_all().map_err(|e| BackendError::io(format!("sync backing file of {id}"), e))
    }
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

/// A name whose id is held by a volume of another name (the names' hashes
/// collide): the caller must pick another name.
pub(crate) fn id_taken(name: &str, id: &VolumeId, owner: &str) -> BackendError {
    BackendError::NameTaken { name: name.to_owned(), reason: format!("its id {id} belongs to volume {owner:?}") }
}
