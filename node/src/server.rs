//! Assembles the node's gRPC router (Identity + Node) and what it shows over
//! HTTP (metrics, health) from its configuration, so the binary and the e2e
//! harness run the same wiring.

use std::path::PathBuf;
use std::sync::Arc;

use csi_endpoint::identity::InvalidDriverName;
use csi_endpoint::{IdentityService, NotReady, Observed, Probe, RpcMetrics};
use csi_proto::v1::identity_server::IdentityServer;
use csi_proto::v1::node_server::NodeServer;
use prometheus_client::registry::Registry;
use tonic::transport::server::Router;

use crate::{NodeConfig, NodeError, NodeService};

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node's state could not be prepared.
    #[error("prepare node state: {}", .0.full_message())]
    State(#[from] NodeError),
    /// The driver name is not one the CSI spec allows.
    #[error(transparent)]
    DriverName(#[from] InvalidDriverName),
}

/// A node ready to serve.
pub struct Node {
    /// Identity + Node services.
    pub router: Router,
    /// Its metrics and health check (the Identity Probe's), to serve with
    /// [`Observed::serve`].
    pub observed: Observed,
}

/// The Identity + Node router for `config`, and its metrics.
pub fn build(config: &NodeConfig) -> Result<Node, StartError> {
    let node = NodeService::new(config.clone())?;
    let health: Arc<dyn Probe> = Arc::new(StateProbe(config.state_dir.clone()));
    let identity = IdentityService::swell(&config.driver_name, Arc::clone(&health))?;
    let mut registry = Registry::default();
    let rpcs = RpcMetrics::register(&mut registry);
    node.metrics().register(&mut registry);
    let router = csi_endpoint::grpc_server().add_service(rpcs.meter(IdentityServer::new(identity))).add_service(rpcs.meter(NodeServer::new(node)));
    Ok(Node { router, observed: Observed { metrics: Arc::new(registry), health } })
}

/// Ready when the node's state directory can be read.
struct StateProbe(PathBuf);

#[async_trait::async_trait]
impl Probe for StateProbe {
    async fn check(&self) -> Result<(), NotReady> {
        tokio::fs::metadata(&self.0).await.map(drop).map_err(|e| NotReady::new(format!("state directory {}", self.0.display()), e))
    }
}
