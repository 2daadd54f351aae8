//! Auto-grow on Ceph RBD volumes (docs/auto-grow.md), on a real throwaway
//! cluster: the policy and the node's usage in the image's own metadata,
//! the marks as omap keys of the pool's `swell.auto-grow.wanted` object.
//! The whole path under a writer, through the node in this host's attach
//! mode (rbd-fuse + loop where the rbd and nbd modules are missing), the
//! stand-in API server and the real webhook; and the store itself, written
//! as the node's Ceph user writes it (the caps deploy/README.md gives).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::DeleteVolumeRequest;
use swell_backends::BackendConfig;
use swell_controller::AutoGrowOutcome;
use swell_e2e::auto_grow_rig::{CLASS, Engine, FilesystemGrow, Rig, writer_scenario};
use swell_e2e::host;
use swell_e2e::rbd_rig::{self, ClusterEnv, NODE_USER, Session};
use swell_local::LocalConfig;
use swell_rbd::RbdBackend;
use swell_storage::VolumeId;
use swell_storage::auto_grow::rbd::{USAGE_META, WANTED_OBJECT};
use swell_storage::auto_grow::{AutoGrowPolicy, AutoGrowRecord, ClaimRef, Usage};
use swell_storage::expansion::now_unix;
use swell_storage::rbd_attach::AttachMode;
use swell_storage::units::MIB;

/// The cluster, without the marks earlier tests on it left, a rig whose
/// controller and webhook use its `rbd` pool, and the node user's keyring.
async fn rig(test: &str) -> Option<(Session, Rig, PathBuf)> {
    let session = rbd_rig::acquire(test).await?;
    let env = session.env;
    clear_marks(env);
    let keyring = rbd_rig::node_user_keyring(env);
    let (mode, named) = rbd_rig::mode_under_test();
    let rig = Rig::start(Duration::from_secs(60), |dir| {
        let opened = || -> Arc<dyn swell_storage::Backend> { Arc::new(RbdBackend::new(rbd_rig::rbd_config(env)).unwrap()) };
        Engine {
            backends: BackendConfig {
                local: LocalConfig::new(dir.join("local"), dir.join("controller")),
                rbd: Some(rbd_rig::rbd_config(env)),
                default_backend: "rbd".into(),
                call_deadline: Duration::from_secs(10),
            },
            webhook_facts: opened(),
            store: opened(),
            parameters: rbd_rig::attach_parameters(mode, named),
        }
    })
    .await;
    Some((session, rig, keyring))
}

/// Runs a Ceph CLI as the node's user, as the node does.
fn as_node(env: &ClusterEnv, keyring: &Path, tool: &str, args: &[&str]) -> String {
    let keyring = keyring.display().to_string();
    let mut all = vec!["--id", NODE_USER, "--keyring", &keyring];
    all.extend(args);
    rbd_rig::cli(env, tool, &all).unwrap_or_else(|e| panic!("{e}"))
}

/// Writes what the node writes for a reading with `free` of `total` bytes
/// free: the usage into the image's metadata, then the mark.
fn node_reports(env: &ClusterEnv, keyring: &Path, id: &VolumeId, total: u64, free: u64) -> Usage {
    let usage = Usage { bytes_used: total - free, bytes_total: total, inodes_used: 10, inodes_total: 10_000, read_unix: now_unix(), skipped: None };
    let volume = rbd_rig::location_of(&id.to_string());
    as_node(env, keyring, "rbd", &["image-meta", "set", &volume.spec(), USAGE_META, &serde_json::to_string(&usage).unwrap()]);
    as_node(env, keyring, "rados", &["-p", &volume.pool, "setomapval", WANTED_OBJECT, &volume.image, &usage.read_unix.to_string()]);
    usage
}

/// Removes the marks object, and so what earlier tests on the cluster left marked.
fn clear_marks(env: &ClusterEnv) {
    let _ = rbd_rig::cli(env, "rados", &["-p", "rbd", "rm", WANTED_OBJECT]);
}

/// The marks as `rados` lists them.
fn marks(env: &ClusterEnv) -> Vec<String> {
    rbd_rig::cli(env, "rados", &["-p", "rbd", "listomapkeys", WANTED_OBJECT]).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_filling_xfs_on_rbd_gets_it_grown_to_its_limit_never_past_it_and_never_sees_enospc() {
    if host::cannot_run("rbd_auto_grow_under_a_writer", true, &["rbd-fuse", "fusermount", "mkfs.xfs", "xfs_growfs"]) {
        return;
    }
    let Some((session, mut rig, keyring)) = rig("rbd_auto_grow_under_a_writer").await else { return };
    let node = rbd_rig::node_config(session.env, &rig.dir, NODE_USER, &keyring);
    // rbd-fuse's loop device learns a grow only from NodeExpandVolume;
    // krbd and rbd-nbd devices follow the image, and the node grows them.
    let grow = if rbd_rig::mode_under_test().0 == AttachMode::FuseLoop { FilesystemGrow::ByKubelet } else { FilesystemGrow::ByTheNode };
    writer_scenario(&mut rig, node, grow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_and_usage_read_back_from_image_metadata_and_a_mark_is_listed_once_until_settled() {
    let Some((session, mut rig, keyring)) = rig("rbd_auto_grow_store").await else { return };
    let env = session.env;
    let id = rig.claim("kept", 320 * MIB, &CLASS, &[], false).await;
    let policy = AutoGrowPolicy {
        on: true,
        free_below: swell_storage::auto_grow::Amount::Percent(30),
        inodes_free_below_percent: None,
        step: swell_storage::auto_grow::Amount::Percent(50),
        limit_bytes: 640 * MIB,
    };
    let record = AutoGrowRecord { policy, claim: Some(ClaimRef { namespace: "db".into(), name: "kept".into() }) };
    assert_eq!(rig.store.auto_grow(&id).await.unwrap(), (Some(record.clone()), None), "CreateVolume stored the class's policy, no usage yet");
    assert_eq!(rig.store.wanting_to_grow().await.unwrap(), Vec::<VolumeId>::new());

    let usage = node_reports(env, &keyring, &id, 300 * MIB, 30 * MIB);
    node_reports(env, &keyring, &id, 300 * MIB, 30 * MIB);
    let (_, read) = rig.store.auto_grow(&id).await.unwrap();
    assert_eq!(read.map(|u| (u.bytes_used, u.bytes_total)), Some((usage.bytes_used, usage.bytes_total)), "the node's reading, from the image's metadata");
    assert_eq!(rig.store.wanting_to_grow().await.unwrap(), vec![id.clone()], "marked once however often");
    let volume = rbd_rig::location_of(&id.to_string());
    assert_eq!(marks(env), vec![volume.image.clone()], "one key in the marks object");
    let shards = rbd_rig::cli(env, "rados", &["-p", "rbd", "ls"]).unwrap();
    for shard in shards.lines().filter(|o| o.starts_with("swell.state")) {
        let keys = rbd_rig::cli(env, "rados", &["-p", "rbd", "listomapkeys", shard]).unwrap();
        assert!(!keys.contains("auto-grow") && !keys.contains("usage"), "auto-grow wrote into the state shard {shard}: {keys}");
    }

    rig.store.settle_auto_grow(&id).await.unwrap();
    assert_eq!(rig.store.wanting_to_grow().await.unwrap(), Vec::<VolumeId>::new(), "settled: the mark is gone");
    rig.store.settle_auto_grow(&id).await.unwrap();
    assert_eq!(rig.store.auto_grow(&id).await.unwrap().0, Some(record), "settling keeps the policy");
    let unknown: VolumeId = rbd_rig::volume("never-made").id();
    assert_eq!(rig.store.auto_grow(&unknown).await.unwrap(), (None, None), "a volume without an image has no auto-grow state");
    assert!(matches!(rig.store.set_auto_grow(&unknown, &AutoGrowRecord { policy, claim: None }).await, Err(swell_storage::BackendError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_deleted_while_marked_leaves_no_mark_that_breaks_the_pass() {
    let Some((session, mut rig, keyring)) = rig("rbd_auto_grow_deleted").await else { return };
    let env = session.env;
    let gone = rig.claim("gone", 320 * MIB, &CLASS, &[], false).await;
    let alive = rig.claim("alive", 320 * MIB, &CLASS, &[], false).await;
    node_reports(env, &keyring, &gone, 300 * MIB, 30 * MIB);
    rig.controller.delete_volume(DeleteVolumeRequest { volume_id: gone.to_string(), ..Default::default() }).await.unwrap();
    assert_eq!(rig.store.wanting_to_grow().await.unwrap(), Vec::<VolumeId>::new(), "the delete took the mark away");
    // A node that raced the delete marks it again, and leaves a key no volume has.
    node_reports(env, &keyring, &alive, 300 * MIB, 30 * MIB);
    rbd_rig::cli(env, "rados", &["-p", "rbd", "setomapval", WANTED_OBJECT, &rbd_rig::location_of(&gone.to_string()).image, "1"]).unwrap();
    rbd_rig::cli(env, "rados", &["-p", "rbd", "setomapval", WANTED_OBJECT, "not-a-swell-image", "1"]).unwrap();
    let mut outcomes = rig.grower.pass().await;
    outcomes.sort_by_key(|(id, _)| id == &alive);
    assert!(matches!(outcomes.as_slice(), [(g, AutoGrowOutcome::Off(_)), (k, AutoGrowOutcome::Grown(..))] if g == &gone && k == &alive), "{outcomes:?}");
    assert_eq!(rig.api.patched_to(), vec![480 * MIB], "the live volume grew");
    assert_eq!(rig.grower.pass().await, vec![], "both marks taken away");
    assert_eq!(marks(env), vec!["not-a-swell-image".to_owned()], "a key that names no volume is left alone, and skipped");
}
