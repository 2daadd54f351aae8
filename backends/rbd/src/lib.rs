//! The Ceph RBD backend: volumes are RBD images in a pool of one Ceph
//! cluster, reached in-process through librados/librbd over one shared,
//! long-lived connection. Everything a controller must remember about a
//! volume lives in the pool beside it, so any replica on any machine can
//! carry on where another stopped (docs/rbd-state.md).
//!
//! Its configuration ([`RbdConfig`]) always compiles; the backend itself,
//! which links librados and librbd, only with the cargo feature `librbd`.
//! The modules, each above the ones it uses:
//!
//! - `ffi`: the only `unsafe` code, a small layer over librados.h/librbd.h.
//! - `errors`: errno → [`swell_storage::BackendError`]; `capacity`: the pool
//!   capacity policy (pure); `config`: [`RbdConfig`].
//! - `connection`: the shared connection, blocking calls under deadlines.
//! - `header`: an image's size read from, and grown in, its header object.
//! - `layout`: which object holds an entry.
//! - `state`: the pool's state: records, promises and their totals.
//! - `budget`: the bytes each shard may promise, their sum within the room.
//! - `shards`: a pool's layout, and the move from one object into shards.
//! - `commit`: changes to a shard, batched and applied atomically.
//! - `readings`: pool usage readings, shared and at most a second old.
//! - `lease`: per-volume holds that hold across controller processes.
//! - `parallel`, `trash`: background work a few at a time; deletes through
//!   the RBD trash, purged in the background.
//! - `context`: what every operation runs in (the backend's shared parts,
//!   one call, one pool).
//! - `images`: making, retiring and snapshotting images.
//! - `volumes`, `snapshots`, `clones`: the operations, as blocking calls.
//! - `omap`: Swell's small key-set objects (the trash record, the marks);
//!   `auto_grow`: a volume's policy and usage in its image's metadata, the
//!   marks of the volumes wanting to grow.
//! - `housekeeping`: the background work after each reconciler pass.
//! - `store`: the records and holds as the expander sees them.
//! - `backend`: [`RbdBackend`], the [`swell_storage::Backend`] impl.
//! - [`test_util`] (cargo feature `test-util`): a Ceph client of its own for
//!   tests and benchmarks.

#[cfg(feature = "librbd")]
mod auto_grow;
mod config;

#[cfg(feature = "librbd")]
mod backend;
#[cfg(feature = "librbd")]
mod budget;
#[cfg(feature = "librbd")]
mod capacity;
#[cfg(feature = "librbd")]
mod clones;
#[cfg(feature = "librbd")]
mod coalesce;
#[cfg(feature = "librbd")]
mod commit;
#[cfg(feature = "librbd")]
mod connection;
#[cfg(feature = "librbd")]
mod context;
#[cfg(feature = "librbd")]
mod errors;
#[cfg(feature = "librbd")]
mod ffi;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "librbd")]
mod header;
#[cfg(feature = "librbd")]
mod housekeeping;
#[cfg(feature = "librbd")]
mod images;
#[cfg(feature = "librbd")]
mod layout;
#[cfg(feature = "librbd")]
mod lease;
#[cfg(feature = "librbd")]
mod omap;
#[cfg(feature = "librbd")]
mod parallel;
#[cfg(feature = "librbd")]
mod readings;
#[cfg(feature = "librbd")]
mod shards;
#[cfg(feature = "librbd")]
mod snapshots;
#[cfg(feature = "librbd")]
mod state;
#[cfg(feature = "librbd")]
mod store;
#[cfg(feature = "test-util")]
pub mod test_util;
#[cfg(feature = "librbd")]
mod trash;
#[cfg(feature = "librbd")]
mod volumes;

#[cfg(feature = "librbd")]
pub use backend::{ConfigError, RbdBackend};
pub use config::{DEFAULT_LOCK_LEASE, DEFAULT_MAX_CLONE_DEPTH, DEFAULT_OP_TIMEOUT, RbdConfig, default_instance};
pub use swell_storage::rbd_volume::KIND;
