//! "Expansion never gets stuck", on the Ceph RBD backend against a real
//! throwaway cluster, all over the real gRPC socket: 64 racing expansions of
//! one image, 64 images expanded at once, the Longhorn 13379 state (a record
//! that claims a size the image does not have), and ≥100 SIGKILLs of a real
//! `swell-controller` process started with the rbd flags while expansions
//! are in flight, with data checked through an in-process node.
//!
//! One cluster serves every test here (see `rbd_rig`); it lives in its own
//! directory on its own ports and is purged by the last test.
//! `SWELL_RBD_TEST_CLUSTER=DIR` reuses a running cluster instead;
//! `SWELL_CHAOS_KILLS` and `SWELL_CHAOS_SEED` override the chaos defaults.

mod rbd_rig;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::{ControllerGetVolumeRequest, DeleteVolumeRequest};
use rbd_rig::{CLUSTER_ID, ClusterEnv, rbd_size};
use swell_controller::Backends;
use swell_controller::rbd::{RbdBackend, RbdConfig};
use swell_controller::reconciler::ReconcilerConfig;
use swell_e2e::chaos::{Xorshift, env_number};
use swell_e2e::harness::{ControllerUnderTest, NodeUnderTest};
use swell_e2e::host;
use swell_e2e::instrumented::InstrumentedBackend;
use swell_e2e::process::ControllerProcess;
use swell_e2e::requests::{self, mount_capability};
use swell_e2e::resizer::expand_like_the_resizer;
use swell_e2e::state::leave_wish;
use swell_e2e::sweep::{MountSweeper, leftovers};
use swell_node::{NodeConfig, RbdNodeConfig};
use swell_storage::{Backend, ExpansionStore, VolumeId};
use tonic::Code;
use tonic::transport::Channel;

/// The tests in this binary; the last to finish purges the cluster.
const TESTS: usize = 6;
const SITE_DIR: &str = "/var/tmp/rbd-never-stuck-e2e";
const SITE_PORT: u16 = 31400;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Deadline of every backend call in the in-process controllers (the RBD
/// backend's own is op_timeout × 2 + 1 s = 7 s).
const BACKEND_DEADLINE: Duration = Duration::from_secs(15);
/// How long the restarted controller may take to settle every record
/// (`SWELL_RBD_RECONCILE_DEADLINE_SECS` overrides). Not 20 s: a controller
/// SIGKILLed while it had an image open read-write leaves the image's
/// exclusive lock owned by a dead client, and librbd breaks that lock only
/// after the dead client's watch expires on the OSD (osd_client_watch_timeout,
/// 30 s by default). Measured: most settles take < 0.5 s, many 5–9 s (librbd's
/// 5 s lock-request notify timing out), a few 31 s. Settles over 20 s are
/// counted and printed.
fn reconcile_deadline() -> Duration {
    Duration::from_secs(env_number("SWELL_RBD_RECONCILE_DEADLINE_SECS", 45))
}

async fn session(test: &str) -> Option<rbd_rig::Session> {
    rbd_rig::acquire_on(&format!("rbd_never_stuck::{test}"), TESTS, SITE_DIR, SITE_PORT).await
}

fn rbd_config(env: &ClusterEnv) -> RbdConfig {
    RbdConfig::new(CLUSTER_ID, &env.conf, &env.keyring)
}

/// An in-process controller whose only backend is RBD, wrapped to record grows.
struct Rig {
    backend: Arc<InstrumentedBackend>,
    ceph: Arc<RbdBackend>,
    controller: ControllerUnderTest,
    _dir: tempfile::TempDir,
}

async fn rig(env: &ClusterEnv) -> Rig {
    let dir = tempfile::Builder::new().prefix("swell-rbd-never-stuck-").tempdir_in("/var/tmp").unwrap();
    let ceph = Arc::new(RbdBackend::new(rbd_config(env)).unwrap());
    let backend = InstrumentedBackend::new(ceph.clone(), Duration::ZERO);
    let backends = Backends::new(backend.clone(), BACKEND_DEADLINE);
    let controller = ControllerUnderTest::start(dir.path(), backends, ReconcilerConfig::default()).await.unwrap();
    Rig { backend, ceph, controller, _dir: dir }
}

impl Rig {
    /// Where the controller keeps the volumes' expansion records: in Ceph.
    fn store(&self) -> Arc<swell_controller::rbd::store::RbdStore> {
        self.ceph.store()
    }
}

async fn create(client: &mut ControllerClient<Channel>, name: &str, bytes: u64) -> String {
    let created = client.create_volume(requests::create_volume(name, bytes as i64, mount_capability("xfs"))).await;
    let id = created.unwrap_or_else(|e| panic!("create {name}: {e:?}")).into_inner().volume.unwrap().volume_id;
    assert!(id.starts_with(&format!("rbd:{CLUSTER_ID}:rbd:swell-")), "{id}");
    id
}

async fn delete(client: &mut ControllerClient<Channel>, id: &str) {
    client.delete_volume(DeleteVolumeRequest { volume_id: id.to_owned(), ..Default::default() }).await.unwrap_or_else(|e| panic!("delete {id}: {e:?}"));
}

async fn size_of(client: &mut ControllerClient<Channel>, id: &str) -> u64 {
    let got = client.controller_get_volume(ControllerGetVolumeRequest { volume_id: id.into() }).await.unwrap();
    got.into_inner().volume.unwrap().capacity_bytes as u64
}

/// Where the RBD volume `id` lives (pool and image).
fn location_of(id: &impl ToString) -> swell_storage::RbdVolume {
    swell_storage::RbdVolume::parse(&id.to_string().parse().unwrap()).unwrap()
}

/// The image's size per `rbd info --format json`.
fn rbd_info_size(env: &ClusterEnv, id: &str) -> u64 {
    let location = location_of(&id);
    rbd_size(env, &location.pool, &location.image).unwrap().unwrap_or_else(|| panic!("no image for {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_racing_expansions_of_one_image_end_at_the_largest_and_only_grow() {
    let Some(session) = session("sixty_four_racing_expansions_of_one_image_end_at_the_largest_and_only_grow").await else { return };
    let env = session.env;
    let mut rig = rig(env).await;
    let id = create(&mut rig.controller.client, "race", GIB).await;
    let sizes: Vec<u64> = (0..64u64).map(|i| GIB + ((i * 37) % 64 + 1) * 64 * MIB).collect();
    let started = Instant::now();
    let calls: Vec<_> = sizes.iter().map(|&bytes| tokio::spawn(expand_like_the_resizer(rig.controller.client.clone(), id.clone(), bytes))).collect();
    let mut aborted = 0;
    for call in calls {
        let codes = call.await.unwrap();
        assert_eq!(codes.last(), Some(&Code::Ok), "a call ended without success: {codes:?}");
        assert!(codes.iter().all(|c| matches!(c, Code::Ok | Code::Aborted)), "only OK or ABORTED: {codes:?}");
        aborted += codes.len() - 1;
    }
    let took = started.elapsed();
    let largest = *sizes.iter().max().unwrap();
    assert_eq!(size_of(&mut rig.controller.client, &id).await, largest, "ControllerGetVolume");
    assert_eq!(rbd_info_size(env, &id), largest, "rbd info");
    let grows: Vec<u64> = rig.backend.grows().into_iter().map(|(_, size)| size).collect();
    assert!(grows.windows(2).all(|w| w[0] < w[1]), "the engine saw a non-increasing resize: {grows:?}");
    println!("rbd: 64 racing expansions in {took:?}: {} rbd resizes, {aborted} ABORTED answers retried, final {} MiB", grows.len(), largest / MIB);
    delete(&mut rig.controller.client, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_images_expand_in_parallel() {
    let Some(session) = session("sixty_four_images_expand_in_parallel").await else { return };
    let env = session.env;
    let mut rig = rig(env).await;
    let made = Instant::now();
    let mut ids = Vec::new();
    for i in 0..65 {
        ids.push(create(&mut rig.controller.client, &format!("par-{i}"), 64 * MIB).await);
    }
    println!("rbd: 65 creates, one after another, took {:?}", made.elapsed());
    // Warm: the first call connects to Ceph.
    let one = Instant::now();
    let first = rig.controller.client.controller_expand_volume(requests::controller_expand(&ids[64], (96 * MIB) as i64, None)).await;
    let warm = one.elapsed();
    first.unwrap_or_else(|e| panic!("warm-up expansion: {e:?}"));
    let one = Instant::now();
    let single = rig.controller.client.controller_expand_volume(requests::controller_expand(&ids[64], (128 * MIB) as i64, None)).await;
    let single_took = one.elapsed();
    single.unwrap_or_else(|e| panic!("single expansion: {e:?}"));

    let all = Instant::now();
    let calls: Vec<_> = ids[..64]
        .iter()
        .map(|id| {
            let mut client = rig.controller.client.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = client.controller_expand_volume(requests::controller_expand(&id, (128 * MIB) as i64, None)).await;
                (answer.map(|a| a.into_inner().capacity_bytes as u64), started.elapsed())
            })
        })
        .collect();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    for call in calls {
        let (answer, took) = call.await.unwrap();
        slowest = slowest.max(took);
        match answer {
            Ok(size) => {
                *codes.entry("OK".into()).or_default() += 1;
                assert_eq!(size, 128 * MIB);
            }
            Err(status) => {
                *codes.entry(format!("{:?}", status.code())).or_default() += 1;
                failures.push(format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
    let wall = all.elapsed();
    let ratio = (single_took.as_secs_f64() * 64.0) / wall.as_secs_f64();
    println!(
        "rbd: 64 images: first (connecting) expansion {warm:?}, one expansion {single_took:?}, all 64 at once {wall:?} \
         (slowest call {slowest:?}), 64x-one / wall = {ratio:.1}; answers {codes:?}"
    );
    for failure in failures.iter().take(3) {
        println!("  e.g. {failure}");
    }
    let resized = ids[..64].iter().filter(|id| rbd_info_size(env, id) == 128 * MIB).count();
    for id in &ids {
        delete(&mut rig.controller.client, id).await;
    }
    assert!(
        failures.is_empty(),
        "{} of 64 concurrent expansions failed ({resized} images did reach 128 MiB): {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // Serialised expansions give a ratio near 1 (it was 1.9 while a pool read
    // sat under the ledger lock). On two cores that also run three OSDs and a
    // monitor, CPU caps a parallel speed-up at about 4.
    assert!(ratio > 2.5, "64 images took {wall:?} vs {single_took:?} for one: rbd expansions are serialised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_claims_done_while_the_image_lags_is_completed_not_believed() {
    let Some(session) = session("a_record_that_claims_done_while_the_image_lags_is_completed_not_believed").await else { return };
    let env = session.env;
    let mut rig = rig(env).await;
    let id = create(&mut rig.controller.client, "lh13379", GIB).await;
    let volume: VolumeId = id.parse().unwrap();
    // The Longhorn 13379 state: the record says 2 GiB reached, the image has 1 GiB.
    leave_wish(&*rig.store(), &volume, GIB, 2 * GIB, Some(2 * GIB)).await;

    let status = rig.controller.client.controller_get_volume(ControllerGetVolumeRequest { volume_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(status.volume.unwrap().capacity_bytes as u64, GIB, "the size is read from the image, not the record");
    let condition = status.status.unwrap().volume_condition.unwrap();
    assert!(condition.abnormal, "a volume short of its recorded wish is abnormal: {condition:?}");
    println!("rbd: lh13379 condition: {}", condition.message);

    // An expansion request for 2 GiB must grow the image, not answer "done".
    let answer = rig.controller.client.controller_expand_volume(requests::controller_expand(&id, (2 * GIB) as i64, None)).await.unwrap();
    assert_eq!(answer.into_inner().capacity_bytes as u64, 2 * GIB);
    assert_eq!(rig.backend.grows(), vec![(volume.clone(), 2 * GIB)], "rbd was really asked to resize");
    assert_eq!(rbd_info_size(env, &id), 2 * GIB, "rbd info shows the grown image");

    // And the reconciler's sweep over settled records finds and completes
    // the same state on its own (a record claiming "done" is not pending).
    let second = create(&mut rig.controller.client, "lh13379-b", GIB).await;
    let second_id: VolumeId = second.parse().unwrap();
    leave_wish(&*rig.store(), &second_id, GIB, 3 * GIB, Some(3 * GIB)).await;
    assert_eq!(rig.controller.reconciler.pass().await.completed, 0, "a settled record is not visited by a pass");
    assert!(rig.controller.reconciler.sweep_step(Duration::from_secs(1)).await >= 2, "the sweep read both records");
    assert_eq!(rbd_info_size(env, &second), 3 * GIB, "rbd info after the reconciler's pass");
    assert_eq!(size_of(&mut rig.controller.client, &second).await, 3 * GIB);
    let again = rig.controller.reconciler.pass().await;
    assert_eq!((again.completed, again.pending), (0, 0), "nothing left to do: {again:?}");
    for id in [&id, &second] {
        delete(&mut rig.controller.client, id).await;
    }
}

/// Whether `image` of pool `rbd` is in the trash, by name.
fn in_trash(env: &ClusterEnv, image: &str) -> bool {
    rbd_rig::cli(env, "rbd", &["trash", "ls", "rbd"]).unwrap().lines().any(|l| l.split_whitespace().nth(1) == Some(image))
}

/// A DeleteVolume while Ceph still lists a watcher on the image (a node that
/// has not let go, or, as after the chaos test, a crashed client Ceph keeps
/// listing for minutes) must not wait on it: the image goes to the trash,
/// the name is free at once, and the reconciler's garbage collection removes
/// it once the watcher is gone, never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_while_the_image_is_watched_finishes_through_the_trash() {
    let Some(session) = session("a_delete_while_the_image_is_watched_finishes_through_the_trash").await else { return };
    let env = session.env;
    let mut rig = rig(env).await;
    let name = format!("watched-{}", std::process::id());
    let id = create(&mut rig.controller.client, &name, 64 * MIB).await;
    let image = location_of(&id).image;
    // `rbd watch` holds a watch on the header until it reads a line.
    let mut watcher = std::process::Command::new("rbd")
        .arg("-c")
        .arg(&env.conf)
        .args(["watch", &format!("rbd/{image}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while !rbd_rig::cli(env, "rbd", &["status", &format!("rbd/{image}")]).unwrap().contains("watcher=") {
        assert!(Instant::now() < until, "rbd watch did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    delete(&mut rig.controller.client, &id).await;
    println!("rbd: DeleteVolume of a watched image answered OK in {:?}", started.elapsed());
    // The background work moves it to the trash (the delete only marked it).
    rig.controller.reconciler.collect_garbage().await;
    assert!(in_trash(env, &image), "the watched image waits in the trash");
    assert_eq!(rbd_size(env, "rbd", &image).unwrap(), None, "gone from the pool's image list");
    let again = create(&mut rig.controller.client, &name, 128 * MIB).await;
    assert_eq!((again.as_str(), size_of(&mut rig.controller.client, &again).await), (id.as_str(), 128 * MIB), "the name is free: a new image");
    delete(&mut rig.controller.client, &again).await;

    rig.controller.reconciler.collect_garbage().await;
    assert!(in_trash(env, &image), "never removed while watched");
    use std::io::Write as _;
    watcher.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(watcher.wait().unwrap().success(), "rbd watch let go");
    rig.controller.reconciler.collect_garbage().await;
    assert!(!in_trash(env, &image), "removed once the watcher was gone");
}

/// Leaves an image as a resize cut off between writing the header and
/// notifying the watchers does: the header holds `bytes`, and no client that
/// has the image open was told (librbd re-reads the header only when told).
fn resize_header_unannounced(env: &ClusterEnv, id: &str, bytes: u64, scratch: &Path) {
    let location = location_of(&id);
    let spec = format!("{}/{}", location.pool, location.image);
    let info: serde_json::Value = serde_json::from_str(&rbd_rig::cli(env, "rbd", &["info", "--format", "json", &spec]).unwrap()).unwrap();
    let header = format!("rbd_header.{}", info["id"].as_str().unwrap());
    let value = scratch.join("header-size");
    std::fs::write(&value, bytes.to_le_bytes()).unwrap();
    let value = value.display().to_string();
    rbd_rig::cli(env, "rados", &["-p", &location.pool, "setomapval", &header, "size", "--input-file", &value]).unwrap();
}

/// The failure the chaos test once met in CI: a controller SIGKILLed after
/// librbd wrote the new size into the image header but before it notified
/// the watchers. rbd-fuse (like any open image) then shows the old size
/// forever, and NodeExpandVolume can never finish. Swell must tell the
/// watchers when it finds a grow finished behind its back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_the_watchers_never_heard_of_is_announced_so_the_node_can_grow() {
    const TEST: &str = "a_resize_the_watchers_never_heard_of_is_announced_so_the_node_can_grow";
    let Some(session) = session(TEST).await else { return };
    let env = session.env;
    if !Path::new("/dev/fuse").exists() {
        host::note_skip(&format!("rbd_never_stuck::{TEST}"), "/dev/fuse is missing");
        return;
    }
    let mut rig = rig(env).await;
    let dir = tempfile::Builder::new().prefix("swell-rbd-unheard-").tempdir_in("/var/tmp").unwrap();
    let _sweeper = MountSweeper(dir.path().to_owned());
    let root = dir.path();
    let mut node = start_node(root, env).await;
    let cap = mount_capability("xfs");
    let name = format!("unheard-{}", std::process::id()); // a reused cluster may hold an earlier run's image
    let id = create(&mut rig.controller.client, &name, 512 * MIB).await;
    let volume: VolumeId = id.parse().unwrap();
    let (staging, target) = (root.join("staging").display().to_string(), root.join("pod/vol").display().to_string());
    node.client.node_stage_volume(requests::stage(&id, &staging, cap.clone())).await.unwrap();
    node.client.node_publish_volume(requests::publish(&id, &staging, &target, cap.clone(), false)).await.unwrap();
    let data = Path::new(&target).join("data.bin");
    host::write_pattern(&data, (8 * MIB) as usize, 7).unwrap();
    let checksum = host::sha256_file(&data).unwrap();

    // The state the killed controller left: the wish recorded, the header grown, nobody told.
    leave_wish(&*rig.store(), &volume, 512 * MIB, GIB, None).await;
    resize_header_unannounced(env, &id, GIB, root);
    assert_eq!(rbd_info_size(env, &id), GIB, "the header holds the new size");
    // The node's rbd-fuse layout: <state>/rbd-fuse/<cluster>/<pool>/<image>/<image>.
    let location = location_of(&volume);
    let fuse_file = root.join("node/rbd-fuse").join(CLUSTER_ID).join(&location.pool).join(&location.image).join(&location.image);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stale = std::fs::metadata(&fuse_file).unwrap().len();
    assert_eq!(stale, 512 * MIB, "rbd-fuse was not told, so it still shows the old size (the trap this test is about)");

    // The resizer's retry: the image already holds 1 GiB, no resize, but the watchers are told.
    let answer = rig.controller.client.controller_expand_volume(requests::controller_expand(&id, GIB as i64, None)).await.unwrap();
    assert_eq!(answer.into_inner().capacity_bytes as u64, GIB);
    assert_eq!(rig.backend.grows(), vec![], "the image already had the size");
    let started = Instant::now();
    let grown = node.client.node_expand_volume(requests::node_expand(&id, &target, "", GIB as i64, None)).await;
    let grown = grown.unwrap_or_else(|e| panic!("node expand after the announcement: {e:?}")).into_inner();
    assert_eq!(grown.capacity_bytes as u64, GIB);
    assert_eq!(host::sha256_file(&data).unwrap(), checksum, "data intact");
    assert_eq!(rig.backend.announcements(), vec![volume.clone()], "told once, by the retry");
    println!(
        "rbd: unannounced resize: rbd-fuse showed {} MiB; after Swell's announcement NodeExpandVolume reached {} MiB in {:?}",
        stale / MIB,
        GIB / MIB,
        started.elapsed()
    );

    node.client.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
    node.client.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    delete(&mut rig.controller.client, &id).await;
}

// --- chaos ------------------------------------------------------------------

/// A node service in-process on `root/node.sock`, attaching RBD volumes
/// (rbd-fuse + loop on hosts without the rbd module).
async fn start_node(root: &Path, env: &ClusterEnv) -> NodeUnderTest {
    let mut config = NodeConfig::new("swell-rbd-chaos-node");
    config.state_dir = root.join("node");
    config.local_state_dir = root.join("local");
    config.rbd = Some(RbdNodeConfig { cluster_id: CLUSTER_ID.into(), ceph_conf: env.conf.clone(), keyring: env.keyring.clone(), user: "admin".into() });
    NodeUnderTest::serve(&root.join("node.sock"), &config).await.unwrap()
}

struct Volume {
    id: VolumeId,
    /// Staged and published: `(staging, target, checksum of data.bin)`.
    mounted: Option<(String, String, String)>,
    /// The largest size seen so far (never allowed to go down).
    size: u64,
}

/// What one settling wait found.
struct Settled {
    /// Some record was pending or stale at the first look.
    had_pending: bool,
    took: Duration,
}

/// Polls until every record is settled (desired ≤ image size, current =
/// image size) with the image size read from Ceph; asserts no image ever
/// shrank on the way.
async fn settled(ceph: &RbdBackend, volumes: &mut [Volume], round: u64) -> Result<Settled, String> {
    let started = Instant::now();
    let mut had_pending = false;
    loop {
        let mut problems = Vec::new();
        for volume in volumes.iter_mut() {
            let now = match ceph.volume(&volume.id).await {
                Ok(Some(info)) => info.size_bytes,
                Ok(None) => return Err(format!("{}: image gone", volume.id)),
                Err(e) => {
                    problems.push(format!("{}: reading the image: {e}", volume.id));
                    continue;
                }
            };
            assert!(now >= volume.size, "round {round}: {} shrank from {} to {now}", volume.id, volume.size);
            volume.size = now;
            match ceph.store().record(&volume.id).await {
                Ok(Some(r)) if r.pending() || r.current_bytes != now => problems.push(format!(
                    "{}: desired {} current {} announced {} image {now} error {:?}",
                    volume.id, r.desired_bytes, r.current_bytes, r.announced_bytes, r.last_error
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!("{}: record unreadable: {e}", volume.id)),
            }
        }
        if problems.is_empty() {
            return Ok(Settled { had_pending, took: started.elapsed() });
        }
        had_pending = true;
        if started.elapsed() > reconcile_deadline() {
            return Err(format!("stuck past {:?}: {problems:?}", reconcile_deadline()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node_expand_and_verify(node: &mut NodeUnderTest, volumes: &[Volume], round: u64) {
    for volume in volumes {
        let Some((_, target, checksum)) = &volume.mounted else { continue };
        let id = volume.id.to_string();
        let started = Instant::now();
        let grown = node.client.node_expand_volume(requests::node_expand(&id, target, "", volume.size as i64, None)).await;
        let grown = grown.unwrap_or_else(|e| panic!("round {round}: node expand {id}: {e:?}")).into_inner();
        assert_eq!(grown.capacity_bytes as u64, volume.size, "round {round}: node expand of {id} reached the image size");
        let now = host::sha256_file(&Path::new(target).join("data.bin")).unwrap();
        assert_eq!(&now, checksum, "round {round}: data of {id} changed");
        println!("  round {round}: NodeExpandVolume {id} to {} MiB in {:?}, checksum intact", volume.size / MIB, started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_process_killed_mid_rbd_expansion_never_leaves_an_image_stuck() {
    const TEST: &str = "controller_process_killed_mid_rbd_expansion_never_leaves_an_image_stuck";
    let Some(session) = session(TEST).await else { return };
    let env = session.env;
    for tool in ["rbd-fuse", "fusermount", "mkfs.xfs", "xfs_growfs"] {
        if Command::new("which").arg(tool).output().map(|o| !o.status.success()).unwrap_or(true) {
            host::note_skip(&format!("rbd_never_stuck::{TEST}"), &format!("{tool} is not installed"));
            return;
        }
    }
    if !Path::new("/dev/fuse").exists() {
        host::note_skip(&format!("rbd_never_stuck::{TEST}"), "/dev/fuse is missing");
        return;
    }
    let kills = env_number("SWELL_CHAOS_KILLS", 100);
    let seed = env_number("SWELL_CHAOS_SEED", 0x5eed_cafe);
    let mut rng = Xorshift(seed | 1);
    let dir = tempfile::Builder::new().prefix("swell-rbd-chaos-").tempdir_in("/var/tmp").unwrap();
    let _sweeper = MountSweeper(dir.path().to_owned());
    let root = dir.path();
    let rbd_args = vec![
        format!("--rbd-cluster-id={CLUSTER_ID}"),
        format!("--rbd-ceph-conf={}", env.conf.display()),
        format!("--rbd-keyring={}", env.keyring.display()),
        "--default-backend=rbd".to_owned(),
    ];
    let mut controller = ControllerProcess::start_with(root, &root.join("local"), rbd_args).await.expect("controller process starts");
    let mut node = start_node(root, env).await;
    let ceph = RbdBackend::new(rbd_config(env)).unwrap();

    let mut client = controller.client().await.unwrap();
    let mut volumes = Vec::new();
    let cap = mount_capability("xfs");
    for i in 0..4u64 {
        let id = create(&mut client, &format!("chaos-{i}"), 320 * MIB).await;
        let mut mounted = None;
        if i < 2 {
            let staging = root.join(format!("staging-{i}")).display().to_string();
            let target = root.join(format!("pod-{i}/vol")).display().to_string();
            let started = Instant::now();
            node.client.node_stage_volume(requests::stage(&id, &staging, cap.clone())).await.unwrap();
            node.client.node_publish_volume(requests::publish(&id, &staging, &target, cap.clone(), false)).await.unwrap();
            let file = Path::new(&target).join("data.bin");
            host::write_pattern(&file, (8 * MIB) as usize, seed + i).unwrap();
            mounted = Some((staging, target, host::sha256_file(&file).unwrap()));
            println!("chaos: {id} staged (xfs over rbd-fuse + loop), published and written in {:?}", started.elapsed());
        }
        volumes.push(Volume { id: id.parse().unwrap(), mounted, size: 320 * MIB });
    }
    // How long one expansion takes here sets the window the kills land in.
    let mut samples = Vec::new();
    for volume in &mut volumes {
        let started = Instant::now();
        volume.size += 4 * MIB;
        let id = volume.id.to_string();
        client.controller_expand_volume(requests::controller_expand(&id, volume.size as i64, None)).await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    let window = samples[samples.len() / 2].max(Duration::from_millis(5)) * 2;
    println!("chaos: one expansion through the controller process takes {samples:?}; kills land within {window:?} of firing");

    let started = Instant::now();
    let mut interrupted_calls = 0;
    let mut completed_calls = 0;
    let mut rounds_with_pending = 0;
    let mut slowest_settle = Duration::ZERO;
    let mut settle_total = Duration::ZERO;
    let mut slow_settles = Vec::new();
    let mut over_20s = 0;
    for round in 0..kills {
        // Fire one expansion per image, then SIGKILL the controller at a random moment.
        let calls: Vec<_> = volumes
            .iter()
            .map(|v| {
                let mut client: ControllerClient<Channel> = client.clone();
                let bytes = (v.size + (1 + rng.below(4)) * 4 * MIB) as i64;
                let id = v.id.to_string();
                tokio::spawn(async move { client.controller_expand_volume(requests::controller_expand(&id, bytes, None)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_micros(rng.below(window.as_micros() as u64))).await;
        controller.restart().await.unwrap_or_else(|e| panic!("round {round}: restart failed: {e}"));
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => completed_calls += 1,
                Err(status) => {
                    interrupted_calls += 1;
                    assert!(
                        matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted),
                        "round {round}: an expansion cut by the kill answered {status:?}"
                    );
                }
            }
        }
        client = controller.client().await.unwrap();

        let settle = settled(&ceph, &mut volumes, round).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        rounds_with_pending += usize::from(settle.had_pending);
        if settle.took > Duration::from_secs(2) {
            slow_settles.push((round, settle.took.as_secs_f64()));
        }
        over_20s += usize::from(settle.took > Duration::from_secs(20));
        slowest_settle = slowest_settle.max(settle.took);
        settle_total += settle.took;
        if round % 25 == 24 || round + 1 == kills {
            node_expand_and_verify(&mut node, &volumes, round).await;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "chaos (rbd): {kills} SIGKILLs in {:.1} s (seed {seed:#x}), {interrupted_calls} calls cut off, {completed_calls} answered OK, \
         {rounds_with_pending} restarts found unfinished work, 0 stuck (bound {:?}; {over_20s} settles took over 20 s); settling took {:.0} ms on average, {slowest_settle:?} at most; \
         settles over 2 s (round, s): {slow_settles:.1?}; final sizes {:?} MiB",
        elapsed.as_secs_f64(),
        reconcile_deadline(),
        settle_total.as_secs_f64() * 1e3 / kills.max(1) as f64,
        volumes.iter().map(|v| v.size / MIB).collect::<Vec<_>>()
    );

    for volume in &volumes {
        let location = location_of(&volume.id);
        let status = rbd_rig::cli(env, "rbd", &["status", &format!("{}/{}", location.pool, location.image)]).unwrap_or_else(|e| e);
        println!("chaos: after the last kill, {}: {}", volume.id, status.replace('\n', " "));
    }
    for volume in &volumes {
        let id = volume.id.to_string();
        if let Some((staging, target, _)) = &volume.mounted {
            node.client.node_unpublish_volume(requests::unpublish(&id, target)).await.unwrap();
            node.client.node_unstage_volume(requests::unstage(&id, staging)).await.unwrap();
        }
    }
    assert_eq!(leftovers(root), Vec::<String>::new(), "nothing attached after unstage");
    for volume in &volumes {
        let id = volume.id.to_string();
        assert_eq!(rbd_info_size(env, &id), volume.size, "rbd info agrees with librbd");
        // Bounded retry, as the provisioner would: every answer must come
        // promptly, and only ABORTED (the reconciler is visiting the volume)
        // or a deadline may ask for a retry. Watchers Ceph still lists for
        // killed controllers no longer do: the image goes to the trash.
        let started = Instant::now();
        let mut failures = Vec::new();
        loop {
            let asked = Instant::now();
            let answer = client.delete_volume(DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() }).await;
            assert!(asked.elapsed() < BACKEND_DEADLINE + Duration::from_secs(2), "delete {id} hung for {:?}", asked.elapsed());
            match answer {
                Ok(_) => break,
                Err(status) if matches!(status.code(), Code::DeadlineExceeded | Code::Aborted) && started.elapsed() < Duration::from_secs(30) => {
                    failures.push((status.code(), status.message().to_owned()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("delete {id} after {:?} ({failures:?}): {status:?}", started.elapsed()),
            }
        }
        println!("chaos: DeleteVolume {id} answered OK after {:?} ({} retries)", started.elapsed(), failures.len());
    }
    // The running controller's background work moves the deleted images to
    // the trash within a pass or two, then removes them once Ceph drops the
    // dead clients' watches; it may list some for minutes.
    for volume in &volumes {
        let location = location_of(&volume.id);
        rbd_rig::wait_gone(env, &location.pool, &location.image).await;
    }
    let trashed: Vec<String> = volumes.iter().map(|v| location_of(&v.id).image).filter(|image| in_trash(env, image)).collect();
    let until = Instant::now() + Duration::from_secs(60);
    let mut left = trashed.clone();
    while !left.is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(2)).await;
        left.retain(|image| in_trash(env, image));
    }
    for volume in &volumes {
        let image = location_of(&volume.id).image;
        assert_eq!(rbd_size(env, "rbd", &image).unwrap(), None, "{} is gone from the pool", volume.id);
    }
    println!("chaos: {} of {} deletes went through the trash; {} purged within 60 s", trashed.len(), volumes.len(), trashed.len() - left.len());
    if !left.is_empty() {
        swell_e2e::host::note_skip(
            "rbd chaos: purge of trashed images",
            &format!(
                "{} trashed image(s) still had watchers of killed controllers listed 60 s after delete, so their purge could not be seen: {left:?}",
                left.len()
            ),
        );
    }
    controller.kill().await;
}
