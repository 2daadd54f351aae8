//! Starts Swell's controller and node on Unix sockets under one directory and
//! connects clients to them. Shutdown is explicit (`stop`) and also happens on
//! drop, so a failing test does not leave a server behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::node_client::NodeClient;
use swell_backends::{BackendConfig, Backends};
use swell_controller::{ControllerConfig, build as build_controller, build_over};
use swell_controller::{Reconciler, ReconcilerConfig};
use swell_local::LocalConfig;
use swell_node::NodeConfig;
use swell_rbd::RbdConfig;
use swell_storage::CephAccess;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::transport::server::Router;

/// The driver name the harness runs under.
pub const DRIVER_NAME: &str = csi_endpoint::identity::DEFAULT_DRIVER_NAME;

/// Why the harness could not start the driver.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The controller would not start.
    #[error("start controller: {0}")]
    Controller(#[from] swell_controller::StartError),
    /// The node would not start.
    #[error("start node: {0}")]
    Node(String),
    /// A socket could not be reached.
    #[error(transparent)]
    Endpoint(#[from] csi_endpoint::EndpointError),
    /// The socket did not appear in time.
    #[error("socket {0} did not appear in time")]
    SocketTimeout(PathBuf),
    /// A process the test runs could not start, or exited while starting.
    #[error("controller process: {0}")]
    Process(String),
    /// A binary the test runs as a process is not built.
    #[error("binary not found: {0}")]
    MissingBinary(String),
}

/// Options for a driver under test.
#[derive(Debug, Clone, Default)]
pub struct DriverOptions {
    /// Cap on bytes the local backend may promise.
    pub local_capacity_bytes: Option<u64>,
    /// Reconciler pacing; `None` keeps the reconciler off so a test drives
    /// passes itself through [`DriverUnderTest::reconciler`].
    pub reconciler: Option<ReconcilerConfig>,
    /// A Ceph cluster for the RBD backend (controller and node alike).
    pub rbd: Option<CephAccess>,
}

/// A running controller + node and clients for both.
pub struct DriverUnderTest {
    /// The directory holding sockets and state.
    pub root: PathBuf,
    /// The local backend's state directory.
    pub local_state_dir: PathBuf,
    /// The controller's socket.
    pub controller_socket: PathBuf,
    /// The node's socket.
    pub node_socket: PathBuf,
    /// Controller service client.
    pub controller: ControllerClient<Channel>,
    /// Node service client.
    pub node: NodeClient<Channel>,
    /// Identity on the controller socket.
    pub controller_identity: IdentityClient<Channel>,
    /// Identity on the node socket.
    pub node_identity: IdentityClient<Channel>,
    /// The controller's reconciler (running in the background only when
    /// configured in [`DriverOptions`]).
    pub reconciler: Reconciler,
    /// Where the controller serves `/metrics` and `/healthz`.
    pub controller_metrics: SocketAddr,
    /// Where the node serves `/metrics` and `/healthz`.
    pub node_metrics: SocketAddr,
    servers: Vec<Background>,
}

/// A server or loop running in the background until told to stop; dropping
/// it stops it too, so a failing test leaves nothing running.
struct Background {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Background {
    fn start<F, Fut>(work: F) -> Self
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        Background { stop: Some(stop), task: tokio::spawn(work(stopped)) }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            self.task.abort();
        }
    }
}

/// Serves `observed`'s `/metrics` and `/healthz` on a free loopback port.
async fn spawn_observed(observed: csi_endpoint::Observed) -> Result<(Background, SocketAddr), HarnessError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| HarnessError::Process(format!("bind a metrics port: {e}")))?;
    let address = listener.local_addr().map_err(|e| HarnessError::Process(format!("metrics port: {e}")))?;
    let server = Background::start(|stopped| async move {
        observed
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    Ok((server, address))
}

fn spawn(socket: PathBuf, router: Router) -> Background {
    Background::start(|stopped| async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(err) = csi_endpoint::serve(&socket, router, shutdown).await {
            tracing::error!(socket = %socket.display(), error = %err, "test server failed");
        }
    })
}

/// Connects to the server at `socket` once it serves: retries until
/// `deadline`, asking `starting` between attempts whether the server is
/// still on its way (a process that exited is not).
pub async fn connect_when_serving(socket: &Path, deadline: Duration, mut starting: impl FnMut() -> Result<(), HarnessError>) -> Result<Channel, HarnessError> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if socket.exists()
            && let Ok(channel) = csi_endpoint::connect(socket).await
        {
            return Ok(channel);
        }
        starting()?;
        if tokio::time::Instant::now() > until {
            return Err(HarnessError::SocketTimeout(socket.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How long an in-process server may take to answer on its socket.
const START_DEADLINE: Duration = Duration::from_secs(10);

async fn connect_in_process(socket: &Path) -> Result<Channel, HarnessError> {
    connect_when_serving(socket, START_DEADLINE, || Ok(())).await
}

impl DriverUnderTest {
    /// Starts both services under `root` (created if needed).
    pub async fn start(root: &Path, options: DriverOptions) -> Result<Self, HarnessError> {
        let local_state_dir = root.join("local");
        let controller_socket = root.join("controller.sock");
        let node_socket = root.join("node.sock");
        let controller_config = ControllerConfig {
            driver_name: DRIVER_NAME.to_owned(),
            backends: BackendConfig {
                rbd: options.rbd.clone().map(RbdConfig::with_access),
                ..BackendConfig::local(LocalConfig {
                    capacity_bytes: options.local_capacity_bytes,
                    ..LocalConfig::new(&local_state_dir, root.join("controller"))
                })
            },
            reconciler: options.reconciler.clone().unwrap_or_default(),
        };
        let mut node_config = NodeConfig::new("swell-e2e-node");
        node_config.state_dir = root.join("node");
        node_config.local_state_dir = local_state_dir.clone();
        node_config.endpoint = format!("unix://{}", node_socket.display());

        node_config.rbd = options.rbd.clone();
        let node = swell_node::build(&node_config).map_err(|e| HarnessError::Node(e.to_string()))?;
        let controller = build_controller(&controller_config)?;
        let (controller_observed, controller_metrics) = spawn_observed(controller.observed).await?;
        let (node_observed, node_metrics) = spawn_observed(node.observed).await?;
        let mut servers =
            vec![spawn(controller_socket.clone(), controller.router), spawn(node_socket.clone(), node.router), controller_observed, node_observed];
        if options.reconciler.is_some() {
            let reconciler = controller.reconciler.clone();
            servers.push(Background::start(|stopped| async move {
                reconciler
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
            }));
        }
        let controller_channel = connect_in_process(&controller_socket).await?;
        let node_channel = connect_in_process(&node_socket).await?;
        Ok(DriverUnderTest {
            root: root.to_owned(),
            local_state_dir,
            controller_socket,
            node_socket,
            controller: ControllerClient::new(controller_channel.clone()),
            node: NodeClient::new(node_channel.clone()),
            controller_identity: IdentityClient::new(controller_channel),
            node_identity: IdentityClient::new(node_channel),
            reconciler: controller.reconciler,
            controller_metrics,
            node_metrics,
            servers,
        })
    }

    /// Stops both services and waits for their sockets to close.
    pub async fn stop(mut self) {
        for server in self.servers.drain(..) {
            server.stop().await;
        }
    }
}

/// A controller alone, served in-process on a Unix socket through the same
/// wiring as the binary (`swell_controller::server`), over backends the
/// test chooses (for instance an [`crate::instrumented::InstrumentedBackend`]).
/// The reconciler runs only when asked ([`ControllerUnderTest::run_reconciler`]);
/// otherwise the test drives its passes.
pub struct ControllerUnderTest {
    /// The controller's socket.
    pub socket: PathBuf,
    /// Controller service client.
    pub client: ControllerClient<Channel>,
    /// Identity on the controller socket.
    pub identity: IdentityClient<Channel>,
    /// The reconciler sharing the service's locks and state.
    pub reconciler: Reconciler,
    /// Where it serves `/metrics` and `/healthz`.
    pub metrics: SocketAddr,
    _server: Background,
    background: Vec<Background>,
}

impl ControllerUnderTest {
    /// Serves a controller over `backends` with its state under `root`.
    pub async fn start(root: &Path, backends: Backends, reconciler: ReconcilerConfig) -> Result<Self, HarnessError> {
        Self::serve(root, build_over(DRIVER_NAME, reconciler, backends)?).await
    }

    /// Serves an assembled controller on `root/controller.sock`.
    pub async fn serve(root: &Path, controller: swell_controller::Controller) -> Result<Self, HarnessError> {
        let socket = root.join("controller.sock");
        let server = spawn(socket.clone(), controller.router);
        let (observed, metrics) = spawn_observed(controller.observed).await?;
        let channel = connect_in_process(&socket).await?;
        Ok(ControllerUnderTest {
            socket,
            client: ControllerClient::new(channel.clone()),
            identity: IdentityClient::new(channel),
            reconciler: controller.reconciler,
            metrics,
            _server: server,
            background: vec![observed],
        })
    }

    /// Runs the reconciler's passes and background work in the background,
    /// as the binary does, until this value goes.
    pub fn run_reconciler(&mut self) {
        let reconciler = self.reconciler.clone();
        self.background.push(Background::start(|stopped| async move {
            reconciler
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }));
    }
}

/// A node service alone, served in-process on a Unix socket.
pub struct NodeUnderTest {
    /// Node service client.
    pub client: NodeClient<Channel>,
    /// Where it serves `/metrics` and `/healthz`.
    pub metrics: SocketAddr,
    _servers: [Background; 2],
}

impl NodeUnderTest {
    /// Serves a node with state under `root` over the local backend at `local_state_dir`.
    pub async fn start(root: &Path, local_state_dir: &Path) -> Result<Self, HarnessError> {
        let mut config = NodeConfig::new("swell-e2e-node");
        config.state_dir = root.join("node");
        config.local_state_dir = local_state_dir.to_owned();
        Self::serve(&root.join("node.sock"), &config).await
    }

    /// Serves a node with `config` on `socket` until dropped.
    pub async fn serve(socket: &Path, config: &NodeConfig) -> Result<Self, HarnessError> {
        let node = swell_node::build(config).map_err(|e| HarnessError::Node(e.to_string()))?;
        let server = spawn(socket.to_owned(), node.router);
        let (observed, metrics) = spawn_observed(node.observed).await?;
        let client = NodeClient::new(connect_in_process(socket).await?);
        Ok(NodeUnderTest { client, metrics, _servers: [server, observed] })
    }
}
