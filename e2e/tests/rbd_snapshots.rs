//! The snapshot and clone scenarios (`swell_e2e::snapshots`) on Ceph
//! RBD, against the throwaway test cluster (`swell_e2e::rbd_rig`), with
//! swell-controller and swell-node as processes; and what only RBD has: a
//! chain of clones past the depth limit flattened in the background, and
//! the cost of each operation next to the same work done with librbd
//! directly (printed, not asserted: speed lives in measurements).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use csi_proto::v1::VolumeContentSource;
use csi_proto::v1::volume_content_source::{SnapshotSource, Type, VolumeSource};
use tonic::Code;

use swell_e2e::node_process::KillAt;
use swell_e2e::rbd_rig::{self, ClusterEnv, cli, location_of};
use swell_e2e::requests::{block_capability, mount_capability};
use swell_e2e::snapshots::{self, Plant, PlantConfig};
use swell_e2e::timing::median;
use swell_storage::rbd_attach::{ENCRYPTED_KEY, KEY_FROM_KEY, WRAPPED_KEY_META};
use swell_storage::snapshot::snapshot_key;
use swell_storage::units::{GIB, MIB};

fn config(env: &ClusterEnv, dir: &Path, extra: &[&str]) -> PlantConfig {
    let mut controller_args = rbd_rig::process_args(env, "snapshots");
    controller_args.extend(extra.iter().map(|a| (*a).to_owned()));
    PlantConfig {
        controller_args,
        controller_env: Vec::new(),
        node: rbd_rig::node_config(env, dir, "admin", &env.keyring),
        parameters: HashMap::from([("backend".to_owned(), "rbd".to_owned())]),
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("swell-rbd-snapshots-").tempdir_in("/var/tmp").unwrap()
}

fn runs_here(test: &str, fs: &str) -> bool {
    let mut tools = vec!["rbd-fuse", "fusermount"];
    tools.extend(match fs {
        "ext4" => ["mkfs.ext4", "resize2fs"],
        "btrfs" => ["mkfs.btrfs", "btrfs"],
        _ => ["mkfs.xfs", "xfs_growfs"],
    });
    !swell_e2e::host::cannot_run(test, true, &tools)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_has_the_old_data_and_a_clone_changes_apart_from_its_source() {
    if !runs_here("rbd_snapshots_data", "xfs") {
        return;
    }
    let Some(session) = rbd_rig::acquire("rbd_snapshots_data").await else { return };
    let dir = tmp();
    let plant = Plant::start(dir.path(), &config(session.env, dir.path(), &[]), &[]).await;
    snapshots::restore_has_old_data_and_clone_changes_apart(&plant, "xfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_with_a_snapshot_and_a_clone_grows_and_its_clone_too_each_apart() {
    if !runs_here("rbd_snapshots_grow", "xfs") {
        return;
    }
    let Some(session) = rbd_rig::acquire("rbd_snapshots_grow").await else { return };
    let dir = tmp();
    let plant = Plant::start(dir.path(), &config(session.env, dir.path(), &[]), &[]).await;
    snapshots::grow_with_snapshots_and_clones(&plant, "xfs").await;
}

async fn restore_larger(fs: &str, kill_at: Option<KillAt>) {
    let test = format!("rbd_snapshots_restore_larger_{fs}_{kill_at:?}");
    if !runs_here(&test, fs) {
        return;
    }
    let Some(session) = rbd_rig::acquire(&test).await else { return };
    let dir = tmp();
    snapshots::restore_larger(dir.path(), &config(session.env, dir.path(), &[]), fs, kill_at).await;
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
    restore_larger("xfs", Some(KillAt::AfterTheToolStarted)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_node_killed_in_its_first_stage_finishes_the_grow_after_restart() {
    restore_larger("btrfs", Some(KillAt::BeforeTheTool)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_node_killed_in_its_first_stage_finishes_the_grow_after_restart() {
    restore_larger("ext4", Some(KillAt::AfterTheToolStarted)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_block_volume_restored_larger_shows_the_new_size() {
    if !runs_here("rbd_snapshots_block", "xfs") {
        return;
    }
    let Some(session) = rbd_rig::acquire("rbd_snapshots_block").await else { return };
    let dir = tmp();
    let plant = Plant::start(dir.path(), &config(session.env, dir.path(), &[]), &[]).await;
    snapshots::restore_larger_block(&plant).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_spec_codes_and_changes_nothing() {
    if !runs_here("rbd_snapshots_bad_input", "xfs") {
        return;
    }
    let Some(session) = rbd_rig::acquire("rbd_snapshots_bad_input").await else { return };
    let dir = tmp();
    let plant = Plant::start(dir.path(), &config(session.env, dir.path(), &[]), &[]).await;
    let unknown_volume = rbd_rig::volume("no-such-volume").id().to_string();
    let unknown_snapshot = format!("rbd:{}:rbd:{}", rbd_rig::CLUSTER_ID, snapshot_key("no-such-snapshot"));
    snapshots::bad_input_changes_nothing(&plant, &unknown_volume, &unknown_snapshot).await;
}

/// `rbd info`'s parent of the volume `id`, `None` when it reads from none.
fn parent_of(env: &ClusterEnv, id: &str) -> Option<String> {
    let volume = location_of(id);
    let info = cli(env, "rbd", &["info", "--format", "json", &volume.spec()]).unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info.get("parent").map(|p| format!("{}@{}", p["image"].as_str().unwrap_or_default(), p["snapshot"].as_str().unwrap_or_default()))
}

/// A clone of a clone of a clone, with the limit at 2: the third is
/// flattened in the background and stays readable, the first two keep
/// their parents; then the snapshot the chain began with can be deleted
/// while a restore of it still reads from it, and everything goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_past_the_depth_limit_is_flattened_and_stays_readable() {
    if !runs_here("rbd_snapshots_chain", "xfs") {
        return;
    }
    let Some(session) = rbd_rig::acquire("rbd_snapshots_chain").await else { return };
    let env = session.env;
    let dir = tmp();
    let plant = Plant::start(dir.path(), &config(env, dir.path(), &["--rbd-max-clone-depth=2"]), &[]).await;
    let cap = mount_capability("xfs");
    let base = plant.create("chain-base", 320 * MIB, cap.clone()).await;
    let target = plant.attach(&base.volume_id, "base", cap.clone()).await.unwrap();
    std::fs::write(target.join("file"), "base").unwrap();
    std::fs::File::open(target.join("file")).unwrap().sync_all().unwrap();
    plant.detach(&base.volume_id, "base").await;
    let snapshot = plant.snapshot("chain-snap", &base.volume_id).await.unwrap();
    let restored = plant.restore("chain-restored", 320 * MIB, cap.clone(), &snapshot.snapshot_id).await.unwrap();
    let mut chain = vec![restored.clone()];
    for depth in 2..=3 {
        let parent = chain.last().unwrap().volume_id.clone();
        chain.push(plant.clone_volume(&format!("chain-{depth}"), 320 * MIB, cap.clone(), &parent).await.unwrap());
    }
    let deepest = chain.last().unwrap().volume_id.clone();
    let started = Instant::now();
    while parent_of(env, &deepest).is_some() {
        assert!(started.elapsed() < Duration::from_secs(120), "the clone past the limit was not flattened in 120 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("a clone 3 deep (limit 2) was flattened {:?} after its create", started.elapsed());
    for shallow in &chain[..2] {
        assert!(parent_of(env, &shallow.volume_id).is_some(), "{} is within the limit and keeps its parent", shallow.volume_id);
    }
    let deep_dir = plant.attach(&deepest, "deep", cap.clone()).await.unwrap();
    assert_eq!(std::fs::read_to_string(deep_dir.join("file")).unwrap(), "base", "the flattened clone reads its data");
    plant.detach(&deepest, "deep").await;

    plant.delete_snapshot(&snapshot.snapshot_id).await.expect("delete the snapshot clones read from");
    let restored_dir = plant.attach(&restored.volume_id, "restored", cap).await.unwrap();
    assert_eq!(std::fs::read_to_string(restored_dir.join("file")).unwrap(), "base", "the restore still reads from the deleted snapshot");
    plant.detach(&restored.volume_id, "restored").await;
    for volume in chain.iter().rev().chain([&base]) {
        plant.delete(&volume.volume_id).await;
    }
    // Everything goes: the snapshot trash empties as its clones go.
    let ours: Vec<String> = chain.iter().chain([&base]).map(|v| location_of(&v.volume_id).image).collect();
    let started = Instant::now();
    loop {
        let images = cli(env, "rbd", &["ls", "rbd"]).unwrap();
        let trash = cli(env, "rbd", &["trash", "ls", "rbd"]).unwrap();
        let left: Vec<&str> = images.lines().chain(trash.lines()).filter(|l| ours.iter().any(|i| l.contains(i.as_str()))).collect();
        if left.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "left in the pool or its trash: {left:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `rbd info` of the volume `id`, as JSON.
fn info_of(env: &ClusterEnv, id: &str) -> serde_json::Value {
    serde_json::from_str(&cli(env, "rbd", &["info", "--format", "json", &location_of(id).spec()]).unwrap()).unwrap()
}

/// How many data objects whose names start with `prefix` are in the pool.
fn objects_with(env: &ClusterEnv, prefix: &str) -> usize {
    cli(env, "rados", &["-p", "rbd", "ls"]).unwrap().lines().filter(|l| l.starts_with(prefix)).count()
}

/// Bytes no two 4 KiB blocks of which are alike (zeros would read back from a hole).
fn pattern(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 7 ^ (i / 4096) as u64) as u8).collect()
}

/// A clone past the depth limit grown while its flatten is copying its
/// parent's data into it (held mid-copy: the failpoint build sleeps at the
/// first 60 objects copied, about 9 s over several passes; at every object,
/// each pass walking them all again would never end). Each pass of the
/// flatten holds the volume (an expand meanwhile is ABORTED and retried),
/// but only to its deadline, so the grow lands before the flatten ends: ControllerExpandVolume answers the new size while the
/// clone still reads from its parent, the flatten then completes without
/// undoing the grow, the clone's filesystem fills the new size and reads
/// the parent's data, and the parent keeps its size and its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_grown_while_it_is_flattened_reaches_the_size_with_its_data_and_its_parent_untouched() {
    if !runs_here("rbd_snapshots_grow_while_flattening", "xfs") {
        return;
    }
    let Some(session) = rbd_rig::acquire("rbd_snapshots_grow_while_flattening").await else { return };
    let env = session.env;
    let dir = tmp();
    let mut config = config(env, dir.path(), &["--rbd-max-clone-depth=0"]);
    config.controller_env = vec![("FAILPOINTS".to_owned(), "rbd-flatten-copying=60*sleep(150)".to_owned())];
    let plant = Plant::start(dir.path(), &config, &[]).await;
    const SIZE: u64 = 320 * MIB;
    let cap = mount_capability("xfs");
    let data = pattern(64 * MIB as usize);
    let parent = plant.create("flatten-parent", SIZE, cap.clone()).await;
    let parent_dir = plant.attach(&parent.volume_id, "parent", cap.clone()).await.unwrap();
    std::fs::write(parent_dir.join("data"), &data).unwrap();
    std::fs::File::open(parent_dir.join("data")).unwrap().sync_all().unwrap();
    plant.detach(&parent.volume_id, "parent").await;

    let clone = plant.clone_volume("flatten-clone", SIZE, cap.clone(), &parent.volume_id).await.unwrap();
    let prefix = info_of(env, &clone.volume_id)["block_name_prefix"].as_str().unwrap().to_owned();
    let started = Instant::now();
    while objects_with(env, &prefix) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "the flatten copied nothing into the clone in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(parent_of(env, &clone.volume_id).is_some(), "the flatten finished before the expand was sent: hold it longer");
    let copied = objects_with(env, &prefix);

    // As the external-resizer does: ABORTED (the flatten holds the volume) is retried.
    let (mut aborted, sent) = (0, Instant::now());
    let grown_in_flight = loop {
        let expand = swell_e2e::requests::controller_expand(&clone.volume_id, (2 * SIZE) as i64, None);
        match plant.controller().await.controller_expand_volume(expand).await {
            Ok(answer) => {
                assert_eq!(answer.into_inner().capacity_bytes as u64, 2 * SIZE, "the controller's size");
                break parent_of(env, &clone.volume_id).is_some();
            }
            Err(status) if status.code() == tonic::Code::Aborted => {
                assert!(status.message().contains(&clone.volume_id), "ABORTED names the volume: {status:?}");
                aborted += 1;
            }
            Err(status) => panic!("ControllerExpandVolume during the flatten: {status:?}"),
        }
        assert!(sent.elapsed() < Duration::from_secs(180), "ControllerExpandVolume still refused 180 s after the flatten began");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(grown_in_flight, "the grow waited for the whole flatten ({aborted} ABORTED answers, {copied} objects copied when it was sent)");
    println!("grown {:?} after the first try, {aborted} ABORTED answers; the clone still read from its parent: {grown_in_flight}", sent.elapsed());
    assert_eq!(info_of(env, &clone.volume_id)["size"].as_u64(), Some(2 * SIZE), "the clone's image after the expand");

    let started = Instant::now();
    while parent_of(env, &clone.volume_id).is_some() {
        assert!(started.elapsed() < Duration::from_secs(180), "the flatten did not complete in 180 s after the grow");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("clone flattened {:?} after the grow; {copied} objects copied when the grow was sent", started.elapsed());
    assert_eq!(info_of(env, &clone.volume_id)["size"].as_u64(), Some(2 * SIZE), "the flatten kept the grown size");

    let clone_dir = plant.attach(&clone.volume_id, "clone", cap.clone()).await.unwrap();
    let total = swell_e2e::host::statvfs_total(&clone_dir).unwrap();
    assert!(total > 2 * SIZE * 85 / 100 && total <= 2 * SIZE, "the clone's filesystem is {total} bytes on {} bytes", 2 * SIZE);
    assert!(std::fs::read(clone_dir.join("data")).unwrap() == data, "the flattened, grown clone reads its parent's data");
    plant.detach(&clone.volume_id, "clone").await;
    assert_eq!(info_of(env, &parent.volume_id)["size"].as_u64(), Some(SIZE), "the parent keeps its size");
    let parent_dir = plant.attach(&parent.volume_id, "parent", cap).await.unwrap();
    let total = swell_e2e::host::statvfs_total(&parent_dir).unwrap();
    assert!(total <= SIZE, "the parent's filesystem is {total} bytes");
    assert!(std::fs::read(parent_dir.join("data")).unwrap() == data, "the parent keeps its data");
    plant.detach(&parent.volume_id, "parent").await;
    plant.delete(&clone.volume_id).await;
    plant.delete(&parent.volume_id).await;
}

/// Snapshot, restore and clone through Swell (gRPC, state object, holds,
/// capacity) next to the same RBD work done with librbd in-process: medians
/// of 10, printed for the report. Each round's volumes and snapshot go
/// before the next: the test pool holds only what the host's disk can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restore_and_clone_cost_next_to_librbd() {
    if !runs_here("rbd_snapshots_cost", "xfs") {
        return;
    }
    let Some(session) = rbd_rig::acquire("rbd_snapshots_cost").await else { return };
    let env = session.env;
    let dir = tmp();
    let plant = Plant::start(dir.path(), &config(env, dir.path(), &[]), &[]).await;
    let cap = mount_capability("xfs");
    const ROUNDS: usize = 10;
    let source = plant.create("cost-source", GIB, cap.clone()).await;
    let (mut snap, mut restore, mut clone) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let started = Instant::now();
        let snapshot = plant.snapshot(&format!("cost-snap-{i}"), &source.volume_id).await.unwrap();
        snap.push(started.elapsed());
        let started = Instant::now();
        let restored = plant.restore(&format!("cost-restore-{i}"), 2 * GIB, cap.clone(), &snapshot.snapshot_id).await.unwrap();
        restore.push(started.elapsed());
        let started = Instant::now();
        let cloned = plant.clone_volume(&format!("cost-clone-{i}"), GIB, cap.clone(), &source.volume_id).await.unwrap();
        clone.push(started.elapsed());
        plant.delete(&restored.volume_id).await;
        plant.delete(&cloned.volume_id).await;
        plant.delete_snapshot(&snapshot.snapshot_id).await.unwrap();
    }

    let io = tokio::task::spawn_blocking(move || rbd_rig::other_client(env, "rbd")).await.unwrap();
    let parent = location_of(&source.volume_id).image;
    let (mut d_snap, mut d_restore, mut d_clone) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let (name, restored, cloned) = (format!("direct-{i}"), format!("direct-restore-{i}"), format!("direct-clone-{i}"));
        let started = Instant::now();
        let image = io.open(&parent).unwrap();
        image.create_snapshot(&name).unwrap();
        image.close().unwrap();
        d_snap.push(started.elapsed());
        let started = Instant::now();
        io.clone_image(&parent, &name, &restored).unwrap();
        let child = io.open(&restored).unwrap();
        child.grow(2 * GIB).unwrap();
        child.close().unwrap();
        d_restore.push(started.elapsed());
        let started = Instant::now();
        let image = io.open(&parent).unwrap();
        image.create_snapshot(&format!("{name}-c")).unwrap();
        io.clone_image(&parent, &format!("{name}-c"), &cloned).unwrap();
        image.remove_snapshot(&format!("{name}-c")).unwrap();
        image.close().unwrap();
        d_clone.push(started.elapsed());
    }
    println!("p50 of {ROUNDS} on the test cluster: Swell over gRPC | librbd in-process");
    println!("  snapshot            {:>8.1?} | {:>8.1?} (open, rbd_snap_create, close)", median(&snap), median(&d_snap));
    println!("  restore to 2 GiB    {:>8.1?} | {:>8.1?} (rbd_clone3, open, resize, close)", median(&restore), median(&d_restore));
    println!("  clone of a volume   {:>8.1?} | {:>8.1?} (open, snap create, rbd_clone3, snap remove, close)", median(&clone), median(&d_clone));

    for i in 0..ROUNDS {
        for image in [format!("direct-restore-{i}"), format!("direct-clone-{i}")] {
            cli(env, "rbd", &["rm", &format!("rbd/{image}")]).unwrap();
        }
        cli(env, "rbd", &["snap", "rm", &format!("rbd/{parent}@direct-{i}")]).unwrap();
    }
    plant.delete(&source.volume_id).await;
}

/// The pool's images and trashed images, one name per line.
fn pool_images(env: &ClusterEnv) -> Vec<String> {
    let images = cli(env, "rbd", &["ls", "rbd"]).unwrap();
    let trash = cli(env, "rbd", &["trash", "ls", "rbd"]).unwrap();
    images.lines().chain(trash.lines()).map(str::to_owned).collect()
}

/// In the order a namespace deletion sends them (found by the kube lane): a
/// snapshot, then its source, then the restore still reading from it. The
/// removed snapshot waits in the source's snapshot trash for the restore,
/// and librbd lists it among the source's snapshots; the source must still
/// go, not be kept for it (under a name no entry knows) for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_deleted_after_its_snapshot_and_before_its_restore_goes_too() {
    if !runs_here("rbd_snapshots_delete_order", "xfs") {
        return;
    }
    let Some(session) = rbd_rig::acquire("rbd_snapshots_delete_order").await else { return };
    let env = session.env;
    let dir = tmp();
    // The plant's controller runs its background work every second.
    let plant = Plant::start(dir.path(), &config(env, dir.path(), &[]), &[]).await;
    let before = pool_images(env);
    // Raw block: the restore asks for the source's exact size.
    let cap = block_capability();
    let source = plant.create("order-source", 64 * MIB, cap.clone()).await;
    let snapshot = plant.snapshot("order-snapshot", &source.volume_id).await.unwrap();
    let restored = plant.restore("order-restored", 64 * MIB, cap, &snapshot.snapshot_id).await.unwrap();
    plant.delete_snapshot(&snapshot.snapshot_id).await.unwrap();
    // The snapshot's background delete moves it to the snapshot trash: the restore reads from it.
    let image = location_of(&source.volume_id).spec();
    let started = Instant::now();
    while !cli(env, "rbd", &["snap", "ls", "--all", &image]).unwrap().contains("trash") {
        assert!(started.elapsed() < Duration::from_secs(60), "the deleted snapshot never reached the snapshot trash");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    plant.delete(&source.volume_id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    plant.delete(&restored.volume_id).await;
    let started = Instant::now();
    loop {
        let left: Vec<String> = pool_images(env).into_iter().filter(|i| !before.contains(i)).collect();
        if left.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "left in the pool or its trash: {left:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An encrypted volume's copies (docs/encryption.md): the controller hands
/// the node the id the copied wrapped key is bound to (the snapshot's
/// source, or the cloned volume) in the volume context, and librbd's clone
/// carries the source's image metadata, the wrapped key among it, into the
/// copy, also at a larger size. The node's rebinding is the VM lane's
/// (`rbd_luks`): the host has no dm-crypt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_restore_and_clone_carry_the_wrapped_key_and_name_the_volume_it_is_bound_to() {
    if !runs_here("rbd_snapshots_encrypted", "xfs") {
        return;
    }
    let Some(session) = rbd_rig::acquire("rbd_snapshots_encrypted").await else { return };
    let env = session.env;
    let dir = tmp();
    let mut config = config(env, dir.path(), &[]);
    config.parameters.insert(ENCRYPTED_KEY.to_owned(), "true".to_owned());
    let plant = Plant::start(dir.path(), &config, &[]).await;
    let cap = block_capability();
    let source = plant.create("sealed-source", 64 * MIB, cap.clone()).await;
    assert_eq!(source.volume_context.get(KEY_FROM_KEY), None, "a blank volume makes its own key");
    // What a first stage stores (opaque to the controller and librbd).
    let wrapped = "v1:0011223344556677:bm9uY2U:Y2lwaGVydGV4dA";
    let meta = |id: &str| cli(env, "rbd", &["image-meta", "get", &location_of(id).spec(), WRAPPED_KEY_META]).map(|s| s.trim().to_owned());
    cli(env, "rbd", &["image-meta", "set", &location_of(&source.volume_id).spec(), WRAPPED_KEY_META, wrapped]).unwrap();
    let snapshot = plant.snapshot("sealed-snapshot", &source.volume_id).await.unwrap();
    let restored = plant.restore("sealed-restored", 128 * MIB, cap.clone(), &snapshot.snapshot_id).await.unwrap();
    let cloned = plant.clone_volume("sealed-clone", 96 * MIB, cap, &source.volume_id).await.unwrap();
    for (copy, what) in [(&restored, "restore"), (&cloned, "clone")] {
        assert_eq!(copy.volume_context.get(KEY_FROM_KEY), Some(&source.volume_id), "the {what} names its key's volume");
        assert_eq!(copy.volume_context.get(ENCRYPTED_KEY).map(String::as_str), Some("true"));
        assert_eq!(meta(&copy.volume_id).unwrap(), wrapped, "the {what}'s image carries the source's wrapped key");
    }
    assert_eq!(info_of(env, &restored.volume_id)["size"].as_u64(), Some(128 * MIB), "restored larger");
    // A copy of the restore names the restore: its key is bound there once staged.
    let again = plant.clone_volume("sealed-clone-of-restore", 128 * MIB, block_capability(), &restored.volume_id).await.unwrap();
    assert_eq!(again.volume_context.get(KEY_FROM_KEY), Some(&restored.volume_id));
    for id in [&again.volume_id, &cloned.volume_id, &restored.volume_id] {
        plant.delete(id).await;
    }
    plant.delete_snapshot(&snapshot.snapshot_id).await.unwrap();
    plant.delete(&source.volume_id).await;
}

/// A copy whose class's encryption differs from its source's (an encrypted
/// source into a clear class, a clear one into an encrypted class) is
/// refused at CreateVolume with INVALID_ARGUMENT naming the source and the
/// class parameter, before anything is made: it could never be staged.
/// Copies whose encryption matches are made as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_into_a_class_of_other_encryption_than_its_source_is_refused_at_create_volume_and_nothing_is_made() {
    if !runs_here("rbd_snapshots_encryption_mismatch", "xfs") {
        return;
    }
    let Some(session) = rbd_rig::acquire("rbd_snapshots_encryption_mismatch").await else { return };
    let env = session.env;
    let dir = tmp();
    let clear_class = config(env, dir.path(), &[]).parameters;
    let mut config = config(env, dir.path(), &[]);
    config.parameters.insert(ENCRYPTED_KEY.to_owned(), "true".to_owned());
    let sealed_class = config.parameters.clone();
    let plant = Plant::start(dir.path(), &config, &[]).await;
    let create = |name: &str, class: &HashMap<String, String>, source: Option<Type>| {
        let mut req = swell_e2e::requests::create_volume(name, (64 * MIB) as i64, block_capability());
        req.parameters = class.clone();
        req.volume_content_source = source.map(|t| VolumeContentSource { r#type: Some(t) });
        async { plant.controller().await.create_volume(req).await.map(|answer| answer.into_inner().volume.expect("volume")) }
    };
    let sealed = create("mismatch-sealed", &sealed_class, None).await.unwrap();
    let wrapped = "v1:0011223344556677:bm9uY2U:Y2lwaGVydGV4dA";
    cli(env, "rbd", &["image-meta", "set", &location_of(&sealed.volume_id).spec(), WRAPPED_KEY_META, wrapped]).unwrap();
    let clear = create("mismatch-clear", &clear_class, None).await.unwrap();
    let sealed_snapshot = plant.snapshot("mismatch-sealed-snapshot", &sealed.volume_id).await.unwrap();
    let clear_snapshot = plant.snapshot("mismatch-clear-snapshot", &clear.volume_id).await.unwrap();
    let snapshot = |id: &str| Some(Type::Snapshot(SnapshotSource { snapshot_id: id.to_owned() }));
    let volume = |id: &str| Some(Type::Volume(VolumeSource { volume_id: id.to_owned() }));
    let before = pool_images(env);
    let refused = [
        ("restore of an encrypted snapshot into a clear class", &clear_class, snapshot(&sealed_snapshot.snapshot_id), &sealed_snapshot.snapshot_id),
        ("clone of an encrypted volume into a clear class", &clear_class, volume(&sealed.volume_id), &sealed.volume_id),
        ("restore of a clear snapshot into an encrypted class", &sealed_class, snapshot(&clear_snapshot.snapshot_id), &clear_snapshot.snapshot_id),
        ("clone of a clear volume into an encrypted class", &sealed_class, volume(&clear.volume_id), &clear.volume_id),
    ];
    for (n, (case, class, source, source_id)) in refused.into_iter().enumerate() {
        let status = create(&format!("mismatch-copy-{n}"), class, source).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(status.message().contains(source_id.as_str()) && status.message().contains("parameters.encrypted"), "{case}: {}", status.message());
    }
    assert_eq!(pool_images(env), before, "a refused copy makes nothing");
    let kept = [
        create("mismatch-sealed-restore", &sealed_class, snapshot(&sealed_snapshot.snapshot_id)).await.unwrap(),
        create("mismatch-clear-clone", &clear_class, volume(&clear.volume_id)).await.unwrap(),
    ];
    for copy in &kept {
        plant.delete(&copy.volume_id).await;
    }
    for snapshot in [&sealed_snapshot, &clear_snapshot] {
        plant.delete_snapshot(&snapshot.snapshot_id).await.unwrap();
    }
    plant.delete(&sealed.volume_id).await;
    plant.delete(&clear.volume_id).await;
}
