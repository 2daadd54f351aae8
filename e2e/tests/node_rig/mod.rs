//! The node test rig: a local backend and the node's Identity + Node
//! services on a real Unix socket in a fresh temp dir, a client over that
//! socket, and a guard that unmounts and detaches whatever a test left
//! behind, also when it fails half-way.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use csi_proto::v1::node_client::NodeClient;
use swell_e2e::host;
use swell_storage::local::LocalBackend;
use swell_storage::{Backend, VolumeId};
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard, oneshot};
use tonic::transport::Channel;

pub const MIB: u64 = 1 << 20;

/// Loop devices are few and the machine small: node tests run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

pub struct Rig {
    pub backend: LocalBackend,
    pub node: NodeClient<Channel>,
    pub dir: PathBuf,
    images: Vec<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    _serial: MutexGuard<'static, ()>,
    _tmp: TempDir,
}

/// A rig, or `None` (with a note) where loop devices and mounts are unavailable.
pub async fn rig(test: &str) -> Option<Rig> {
    if !host::is_root() {
        host::note_skip(test, "needs root for loop devices and mounts");
        eprintln!("SKIP {test}: needs root");
        return None;
    }
    let serial = SERIAL.lock().await;
    let tmp = tempfile::Builder::new().prefix("swell-node-").tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path().to_owned();
    let mut config = swell_node::NodeConfig::new("node-test");
    config.state_dir = dir.join("node");
    config.local_state_dir = dir.join("local");
    let socket = dir.join("node.sock");
    let backend = LocalBackend::open(&config.local_state_dir, None).unwrap();
    let router = swell_node::server::router(&config).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = socket.clone();
    tokio::spawn(async move {
        let _ = csi_endpoint::serve(&served, router, async {
            let _ = stopped.await;
        })
        .await;
    });
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let node = NodeClient::new(csi_endpoint::connect(&socket).await.unwrap());
    Some(Rig { backend, node, dir, images: Vec::new(), stop: Some(stop), _serial: serial, _tmp: tmp })
}

impl Rig {
    /// Creates a local volume of `bytes`; the guard will detach its file.
    pub async fn volume(&mut self, name: &str, bytes: u64) -> VolumeId {
        let id = self.backend.create_volume(name, bytes, &BTreeMap::new()).await.unwrap().info().id.clone();
        self.images.push(self.image(&id));
        id
    }

    pub fn image(&self, id: &VolumeId) -> PathBuf {
        swell_storage::local::image_path(self.backend.state_dir(), id)
    }

    /// A path under the rig's directory, as a string for requests.
    pub fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    pub async fn grow(&self, id: &VolumeId, bytes: u64) {
        assert_eq!(self.backend.grow_volume(id, bytes).await.unwrap(), bytes);
    }

    pub fn staging_record_exists(&self, id: &VolumeId) -> bool {
        self.dir.join("node/staged").join(format!("{id}.json")).exists()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Deepest mounts first, so binds go before the filesystems under them.
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(|p| p.replace("\\040", " ")))
            .filter(|p| Path::new(p).starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for mount in mounts {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
        for image in &self.images {
            for device in host::loop_devices_for(image) {
                let _ = Command::new("losetup").arg("-d").arg(&device).status();
            }
        }
    }
}

/// Runs a command in a test, panicking with its stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Rig {
    /// Whether resize2fs can grow a mounted ext4 here (needs CAP_SYS_RESOURCE).
    pub fn online_ext4_grow_works(&mut self) -> bool {
        let image = self.dir.join("ext4-probe.img");
        let mount_point = self.dir.join("ext4-probe");
        self.images.push(image.clone());
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
