//! `swell-controller`: serves CSI Identity + Controller on a Unix socket.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use csi_endpoint::{parse_endpoint, serve, shutdown_signal};
use swell_controller::rbd::RbdConfig;
use swell_controller::reconciler::ReconcilerConfig;
use swell_controller::server::{BackendOptions, ControllerConfig, build_with};
use tracing_subscriber::EnvFilter;

/// Swell CSI controller: provisions and expands volumes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// CSI endpoint, e.g. unix:///csi/csi.sock.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Driver name announced to Kubernetes.
    #[arg(long, env = "SWELL_DRIVER_NAME", default_value = "swell.csi.storage")]
    driver_name: String,
    /// Accepted for sidecar compatibility; the controller is not node-bound.
    #[arg(long, env = "SWELL_NODE_ID")]
    node_id: Option<String>,
    /// Where the controller keeps its durable expansion records.
    #[arg(long, env = "SWELL_STATE_DIR", default_value = "/var/lib/swell/controller")]
    state_dir: PathBuf,
    /// The local backend's state directory (shared with the node on one machine).
    #[arg(long, env = "SWELL_LOCAL_STATE_DIR", default_value = "/var/lib/swell/local")]
    local_state_dir: PathBuf,
    /// Bytes the local backend may promise in all; default: the size of its file system.
    #[arg(long, env = "SWELL_LOCAL_CAPACITY_BYTES")]
    local_capacity_bytes: Option<u64>,
    /// Deadline of every backend call, in seconds.
    #[arg(long, env = "SWELL_BACKEND_TIMEOUT_SECS", default_value_t = 8)]
    backend_timeout_secs: u64,
    /// Seconds between reconciler passes over the expansion records.
    #[arg(long, env = "SWELL_RECONCILE_INTERVAL_SECS", default_value_t = 10)]
    reconcile_interval_secs: u64,
    /// Seconds an expansion may stay unfinished before it is reported stuck.
    #[arg(long, env = "SWELL_STUCK_AFTER_SECS", default_value_t = 600)]
    stuck_after_secs: u64,
    /// Backend for StorageClasses without a `backend` parameter: local or rbd.
    #[arg(long, env = "SWELL_DEFAULT_BACKEND", default_value = "local")]
    default_backend: String,
    /// Enables the Ceph RBD backend: the cluster's id in volume ids ([a-z0-9._-]).
    #[arg(long, env = "SWELL_RBD_CLUSTER_ID", requires_all = ["rbd_ceph_conf", "rbd_keyring"])]
    rbd_cluster_id: Option<String>,
    /// The RBD cluster's ceph.conf.
    #[arg(long, env = "SWELL_RBD_CEPH_CONF")]
    rbd_ceph_conf: Option<PathBuf>,
    /// The keyring holding the RBD user's key.
    #[arg(long, env = "SWELL_RBD_KEYRING")]
    rbd_keyring: Option<PathBuf>,
    /// The cephx user (without `client.`).
    #[arg(long, env = "SWELL_RBD_USER", default_value = "admin")]
    rbd_user: String,
    /// The pool for StorageClasses without a `pool` parameter.
    #[arg(long, env = "SWELL_RBD_POOL", default_value = "rbd")]
    rbd_pool: String,
    /// librados timeout of each OSD/monitor operation and of connecting, in
    /// seconds. An RBD call may take 2 × this + 1 s, which must stay under
    /// --backend-timeout-secs (checked at start-up).
    #[arg(long, env = "SWELL_RBD_OP_TIMEOUT_SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    rbd_op_timeout_secs: u64,
    /// Bytes that may be promised per byte the pool holds.
    #[arg(long, env = "SWELL_RBD_OVERPROVISION_RATIO", default_value_t = 1.0)]
    rbd_overprovision_ratio: f64,
    /// Count the sizes of images Swell did not make (other clients sharing
    /// the pool) against its room too, not only the bytes they wrote.
    #[arg(long, env = "SWELL_RBD_COUNT_FOREIGN_IMAGES")]
    rbd_count_foreign_images: bool,
    /// Seconds a volume's lock outlives a controller that stopped renewing
    /// it (died or froze); must exceed 2 × --rbd-op-timeout-secs + 1.
    #[arg(long, env = "SWELL_RBD_LOCK_LEASE_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    rbd_lock_lease_secs: u64,
    /// This controller's name in the volume locks it holds: unique among
    /// running replicas, the same across restarts of one (default:
    /// $POD_NAME, else the host name).
    #[arg(long, env = "SWELL_INSTANCE_NAME")]
    instance_name: Option<String>,
    /// Seconds in which the slow sweep checks every settled expansion
    /// record against its backend once.
    #[arg(long, env = "SWELL_SWEEP_INTERVAL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    sweep_interval_secs: u64,
    /// Backend reads per second the slow sweep may make.
    #[arg(long, env = "SWELL_SWEEP_READS_PER_SEC", default_value_t = 20)]
    sweep_reads_per_sec: u32,
    /// Serve Prometheus metrics (pending and stuck expansions) on this address, e.g. 127.0.0.1:9808.
    #[arg(long, env = "SWELL_METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))).init();
    let args = Args::parse();
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let socket = parse_endpoint(&args.endpoint)?;
    let rbd = match (args.rbd_cluster_id, args.rbd_ceph_conf, args.rbd_keyring) {
        (Some(cluster_id), Some(ceph_conf), Some(keyring)) => Some(RbdConfig {
            user: args.rbd_user,
            default_pool: args.rbd_pool,
            op_timeout: Duration::from_secs(args.rbd_op_timeout_secs),
            overprovision_ratio: args.rbd_overprovision_ratio,
            count_foreign_images: args.rbd_count_foreign_images,
            lock_lease: Duration::from_secs(args.rbd_lock_lease_secs),
            instance: args.instance_name.unwrap_or_else(swell_controller::rbd::default_instance),
            ..RbdConfig::new(cluster_id, ceph_conf, keyring)
        }),
        _ => None,
    };
    let backends = BackendOptions { rbd, default_backend: Some(args.default_backend) };
    let config = ControllerConfig {
        driver_name: args.driver_name,
        state_dir: args.state_dir,
        local_state_dir: args.local_state_dir,
        local_capacity_bytes: args.local_capacity_bytes,
        backend_timeout: Duration::from_secs(args.backend_timeout_secs),
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
        local_state = %config.local_state_dir.display(),
        rbd_cluster = backends.rbd.as_ref().map(|r| r.cluster_id.as_str()),
        "swell-controller starting"
    );
    // Display, not Debug: start-up errors are sentences meant for the operator.
    let controller = build_with(&config, &backends).map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::watch::channel(());
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<()>| async move {
        let _ = stopped.changed().await;
    };
    let mut background = vec![tokio::spawn(controller.reconciler.clone().run(until_stopped(stopped.clone())))];
    if let Some(address) = args.metrics_address {
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| format!("bind metrics address {address}: {e}"))?;
        let metrics = swell_controller::metrics::serve(listener, controller.reconciler.clone(), until_stopped(stopped.clone()));
        background.push(tokio::spawn(async move {
            if let Err(err) = metrics.await {
                tracing::error!(%address, error = %err, "metrics endpoint failed");
            }
        }));
    }
    let served = serve(&socket, controller.router, shutdown_signal()).await;
    let _ = stop.send(());
    for task in background {
        let _ = task.await;
    }
    served?;
    Ok(())
}
