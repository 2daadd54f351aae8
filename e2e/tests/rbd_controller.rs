//! The controller on Ceph RBD, over gRPC against a real (throwaway) cluster:
//! the volume lifecycle, faults (one OSD down, PGs inactive, capacity, a
//! monitor restart). Speed against the backend's own is swell-bench's.
//!
//! One cluster serves every test in this binary; tests take turns (see
//! `swell_e2e::rbd_rig`), and a test that breaks the cluster restores it to
//! active+clean before it lets the next one in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::*;
use swell_e2e::instrumented::GrowMode;
use swell_e2e::never_stuck::InProcess;
use swell_e2e::rbd_rig::{self, ClusterEnv, Rbd, Swell, cli, cluster, rbd_size};
use swell_e2e::requests::{block_capability, controller_expand, create_volume};
use swell_e2e::state::record_of;
use swell_e2e::timing::assert_within_deadline;
use swell_storage::{Backend, VolumeId};
use tonic::transport::Channel;
use tonic::{Code, Status};

use swell_storage::units::MIB;
const OP_TIMEOUT: Duration = Duration::from_secs(3);
const BACKEND_TIMEOUT: Duration = Duration::from_secs(8);

fn create_rbd(name: &str, bytes: u64) -> CreateVolumeRequest {
    // Raw block: sized exactly as asked, with no filesystem minimum.
    let mut req = create_volume(name, bytes as i64, block_capability());
    req.parameters = HashMap::from([("backend".to_owned(), "rbd".to_owned())]);
    req
}

async fn create(client: &mut ControllerClient<Channel>, name: &str, bytes: u64) -> Result<Volume, Status> {
    Ok(client.create_volume(create_rbd(name, bytes)).await?.into_inner().volume.expect("volume in response"))
}

async fn expand(client: &mut ControllerClient<Channel>, id: &str, bytes: u64) -> Result<u64, Status> {
    Ok(client.controller_expand_volume(controller_expand(id, bytes as i64, None)).await?.into_inner().capacity_bytes as u64)
}

async fn delete(client: &mut ControllerClient<Channel>, id: &str) -> Result<(), Status> {
    client.delete_volume(DeleteVolumeRequest { volume_id: id.to_owned(), ..Default::default() }).await.map(drop)
}

/// `(pool, image)` of an `rbd:<cluster>:<pool>:<image>` id.
fn pool_image(id: &str) -> (String, String) {
    let parts: Vec<&str> = id.split(':').collect();
    assert_eq!(parts.len(), 4, "{id}");
    (parts[2].to_owned(), parts[3].to_owned())
}

fn size_of(env: &ClusterEnv, id: &str) -> Option<u64> {
    let (pool, image) = pool_image(id);
    rbd_size(env, &pool, &image).expect("rbd info")
}

fn ok(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_over_grpc() {
    let Some(session) = rbd_rig::acquire("rbd_controller::lifecycle_over_grpc").await else { return };
    let env = session.env;
    let swell = Swell::start(env, OP_TIMEOUT, BACKEND_TIMEOUT).await;
    let mut c = swell.client.clone();

    let vol = create(&mut c, "pvc-lifecycle", 64 * MIB).await.expect("create");
    assert!(vol.volume_id.starts_with("rbd:rig:rbd:swell-"), "{}", vol.volume_id);
    assert_eq!(vol.capacity_bytes as u64, 64 * MIB);
    assert_eq!(size_of(env, &vol.volume_id), Some(64 * MIB), "rbd info agrees");

    let again = create(&mut c, "pvc-lifecycle", 64 * MIB).await.expect("idempotent create");
    assert_eq!((again.volume_id.as_str(), again.capacity_bytes), (vol.volume_id.as_str(), vol.capacity_bytes));
    let clash = create(&mut c, "pvc-lifecycle", 128 * MIB).await.expect_err("incompatible size");
    assert_eq!(clash.code(), Code::AlreadyExists, "{clash:?}");
    assert!(clash.message().contains("pvc-lifecycle"), "{}", clash.message());

    let got = c.controller_get_volume(ControllerGetVolumeRequest { volume_id: vol.volume_id.clone() }).await.expect("get volume").into_inner();
    assert_eq!(got.volume.expect("volume").capacity_bytes as u64, 64 * MIB);
    let listed = c.list_volumes(ListVolumesRequest::default()).await.expect("list").into_inner();
    assert!(
        listed.entries.iter().any(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == vol.volume_id && v.capacity_bytes as u64 == 64 * MIB)),
        "ListVolumes shows the volume: {listed:?}"
    );

    // Exactly the requested size (csi-sanity checks this), and what rbd sees.
    let exact = 100 * MIB;
    assert_eq!(expand(&mut c, &vol.volume_id, exact).await.expect("expand"), exact);
    assert_eq!(size_of(env, &vol.volume_id), Some(exact), "rbd info shows the new size");
    assert_eq!(expand(&mut c, &vol.volume_id, 80 * MIB).await.expect("stale smaller request"), exact);
    assert_eq!(size_of(env, &vol.volume_id), Some(exact), "a stale request never shrinks");
    // An unaligned request is rounded up to a MiB by the controller's sizing;
    // the answer is what the image really holds.
    let unaligned = expand(&mut c, &vol.volume_id, exact + 4096).await.expect("unaligned expand");
    assert_eq!(unaligned, exact + MIB);
    assert_eq!(size_of(env, &vol.volume_id), Some(unaligned));

    let mut bad_pool = create_rbd("pvc-bad-pool", 64 * MIB);
    bad_pool.parameters.insert("pool".into(), "no-such-pool".into());
    let err = c.create_volume(bad_pool).await.expect_err("unknown pool");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let room = c
        .get_capacity(GetCapacityRequest { parameters: HashMap::from([("backend".into(), "rbd".into())]), ..Default::default() })
        .await
        .expect("capacity")
        .into_inner();
    assert!(room.available_capacity > 0, "{room:?}");

    delete(&mut c, &vol.volume_id).await.expect("delete");
    delete(&mut c, &vol.volume_id).await.expect("delete is idempotent");
    let (pool, image) = pool_image(&vol.volume_id);
    rbd_rig::wait_gone(env, &pool, &image).await;
    let gone = c.controller_get_volume(ControllerGetVolumeRequest { volume_id: vol.volume_id.clone() }).await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_one_osd_down_expansion_still_works() {
    let Some(session) = rbd_rig::acquire("rbd_controller::fault_one_osd_down_expansion_still_works").await else { return };
    let env = session.env;
    let swell = Swell::start(env, OP_TIMEOUT, BACKEND_TIMEOUT).await;
    let mut c = swell.client.clone();
    let vol = create(&mut c, "pvc-degraded", 64 * MIB).await.expect("create");

    cluster(env, "kill-osd", &["2"]).expect("kill osd.2");
    let degraded_by = Instant::now() + Duration::from_secs(30);
    loop {
        let stat = cli(env, "ceph", &["pg", "stat"]).unwrap_or_default();
        if stat.contains("degraded") || stat.contains("undersized") {
            eprintln!("degraded: {}", stat.trim());
            break;
        }
        assert!(Instant::now() < degraded_by, "PGs never degraded: {stat}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let started = Instant::now();
    let result = expand(&mut c, &vol.volume_id, 96 * MIB).await;
    eprintln!("expand with one OSD down: {:?} in {:?}", result, started.elapsed());

    cluster(env, "start-osd", &["2"]).expect("start osd.2");
    cluster(env, "wait-clean", &["120"]).expect("clean again");
    assert_eq!(result.expect("expand while degraded"), 96 * MIB);
    assert_eq!(size_of(env, &vol.volume_id), Some(96 * MIB));
    delete(&mut c, &vol.volume_id).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_pgs_inactive_fails_fast_and_recovers() {
    let Some(session) = rbd_rig::acquire("rbd_controller::fault_pgs_inactive_fails_fast_and_recovers").await else { return };
    let env = session.env;
    let swell = Swell::start(env, OP_TIMEOUT, BACKEND_TIMEOUT).await;
    let mut c = swell.client.clone();
    let vol = create(&mut c, "pvc-inactive", 64 * MIB).await.expect("create");

    cluster(env, "kill-osd", &["1"]).expect("kill osd.1");
    cluster(env, "kill-osd", &["2"]).expect("kill osd.2");
    let inactive = cluster(env, "wait-pgs-inactive", &["90"]);
    let mut outcomes = Vec::new();
    if inactive.is_ok() {
        for attempt in 0..2 {
            let started = Instant::now();
            let result = expand(&mut c, &vol.volume_id, 128 * MIB).await;
            let took = started.elapsed();
            eprintln!("expand #{attempt} with PGs inactive: {:?} after {took:?}", result.as_ref().map_err(|s| (s.code(), s.message().to_owned())));
            outcomes.push((result, took));
        }
    }
    // Restore the cluster before judging, so a failure leaves it usable.
    cluster(env, "start-osd", &["1"]).expect("start osd.1");
    cluster(env, "start-osd", &["2"]).expect("start osd.2");
    cluster(env, "wait-clean", &["180"]).expect("clean again");
    inactive.expect("PGs went inactive");

    for (result, took) in outcomes {
        let status = result.expect_err("expansion cannot succeed with PGs inactive");
        assert!(ok(status.code()), "UNAVAILABLE or DEADLINE_EXCEEDED, not {status:?} (never ABORTED: the lock is released)");
        assert_within_deadline("an expansion with PGs inactive", took, BACKEND_TIMEOUT);
    }
    assert_eq!(size_of(env, &vol.volume_id), Some(64 * MIB), "size unchanged");
    // The same request succeeds once the PGs are back (retry a few seconds
    // while the client's view of the OSD map catches up).
    let retry_until = Instant::now() + Duration::from_secs(30);
    let size = loop {
        match expand(&mut c, &vol.volume_id, 128 * MIB).await {
            Ok(size) => break size,
            Err(s) if ok(s.code()) && Instant::now() < retry_until => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(s) => panic!("expand after recovery: {s:?}"),
        }
    };
    assert_eq!(size, 128 * MIB);
    assert_eq!(size_of(env, &vol.volume_id), Some(128 * MIB));
    delete(&mut c, &vol.volume_id).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_beyond_capacity_is_out_of_range_up_front() {
    let Some(session) = rbd_rig::acquire("rbd_controller::fault_beyond_capacity_is_out_of_range_up_front").await else { return };
    let env = session.env;
    let swell = Swell::start(env, OP_TIMEOUT, BACKEND_TIMEOUT).await;
    let mut c = swell.client.clone();
    let vol = create(&mut c, "pvc-capacity", 64 * MIB).await.expect("create");

    let pib = 1u64 << 50;
    let started = Instant::now();
    let err = expand(&mut c, &vol.volume_id, pib).await.expect_err("a PiB does not fit");
    eprintln!("expand to 1 PiB: {:?} after {:?}", err.code(), started.elapsed());
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(size_of(env, &vol.volume_id), Some(64 * MIB), "no change");

    // A pool quota caps the policy: 1 GiB.
    cli(env, "ceph", &["osd", "pool", "set-quota", "rbd", "max_bytes", &(1u64 << 30).to_string()]).expect("set quota");
    // Pool settings are read at most a second old (Swell's own promises are exact).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let grow = expand(&mut c, &vol.volume_id, 2 << 30).await;
    let create_big = create(&mut c, "pvc-over-quota", 2 << 30).await;
    let within = expand(&mut c, &vol.volume_id, 128 * MIB).await;
    cli(env, "ceph", &["osd", "pool", "set-quota", "rbd", "max_bytes", "0"]).expect("clear quota");
    let grow = grow.expect_err("beyond the quota");
    assert_eq!(grow.code(), Code::OutOfRange, "{grow:?}");
    let create_big = create_big.expect_err("create beyond the quota");
    assert_eq!(create_big.code(), Code::OutOfRange, "{create_big:?}");
    let images = cli(env, "rbd", &["ls", "rbd"]).expect("rbd ls");
    assert!(!images.contains(&rbd_image_for("pvc-over-quota")), "refused create left no image: {images}");
    assert_eq!(within.expect("growth within the quota"), 128 * MIB);
    delete(&mut c, &vol.volume_id).await.expect("delete");
}

fn rbd_image_for(name: &str) -> String {
    swell_storage::rbd_volume::image_name(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_monitor_restart_is_survived_by_the_same_controller() {
    let Some(session) = rbd_rig::acquire("rbd_controller::fault_monitor_restart_is_survived_by_the_same_controller").await else {
        return;
    };
    let env = session.env;
    let swell = Swell::start(env, OP_TIMEOUT, BACKEND_TIMEOUT).await;
    let mut c = swell.client.clone();
    let a = create(&mut c, "pvc-mon-a", 64 * MIB).await.expect("create before the restart");

    cluster(env, "stop-mon", &[]).expect("stop mon");
    let started = Instant::now();
    let during = create(&mut c, "pvc-mon-b", 64 * MIB).await;
    let during_took = started.elapsed();
    let restarted = cluster(env, "start-mon", &[]);
    let back_at = Instant::now();
    eprintln!(
        "create with the monitor down: {:?} after {during_took:?}",
        during.as_ref().map(|v| v.volume_id.clone()).map_err(|s| (s.code(), s.message().to_owned()))
    );
    restarted.expect("start mon");
    if let Err(status) = &during {
        assert!(ok(status.code()), "{status:?}");
        assert_within_deadline("a create with the monitor down", during_took, BACKEND_TIMEOUT);
    }

    // Same controller instance throughout; allow a bounded wait for the monitor.
    let b = until_ok("create after the monitor restart", || {
        let mut c = c.clone();
        async move { create(&mut c, "pvc-mon-b", 64 * MIB).await }
    })
    .await;
    eprintln!("first success {:?} after the monitor answered again", back_at.elapsed());
    let grown = until_ok("expand after the monitor restart", || {
        let (mut c, id) = (c.clone(), a.volume_id.clone());
        async move { expand(&mut c, &id, 96 * MIB).await }
    })
    .await;
    assert_eq!(grown, 96 * MIB);
    for id in [&a.volume_id, &b.volume_id] {
        until_ok("delete after the monitor restart", || {
            let (mut c, id) = (c.clone(), id.clone());
            async move { delete(&mut c, &id).await }
        })
        .await;
        let (pool, image) = pool_image(id);
        rbd_rig::wait_gone(env, &pool, &image).await;
    }
    cluster(env, "wait-clean", &["120"]).expect("clean");
}

/// Retries `op` while it answers a passing code (UNAVAILABLE, DEADLINE_EXCEEDED,
/// ABORTED), for at most 60 s.
async fn until_ok<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match op().await {
            Ok(value) => return value,
            Err(s) if (ok(s.code()) || s.code() == Code::Aborted) && Instant::now() < until => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
}

/// The only monitor stopped inside an expansion, then frozen (SIGSTOP)
/// inside another: each grow is held after Swell recorded its wish and
/// before the engine is asked, the fault put on, and the grow let go. Each
/// call answers within the deadline, OK only with the image at the size or
/// else a retryable code with the wish still recorded; it leaves the volume
/// free for the next call, and the same controller grows it once the
/// monitor answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_monitor_down_or_frozen_mid_expansion_answers_in_time_and_recovers() {
    let Some(session) = rbd_rig::acquire("rbd_controller::fault_monitor_down_or_frozen_mid_expansion_answers_in_time_and_recovers").await else {
        return;
    };
    let env = session.env;
    let engine = Rbd(env);
    let rig = InProcess::start(&engine, Duration::ZERO).await;
    let store = rig.backend.expansion_store();
    let mut c = rig.client();
    let vol = create(&mut c, "pvc-mon-fault", 64 * MIB).await.expect("create");
    let id: VolumeId = vol.volume_id.parse().unwrap();
    let mut size = 64 * MIB;
    for (fault, undo) in [("stop-mon", "start-mon"), ("freeze-mon", "thaw-mon")] {
        size += 32 * MIB;
        rig.backend.set_grow_mode(GrowMode::Held);
        let started = Instant::now();
        let call = tokio::spawn({
            let (mut c, id) = (c.clone(), vol.volume_id.clone());
            async move { expand(&mut c, &id, size).await }
        });
        assert!(rig.backend.wait_held(BACKEND_TIMEOUT).await, "{fault}: the expansion never reached the engine");
        let record = record_of(&*store, &id).await.unwrap();
        assert_eq!((record.desired_bytes, record.current_bytes), (size, size - 32 * MIB), "{fault}: the wish is recorded, not reached");
        let grows = rig.backend.grows().len();
        cluster(env, fault, &[]).unwrap_or_else(|e| panic!("{fault}: {e}"));
        assert!(!call.is_finished(), "{fault}: the call ended before the fault was on");
        rig.backend.release_held();
        let during = call.await.unwrap();
        let took = started.elapsed();
        // The fault was met: the engine was asked with the monitor down or frozen.
        assert_eq!(rig.backend.grows().len(), grows + 1, "{fault}: the grow did not reach the engine during the fault");
        rig.backend.set_grow_mode(GrowMode::Normal);
        let again = expand(&mut c, &vol.volume_id, size).await;
        cluster(env, undo, &[]).unwrap_or_else(|e| panic!("{undo}: {e}"));
        eprintln!("expand with the monitor {fault}: {:?} after {took:?}", during.as_ref().map_err(|s| (s.code(), s.message().to_owned())));
        assert_within_deadline(&format!("an expansion with the monitor {fault}"), took, BACKEND_TIMEOUT);
        match &during {
            Ok(answered) => {
                assert_eq!(*answered, size, "{fault}: OK names the size asked");
                assert_eq!(size_of(env, &vol.volume_id), Some(size), "{fault}: OK with the image at the size");
            }
            Err(status) => {
                assert!(ok(status.code()), "{fault}: UNAVAILABLE or DEADLINE_EXCEEDED, not {status:?}");
                let record = until_ok("read the record once the monitor is back", || {
                    let (store, id) = (store.clone(), id.clone());
                    async move { store.record(&id).await.map_err(|e| Status::unavailable(e.to_string())) }
                })
                .await;
                assert_eq!(record.map(|r| r.desired_bytes), Some(size), "{fault}: the failed grow keeps its wish");
            }
        }
        assert!(!matches!(&again, Err(s) if s.code() == Code::Aborted), "{fault}: the volume was left held: {again:?}");
        let grown = until_ok("expand once the monitor is back", || {
            let (mut c, id) = (c.clone(), vol.volume_id.clone());
            async move { expand(&mut c, &id, size).await }
        })
        .await;
        assert_eq!(grown, size);
        assert_eq!(size_of(env, &vol.volume_id), Some(size));
    }
    delete(&mut c, &vol.volume_id).await.expect("delete");
    cluster(env, "wait-clean", &["120"]).expect("clean");
}

/// Sets the OSDs' full ratios (the cluster flags its pools full once the
/// OSDs use more than `full`); `None` puts Ceph's defaults back.
fn full_ratios(env: &ClusterEnv, full: Option<f64>) {
    let (near, backfill, full) = match full {
        Some(full) => (full / 3.0, full / 2.0, full),
        None => (0.85, 0.90, 0.95),
    };
    // Ceph keeps nearfull < backfillfull < full: lower the top last, raise it first.
    let order: [(&str, f64); 3] = if full < 0.5 {
        [("set-nearfull-ratio", near), ("set-backfillfull-ratio", backfill), ("set-full-ratio", full)]
    } else {
        [("set-full-ratio", full), ("set-backfillfull-ratio", backfill), ("set-nearfull-ratio", near)]
    };
    for (command, ratio) in order {
        cli(env, "ceph", &["osd", command, &ratio.to_string()]).unwrap_or_else(|e| panic!("ceph osd {command}: {e}"));
    }
}

fn pool_flags(env: &ClusterEnv, pool: &str) -> String {
    let detail = cli(env, "ceph", &["osd", "pool", "ls", "detail", "--format", "json"]).expect("osd pool ls detail");
    let pools: serde_json::Value = serde_json::from_str(&detail).expect("json");
    pools
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pool_name"] == pool)
        .map(|p| p["flags_names"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

async fn wait_flag(env: &ClusterEnv, pool: &str, full: bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while pool_flags(env, pool).split(',').any(|f| f == "full") != full {
        assert!(Instant::now() < until, "pool {pool} flags never became {}: {}", if full { "full" } else { "not full" }, pool_flags(env, pool));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A pool flagged full (its OSDs past the full ratio, not a quota): a grow is
/// refused at once (OUT_OF_RANGE, with the reason), a request the volume
/// already satisfies still answers OK, nothing is left held, and once the
/// flag is gone the grow goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_full_pool_refuses_in_time_and_recovers() {
    let Some(session) = rbd_rig::acquire("rbd_controller::fault_full_pool_refuses_in_time_and_recovers").await else { return };
    let env = session.env;
    let swell = Swell::start(env, OP_TIMEOUT, BACKEND_TIMEOUT).await;
    let mut c = swell.client.clone();
    let vol = create(&mut c, "pvc-full-flag", 64 * MIB).await.expect("create");
    assert_eq!(expand(&mut c, &vol.volume_id, 96 * MIB).await.expect("grow before"), 96 * MIB);

    full_ratios(env, Some(0.001));
    wait_flag(env, "rbd", true).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let grow = expand(&mut c, &vol.volume_id, 128 * MIB).await;
    let took = started.elapsed();
    let satisfied = expand(&mut c, &vol.volume_id, 96 * MIB).await;
    let again = expand(&mut c, &vol.volume_id, 128 * MIB).await;
    full_ratios(env, None);
    wait_flag(env, "rbd", false).await;

    eprintln!("expand on a full pool: {:?} after {took:?}", grow.as_ref().map_err(|s| (s.code(), s.message().to_owned())));
    let refused = grow.expect_err("no grow on a full pool");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("full") || refused.message().contains("0 bytes"), "{}", refused.message());
    assert_within_deadline("an expansion on a full pool", took, BACKEND_TIMEOUT);
    assert_eq!(satisfied.expect("a size the volume holds is OK on a full pool"), 96 * MIB);
    assert_eq!(again.expect_err("refused again").code(), Code::OutOfRange, "not ABORTED: nothing was left held");
    assert_eq!(size_of(env, &vol.volume_id), Some(96 * MIB), "unchanged");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let grown = until_ok("expand once the pool has room", || {
        let (mut c, id) = (c.clone(), vol.volume_id.clone());
        async move { expand(&mut c, &id, 128 * MIB).await }
    })
    .await;
    assert_eq!(grown, 128 * MIB);
    delete(&mut c, &vol.volume_id).await.expect("delete");
}
