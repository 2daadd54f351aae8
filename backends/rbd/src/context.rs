//! The context every RBD operation runs in, so no operation takes the same
//! six to eight arguments: [`Shared`], what the backend keeps between calls
//! (its configuration, the connection, pool readings, the committer, the
//! leases); a [`Call`], one blocking call on the connection under its
//! deadline; and a [`Pool`], one pool within a call, through which its
//! state object is read and changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use swell_storage::locks::KeyedLocks;
use swell_storage::volume_id::VolumeIdError;
use swell_storage::{BackendError, RbdVolume, VolumeId};

use crate::commit::{Change, Committer, Outcome};
use crate::config::RbdConfig;
use crate::connection::{ConnectSettings, Connection, Connector};
use crate::errors::RbdError;
use crate::ffi::IoCtx;
use crate::header::{self, Header};
use crate::layout::Layout;
use crate::lease::{Leases, Lingering};
use crate::readings::{Readings, missing_pool};
use crate::shards;
use crate::state::{self, Entry, SnapshotEntry};

/// Ceph calls that may be outstanding at once, running or stuck in a hung
/// librados call: bounds the blocking threads a dead cluster can hold, far
/// above what healthy concurrency needs (every call returns within its
/// deadline's op timeouts).
const MAX_OUTSTANDING: usize = 256;

/// What every call of one backend shares.
pub(crate) struct Shared {
    config: RbdConfig,
    connector: Connector,
    readings: Readings,
    committer: Committer,
    /// Each pool's layout once it is sharded (it never changes after).
    layouts: Mutex<HashMap<String, Layout>>,
    leases: Arc<Leases>,
    /// Locks kept a moment for this process's next operation on a volume.
    lingering: Arc<Lingering>,
    /// Holds of this process, so its own callers are refused before Ceph
    /// is asked (they would share its Ceph client and lock cookie).
    local: KeyedLocks,
    /// Images this process is making right now, until librbd returns (which
    /// may be after the call that asked was answered Timeout).
    making: KeyedLocks,
}

impl Shared {
    /// The shared parts of a backend for `config` (checked by the caller).
    /// Nothing is contacted: the connection is made on the first call.
    pub(crate) fn new(config: RbdConfig) -> Self {
        let settings = ConnectSettings { access: config.access.clone(), namespace: config.namespace.clone(), op_timeout: config.op_timeout };
        Shared {
            connector: Connector::new(settings, MAX_OUTSTANDING, config.call_deadline()),
            readings: Readings::new(config.reading_max_age, config.op_timeout),
            leases: Arc::new(Leases { instance: config.instance.clone(), lease: config.lock_lease }),
            committer: Committer::default(),
            layouts: Mutex::new(HashMap::new()),
            lingering: Lingering::new(config.lock_lease / 5),
            local: KeyedLocks::new(),
            making: KeyedLocks::new(),
            config,
        }
    }

    pub(crate) fn config(&self) -> &RbdConfig {
        &self.config
    }

    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    pub(crate) fn readings(&self) -> &Readings {
        &self.readings
    }

    pub(crate) fn leases(&self) -> &Arc<Leases> {
        &self.leases
    }

    pub(crate) fn lingering(&self) -> &Arc<Lingering> {
        &self.lingering
    }

    /// This process's holds, by volume id.
    pub(crate) fn local_holds(&self) -> &KeyedLocks {
        &self.local
    }

    /// Images this process is making, by name.
    pub(crate) fn making(&self) -> &KeyedLocks {
        &self.making
    }

    /// `pool`'s layout, migrating its state into shards on first use
    /// ([`shards::open`]). A layout seen unsharded is read again next time.
    fn layout(&self, pool: &str, io: &IoCtx) -> Result<Layout, RbdError> {
        if let Some(layout) = self.layouts.lock().get(pool) {
            return Ok(*layout);
        }
        let layout = shards::open(io, None)?;
        if layout != Layout::Unsharded {
            self.layouts.lock().insert(pool.to_owned(), layout);
        }
        Ok(layout)
    }

    /// The deadline of one call.
    pub(crate) fn call_deadline(&self) -> Duration {
        self.connector.deadline()
    }

    /// The volume `id` names in this cluster and namespace; `Ok(None)` for
    /// ids that name no Swell RBD volume; an error for another cluster's or
    /// another install's (namespace's) volume, which this one never touches.
    pub(crate) fn ours(&self, id: &VolumeId, step: &str) -> Result<Option<RbdVolume>, BackendError> {
        let Some(volume) = RbdVolume::parse(id) else { return Ok(None) };
        let (cluster, namespace) = (&self.config.access.cluster_id, &self.config.namespace);
        let theirs = if &volume.cluster != cluster {
            format!("Ceph cluster {:?}; this controller serves {cluster:?}", volume.cluster)
        } else if &volume.namespace != namespace {
            format!("RADOS namespace {:?}; this controller serves {namespace:?}", volume.namespace)
        } else {
            return Ok(Some(volume));
        };
        Err(BackendError::Unavailable { step: format!("{step} {id}"), reason: format!("the volume belongs to {theirs}") })
    }

    /// The volume `id` names in this cluster and namespace, `None` for any other id.
    pub(crate) fn ours_quietly(&self, id: &VolumeId) -> Option<RbdVolume> {
        RbdVolume::parse(id).filter(|v| v.cluster == self.config.access.cluster_id && v.namespace == self.config.namespace)
    }

    /// Runs `work` as one blocking call on the shared connection, under the
    /// call deadline (see [`Connector::run`]).
    pub(crate) async fn run<T, F>(self: &Arc<Self>, step: &str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Call<'_>) -> Result<T, RbdError> + Send + 'static,
    {
        let shared = Arc::clone(self);
        self.connector.run(step, move |conn, deadline| work(&Call { shared: &shared, conn, deadline })).await
    }

    /// Like [`run`](Self::run), in the health check's own slot.
    pub(crate) async fn run_health<T, F>(self: &Arc<Self>, step: &str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Call<'_>) -> Result<T, RbdError> + Send + 'static,
    {
        let shared = Arc::clone(self);
        self.connector.run_health(step, move |conn, deadline| work(&Call { shared: &shared, conn, deadline })).await
    }
}

/// A listed volume and its entry, or why the entry cannot be read.
pub(crate) type ListedVolume = (RbdVolume, Result<Entry, RbdError>);

/// One blocking call: the shared parts, the connection and the instant by
/// which the call must be done.
pub(crate) struct Call<'a> {
    shared: &'a Shared,
    conn: &'a Connection,
    deadline: Instant,
}

impl<'a> Call<'a> {
    pub(crate) fn shared(&self) -> &'a Shared {
        self.shared
    }

    pub(crate) fn config(&self) -> &'a RbdConfig {
        &self.shared.config
    }

    pub(crate) fn conn(&self) -> &'a Connection {
        self.conn
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Refuses to start a mutation once the deadline has passed: an answer
    /// already given as Timeout must not be followed by a change nobody
    /// waits for.
    pub(crate) fn time_left(&self, step: &str) -> Result<(), RbdError> {
        if Instant::now() >= self.deadline {
            return Err(RbdError::Refused(BackendError::Timeout { step: step.to_owned(), after: self.shared.config.op_timeout }));
        }
        Ok(())
    }

    /// Pool `name`, `None` when it does not exist.
    pub(crate) fn pool(&self, name: &str) -> Result<Option<Pool<'_>>, RbdError> {
        let Some(io) = self.conn.pool(name)? else { return Ok(None) };
        let layout = self.shared.layout(name, &io)?;
        Ok(Some(Pool { call: self, name: name.to_owned(), io, layout }))
    }

    /// Pool `name`; a missing pool (or namespace in it) is a StorageClass error.
    pub(crate) fn existing_pool(&self, name: &str) -> Result<Pool<'_>, RbdError> {
        self.pool(name)?.ok_or_else(|| missing_pool(name, &self.shared.config.namespace))
    }

    /// The cluster's pools, by name.
    pub(crate) fn pool_names(&self) -> Result<Vec<String>, RbdError> {
        let mut pools = self.shared.readings.pools(self.conn)?;
        pools.sort();
        Ok(pools)
    }

    /// `visit`s every pool that exists, by name, gathering what it returns.
    pub(crate) fn each_pool<T>(&self, mut visit: impl FnMut(&Pool<'_>) -> Result<Vec<T>, RbdError>) -> Result<Vec<T>, RbdError> {
        let mut found = Vec::new();
        for name in self.pool_names()? {
            if let Some(pool) = self.pool(&name)? {
                found.extend(visit(&pool)?);
            }
        }
        Ok(found)
    }

    /// Up to `limit` volumes (0: all) whose ids come after `after`, with
    /// their entries (or why one cannot be read), in id order: pools in the order their ids sort
    /// (`<pool>:` as a string), and in each pool the state object's live
    /// entries, read a page at a time from where the window starts (so a
    /// page costs what it returns).
    pub(crate) fn volumes_after(&self, after: Option<&VolumeId>, limit: usize) -> Result<Vec<ListedVolume>, RbdError> {
        let config = &self.shared.config;
        let mut pools = self.shared.readings.pools(self.conn)?;
        pools.sort_by_key(|pool| format!("{pool}:"));
        let mut volumes = Vec::new();
        for name in pools {
            // Every id of this pool (in this install's namespace) starts so.
            let prefix = swell_storage::rbd_volume::key_prefix(&config.access.cluster_id, &name, &config.namespace);
            let from = match after.filter(|a| a.backend() == crate::KIND).map(VolumeId::key) {
                Some(key) if key.starts_with(&prefix) => Some(key[prefix.len()..].to_owned()),
                // Every id of this pool sorts before the window's start.
                Some(key) if prefix.as_str() < key => continue,
                _ => None,
            };
            let Some(pool) = self.pool(&name)? else { continue };
            let wanted = |found: usize| if limit == 0 { usize::MAX } else { limit - found };
            if wanted(volumes.len()) == 0 {
                break;
            }
            for (image, entry) in state::entries_after(&pool.io, &pool.layout, from.as_deref(), wanted(volumes.len()), Entry::live)? {
                // Pools whose names cannot be part of an id hold no Swell volume.
                if let Ok(volume) = pool.volume(&image) {
                    volumes.push((volume, entry));
                }
            }
            if limit != 0 && volumes.len() >= limit {
                break;
            }
        }
        Ok(volumes)
    }
}

impl Call<'_> {
    /// The volume of `image` in `pool` and this install's namespace; an
    /// error when they cannot form a volume id (such a pool holds no Swell
    /// volume).
    pub(crate) fn volume_in(&self, pool: &str, image: &str) -> Result<RbdVolume, VolumeIdError> {
        let config = &self.shared.config;
        RbdVolume::at_in(&config.access.cluster_id, pool, &config.namespace, image)
    }
}

/// One pool within a call.
pub(crate) struct Pool<'a> {
    call: &'a Call<'a>,
    name: String,
    io: Arc<IoCtx>,
    layout: Layout,
}

impl<'a> Pool<'a> {
    pub(crate) fn call(&self) -> &'a Call<'a> {
        self.call
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn io(&self) -> &IoCtx {
        &self.io
    }

    /// Where the pool's state is.
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The volume of `image` in this pool (and this install's namespace).
    pub(crate) fn volume(&self, image: &str) -> Result<RbdVolume, VolumeIdError> {
        self.call.volume_in(&self.name, image)
    }

    /// Applies `change` to the pool's state, admitting new promises
    /// against the shard's grant and the pool's room ([`crate::commit`]).
    pub(crate) fn commit(&self, change: Change) -> Result<Outcome, RbdError> {
        let (shared, conn) = (self.call.shared, self.call.conn);
        let config = &shared.config;
        let room = |total| shared.readings.room(conn, &self.name, total, config.overprovision_ratio, config.count_foreign_images);
        shared.committer.apply(&self.io, &self.name, &self.layout, change, self.call.deadline, &room)
    }

    /// An image's entry, read now.
    pub(crate) fn entry(&self, image: &str) -> Result<Option<Entry>, RbdError> {
        state::read_entry(&self.io, &self.layout, image)
    }

    /// A snapshot's entry, read now.
    pub(crate) fn snapshot_entry(&self, key: &str) -> Result<Option<SnapshotEntry>, RbdError> {
        state::read_snapshot(&self.io, &self.layout, key)
    }

    /// The header of volume `id`'s image, read now; `None` when the image
    /// does not exist.
    pub(crate) fn header(&self, id: &VolumeId, image: &str) -> Result<Option<Header>, RbdError> {
        header::read(&self.io, image).map_err(|e| RbdError::osd("read image header", e, Some(id)))
    }
}
