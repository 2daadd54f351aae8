//! Assembles the controller's gRPC router from its configuration, so the
//! binary, the demo and the tests run exactly the same wiring.

use std::sync::Arc;

use csi_endpoint::{CachedProbe, HEALTH_MAX_AGE, IdentityService, Observed, Probe, RpcMetrics};
use csi_proto::v1::controller_server::ControllerServer;
use csi_proto::v1::identity_server::IdentityServer;
use prometheus_client::registry::Registry;
use swell_backends::{BackendConfig, Backends, OpenError};
use tonic::transport::server::Router;

use crate::grower::{AutoGrowConfig, AutoGrowMetrics, AutoGrower};
use crate::reconciler::{Reconciler, ReconcilerConfig};
use crate::service::{BackendProbe, ControllerService};

/// Everything the controller needs to start.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Driver name announced to Kubernetes.
    pub driver_name: String,
    /// The backends it serves.
    pub backends: BackendConfig,
    /// How the reconciler paces itself.
    pub reconciler: ReconcilerConfig,
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
    backends: Backends,
    auto_grow_metrics: AutoGrowMetrics,
}

impl Controller {
    /// The auto-grow task over this controller's backends, patching claims
    /// through `client`; run it with [`AutoGrower::run`]. Its metrics are
    /// among the controller's.
    pub fn auto_grower(&self, client: kube::Client, config: AutoGrowConfig) -> AutoGrower {
        AutoGrower::new(self.backends.clone(), client, config, self.auto_grow_metrics.clone())
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The backends could not be opened.
    #[error(transparent)]
    Backends(#[from] OpenError),
    /// The driver name is not one the CSI spec allows.
    #[error(transparent)]
    DriverName(#[from] csi_endpoint::identity::InvalidDriverName),
}

/// Builds the Identity + Controller router and the reconciler over the
/// backends `config` names.
pub fn build(config: &ControllerConfig) -> Result<Controller, StartError> {
    build_over(&config.driver_name, config.reconciler.clone(), swell_backends::open(&config.backends)?)
}

/// Builds the Identity + Controller router and the reconciler over
/// `backends` as given (tests pass wrapped ones).
pub fn build_over(driver_name: &str, reconciler: ReconcilerConfig, backends: Backends) -> Result<Controller, StartError> {
    // Cached: /healthz listens on the pod's address, and polls must not become backend calls.
    let health: Arc<dyn Probe> = Arc::new(CachedProbe::new(Arc::new(BackendProbe(Arc::new(backends.clone()))), HEALTH_MAX_AGE));
    let identity = IdentityService::swell(driver_name, Arc::clone(&health))?;
    let mut registry = Registry::default();
    let rpcs = RpcMetrics::register(&mut registry);
    backends.register_metrics(&mut registry);
    let auto_grow_metrics = AutoGrowMetrics::default();
    auto_grow_metrics.register(&mut registry);
    let controller = ControllerService::new(backends.clone());
    let reconciler = Reconciler::new(controller.expander().clone(), reconciler);
    reconciler.metrics().register(&mut registry);
    let router = csi_endpoint::grpc_server().add_service(rpcs.meter(IdentityServer::new(identity))).add_service(rpcs.meter(ControllerServer::new(controller)));
    Ok(Controller { router, reconciler, observed: Observed { metrics: Arc::new(registry), health }, backends, auto_grow_metrics })
}
