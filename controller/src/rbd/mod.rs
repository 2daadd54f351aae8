//! The Ceph RBD backend: volumes are RBD images in a pool of one Ceph
//! cluster, reached in-process through librados/librbd over one shared,
//! long-lived connection.
//!
//! - [`ffi`]: the only `unsafe` code, a small layer over librados.h/librbd.h.
//! - [`connection`]: the shared connection, blocking calls under deadlines.
//! - [`errors`]: errno → [`swell_storage::BackendError`].
//! - [`capacity`]: the pool capacity policy (pure).
//! - [`ledger`]: bytes promised to operations in flight.
//! - [`coalesce`]: fresh pool readings shared by concurrent callers.
//! - [`fence`]: blocklisting a previous controller instance's client.
//! - [`backend`]: [`RbdBackend`], the [`swell_storage::Backend`] impl.

// What links librados/librbd sits behind the `rbd` feature; the
// configuration below stays, so a local-only build can name what it refuses.
#[cfg(feature = "rbd")]
pub mod backend;
pub mod capacity;
pub mod coalesce;
#[cfg(feature = "rbd")]
pub mod connection;
pub mod errors;
#[cfg(feature = "rbd")]
pub mod fence;
#[cfg(feature = "rbd")]
pub mod ffi;
pub mod ledger;

use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "rbd")]
pub use backend::RbdBackend;

pub use swell_storage::rbd_volume::KIND;

/// How to reach one Ceph cluster and what policy to apply to it.
#[derive(Debug, Clone)]
pub struct RbdConfig {
    /// Names the cluster in volume ids (`rbd:<cluster-id>:<pool>:<image>`);
    /// lowercase `[a-z0-9._-]`. Changing it orphans existing volumes.
    pub cluster_id: String,
    /// The cluster's `ceph.conf`.
    pub ceph_conf: PathBuf,
    /// The keyring with the user's key.
    pub keyring: PathBuf,
    /// The cephx user without `client.` (default `admin`).
    pub user: String,
    /// The pool used when a StorageClass names none (default `rbd`).
    pub default_pool: String,
    /// librados's timeout for each operation (OSD, monitor, connect);
    /// default 3 s. Swell's own deadline for one call is derived from it
    /// ([`call_deadline`](Self::call_deadline)).
    pub op_timeout: Duration,
    /// How many bytes may be promised per byte the pool can hold (default 1.0).
    pub overprovision_ratio: f64,
    /// Where this controller records its Ceph client's address, so that the
    /// next instance can blocklist it (see [`fence`]); `None`: no fencing.
    /// [`crate::server::build_with`] fills in the controller's state dir.
    pub state_dir: Option<PathBuf>,
}

impl RbdConfig {
    /// A config with the defaults for user, pool, timeout and ratio.
    pub fn new(cluster_id: impl Into<String>, ceph_conf: impl Into<PathBuf>, keyring: impl Into<PathBuf>) -> Self {
        RbdConfig {
            cluster_id: cluster_id.into(),
            ceph_conf: ceph_conf.into(),
            keyring: keyring.into(),
            user: "admin".into(),
            default_pool: "rbd".into(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            overprovision_ratio: 1.0,
            state_dir: None,
        }
    }

    /// How long one backend call may take before the RBD backend answers
    /// Timeout: one stalled librados op ends after `op_timeout`, and a call
    /// makes a few in a row, so two of them and a margin. Every deadline
    /// around the backend must be longer than this, or calls are cut off
    /// while librbd still works (checked at start-up by
    /// [`crate::server::build_with`]).
    pub fn call_deadline(&self) -> Duration {
        self.op_timeout * 2 + Duration::from_secs(1)
    }

    /// The file recording this controller's Ceph client addresses.
    pub fn client_record(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|dir| dir.join(format!("rbd-{}-clients.json", self.cluster_id)))
    }
}

/// The default librados op timeout: with it the call deadline (7 s) stays
/// under the controller's default backend deadline (8 s).
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(3);
