//! [`LocalBackend`]: the [`Backend`] of the local backend, each call one
//! blocking step on the state directory ([`crate::state_dir`]) under a
//! deadline, so a wedged disk answers Timeout instead of wedging an RPC.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use swell_storage::auto_grow::{AutoGrowRecord, Usage};
use swell_storage::expansion::now_unix;
use swell_storage::{
    Backend, BackendError, Capacity, ContentSource, Created, ExpansionStore, Placement, SnapshotId, SnapshotInfo, VolumeId, VolumeInfo, blocking, durable,
};

use crate::auto_grow;
use crate::copy;
use crate::expansions::ExpansionRecords;
use crate::layout::make_bucket;
use crate::paths::{KIND, image_path, record_path, volume_id_for, volumes_dir, wrapped_key_path};
use crate::records::VolumeRecord;
use crate::state_dir::{StateDir, id_taken};

/// How long one local metadata or file operation may take before the call
/// gives up (a wedged disk must not wedge an RPC).
const OP_DEADLINE: Duration = Duration::from_secs(20);

/// Where a local backend keeps its volumes and their expansion records.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The state directory of the volumes (shared with the node on one machine).
    pub state_dir: PathBuf,
    /// Where the volumes' expansion records live (the controller's
    /// `--state-dir`: they are kept under `expansions/` there).
    pub records_dir: PathBuf,
    /// Bytes the backend may promise in all; without it, the size of the
    /// file system holding `state_dir`.
    pub capacity_bytes: Option<u64>,
    /// Read the directories only (the webhook and `swell`): nothing is
    /// created, locked or written, so they may be mounted read-only.
    pub read_only: bool,
}

/// Why a local backend could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("open {what} at {}: {source}", path.display())]
pub struct OpenError {
    /// Which directory: the backend's state, or its expansion records.
    pub what: &'static str,
    /// Where.
    pub path: PathBuf,
    /// The I/O error.
    pub source: io::Error,
}

impl LocalConfig {
    /// Volumes under `state_dir`, their expansion records under
    /// `records_dir`, as many bytes as the file system holds.
    pub fn new(state_dir: impl Into<PathBuf>, records_dir: impl Into<PathBuf>) -> Self {
        LocalConfig { state_dir: state_dir.into(), records_dir: records_dir.into(), capacity_bytes: None, read_only: false }
    }
}

/// The local backend over one state directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    dir: StateDir,
    records: Arc<ExpansionRecords>,
}

impl LocalBackend {
    /// Opens (creating if needed) the state directory and the record
    /// directory of `config`.
    pub fn open(config: &LocalConfig) -> Result<Self, OpenError> {
        let dir = StateDir::open(config.state_dir.clone(), config.capacity_bytes, config.read_only).map_err(|source| OpenError {
            what: "local backend",
            path: config.state_dir.clone(),
            source,
        })?;
        let records = ExpansionRecords::open(&config.records_dir, config.read_only)
            .map_err(|source| OpenError { what: "expansion records", path: config.records_dir.clone(), source })?
            .of_volumes_in(&config.state_dir);
        records.move_flat_layout(&config.state_dir).map_err(|source| OpenError { what: "expansion records", path: config.records_dir.clone(), source })?;
        Ok(LocalBackend { dir, records: Arc::new(records) })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.dir.path
    }

    async fn blocking<T, F>(&self, step: &'static str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&StateDir) -> Result<T, BackendError> + Send + 'static,
    {
        let dir = self.dir.clone();
        blocking::run(step, OP_DEADLINE, move || work(&dir)).await
    }
}

/// The local backend has one place for volumes: a pool is a mistake in the
/// StorageClass, not something to ignore.
fn no_pools(placement: &Placement) -> Result<(), BackendError> {
    match &placement.pool {
        Some(pool) => Err(BackendError::InvalidParameter { name: "pool".into(), reason: format!("the local backend has no pools (got {pool:?})") }),
        None => Ok(()),
    }
}

#[async_trait::async_trait]
#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn create_volume(&self, name: &str, size_bytes: u64, placement: &Placement) -> Result<Created, BackendError> {
        no_pools(placement)?;
        let name = name.to_owned();
        self.blocking("create volume", move |dir| {
            let id = volume_id_for(&name);
            let claim = dir.claim(&id)?;
            let record_file = record_path(&dir.path, &id);
            let existing: Option<VolumeRecord> = durable::read_json(&record_file).map_err(|e| BackendError::io(format!("read record of {id}"), e))?;
            // The record to write first (none when it is there already), and the size.
            let (record, size) = match existing {
                Some(record) if record.name != name => {
                    return Err(id_taken(&name, &id, &record.name));
                }
                Some(VolumeRecord { source: Some(source), .. }) => {
                    return Err(BackendError::NameTaken { name, reason: format!("volume {id} was made from {source}, not blank") });
                }
                Some(record) => match dir.read_volume(&id)? {
                    Some(info) => return Ok(Created::Existing(info)),
                    // The record exists but the file does not: finish that create.
                    None => (None, record.desired_bytes),
                },
                None => {
                    dir.claim_bytes(&claim, size_bytes)?;
                    (Some(VolumeRecord { name, desired_bytes: size_bytes, created_unix: now_unix(), source: None }), size_bytes)
                }
            };
            dir.changing(&id, || {
                if let Some(record) = &record {
                    make_bucket(&record_file)
                        .and_then(|()| durable::write_json(&record_file, record))
                        .map_err(|e| BackendError::io(format!("write record of {id}"), e))?;
                }
                dir.set_file_len(&id, size)
            })?;
            let info = dir.read_volume(&id)?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
            Ok(Created::New(info))
        })
        .await
    }

    async fn delete_volume(&self, id: &VolumeId) -> Result<(), BackendError> {
        if id.backend() != KIND {
            return Ok(());
        }
        let id = id.clone();
        self.blocking("delete volume", move |dir| {
            let claim = dir.claim(&id)?;
            let image = image_path(&dir.path, &id);
            dir.changing(&id, || {
                for file in [copy::partial_path(&image), image.clone()] {
                    match fs::remove_file(&file) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(BackendError::io(format!("remove {} of {id}", file.display()), e)),
                    }
                }
                auto_grow::remove(&dir.path, &id).map_err(|e| BackendError::io(format!("remove auto-grow files of {id}"), e))?;
                durable::remove(&wrapped_key_path(&dir.path, &id)).map_err(|e| BackendError::io(format!("remove wrapped key of {id}"), e))?;
                durable::remove(&record_path(&dir.path, &id)).map_err(|e| BackendError::io(format!("remove record of {id}"), e))
            })?;
            claim.forget_lock();
            Ok(())
        })
        .await
    }

    async fn volume(&self, id: &VolumeId) -> Result<Option<VolumeInfo>, BackendError> {
        let id = id.clone();
        self.blocking("read volume", move |dir| dir.read_volume(&id)).await
    }

    async fn list_volumes(&self, after: Option<&VolumeId>, limit: usize) -> Result<Vec<VolumeInfo>, BackendError> {
        let after = match after {
            Some(a) if a.backend() > KIND => return Ok(Vec::new()),
            Some(a) if a.backend() == KIND => Some(a.key().to_owned()),
            _ => None,
        };
        self.blocking("list volumes", move |dir| dir.page(after.as_deref(), limit)).await
    }

    async fn capacity(&self, placement: &Placement) -> Result<Capacity, BackendError> {
        no_pools(placement)?;
        self.blocking("read capacity", |dir| dir.capacity()).await
    }

    async fn grow_volume(&self, id: &VolumeId, new_size_bytes: u64) -> Result<u64, BackendError> {
        let id = id.clone();
        self.blocking("grow volume", move |dir| {
            let claim = dir.claim(&id)?;
            let current = dir.read_volume(&id)?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
            if new_size_bytes < current.size_bytes {
                return Err(BackendError::Shrink { id, current: current.size_bytes, requested: new_size_bytes });
            }
            if new_size_bytes == current.size_bytes {
                return Ok(current.size_bytes);
            }
            dir.claim_bytes(&claim, new_size_bytes - current.size_bytes)?;
            let record_file = record_path(&dir.path, &id);
            let mut record: VolumeRecord = durable::read_json(&record_file)
                .map_err(|e| BackendError::io(format!("read record of {id}"), e))?
                .ok_or_else(|| BackendError::NotFound(id.clone()))?;
            record.desired_bytes = new_size_bytes;
            dir.changing(&id, || {
                durable::write_json(&record_file, &record).map_err(|e| BackendError::io(format!("write record of {id}"), e))?;
                dir.set_file_len(&id, new_size_bytes)
            })?;
            let after = dir.read_volume(&id)?.ok_or_else(|| BackendError::NotFound(id.clone()))?;
            Ok(after.size_bytes)
        })
        .await
    }

    fn keeps_auto_grow(&self) -> bool {
        true
    }

    async fn set_auto_grow(&self, id: &VolumeId, record: &AutoGrowRecord) -> Result<(), BackendError> {
        let (id, record) = (id.clone(), record.clone());
        self.blocking("store auto-grow policy", move |dir| {
            let _claim = dir.claim(&id)?;
            if dir.read_volume(&id)?.is_none() {
                return Err(BackendError::NotFound(id));
            }
            auto_grow::write_record(&dir.path, &id, &record).map_err(|e| BackendError::io(format!("write auto-grow record of {id}"), e))
        })
        .await
    }

    async fn auto_grow(&self, id: &VolumeId) -> Result<(Option<AutoGrowRecord>, Option<Usage>), BackendError> {
        let id = id.clone();
        self.blocking("read auto-grow state", move |dir| {
            let record = auto_grow::read_record(&dir.path, &id).map_err(|e| BackendError::io(format!("read auto-grow record of {id}"), e))?;
            let usage = auto_grow::read_usage(&dir.path, &id).map_err(|e| BackendError::io(format!("read usage of {id}"), e))?;
            Ok((record, usage))
        })
        .await
    }

    async fn wanting_to_grow(&self) -> Result<Vec<VolumeId>, BackendError> {
        self.blocking("list volumes wanting to grow", |dir| auto_grow::wanted(&dir.path).map_err(|e| BackendError::io("list volumes wanting to grow", e))).await
    }

    async fn settle_auto_grow(&self, id: &VolumeId) -> Result<(), BackendError> {
        let id = id.clone();
        self.blocking("settle auto-grow", move |dir| auto_grow::unmark_wanted(&dir.path, &id).map_err(|e| BackendError::io(format!("unmark {id}"), e))).await
    }

    fn expansion_store(&self) -> Arc<dyn ExpansionStore> {
        self.records.clone()
    }

    async fn collect_garbage(&self) -> Result<usize, BackendError> {
        self.blocking("restart snapshot copies", |dir| dir.restart_orphaned_copies()).await
    }

    async fn check_health(&self) -> Result<(), BackendError> {
        self.blocking("check state directory", |dir| fs::read_dir(volumes_dir(&dir.path)).map(drop).map_err(|e| BackendError::io("read state directory", e)))
            .await
    }

    async fn create_snapshot(&self, name: &str, source: &VolumeId) -> Result<Created<SnapshotInfo>, BackendError> {
        let (name, source) = (name.to_owned(), source.clone());
        self.blocking("create snapshot", move |dir| dir.create_snapshot(&name, &source)).await
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), BackendError> {
        let id = id.clone();
        self.blocking("delete snapshot", move |dir| dir.delete_snapshot(&id)).await
    }

    async fn snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotInfo>, BackendError> {
        let id = id.clone();
        self.blocking("read snapshot", move |dir| dir.read_snapshot(&id)).await
    }

    async fn list_snapshots(&self, source: Option<&VolumeId>) -> Result<Vec<SnapshotInfo>, BackendError> {
        let source = source.cloned();
        self.blocking("list snapshots", move |dir| dir.all_snapshots(source.as_ref())).await
    }

    async fn source_encrypted(&self, source: &ContentSource) -> Result<bool, BackendError> {
        let source = source.clone();
        self.blocking("read the source's encryption", move |dir| dir.source_encrypted(&source)).await
    }

    async fn create_volume_from(&self, name: &str, size_bytes: u64, placement: &Placement, source: &ContentSource) -> Result<Created, BackendError> {
        no_pools(placement)?;
        let (name, source) = (name.to_owned(), source.clone());
        self.blocking("create volume from a source", move |dir| dir.create_volume_from(&name, size_bytes, &source)).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs::{self, OpenOptions};
    use std::path::Path;

    use swell_storage::units::GIB;

    use super::*;

    pub(crate) fn backend(capacity: Option<u64>) -> (tempfile::TempDir, LocalBackend) {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalConfig { state_dir: dir.path().to_owned(), records_dir: dir.path().join("controller"), capacity_bytes: capacity, read_only: false };
        (dir, LocalBackend::open(&config).unwrap())
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
        let id = volume_id_for("pvc");
        let record = VolumeRecord { name: "pvc".into(), desired_bytes: GIB, created_unix: 0, source: None };
        make_bucket(&record_path(dir.path(), &id)).unwrap();
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
        let config =
            LocalConfig { state_dir: dir.path().to_owned(), records_dir: dir.path().join("controller"), capacity_bytes: Some(100 * GIB), read_only: false };
        let reopened = LocalBackend::open(&config).unwrap();
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

    #[tokio::test]
    async fn a_volume_another_operation_holds_answers_contended_which_callers_hear_as_aborted() {
        let (_dir, b) = backend(None);
        let id = b.create_volume("pvc", GIB, &Placement::default()).await.unwrap().info().id.clone();
        // A snapshot copy of it in flight holds its claim.
        let claim = b.dir.claim(&id).unwrap();
        let grown = b.grow_volume(&id, 2 * GIB).await;
        assert!(matches!(grown, Err(BackendError::Contended { .. })), "{grown:?}");
        let deleted = b.delete_volume(&id).await;
        assert!(matches!(deleted, Err(BackendError::Contended { .. })), "{deleted:?}");
        drop(claim);
        assert_eq!(b.grow_volume(&id, 2 * GIB).await.unwrap(), 2 * GIB, "free again once the claim ends");
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn volumes_snapshots_records_and_ledger_are_root_only() {
        let (dir, b) = backend(None);
        let id = b.create_volume("pvc", GIB, &Placement::default()).await.unwrap().info().id.clone();
        b.grow_volume(&id, 2 * GIB).await.unwrap();
        let snap = b.create_snapshot("snap", &id).await.unwrap().info().clone();
        let clone = b.create_volume_from("clone", 2 * GIB, &Placement::default(), &ContentSource::Volume(id.clone())).await.unwrap().info().id.clone();
        let store = b.expansion_store();
        let hold = store.hold(&id).await.unwrap().unwrap();
        store.write(&hold, swell_storage::ExpansionRecord::new(&id, 2 * GIB, 3 * GIB)).await.unwrap();
        hold.release().await;
        let mut files = vec![
            image_path(dir.path(), &id),
            record_path(dir.path(), &id),
            image_path(dir.path(), &clone),
            crate::paths::snapshot_path(dir.path(), snap.id.key()),
            crate::paths::snapshot_record_path(dir.path(), snap.id.key()),
            dir.path().join("ledger.json"),
            dir.path().join("controller/expansions").join(&id.key()[..2]).join(&id.key()[2..4]).join(format!("{id}.json")),
        ];
        files.extend(fs::read_dir(dir.path().join("locks")).unwrap().map(|e| e.unwrap().path()));
        for file in files {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
            // Its buckets too, made 0700 as they are needed.
            let bucket = file.parent().unwrap();
            if bucket.file_name().is_some_and(|n| n.len() == 2) {
                assert_eq!((mode(bucket), mode(bucket.parent().unwrap())), (0o700, 0o700), "{}", file.display());
            }
        }
        for sub in ["", "volumes", "snapshots", "locks", "controller", "controller/expansions", "controller/expansions/pending", "controller/expansions/locks"]
        {
            assert_eq!(mode(&dir.path().join(sub)), 0o700, "{sub}");
        }
    }

    #[tokio::test]
    async fn a_state_directory_an_earlier_version_left_open_is_closed_at_start() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, b) = backend(None);
        b.create_volume("pvc", GIB, &Placement::default()).await.unwrap();
        for sub in ["", "volumes", "snapshots"] {
            fs::set_permissions(dir.path().join(sub), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = LocalConfig { state_dir: dir.path().to_owned(), records_dir: dir.path().join("controller"), capacity_bytes: None, read_only: false };
        LocalBackend::open(&config).unwrap();
        for sub in ["", "volumes", "snapshots"] {
            assert_eq!(mode(&dir.path().join(sub)), 0o700, "{sub}");
        }
    }

    /// Two openings of one directory flock apart, as two processes do.
    fn second_process(dir: &Path, capacity: Option<u64>) -> LocalBackend {
        LocalBackend::open(&LocalConfig { state_dir: dir.to_owned(), records_dir: dir.join("controller"), capacity_bytes: capacity, read_only: false }).unwrap()
    }

    #[tokio::test]
    async fn a_volume_claimed_by_another_process_answers_contended() {
        let (dir, b) = backend(None);
        let other = second_process(dir.path(), None);
        let id = b.create_volume("pvc", GIB, &Placement::default()).await.unwrap().info().id.clone();
        let claim = other.dir.claim(&id).unwrap();
        assert!(matches!(b.grow_volume(&id, 2 * GIB).await, Err(BackendError::Contended { .. })));
        assert!(matches!(b.delete_volume(&id).await, Err(BackendError::Contended { .. })));
        let held = other.expansion_store().hold(&id).await.unwrap().expect("free");
        assert!(b.expansion_store().hold(&id).await.unwrap().is_none(), "the hold of another process refuses this one");
        drop((claim, held));
        assert_eq!(b.grow_volume(&id, 2 * GIB).await.unwrap(), 2 * GIB);
        assert!(b.expansion_store().hold(&id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn room_granted_in_one_process_is_not_granted_again_in_another() {
        let (dir, b) = backend(Some(10 * GIB));
        let other = second_process(dir.path(), Some(10 * GIB));
        let a = b.create_volume("a", 6 * GIB, &Placement::default()).await.unwrap().info().id.clone();
        let c = b.create_volume("c", GIB, &Placement::default()).await.unwrap().info().id.clone();
        // 3 GiB free: a grow in flight here has 2 of them, so the other process may have 1.
        let claim = b.dir.claim(&a).unwrap();
        b.dir.claim_bytes(&claim, 2 * GIB).unwrap();
        assert!(matches!(other.grow_volume(&c, 3 * GIB).await, Err(BackendError::NoSpace { available, .. }) if available == GIB));
        assert_eq!(other.grow_volume(&c, 2 * GIB).await.unwrap(), 2 * GIB);
        drop(claim);
        assert_eq!(other.capacity(&Placement::default()).await.unwrap().available_bytes, 2 * GIB, "the reservation ended with its claim");
    }

    #[tokio::test]
    async fn growth_in_two_processes_never_promises_more_than_the_pool_holds() {
        let (dir, b) = backend(Some(10 * GIB));
        let other = second_process(dir.path(), Some(10 * GIB));
        let mut ids = Vec::new();
        for name in ["a", "b", "c", "d", "e", "f"] {
            ids.push(b.create_volume(name, GIB, &Placement::default()).await.unwrap().info().id.clone());
        }
        // 4 GiB free; six volumes each ask for 1 GiB more, split between the processes.
        let grows = ids.iter().enumerate().map(|(n, id)| {
            let backend = if n % 2 == 0 { b.clone() } else { other.clone() };
            let id = id.clone();
            tokio::spawn(async move { backend.grow_volume(&id, 2 * GIB).await })
        });
        let mut grown = 0;
        for task in grows {
            match task.await.unwrap() {
                Ok(_) => grown += 1,
                Err(BackendError::NoSpace { .. }) => {}
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!(grown, 4);
        let sum: u64 = b.list_volumes(None, 0).await.unwrap().iter().map(|v| v.size_bytes).sum();
        assert_eq!(sum, 10 * GIB);
        assert_eq!(other.capacity(&Placement::default()).await.unwrap().available_bytes, 0);
    }

    #[tokio::test]
    async fn a_hold_of_an_id_that_names_no_volume_is_not_found_and_makes_no_lock_file() {
        let (dir, b) = backend(None);
        let unknown: VolumeId = "local:0123456789abcdef0123456789abcdef".parse().unwrap();
        assert!(matches!(b.expansion_store().hold(&unknown).await, Err(BackendError::NotFound(_))));
        let locks = dir.path().join("controller/expansions/locks");
        assert_eq!(fs::read_dir(&locks).unwrap().count(), 0, "a lock file was made for an unknown id");
        let id = b.create_volume("pvc", GIB, &Placement::default()).await.unwrap().info().id.clone();
        assert!(b.expansion_store().hold(&id).await.unwrap().is_some(), "a volume is held");
    }

    #[tokio::test]
    async fn a_read_only_opening_reads_everything_and_writes_nothing() {
        let (dir, b) = backend(Some(10 * GIB));
        let id = b.create_volume("pvc", GIB, &Placement::default()).await.unwrap().info().id.clone();
        let config =
            LocalConfig { state_dir: dir.path().to_owned(), records_dir: dir.path().join("controller"), capacity_bytes: Some(10 * GIB), read_only: true };
        let reader = LocalBackend::open(&config).unwrap();
        assert_eq!(reader.volume(&id).await.unwrap().unwrap().size_bytes, GIB);
        assert_eq!(reader.capacity(&Placement::default()).await.unwrap().available_bytes, 9 * GIB);
        assert!(reader.grow_volume(&id, 2 * GIB).await.is_err());
        assert!(reader.expansion_store().hold(&id).await.is_err());
        assert_eq!(reader.expansion_store().record(&id).await.unwrap(), None);
        // A stray pending marker is left to a writer, and pending still answers.
        let marker = dir.path().join("controller/expansions/pending").join(id.to_string());
        fs::write(&marker, b"").unwrap();
        assert!(reader.expansion_store().pending().await.unwrap().is_empty());
        assert!(marker.exists(), "a reader removes nothing");
        // Nor on a state directory that was never made.
        let nothing = tempfile::tempdir().unwrap();
        let config =
            LocalConfig { state_dir: nothing.path().join("local"), records_dir: nothing.path().join("controller"), capacity_bytes: Some(GIB), read_only: true };
        let empty = LocalBackend::open(&config).unwrap();
        assert!(empty.list_volumes(None, 0).await.unwrap().is_empty(), "no volumes, not an error");
        assert!(empty.expansion_store().pending().await.unwrap().is_empty());
        assert!(empty.expansion_store().page(None, 10).await.unwrap().readable.is_empty(), "no records, not an error");
        assert_eq!(fs::read_dir(nothing.path()).unwrap().count(), 0, "nothing created");
    }
}
