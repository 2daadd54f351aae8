//! The node plugin killed and restarted, on local volumes, with swell-node
//! and swell-controller as real processes (SIGKILL, no cleanup):
//! - killed with a volume staged and published: after the restart the
//!   volume expands (ControllerExpand + NodeExpand) and unpublish/unstage
//!   leave nothing behind;
//! - killed in the middle of NodeExpandVolume (a stand-in grow tool holds
//!   the grow step open until the kill lands, then the kill takes the tool
//!   too, before the real tool runs or with the filesystem grown part way):
//!   the filesystem is where the kill left it (its old size, or between the
//!   old and the new), checks clean unmounted as the kill left it
//!   (`xfs_repair -n`, `btrfs check --readonly`, `e2fsck -f -n`), and after
//!   the restart the next stage, publish and NodeExpandVolume finish the grow
//!   and it checks clean again. ext4 runs where online resize2fs is permitted,
//!   as in the VM lane.
//!
//! Needs root and the workspace binaries (e2e/test.sh builds them).
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::node_client::NodeClient;
use swell_e2e::host::{self, check_filesystem, statvfs_total};
use swell_e2e::node_process::{KillAt, NodeProcess, grow_tool_stand_in};
use swell_e2e::process::ControllerProcess;
use swell_e2e::requests::{self, mount_capability, total_bytes};
use swell_e2e::stream_io;
use swell_e2e::sweep::{MountSweeper, leftovers};
use tonic::transport::Channel;

const MIB: i64 = swell_storage::units::MIB as i64;

/// A controller and a node as processes over one directory.
struct Plant {
    dir: PathBuf,
    controller: ControllerProcess,
    node: NodeProcess,
    config: swell_node::NodeConfig,
    _sweeper: MountSweeper,
    _tmp: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// The machine is small: these tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn plant(test: &str, node_env: &[(&str, OsString)]) -> Option<Plant> {
    if !host::is_root() {
        host::note_skip(test, "needs root for loop devices and mounts");
        return None;
    }
    let serial = SERIAL.lock().await;
    let tmp = tempfile::Builder::new().prefix("swell-restart-").tempdir_in("/var/tmp").unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    let local = dir.join("local");
    let controller = ControllerProcess::start(&dir, &local).await.unwrap();
    let mut config = swell_node::NodeConfig::new("restart-node");
    config.state_dir = dir.join("node");
    config.local_state_dir = local;
    let node = NodeProcess::start(&config, dir.join("node.sock"), node_env).await.unwrap();
    Some(Plant { _sweeper: MountSweeper(dir.clone()), dir, controller, node, config, _tmp: tmp, _serial: serial })
}

impl Plant {
    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    async fn controller(&self) -> ControllerClient<Channel> {
        self.controller.client().await.unwrap()
    }

    async fn node(&self) -> NodeClient<Channel> {
        self.node.client().await.unwrap()
    }

    fn backing_file(&self, id: &str) -> PathBuf {
        swell_local::image_path(&self.config.local_state_dir, &id.parse().unwrap())
    }

    /// Creates, stages and publishes a volume; writes records into it.
    async fn volume_in_use(&self, name: &str, fs: &str, bytes: i64) -> String {
        let created = self.controller().await.create_volume(requests::create_volume(name, bytes, mount_capability(fs))).await.unwrap();
        let id = created.into_inner().volume.unwrap().volume_id;
        let mut node = self.node().await;
        let (staging, target) = (self.path("staging"), self.path("pods/p/vol"));
        node.node_stage_volume(requests::stage(&id, &staging, mount_capability(fs))).await.unwrap();
        node.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability(fs), false)).await.unwrap();
        let data = self.dir.join("pods/p/vol/data");
        assert_eq!(stream_io::write_until(&data, &self.dir.join("no-stop"), &self.dir.join("progress"), 64).records, 64);
        id
    }

    async fn total_bytes(&self, id: &str) -> u64 {
        let stats = self.node().await.node_get_volume_stats(requests::stats(id, &self.path("pods/p/vol"))).await.unwrap().into_inner();
        total_bytes(&stats).unwrap() as u64
    }

    /// NodeExpandVolume to `bytes`; then the filesystem fills it and the data is intact.
    async fn expand_and_check(&self, id: &str, fs: &str, bytes: i64) {
        let expand = requests::node_expand(id, &self.path("pods/p/vol"), &self.path("staging"), bytes, mount_capability(fs));
        let grown = self.node().await.node_expand_volume(expand).await.unwrap().into_inner();
        assert_eq!(grown.capacity_bytes, bytes);
        let total = self.total_bytes(id).await;
        assert!(total > bytes as u64 * 85 / 100, "the filesystem grew to {total} of {bytes}");
        stream_io::verify(&self.dir.join("pods/p/vol/data"), 64).unwrap();
    }

    /// Unpublishes and unstages; nothing of the volume may be left.
    async fn tear_down(&self, id: &str) {
        let mut node = self.node().await;
        node.node_unpublish_volume(requests::unpublish(id, &self.path("pods/p/vol"))).await.unwrap();
        node.node_unstage_volume(requests::unstage(id, &self.path("staging"))).await.unwrap();
        assert_eq!(leftovers(&self.dir), Vec::<String>::new(), "nothing attached after unstage");
        assert!(!self.dir.join("node/staged").join(format!("{id}.json")).exists(), "staging record removed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_a_published_volume_expands_and_cleans_up_after_restart() {
    let Some(mut plant) = plant("node_restart_published", &[]).await else { return };
    let id = plant.volume_in_use("pvc-restart", "xfs", 320 * MIB).await;
    plant.node.restart(&[]).await.unwrap();
    // kubelet re-issues stage and publish after a plugin restart; both must
    // find the work done.
    let mut node = plant.node().await;
    let (staging, target) = (plant.path("staging"), plant.path("pods/p/vol"));
    node.node_stage_volume(requests::stage(&id, &staging, mount_capability("xfs"))).await.unwrap();
    node.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    assert_eq!(host::loop_devices_for(&plant.backing_file(&id)).len(), 1, "one loop device, found again");
    let grown = plant.controller().await.controller_expand_volume(requests::controller_expand(&id, 640 * MIB, None)).await.unwrap();
    assert!(grown.into_inner().node_expansion_required);
    plant.expand_and_check(&id, "xfs", 640 * MIB).await;
    plant.tear_down(&id).await;
}

/// `test` names the test in skips (ext4's are run by the VM lane where this
/// host cannot grow ext4 online).
async fn killed_mid_expand(test: &str, fs: &str, at: KillAt) {
    if !host::is_root() {
        host::note_skip(test, "needs root for loop devices and mounts");
        return;
    }
    let stand_in_dir = tempfile::Builder::new().prefix("swell-stand-in-").tempdir_in("/var/tmp").unwrap();
    if fs == "ext4" && !host::online_ext4_grow_permitted(stand_in_dir.path()) {
        host::note_skip(test, host::ONLINE_EXT4_GROW_NOT_PERMITTED);
        return;
    }
    let (bin, mark) = grow_tool_stand_in(stand_in_dir.path(), fs, at).unwrap();
    let path: OsString = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()).into();
    let Some(mut plant) = plant(test, &[("PATH", path)]).await else { return };
    let id = plant.volume_in_use(&format!("pvc-mid-{fs}"), fs, 320 * MIB).await;
    let before = plant.total_bytes(&id).await;
    plant.controller().await.controller_expand_volume(requests::controller_expand(&id, 640 * MIB, None)).await.unwrap();

    let mut node = plant.node().await;
    let expand = requests::node_expand(&id, &plant.path("pods/p/vol"), &plant.path("staging"), 640 * MIB, mount_capability(fs));
    let call = tokio::spawn(async move { node.node_expand_volume(expand).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !mark.exists() {
        assert!(tokio::time::Instant::now() < deadline, "NodeExpandVolume never reached the grow step");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    plant.node.kill().await;
    let answer = tokio::time::timeout(Duration::from_secs(30), call).await.unwrap().unwrap();
    assert!(answer.is_err(), "a node killed mid-expansion answered {answer:?}");
    let at_kill = statvfs_total(&plant.dir.join("pods/p/vol")).unwrap();
    println!("{fs}, killed {at:?}: filesystem {before} bytes before the expansion, {at_kill} at the kill");
    match at {
        KillAt::BeforeTheTool => assert_eq!(at_kill, before, "the kill landed before the grow"),
        KillAt::PartWay(_) => assert!(at_kill > before && at_kill < (640 * MIB) as u64 * 85 / 100, "the kill landed part way: {before} < {at_kill} < 640 MiB"),
        KillAt::AfterTheToolStarted => {
            assert!(at_kill >= before && at_kill <= (640 * MIB) as u64, "the kill landed once the tool started: {before} <= {at_kill} <= 640 MiB")
        }
    }
    // The state the kill left, checked before any retry: unmounted (as a
    // reboot would leave it) and checked read-only.
    for mount in ["pods/p/vol", "staging"] {
        let status = std::process::Command::new("umount").arg(plant.path(mount)).status().unwrap();
        assert!(status.success(), "umount {mount}");
    }
    check_filesystem(fs, &plant.backing_file(&id)).unwrap_or_else(|e| panic!("{fs} as the kill left it: {e}"));

    plant.node.restart(&[]).await.unwrap();
    let mut node = plant.node().await;
    let (staging, target) = (plant.path("staging"), plant.path("pods/p/vol"));
    node.node_stage_volume(requests::stage(&id, &staging, mount_capability(fs))).await.unwrap();
    node.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability(fs), false)).await.unwrap();
    plant.expand_and_check(&id, fs, 640 * MIB).await;
    let file = plant.backing_file(&id);
    plant.tear_down(&id).await;
    check_filesystem(fs, &file).unwrap();
    println!("{fs} check of the unmounted filesystem: clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_killed_before_the_grow_tool_runs_is_grown_by_the_next_expand() {
    killed_mid_expand("xfs_killed_before_the_grow_tool_runs_is_grown_by_the_next_expand", "xfs", KillAt::BeforeTheTool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_killed_with_the_grow_tool_part_way_checks_clean_and_is_grown_by_the_next_expand() {
    killed_mid_expand("xfs_killed_with_the_grow_tool_part_way_checks_clean_and_is_grown_by_the_next_expand", "xfs", KillAt::PartWay(480 * MIB as u64)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_killed_before_the_grow_tool_runs_is_grown_by_the_next_expand() {
    killed_mid_expand("btrfs_killed_before_the_grow_tool_runs_is_grown_by_the_next_expand", "btrfs", KillAt::BeforeTheTool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_killed_with_the_grow_tool_part_way_checks_clean_and_is_grown_by_the_next_expand() {
    killed_mid_expand("btrfs_killed_with_the_grow_tool_part_way_checks_clean_and_is_grown_by_the_next_expand", "btrfs", KillAt::PartWay(480 * MIB as u64))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_killed_before_the_grow_tool_runs_is_grown_by_the_next_expand() {
    killed_mid_expand("ext4_killed_before_the_grow_tool_runs_is_grown_by_the_next_expand", "ext4", KillAt::BeforeTheTool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_killed_once_the_grow_tool_started_is_grown_by_the_next_expand() {
    killed_mid_expand("ext4_killed_once_the_grow_tool_started_is_grown_by_the_next_expand", "ext4", KillAt::AfterTheToolStarted).await;
}
