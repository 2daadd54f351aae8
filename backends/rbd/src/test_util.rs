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
use crate::lease::{LOCK_NAME, lock_object};
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
        let cluster = Arc::new(Cluster::create(&access.user)?);
        cluster.read_conf_file(&access.ceph_conf)?;
        cluster.conf_set("keyring", &access.keyring.to_string_lossy())?;
        cluster.connect()?;
        Ok(OtherClient { io: cluster.ioctx(pool, "")? })
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

    /// Writes settled entries for `volumes` (each with its CO name and size)
    /// into the pool's state object and adds their bytes to its promised
    /// total, as volumes Swell made long ago would have left them; no image
    /// is made. A few hundred entries a write.
    pub fn seed_settled_volumes(&self, volumes: &[(RbdVolume, String, u64)]) -> Result<(), Errno> {
        let mut total = state::read_total(&self.io).map_err(|_| Errno::EIO)?;
        for chunk in volumes.chunks(500) {
            let entries: Vec<(String, Vec<u8>)> = chunk
                .iter()
                .map(|(volume, name, bytes)| {
                    let record = ExpansionRecord { generation: 1, ..ExpansionRecord::new(&volume.id(), *bytes, *bytes) };
                    (state::entry_key(&volume.image), Entry { name: name.clone(), phase: Phase::Ready, lineage: Default::default(), record }.encode())
                })
                .collect();
            total += chunk.iter().map(|(_, _, bytes)| bytes).sum::<u64>();
            let mut op = WriteOp::default();
            op.create(false).omap_set(&entries).omap_set(&[(state::TOTAL_KEY, total.to_string())]);
            op.operate(&self.io, state::STATE_OBJECT)?;
        }
        Ok(())
    }
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
