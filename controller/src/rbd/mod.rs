//! The Ceph RBD backend: volumes are RBD images in a pool of one Ceph
//! cluster, reached in-process through librados/librbd over one shared,
//! long-lived connection.
//!
//! - [`ffi`]: the only `unsafe` code, a small layer over librados.h/librbd.h.
//! - [`connection`]: the shared connection, blocking calls under deadlines.
//! - [`errors`]: errno → [`swell_storage::BackendError`].
//! - [`capacity`]: the pool capacity policy (pure).
//! - [`backend`]: [`RbdBackend`], the [`swell_storage::Backend`] impl.

pub mod backend;
pub mod capacity;
pub mod connection;
pub mod errors;
pub mod ffi;

use std::path::PathBuf;
use std::time::Duration;

pub use backend::RbdBackend;

/// The id prefix of RBD volumes.
pub const KIND: &str = "rbd";

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
    /// librados's timeout for each operation (OSD, monitor, connect).
    pub op_timeout: Duration,
    /// How many bytes may be promised per byte the pool can hold (default 1.0).
    pub overprovision_ratio: f64,
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
            op_timeout: Duration::from_secs(5),
            overprovision_ratio: 1.0,
        }
    }
}
