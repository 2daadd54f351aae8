//! `swell-node`: serves CSI Identity + Node on a Unix socket on every node.

use std::path::PathBuf;

use clap::Parser;
use csi_endpoint::logs::LogArgs;
use csi_endpoint::{parse_endpoint, serve, shutdown_signal};
use swell_node::NodeConfig;
use swell_storage::CephAccess;

/// Swell CSI node plugin: attaches, formats, mounts and grows volumes.
#[derive(Debug, Parser)]
#[command(version, after_help = format!("{PROGRAMS_HEADING} {}", swell_storage::command::PROGRAMS.join(" ")))]
struct Args {
    /// This node's id (the Kubernetes node name).
    #[arg(long, env = "SWELL_NODE_ID")]
    node_id: String,
    /// Driver name announced to Kubernetes.
    #[arg(long, env = "SWELL_DRIVER_NAME", default_value = csi_endpoint::identity::DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Where the node keeps its staging records.
    #[arg(long, env = "SWELL_STATE_DIR", default_value = "/var/lib/swell/node")]
    state_dir: PathBuf,
    /// The local backend's state directory, shared with the controller.
    #[arg(long, env = "SWELL_LOCAL_STATE_DIR", default_value = "/var/lib/swell/local")]
    local_state_dir: PathBuf,
    /// Where kubelet keeps staging and target paths: any other path, or one
    /// with a symlink below this directory, is refused (INVALID_ARGUMENT).
    #[arg(long, env = "SWELL_KUBELET_DIR", default_value = "/var/lib/kubelet")]
    kubelet_dir: PathBuf,
    /// CSI endpoint, e.g. unix:///csi/csi.sock.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// The Ceph cluster id that `rbd:<cluster-id>:<pool>:<image>` volume ids name;
    /// without it the node attaches local volumes only.
    #[arg(long, env = "SWELL_RBD_CLUSTER_ID", requires_all = ["rbd_ceph_conf", "rbd_keyring"])]
    rbd_cluster_id: Option<String>,
    /// That cluster's ceph.conf.
    #[arg(long, env = "SWELL_RBD_CEPH_CONF", requires = "rbd_cluster_id")]
    rbd_ceph_conf: Option<PathBuf>,
    /// The keyring with the Ceph user's key.
    #[arg(long, env = "SWELL_RBD_KEYRING", requires = "rbd_cluster_id")]
    rbd_keyring: Option<PathBuf>,
    /// The Ceph user (without `client.`).
    #[arg(long, env = "SWELL_RBD_USER", default_value = "admin")]
    rbd_user: String,
    /// Serve Prometheus metrics (GET /metrics) and the health check the
    /// Identity Probe makes (GET /healthz) on this address, e.g. 0.0.0.0:9180.
    #[arg(long, env = "SWELL_METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Every this many milliseconds, grow the staged volumes whose backend
    /// grew without waiting for kubelet's NodeExpandVolume (which comes at
    /// kubelet's next sync of the pod, up to a minute later); 0 turns it off.
    #[arg(long, env = "SWELL_GROW_ON_BACKEND_CHANGE_MS", default_value_t = 2000)]
    grow_on_backend_change_ms: u64,
    /// Write each mounted auto-grow volume's usage (bytes and inodes) into
    /// its backend's store at most this many milliseconds apart, and at
    /// once when it crosses its threshold (docs/auto-grow.md); 0 turns it
    /// off, and with it auto-grow of the volumes staged here.
    #[arg(long, env = "SWELL_USAGE_REPORT_INTERVAL_MS", default_value_t = 30000)]
    usage_report_interval_ms: u64,
    #[command(flatten)]
    logs: LogArgs,
}

/// Starts the `--help` line naming every program the node may run; the
/// image build reads that line to check the image holds each.
const PROGRAMS_HEADING: &str = "Runs these programs, found on PATH:";

impl Args {
    /// The RBD part of the configuration; clap guarantees the three
    /// cluster flags come together.
    fn rbd(&self) -> Option<CephAccess> {
        Some(CephAccess {
            cluster_id: self.rbd_cluster_id.clone()?,
            ceph_conf: self.rbd_ceph_conf.clone()?,
            keyring: self.rbd_keyring.clone()?,
            user: self.rbd_user.clone(),
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    args.logs.init();
    let socket = parse_endpoint(&args.endpoint)?;
    let rbd = args.rbd();
    let config = NodeConfig {
        rbd,
        node_id: args.node_id,
        driver_name: args.driver_name,
        state_dir: args.state_dir,
        local_state_dir: args.local_state_dir,
        endpoint: args.endpoint,
        kubelet_dir: Some(args.kubelet_dir),
        grow_on_backend_change: (args.grow_on_backend_change_ms > 0).then(|| std::time::Duration::from_millis(args.grow_on_backend_change_ms)),
        usage_report: (args.usage_report_interval_ms > 0).then(|| std::time::Duration::from_millis(args.usage_report_interval_ms)),
    };
    tracing::info!(node = %config.node_id, state = %config.state_dir.display(), "swell-node starting");
    let node = swell_node::build(&config)?;
    let (stop, mut stopped) = tokio::sync::watch::channel(());
    let mut metrics = None;
    if let Some(address) = args.metrics_address {
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| format!("bind metrics address {address}: {e}"))?;
        metrics = Some(tokio::spawn(node.observed.clone().serve(listener, async move {
            let _ = stopped.changed().await;
        })));
    }
    let served = serve(&socket, node.router, shutdown_signal()).await;
    let _ = stop.send(());
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    served?;
    Ok(())
}
