//! How to reach one Ceph cluster and what policy to apply to it: the RBD
//! backend's typed configuration, compiled also without the `librbd`
//! feature so a local-only build can name what it refuses.

use std::path::PathBuf;
use std::time::Duration;

use swell_storage::CephAccess;

/// How to reach one Ceph cluster and what policy to apply to it.
#[derive(Debug, Clone)]
pub struct RbdConfig {
    /// How to reach the cluster and the id volume ids give it.
    pub access: CephAccess,
    /// The pool used when a StorageClass names none (default `rbd`).
    pub default_pool: String,
    /// The RADOS namespace, in every pool, that holds this install's
    /// volumes, state object, locks and trash (empty, the default: the
    /// pool's default namespace, where installs before namespaces kept
    /// theirs). Two installs sharing a pool each need their own.
    pub namespace: String,
    /// librados's timeout for each operation (OSD, monitor, connect);
    /// default 3 s. Swell's own deadline for one call is derived from it
    /// ([`call_deadline`](Self::call_deadline)).
    pub op_timeout: Duration,
    /// How many bytes may be promised per byte the pool can hold (default 1.0).
    pub overprovision_ratio: f64,
    /// Whether images Swell did not make count against the pool's room too
    /// (their total is refreshed in the background, never on a request).
    pub count_foreign_images: bool,
    /// Names this controller process in the locks it holds; unique among
    /// the replicas running at once (the pod name), and kept across a
    /// restart so a restarted process takes back its own locks at once.
    pub instance: String,
    /// How long a volume's lock outlives a holder that stopped renewing it
    /// (died or froze).
    pub lock_lease: Duration,
    /// Pool usage readings (`ceph df`) older than this are read again.
    pub reading_max_age: Duration,
    /// Trashed images purged, or clones flattened, at once.
    pub purge_concurrency: usize,
    /// Clone parents a volume may read through before it is flattened in
    /// the background (default 4).
    pub max_clone_depth: u32,
}

impl RbdConfig {
    /// A config as `client.admin` with the defaults for pool, timeouts,
    /// policy and instance (`$POD_NAME`, else the host name).
    pub fn new(cluster_id: impl Into<String>, ceph_conf: impl Into<PathBuf>, keyring: impl Into<PathBuf>) -> Self {
        Self::with_access(CephAccess::new(cluster_id, ceph_conf, keyring))
    }

    /// A config reaching the cluster through `access`, with the defaults
    /// for everything else.
    pub fn with_access(access: CephAccess) -> Self {
        RbdConfig {
            access,
            default_pool: "rbd".into(),
            namespace: String::new(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            overprovision_ratio: 1.0,
            count_foreign_images: false,
            instance: default_instance(),
            lock_lease: DEFAULT_LOCK_LEASE,
            reading_max_age: Duration::from_secs(1),
            purge_concurrency: 4,
            max_clone_depth: DEFAULT_MAX_CLONE_DEPTH,
        }
    }

    /// How long one backend call may take before the RBD backend answers
    /// Timeout: one stalled librados op ends after `op_timeout`, and a call
    /// makes a few in a row, so two of them and a margin. Every deadline
    /// around the backend must be longer than this, or calls are cut off
    /// while librbd still works (checked when the backends are opened).
    pub fn call_deadline(&self) -> Duration {
        self.op_timeout.saturating_mul(2).saturating_add(Duration::from_secs(1))
    }

    /// How long a create may be in flight before the background work judges
    /// its entry: every create ends within its call's deadline, so a few of
    /// those (and some clock skew between replicas) is plenty.
    #[cfg(feature = "librbd")]
    pub(crate) fn create_grace(&self) -> Duration {
        self.call_deadline().saturating_mul(4)
    }
}

/// `$POD_NAME` (set from the downward API in deploy/), else the host name.
pub fn default_instance() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| "swell-controller".into())
}

/// The default librados op timeout: with it the call deadline (7 s) stays
/// under the controller's default backend deadline (8 s).
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(3);
/// The default limit of clone chains: a restore of a snapshot of a restored
/// volume is two deep; every level adds a lookup to each read of data the
/// volume has not written itself.
pub const DEFAULT_MAX_CLONE_DEPTH: u32 = 4;
/// The default lease of a volume's lock: longer than one call's deadline,
/// short enough that a dead holder frees its volumes quickly.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(10);
