//! Expansion state kept with the volumes on Ceph, as a real cluster runs
//! Swell: two controller replicas at once, a controller that moves to
//! another machine (an empty state directory) mid-grow, a replica frozen
//! while it holds a volume, and a reconciler whose cost follows the pending
//! volumes, not all of them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::*;
use swell_backends::Backends;
use swell_controller::ReconcilerConfig;
use swell_e2e::chaos::Xorshift;
use swell_e2e::harness::{ControllerUnderTest, NodeUnderTest};
use swell_e2e::host;
use swell_e2e::logs;
use swell_e2e::metrics::{scrape, sum};
use swell_e2e::process::ControllerProcess;
use swell_e2e::rbd_rig::{self, CLUSTER_ID, ClusterEnv, other_client, rbd_size};
use swell_e2e::requests::{self, block_capability, mount_capability};
use swell_e2e::resizer::expand_like_the_resizer;
use swell_e2e::state::{leave_wish, record_of};
use swell_e2e::sweep::MountSweeper;
use swell_node::NodeConfig;
use swell_rbd::{RbdBackend, RbdConfig};
use swell_storage::CephAccess;
use swell_storage::{Backend, ExpansionStore, RbdVolume, VolumeId};
use tonic::Code;
use tonic::transport::Channel;

use swell_storage::units::MIB;
const GRIP: &str = "rbd-grow-before-resize";
const UNHEARD: &str = "rbd-grow-before-announce";

async fn session(test: &str) -> Option<rbd_rig::Session> {
    rbd_rig::acquire(&format!("rbd_state::{test}")).await
}

/// A `swell-controller` process on the cluster, named `instance`, with its
/// state under a fresh directory of its own.
struct Replica {
    process: ControllerProcess,
    client: ControllerClient<Channel>,
    dir: tempfile::TempDir,
}

impl Replica {
    async fn start(env: &ClusterEnv, instance: &str, failpoints: Option<&str>) -> Replica {
        let env_vars = failpoints.map(|f| vec![("FAILPOINTS".to_owned(), f.to_owned())]).unwrap_or_default();
        Self::start_logging(env, instance, env_vars, false).await
    }

    /// With `log`, its JSON log goes to [`Replica::log`], with the RBD
    /// backend's debug lines (one per image resize).
    async fn start_logging(env: &ClusterEnv, instance: &str, mut env_vars: Vec<(String, String)>, log: bool) -> Replica {
        let dir = tempfile::Builder::new().prefix("swell-rbd-state-").tempdir_in("/var/tmp").unwrap();
        let mut args = rbd_rig::process_args(env, instance);
        let log = log.then(|| {
            args.push("--log-format=json".into());
            env_vars.push(("RUST_LOG".into(), "info,swell_rbd=debug".into()));
            dir.path().join("controller.log")
        });
        let process = ControllerProcess::start_logging(dir.path(), &dir.path().join("local"), args, env_vars, log).await.expect("controller process starts");
        let client = process.client().await.unwrap();
        Replica { process, client, dir }
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("controller.log")
    }

    /// The sizes of the image resizes this process made, from its log.
    fn resized_to(&self) -> Vec<u64> {
        logs::read(&self.log()).iter().filter(|l| l["message"] == "resized the image").map(|l| l["to"].as_u64().unwrap()).collect()
    }
}

async fn create(client: &mut ControllerClient<Channel>, name: &str, bytes: u64) -> String {
    // Raw block: sized exactly as asked; the node may still stage it with xfs.
    let created = client.create_volume(requests::create_volume(name, bytes as i64, block_capability())).await;
    created.unwrap_or_else(|e| panic!("create {name}: {e:?}")).into_inner().volume.unwrap().volume_id
}

fn image_size(env: &ClusterEnv, id: &str) -> u64 {
    let volume = RbdVolume::parse(&id.parse().unwrap()).unwrap();
    rbd_size(env, &volume.pool, &volume.image).unwrap().unwrap_or_else(|| panic!("no image for {id}"))
}

/// Watches the image's size until stopped; panics if it ever goes down.
fn watch_size(env: &'static ClusterEnv, id: String) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<u64>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let watching = Arc::clone(&stop);
    let task = tokio::task::spawn_blocking(move || {
        let mut seen = vec![image_size(env, &id)];
        while !watching.load(Ordering::SeqCst) {
            let now = image_size(env, &id);
            let last = *seen.last().unwrap();
            assert!(now >= last, "{id} went down from {last} to {now}");
            if now != last {
                seen.push(now);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    });
    (stop, task)
}

fn rbd_config(env: &ClusterEnv, instance: &str) -> RbdConfig {
    let mut config = RbdConfig::new(CLUSTER_ID, &env.conf, &env.keyring);
    config.instance = instance.to_owned();
    config
}

/// Waits until `id`'s record is what `done` says, reading it from Ceph.
async fn wait_record(
    store: &dyn ExpansionStore,
    id: &VolumeId,
    what: &str,
    done: impl Fn(&swell_storage::ExpansionRecord) -> bool,
) -> swell_storage::ExpansionRecord {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(record) = record_of(store, id).await
            && done(&record)
        {
            return record;
        }
        assert!(Instant::now() < deadline, "{id}: {what} not seen in 30 s: {:?}", record_of(store, id).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two replicas, as a Deployment with two controller pods runs them: 64
/// resizes of one volume split across both, sizes mixed. Every call ends OK
/// (after ABORTED retries, as the resizer does), the image ends at the
/// largest size, never goes down on the way, and no size is resized twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controller_replicas_share_one_volume_without_losing_or_repeating_a_grow() {
    let Some(session) = session("two_controller_replicas_share_one_volume_without_losing_or_repeating_a_grow").await else { return };
    let env = session.env;
    let (mut a, b) = (Replica::start_logging(env, "replica-a", vec![], true).await, Replica::start_logging(env, "replica-b", vec![], true).await);
    let id = create(&mut a.client, "two-replicas", 256 * MIB).await;
    let (stop, watcher) = watch_size(env, id.clone());

    let mut rng = Xorshift(0x2b_1ca5 | 1);
    let sizes: Vec<u64> = (0..64).map(|_| 256 * MIB + (1 + rng.below(12)) * 32 * MIB).collect();
    let mut distinct = sizes.clone();
    distinct.sort();
    distinct.dedup();
    let started = Instant::now();
    let calls: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &bytes)| {
            let client = if i % 2 == 0 { a.client.clone() } else { b.client.clone() };
            tokio::spawn(expand_like_the_resizer(client, id.clone(), bytes))
        })
        .collect();
    let mut aborted = 0;
    for call in calls {
        let resized = call.await.unwrap();
        assert_eq!(resized.codes.last(), Some(&Code::Ok), "a call ended without success: {:?}", resized.codes);
        aborted += resized.codes.iter().filter(|c| **c == Code::Aborted).count();
    }
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.await.unwrap();
    let largest = *distinct.last().unwrap();
    assert_eq!(image_size(env, &id), largest, "the image ends at the largest size asked");
    // Every resize the engine made, by target size: each at most once.
    let mut resized: BTreeMap<u64, usize> = BTreeMap::new();
    for to in a.resized_to().into_iter().chain(b.resized_to()) {
        *resized.entry(to / MIB).or_default() += 1;
    }
    println!(
        "two replicas: 64 calls ({} distinct sizes) in {took:?}, {aborted} ABORTED retried, resizes per size {resized:?} MiB, sizes seen {:?} MiB",
        distinct.len(),
        seen.iter().map(|s| s / MIB).collect::<Vec<_>>()
    );
    assert_eq!(resized.get(&(largest / MIB)), Some(&1), "the largest size is reached by one resize: {resized:?}");
    assert!(resized.values().all(|&n| n == 1), "a size resized more than once: {resized:?}");
}

/// Stages and publishes `id` on an in-process node (rbd-fuse + loop here)
/// and writes a file; returns the node, the target and the file's checksum.
async fn mount_on_node(env: &ClusterEnv, root: &Path, id: &str) -> (NodeUnderTest, String, String) {
    let mut config = NodeConfig::new("swell-rbd-state-node");
    config.state_dir = root.join("node");
    config.local_state_dir = root.join("local");
    config.rbd = Some(CephAccess { cluster_id: CLUSTER_ID.into(), ceph_conf: env.conf.clone(), keyring: env.keyring.clone(), user: "admin".into() });
    let mut node = NodeUnderTest::serve(&root.join("node.sock"), &config).await.unwrap();
    let cap = mount_capability("xfs");
    let (staging, target) = (root.join("staging").display().to_string(), root.join("pod/vol").display().to_string());
    node.client.node_stage_volume(requests::stage(id, &staging, cap.clone())).await.unwrap();
    node.client.node_publish_volume(requests::publish(id, &staging, &target, cap, false)).await.unwrap();
    let file = Path::new(&target).join("data.bin");
    host::write_pattern(&file, (4 * MIB) as usize, 11).unwrap();
    let checksum = host::sha256_file(&file).unwrap();
    (node, target, checksum)
}

/// A controller SIGKILLed mid-grow, its pod rescheduled to another node
/// (a fresh, empty state directory): the new controller finds the grow in
/// Ceph alone and finishes it, and the node can then grow its filesystem.
/// Twice: killed after recording the wish but before the resize, and after
/// the resize but before the image's clients were told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_on_another_machine_finishes_an_interrupted_grow_from_ceph_alone() {
    const TEST: &str = "a_controller_on_another_machine_finishes_an_interrupted_grow_from_ceph_alone";
    let Some(session) = session(TEST).await else { return };
    let env = session.env;
    if !Path::new("/dev/fuse").exists() {
        host::note_skip(&format!("rbd_state::{TEST}"), "/dev/fuse is missing");
        return;
    }
    let ceph = RbdBackend::new(rbd_config(env, "observer")).unwrap();
    let store = ceph.expansion_store();
    for (case, failpoint) in [("before the resize", GRIP), ("before the announcement", UNHEARD)] {
        let dir = tempfile::Builder::new().prefix("swell-rbd-move-").tempdir_in("/var/tmp").unwrap();
        let _sweeper = MountSweeper(dir.path().to_owned());
        let mut old = Replica::start(env, "moving-a", Some(&format!("{failpoint}=sleep(20000)"))).await;
        let name = format!("moved-{}", failpoint.len());
        let id = create(&mut old.client, &name, 512 * MIB).await;
        let volume: VolumeId = id.parse().unwrap();
        let (mut node, target, checksum) = mount_on_node(env, dir.path(), &id).await;

        let call = tokio::spawn({
            let mut client = old.client.clone();
            let id = id.clone();
            async move { client.controller_expand_volume(requests::controller_expand(&id, 1024 * MIB as i64, None)).await }
        });
        // Killed at the failpoint: once the wish is in Ceph (and, for the
        // second case, once the header holds the new size).
        wait_record(&*store, &volume, "the recorded wish", |r| r.desired_bytes == 1024 * MIB).await;
        if failpoint == UNHEARD {
            let deadline = Instant::now() + Duration::from_secs(20);
            while image_size(env, &id) != 1024 * MIB {
                assert!(Instant::now() < deadline, "the header never grew");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        old.process.kill().await;
        assert!(call.await.unwrap().is_err(), "the killed controller did not answer");
        let record = record_of(&*store, &volume).await.unwrap();
        assert!(record.pending(), "{case}: the state left behind is pending: {record:?}");

        let new = Replica::start(env, "moving-b", None).await;
        let settled = wait_record(&*store, &volume, "the finished grow", |r| !r.pending() && r.current_bytes == 1024 * MIB).await;
        assert_eq!(image_size(env, &id), 1024 * MIB, "{case}");
        let grown = node
            .client
            .node_expand_volume(requests::node_expand(
                &id,
                &target,
                &dir.path().join("staging").display().to_string(),
                1024 * MIB as i64,
                mount_capability("xfs"),
            ))
            .await;
        let grown = grown.unwrap_or_else(|e| panic!("{case}: NodeExpandVolume after the move: {e:?}")).into_inner();
        assert_eq!(grown.capacity_bytes as u64, 1024 * MIB, "{case}");
        assert_eq!(host::sha256_file(&Path::new(&target).join("data.bin")).unwrap(), checksum, "{case}: data intact");
        println!("move {case}: a controller with an empty state dir finished the grow (record generation {}), node grew to 1024 MiB", settled.generation);

        node.client.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
        node.client.node_unstage_volume(requests::unstage(&id, &dir.path().join("staging").display().to_string())).await.unwrap();
        let mut client = new.client.clone();
        client.delete_volume(DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() }).await.unwrap();
    }
}

/// A replica frozen (SIGSTOP) while it holds a volume mid-grow: the other
/// replica gets the volume once the lease runs out and grows it further;
/// when the frozen one wakes, the image never shrinks and the record is
/// never rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_holder_wakes_to_find_the_volume_moved_on_and_changes_nothing() {
    let Some(session) = session("a_frozen_holder_wakes_to_find_the_volume_moved_on_and_changes_nothing").await else { return };
    let env = session.env;
    let ceph = RbdBackend::new(rbd_config(env, "observer")).unwrap();
    let store = ceph.expansion_store();
    let mut frozen = Replica::start(env, "frozen", Some(&format!("{GRIP}=sleep(3000)"))).await;
    let mut other = Replica::start(env, "other", None).await;
    let id = create(&mut other.client, "frozen-holder", 256 * MIB).await;
    let volume: VolumeId = id.parse().unwrap();

    // Retried on ABORTED like the resizer: the creating replica's lock may
    // still linger for a moment.
    let mut stalled = tokio::spawn(expand_like_the_resizer(frozen.client.clone(), id.clone(), 512 * MIB));
    let wish = tokio::select! {
        wish = wait_record(&*store, &volume, "the frozen replica's wish", |r| r.desired_bytes == 512 * MIB) => wish,
        answer = &mut stalled => panic!("the replica answered before it reached the failpoint: {answer:?}"),
    };
    frozen.process.freeze();
    let frozen_at = Instant::now();
    // The other replica is refused while the lease lasts, then takes over.
    let codes = expand_like_the_resizer(other.client.clone(), id.clone(), 768 * MIB).await.codes;
    assert_eq!(codes.last(), Some(&Code::Ok), "{codes:?}");
    let took_over = frozen_at.elapsed();
    let after = record_of(&*store, &volume).await.unwrap();
    assert_eq!((after.desired_bytes, after.current_bytes), (768 * MIB, 768 * MIB));
    assert!(after.generation > wish.generation);
    assert_eq!(image_size(env, &id), 768 * MIB);

    frozen.process.thaw();
    let woken = tokio::time::timeout(Duration::from_secs(70), &mut stalled).await.expect("the woken replica answers").unwrap();
    // Its answer may come at a deadline while its Ceph work still runs: its
    // clean exit proves that work returned (the runtime waits for it).
    let exit = frozen.process.stop(Duration::from_secs(30)).await.expect("the woken replica exits within 30 s of SIGTERM");
    assert!(exit.success(), "the woken replica exits cleanly: {exit}");
    let last = record_of(&*store, &volume).await.unwrap();
    println!(
        "frozen holder: the other replica took over after {took_over:?} ({} ABORTED first); the woken one answered {:?}; image {} MiB, record {:?}",
        codes.len() - 1,
        woken.codes,
        image_size(env, &id) / MIB,
        (last.desired_bytes / MIB, last.current_bytes / MIB, last.generation)
    );
    assert_eq!(image_size(env, &id), 768 * MIB, "never shrinks");
    assert!(last.desired_bytes >= 768 * MIB && last.current_bytes == 768 * MIB, "never rolled back: {last:?}");
    assert!(last.generation >= after.generation);
    assert!(woken.size.is_none_or(|size| size >= 768 * MIB), "no success reported for an older size: {woken:?}");
    // A lease the stopped replica held runs out first: retried on ABORTED, as the provisioner does.
    let mut client = other.client.clone();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match client.delete_volume(DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() }).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::Aborted && Instant::now() < until => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(status) => panic!("delete {id}: {status:?}"),
        }
    }
}

/// Makes `pool` anew (removing one left by an earlier run), with 8 PGs.
fn fresh_pool(env: &ClusterEnv, pool: &str) {
    let _ = rbd_rig::cli(env, "ceph", &["osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"]);
    rbd_rig::cli(env, "ceph", &["osd", "pool", "create", pool, "8"]).unwrap();
    rbd_rig::cli(env, "rbd", &["pool", "init", pool]).unwrap();
}

/// 2,000 settled volumes and 20 pending ones: a reconciler pass reads the
/// backend for the 20 only. Its time is swell-bench's figure (the scale
/// goal "a reconciler pass follows the pending volumes"), judged on medians.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconciler_pass_reads_only_the_pending_volumes() {
    let Some(session) = session("a_reconciler_pass_reads_only_the_pending_volumes").await else { return };
    let env = session.env;
    let pool = "settled";
    fresh_pool(env, pool);
    let ceph = Arc::new(RbdBackend::new(RbdConfig { default_pool: pool.into(), ..rbd_config(env, "cost") }).unwrap());
    // Records only: settled entries written straight into the pool's state
    // shards, as 2,000 volumes Swell made long ago would have left them.
    let settled: Vec<_> = (0..2000).map(|i| (RbdVolume::for_name(CLUSTER_ID, pool, &format!("settled-{i}")).unwrap(), format!("settled-{i}"), MIB)).collect();
    other_client(env, pool).seed_settled_volumes(&settled).unwrap();
    let dir = tempfile::Builder::new().prefix("swell-rbd-cost-").tempdir_in("/var/tmp").unwrap();
    let controller = ControllerUnderTest::start(dir.path(), Backends::new(ceph.clone(), Duration::from_secs(15)), ReconcilerConfig::default()).await.unwrap();
    let mut client = controller.client.clone();
    let store = ceph.expansion_store();
    let mut pending = Vec::new();
    for i in 0..20 {
        let id: VolumeId = create(&mut client, &format!("pending-{i}"), 64 * MIB).await.parse().unwrap();
        leave_wish(&*store, &id, 64 * MIB, 96 * MIB, None).await;
        pending.push(id);
    }
    let reads = |text: &str| sum(text, "swell_backend_call_duration_seconds_count", |labels| labels.starts_with("operation=\"read volume")) as u64;
    let before = reads(&scrape(controller.metrics).await);
    let started = Instant::now();
    let report = controller.reconciler.pass().await;
    let took = started.elapsed();
    let volume_reads = reads(&scrape(controller.metrics).await) - before;
    println!("cost: 2,000 settled + 20 pending: one pass in {took:?}, {volume_reads} volume reads, report {report:?}");
    assert_eq!((report.examined, report.completed), (20, 20), "{report:?}");
    // One read to judge each pending volume, one to verify its grow.
    assert_eq!(volume_reads, 2 * 20, "only the pending volumes are read");
    for id in &pending {
        assert_eq!(image_size(env, &id.to_string()), 96 * MIB);
    }
    rbd_rig::cli(env, "ceph", &["osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"]).unwrap();
}

/// The objects holding Swell's state in `pool` (and `namespace`), by name.
fn state_objects(env: &ClusterEnv, pool: &str, namespace: &str) -> Vec<String> {
    let listed = rbd_rig::cli(env, "rados", &["-p", pool, "-N", namespace, "ls"]).unwrap();
    let mut names: Vec<String> =
        listed.lines().filter(|o| o.starts_with("swell.state") || *o == "swell.layout" || *o == "swell.budget").map(str::to_owned).collect();
    names.sort();
    names
}

/// A pool whose state is still the one `swell.state` object of releases
/// before sharding, in the default namespace and in another, each with a
/// move into shards cut off after five of sixteen shards (as a controller
/// killed there leaves it): two controllers starting at once complete the
/// move, every volume is listed once with its name, the pending one is
/// still pending, the promised bytes are exactly the old total, the old
/// object holds only a total no release parses (so an earlier release
/// left running fails there), and creates and deletes keep the total exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_kept_in_one_state_object_moves_into_shards_even_after_a_cut_off_move() {
    let Some(session) = session("a_pool_kept_in_one_state_object_moves_into_shards_even_after_a_cut_off_move").await else { return };
    let env = session.env;
    let pool = "unsharded";
    fresh_pool(env, pool);
    rbd_rig::cli(env, "rbd", &["namespace", "create", &format!("{pool}/old")]).unwrap();
    for namespace in ["", "old"] {
        let volume = |name: &str| RbdVolume::for_name_in(CLUSTER_ID, pool, namespace, name).unwrap();
        let settled: Vec<_> = (0..300u64).map(|i| (volume(&format!("old-{i}")), format!("old-{i}"), (1 + i % 4) * MIB)).collect();
        let wishes = [(volume("wishing"), "wishing".to_owned(), 64 * MIB, 96 * MIB)];
        let client = swell_rbd::test_util::OtherClient::connect_in(&env.access(), pool, namespace).unwrap();
        client.seed_unsharded_volumes(&settled, &wishes).unwrap();
        let promised: u64 = settled.iter().map(|(_, _, bytes)| bytes).sum::<u64>() + 96 * MIB;
        assert_eq!(client.migrate_state(Some(5)), Err(nix::errno::Errno::EINTR), "the move is cut off");
        let cut: Vec<String> = ["swell.state"].into_iter().map(str::to_owned).chain((0..5).map(|n| format!("swell.state.{n}"))).collect();
        let mut cut = cut;
        cut.sort();
        assert_eq!(state_objects(env, pool, namespace), cut, "five shards made, the old object kept, no layout yet");

        let config = |instance: &str| RbdConfig { default_pool: pool.into(), namespace: namespace.into(), ..rbd_config(env, instance) };
        let (a, b) = (RbdBackend::new(config("move-a")).unwrap(), RbdBackend::new(config("move-b")).unwrap());
        let (listed_a, listed_b) = tokio::join!(a.list_volumes(None, 0), b.list_volumes(None, 0));
        let (listed_a, listed_b) = (listed_a.unwrap(), listed_b.unwrap());
        let mut expected: Vec<String> = settled.iter().map(|(v, _, _)| v.id().to_string()).chain([wishes[0].0.id().to_string()]).collect();
        expected.sort();
        for listed in [&listed_a, &listed_b] {
            let ids: Vec<String> = listed.iter().map(|v| v.id.to_string()).collect();
            assert_eq!(ids, expected, "every volume once, in id order ({namespace:?})");
        }
        assert_eq!(a.promised(pool).await.unwrap(), promised, "the promise is the old total");
        let mut shards: Vec<String> =
            (0..16).map(|n| format!("swell.state.{n}")).chain(["swell.budget".into(), "swell.layout".into(), "swell.state".into()]).collect();
        shards.sort();
        assert_eq!(state_objects(env, pool, namespace), shards);
        let fenced = rbd_rig::cli(env, "rados", &["-p", pool, "-N", namespace, "listomapkeys", "swell.state"]).unwrap();
        assert_eq!(fenced.trim(), "total", "the old object keeps only its fenced total");
        let out = tempfile::NamedTempFile::new().unwrap();
        rbd_rig::cli(env, "rados", &["-p", pool, "-N", namespace, "getomapval", "swell.state", "total", &out.path().to_string_lossy()]).unwrap();
        let fence = std::fs::read_to_string(out.path()).unwrap();
        assert!(fence.starts_with("moved into shards"), "an earlier release finds a total it cannot parse: {fence}");
        let pending = b.expansion_store().pending().await.unwrap();
        let pending: Vec<String> = pending.readable.iter().map(|r| r.volume_id.to_string()).collect();
        assert_eq!(pending, [wishes[0].0.id().to_string()], "the pending mark moved with its entry");

        let made = a.create_volume("after-the-move", 8 * MIB, &Default::default()).await.unwrap();
        assert_eq!(b.promised(pool).await.unwrap(), promised + 8 * MIB);
        b.delete_volume(&made.info().id).await.unwrap();
        assert_eq!(a.promised(pool).await.unwrap(), promised, "a deleted volume promises nothing");
    }
    rbd_rig::cli(env, "ceph", &["osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"]).unwrap();
}

/// Two controllers creating at once in a pool whose quota holds exactly
/// eight volumes: the shards' grants (docs/rbd-state.md) admit exactly
/// eight, wherever their entries land, and no more; two deletes make room
/// for exactly two; a quota lowered below what the grants hold refuses
/// every create, also of volumes whose entries land in shards that kept
/// the unused grants of the volumes deleted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_admit_exactly_what_the_pool_holds_and_follow_a_shrinking_quota() {
    let Some(session) = session("shards_admit_exactly_what_the_pool_holds_and_follow_a_shrinking_quota").await else { return };
    let env = session.env;
    let pool = "granted";
    fresh_pool(env, pool);
    let size = 32 * MIB;
    rbd_rig::cli(env, "ceph", &["osd", "pool", "set-quota", pool, "max_bytes", &(8 * size).to_string()]).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let config = |instance: &str| RbdConfig { default_pool: pool.into(), ..rbd_config(env, instance) };
    let (a, b) = (Arc::new(RbdBackend::new(config("grant-a")).unwrap()), Arc::new(RbdBackend::new(config("grant-b")).unwrap()));
    let creates = |names: Vec<String>| {
        let tasks: Vec<_> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let backend = if i % 2 == 0 { Arc::clone(&a) } else { Arc::clone(&b) };
                tokio::spawn(async move { backend.create_volume(&name, size, &Default::default()).await.map(|c| (name, c.info().id.clone())) })
            })
            .collect();
        async move {
            let mut made = Vec::new();
            let mut refused = 0;
            for task in tasks {
                match task.await.unwrap() {
                    Ok(id) => made.push(id),
                    Err(swell_storage::BackendError::NoSpace { .. }) => refused += 1,
                    Err(other) => panic!("a create failed otherwise than for room: {other}"),
                }
            }
            (made, refused)
        }
    };
    let (made, refused) = creates((0..12).map(|i| format!("fill-{i}")).collect()).await;
    assert_eq!((made.len(), refused), (8, 4), "exactly the eight that fit");
    assert_eq!(a.promised(pool).await.unwrap(), 8 * size);
    for (_, id) in &made[..2] {
        b.delete_volume(id).await.unwrap();
    }
    let (again, refused) = creates((0..5).map(|i| format!("refill-{i}")).collect()).await;
    assert_eq!((again.len(), refused), (2, 3), "exactly the two deleted ones' room");
    assert_eq!(b.promised(pool).await.unwrap(), 8 * size);
    rbd_rig::cli(env, "ceph", &["osd", "pool", "set-quota", pool, "max_bytes", &(4 * size).to_string()]).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deleted: Vec<&(String, VolumeId)> = made[2..5].iter().chain(&again[..1]).collect();
    for (_, id) in &deleted {
        a.delete_volume(id).await.unwrap();
    }
    // The same names: entries in the very shards whose grants the deletes left unused.
    let (late, refused) = creates(deleted.iter().map(|(name, _)| name.clone()).collect()).await;
    assert_eq!((late.len(), refused), (0, 4), "four promised under a quota of four: nothing more");
    rbd_rig::cli(env, "ceph", &["osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"]).unwrap();
}

/// Lock acquire and release on the test cluster, and the exclusion they
/// give between two replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_held_by_one_replica_is_refused_to_another_until_released() {
    let Some(session) = session("a_volume_held_by_one_replica_is_refused_to_another_until_released").await else { return };
    let env = session.env;
    let (a, b) = (RbdBackend::new(rbd_config(env, "lock-a")).unwrap(), RbdBackend::new(rbd_config(env, "lock-b")).unwrap());
    let id: VolumeId = RbdVolume::for_name(CLUSTER_ID, "rbd", "held").unwrap().id();
    // Only a volume can be held: an id without an entry is NOT_FOUND and takes no lock.
    let hold = a.expansion_store().hold(&id).await;
    assert!(matches!(&hold, Err(swell_storage::BackendError::NotFound(_))), "{:?}", hold.is_ok());
    a.create_volume("held", 64 * MIB, &Default::default()).await.unwrap();
    let hold = a.expansion_store().hold(&id).await.unwrap().expect("free");
    assert!(b.expansion_store().hold(&id).await.unwrap().is_none(), "another replica is refused while it is held");
    hold.release().await;
    // Kept a moment for a's next call, then given back: b gets it then.
    let released = Instant::now();
    let hold = loop {
        if let Some(hold) = b.expansion_store().hold(&id).await.unwrap() {
            break hold;
        }
        assert!(released.elapsed() < Duration::from_secs(10), "b never got the volume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("lock: b got the volume {:?} after a released it", released.elapsed());
    hold.release().await;
    b.delete_volume(&id).await.unwrap();

    // The raw lock operations, as every hold and release makes them.
    let io = other_client(env, "rbd");
    let (mut takes, mut gives) = (Vec::new(), Vec::new());
    for i in 0..15 {
        let image = format!("swell-timing-{i}");
        let started = Instant::now();
        io.lock_volume(&image, "timing", Duration::from_secs(10)).unwrap();
        takes.push(started.elapsed());
        let started = Instant::now();
        io.unlock_volume(&image, "timing").unwrap();
        gives.push(started.elapsed());
    }
    takes.sort();
    gives.sort();
    println!("lock: acquire p50 {:?} p90 {:?}; release p50 {:?} p90 {:?}", takes[7], takes[13], gives[7], gives[13]);
}
