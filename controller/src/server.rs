//! Assembles the controller's gRPC router from its configuration, so the
//! binary, the demo and the tests run exactly the same wiring.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use csi_endpoint::{IdentityService, Observed, Probe, RpcMetrics};
use csi_proto::v1::controller_server::ControllerServer;
use csi_proto::v1::identity_server::IdentityServer;
use prometheus_client::registry::Registry;
use swell_storage::local::LocalBackend;
use tonic::transport::server::Router;

use crate::rbd::RbdConfig;
use crate::reconciler::{Reconciler, ReconcilerConfig};
use crate::{BackendProbe, Backends, ControllerService, ExpansionRecords};

/// Everything the controller needs to start.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Driver name announced to Kubernetes.
    pub driver_name: String,
    /// Where the durable expansion records live.
    pub state_dir: PathBuf,
    /// The local backend's state directory.
    pub local_state_dir: PathBuf,
    /// Bytes the local backend may promise in all (default: its file system's size).
    pub local_capacity_bytes: Option<u64>,
    /// Deadline of every backend call.
    pub backend_timeout: Duration,
    /// How the reconciler paces itself.
    pub reconciler: ReconcilerConfig,
}

/// Backends beyond the always-present local one. Kept apart from
/// [`ControllerConfig`] so the callers that build that struct field by field
/// (the e2e harness) need not change.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// A Ceph RBD cluster to provision from, if any.
    pub rbd: Option<RbdConfig>,
    /// The backend for StorageClasses without a `backend` parameter:
    /// `local` (the default) or `rbd`.
    pub default_backend: Option<String>,
}

/// A controller ready to serve: the gRPC router, the reconciler to run
/// beside it, and what it shows over HTTP.
pub struct Controller {
    /// Identity + Controller services.
    pub router: Router,
    /// Finishes interrupted expansions; run it with [`Reconciler::run`].
    pub reconciler: Reconciler,
    /// Its metrics and health check (the Identity Probe's), to serve with
    /// [`Observed::serve`].
    pub observed: Observed,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A state directory could not be opened.
    #[error("open {what} at {path}: {source}")]
    State {
        /// Which state.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The RBD configuration is unusable.
    #[cfg(feature = "rbd")]
    #[error(transparent)]
    Rbd(#[from] crate::rbd::backend::ConfigError),
    /// RBD was asked of a controller built without the `rbd` feature.
    #[error("this swell-controller was built without Ceph RBD support (cargo feature `rbd`): drop the --rbd-* flags, or use a build with default features")]
    RbdNotBuilt,
    /// `--default-backend` names a backend that is not configured.
    #[error("default backend {0:?} is not configured (local, or rbd with an RBD cluster)")]
    DefaultBackend(String),
    /// The driver name is not one the CSI spec allows.
    #[error(transparent)]
    DriverName(#[from] csi_endpoint::identity::InvalidDriverName),
    /// The RBD backend's own deadline is not shorter than the controller's.
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
        /// The controller's deadline for every backend call.
        backend: Duration,
    },
}

/// Refuses an RBD configuration whose own call deadline is not strictly
/// shorter than the controller's backend deadline: the inner deadline must
/// expire first, so the RBD backend answers (and stops mutating) before the
/// controller gives up on it.
pub fn check_deadlines(rbd: &RbdConfig, backend_timeout: Duration) -> Result<(), StartError> {
    let deadline = rbd.call_deadline();
    if deadline >= backend_timeout {
        return Err(StartError::Deadlines { rbd: deadline, op_timeout: rbd.op_timeout, backend: backend_timeout });
    }
    Ok(())
}

/// Builds the Identity + Controller router and the reconciler over the local backend.
pub fn build(config: &ControllerConfig) -> Result<Controller, StartError> {
    build_with(config, &BackendOptions::default())
}

/// Builds the local backend and the ones in `options` under one deadline,
/// as configured; used by the controller and by the admission webhook.
pub fn backends(
    local_state_dir: &Path,
    local_capacity_bytes: Option<u64>,
    backend_timeout: Duration,
    options: &BackendOptions,
) -> Result<Backends, StartError> {
    let local: Arc<dyn swell_storage::Backend> = Arc::new(LocalBackend::open(local_state_dir, local_capacity_bytes).map_err(|source| StartError::State {
        what: "local backend",
        path: local_state_dir.to_owned(),
        source,
    })?);
    let rbd: Option<Arc<dyn swell_storage::Backend>> = match &options.rbd {
        Some(rbd) => {
            check_deadlines(rbd, backend_timeout)?;
            Some(open_rbd(rbd.clone())?)
        }
        None => None,
    };
    Ok(match (options.default_backend.as_deref().unwrap_or("local"), rbd) {
        ("local", None) => Backends::new(local, backend_timeout),
        ("local", Some(rbd)) => Backends::new(local, backend_timeout).with(rbd),
        ("rbd", Some(rbd)) => Backends::new(rbd, backend_timeout).with(local),
        (other, _) => return Err(StartError::DefaultBackend(other.to_owned())),
    })
}

/// Builds the Identity + Controller router and the reconciler over the local
/// backend and the ones in `options`.
pub fn build_with(config: &ControllerConfig, options: &BackendOptions) -> Result<Controller, StartError> {
    let backends = backends(&config.local_state_dir, config.local_capacity_bytes, config.backend_timeout, options)?;
    build_over(config, backends)
}

/// Builds the Identity + Controller router and the reconciler over
/// `backends` as given (tests pass wrapped ones); `config`'s backend fields
/// are not used.
pub fn build_over(config: &ControllerConfig, backends: Backends) -> Result<Controller, StartError> {
    let records =
        ExpansionRecords::open(&config.state_dir).map_err(|source| StartError::State { what: "expansion records", path: config.state_dir.clone(), source })?;
    let health: Arc<dyn Probe> = Arc::new(BackendProbe(Arc::new(backends.clone())));
    let identity = IdentityService::swell(&config.driver_name, Arc::clone(&health))?;
    let mut registry = Registry::default();
    let rpcs = RpcMetrics::register(&mut registry);
    backends.register_metrics(&mut registry);
    let controller = ControllerService::new(backends, records);
    let reconciler = Reconciler::new(controller.expander().clone(), config.reconciler.clone());
    reconciler.metrics().register(&mut registry);
    let router =
        tonic::transport::Server::builder().add_service(rpcs.meter(IdentityServer::new(identity))).add_service(rpcs.meter(ControllerServer::new(controller)));
    Ok(Controller { router, reconciler, observed: Observed { metrics: Arc::new(registry), health } })
}

#[cfg(feature = "rbd")]
fn open_rbd(config: RbdConfig) -> Result<Arc<dyn swell_storage::Backend>, StartError> {
    Ok(Arc::new(crate::rbd::RbdBackend::new(config)?))
}

#[cfg(not(feature = "rbd"))]
fn open_rbd(_: RbdConfig) -> Result<Arc<dyn swell_storage::Backend>, StartError> {
    Err(StartError::RbdNotBuilt)
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
        assert!(check_deadlines(&RbdConfig::new("c", "/c", "/k"), Duration::from_secs(8)).is_ok());
        assert!(check_deadlines(&rbd(5), Duration::from_secs(12)).is_ok());
        for (op, backend) in [(5, 8), (5, 11), (3, 7)] {
            let err = check_deadlines(&rbd(op), Duration::from_secs(backend)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("--rbd-op-timeout-secs") && text.contains("--backend-timeout-secs"), "{text}");
        }
    }

    #[test]
    fn a_controller_with_mismatched_deadlines_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = ControllerConfig {
            driver_name: "swell.csi.storage".into(),
            state_dir: dir.path().join("controller"),
            local_state_dir: dir.path().join("local"),
            local_capacity_bytes: Some(1 << 30),
            backend_timeout: Duration::from_secs(8),
            reconciler: ReconcilerConfig::default(),
        };
        let bad = BackendOptions { rbd: Some(rbd(5)), default_backend: Some("rbd".into()) };
        assert!(matches!(build_with(&config, &bad), Err(StartError::Deadlines { .. })));
        let good = BackendOptions { rbd: Some(rbd(3)), default_backend: Some("rbd".into()) };
        #[cfg(feature = "rbd")]
        assert!(build_with(&config, &good).is_ok(), "no cluster is contacted at start-up");
        #[cfg(not(feature = "rbd"))]
        assert!(matches!(build_with(&config, &good), Err(StartError::RbdNotBuilt)));
    }
}
