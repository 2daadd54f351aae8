//! `swell-node` as a real process, for tests that kill it: SIGKILL to its
//! whole process group (the node and the tools it is running, as a
//! container kill takes them; daemons that detached, such as rbd-fuse,
//! survive as they would beside a restarted container), then a restart over
//! the same state directory.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use csi_proto::v1::node_client::NodeClient;
use swell_node::NodeConfig;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::harness::HarnessError;
use crate::process::{built_binary, wait_until_serving};

/// A running `swell-node` process.
pub struct NodeProcess {
    child: Child,
    binary: PathBuf,
    args: Vec<OsString>,
    /// The CSI socket it serves.
    pub socket: PathBuf,
}

impl NodeProcess {
    /// Starts a node serving `config` on `socket`, with `env` added to its
    /// environment (e.g. a PATH with stand-ins for tools); waits until the
    /// socket answers.
    pub async fn start(config: &NodeConfig, socket: PathBuf, env: &[(&str, OsString)]) -> Result<Self, HarnessError> {
        let mut args: Vec<OsString> = vec![
            format!("--endpoint=unix://{}", socket.display()).into(),
            format!("--node-id={}", config.node_id).into(),
            format!("--state-dir={}", config.state_dir.display()).into(),
            format!("--local-state-dir={}", config.local_state_dir.display()).into(),
        ];
        if let Some(rbd) = &config.rbd {
            args.push(format!("--rbd-cluster-id={}", rbd.cluster_id).into());
            args.push(format!("--rbd-ceph-conf={}", rbd.ceph_conf.display()).into());
            args.push(format!("--rbd-keyring={}", rbd.keyring.display()).into());
            args.push(format!("--rbd-user={}", rbd.user).into());
        }
        let binary = built_binary("swell-node")?;
        let child = spawn(&binary, &args, env)?;
        let mut process = NodeProcess { child, binary, args, socket };
        process.wait_ready().await?;
        Ok(process)
    }

    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        wait_until_serving(&mut self.child, &self.socket, "swell-node").await
    }

    /// A fresh client connection.
    pub async fn client(&self) -> Result<NodeClient<Channel>, HarnessError> {
        Ok(NodeClient::new(csi_endpoint::connect(&self.socket).await?))
    }

    /// SIGKILL to the node's process group: no cleanup runs anywhere in it.
    pub async fn kill(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.wait().await;
    }

    /// Starts the node again over the same state, with `env` this time.
    pub async fn restart(&mut self, env: &[(&str, OsString)]) -> Result<(), HarnessError> {
        self.kill().await;
        // The killed process could not remove its socket.
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn(&self.binary, &self.args, env)?;
        self.wait_ready().await
    }
}

fn spawn(binary: &PathBuf, args: &[OsString], env: &[(&str, OsString)]) -> Result<Child, HarnessError> {
    Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own group, so a kill takes the tools it runs with it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HarnessError::Node(format!("spawn {}: {e}", binary.display())))
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
