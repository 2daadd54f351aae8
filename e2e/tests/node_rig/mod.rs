//! The node test rig: a local backend and the node's Identity + Node
//! services on a real Unix socket in a fresh temp dir, a client over that
//! socket, and a guard that unmounts and detaches whatever a test left
//! behind, also when it fails half-way.
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::PathBuf;

use csi_proto::v1::node_client::NodeClient;
use swell_e2e::harness::NodeUnderTest;
use swell_e2e::host;
use swell_e2e::node_process::NodeProcess;
use swell_e2e::sweep::sweep;
use swell_local::{LocalBackend, LocalConfig};
use swell_storage::{Backend, VolumeId};
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};
use tonic::transport::Channel;

/// The node under test: in this process, or swell-node as a process (whose
/// environment a test chooses, e.g. a PATH with stand-in tools).
enum Served {
    InProcess(NodeUnderTest),
    Process(NodeProcess),
}

/// Loop devices are few and the machine small: node tests run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

pub(crate) struct Rig {
    pub backend: LocalBackend,
    pub node: NodeClient<Channel>,
    pub dir: PathBuf,
    config: swell_node::NodeConfig,
    server: Option<Served>,
    _serial: MutexGuard<'static, ()>,
    _tmp: TempDir,
}

/// A rig, or `None` (with a note) where loop devices and mounts are unavailable.
pub(crate) async fn rig(test: &str) -> Option<Rig> {
    rig_growing_every(test, None).await
}

/// A rig whose node grows staged volumes in the background every `interval`
/// (`None`: it leaves that to NodeExpandVolume, as [`rig`] does).
pub(crate) async fn rig_growing_every(test: &str, interval: Option<std::time::Duration>) -> Option<Rig> {
    if host::cannot_run(test, false, &["losetup", "mkfs.xfs", "xfs_growfs", "mkfs.btrfs", "btrfs", "mkfs.ext4", "resize2fs", "mount", "umount"]) {
        return None;
    }
    let serial = SERIAL.lock().await;
    let tmp = tempfile::Builder::new().prefix("swell-node-").tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path().to_owned();
    let mut config = node_config(&dir);
    config.grow_on_backend_change = interval;
    let backend = LocalBackend::open(&LocalConfig::new(&config.local_state_dir, dir.join("controller"))).unwrap();
    let server = NodeUnderTest::serve(&dir.join("node.sock"), &config).await.unwrap();
    let node = server.client.clone();
    Some(Rig { backend, node, dir, config, server: Some(Served::InProcess(server)), _serial: serial, _tmp: tmp })
}

fn node_config(dir: &std::path::Path) -> swell_node::NodeConfig {
    let mut config = swell_node::NodeConfig::new("node-test");
    config.state_dir = dir.join("node");
    config.local_state_dir = dir.join("local");
    config
}

impl Rig {
    /// Creates a local volume of `bytes` (under the rig's directory, so the guard detaches it).
    pub(crate) async fn volume(&mut self, name: &str, bytes: u64) -> VolumeId {
        self.backend.create_volume(name, bytes, &swell_storage::Placement::default()).await.unwrap().info().id.clone()
    }

    pub(crate) fn image(&self, id: &VolumeId) -> PathBuf {
        swell_local::image_path(self.backend.state_dir(), id)
    }

    /// A path under the rig's directory, as a string for requests.
    pub(crate) fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    pub(crate) async fn grow(&self, id: &VolumeId, bytes: u64) {
        assert_eq!(self.backend.grow_volume(id, bytes).await.unwrap(), bytes);
    }

    /// Serves the node as a swell-node process with `env` added to its
    /// environment instead of in this process (same state and socket).
    pub(crate) async fn serve_as_process(&mut self, env: &[(&str, OsString)]) {
        drop(self.server.take());
        let socket = self.dir.join("node.sock");
        let _ = std::fs::remove_file(&socket);
        let process = NodeProcess::start(&self.config, socket, env).await.unwrap();
        self.node = process.client().await.unwrap();
        self.server = Some(Served::Process(process));
    }

    /// Kills the node process (SIGKILL to its group) and starts it again
    /// over the same state with `env`.
    pub(crate) async fn restart_process(&mut self, env: &[(&str, OsString)]) {
        let Some(Served::Process(process)) = &mut self.server else { panic!("the node is not served as a process") };
        process.restart(env).await.unwrap();
        self.node = process.client().await.unwrap();
    }

    /// Where the in-process node serves `/metrics`.
    pub(crate) fn metrics_address(&self) -> std::net::SocketAddr {
        let Some(Served::InProcess(node)) = &self.server else { panic!("the node is not served in this process") };
        node.metrics
    }

    pub(crate) fn staging_record_exists(&self, id: &VolumeId) -> bool {
        self.dir.join("node/staged").join(format!("{id}.json")).exists()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.server.take());
        sweep(&self.dir);
    }
}

impl Rig {
    /// Whether resize2fs can grow a mounted ext4 here (needs CAP_SYS_RESOURCE).
    pub(crate) fn online_ext4_grow_works(&mut self) -> bool {
        host::online_ext4_grow_permitted(&self.dir)
    }
}
