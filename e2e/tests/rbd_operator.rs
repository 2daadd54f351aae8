//! The operator's view on Ceph RBD: `swell` over the pool's records (the
//! scenario of `swell_e2e::operator`), `/healthz` while the monitor is down,
//! and a controller and a node process doing RBD work with debug logs in
//! JSON that never print the keyring's key.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use csi_proto::v1::DeleteVolumeRequest;
use swell_e2e::metrics::get;
use swell_e2e::node_process::NodeProcess;
use swell_e2e::process::ControllerProcess;
use swell_e2e::requests::{self, mount_capability};
use swell_e2e::timing::assert_within_deadline;
use swell_e2e::{host, logs, rbd_rig, sweep};

const MIB: i64 = swell_storage::units::MIB as i64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swell_shows_every_expansion_on_rbd() {
    let Some(session) = rbd_rig::acquire("rbd_operator::swell_shows_every_expansion_on_rbd").await else { return };
    swell_e2e::operator::swell_shows_every_expansion(&rbd_rig::Rbd(session.env)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_while_the_monitor_is_down_and_recovers() {
    let Some(session) = rbd_rig::acquire("rbd_operator::health_fails_while_the_monitor_is_down_and_recovers").await else { return };
    let env = session.env;
    let swell = rbd_rig::Swell::start(env, Duration::from_secs(3), Duration::from_secs(8)).await;
    let address = swell.controller.metrics;
    assert_eq!(get(address, "/healthz").await, (200, "ok\n".to_owned()));
    rbd_rig::cluster(env, "stop-mon", &[]).expect("stop the monitor");
    // /healthz answers from a result at most HEALTH_MAX_AGE old: let the
    // one from before the monitor stopped expire.
    tokio::time::sleep(csi_endpoint::HEALTH_MAX_AGE).await;
    let started = Instant::now();
    let (status, reason) = get(address, "/healthz").await;
    let took = started.elapsed();
    rbd_rig::cluster(env, "start-mon", &[]).expect("start the monitor");
    let back = Instant::now();
    println!("/healthz with the monitor down: {status} after {took:?}: {}", reason.trim());
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("health check"), "the failed step: {reason}");
    assert_within_deadline("/healthz with the monitor down", took, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(90);
    while get(address, "/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "/healthz still failing 90 s after the monitor restarted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("/healthz ok again {:?} after the monitor restarted", back.elapsed());
}

/// The cephx key in a keyring (`key = AQ...`).
fn key_of(keyring: &std::path::Path) -> String {
    let text = std::fs::read_to_string(keyring).unwrap();
    let key = text.lines().find_map(|l| l.trim().strip_prefix("key")?.trim_start().strip_prefix('=').map(|k| k.trim().to_owned()));
    key.unwrap_or_else(|| panic!("no key in {}", keyring.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyring_key_never_reaches_the_logs() {
    let test = "rbd_operator::the_keyring_key_never_reaches_the_logs";
    if host::cannot_run(test, true, &["rbd-fuse", "fusermount", "mkfs.xfs", "xfs_growfs"]) {
        return;
    }
    let Some(session) = rbd_rig::acquire(test).await else { return };
    let env = session.env;
    let key = key_of(&env.keyring);
    assert!(key.len() >= 20, "a cephx key: {key}");
    let tmp = tempfile::Builder::new().prefix("swell-rbd-logs-").tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path();
    let (controller_log, node_log) = (dir.join("controller.log"), dir.join("node.log"));
    let debug = || vec![("RUST_LOG".to_owned(), "debug".to_owned())];
    let mut args = rbd_rig::process_args(env, "keyring-logs");
    args.push("--log-format=json".into());
    let controller = ControllerProcess::start_logging(dir, &dir.join("local"), args, debug(), Some(controller_log.clone())).await.unwrap();
    let config = rbd_rig::node_config(env, dir, "admin", &env.keyring);
    let node = NodeProcess::start_with(&config, dir.join("node.sock"), &[("RUST_LOG", "debug".into())], &["--log-format=json".into()], Some(node_log.clone()))
        .await
        .unwrap();
    let (mut cc, mut nc) = (controller.client().await.unwrap(), node.client().await.unwrap());

    let created = cc.create_volume(requests::create_volume(&format!("keyring-logs-{}", std::process::id()), 512 * MIB, mount_capability("xfs"))).await;
    let id = created.unwrap().into_inner().volume.unwrap().volume_id;
    let staging = dir.join("staging").display().to_string();
    let target = dir.join("pod/vol").display().to_string();
    nc.node_stage_volume(requests::stage(&id, &staging, mount_capability("xfs"))).await.unwrap();
    nc.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    cc.controller_expand_volume(requests::controller_expand(&id, 1024 * MIB, None)).await.unwrap();
    nc.node_expand_volume(requests::node_expand(&id, &target, &staging, 1024 * MIB, mount_capability("xfs"))).await.unwrap();
    nc.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
    nc.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    cc.delete_volume(DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() }).await.unwrap();
    drop((controller, node));
    sweep::sweep(dir);

    for log in [&controller_log, &node_log] {
        let lines = logs::read(log);
        let text = std::fs::read_to_string(log).unwrap();
        println!("{}: {} debug lines, {} naming {id}", log.display(), lines.len(), text.lines().filter(|l| l.contains(&id)).count());
        assert!(text.contains(&id), "{}: the work is logged", log.display());
        assert!(!text.contains(&key), "{}: the keyring's key is in the log", log.display());
    }
}

/// A cephx user with the caps deploy/ documents (`mon 'profile rbd'`, `osd
/// 'profile rbd pool=rbd'`) lists its volumes through the controller and
/// through `swell`, although the cluster's other pools (every Ceph 16
/// cluster has device_health_metrics) refuse it with EPERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_kept_to_its_pool_lists_its_volumes() {
    let Some(session) = rbd_rig::acquire("rbd_operator::a_user_kept_to_its_pool_lists_its_volumes").await else { return };
    let env = session.env;
    let pools = rbd_rig::cli(env, "ceph", &["osd", "pool", "ls"]).unwrap();
    assert!(pools.lines().any(|p| p.trim() != "rbd"), "the cluster has a pool beside rbd: {pools}");
    let tmp = tempfile::Builder::new().prefix("swell-rbd-kept-").tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path();
    let keyring = dir.join("ceph.client.kept.keyring");
    let keyring_arg = keyring.display().to_string();
    rbd_rig::cli(env, "ceph", &["auth", "get-or-create", "client.kept", "mon", "profile rbd", "osd", "profile rbd pool=rbd", "-o", &keyring_arg]).unwrap();
    let rbd_flags = vec![
        format!("--rbd-cluster-id={}", rbd_rig::CLUSTER_ID),
        format!("--rbd-ceph-conf={}", env.conf.display()),
        format!("--rbd-keyring={keyring_arg}"),
        "--rbd-user=kept".to_owned(),
    ];
    let mut args = rbd_flags.clone();
    args.extend(["--default-backend=rbd".to_owned(), "--instance-name=kept".to_owned()]);
    let controller = ControllerProcess::start_with(dir, &dir.join("local"), args).await.unwrap();
    let mut cc = controller.client().await.unwrap();
    let created = cc.create_volume(requests::create_volume(&format!("kept-{}", std::process::id()), 64 * MIB, mount_capability("xfs"))).await;
    let id = created.unwrap().into_inner().volume.unwrap().volume_id;

    let listed = cc.list_volumes(csi_proto::v1::ListVolumesRequest::default()).await.expect("ListVolumes as a user kept to its pool").into_inner();
    assert!(listed.entries.iter().any(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == id)), "{id} not listed: {listed:?}");
    let swell = tokio::process::Command::new(swell_e2e::process::built_binary("swell").unwrap())
        .args(["volumes", "-o", "json", "--kubernetes", "never"])
        .arg(format!("--state-dir={}", dir.join("controller").display()))
        .arg(format!("--local-state-dir={}", dir.join("local").display()))
        .args(&rbd_flags)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&swell.stdout);
    assert!(swell.status.success(), "swell volumes as a user kept to its pool: {}{stdout}", String::from_utf8_lossy(&swell.stderr));
    assert!(stdout.contains(&id), "swell volumes does not show {id}: {stdout}");

    cc.delete_volume(DeleteVolumeRequest { volume_id: id, ..Default::default() }).await.unwrap();
    drop(controller);
    sweep::sweep(dir);
}
