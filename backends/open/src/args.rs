//! The command-line flags that choose and configure the backends, shared by
//! `swell-controller`, `swell-webhook` and `swell`, so all three read one
//! configuration the same way.

use std::path::PathBuf;
use std::time::Duration;

use swell_local::LocalConfig;
use swell_rbd::RbdConfig;
use swell_storage::CephAccess;

use crate::config::BackendConfig;

/// Backend flags; every one also reads an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Where the expansion records of local volumes are kept (RBD volumes
    /// keep theirs in their pool).
    #[arg(long, env = "SWELL_STATE_DIR", default_value = "/var/lib/swell/controller")]
    pub state_dir: PathBuf,
    /// The local backend's state directory (shared with the node on one machine).
    #[arg(long, env = "SWELL_LOCAL_STATE_DIR", default_value = "/var/lib/swell/local")]
    pub local_state_dir: PathBuf,
    /// Bytes the local backend may promise in all; default: the size of its file system.
    #[arg(long, env = "SWELL_LOCAL_CAPACITY_BYTES")]
    pub local_capacity_bytes: Option<u64>,
    /// Deadline of every backend call, in seconds.
    #[arg(long, env = "SWELL_BACKEND_TIMEOUT_SECS", default_value_t = 8)]
    pub backend_timeout_secs: u64,
    /// Backend for StorageClasses without a `backend` parameter: local or rbd.
    #[arg(long, env = "SWELL_DEFAULT_BACKEND", default_value = "local")]
    pub default_backend: String,
    /// Enables the Ceph RBD backend: the cluster's id in volume ids ([a-z0-9._-]).
    #[arg(long, env = "SWELL_RBD_CLUSTER_ID", requires_all = ["rbd_ceph_conf", "rbd_keyring"])]
    pub rbd_cluster_id: Option<String>,
    /// The RBD cluster's ceph.conf.
    #[arg(long, env = "SWELL_RBD_CEPH_CONF")]
    pub rbd_ceph_conf: Option<PathBuf>,
    /// The keyring holding the RBD user's key.
    #[arg(long, env = "SWELL_RBD_KEYRING")]
    pub rbd_keyring: Option<PathBuf>,
    /// The cephx user (without `client.`).
    #[arg(long, env = "SWELL_RBD_USER", default_value = "admin")]
    pub rbd_user: String,
    /// The pool for StorageClasses without a `pool` parameter.
    #[arg(long, env = "SWELL_RBD_POOL", default_value = "rbd")]
    pub rbd_pool: String,
    /// The RADOS namespace, in every pool, holding this install's volumes,
    /// state, locks and trash (made first: `rbd namespace create
    /// POOL/NAMESPACE`); default: the pool's default namespace. Give each
    /// install sharing a pool its own.
    #[arg(long, env = "SWELL_RBD_NAMESPACE", default_value = "")]
    pub rbd_namespace: String,
    /// librados timeout of each OSD/monitor operation and of connecting, in
    /// seconds. An RBD call may take 2 × this + 1 s, which must stay under
    /// --backend-timeout-secs (checked at start-up).
    #[arg(long, env = "SWELL_RBD_OP_TIMEOUT_SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub rbd_op_timeout_secs: u64,
    /// Bytes that may be promised per byte the pool holds.
    #[arg(long, env = "SWELL_RBD_OVERPROVISION_RATIO", default_value_t = 1.0)]
    pub rbd_overprovision_ratio: f64,
    /// Count the sizes of images Swell did not make (other clients sharing
    /// the pool) against its room too, not only the bytes they wrote.
    #[arg(long, env = "SWELL_RBD_COUNT_FOREIGN_IMAGES")]
    pub rbd_count_foreign_images: bool,
    /// Seconds a volume's lock outlives a controller that stopped renewing
    /// it (died or froze); must exceed 2 × --rbd-op-timeout-secs + 1.
    #[arg(long, env = "SWELL_RBD_LOCK_LEASE_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub rbd_lock_lease_secs: u64,
    /// Clone parents a volume may read through before the background work
    /// flattens it (a restore of a snapshot of a clone is two deep).
    #[arg(long, env = "SWELL_RBD_MAX_CLONE_DEPTH", default_value_t = swell_rbd::DEFAULT_MAX_CLONE_DEPTH)]
    pub rbd_max_clone_depth: u32,
    /// This process's name in the volume locks it holds: unique among
    /// running replicas, the same across restarts of one (default:
    /// $POD_NAME, else the host name).
    #[arg(long, env = "SWELL_INSTANCE_NAME")]
    pub instance_name: Option<String>,
}

impl BackendArgs {
    /// The configuration the flags describe.
    pub fn config(&self) -> BackendConfig {
        let rbd = match (&self.rbd_cluster_id, &self.rbd_ceph_conf, &self.rbd_keyring) {
            (Some(cluster_id), Some(ceph_conf), Some(keyring)) => Some(RbdConfig {
                default_pool: self.rbd_pool.clone(),
                namespace: self.rbd_namespace.clone(),
                op_timeout: Duration::from_secs(self.rbd_op_timeout_secs),
                overprovision_ratio: self.rbd_overprovision_ratio,
                count_foreign_images: self.rbd_count_foreign_images,
                lock_lease: Duration::from_secs(self.rbd_lock_lease_secs),
                max_clone_depth: self.rbd_max_clone_depth,
                instance: self.instance_name.clone().unwrap_or_else(swell_rbd::default_instance),
                ..RbdConfig::with_access(CephAccess { user: self.rbd_user.clone(), ..CephAccess::new(cluster_id.clone(), ceph_conf.clone(), keyring.clone()) })
            }),
            _ => None,
        };
        BackendConfig {
            local: LocalConfig {
                state_dir: self.local_state_dir.clone(),
                records_dir: self.state_dir.clone(),
                capacity_bytes: self.local_capacity_bytes,
                read_only: false,
            },
            rbd,
            default_backend: self.default_backend.clone(),
            call_deadline: Duration::from_secs(self.backend_timeout_secs),
        }
    }
}
