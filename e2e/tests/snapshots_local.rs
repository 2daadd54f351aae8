//! The snapshot and clone scenarios (`swell_e2e::snapshots`) on the
//! local backend, with swell-controller and swell-node as processes over
//! real loop devices, filesystems and mounts; and the local backend's
//! reflink copies on a state directory that can share blocks (xfs).
//!
//! Needs root and the workspace binaries (e2e/test.sh builds them).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use swell_e2e::host;
use swell_e2e::node_process::KillAt;
use swell_e2e::requests::mount_capability;
use swell_e2e::snapshots::{self, Plant, PlantConfig};
use swell_storage::snapshot::snapshot_key;
use swell_storage::units::{GIB, MIB};

/// The machine is small: these tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config() -> PlantConfig {
    PlantConfig { controller_args: Vec::new(), controller_env: Vec::new(), node: swell_node::NodeConfig::new("snapshots-node"), parameters: Default::default() }
}

fn runs_here(test: &str, fs: &str) -> bool {
    let tools: &[&str] = match fs {
        "ext4" => &["mkfs.ext4", "resize2fs", "e2fsck", "dumpe2fs"],
        "btrfs" => &["mkfs.btrfs", "btrfs"],
        _ => &["mkfs.xfs", "xfs_growfs"],
    };
    !host::cannot_run(test, false, tools)
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("swell-snapshots-").tempdir_in("/var/tmp").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_has_the_old_data_and_a_clone_changes_apart_from_its_source() {
    if !runs_here("snapshots_local_data", "xfs") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tmp();
    let plant = Plant::start(dir.path(), &config(), &[]).await;
    snapshots::restore_has_old_data_and_clone_changes_apart(&plant, "xfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_with_a_snapshot_and_a_clone_grows_and_its_clone_too_each_apart() {
    if !runs_here("snapshots_local_grow", "xfs") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tmp();
    let plant = Plant::start(dir.path(), &config(), &[]).await;
    snapshots::grow_with_snapshots_and_clones(&plant, "xfs").await;
}

async fn restore_larger(fs: &str, kill_at: Option<KillAt>) {
    if !runs_here(&format!("snapshots_local_restore_larger_{fs}_{kill_at:?}"), fs) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tmp();
    snapshots::restore_larger(dir.path(), &config(), fs, kill_at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_restored_larger_is_grown_at_first_stage() {
    restore_larger("xfs", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_restored_larger_is_grown_at_first_stage() {
    restore_larger("btrfs", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_restored_larger_is_grown_offline_at_first_stage() {
    restore_larger("ext4", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_node_killed_in_its_first_stage_finishes_the_grow_after_restart() {
    restore_larger("xfs", Some(KillAt::BeforeTheTool)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_node_killed_in_its_first_stage_finishes_the_grow_after_restart() {
    restore_larger("btrfs", Some(KillAt::AfterTheToolStarted)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_node_killed_in_its_first_stage_finishes_the_grow_after_restart() {
    restore_larger("ext4", Some(KillAt::BeforeTheTool)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_block_volume_restored_larger_shows_the_new_size() {
    if !runs_here("snapshots_local_block", "xfs") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tmp();
    let plant = Plant::start(dir.path(), &config(), &[]).await;
    snapshots::restore_larger_block(&plant).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_spec_codes_and_changes_nothing() {
    if !runs_here("snapshots_local_bad_input", "xfs") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tmp();
    let plant = Plant::start(dir.path(), &config(), &[]).await;
    let unknown_snapshot = format!("local:{}", snapshot_key("no-such-snapshot"));
    snapshots::bad_input_changes_nothing(&plant, "local:0123456789abcdef0123456789abcdef", &unknown_snapshot).await;
}

fn used_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    (stat.blocks() - stat.blocks_free()) * stat.fragment_size()
}

/// On a state directory that shares blocks (xfs made with reflink, the
/// default of mkfs.xfs), a snapshot and a restore of a volume holding
/// 64 MiB of data take almost no space: they are reflinks, not copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_xfs_snapshots_and_restores_share_blocks_with_their_source() {
    if !runs_here("snapshots_local_reflink", "xfs") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tmp();
    let (image, local) = (dir.path().join("state.img"), dir.path().join("local"));
    std::fs::create_dir_all(&local).unwrap();
    std::fs::File::create(&image).unwrap().set_len(2 * GIB).unwrap();
    let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    run(Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&image));
    run(Command::new("mount").arg("-o").arg("loop").arg(&image).arg(&local));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&local);
    let plant = Plant::start(dir.path(), &config(), &[]).await;
    let cap = mount_capability("xfs");
    let volume = plant.create("reflink-source", 320 * MIB, cap.clone()).await;
    let target = plant.attach(&volume.volume_id, "source", cap.clone()).await.unwrap();
    host::write_pattern(&target.join("data"), 64 << 20, 9).unwrap();
    let sum = host::sha256_file(&target.join("data")).unwrap();
    plant.detach(&volume.volume_id, "source").await;
    let before = used_bytes(&local);
    let snapshot = plant.snapshot("reflink-snap", &volume.volume_id).await.unwrap();
    let restored = plant.restore("reflink-restored", 640 * MIB, cap.clone(), &snapshot.snapshot_id).await.unwrap();
    let grew = used_bytes(&local).saturating_sub(before);
    println!("snapshot + restore of a volume holding 64 MiB took {grew} bytes of the state directory's xfs");
    assert!(grew < 16 * MIB, "reflinks share the data: {grew} bytes used");
    let restored_dir = plant.attach(&restored.volume_id, "restored", cap).await.unwrap();
    assert_eq!(host::sha256_file(&restored_dir.join("data")).unwrap(), sum);
    plant.detach(&restored.volume_id, "restored").await;
    drop(plant);
}
