//! The backend trait: everything the controller (and later the admission
//! webhook) asks of a storage engine. The CSI layer only ever talks to this
//! trait, so it cannot tell the embedded local store from Ceph RBD.
//!
//! Every method reads the engine's state fresh; nothing here caches a size.
//! The one exception is ListVolumes: a backend whose sizes cost a read per
//! volume may list the sizes its records last saw instead
//! ([`Backend::lists_recorded_sizes`]); a single volume is always read fresh.

use std::sync::Arc;

use crate::auto_grow::{AutoGrowRecord, Usage};
use crate::error::BackendError;
use crate::expansion::ExpansionStore;
use crate::snapshot::{ContentSource, SnapshotId, SnapshotInfo};
use crate::volume_id::VolumeId;

/// A volume as the backend sees it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The id handed to Kubernetes.
    pub id: VolumeId,
    /// The name the CO chose at creation (idempotency key).
    pub name: String,
    /// The size the engine reports now, in bytes.
    pub size_bytes: u64,
}

/// The outcome of an idempotent create (of a volume, or of a snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created<T = VolumeInfo> {
    /// A new one was made.
    New(T),
    /// One of that name already existed; it was left as it is.
    Existing(T),
}

impl<T> Created<T> {
    /// What was made, new or old.
    pub fn info(&self) -> &T {
        match self {
            Created::New(info) | Created::Existing(info) => info,
        }
    }
}

/// Where a new volume goes, from the StorageClass's parameters (parsed and
/// checked once, by the controller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The pool (RBD); `None`: the backend's default. A backend without
    /// pools refuses one.
    pub pool: Option<String>,
}

/// Room the engine has for provisioning, read fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Bytes the pool may hold in all, after the over-provisioning policy.
    pub total_bytes: u64,
    /// Bytes that can still be promised to new or growing volumes.
    pub available_bytes: u64,
}

/// A storage engine Swell provisions from.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The id prefix this backend owns (`local`, `rbd`).
    fn kind(&self) -> &'static str;

    /// Creates a volume of `size_bytes` named `name`, or returns the existing
    /// volume of that name untouched. Judging whether an existing volume is
    /// compatible with the request is the caller's job.
    async fn create_volume(&self, name: &str, size_bytes: u64, placement: &Placement) -> Result<Created, BackendError>;

    /// Deletes a volume; deleting a missing volume succeeds.
    async fn delete_volume(&self, id: &VolumeId) -> Result<(), BackendError>;

    /// Reads a volume's current state, `None` when it does not exist.
    async fn volume(&self, id: &VolumeId) -> Result<Option<VolumeInfo>, BackendError>;

    /// Up to `limit` volumes (all of them when 0) whose ids come after
    /// `after` (none: from the first), ordered by id. A page costs what its
    /// entries cost, not what the whole backend holds, so ListVolumes stays
    /// flat however many volumes there are. Sizes are read fresh unless
    /// [`lists_recorded_sizes`](Self::lists_recorded_sizes) says otherwise.
    async fn list_volumes(&self, after: Option<&VolumeId>, limit: usize) -> Result<Vec<VolumeInfo>, BackendError>;

    /// Whether [`list_volumes`](Self::list_volumes) answers the sizes the
    /// volumes' records last saw rather than sizes read from the engine
    /// (RBD: a page of 500 costs one omap read instead of 500 header reads).
    /// Such a size lags a grow made outside Swell, or one a crash cut off,
    /// until the reconciler's sweep compares the record with the volume
    /// (every `--sweep-interval-secs`); [`volume`](Self::volume) is always
    /// fresh.
    fn lists_recorded_sizes(&self) -> bool {
        false
    }

    /// The room of the pool `placement` names, read fresh.
    async fn capacity(&self, placement: &Placement) -> Result<Capacity, BackendError>;

    /// The room the pool holding `id` has, read fresh: what a grow of that
    /// volume is judged against. The default is the default pool's (a
    /// backend with one pool).
    async fn room_for(&self, _id: &VolumeId) -> Result<Capacity, BackendError> {
        self.capacity(&Placement::default()).await
    }

    /// Grows a volume to `new_size_bytes` and returns the size the engine
    /// reports afterwards, read back from it (never the size asked for).
    /// Never shrinks.
    async fn grow_volume(&self, id: &VolumeId, new_size_bytes: u64) -> Result<u64, BackendError>;

    /// Tells every client that has the volume open to re-read its size.
    /// Needed after a grow that was cut off once the engine had stored the
    /// new size but before it told those clients (RBD: a controller killed
    /// between writing the image header and notifying its watchers, which
    /// would leave a node's mapping at the old size for good). The default
    /// has no one to tell: the node refreshes a local loop device itself.
    async fn announce_size(&self, _id: &VolumeId) -> Result<(), BackendError> {
        Ok(())
    }

    /// Finishes deletions the engine had to defer and returns how many it
    /// finished now. The default defers none.
    async fn collect_garbage(&self) -> Result<usize, BackendError> {
        Ok(0)
    }

    /// Where this engine keeps its volumes' expansion records and holds:
    /// each backend owns its store (local: files under the controller's
    /// state directory; RBD: the pool beside the images, so every
    /// controller replica on any machine shares them).
    fn expansion_store(&self) -> Arc<dyn ExpansionStore>;

    /// Whether the engine can serve requests now.
    async fn check_health(&self) -> Result<(), BackendError>;

    // Auto-grow (docs/auto-grow.md): the policy is kept with the volume and
    // the usage its node reports beside it, in the engine's own store, so
    // the node needs no Kubernetes credentials. The defaults keep neither.

    /// Whether this engine keeps auto-grow policies; asked before a volume
    /// with one is made, so no volume is made that cannot keep its policy.
    fn keeps_auto_grow(&self) -> bool {
        false
    }

    /// Stores `record` with volume `id`, replacing any (NotFound when the
    /// volume does not exist).
    async fn set_auto_grow(&self, id: &VolumeId, record: &AutoGrowRecord) -> Result<(), BackendError> {
        let _ = (id, record);
        Err(self.unsupported("auto-grow"))
    }

    /// The auto-grow record stored with volume `id` and the usage its node
    /// last reported, each `None` when there is none.
    async fn auto_grow(&self, id: &VolumeId) -> Result<(Option<AutoGrowRecord>, Option<Usage>), BackendError> {
        let _ = id;
        Ok((None, None))
    }

    /// The volumes whose node marked them as wanting to grow (their usage
    /// crossed their threshold), in id order; the cost follows their number.
    async fn wanting_to_grow(&self) -> Result<Vec<VolumeId>, BackendError> {
        Ok(Vec::new())
    }

    /// Takes volume `id`'s mark away once its wish was dealt with.
    async fn settle_auto_grow(&self, id: &VolumeId) -> Result<(), BackendError> {
        let _ = id;
        Ok(())
    }

    // Snapshots and clones. A snapshot is a point-in-time copy of a volume
    // that new volumes can be made from; a clone is a new volume made from
    // a snapshot or a volume. A backend keeps them where it keeps its
    // volumes, counts them against the same capacity, and makes each
    // idempotent by name. The defaults refuse: an engine without them.

    /// Cuts a snapshot named `name` of `source`, or returns the existing
    /// snapshot of that name untouched (its `ready` flag read now).
    /// NameTaken when that snapshot is of another volume; NotFound when
    /// `source` does not exist; NoSpace when its pool cannot hold it.
    async fn create_snapshot(&self, name: &str, source: &VolumeId) -> Result<Created<SnapshotInfo>, BackendError> {
        let _ = (name, source);
        Err(self.unsupported("snapshots"))
    }

    /// Deletes a snapshot; deleting a missing one succeeds. Volumes made
    /// from it are never affected.
    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), BackendError> {
        let _ = id;
        Err(self.unsupported("snapshots"))
    }

    /// Reads a snapshot now, `None` when it does not exist.
    async fn snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotInfo>, BackendError> {
        let _ = id;
        Ok(None)
    }

    /// All snapshots (of `source` only, when given), ordered by id.
    async fn list_snapshots(&self, source: Option<&VolumeId>) -> Result<Vec<SnapshotInfo>, BackendError> {
        let _ = source;
        Ok(Vec::new())
    }

    /// Creates a volume of `size_bytes` named `name` holding the data of
    /// `source` (a snapshot or a volume of this backend), grown to
    /// `size_bytes` in the same create when the source is smaller; or
    /// returns the existing volume of that name untouched. NameTaken when
    /// that volume was made from something else; NotFound when `source`
    /// does not exist; Shrink when `size_bytes` is below the source's size.
    async fn create_volume_from(&self, name: &str, size_bytes: u64, placement: &Placement, source: &ContentSource) -> Result<Created, BackendError> {
        let _ = (name, size_bytes, placement, source);
        Err(self.unsupported("volumes made from snapshots or volumes"))
    }

    /// Whether the data `source` holds is encrypted (an RBD image holding
    /// a wrapped data key, docs/encryption.md), so that a copy is made
    /// only into a class of the same encryption. Engines that encrypt
    /// nothing answer false.
    async fn source_encrypted(&self, source: &ContentSource) -> Result<bool, BackendError> {
        let _ = source;
        Ok(false)
    }

    /// The error of a snapshot or clone call this engine cannot serve.
    fn unsupported(&self, what: &str) -> BackendError {
        BackendError::Unsupported { backend: self.kind().to_owned(), what: what.to_owned() }
    }
}
