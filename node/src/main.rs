//! `swell-node`: serves CSI Identity + Node on a Unix socket on every node.

use std::path::PathBuf;

use clap::Parser;
use csi_endpoint::{parse_endpoint, serve, shutdown_signal};
use swell_node::NodeConfig;
use tracing_subscriber::EnvFilter;

/// Swell CSI node plugin: attaches, formats, mounts and grows volumes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This node's id (the Kubernetes node name).
    #[arg(long, env = "SWELL_NODE_ID")]
    node_id: String,
    /// Driver name announced to Kubernetes.
    #[arg(long, env = "SWELL_DRIVER_NAME", default_value = NodeConfig::DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Where the node keeps its staging records.
    #[arg(long, env = "SWELL_STATE_DIR", default_value = "/var/lib/swell/node")]
    state_dir: PathBuf,
    /// The local backend's state directory, shared with the controller.
    #[arg(long, env = "SWELL_LOCAL_STATE_DIR", default_value = "/var/lib/swell/local")]
    local_state_dir: PathBuf,
    /// CSI endpoint, e.g. unix:///csi/csi.sock.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let args = Args::parse();
    let socket = parse_endpoint(&args.endpoint)?;
    let config = NodeConfig {
        node_id: args.node_id,
        driver_name: args.driver_name,
        state_dir: args.state_dir,
        local_state_dir: args.local_state_dir,
        endpoint: args.endpoint,
    };
    tracing::info!(node = %config.node_id, state = %config.state_dir.display(), "swell-node starting");
    let router = swell_node::server::router(&config)?;
    serve(&socket, router, shutdown_signal()).await?;
    Ok(())
}
