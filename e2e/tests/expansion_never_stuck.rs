//! Expansion that never gets stuck, on the local backend, driven over the
//! real gRPC socket: the scenarios every backend runs (races on one volume,
//! parallelism across volumes, engines that lie), plus recovery from a
//! failed or hung expansion (KEP-1790) and the stuck detector with its
//! metric.

use std::time::{Duration, Instant};

use swell_controller::ReconcilerConfig;
use swell_e2e::instrumented::GrowMode;
use swell_e2e::metrics::{sample, scrape, value};
use swell_e2e::never_stuck::{self, Engine, InProcess, Local, create, expand};
use swell_e2e::observe::expansion_state;
use swell_e2e::timing::assert_within_deadline;
use swell_storage::units::GIB;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_racing_expansions_end_at_the_largest_and_only_grow() {
    never_stuck::racing_expansions_of_one_volume(&Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn different_volumes_expand_in_parallel() {
    never_stuck::volumes_expand_in_parallel(&Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grow_acknowledged_but_not_made_is_not_believed() {
    never_stuck::a_lying_engine_is_never_believed(&Local, GrowMode::AckWithoutGrowing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grow_that_stops_short_is_finished_by_the_reconciler() {
    never_stuck::a_lying_engine_is_never_believed(&Local, GrowMode::ShortGrow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grow_answered_with_a_stale_size_is_settled_and_announced() {
    never_stuck::a_lying_engine_is_never_believed(&Local, GrowMode::StaleAnswer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_lag_behind_a_grow_are_not_taken_for_success() {
    never_stuck::a_lying_engine_is_never_believed(&Local, GrowMode::LaggingReads(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grow_that_lands_after_the_deadline_is_announced_before_it_is_settled() {
    never_stuck::a_lying_engine_is_never_believed(&Local, GrowMode::LandsAfter(Local.backend_deadline() + Duration::from_millis(500))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_expansion_is_finished_by_the_reconciler_or_replaced_by_a_lower_request() {
    let config = ReconcilerConfig { base_backoff: Duration::ZERO, stuck_after: Duration::ZERO, ..Default::default() };
    let rig = InProcess::start_with(&Local, Duration::ZERO, config).await;
    let mut client = rig.client();
    let id = create(&mut client, "outage", GIB).await;

    rig.backend.set_grow_mode(GrowMode::Fail);
    let failed = expand(&mut client, &id, 4 * GIB).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    rig.backend.set_grow_mode(GrowMode::Hang);
    let started = Instant::now();
    let hung = expand(&mut client, &id, 4 * GIB).await.unwrap_err();
    assert_eq!(hung.code(), Code::DeadlineExceeded, "{hung:?}");
    assert_within_deadline("the hung expansion", started.elapsed(), Local.backend_deadline());
    let state = expansion_state(&mut client, &id).await.unwrap();
    assert_eq!(state.size, GIB, "nothing half-done");
    assert!(state.pending && state.message.contains("did not finish grow volume"), "pending with its reason: {state:?}");

    // Stuck detector: the wish is pending, with its reason, in the report and the metric.
    let report = rig.controller.reconciler.pass().await;
    assert_eq!(report.stuck.len(), 1, "{report:?}");
    assert!(report.stuck[0].reason.contains("did not finish grow volume"), "{:?}", report.stuck[0]);
    let metrics = scrape(rig.controller.metrics).await;
    assert_eq!(sample(&metrics, "swell_expansions_stuck"), 1.0, "{metrics}");
    assert!(value(&metrics, "swell_expansion_oldest_pending_seconds").is_some() && !metrics.contains(&id), "counted, not named: {metrics}");

    // The engine recovers: the reconciler finishes the recorded wish itself.
    rig.backend.set_grow_mode(GrowMode::Normal);
    let report = rig.controller.reconciler.pass().await;
    assert_eq!((report.completed, report.pending, report.stuck.len()), (1, 0, 0), "{report:?}");
    let metrics = scrape(rig.controller.metrics).await;
    assert_eq!(sample(&metrics, "swell_expansions_stuck"), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, r#"swell_reconciler_attempts_total{outcome="completed"}"#), 1.0, "{metrics}");
    let state = expansion_state(&mut client, &id).await.unwrap();
    assert_eq!((state.size, state.pending), (4 * GIB, false), "{state:?}");

    // KEP-1790: an infeasible target is refused up front, and a lower request
    // above the current size then succeeds and replaces it.
    let huge = expand(&mut client, &id, 1 << 60).await.unwrap_err();
    assert_eq!(huge.code(), Code::OutOfRange, "{huge:?}");
    assert!(!expansion_state(&mut client, &id).await.unwrap().pending, "a refused target is not a pending wish");
    assert_eq!(expand(&mut client, &id, 5 * GIB).await.unwrap(), 5 * GIB);
    let state = expansion_state(&mut client, &id).await.unwrap();
    assert_eq!((state.size, state.pending), (5 * GIB, false), "{state:?}");
    // A stale smaller request afterwards is success with the current size.
    assert_eq!(expand(&mut client, &id, 2 * GIB).await.unwrap(), 5 * GIB);
    let sizes: Vec<u64> = rig.backend.grows().into_iter().map(|(_, s)| s).collect();
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
}
