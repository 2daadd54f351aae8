//! `swell-controller`: serves CSI Identity + Controller on a Unix socket.

use std::time::Duration;

use clap::Parser;
use csi_endpoint::identity::DEFAULT_DRIVER_NAME;
use csi_endpoint::logs::LogArgs;
use csi_endpoint::{SocketAccess, parse_endpoint, serve_with, shutdown_signal};
use swell_backends::BackendArgs;
use swell_controller::{AutoGrowConfig, ReconcilerConfig, kube_client};
use swell_controller::{ControllerConfig, build};
use swell_storage::expansion::DEFAULT_STUCK_AFTER_SECS;

/// Swell CSI controller: provisions and expands volumes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// CSI endpoint, e.g. unix:///csi/csi.sock.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Numeric group whose members may connect to the CSI socket (mode
    /// 0660), so the sidecars need not run as root; without it the socket
    /// is for its owner alone (0600).
    #[arg(long, env = "SWELL_SOCKET_GROUP")]
    socket_group: Option<u32>,
    /// Driver name announced to Kubernetes.
    #[arg(long, env = "SWELL_DRIVER_NAME", default_value = DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Accepted for sidecar compatibility; the controller is not node-bound.
    #[arg(long, env = "SWELL_NODE_ID")]
    node_id: Option<String>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Seconds between reconciler passes over the expansion records.
    #[arg(long, env = "SWELL_RECONCILE_INTERVAL_SECS", default_value_t = 10)]
    reconcile_interval_secs: u64,
    /// Seconds an expansion may stay unfinished before it is reported stuck.
    #[arg(long, env = "SWELL_STUCK_AFTER_SECS", default_value_t = DEFAULT_STUCK_AFTER_SECS)]
    stuck_after_secs: u64,
    /// Seconds in which the slow sweep checks every settled expansion
    /// record against its backend once.
    #[arg(long, env = "SWELL_SWEEP_INTERVAL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    sweep_interval_secs: u64,
    /// Backend reads per second the slow sweep may make.
    #[arg(long, env = "SWELL_SWEEP_READS_PER_SEC", default_value_t = 20)]
    sweep_reads_per_sec: u32,
    /// Serve Prometheus metrics (GET /metrics) and the health check the
    /// Identity Probe makes (GET /healthz) on this address, e.g. 0.0.0.0:9180.
    #[arg(long, env = "SWELL_METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Grow volumes whose StorageClass or claim turns auto-grow on when
    /// their node reports them short of room, by patching their claims
    /// through the Kubernetes API (docs/auto-grow.md). Needs the RBAC of
    /// deploy/ (patch PVCs, create Events).
    #[arg(long, env = "SWELL_AUTO_GROW")]
    auto_grow: bool,
    /// The kubeconfig auto-grow reaches the API server with; without it,
    /// the pod's in-cluster service account.
    #[arg(long, env = "SWELL_KUBECONFIG", requires = "auto_grow")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Milliseconds between auto-grow passes over the volumes marked as
    /// wanting to grow.
    #[arg(long, env = "SWELL_AUTO_GROW_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    auto_grow_interval_ms: u64,
    /// Seconds after which a node's usage reading decides nothing (its
    /// node may be gone).
    #[arg(long, env = "SWELL_AUTO_GROW_USAGE_MAX_AGE_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    auto_grow_usage_max_age_secs: u64,
    #[command(flatten)]
    logs: LogArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    args.logs.init();
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let socket = parse_endpoint(&args.endpoint)?;
    let config = ControllerConfig {
        driver_name: args.driver_name,
        backends: args.backend.config(),
        reconciler: ReconcilerConfig {
            interval: Duration::from_secs(args.reconcile_interval_secs.max(1)),
            stuck_after: Duration::from_secs(args.stuck_after_secs),
            sweep_interval: Duration::from_secs(args.sweep_interval_secs),
            sweep_reads_per_sec: args.sweep_reads_per_sec,
            ..ReconcilerConfig::default()
        },
    };
    tracing::info!(
        driver = %config.driver_name,
        local_state = %config.backends.local.state_dir.display(),
        rbd_cluster = config.backends.rbd.as_ref().map(|r| r.access.cluster_id.as_str()),
        "swell-controller starting"
    );
    // Display, not Debug: start-up errors are sentences meant for the operator.
    let controller = build(&config).map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::watch::channel(());
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<()>| async move {
        let _ = stopped.changed().await;
    };
    let mut background = vec![tokio::spawn(controller.reconciler.clone().run(until_stopped(stopped.clone())))];
    if args.auto_grow {
        let config = AutoGrowConfig {
            interval: Duration::from_millis(args.auto_grow_interval_ms),
            usage_max_age: Duration::from_secs(args.auto_grow_usage_max_age_secs),
            ..AutoGrowConfig::default()
        };
        let grower = controller.auto_grower(kube_client(args.kubeconfig.as_deref()).await?, config);
        background.push(tokio::spawn(grower.run(until_stopped(stopped.clone()))));
    }
    if let Some(address) = args.metrics_address {
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| format!("bind metrics address {address}: {e}"))?;
        background.push(tokio::spawn(controller.observed.clone().serve(listener, until_stopped(stopped.clone()))));
    }
    let access = args.socket_group.map_or(SocketAccess::OwnerOnly, SocketAccess::Group);
    let served = serve_with(&socket, access, controller.router, shutdown_signal()).await;
    let _ = stop.send(());
    for task in background {
        let _ = task.await;
    }
    served?;
    Ok(())
}
