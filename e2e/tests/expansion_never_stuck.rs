//! Expansion that never gets stuck, driven over the real gRPC socket: races
//! on one volume, parallelism across volumes, the Longhorn 13379 state built
//! by hand, recovery from a failed expansion (KEP-1790), and the stuck
//! detector with its metric.

use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_proto::v1::ControllerGetVolumeRequest;
use csi_proto::v1::controller_client::ControllerClient;
use swell_controller::Backends;
use swell_controller::reconciler::ReconcilerConfig;
use swell_e2e::harness::ControllerUnderTest;
use swell_e2e::instrumented::{GrowMode, InstrumentedBackend};
use swell_e2e::requests::{self, mount_capability};
use swell_e2e::resizer::expand_like_the_resizer;
use swell_e2e::state::{leave_wish, record_of};
use swell_storage::local::LocalBackend;
use swell_storage::{Backend, VolumeId};
use tonic::Code;
use tonic::transport::Channel;

const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;

struct Rig {
    _dir: tempfile::TempDir,
    backend: Arc<InstrumentedBackend>,
    /// The engine below the instrumentation, to change behind the controller's back.
    engine: Arc<dyn Backend>,
    controller: ControllerUnderTest,
}

async fn rig(grow_latency: Duration, reconciler: ReconcilerConfig) -> Rig {
    let dir = tempfile::Builder::new().prefix("swell-never-stuck-").tempdir_in("/var/tmp").unwrap();
    let local: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path().join("local"), None).unwrap());
    let backend = InstrumentedBackend::new(local.clone(), grow_latency);
    let backends = Backends::new(backend.clone(), Duration::from_secs(2));
    let controller = ControllerUnderTest::start(dir.path(), backends, reconciler).await.unwrap();
    Rig { _dir: dir, backend, engine: local, controller }
}

async fn create(client: &mut ControllerClient<Channel>, name: &str, bytes: i64) -> String {
    let created = client.create_volume(requests::create_volume(name, bytes, mount_capability("xfs"))).await.unwrap();
    created.into_inner().volume.unwrap().volume_id
}

async fn size_of(client: &mut ControllerClient<Channel>, id: &str) -> i64 {
    let got = client.controller_get_volume(ControllerGetVolumeRequest { volume_id: id.into() }).await.unwrap();
    got.into_inner().volume.unwrap().capacity_bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_racing_expansions_end_at_the_largest_and_only_grow() {
    let mut rig = rig(Duration::from_millis(2), ReconcilerConfig::default()).await;
    let id = create(&mut rig.controller.client, "race", GIB).await;
    let sizes: Vec<i64> = (0..64).map(|i| GIB + ((i * 37) % 64 + 1) * 64 * MIB).collect();
    let calls: Vec<_> = sizes.iter().map(|&bytes| tokio::spawn(expand_like_the_resizer(rig.controller.client.clone(), id.clone(), bytes as u64))).collect();
    let mut aborted = 0;
    for call in calls {
        let codes = call.await.unwrap();
        assert_eq!(codes.last(), Some(&Code::Ok), "a call ended without success: {codes:?}");
        assert!(codes.iter().all(|c| matches!(c, Code::Ok | Code::Aborted)), "only OK or ABORTED: {codes:?}");
        aborted += codes.len() - 1;
    }
    let largest = *sizes.iter().max().unwrap();
    assert_eq!(size_of(&mut rig.controller.client, &id).await, largest);
    let grows: Vec<u64> = rig.backend.grows().into_iter().map(|(_, size)| size).collect();
    assert!(grows.windows(2).all(|w| w[0] < w[1]), "the backend saw a non-increasing resize: {grows:?}");
    println!("64 racing expansions: {} backend resizes, {aborted} ABORTED answers retried, final {largest} bytes", grows.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn different_volumes_expand_in_parallel() {
    // 50 ms per grow stands in for a remote engine; a global lock would
    // serialise the 64 calls into ~3.2 s.
    let latency = Duration::from_millis(50);
    let mut rig = rig(latency, ReconcilerConfig::default()).await;
    let mut ids = Vec::new();
    for i in 0..65 {
        ids.push(create(&mut rig.controller.client, &format!("par-{i}"), GIB).await);
    }
    let one = Instant::now();
    rig.controller.client.controller_expand_volume(requests::controller_expand(&ids[64], 2 * GIB, None)).await.unwrap();
    let single = one.elapsed();
    let all = Instant::now();
    let calls: Vec<_> = ids[..64]
        .iter()
        .map(|id| {
            let mut client = rig.controller.client.clone();
            let id = id.clone();
            tokio::spawn(async move { client.controller_expand_volume(requests::controller_expand(&id, 2 * GIB, None)).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().into_inner().capacity_bytes, 2 * GIB);
    }
    let wall = all.elapsed();
    let ratio = (single.as_secs_f64() * 64.0) / wall.as_secs_f64();
    println!("64 volumes: one expansion {single:?}, all 64 at once {wall:?}, 64x-one / wall = {ratio:.1}");
    assert!(ratio > 8.0, "64 volumes took {wall:?} vs {single:?} for one: expansions are serialised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_claims_done_while_the_backend_lags_is_completed_not_believed() {
    let mut rig = rig(Duration::ZERO, ReconcilerConfig::default()).await;
    let id = create(&mut rig.controller.client, "lh13379", GIB).await;
    let volume: VolumeId = id.parse().unwrap();
    // The Longhorn 13379 state: the record says 2 GiB reached, the engine has 1 GiB.
    leave_wish(&rig.controller.records, &volume, GIB as u64, 2 * GIB as u64, Some(2 * GIB as u64)).await;

    let status = rig.controller.client.controller_get_volume(ControllerGetVolumeRequest { volume_id: id.clone() }).await.unwrap();
    let status = status.into_inner();
    assert_eq!(status.volume.unwrap().capacity_bytes, GIB, "the size is read from the backend, not the record");
    let condition = status.status.unwrap().volume_condition.unwrap();
    assert!(condition.abnormal, "a volume short of its recorded wish is abnormal: {condition:?}");

    // An expansion request for 2 GiB must grow, not answer "done".
    let answer = rig.controller.client.controller_expand_volume(requests::controller_expand(&id, 2 * GIB, None)).await.unwrap();
    assert_eq!(answer.into_inner().capacity_bytes, 2 * GIB);
    assert_eq!(rig.backend.grows(), vec![(volume.clone(), 2 * GIB as u64)], "the backend was really grown");

    // And the reconciler's sweep over settled records finds and completes
    // the same state on its own (a record claiming "done" is not pending).
    let second = create(&mut rig.controller.client, "lh13379-b", GIB).await;
    let second_id: VolumeId = second.parse().unwrap();
    leave_wish(&rig.controller.records, &second_id, GIB as u64, 3 * GIB as u64, Some(3 * GIB as u64)).await;
    assert_eq!(rig.controller.reconciler.pass().await.completed, 0, "a settled record is not visited by a pass");
    assert!(rig.controller.reconciler.sweep_step(Duration::from_secs(1)).await >= 2, "the sweep read both records");
    assert_eq!(size_of(&mut rig.controller.client, &second).await, 3 * GIB);
    assert_eq!(rig.controller.reconciler.pass().await.completed, 0, "nothing left to do");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grow_cut_off_after_the_engine_took_it_is_announced_before_it_is_settled() {
    let mut rig = rig(Duration::ZERO, ReconcilerConfig::default()).await;
    let id = create(&mut rig.controller.client, "cut-off", GIB).await;
    let second = create(&mut rig.controller.client, "cut-off-b", GIB).await;
    let (volume, second_id): (VolumeId, VolumeId) = (id.parse().unwrap(), second.parse().unwrap());
    // A controller that died mid-grow: the wish is recorded, the engine took
    // the new size, and nobody told the volume's clients.
    for v in [&volume, &second_id] {
        leave_wish(&rig.controller.records, v, GIB as u64, 2 * GIB as u64, None).await;
        rig.engine.grow_volume(v, 2 * GIB as u64).await.unwrap();
    }

    // The resizer's retry finds the size there: no second resize, but an announcement.
    let answer = rig.controller.client.controller_expand_volume(requests::controller_expand(&id, 2 * GIB, None)).await.unwrap();
    assert_eq!(answer.into_inner().capacity_bytes, 2 * GIB);
    assert_eq!(rig.backend.grows(), vec![], "the engine already had the size");
    assert_eq!(rig.backend.announcements(), vec![volume.clone()], "the clients were told");
    let record = record_of(&rig.controller.records, &volume).await.unwrap();
    assert_eq!((record.current_bytes, record.last_error), (2 * GIB as u64, None));

    // A retry of a settled expansion has nothing to announce.
    rig.controller.client.controller_expand_volume(requests::controller_expand(&id, 2 * GIB, None)).await.unwrap();
    assert_eq!(rig.backend.announcements(), vec![volume.clone()], "announced once");

    // The reconciler announces the other one on its own (the settled one is
    // not even visited).
    let report = rig.controller.reconciler.pass().await;
    assert_eq!((report.examined, report.settled, report.completed, report.pending), (1, 1, 0, 0), "{report:?}");
    assert_eq!(rig.backend.announcements(), vec![volume, second_id]);
}

/// GET /metrics over real HTTP on loopback, as Prometheus would.
async fn scrape_metrics(rig: &Rig) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(swell_controller::metrics::serve(listener, rig.controller.reconciler.clone(), async {
        let _ = stopped.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: swell\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_expansion_is_finished_by_the_reconciler_or_replaced_by_a_lower_request() {
    let config = ReconcilerConfig { base_backoff: Duration::ZERO, stuck_after: Duration::ZERO, ..Default::default() };
    let mut rig = rig(Duration::ZERO, config).await;
    let id = create(&mut rig.controller.client, "outage", GIB).await;

    rig.backend.set_grow_mode(GrowMode::Fail);
    let failed = rig.controller.client.controller_expand_volume(requests::controller_expand(&id, 4 * GIB, None)).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    rig.backend.set_grow_mode(GrowMode::Hang);
    let started = Instant::now();
    let hung = rig.controller.client.controller_expand_volume(requests::controller_expand(&id, 4 * GIB, None)).await.unwrap_err();
    assert_eq!(hung.code(), Code::DeadlineExceeded, "{hung:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "the 2 s backend deadline cut the hung call off");
    assert_eq!(size_of(&mut rig.controller.client, &id).await, GIB, "nothing half-done");

    // Stuck detector: the wish is pending, with its reason, in the report and the metric.
    let report = rig.controller.reconciler.pass().await;
    assert_eq!(report.stuck.len(), 1, "{report:?}");
    assert!(report.stuck[0].reason.contains("did not finish grow volume"), "{:?}", report.stuck[0]);
    let metrics = scrape_metrics(&rig).await;
    assert!(metrics.contains("swell_expansions_stuck 1"), "{metrics}");
    assert!(metrics.contains(&format!("swell_expansion_stuck_seconds{{volume_id=\"{id}\",desired_bytes=\"{}\"", 4 * GIB)), "{metrics}");

    // The engine recovers: the reconciler finishes the recorded wish itself.
    rig.backend.set_grow_mode(GrowMode::Normal);
    let report = rig.controller.reconciler.pass().await;
    assert_eq!((report.completed, report.pending, report.stuck.len()), (1, 0, 0), "{report:?}");
    assert_eq!(size_of(&mut rig.controller.client, &id).await, 4 * GIB);

    // KEP-1790: an infeasible target is refused up front, and a lower request
    // above the current size then succeeds and replaces it.
    let huge = rig.controller.client.controller_expand_volume(requests::controller_expand(&id, 1 << 60, None)).await.unwrap_err();
    assert_eq!(huge.code(), Code::OutOfRange, "{huge:?}");
    let lowered = rig.controller.client.controller_expand_volume(requests::controller_expand(&id, 5 * GIB, None)).await.unwrap();
    assert_eq!(lowered.into_inner().capacity_bytes, 5 * GIB);
    let record = record_of(&rig.controller.records, &id.parse().unwrap()).await.unwrap();
    assert_eq!((record.desired_bytes, record.current_bytes, record.last_error), (5 * GIB as u64, 5 * GIB as u64, None));
    // A stale smaller request afterwards is success with the current size.
    let stale = rig.controller.client.controller_expand_volume(requests::controller_expand(&id, 2 * GIB, None)).await.unwrap();
    assert_eq!(stale.into_inner().capacity_bytes, 5 * GIB);
    let sizes: Vec<u64> = rig.backend.grows().into_iter().map(|(_, s)| s).collect();
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
}
