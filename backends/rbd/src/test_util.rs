//! What tests and benchmarks need of a Ceph cluster beside the backend
//! (cargo feature `test-util`): a librados client of their own on one pool,
//! as another program sharing the cluster would be. They make foreign
//! images, clone them by hand, time librbd's own calls as references, take
//! a volume's lock as a replica would, and seed the pool's state object
//! with volumes Swell made long ago. The FFI stays private to this crate.

use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use swell_storage::{CephAccess, ExpansionRecord, RbdVolume};

use crate::ffi::{Cluster, Image, IoCtx, WriteOp};
use crate::images::IMAGE_FEATURES;
use crate::layout::Layout;
use crate::lease::{LOCK_NAME, lock_object};
use crate::shards;
use crate::state::{self, Entry, Phase};

/// A librados client of one pool, not the backend's.
pub struct OtherClient {
    io: IoCtx,
}

/// An image opened by an [`OtherClient`]; close it with [`OpenImage::close`].
pub struct OpenImage<'a>(Image<'a>);

impl OtherClient {
    /// Connects as `access.user` with `access.keyring` and opens `pool`.
    pub fn connect(access: &CephAccess, pool: &str) -> Result<Self, Errno> {
        Self::connect_in(access, pool, "")
    }

    /// Connects as [`connect`](Self::connect) does, in RADOS namespace
    /// `namespace` of `pool` ("" for the default one).
    pub fn connect_in(access: &CephAccess, pool: &str, namespace: &str) -> Result<Self, Errno> {
        let cluster = Arc::new(Cluster::create(&access.user)?);
        cluster.read_conf_file(&access.ceph_conf)?;
        cluster.conf_set("keyring", &access.keyring.to_string_lossy())?;
        cluster.connect()?;
        Ok(OtherClient { io: cluster.ioctx(pool, namespace)? })
    }

    /// `rbd_create` with the features Swell gives its own images.
    pub fn create_image(&self, name: &str, size: u64) -> Result<(), Errno> {
        self.io.create_image(name, size, IMAGE_FEATURES)
    }

    /// `rbd_remove`.
    pub fn remove_image(&self, name: &str) -> Result<(), Errno> {
        self.io.remove_image(name)
    }

    /// `rbd_trash_move`.
    pub fn trash_move(&self, name: &str) -> Result<(), Errno> {
        self.io.trash_move(name)
    }

    /// Open, resize, close: a grow as a client with no open handle makes it.
    pub fn grow_image(&self, name: &str, size: u64) -> Result<(), Errno> {
        let image = self.io.open(name)?;
        image.grow(size)?;
        image.close()
    }

    /// Opens `name` read-write.
    pub fn open(&self, name: &str) -> Result<OpenImage<'_>, Errno> {
        self.io.open(name).map(OpenImage)
    }

    /// A format-2 clone `name` of snapshot `snapshot` of `parent`, in this pool.
    pub fn clone_image(&self, parent: &str, snapshot: &str, name: &str) -> Result<(), Errno> {
        self.io.clone_image(&self.io, parent, snapshot, name, IMAGE_FEATURES)
    }

    /// Takes the lock a hold on the volume of `image` takes, under `cookie`
    /// (a replica's instance name), for `lease`.
    pub fn lock_volume(&self, image: &str, cookie: &str, lease: Duration) -> Result<(), Errno> {
        self.io.lock_exclusive(&lock_object(image), LOCK_NAME, cookie, cookie, lease, 0)
    }

    /// Gives back a lock [`lock_volume`](Self::lock_volume) took.
    pub fn unlock_volume(&self, image: &str, cookie: &str) -> Result<(), Errno> {
        self.io.unlock(&lock_object(image), LOCK_NAME, cookie)
    }

    /// Reads `keys` of `oid`'s omap in one operation, as the backend reads
    /// a volume's entry, a shard's totals or the budget's sum.
    pub fn read_omap(&self, oid: &str, keys: &[&str]) -> Result<Vec<(String, Vec<u8>)>, Errno> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        state::read_raw(&self.io, oid, &keys).map_err(|_| Errno::EIO)
    }

    /// Sets `key` of `oid`'s omap to `value` if it holds `expected` (empty:
    /// absent), creating `oid`: the compare-guarded write that admits a
    /// change in a shard. ECANCELED when `expected` no longer holds.
    pub fn write_omap_guarded(&self, oid: &str, key: &str, expected: &[u8], value: &[u8]) -> Result<(), Errno> {
        let mut op = WriteOp::default();
        op.create(false).omap_cmp_eq(key, expected).omap_set(&[(key.to_owned(), value.to_vec())]);
        op.operate(&self.io, oid)
    }

    /// Writes settled entries for `volumes` (each with its CO name and size)
    /// into the pool's state shards and adds their bytes to the shards'
    /// totals and grants, as volumes Swell made long ago would have left
    /// them; no image is made. One write per shard and a few hundred
    /// entries.
    pub fn seed_settled_volumes(&self, volumes: &[(RbdVolume, String, u64)]) -> Result<(), Errno> {
        let layout = shards::open(&self.io, None).map_err(|_| Errno::EIO)?;
        for chunk in volumes.chunks(500) {
            // Per shard: its entries and the bytes they promise.
            let mut by_shard: std::collections::BTreeMap<u32, (Vec<_>, u64)> = Default::default();
            for (key, raw, bytes) in settled(chunk) {
                let shard = by_shard.entry(layout.shard_of(&key[2..])).or_default();
                shard.0.push((key, raw));
                shard.1 += bytes;
            }
            for (shard, (entries, bytes)) in by_shard {
                crate::budget::seed(&self.io, &layout, shard, &entries, bytes)?;
            }
        }
        Ok(())
    }

    /// Writes entries for `volumes` into the one state object `swell.state`
    /// of releases before sharding, with its total, as such a release left
    /// them: each settled at its size, or, given a larger wish, marked
    /// pending with that wish promised. No image is made.
    pub fn seed_unsharded_volumes(&self, volumes: &[(RbdVolume, String, u64)], wishes: &[(RbdVolume, String, u64, u64)]) -> Result<(), Errno> {
        let mut total = state::read_total(&self.io, &Layout::Unsharded).map_err(|_| Errno::EIO)?;
        let mut keys: Vec<(String, Vec<u8>)> = settled(volumes).into_iter().map(|(key, raw, _)| (key, raw)).collect();
        total += volumes.iter().map(|(_, _, bytes)| bytes).sum::<u64>();
        for (volume, name, size, wish) in wishes {
            let record = ExpansionRecord { generation: 1, ..ExpansionRecord::new(&volume.id(), *size, *size).wishing(*size, *wish) };
            keys.push((state::entry_key(&volume.image), Entry { name: name.clone(), phase: Phase::Ready, lineage: Default::default(), record }.encode()));
            keys.push((state::pending_key(&volume.image), b"1".to_vec()));
            total += (*size).max(*wish);
        }
        for chunk in keys.chunks(500) {
            let mut op = WriteOp::default();
            op.create(false).omap_set(chunk);
            op.operate(&self.io, crate::layout::STATE_OBJECT)?;
        }
        let mut op = WriteOp::default();
        op.create(false).omap_set(&[(state::TOTAL_KEY, total.to_string())]);
        op.operate(&self.io, crate::layout::STATE_OBJECT)
    }

    /// Moves the pool's old state object into shards as a controller does
    /// on first use, stopped before shard `stop_before` when given, as a
    /// controller killed there would leave it (EINTR then).
    pub fn migrate_state(&self, stop_before: Option<u32>) -> Result<(), Errno> {
        shards::open(&self.io, stop_before).map(drop).map_err(|err| match err {
            crate::errors::RbdError::Ceph(failure) => failure.errno,
            _ => Errno::EIO,
        })
    }
}

/// Settled entries of `volumes`: their omap keys, stored forms and sizes.
fn settled(volumes: &[(RbdVolume, String, u64)]) -> Vec<(String, Vec<u8>, u64)> {
    volumes
        .iter()
        .map(|(volume, name, bytes)| {
            let record = ExpansionRecord { generation: 1, ..ExpansionRecord::new(&volume.id(), *bytes, *bytes) };
            let entry = Entry { name: name.clone(), phase: Phase::Ready, lineage: Default::default(), record };
            (state::entry_key(&volume.image), entry.encode(), *bytes)
        })
        .collect()
}

impl OpenImage<'_> {
    /// `rbd_resize2` to a larger size.
    pub fn grow(&self, size: u64) -> Result<(), Errno> {
        self.0.grow(size)
    }

    /// `rbd_snap_create`.
    pub fn create_snapshot(&self, name: &str) -> Result<(), Errno> {
        self.0.create_snapshot(name)
    }

    /// `rbd_snap_remove`.
    pub fn remove_snapshot(&self, name: &str) -> Result<(), Errno> {
        self.0.remove_snapshot(name)
    }

    /// `rbd_close`.
    pub fn close(self) -> Result<(), Errno> {
        self.0.close()
    }
}
