//! One typed configuration of every backend, and the one function that
//! opens them: the controller, the webhook and `swell` all call [`open`],
//! so they serve the same volumes from the same records.

use std::sync::Arc;
use std::time::Duration;

use swell_local::{LocalBackend, LocalConfig};
use swell_rbd::RbdConfig;
use swell_storage::Backend;

use crate::registry::Backends;

/// What to open.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The local backend (always served).
    pub local: LocalConfig,
    /// A Ceph RBD cluster to serve too, if any.
    pub rbd: Option<RbdConfig>,
    /// The backend of StorageClasses without a `backend` parameter:
    /// `local` or `rbd`.
    pub default_backend: String,
    /// The deadline of every backend call.
    pub call_deadline: Duration,
}

impl BackendConfig {
    /// The local backend alone, with the default call deadline.
    pub fn local(local: LocalConfig) -> Self {
        BackendConfig { local, rbd: None, default_backend: swell_local::KIND.into(), call_deadline: DEFAULT_CALL_DEADLINE }
    }
}

/// The default deadline of a backend call (`--backend-timeout-secs`).
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(8);

/// Why the backends could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The local backend's directories could not be opened.
    #[error(transparent)]
    Local(#[from] swell_local::OpenError),
    /// The RBD configuration is unusable.
    #[cfg(feature = "rbd")]
    #[error(transparent)]
    Rbd(#[from] swell_rbd::ConfigError),
    /// RBD was asked of a build without the `rbd` feature.
    #[error("this binary was built without Ceph RBD support (cargo feature `rbd`): drop the --rbd-* flags, or use a build with default features")]
    RbdNotBuilt,
    /// `--default-backend` names a backend that is not configured.
    #[error("default backend {0:?} is not configured (local, or rbd with an RBD cluster)")]
    DefaultBackend(String),
    /// The RBD backend's own deadline is not shorter than the call deadline.
    #[error(
        "the RBD call deadline ({rbd:?} = 2 x rbd op timeout {op_timeout:?} + 1 s) must be shorter than the backend \
         timeout ({backend:?}), or calls are cut off while librbd still works: lower --rbd-op-timeout-secs or \
         raise --backend-timeout-secs"
    )]
    Deadlines {
        /// The RBD backend's deadline for one call.
        rbd: Duration,
        /// The librados op timeout it is derived from.
        op_timeout: Duration,
        /// The deadline of every backend call.
        backend: Duration,
    },
}

/// Opens the backends `config` names. Nothing is contacted yet: an RBD
/// cluster is connected on its first call, so a process starts while Ceph
/// is down.
pub fn open(config: &BackendConfig) -> Result<Backends, OpenError> {
    let local: Arc<dyn Backend> = Arc::new(LocalBackend::open(&config.local)?);
    let rbd = match &config.rbd {
        Some(rbd) => {
            check_deadlines(rbd, config.call_deadline)?;
            Some(open_rbd(rbd)?)
        }
        None => None,
    };
    let deadline = config.call_deadline;
    Ok(match (config.default_backend.as_str(), rbd) {
        ("local", None) => Backends::new(local, deadline),
        ("local", Some(rbd)) => Backends::new(local, deadline).with(rbd),
        ("rbd", Some(rbd)) => Backends::new(rbd, deadline).with(local),
        (other, _) => return Err(OpenError::DefaultBackend(other.to_owned())),
    })
}

/// Refuses an RBD configuration whose own call deadline is not strictly
/// shorter than the backend deadline: the inner deadline must expire
/// first, so the RBD backend answers (and stops mutating) before its caller
/// gives up on it.
fn check_deadlines(rbd: &RbdConfig, backend_timeout: Duration) -> Result<(), OpenError> {
    let deadline = rbd.call_deadline();
    if deadline >= backend_timeout {
        return Err(OpenError::Deadlines { rbd: deadline, op_timeout: rbd.op_timeout, backend: backend_timeout });
    }
    Ok(())
}

#[cfg(feature = "rbd")]
fn open_rbd(config: &RbdConfig) -> Result<Arc<dyn Backend>, OpenError> {
    Ok(Arc::new(swell_rbd::RbdBackend::new(config.clone())?))
}

#[cfg(not(feature = "rbd"))]
fn open_rbd(_: &RbdConfig) -> Result<Arc<dyn Backend>, OpenError> {
    Err(OpenError::RbdNotBuilt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rbd(op_timeout_secs: u64) -> RbdConfig {
        let mut rbd = RbdConfig::new("ceph-a", "/etc/ceph/ceph.conf", "/etc/ceph/keyring");
        rbd.op_timeout = Duration::from_secs(op_timeout_secs);
        rbd
    }

    #[test]
    fn the_rbd_deadline_must_expire_before_the_backend_deadline() {
        // The defaults fit: 2 x 3 s + 1 s = 7 s < 8 s.
        assert!(check_deadlines(&RbdConfig::new("c", "/c", "/k"), DEFAULT_CALL_DEADLINE).is_ok());
        assert!(check_deadlines(&rbd(5), Duration::from_secs(12)).is_ok());
        for (op, backend) in [(5, 8), (5, 11), (3, 7)] {
            let err = check_deadlines(&rbd(op), Duration::from_secs(backend)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("--rbd-op-timeout-secs") && text.contains("--backend-timeout-secs"), "{text}");
        }
    }

    #[test]
    fn mismatched_deadlines_or_an_unbuilt_backend_refuse_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalConfig { state_dir: dir.path().join("local"), records_dir: dir.path().join("controller"), capacity_bytes: Some(1 << 30) };
        let config = |rbd| BackendConfig { rbd: Some(rbd), default_backend: "rbd".into(), ..BackendConfig::local(local.clone()) };
        assert!(matches!(open(&config(rbd(5))), Err(OpenError::Deadlines { .. })));
        #[cfg(feature = "rbd")]
        assert!(open(&config(rbd(3))).is_ok(), "no cluster is contacted when opening");
        #[cfg(not(feature = "rbd"))]
        assert!(matches!(open(&config(rbd(3))), Err(OpenError::RbdNotBuilt)));
        let unknown = BackendConfig { default_backend: "zfs".into(), ..BackendConfig::local(local.clone()) };
        assert!(matches!(open(&unknown), Err(OpenError::DefaultBackend(kind)) if kind == "zfs"));
    }
}
