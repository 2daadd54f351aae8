//! One controller with more and more volumes (100, 1,000, 10,000): how long
//! it takes to serve after a restart, its memory, GetCapacity, expand,
//! create, delete and ListVolumes against the count, and one reconciler pass with a few
//! volumes pending among all the settled ones (its time and its backend
//! calls must follow the pending ones, not the count).

use std::sync::Arc;
use std::time::{Duration, Instant};

use swell_storage::{Backend, ExpansionStore, VolumeId};

use crate::csi::{self, timed};
use crate::plan::{Plan, Rig};
use crate::process::Calls;
use crate::report::{Report, Samples, Table, mib, ms, ratio};
use crate::step::{BenchResult, at};
use swell_storage::units::MIB;

/// Volumes made pending before the measured reconciler pass.
pub(crate) const PENDING: usize = 20;
/// ListVolumes page size of the figure.
pub(crate) const PAGE: i32 = 500;

/// What one volume count measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Point {
    /// Volumes the controller knows.
    pub volumes: usize,
    /// From spawn until it answered GetCapacity.
    pub start: Duration,
    /// Resident memory after start-up, before any call.
    pub rss_idle: u64,
    /// Resident memory after the calls below.
    pub rss_after: u64,
    /// GetCapacity.
    pub capacity: Samples,
    /// ControllerExpandVolume of volumes among them.
    pub expand: Samples,
    /// The backend calls those expands made, by step.
    pub expand_steps: Calls,
    /// CreateVolume of a volume more, among them.
    pub create: Samples,
    /// DeleteVolume of that volume.
    pub delete: Samples,
    /// ListVolumes pages of [`PAGE`].
    pub pages: Samples,
    /// The whole ListVolumes walk.
    pub walk: Duration,
    /// Entries the walk returned.
    pub listed: usize,
    /// One reconciler pass with nothing pending: time and backend calls.
    pub idle_pass: (Duration, u64),
    /// One reconciler pass with [`PENDING`] pending: time, backend calls, volumes examined.
    pub busy_pass: (Duration, u64, usize),
}

/// Where the volumes of the scale run stand.
struct Population {
    ids: Vec<String>,
    sizes: Vec<u64>,
}

/// Measures every count of `plan.scale` with one growing population.
pub(crate) async fn run(rig: &Rig, plan: &Plan, report: &mut Report) -> BenchResult<Vec<Point>> {
    let mut population = Population { ids: Vec::new(), sizes: Vec::new() };
    let mut points = Vec::new();
    for &count in &plan.scale {
        let made = Instant::now();
        grow_population(rig, &mut population, count).await?;
        // The setup's writeback (10,000 files or images just made, on this
        // machine's one disk) is not what is measured: flush it first.
        nix::unistd::sync();
        println!("scale: {} volumes on {} ready in {:.1} s", count, rig.name, made.elapsed().as_secs_f64());
        points.push(measure(rig, plan, &mut population).await?);
    }
    report.add(table(rig, &points));
    report.add(expand_steps(rig, plan, &points));
    judge(rig, &points, report);
    Ok(points)
}

/// Creates volumes until there are `count`; each is grown once, so every
/// one has an expansion record (settled), as after a life of use.
async fn grow_population(rig: &Rig, population: &mut Population, count: usize) -> BenchResult<()> {
    let have = population.ids.len();
    if count <= have {
        return Ok(());
    }
    let served = rig.start().await?;
    let csi = rig.csi(served.channel().await?);
    let names = (have..count).map(|i| format!("scale-{i}")).collect();
    let ids = csi::create_many(&csi, names, 64 * MIB, 16).await?;
    let mut sizes = vec![64 * MIB; ids.len()];
    for (chunk_ids, chunk_sizes) in ids.chunks(16).zip(sizes.chunks_mut(16)) {
        csi::expand_all_at_once(&csi, chunk_ids, chunk_sizes, MIB).await?;
    }
    population.ids.extend(ids);
    population.sizes.extend(sizes);
    served.stop().await;
    Ok(())
}

async fn measure(rig: &Rig, plan: &Plan, population: &mut Population) -> BenchResult<Point> {
    let served = rig.start().await?;
    let mut point = Point { volumes: population.ids.len(), start: served.started_in, ..Point::default() };
    tokio::time::sleep(Duration::from_secs(1)).await;
    point.rss_idle = served.rss()?;
    let mut csi = rig.csi(served.channel().await?);
    for _ in 0..plan.runs {
        let (took, answer) = timed(csi.capacity()).await;
        answer.map_err(at("GetCapacity"))?;
        point.capacity.push(took);
    }
    // Each run grows another volume, spread over the whole population.
    let stride = (population.ids.len() / plan.runs.max(1)).max(1);
    let calls_before = served.backend_calls().await?;
    for run in 0..plan.runs {
        let at_index = (run * stride) % population.ids.len();
        let target = population.sizes[at_index] + MIB;
        let (took, answer) = timed(csi.expand(&population.ids[at_index], target)).await;
        population.sizes[at_index] = answer.map_err(at(format!("expand {}", population.ids[at_index])))?;
        point.expand.push(took);
    }
    point.expand_steps = served.backend_calls().await?.since(&calls_before);
    // Each run creates a volume more and deletes it: the count stays.
    for run in 0..plan.runs {
        let name = format!("scale-extra-{}-{run}", population.ids.len());
        let (took, answer) = timed(csi.create(&name, 64 * MIB)).await;
        let id = answer.map_err(at(format!("create {name}")))?;
        point.create.push(took);
        let (took, answer) = timed(csi.delete(&id)).await;
        answer.map_err(at(format!("delete {id}")))?;
        point.delete.push(took);
    }
    let walk = Instant::now();
    let mut token = String::new();
    loop {
        let (took, answer) = timed(csi.list_page(&token, PAGE)).await;
        let (entries, next) = answer.map_err(at("ListVolumes"))?;
        point.pages.push(took);
        point.listed += entries;
        if next.is_empty() {
            break;
        }
        token = next;
    }
    point.walk = walk.elapsed();
    point.rss_after = served.rss()?;
    served.stop().await;
    (point.idle_pass, point.busy_pass) = passes(rig, population).await?;
    Ok(point)
}

/// Two reconciler passes in-process over the process's state: one with
/// every volume settled, one with [`PENDING`] of them holding a wish their
/// backend is short of (as a controller killed between the wish and the
/// resize leaves them).
async fn passes(rig: &Rig, population: &Population) -> BenchResult<((Duration, u64), (Duration, u64, usize))> {
    let controller = rig.in_process()?;
    let reconciler = &controller.reconciler;
    let calls = || Calls::parse(&controller.observed.render()).0.values().map(|(n, _)| n).sum::<u64>();
    // The first pass finds what the process left (nothing, normally).
    reconciler.pass().await;
    let before = calls();
    let (idle, _) = timed(reconciler.pass()).await;
    let idle_calls = calls() - before;

    let store = wish_store(rig)?;
    let step = (population.ids.len() / PENDING).max(1);
    for id in population.ids.iter().step_by(step).take(PENDING) {
        let id: VolumeId = id.parse().map_err(at(format!("volume id {id}")))?;
        leave_a_wish(&*store, &id).await?;
    }
    drop(store);
    // A wish's hold lingers a moment in the process that wrote it (RBD).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = calls();
    let (busy, report) = timed(reconciler.pass()).await;
    let busy_calls = calls() - before;
    if report.completed + report.settled < PENDING.min(population.ids.len()) {
        return Err(format!("the reconciler pass finished {} of {PENDING} pending volumes: {report:?}", report.completed + report.settled));
    }
    Ok(((idle, idle_calls), (busy, busy_calls, report.examined)))
}

/// The expansion store of the rig's volumes, opened apart from any controller.
fn wish_store(rig: &Rig) -> BenchResult<Arc<dyn ExpansionStore>> {
    #[cfg(feature = "rbd")]
    if let Some(rbd) = &rig.rbd {
        return Ok(swell_rbd::RbdBackend::new(rbd.clone()).map_err(at("RBD backend"))?.expansion_store());
    }
    let local = swell_local::LocalConfig::new(&rig.controller.local_state_dir, rig.controller.root.join("controller"));
    Ok(swell_local::LocalBackend::open(&local).map_err(at("local backend"))?.expansion_store())
}

/// Records a wish one MiB above the volume's size, without growing it.
async fn leave_a_wish(store: &dyn ExpansionStore, id: &VolumeId) -> BenchResult<()> {
    let hold = store.hold(id).await.map_err(at(format!("hold {id}")))?.ok_or_else(|| format!("{id} is held"))?;
    let record = store.record(id).await.map_err(at(format!("record of {id}")))?.ok_or_else(|| format!("{id} has no record"))?;
    let current = record.current_bytes;
    store.write(&hold, record.wishing(current, current + MIB)).await.map_err(at(format!("wish of {id}")))?;
    hold.release().await;
    Ok(())
}

fn table(rig: &Rig, points: &[Point]) -> Table {
    let mut table = Table::new(
        format!("Scale on {}: one controller with more and more volumes", rig.name),
        &[
            "volumes",
            "start-up until serving",
            "RSS idle",
            "RSS after calls",
            "GetCapacity p50 / p99",
            "expand p50 / p99",
            "create p50 / p99",
            "delete p50 / p99",
            "ListVolumes page of 500 p50 / p99",
            "whole walk",
            "reconciler pass, none pending",
            &format!("pass, {PENDING} pending"),
        ],
    );
    for p in points {
        table.row(vec![
            p.volumes.to_string(),
            ms(p.start),
            mib(p.rss_idle),
            mib(p.rss_after),
            format!("{} / {}", ms(p.capacity.p50()), ms(p.capacity.p99())),
            format!("{} / {}", ms(p.expand.p50()), ms(p.expand.p99())),
            format!("{} / {}", ms(p.create.p50()), ms(p.create.p99())),
            format!("{} / {}", ms(p.delete.p50()), ms(p.delete.p99())),
            format!("{} / {}", ms(p.pages.p50()), ms(p.pages.p99())),
            format!("{} ({} entries)", ms(p.walk), p.listed),
            format!("{}, {} backend calls", ms(p.idle_pass.0), p.idle_pass.1),
            format!("{}, {} backend calls, {} examined", ms(p.busy_pass.0), p.busy_pass.1, p.busy_pass.2),
        ]);
    }
    table.note(
        "Start-up: from spawn until GetCapacity answered (backends open). Each volume (64 MiB, sparse or thin) was created and grown \
         once, so each has a settled expansion record, and the disk was flushed (`sync`) before measuring; the controller may promise far more than the disk holds here \
         (`--local-capacity-bytes` 1 PiB, `--rbd-overprovision-ratio` 1000). Passes run in-process over the same state, with the process stopped; backend calls are the controller's own \
         count (`swell_backend_call_duration_seconds`).",
    );
    table
}

/// Where an expand's backend time goes at each volume count: the mean time
/// per expand of each step, as the controller counted it.
fn expand_steps(rig: &Rig, plan: &Plan, points: &[Point]) -> Table {
    let headers: Vec<String> =
        std::iter::once("backend step".to_owned()).chain(points.iter().map(|p| format!("ms per expand, {} volumes", p.volumes))).collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut table = Table::new(format!("Scale on {}: where an expand spends its backend time ({} expands a count)", rig.name, plan.runs), &headers);
    let steps: std::collections::BTreeSet<&String> = points.iter().flat_map(|p| p.expand_steps.0.keys()).collect();
    for step in steps {
        let per_expand = points.iter().map(|p| {
            let (_, seconds) = p.expand_steps.0.get(step).copied().unwrap_or_default();
            format!("{:.2}", seconds * 1000.0 / plan.runs.max(1) as f64)
        });
        table.row(std::iter::once(step.clone()).chain(per_expand).collect());
    }
    table
}

fn judge(rig: &Rig, points: &[Point], report: &mut Report) {
    let (Some(small), Some(large)) = (points.first(), points.last()) else { return };
    let name = rig.name;
    report.goal(format!("{name}: start-up with {} volumes ≤ 2 s", large.volumes), ms(large.start), large.start <= Duration::from_secs(2));
    report.goal(
        format!("{name}: start-up with {} volumes within 1.2× of with {}", large.volumes, small.volumes),
        format!("{} → {} ({})", ms(small.start), ms(large.start), ratio(large.start, small.start)),
        large.start.as_secs_f64() <= small.start.as_secs_f64() * 1.2,
    );
    report.goal(
        format!("{name}: ListVolumes ≤ 20 ms a page of 500 ({} volumes)", large.volumes),
        format!("p50 {}", ms(large.pages.p50())),
        large.pages.p50() <= Duration::from_millis(20),
    );
    let flat = [
        ("GetCapacity", &small.capacity, &large.capacity),
        ("ControllerExpandVolume", &small.expand, &large.expand),
        ("CreateVolume", &small.create, &large.create),
        ("DeleteVolume", &small.delete, &large.delete),
        ("a ListVolumes page of 500", &small.pages, &large.pages),
    ];
    for (what, a, b) in flat {
        report.goal(
            format!("{name}: {what} with {} volumes within 1.2× of with {}", large.volumes, small.volumes),
            format!("{} → {} ({})", ms(a.p50()), ms(b.p50()), ratio(b.p50(), a.p50())),
            b.p50().as_secs_f64() <= a.p50().as_secs_f64() * 1.2,
        );
    }
    report.goal(
        format!("{name}: a reconciler pass follows the pending volumes ({} volumes, {PENDING} pending)", large.volumes),
        format!(
            "{} backend calls with none pending ({} with {} volumes), {} with {PENDING}; {} examined; none pending took {} ({} with {})",
            large.idle_pass.1,
            small.idle_pass.1,
            small.volumes,
            large.busy_pass.1,
            large.busy_pass.2,
            ms(large.idle_pass.0),
            ms(small.idle_pass.0),
            small.volumes
        ),
        large.idle_pass.1 <= small.idle_pass.1
            && large.busy_pass.2 == PENDING
            && large.busy_pass.1.saturating_sub(large.idle_pass.1) <= (PENDING as u64) * 12
            // Time too, not only calls: within 1.2x, or 5 ms for passes too short to compare.
            && large.idle_pass.0 <= (small.idle_pass.0.mul_f64(1.2)).max(small.idle_pass.0 + Duration::from_millis(5)),
    );
    report.goal(format!("{name}: controller RSS idle ≤ 25 MiB"), mib(small.rss_idle), small.rss_idle <= 25 << 20);
    report.goal(format!("{name}: controller RSS with {} volumes ≤ 64 MiB", large.volumes), mib(large.rss_after), large.rss_after <= 64 << 20);
}

/// The (volumes, expand p50 in ms, RSS in MiB) of each point, for the chart.
pub(crate) fn series(points: &[Point]) -> Vec<(usize, f64, f64)> {
    points.iter().map(|p| (p.volumes, p.expand.p50().as_secs_f64() * 1000.0, p.rss_after as f64 / f64::from(1u32 << 20))).collect()
}
