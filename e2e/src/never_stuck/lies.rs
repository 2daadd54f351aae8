//! Engines that lie the ways real ones do (the Longhorn 13379 family: a
//! grow acknowledged but not made, a short grow, a stale answer, reads that
//! lag behind a grow, a grow that lands after its caller's deadline). Swell
//! must never answer OK for a size the engine does not hold, must show the
//! expansion pending while the engine is short, must finish it once the
//! engine behaves, and no size may ever go down.

use std::time::{Duration, Instant};

use swell_storage::units::MIB;
use tonic::Code;

use super::engine::{Engine, InProcess, create, delete, expand};
use crate::instrumented::GrowMode;
use crate::metrics::{scrape, value};
use crate::observe::{ExpansionState, expansion_state};
use crate::timing::assert_within_deadline;

const FROM: u64 = 64 * MIB;
const TARGET: u64 = 128 * MIB;
/// A request older than the one for `TARGET`, retried late.
const STALE: u64 = 96 * MIB;

/// What one look at the volume found, checked against the engine's truth.
struct Look {
    truth: u64,
    state: ExpansionState,
}

/// Reads the volume through Swell and through the engine, and checks what
/// must hold whatever the engine says: Swell never reports a size the
/// engine lacks, it reports the expansion pending exactly while the size it
/// read is short of the wish, and nothing shrinks.
async fn look(rig: &InProcess, id: &str, truths: &mut Vec<u64>, when: &str) -> Look {
    let truth = rig.true_size(id).await;
    let state = expansion_state(&mut rig.client(), id).await.unwrap_or_else(|e| panic!("{when}: ControllerGetVolume: {e:?}"));
    assert!(state.size <= truth, "{when}: Swell reports {} bytes, the engine holds {truth}", state.size);
    assert_eq!(state.pending, state.size < TARGET, "{when}: pending must mean short of {TARGET}: {state:?} (engine {truth})");
    if state.pending {
        assert!(state.message.contains(&TARGET.to_string()), "{when}: the condition names the wish: {}", state.message);
    }
    if let Some(&last) = truths.last() {
        assert!(truth >= last, "{when}: the engine shrank from {last} to {truth}");
    }
    truths.push(truth);
    Look { truth, state }
}

async fn pending_metric(rig: &InProcess) -> Option<u64> {
    value(&scrape(rig.controller.metrics).await, "swell_expansions_pending").map(|v| v as u64)
}

/// Runs one lie against a fresh volume; see the module doc.
pub async fn a_lying_engine_is_never_believed(engine: &dyn Engine, lie: GrowMode) {
    let rig = InProcess::start(engine, Duration::ZERO).await;
    let mut client = rig.client();
    let id = create(&mut client, &format!("lie-{}", std::process::id()), FROM).await;
    let mut truths = Vec::new();

    rig.backend.set_grow_mode(lie);
    let started = Instant::now();
    let first = expand(&mut client, &id, TARGET).await;
    let took = started.elapsed();
    // OK is allowed only for a size the engine holds; otherwise a retryable
    // answer (the deadline's, when the engine did not answer in time).
    let first_code = match first {
        Ok(size) => {
            let truth = rig.true_size(&id).await;
            assert!(truth >= size, "{lie:?}: the lie was believed: OK with {size} bytes, the engine holds {truth}");
            Code::Ok
        }
        Err(status) => {
            let wanted = if matches!(lie, GrowMode::LandsAfter(_)) { Code::DeadlineExceeded } else { Code::Unavailable };
            assert_eq!(status.code(), wanted, "{lie:?}: a retryable answer: {status:?}");
            status.code()
        }
    };
    assert_within_deadline(&format!("{lie:?}: the first expansion"), took, engine.backend_deadline());
    let after_call = look(&rig, &id, &mut truths, "after the lie").await;
    if after_call.truth < TARGET {
        assert!(after_call.state.pending, "{lie:?}: the engine is short, the expansion must show pending");
    }
    if after_call.truth >= STALE && !matches!(lie, GrowMode::LandsAfter(_)) {
        // A retried older request the engine already holds: OK, or retry
        // later; never infeasible, and never a shrink, whatever a read says.
        match expand(&mut client, &id, STALE).await {
            Ok(size) => assert!(size >= STALE && size <= rig.true_size(&id).await, "{lie:?}: the stale request answered {size}"),
            Err(status) => assert!(matches!(status.code(), Code::Unavailable | Code::Aborted), "{lie:?}: the stale request answered {status:?}"),
        }
        look(&rig, &id, &mut truths, "after a stale request").await;
    }

    if let GrowMode::LandsAfter(_) = lie {
        // The engine takes the grow after the caller gave up; the resizer's
        // retry then finds it there: no second grow, but the clients are told.
        let until = Instant::now() + engine.backend_deadline() * 4;
        while rig.true_size(&id).await < TARGET {
            assert!(Instant::now() < until, "{lie:?}: the late grow never landed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rig.backend.set_grow_mode(GrowMode::Normal);
        assert_eq!(expand(&mut client, &id, TARGET).await.unwrap_or_else(|e| panic!("the retry after the late grow: {e:?}")), TARGET);
        assert_eq!(rig.backend.grows().len(), 1, "the retry found the size there: {:?}", rig.backend.grows());
        assert_eq!(rig.backend.announcements().len(), 1, "the late grow was announced");
    } else {
        // The reconciler meets the same lie and must not believe it either.
        let report = rig.controller.reconciler.pass().await;
        let during = look(&rig, &id, &mut truths, "after a pass during the lie").await;
        let expected = u64::from(during.truth < TARGET);
        assert_eq!(pending_metric(&rig).await, Some(expected), "{lie:?}: swell_expansions_pending after {report:?}");
        rig.backend.set_grow_mode(GrowMode::Normal);
    }

    let report = rig.controller.reconciler.pass().await;
    assert_eq!(report.pending, 0, "{lie:?}: the reconciler finishes once the engine behaves: {report:?}");
    assert_eq!(pending_metric(&rig).await, Some(0), "swell_expansions_pending");
    let done = look(&rig, &id, &mut truths, "after the engine behaved").await;
    assert_eq!((done.truth, done.state.size, done.state.pending), (TARGET, TARGET, false), "{lie:?}: {:?}", done.state);
    if matches!(lie, GrowMode::StaleAnswer) {
        assert_eq!(rig.backend.announcements().len(), 1, "a grow Swell did not see land is announced before it is settled");
    }
    let retry = expand(&mut client, &id, TARGET).await.unwrap_or_else(|e| panic!("{lie:?}: the resizer's retry: {e:?}"));
    assert_eq!(retry, TARGET);
    // A lagging read can make Swell ask for less than the engine holds; the
    // engine refuses, and what matters is checked in `look`: no size went down.
    let grows: Vec<u64> = rig.backend.grows().into_iter().map(|(_, size)| size).collect();
    println!(
        "{}: {lie:?}: first answer {first_code:?} after {took:?}, {} lies told, engine grows {:?} MiB, sizes seen {:?} MiB",
        engine.name(),
        rig.backend.lies_told(),
        grows.iter().map(|g| g / MIB).collect::<Vec<_>>(),
        truths.iter().map(|t| t / MIB).collect::<Vec<_>>()
    );
    delete(&mut client, &id).await;
}
