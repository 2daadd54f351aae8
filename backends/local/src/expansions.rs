//! Expansion records as crash-safe JSON files under one directory, with
//! holds that are lock files flocked by their holder: the store of the
//! local backend, which lives on one host, where two controller replicas
//! (each running its reconciler), the webhook and `swell` may open it.
//!
//! Records are spread like the volumes' ([`crate::paths`]): the record of
//! `local:<key>` is `<k0k1>/<k2k3>/local:<key>.json`, so a write fsyncs a
//! directory of a few entries and the sweep's pages walk the buckets in id
//! order; an id whose key is no digest (none names a volume) is kept under
//! `_/`, merged into the pages in id order.
//!
//! A record that has work left also has an empty marker file under
//! `pending/`, written before the record turns pending and removed after it
//! settles, so the reconciler lists the markers instead of reading every
//! record. A marker whose record is settled (a crash between the two
//! writes) is dropped by the next listing.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use swell_storage::expansion::{ExpansionRecord, ExpansionStore, HeldVolume, Hold, Records, Unreadable};
use swell_storage::file_locks::{FileLock, FileLocks};
use swell_storage::volume_id::is_name_digest;
use swell_storage::{BackendError, VolumeId, blocking, durable};

use crate::layout::{has_flat_files, make_bucket, move_flat_files, names_in, walk_keys};
use crate::ledger::Ledger;
use crate::paths::{KIND, ODD};

/// The digest a record's id is spread by: its key's, for a local id.
fn record_digest(id: &str) -> Option<&str> {
    id.strip_prefix(KIND).and_then(|rest| rest.strip_prefix(':')).filter(|key| is_name_digest(key))
}

/// The directory of the record of `id` under `dir`.
fn record_bucket(dir: &Path, id: &str) -> PathBuf {
    match record_digest(id) {
        Some(hex) => dir.join(&hex[..2]).join(&hex[2..4]),
        None => dir.join(ODD),
    }
}

/// How long one record operation may take before the call gives up.
const OP_DEADLINE: Duration = Duration::from_secs(20);

/// The directory of records.
#[derive(Debug, Clone)]
pub(crate) struct ExpansionRecords {
    dir: PathBuf,
    /// `None` when opened read-only.
    locks: Option<FileLocks>,
    /// The local state directory whose volumes may be held; `None` (the
    /// store's own tests) holds any id.
    volumes_of: Option<PathBuf>,
}

struct HeldKey(FileLock);

#[async_trait::async_trait]
impl HeldVolume for HeldKey {
    fn still_held(&self) -> bool {
        true
    }

    async fn release(self: Box<Self>) {}

    async fn release_deleted(self: Box<Self>) {
        if let Err(err) = self.0.remove() {
            tracing::warn!(error = %err, "cannot remove the hold's lock file of a deleted volume");
        }
    }
}

impl ExpansionRecords {
    /// Opens (creating, 0700) the record directory under `state_dir`;
    /// read-only, it creates nothing and holds nothing.
    pub(crate) fn open(state_dir: &Path, read_only: bool) -> io::Result<Self> {
        let dir = state_dir.join("expansions");
        if read_only {
            return Ok(ExpansionRecords { dir, locks: None, volumes_of: None });
        }
        durable::private_dir(state_dir)?;
        durable::private_dir(&dir.join("pending"))?;
        let locks = FileLocks::open(&dir.join("locks"))?;
        Ok(ExpansionRecords { dir, locks: Some(locks), volumes_of: None })
    }

    /// Holds only volumes of the local state directory `state_dir`: a hold
    /// of an id that names none is NotFound and makes no lock file.
    pub(crate) fn of_volumes_in(self, state_dir: &Path) -> Self {
        ExpansionRecords { volumes_of: Some(state_dir.to_owned()), ..self }
    }

    fn locks(&self) -> io::Result<&FileLocks> {
        self.locks.as_ref().ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "the expansion records were opened read-only"))
    }

    fn path(&self, id: &VolumeId) -> PathBuf {
        // Ids are validated to [a-z0-9._-:], safe as a file name.
        record_bucket(&self.dir, &id.to_string()).join(format!("{id}.json"))
    }

    /// Moves the records an earlier version kept flat in the directory into
    /// their buckets ([`crate::layout`]), holding every process's volume
    /// operations off `state_dir` meanwhile; nothing flat, nothing locked.
    pub(crate) fn move_flat_layout(&self, state_dir: &Path) -> io::Result<()> {
        if self.locks.is_none() || !has_flat_files(&self.dir, record_digest)? {
            return Ok(());
        }
        let _quiet = Ledger::quiet(state_dir)?;
        let moved = move_flat_files(&self.dir, record_digest, &|id| record_bucket(&self.dir, id))?;
        tracing::info!(dir = %self.dir.display(), records = moved, "local backend: moved the flat expansion records into their buckets");
        Ok(())
    }

    /// Up to `limit` records after `after`, in id order, reading only
    /// those: the buckets in order, merged with the few ids of no digest.
    fn page_now(&self, after: Option<&str>, limit: usize) -> io::Result<Records> {
        let mut records = Records::default();
        if limit == 0 {
            return Ok(records);
        }
        let mut odd = self.odd_ids(after)?.into_iter().peekable();
        let mut take = |id: &str| {
            let Ok(id) = id.parse::<VolumeId>() else { return true };
            match self.get(&id) {
                Ok(Some(record)) => records.readable.push(record),
                Ok(None) => {}
                Err(err) => records.unreadable.push(Unreadable { volume: id, reason: err.to_string() }),
            }
            records.len() < limit
        };
        let mut more = true;
        walk_keys(&self.dir, record_digest, after, &mut |id| {
            while let Some(first) = odd.next_if(|o| o.as_str() < id) {
                more = take(&first);
                if !more {
                    return Ok(false);
                }
            }
            more = take(id);
            Ok(more)
        })?;
        while more && let Some(id) = odd.next() {
            more = take(&id);
        }
        Ok(records)
    }

    /// The ids of no digest with a record, after `after`, in order.
    fn odd_ids(&self, after: Option<&str>) -> io::Result<Vec<String>> {
        names_in(&self.dir.join(ODD), |name| name.strip_suffix(".json").filter(|id| after.is_none_or(|a| *id > a)).map(str::to_owned))
    }

    fn marker(&self, id: &VolumeId) -> PathBuf {
        self.dir.join("pending").join(id.to_string())
    }

    /// Reads a volume's record.
    pub(crate) fn get(&self, id: &VolumeId) -> io::Result<Option<ExpansionRecord>> {
        durable::read_json(&self.path(id))
    }

    /// Writes `record` after checking it was made from the stored one.
    fn put(&self, id: &VolumeId, mut record: ExpansionRecord) -> Result<ExpansionRecord, BackendError> {
        let stored = self.get(id).map_err(|e| BackendError::io(format!("read expansion record of {id}"), e))?;
        let stored_generation = stored.as_ref().map_or(0, |r| r.generation);
        if stored_generation != record.generation {
            return Err(BackendError::Contended {
                step: format!("write expansion record of {id}"),
                reason: format!("the record changed since it was read (generation {stored_generation}, not {})", record.generation),
            });
        }
        record.generation += 1;
        let marker = self.marker(id);
        if record.pending() {
            durable::write_json(&marker, &()).map_err(|e| BackendError::io(format!("mark {id} pending"), e))?;
        }
        let path = self.path(id);
        make_bucket(&path).and_then(|()| durable::write_json(&path, &record)).map_err(|e| BackendError::io(format!("write expansion record of {id}"), e))?;
        if !record.pending() {
            durable::remove(&marker).map_err(|e| BackendError::io(format!("unmark {id} pending"), e))?;
        }
        Ok(record)
    }

    /// The records behind the pending markers, by id; stray markers are
    /// dropped.
    fn pending_now(&self) -> io::Result<Records> {
        let mut markers = Vec::new();
        let entries = match std::fs::read_dir(self.dir.join("pending")) {
            Ok(entries) => entries,
            // A reader of a directory no controller has made yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.locks.is_none() => return Ok(Records::default()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<VolumeId>().ok()) {
                markers.push((id, entry.path()));
            }
        }
        markers.sort();
        let mut records = Records::default();
        for (id, marker) in markers {
            match self.get(&id) {
                Ok(Some(record)) if record.pending() => records.readable.push(record),
                // Dropped under the volume's hold: a holder in another
                // process may be about to turn the record pending again. A
                // reader leaves it to a writer.
                Ok(_) => {
                    if let Some(locks) = &self.locks
                        && let Some(_held) = locks.try_lock(&id.to_string())?
                    {
                        durable::remove(&marker)?;
                    }
                }
                Err(err) => records.unreadable.push(Unreadable { volume: id, reason: err.to_string() }),
            }
        }
        Ok(records)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        step: &'static str,
        work: impl FnOnce(ExpansionRecords) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let this = self.clone();
        blocking::run(step, OP_DEADLINE, move || work(this)).await
    }
}

#[async_trait::async_trait]
impl ExpansionStore for ExpansionRecords {
    async fn hold(&self, id: &VolumeId) -> Result<Option<Hold>, BackendError> {
        let key = id.to_string();
        let unknown = id.clone();
        let held = self
            .blocking("hold volume", move |this| {
                if let Some(state_dir) = &this.volumes_of
                    && !crate::paths::record_path(state_dir, &unknown).exists()
                {
                    return Err(BackendError::NotFound(unknown));
                }
                this.locks().and_then(|locks| locks.try_lock(&key)).map_err(|e| BackendError::io(format!("hold {key}: lock file"), e))
            })
            .await?;
        Ok(held.map(|lock| Hold::new(Box::new(HeldKey(lock)))))
    }

    async fn record(&self, id: &VolumeId) -> Result<Option<ExpansionRecord>, BackendError> {
        let id = id.clone();
        self.blocking("read expansion record", move |this| this.get(&id).map_err(|e| BackendError::io(format!("read expansion record of {id}"), e))).await
    }

    async fn write(&self, _hold: &Hold, record: ExpansionRecord) -> Result<ExpansionRecord, BackendError> {
        let id = record.volume_id.clone();
        self.blocking("write expansion record", move |this| this.put(&id, record)).await
    }

    async fn forget(&self, hold: Hold, id: &VolumeId) -> Result<(), BackendError> {
        let id = id.clone();
        let result = self
            .blocking("remove expansion record", move |this| {
                let removed = durable::remove(&this.path(&id)).and_then(|()| durable::remove(&this.marker(&id)));
                removed.map_err(|e| BackendError::io(format!("remove expansion record of {id}"), e))
            })
            .await;
        hold.release_deleted().await;
        result
    }

    async fn pending(&self) -> Result<Records, BackendError> {
        self.blocking("list pending expansions", |this| this.pending_now().map_err(|e| BackendError::io("list pending expansions", e))).await
    }

    async fn page(&self, after: Option<&VolumeId>, limit: usize) -> Result<Records, BackendError> {
        let after = after.map(|a| a.to_string());
        // Only the buckets of the page are listed and its records read: the
        // sweep's cost per step follows its budget, not every record.
        self.blocking("list expansion records", move |this| this.page_now(after.as_deref(), limit).map_err(|e| BackendError::io("list expansion records", e)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ExpansionRecords) {
        let dir = tempfile::tempdir().unwrap();
        let records = ExpansionRecords::open(dir.path(), false).unwrap();
        (dir, records)
    }

    #[tokio::test]
    async fn a_wish_is_pending_until_reached_and_announced() {
        let (_dir, records) = store();
        let id: VolumeId = "local:aa".parse().unwrap();
        let hold = records.hold(&id).await.unwrap().unwrap();
        assert!(records.hold(&id).await.unwrap().is_none(), "a second holder is refused at once");
        let wish = records.write(&hold, ExpansionRecord::new(&id, 1, 1).wishing(1, 2)).await.unwrap();
        assert_eq!(records.pending().await.unwrap().readable, vec![wish.clone()], "a crash here leaves a pending record");
        let done = records.write(&hold, wish.clone().reached(2, Some(2), None)).await.unwrap();
        assert!(records.pending().await.unwrap().is_empty());
        assert_eq!(records.record(&id).await.unwrap(), Some(done.clone()));
        let stale = records.write(&hold, wish.reached(1, None, None)).await;
        assert!(matches!(stale, Err(BackendError::Contended { .. })), "a record made from an old read is refused: {stale:?}");
        assert_eq!(records.record(&id).await.unwrap(), Some(done));
        records.forget(hold, &id).await.unwrap();
        assert_eq!(records.record(&id).await.unwrap(), None);
        assert!(records.hold(&id).await.unwrap().is_some(), "forget released the hold");
    }

    #[tokio::test]
    async fn a_stray_marker_is_dropped_and_pages_follow_id_order() {
        let (_dir, records) = store();
        let hold_b: VolumeId = "local:bb".parse().unwrap();
        let hold = records.hold(&hold_b).await.unwrap().unwrap();
        records.write(&hold, ExpansionRecord::new(&hold_b, 5, 5)).await.unwrap();
        hold.release().await;
        durable::write_json(&records.marker(&hold_b), &()).unwrap();
        assert!(records.pending().await.unwrap().is_empty());
        assert!(!records.marker(&hold_b).exists());
        for key in ["aa", "cc"] {
            let id: VolumeId = format!("local:{key}").parse().unwrap();
            let hold = records.hold(&id).await.unwrap().unwrap();
            records.write(&hold, ExpansionRecord::new(&id, 1, 1)).await.unwrap();
        }
        let ids = |page: Records| page.readable.into_iter().map(|r| r.volume_id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(records.page(None, 2).await.unwrap()), ["local:aa", "local:bb"]);
        assert_eq!(ids(records.page(Some(&hold_b), 2).await.unwrap()), ["local:cc"]);
    }

    #[tokio::test]
    async fn the_sweep_pages_through_every_bucket_in_id_order() {
        let (dir, records) = store();
        let mut ids: Vec<VolumeId> = (0..9).map(|n| crate::paths::volume_id_for(&format!("pvc-{n}"))).collect();
        // Ids of no digest too, before, among and after the others.
        ids.extend(["local:0", "local:7odd", "local:odd"].map(|id| id.parse::<VolumeId>().unwrap()));
        ids.sort();
        for id in &ids {
            let hold = records.hold(id).await.unwrap().unwrap();
            records.write(&hold, ExpansionRecord::new(id, 1, 1)).await.unwrap();
        }
        let top: Vec<_> = std::fs::read_dir(dir.path().join("expansions")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(top.len() <= 2 + 1 + 9, "buckets, pending/ and locks/ only: {top:?}");
        let mut swept = Vec::new();
        let mut after = None;
        loop {
            let page = records.page(after.as_ref(), 2).await.unwrap();
            if page.readable.is_empty() {
                break;
            }
            assert!(page.readable.len() <= 2);
            after = page.last().cloned();
            swept.extend(page.readable.into_iter().map(|r| r.volume_id));
        }
        assert_eq!(swept, ids);
    }

    #[tokio::test]
    async fn an_unreadable_record_is_listed_as_unreadable_not_skipped() {
        let (_dir, records) = store();
        let (good, bad): (VolumeId, VolumeId) = ("local:aa".parse().unwrap(), "local:bb".parse().unwrap());
        let hold = records.hold(&good).await.unwrap().unwrap();
        records.write(&hold, ExpansionRecord::new(&good, 1, 1).wishing(1, 2)).await.unwrap();
        hold.release().await;
        // A pending record damaged on disk, and one whose id does not parse.
        std::fs::write(records.path(&bad), b"{\"volume_id\": \"local:../x\"").unwrap();
        durable::write_json(&records.marker(&bad), &()).unwrap();
        let pending = records.pending().await.unwrap();
        assert_eq!(pending.readable.iter().map(|r| &r.volume_id).collect::<Vec<_>>(), [&good]);
        assert_eq!(pending.unreadable.iter().map(|u| &u.volume).collect::<Vec<_>>(), [&bad]);
        let page = records.page(None, 10).await.unwrap();
        assert_eq!((page.readable.len(), page.unreadable.len(), page.last()), (1, 1, Some(&bad)), "{page:?}");
    }
}
