//! The snapshot and clone scenarios, written once and run on
//! every backend (`e2e/tests/snapshots_local.rs`, `rbd_snapshots.rs`):
//! swell-controller and swell-node as real processes (so a test can kill
//! the node), driven over gRPC with real devices, filesystems and mounts.
//!
//! - the data: a restore has the snapshot's data, a clone its source's, and
//!   each then changes apart from its source;
//! - larger than the source: restored at twice the size, the first stage
//!   grows the filesystem to the device (xfs and btrfs online after mount,
//!   ext4 offline before), and a raw block volume shows the size; a node
//!   killed in that first stage finishes the grow at the next one;
//! - bad input: unknown source volume or snapshot, a reused name, a
//!   smaller size: refused with the spec's code, and nothing changes;
//! - growth: a volume with a snapshot and a clone grows, and its clone
//!   too, each apart from the others.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_content_source::{SnapshotSource, Type, VolumeSource};
use csi_proto::v1::*;
use swell_node::NodeConfig;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::host;
use crate::node_process::{KillAt, NodeProcess, grow_tool_stand_in};
use crate::process::ControllerProcess;
use crate::requests::{self, block_capability, mount_capability};
use crate::sweep::MountSweeper;

use swell_storage::units::{GIB, MIB};

/// A controller and a node as processes over one directory, and the
/// StorageClass parameters that choose the backend under test.
pub struct Plant {
    /// The directory holding state, sockets, staging and target paths.
    pub dir: PathBuf,
    /// The controller process.
    pub controller: ControllerProcess,
    /// The node process.
    pub node: NodeProcess,
    parameters: HashMap<String, String>,
    _sweeper: MountSweeper,
}

/// How to start a [`Plant`] on one backend.
#[derive(Clone)]
pub struct PlantConfig {
    /// Flags for swell-controller beyond its state directories.
    pub controller_args: Vec<String>,
    /// Its environment beyond the test's (`FAILPOINTS` runs the failpoint build).
    pub controller_env: Vec<(String, String)>,
    /// The node's configuration (its state directories are set under the plant's).
    pub node: NodeConfig,
    /// StorageClass parameters of every volume the scenarios create.
    pub parameters: HashMap<String, String>,
}

impl Plant {
    /// Starts both processes under `dir` (canonicalised), the node with
    /// `node_env` added to its environment.
    pub async fn start(dir: &Path, config: &PlantConfig, node_env: &[(&str, OsString)]) -> Plant {
        let dir = std::fs::canonicalize(dir).expect("canonical plant directory");
        let sweeper = MountSweeper(dir.clone());
        let local = dir.join("local");
        let controller = ControllerProcess::start_with_env(&dir, &local, config.controller_args.clone(), config.controller_env.clone())
            .await
            .expect("start swell-controller");
        let mut node_config = config.node.clone();
        node_config.state_dir = dir.join("node");
        node_config.local_state_dir = local;
        let node = NodeProcess::start(&node_config, dir.join("node.sock"), node_env).await.expect("start swell-node");
        Plant { dir, controller, node, parameters: config.parameters.clone(), _sweeper: sweeper }
    }

    /// A controller client.
    pub async fn controller(&self) -> ControllerClient<Channel> {
        self.controller.client().await.expect("controller client")
    }

    /// A node client.
    pub async fn node(&self) -> NodeClient<Channel> {
        self.node.client().await.expect("node client")
    }

    /// A path under the plant's directory, as requests carry it.
    pub fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    fn request(&self, name: &str, bytes: u64, capability: VolumeCapability, source: Option<Type>) -> CreateVolumeRequest {
        let mut req = requests::create_volume(name, bytes as i64, capability);
        req.parameters = self.parameters.clone();
        req.volume_content_source = source.map(|t| VolumeContentSource { r#type: Some(t) });
        req
    }

    /// CreateVolume, blank, repeated while it answers ABORTED as the
    /// provisioner does (60 s at most): a controller just started may hold
    /// a volume of that name left by an earlier test for a moment.
    pub async fn create(&self, name: &str, bytes: u64, capability: VolumeCapability) -> Volume {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.controller().await.create_volume(self.request(name, bytes, capability.clone(), None)).await {
                Ok(answer) => return answer.into_inner().volume.expect("volume"),
                Err(s) if s.code() == Code::Aborted && Instant::now() < deadline => {
                    eprintln!("create {name}: {} (retrying, as the provisioner would)", s.message());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(s) => panic!("create {name}: {s:?}"),
            }
        }
    }

    /// CreateVolume from a snapshot.
    pub async fn restore(&self, name: &str, bytes: u64, capability: VolumeCapability, snapshot_id: &str) -> Result<Volume, Status> {
        let source = Type::Snapshot(SnapshotSource { snapshot_id: snapshot_id.to_owned() });
        Ok(self.controller().await.create_volume(self.request(name, bytes, capability, Some(source))).await?.into_inner().volume.expect("volume"))
    }

    /// CreateVolume from a volume.
    pub async fn clone_volume(&self, name: &str, bytes: u64, capability: VolumeCapability, volume_id: &str) -> Result<Volume, Status> {
        let source = Type::Volume(VolumeSource { volume_id: volume_id.to_owned() });
        Ok(self.controller().await.create_volume(self.request(name, bytes, capability, Some(source))).await?.into_inner().volume.expect("volume"))
    }

    /// CreateSnapshot, repeated as the snapshot sidecar does until the
    /// snapshot is ready to use (60 s at most).
    pub async fn snapshot(&self, name: &str, source: &str) -> Result<Snapshot, Status> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = CreateSnapshotRequest { source_volume_id: source.to_owned(), name: name.to_owned(), ..Default::default() };
            let snapshot = self.controller().await.create_snapshot(req).await?.into_inner().snapshot.expect("snapshot");
            if snapshot.ready_to_use {
                return Ok(snapshot);
            }
            assert!(Instant::now() < deadline, "snapshot {name} not ready after 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// ListSnapshots, every page.
    pub async fn snapshots(&self) -> Vec<Snapshot> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let req = ListSnapshotsRequest { max_entries: 2, starting_token: token, ..Default::default() };
            let page = self.controller().await.list_snapshots(req).await.expect("list snapshots").into_inner();
            all.extend(page.entries.into_iter().filter_map(|e| e.snapshot));
            if page.next_token.is_empty() {
                return all;
            }
            token = page.next_token;
        }
    }

    /// ListVolumes, every entry's id.
    pub async fn volume_ids(&self) -> Vec<String> {
        let listed = self.controller().await.list_volumes(ListVolumesRequest::default()).await.expect("list volumes").into_inner();
        listed.entries.into_iter().filter_map(|e| e.volume.map(|v| v.volume_id)).collect()
    }

    /// Stages and publishes `id` under `slot/`; returns the target path.
    pub async fn attach(&self, id: &str, slot: &str, capability: VolumeCapability) -> Result<PathBuf, Status> {
        let mut node = self.node().await;
        let (staging, target) = (self.path(&format!("{slot}/staging")), self.path(&format!("{slot}/target")));
        node.node_stage_volume(requests::stage(id, &staging, capability.clone())).await?;
        node.node_publish_volume(requests::publish(id, &staging, &target, capability, false)).await?;
        Ok(PathBuf::from(target))
    }

    /// Unpublishes and unstages `id` from `slot/`.
    pub async fn detach(&self, id: &str, slot: &str) {
        let mut node = self.node().await;
        node.node_unpublish_volume(requests::unpublish(id, &self.path(&format!("{slot}/target")))).await.expect("unpublish");
        node.node_unstage_volume(requests::unstage(id, &self.path(&format!("{slot}/staging")))).await.expect("unstage");
    }

    /// DeleteVolume.
    pub async fn delete(&self, id: &str) {
        self.controller().await.delete_volume(DeleteVolumeRequest { volume_id: id.to_owned(), ..Default::default() }).await.expect("delete volume");
    }

    /// DeleteSnapshot.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), Status> {
        self.controller().await.delete_snapshot(DeleteSnapshotRequest { snapshot_id: id.to_owned(), ..Default::default() }).await.map(drop)
    }
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::File::open(path).and_then(|f| f.sync_all()).unwrap_or_else(|e| panic!("sync {}: {e}", path.display()));
}

fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Write, snapshot, overwrite, restore: the restore holds the old data; a
/// clone holds the new; then the clone and its source change apart.
pub async fn restore_has_old_data_and_clone_changes_apart(plant: &Plant, fs: &str) {
    // The smallest size every filesystem formats (mkfs.xfs wants 300 MB).
    const SIZE: u64 = 320 * MIB;
    let cap = mount_capability(fs);
    let source = plant.create("data-source", SIZE, cap.clone()).await;
    let source_dir = plant.attach(&source.volume_id, "source", cap.clone()).await.expect("attach the source");
    write_file(&source_dir.join("file"), "old");
    let snapshot = plant.snapshot("data-snap", &source.volume_id).await.expect("snapshot");
    assert_eq!((snapshot.source_volume_id.as_str(), snapshot.size_bytes as u64), (source.volume_id.as_str(), SIZE));
    write_file(&source_dir.join("file"), "new");

    let restored = plant.restore("data-restored", SIZE, cap.clone(), &snapshot.snapshot_id).await.expect("restore");
    assert_eq!(restored.capacity_bytes as u64, SIZE);
    assert!(matches!(restored.content_source.as_ref().and_then(|s| s.r#type.as_ref()), Some(Type::Snapshot(s)) if s.snapshot_id == snapshot.snapshot_id));
    let restored_dir = plant.attach(&restored.volume_id, "restored", cap.clone()).await.expect("attach the restore");
    assert_eq!(read_file(&restored_dir.join("file")), "old", "the restore holds the data of the snapshot's moment");

    let clone = plant.clone_volume("data-clone", SIZE, cap.clone(), &source.volume_id).await.expect("clone");
    let clone_dir = plant.attach(&clone.volume_id, "clone", cap.clone()).await.expect("attach the clone");
    assert_eq!(read_file(&clone_dir.join("file")), "new", "the clone holds its source's data");
    write_file(&clone_dir.join("file"), "clone");
    write_file(&source_dir.join("file"), "source");
    write_file(&restored_dir.join("file"), "restored");
    assert_eq!(
        [read_file(&source_dir.join("file")), read_file(&clone_dir.join("file")), read_file(&restored_dir.join("file"))],
        ["source", "clone", "restored"],
        "each changes apart from the others"
    );
    for (volume, slot) in [(&clone, "clone"), (&restored, "restored"), (&source, "source")] {
        plant.detach(&volume.volume_id, slot).await;
    }
    plant.delete(&source.volume_id).await;
    // Snapshots are independent of their volume: listed and restorable after it went.
    assert!(plant.snapshots().await.iter().any(|s| s.snapshot_id == snapshot.snapshot_id), "listed after its volume was deleted");
    let again = plant.restore("data-after-delete", SIZE, cap.clone(), &snapshot.snapshot_id).await.expect("restore after the source went");
    let again_dir = plant.attach(&again.volume_id, "again", cap).await.expect("attach");
    assert_eq!(read_file(&again_dir.join("file")), "old");
    plant.detach(&again.volume_id, "again").await;
    plant.delete_snapshot(&snapshot.snapshot_id).await.expect("delete the snapshot");
    for volume in [&again, &clone, &restored] {
        plant.delete(&volume.volume_id).await;
    }
}

/// ControllerExpandVolume then NodeExpandVolume of the volume attached at
/// `slot/`, as the resizer and kubelet send them.
async fn grow_attached(plant: &Plant, volume_id: &str, slot: &str, bytes: u64, fs: &str) {
    let grown =
        plant.controller().await.controller_expand_volume(requests::controller_expand(volume_id, bytes as i64, None)).await.expect("ControllerExpandVolume");
    assert_eq!(grown.into_inner().capacity_bytes as u64, bytes, "{slot}: the controller's size");
    let (staging, target) = (plant.path(&format!("{slot}/staging")), plant.path(&format!("{slot}/target")));
    let expand = requests::node_expand(volume_id, &target, &staging, bytes as i64, mount_capability(fs));
    assert_eq!(plant.node().await.node_expand_volume(expand).await.expect("NodeExpandVolume").into_inner().capacity_bytes as u64, bytes);
    let total = host::statvfs_total(Path::new(&target)).expect("statvfs");
    assert!(total > bytes * 85 / 100 && total <= bytes, "{slot}: the filesystem is {total} bytes on a device of {bytes}");
}

/// A volume with a snapshot and a clone grows, and so does its clone: each
/// grows apart (the snapshot keeps its size and its data, the clone and
/// the source their data), and a snapshot of the grown source has the new
/// size.
pub async fn grow_with_snapshots_and_clones(plant: &Plant, fs: &str) {
    const SIZE: u64 = 320 * MIB;
    let cap = mount_capability(fs);
    let source = plant.create("grow-source", SIZE, cap.clone()).await;
    let source_dir = plant.attach(&source.volume_id, "source", cap.clone()).await.expect("attach the source");
    write_file(&source_dir.join("file"), "old");
    let snapshot = plant.snapshot("grow-snap", &source.volume_id).await.expect("snapshot");
    let clone = plant.clone_volume("grow-clone", SIZE, cap.clone(), &source.volume_id).await.expect("clone");
    let clone_dir = plant.attach(&clone.volume_id, "clone", cap.clone()).await.expect("attach the clone");

    grow_attached(plant, &source.volume_id, "source", 2 * SIZE, fs).await;
    grow_attached(plant, &clone.volume_id, "clone", 3 * SIZE / 2, fs).await;
    assert_eq!([read_file(&source_dir.join("file")), read_file(&clone_dir.join("file"))], ["old", "old"], "data intact across the grows");
    write_file(&clone_dir.join("file"), "clone");
    assert_eq!(read_file(&source_dir.join("file")), "old", "the grown clone changes apart from its source");

    let kept = plant.snapshots().await.into_iter().find(|s| s.snapshot_id == snapshot.snapshot_id).expect("the snapshot is listed");
    assert_eq!(kept.size_bytes as u64, SIZE, "the snapshot keeps its size when its source grows");
    let restored = plant.restore("grow-restored", SIZE, cap.clone(), &snapshot.snapshot_id).await.expect("restore");
    let restored_dir = plant.attach(&restored.volume_id, "restored", cap.clone()).await.expect("attach the restore");
    assert_eq!(read_file(&restored_dir.join("file")), "old");
    let restored_total = host::statvfs_total(&restored_dir).expect("statvfs");
    assert!(restored_total <= SIZE, "the restore of the old snapshot is {restored_total} bytes");
    let after = plant.snapshot("grow-snap-after", &source.volume_id).await.expect("snapshot of the grown source");
    assert_eq!(after.size_bytes as u64, 2 * SIZE, "a snapshot of the grown source has its new size");

    for (volume, slot) in [(&restored, "restored"), (&clone, "clone"), (&source, "source")] {
        plant.detach(&volume.volume_id, slot).await;
    }
    for id in [&after.snapshot_id, &snapshot.snapshot_id] {
        plant.delete_snapshot(id).await.expect("delete the snapshot");
    }
    for volume in [&restored, &clone, &source] {
        plant.delete(&volume.volume_id).await;
    }
}

/// What a restore-larger run measured, for the report.
#[derive(Debug, Clone)]
pub struct Grown {
    /// The filesystem (or `block`).
    pub fs: String,
    /// The size the filesystem (or device) reports after the first stage.
    pub bytes: u64,
    /// How long that first NodeStageVolume took.
    pub stage: Duration,
}

/// 1 GiB with data, snapshot, restore at 2 GiB, stage: the filesystem
/// reports about 2 GiB and the data verifies. With `kill_at`, the node is
/// started with a stand-in grow tool that holds the first stage's grow
/// open, killed there, restarted, and staged again. A restore at the
/// source's size changes nothing extra.
pub async fn restore_larger(dir: &Path, config: &PlantConfig, fs: &str, kill_at: Option<KillAt>) -> Grown {
    let stand_in = tempfile::Builder::new().prefix("swell-stand-in-").tempdir_in("/var/tmp").expect("stand-in dir");
    let (node_env, mark) = match kill_at {
        Some(at) => {
            let (bin, mark) = grow_tool_stand_in(stand_in.path(), fs, at).expect("grow tool stand-in");
            (vec![("PATH", OsString::from(format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())))], Some(mark))
        }
        None => (Vec::new(), None),
    };
    let mut plant = Plant::start(dir, config, &node_env).await;
    let cap = mount_capability(fs);
    let source = plant.create("larger-source", GIB, cap.clone()).await;
    let source_dir = plant.attach(&source.volume_id, "source", cap.clone()).await.expect("attach the source");
    host::write_pattern(&source_dir.join("data"), 8 << 20, 3).expect("write");
    let sum = host::sha256_file(&source_dir.join("data")).expect("checksum");
    let snapshot = plant.snapshot("larger-snap", &source.volume_id).await.expect("snapshot");
    plant.detach(&source.volume_id, "source").await;

    let same = plant.restore("same-size", GIB, cap.clone(), &snapshot.snapshot_id).await.expect("restore at the same size");
    assert_eq!(same.capacity_bytes as u64, GIB);
    let restored = plant.restore("larger-restored", 2 * GIB, cap.clone(), &snapshot.snapshot_id).await.expect("restore larger");
    assert_eq!(restored.capacity_bytes as u64, 2 * GIB, "made at the size asked for");

    let started = Instant::now();
    if let Some(mark) = mark {
        let mut node = plant.node().await;
        let (staging, capability, id) = (plant.path("restored/staging"), cap.clone(), restored.volume_id.clone());
        let call = tokio::spawn(async move { node.node_stage_volume(requests::stage(&id, &staging, capability)).await });
        let deadline = Instant::now() + Duration::from_secs(120);
        while !mark.exists() {
            assert!(Instant::now() < deadline, "the first stage never reached the grow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        plant.node.kill().await;
        let answer = tokio::time::timeout(Duration::from_secs(30), call).await.expect("the killed call ends").expect("join");
        assert!(answer.is_err(), "a node killed in its first stage answered {answer:?}");
        plant.node.restart(&[]).await.expect("restart swell-node");
    }
    let restored_dir = plant.attach(&restored.volume_id, "restored", cap.clone()).await.expect("stage the larger restore");
    let stage = started.elapsed();
    let bytes = host::statvfs_total(&restored_dir).expect("statvfs");
    assert!(bytes > 2 * GIB * 85 / 100 && bytes <= 2 * GIB, "{fs} reports {bytes} bytes on a 2 GiB restore");
    assert_eq!(host::sha256_file(&restored_dir.join("data")).expect("checksum"), sum, "the source's data verifies");
    let same_dir = plant.attach(&same.volume_id, "same", cap).await.expect("stage the same-size restore");
    let same_bytes = host::statvfs_total(&same_dir).expect("statvfs");
    assert!(same_bytes <= GIB && same_bytes > GIB * 80 / 100, "{fs} same-size restore reports {same_bytes}");
    for (volume, slot) in [(&same, "same"), (&restored, "restored")] {
        plant.detach(&volume.volume_id, slot).await;
        plant.delete(&volume.volume_id).await;
    }
    plant.delete_snapshot(&snapshot.snapshot_id).await.expect("delete snapshot");
    plant.delete(&source.volume_id).await;
    let killed = if kill_at.is_some() { ", node killed in its first stage" } else { "" };
    println!("restore larger, {fs}{killed}: 1 GiB -> 2 GiB, filesystem reports {bytes} bytes after a first stage of {stage:?}; data verified");
    drop(plant);
    Grown { fs: fs.to_owned(), bytes, stage }
}

/// A raw block volume restored larger shows the new size.
pub async fn restore_larger_block(plant: &Plant) -> Grown {
    let source = plant.create("block-source", GIB, block_capability()).await;
    let device = plant.attach(&source.volume_id, "source", block_capability()).await.expect("attach");
    let pattern = crate::chaos::Xorshift::pattern(5, 1 << 20);
    std::fs::write(&device, &pattern).expect("write the device");
    std::fs::File::open(&device).and_then(|f| f.sync_all()).expect("sync");
    let snapshot = plant.snapshot("block-snap", &source.volume_id).await.expect("snapshot");
    plant.detach(&source.volume_id, "source").await;
    let restored = plant.restore("block-restored", 2 * GIB, block_capability(), &snapshot.snapshot_id).await.expect("restore");
    let started = Instant::now();
    let device = plant.attach(&restored.volume_id, "restored", block_capability()).await.expect("attach the restore");
    let stage = started.elapsed();
    let (bytes, head) = {
        let mut file = std::fs::File::open(&device).expect("open the device");
        let bytes = file.seek(SeekFrom::End(0)).expect("device size");
        file.seek(SeekFrom::Start(0)).expect("seek");
        let mut head = vec![0; pattern.len()];
        std::io::Read::read_exact(&mut file, &mut head).expect("read");
        (bytes, head)
    };
    assert_eq!(bytes, 2 * GIB, "the block device shows the restore's size");
    assert!(head == pattern, "the source's data is at the start of the device");
    plant.detach(&restored.volume_id, "restored").await;
    plant.delete(&restored.volume_id).await;
    plant.delete_snapshot(&snapshot.snapshot_id).await.expect("delete snapshot");
    plant.delete(&source.volume_id).await;
    println!("restore larger, raw block: device shows {bytes} bytes");
    Grown { fs: "block".into(), bytes, stage }
}

/// Unknown sources, a reused name, a smaller size: each refused with the
/// code the spec names, and nothing made or changed.
pub async fn bad_input_changes_nothing(plant: &Plant, unknown_volume: &str, unknown_snapshot: &str) {
    // Raw block: the sizes below are exact, with no filesystem minimum.
    let cap = block_capability();
    let a = plant.create("bad-a", 64 * MIB, cap.clone()).await;
    let b = plant.create("bad-b", 64 * MIB, cap.clone()).await;
    let snapshot = plant.snapshot("bad-snap", &a.volume_id).await.expect("snapshot");
    let (volumes, snapshots) = (plant.volume_ids().await, plant.snapshots().await);

    fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> Code {
        result.expect_err("refused").code()
    }
    assert_eq!(code(plant.snapshot("bad-other", unknown_volume).await), Code::NotFound, "snapshot of an unknown volume");
    assert_eq!(code(plant.restore("bad-r", 64 * MIB, cap.clone(), unknown_snapshot).await), Code::NotFound, "restore of an unknown snapshot");
    assert_eq!(code(plant.restore("bad-r", 64 * MIB, cap.clone(), "not-a-snapshot-id").await), Code::NotFound);
    assert_eq!(code(plant.clone_volume("bad-r", 64 * MIB, cap.clone(), unknown_volume).await), Code::NotFound, "clone of an unknown volume");
    assert_eq!(code(plant.snapshot("bad-snap", &b.volume_id).await), Code::AlreadyExists, "a snapshot name reused for another volume");
    assert_eq!(code(plant.restore("bad-a", 64 * MIB, cap.clone(), &snapshot.snapshot_id).await), Code::AlreadyExists, "a volume name reused with a source");
    assert_eq!(code(plant.restore("bad-small", 32 * MIB, cap.clone(), &snapshot.snapshot_id).await), Code::OutOfRange, "smaller than the snapshot");
    assert_eq!(code(plant.clone_volume("bad-small", 32 * MIB, cap.clone(), &a.volume_id).await), Code::OutOfRange, "smaller than the volume");
    let restored = plant.restore("bad-r2", 64 * MIB, cap.clone(), &snapshot.snapshot_id).await.expect("restore");
    let blank_again = plant.controller().await.create_volume(plant.request("bad-r2", 64 * MIB, cap.clone(), None)).await;
    assert_eq!(code(blank_again), Code::AlreadyExists, "a restored volume's name asked for blank");
    plant.delete(&restored.volume_id).await;

    assert_eq!(plant.volume_ids().await, volumes, "no volume made or lost by a refused call");
    assert_eq!(plant.snapshots().await, snapshots, "no snapshot made or changed by a refused call");
    plant.delete_snapshot(&snapshot.snapshot_id).await.expect("delete");
    plant.delete_snapshot(&snapshot.snapshot_id).await.expect("a repeated delete succeeds");
    plant.delete_snapshot("not-a-snapshot-id").await.expect("an id of nothing is deleted already");
    for volume in [&a, &b] {
        plant.delete(&volume.volume_id).await;
    }
}
