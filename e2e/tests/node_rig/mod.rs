//! The node test rig: a local backend and the node's Identity + Node
//! services on a real Unix socket in a fresh temp dir, a client over that
//! socket, and a guard that unmounts and detaches whatever a test left
//! behind, also when it fails half-way.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use csi_proto::v1::node_client::NodeClient;
use swell_e2e::harness::NodeUnderTest;
use swell_e2e::host;
use swell_e2e::sweep::sweep;
use swell_local::{LocalBackend, LocalConfig};
use swell_storage::{Backend, VolumeId};
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};
use tonic::transport::Channel;

/// Loop devices are few and the machine small: node tests run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

pub(crate) struct Rig {
    pub backend: LocalBackend,
    pub node: NodeClient<Channel>,
    pub dir: PathBuf,
    server: Option<NodeUnderTest>,
    _serial: MutexGuard<'static, ()>,
    _tmp: TempDir,
}

/// A rig, or `None` (with a note) where loop devices and mounts are unavailable.
pub(crate) async fn rig(test: &str) -> Option<Rig> {
    if host::cannot_run(test, false, &["losetup", "mkfs.xfs", "xfs_growfs", "mkfs.btrfs", "btrfs", "mkfs.ext4", "resize2fs", "mount", "umount"]) {
        return None;
    }
    let serial = SERIAL.lock().await;
    let tmp = tempfile::Builder::new().prefix("swell-node-").tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path().to_owned();
    let mut config = swell_node::NodeConfig::new("node-test");
    config.state_dir = dir.join("node");
    config.local_state_dir = dir.join("local");
    let backend = LocalBackend::open(&LocalConfig::new(&config.local_state_dir, dir.join("controller"))).unwrap();
    let server = NodeUnderTest::serve(&dir.join("node.sock"), &config).await.unwrap();
    let node = server.client.clone();
    Some(Rig { backend, node, dir, server: Some(server), _serial: serial, _tmp: tmp })
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

/// Runs a command in a test, panicking with its stderr on failure.
pub(crate) fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Rig {
    /// Whether resize2fs can grow a mounted ext4 here (needs CAP_SYS_RESOURCE).
    pub(crate) fn online_ext4_grow_works(&mut self) -> bool {
        let image = self.dir.join("ext4-probe.img");
        let mount_point = self.dir.join("ext4-probe");
        let img = image.display().to_string();
        let mp = mount_point.display().to_string();
        std::fs::create_dir_all(&mount_point).unwrap();
        sh("truncate", &["-s", "64M", &img]);
        let device = sh("losetup", &["--find", "--show", &img]).trim().to_owned();
        sh("mkfs.ext4", &["-q", &device]);
        sh("mount", &[&device, &mp]);
        sh("truncate", &["-s", "128M", &img]);
        sh("losetup", &["-c", &device]);
        let works = Command::new("resize2fs").arg(&device).output().map(|o| o.status.success()).unwrap_or(false);
        let _ = Command::new("umount").arg(&mp).status();
        let _ = Command::new("losetup").arg("-d").arg(&device).status();
        let _ = std::fs::remove_file(&image);
        works
    }
}
