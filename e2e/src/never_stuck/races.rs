//! Many callers at once: 64 racing expansions of one volume end at the
//! largest size and the engine only ever sees growing targets; expansions
//! of different volumes run in parallel (no global lock), judged on the
//! median of several batches.

use std::time::{Duration, Instant};

use swell_storage::units::{GIB, MIB};
use tonic::Code;

use super::engine::{Engine, InProcess, create, delete, expand};
use crate::observe::expansion_state;
use crate::resizer::expand_like_the_resizer;
use crate::timing::median;

/// 64 calls for 64 different sizes of one volume, each retried on ABORTED as
/// the external-resizer does: all end OK, the volume ends at the largest,
/// and the engine was never asked for a size below one it already had.
pub async fn racing_expansions_of_one_volume(engine: &dyn Engine) {
    let rig = InProcess::start(engine, Duration::from_millis(2)).await;
    let mut client = rig.client();
    let id = create(&mut client, "race", GIB).await;
    let sizes: Vec<u64> = (0..64u64).map(|i| GIB + ((i * 37) % 64 + 1) * 64 * MIB).collect();
    let started = Instant::now();
    let calls: Vec<_> = sizes.iter().map(|&bytes| tokio::spawn(expand_like_the_resizer(rig.client(), id.clone(), bytes))).collect();
    let mut aborted = 0;
    for call in calls {
        let codes = call.await.expect("a racing call panicked").codes;
        assert_eq!(codes.last(), Some(&Code::Ok), "a call ended without success: {codes:?}");
        assert!(codes.iter().all(|c| matches!(c, Code::Ok | Code::Aborted)), "only OK or ABORTED: {codes:?}");
        aborted += codes.len() - 1;
    }
    let took = started.elapsed();
    let largest = *sizes.iter().max().unwrap_or(&0);
    assert_eq!(expansion_state(&mut client, &id).await.expect("ControllerGetVolume").size, largest, "ControllerGetVolume");
    assert_eq!(engine.size_outside_swell(rig.dir.path(), &id.parse().expect("volume id")).await, Some(largest), "the engine's own view");
    let grows: Vec<u64> = rig.backend.grows().into_iter().map(|(_, size)| size).collect();
    assert!(grows.windows(2).all(|w| w[0] < w[1]), "the engine saw a non-increasing resize: {grows:?}");
    println!(
        "{}: 64 racing expansions in {took:?}: {} engine resizes, {aborted} ABORTED answers retried, final {} MiB",
        engine.name(),
        grows.len(),
        largest / MIB
    );
    delete(&mut client, &id).await;
}

const VOLUMES: usize = 24;
const ROUNDS: usize = 5;
const STEP: u64 = 4 * MIB;

/// Expands `VOLUMES` volumes by one step each, one after another, then
/// again all at once, `ROUNDS` times; every answer must be OK with the
/// exact size. The batch at once must beat the batch in turn by the
/// engine's margin, on the medians: a global lock would make them equal.
pub async fn volumes_expand_in_parallel(engine: &dyn Engine) {
    let rig = InProcess::start(engine, engine.stand_in_latency()).await;
    let mut client = rig.client();
    let mut ids = Vec::new();
    for i in 0..VOLUMES {
        ids.push(create(&mut client, &format!("par-{i}"), 64 * MIB).await);
    }
    let mut size = 64 * MIB;
    // The first call connects to the engine (RBD: to the cluster).
    size += STEP;
    expand(&mut client, &ids[0], size).await.unwrap_or_else(|e| panic!("warm-up expansion: {e:?}"));
    for id in &ids[1..] {
        expand(&mut client, id, size).await.unwrap_or_else(|e| panic!("expand {id}: {e:?}"));
    }

    let (mut in_turn, mut at_once) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        size += STEP;
        let started = Instant::now();
        for id in &ids {
            let answer = expand(&mut client, id, size).await.unwrap_or_else(|e| panic!("round {round}: expand {id} in turn: {e:?}"));
            assert_eq!(answer, size, "round {round}: expand {id} in turn");
        }
        in_turn.push(started.elapsed());

        size += STEP;
        let started = Instant::now();
        let calls: Vec<_> = ids
            .iter()
            .map(|id| {
                let (mut client, id) = (rig.client(), id.clone());
                tokio::spawn(async move { (expand(&mut client, &id, size).await, id) })
            })
            .collect();
        let mut failures = Vec::new();
        for call in calls {
            match call.await.expect("an expansion task panicked") {
                (Ok(answer), id) => assert_eq!(answer, size, "round {round}: expand {id} at once"),
                (Err(status), id) => failures.push(format!("{id}: {:?} {}", status.code(), status.message())),
            }
        }
        at_once.push(started.elapsed());
        assert!(failures.is_empty(), "round {round}: {} of {VOLUMES} expansions at once failed: {failures:?}", failures.len());
    }
    let (serial, parallel) = (median(&in_turn), median(&at_once));
    let speedup = serial.as_secs_f64() / parallel.as_secs_f64().max(1e-6);
    println!(
        "{}: {VOLUMES} expansions in turn {in_turn:?} vs at once {at_once:?}; medians {serial:?} vs {parallel:?}: {speedup:.1}x (need {:.1}x)",
        engine.name(),
        engine.min_parallel_speedup()
    );
    for id in &ids {
        assert_eq!(engine.size_outside_swell(rig.dir.path(), &id.parse().expect("volume id")).await, Some(size), "{id}: the engine's own view");
        delete(&mut client, id).await;
    }
    assert!(
        speedup >= engine.min_parallel_speedup(),
        "{VOLUMES} expansions at once took {parallel:?} (median) against {serial:?} in turn: expansions of different volumes are serialised"
    );
}
