//! The figures both backends share: where an expansion's time goes step by
//! step, parallel expansion of many volumes, and a storm of calls for one
//! volume (figures 4 and 5), with the controller's memory under it.

use std::time::Duration;

use crate::csi::{self, Csi};
use crate::plan::{Plan, Rig};
use crate::process::{Calls, PeakRss, Served};
use crate::report::{Report, Samples, Table, mib, ms};
use crate::step::{BenchResult, at};
use swell_storage::units::MIB;

/// A table of the backend calls made during `runs` operations: per step,
/// calls per operation and mean time, as the controller itself counted them.
pub(crate) fn step_costs(title: &str, calls: &Calls, runs: usize) -> Table {
    let mut table = Table::new(title, &["backend step", "calls per operation", "mean time per call"]);
    if calls.0.is_empty() {
        table.note("This controller exposes no per-step counts (`swell_backend_call_duration_seconds`).");
    }
    for (step, (count, seconds)) in &calls.0 {
        let per_call = Duration::from_secs_f64(seconds / (*count).max(1) as f64);
        table.row(vec![step.clone(), format!("{:.2}", *count as f64 / runs.max(1) as f64), ms(per_call)]);
    }
    table
}

/// Figure 4: 1, 8 and 64 volumes expanded at once; operations per second
/// and the speed-up over one. `goal_64`: the speed-up asked of 64.
pub(crate) async fn parallel(rig: &Rig, served: &Served, plan: &Plan, report: &mut Report, goal_64: Option<f64>) -> BenchResult<()> {
    let csi = rig.csi(served.channel().await?);
    let rounds = (plan.runs / 3).max(3);
    let mut table = Table::new(
        format!("Figure 4 on {}: expansions of many volumes at once ({rounds} rounds each)", rig.name),
        &["volumes at once", "wall time p50", "expansions per second", "× one at a time"],
    );
    let mut one = 0.0;
    for n in [1usize, 8, 64] {
        let names = (0..n).map(|i| format!("parallel-{n}-{i}")).collect();
        let ids = csi::create_many(&csi, names, 64 * MIB, 16).await?;
        let mut sizes = vec![64 * MIB; n];
        let mut walls = Samples::default();
        for _ in 0..rounds {
            walls.push(csi::expand_all_at_once(&csi, &ids, &mut sizes, MIB).await?);
        }
        let per_second = n as f64 / walls.p50().as_secs_f64();
        if n == 1 {
            one = per_second;
        }
        table.row(vec![n.to_string(), ms(walls.p50()), format!("{per_second:.0}"), format!("{:.1}×", per_second / one)]);
        if n == 64
            && let Some(goal) = goal_64
        {
            report.goal(format!("{}: 64 expansions at once ≥ {goal}× one", rig.name), format!("{:.1}×", per_second / one), per_second / one >= goal);
        }
        delete_all(&csi, &ids).await?;
    }
    report.add(table);
    Ok(())
}

/// Figure 5: 64 concurrent calls for one volume, 8 distinct sizes, each
/// retried on ABORTED until OK; the backend resizes they cost and their
/// latency, `storms` times. Returns the controller's peak RSS under them.
pub(crate) async fn storm(rig: &Rig, served: &Served, report: &mut Report, storms: usize) -> BenchResult<u64> {
    const CALLS: usize = 64;
    const DISTINCT: usize = 8;
    let csi = rig.csi(served.channel().await?);
    let peak = PeakRss::watch(served)?;
    let mut table = Table::new(
        format!("Figure 5 on {}: {CALLS} concurrent expansions of one volume, {DISTINCT} distinct sizes, retried until OK", rig.name),
        &["storm", "backend resizes", "distinct sizes", "ABORTED answers (retried)", "call p50", "call p99", "final size"],
    );
    let mut worst_resizes = 0;
    let mut uncounted = false;
    let mut all = Samples::default();
    for n in 0..storms {
        let mut one = csi.clone();
        let id = one.create(&format!("storm-{n}"), 64 * MIB).await.map_err(at("create the storm's volume"))?;
        let before = served.backend_calls().await?;
        // A controller that exposes no per-step counts (an older build) has
        // none even for the create just made.
        let counted = !before.0.is_empty();
        let outcome = csi::storm(&csi, &id, 64 * MIB, CALLS, DISTINCT).await?;
        let resizes = served.backend_calls().await?.since(&before).count("grow volume");
        worst_resizes = worst_resizes.max(resizes);
        uncounted |= !counted;
        all.0.extend(outcome.latencies.0.iter().copied());
        table.row(vec![
            (n + 1).to_string(),
            if counted { resizes.to_string() } else { "–".to_owned() },
            outcome.distinct_sizes.to_string(),
            outcome.refusals.to_string(),
            ms(outcome.latencies.p50()),
            ms(outcome.latencies.p99()),
            mib(outcome.final_size),
        ]);
        one.delete(&id).await.map_err(at("delete the storm's volume"))?;
    }
    table.note(format!(
        "Backend resizes: the controller's own count of `grow volume` backend calls during the storm. All storms: call p50 {}, p99 {}.",
        ms(all.p50()),
        ms(all.p99())
    ));
    report.add(table);
    if !uncounted {
        report.goal(
            format!("{}: a storm of 64 calls costs at most one resize per distinct size (8)", rig.name),
            format!("at most {worst_resizes}"),
            worst_resizes <= 8,
        );
    }
    Ok(peak.stop())
}

/// Deletes `ids`, each retried while ABORTED.
pub(crate) async fn delete_all(csi: &Csi, ids: &[String]) -> BenchResult<()> {
    for id in ids {
        let mut csi = csi.clone();
        let mut tries = 0;
        loop {
            match csi.delete(id).await {
                Err(status) if status.code() == tonic::Code::Aborted && tries < 1000 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => {
                    other.map_err(at(format!("delete {id}")))?;
                    break;
                }
            }
        }
    }
    Ok(())
}
