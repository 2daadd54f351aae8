//! The RBD figures on a throwaway Ceph test cluster. The references are
//! what a user would otherwise do, measured in this process on a warm
//! connection of its own (`swell_rbd::test_util::OtherClient`): librbd
//! open, resize and close, resize of an image kept open, create, remove and
//! trash move; the `rbd` CLI; and the RADOS lease lock Swell holds volumes
//! with. The crowded figures (create, expand and delete in an empty pool and
//! beside 5,000 foreign 1 MiB images) run with whichever controller binary
//! the plan names, so an older build gives the "before" column.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::csi::{Csi, timed};
use crate::figures;
use crate::plan::{Plan, Rig, fresh};
use crate::process::{ControllerArgs, Served};
use crate::report::{Report, Samples, Table, mib, ms, ratio};
use crate::scale::{self, Point};
use crate::step::{BenchResult, at};
use swell_e2e::auto_grow_rig::{Engine, FilesystemGrow};
use swell_e2e::ceph::{self, TestCluster};
use swell_rbd::test_util::OtherClient;
use swell_storage::CephAccess;
use swell_storage::rbd_attach::AttachMode;
use swell_storage::units::MIB;

/// The cluster id both drivers know the test cluster by.
pub(crate) const CLUSTER_ID: &str = "bench";
/// Below the ephemeral range even with a slot's offset; far from the test rigs' sites.
const PORT: u16 = 26200;
const SITE: &str = "/var/tmp/swell-bench-ceph";

/// A reachable cluster: its directory, config and admin keyring.
pub(crate) struct Site {
    /// ceph.conf.
    pub conf: PathBuf,
    /// The admin keyring.
    pub keyring: PathBuf,
    cluster: Option<TestCluster>,
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl Site {
    /// The cluster in `SWELL_BENCH_CEPH_CLUSTER` (left running), or a
    /// throwaway one at the bench's site (moved aside by `SWELL_TEST_SLOT`),
    /// purged when this process exits however it exits.
    pub(crate) fn up() -> BenchResult<Site> {
        if let Some(dir) = std::env::var_os("SWELL_BENCH_CEPH_CLUSTER") {
            let dir = PathBuf::from(dir);
            return Ok(Site { conf: dir.join("ceph.conf"), keyring: dir.join("ceph.client.admin.keyring"), cluster: None, _lock: None });
        }
        let (dir, port) = ceph::site(SITE, PORT);
        let lock = ceph::lock_site(&dir, Duration::from_secs(600)).map_err(at(format!("lock {}", ceph::site_lock(&dir).display())))?;
        ceph::cluster_command(&dir, "down", &["--purge"]).map_err(at("clear the bench's cluster site"))?;
        ceph::purge_when_this_process_exits(&dir);
        let started = Instant::now();
        let cluster = TestCluster::up(&dir, port).map_err(|e| format!("start the Ceph test cluster: {e}\n{}", ceph::log_tail(&dir, 20)))?;
        println!("ceph test cluster up in {:.1} s at {}", started.elapsed().as_secs_f64(), dir.display());
        Ok(Site { conf: cluster.conf.clone(), keyring: cluster.keyring.clone(), cluster: Some(cluster), _lock: Some(lock) })
    }

    fn cli(&self, tool: &str, args: &[&str]) -> BenchResult<String> {
        let out = Command::new("timeout").arg("120").arg(tool).arg("-c").arg(&self.conf).args(args).output().map_err(at(format!("run {tool}")))?;
        if !out.status.success() {
            return Err(format!("{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A new pool of `pool` (an older one of that name goes first).
    pub(crate) fn new_pool(&self, pool: &str) -> BenchResult<()> {
        let _ = self.cli("ceph", &["osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"]);
        self.cli("ceph", &["osd", "pool", "create", pool, "8"])?;
        self.cli("rbd", &["pool", "init", pool]).map(drop)
    }

    /// Removes `pool` and everything in it.
    pub(crate) fn drop_pool(&self, pool: &str) -> BenchResult<()> {
        self.cli("ceph", &["osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"]).map(drop)
    }

    /// How to reach the cluster as `client.admin`.
    fn access(&self) -> CephAccess {
        CephAccess::new(CLUSTER_ID, &self.conf, &self.keyring)
    }

    /// A client of this process's own on `pool`, connected (warm).
    pub(crate) fn client(&self, pool: &str) -> BenchResult<OtherClient> {
        OtherClient::connect(&self.access(), pool).map_err(at(format!("connect to pool {pool}")))
    }

    /// A rig whose controller serves `pool` of this cluster.
    pub(crate) fn rig(&self, plan: &Plan, pool: &str, dir: &Path, metrics_port: u16) -> Rig {
        let mut rbd = swell_rbd::RbdConfig::with_access(self.access());
        rbd.default_pool = pool.to_owned();
        let extra = vec![
            format!("--rbd-cluster-id={CLUSTER_ID}"),
            format!("--rbd-ceph-conf={}", self.conf.display()),
            format!("--rbd-keyring={}", self.keyring.display()),
            "--default-backend=rbd".to_owned(),
            format!("--rbd-pool={pool}"),
        ];
        Rig {
            name: "rbd",
            controller: ControllerArgs { binary: plan.controller_bin.clone(), root: dir.to_owned(), local_state_dir: dir.join("local"), extra, metrics_port },
            parameters: vec![("pool".to_owned(), pool.to_owned())],
            rbd: Some(rbd),
            local_capacity: None,
        }
    }

    /// Stops and removes a throwaway cluster (one from the environment stays).
    pub(crate) fn purge(self) -> BenchResult<()> {
        match self.cluster {
            Some(cluster) => cluster.purge().map_err(at("purge the Ceph test cluster")),
            None => Ok(()),
        }
    }
}

/// Every RBD figure asked for by `sections` on `site`, then the scale run.
pub(crate) async fn run(site: &Site, plan: &Plan, sections: &[&str], foreign: usize) -> BenchResult<(Report, Vec<Point>)> {
    let mut report = Report::default();
    let mut points = Vec::new();
    if sections.contains(&"figures") {
        site.new_pool("bench")?;
        let rig = site.rig(plan, "bench", &fresh(&plan.scratch.join("rbd-figures"))?, 19_873);
        let served = rig.start().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = served.rss()?;
        let io = site.client("bench")?;
        engine_figures(&rig, &served, &io, site, plan, &mut report).await?;
        locks(&io, plan, &mut report)?;
        figures::parallel(&rig, &served, plan, &mut report, Some(8.0)).await?;
        let storm = figures::storm(&rig, &served, &mut report, 3).await?;
        memory(&rig, &served, idle, storm, site, plan, &mut report).await?;
        served.stop().await;
        site.drop_pool("bench")?;
    }
    if sections.contains(&"crowded") {
        crowded(site, plan, foreign, &mut report).await?;
    }
    if sections.contains(&"auto-grow") {
        auto_grow(site, plan, &mut report).await?;
    }
    if sections.contains(&"scale") {
        site.new_pool("scale")?;
        let rig = site.rig(plan, "scale", &fresh(&plan.scratch.join("rbd-scale"))?, 19_874).roomy();
        points = scale::run(&rig, plan, &mut report).await?;
        site.drop_pool("scale")?;
    }
    Ok((report, points))
}

/// Threshold crossed to filesystem grown on RBD, attached in this host's
/// mode (as the e2e rig's node attaches it), in a pool of its own.
async fn auto_grow(site: &Site, plan: &Plan, report: &mut Report) -> BenchResult<()> {
    const POOL: &str = "grow";
    if !swell_e2e::host::is_root() {
        return Err("the auto-grow figure on rbd needs root (rbd-fuse or a mapped image, mounts)".into());
    }
    site.new_pool(POOL)?;
    let (mode, named) = swell_e2e::rbd_rig::mode_under_test();
    let mut rbd = swell_rbd::RbdConfig::with_access(site.access());
    rbd.default_pool = POOL.to_owned();
    let engine = move |dir: &Path| {
        let mut parameters = swell_e2e::rbd_rig::attach_parameters(mode, named);
        parameters.insert("pool".into(), POOL.into());
        let opened = || -> Arc<dyn swell_storage::Backend> { Arc::new(swell_rbd::RbdBackend::new(rbd.clone()).expect("open the RBD backend")) };
        Engine {
            backends: swell_backends::BackendConfig {
                local: swell_local::LocalConfig::new(dir.join("local"), dir.join("controller")),
                rbd: Some(rbd.clone()),
                default_backend: "rbd".into(),
                call_deadline: Duration::from_secs(10),
            },
            webhook_facts: opened(),
            store: opened(),
            parameters,
        }
    };
    let grow = if mode == AttachMode::FuseLoop { FilesystemGrow::ByKubelet } else { FilesystemGrow::ByTheNode };
    let target = crate::auto_grow::Target { name: "rbd", engine: Box::new(engine), rbd: Some(site.access()), grow };
    crate::auto_grow::crossing_to_grown(plan, plan.auto_grow.pace, target, report).await?;
    site.drop_pool(POOL)
}

/// Figures 1 and 3 on RBD, interleaved run by run.
async fn engine_figures(rig: &Rig, served: &Served, io: &OtherClient, site: &Site, plan: &Plan, report: &mut Report) -> BenchResult<()> {
    let mut csi = rig.csi(served.channel().await?);
    let mut s = Named::default();
    let (mut create_calls, mut expand_calls, mut delete_calls) = (Default::default(), Default::default(), Default::default());
    for run in 0..plan.runs {
        let name = format!("figure-{run}");
        let before = served.backend_calls().await?;
        let (took, id) = timed(csi.create(&name, 64 * MIB)).await;
        let id = id.map_err(at("create"))?;
        s.swell_create.push(took);
        let created = served.backend_calls().await?;
        let (took, grown) = timed(csi.expand(&id, 128 * MIB)).await;
        grown.map_err(at("expand"))?;
        s.swell_expand.push(took);
        let expanded = served.backend_calls().await?;
        let (took, deleted) = timed(csi.delete(&id)).await;
        deleted.map_err(at("delete"))?;
        s.swell_delete.push(took);
        let after = served.backend_calls().await?;
        add(&mut create_calls, &created.since(&before));
        add(&mut expand_calls, &expanded.since(&created));
        add(&mut delete_calls, &after.since(&expanded));

        let image = format!("direct-{run}");
        s.create.push(time(|| io.create_image(&image, 64 * MIB), "rbd_create")?);
        s.open_resize_close.push(time(|| io.grow_image(&image, 128 * MIB), "open+resize+close")?);
        let open = io.open(&image).map_err(at("rbd_open"))?;
        s.resize_open.push(time(|| open.grow(192 * MIB), "resize of an open image")?);
        open.close().map_err(at("rbd_close"))?;
        let started = Instant::now();
        site.cli("rbd", &["resize", "--size", "256M", &format!("bench/{image}")])?;
        s.cli.push(started.elapsed());
        s.remove.push(time(|| io.remove_image(&image), "rbd_remove")?);
        let trashed = format!("trashed-{run}");
        io.create_image(&trashed, 64 * MIB).map_err(at("rbd_create"))?;
        s.trash.push(time(|| io.trash_move(&trashed), "rbd_trash_move")?);
        create_steps(io, run, &mut s)?;
    }
    let mut expand = Table::versus("Figure 1 on rbd: ControllerExpandVolume 64 → 128 MiB against the same resize done directly");
    expand.measured("librbd in-process, warm connection: open + resize + close", &s.open_resize_close, None);
    expand.measured("librbd: resize of an image already open", &s.resize_open, Some(&s.open_resize_close));
    expand.measured("`rbd resize` CLI", &s.cli, Some(&s.open_resize_close));
    expand.measured("Swell through its socket", &s.swell_expand, Some(&s.open_resize_close));
    expand.note(format!("Swell against the CLI: {} (p50).", ratio(s.swell_expand.p50(), s.cli.p50())));
    report.add(expand);
    let mut create = Table::versus("Figure 3 on rbd: CreateVolume and DeleteVolume against librbd");
    create.measured("librbd rbd_create (64 MiB, layering)", &s.create, None);
    create.measured("Swell CreateVolume", &s.swell_create, Some(&s.create));
    create.measured("librbd rbd_remove (64 MiB, empty)", &s.remove, None);
    create.measured("librbd rbd_trash_move", &s.trash, Some(&s.remove));
    create.measured("Swell DeleteVolume", &s.swell_delete, Some(&s.remove));
    create.note("Swell's delete marks the volume deleted and answers; the image goes to the trash and is purged in the background.");
    report.add(create);
    for (what, calls) in [("an expand", &expand_calls), ("a create", &create_calls), ("a delete", &delete_calls)] {
        report.add(figures::step_costs(&format!("Where {what} spends its backend time on rbd ({} runs)", plan.runs), calls, plan.runs));
    }
    report.add(create_breakdown(&s, plan.runs));
    let p50 = |s: &Samples| s.p50().as_secs_f64();
    report.goal(
        "rbd: expand ≤ 1.15× librbd open+resize+close",
        ratio(s.swell_expand.p50(), s.open_resize_close.p50()),
        p50(&s.swell_expand) <= 1.15 * p50(&s.open_resize_close),
    );
    report.goal("rbd: expand ≤ 0.3× the rbd CLI", ratio(s.swell_expand.p50(), s.cli.p50()), p50(&s.swell_expand) <= 0.3 * p50(&s.cli));
    report.goal("rbd: create ≤ 1.15× librbd create", ratio(s.swell_create.p50(), s.create.p50()), p50(&s.swell_create) <= 1.15 * p50(&s.create));
    report.goal("rbd: delete ≤ 1.15× librbd remove", ratio(s.swell_delete.p50(), s.remove.p50()), p50(&s.swell_delete) <= 1.15 * p50(&s.remove));
    Ok(())
}

/// The RADOS operations a CreateVolume of a new name makes besides
/// librbd's create, each made once directly: the volume's lock, a read of
/// omap keys and a compare-guarded omap write. The object is the bench's
/// own, never a state shard.
fn create_steps(io: &OtherClient, run: usize, s: &mut Named) -> BenchResult<()> {
    const OBJECT: &str = "bench.create-steps";
    let image = format!("create-steps-{run}");
    s.lock.push(time(|| io.lock_volume(&image, "bench", Duration::from_secs(30)), "lock a volume")?);
    io.unlock_volume(&image, "bench").map_err(at("unlock a volume"))?;
    let (expected, next) = (if run == 0 { String::new() } else { run.to_string() }, (run + 1).to_string());
    s.guarded_write.push(time(|| io.write_omap_guarded(OBJECT, "total", expected.as_bytes(), next.as_bytes()), "guarded omap write")?);
    s.omap_read.push(time(|| io.read_omap(OBJECT, &["total", "grant"]).map(drop), "omap read")?);
    Ok(())
}

/// Where a create's time goes: its RADOS steps, each timed directly in the
/// same runs, summed at their p50s against Swell's create.
fn create_breakdown(s: &Named, runs: usize) -> Table {
    let mut table = Table::new(
        format!("Where a create's time goes on rbd: its RADOS steps made directly ({runs} runs each)"),
        &["step", "per create", "p50", "p50 × per create"],
    );
    let steps: [(&str, u32, &Samples); 4] = [
        ("lock the volume (`swell.lock.<image>`)", 1, &s.lock),
        ("omap read: the volume's entry; the shard's total and grant; the budget's sum", 3, &s.omap_read),
        ("compare-guarded omap write: the entry admitted in its shard", 1, &s.guarded_write),
        ("librbd rbd_create", 1, &s.create),
    ];
    let mut sum = Duration::ZERO;
    for (step, count, samples) in steps {
        let cost = samples.p50() * count;
        sum += cost;
        table.row(vec![step.to_owned(), count.to_string(), ms(samples.p50()), ms(cost)]);
    }
    table.row(vec!["sum of the steps".into(), String::new(), String::new(), ms(sum)]);
    table.row(vec!["Swell CreateVolume through its socket".into(), String::new(), ms(s.swell_create.p50()), ratio(s.swell_create.p50(), sum)]);
    table.note(
        "What Swell's create takes beyond the sum is its own: the gRPC call, the controller's checks and its threads. The lock is given \
         back after the answer, off the create's path.",
    );
    table
}

#[derive(Default)]
struct Named {
    lock: Samples,
    omap_read: Samples,
    guarded_write: Samples,
    swell_create: Samples,
    swell_expand: Samples,
    swell_delete: Samples,
    create: Samples,
    open_resize_close: Samples,
    resize_open: Samples,
    cli: Samples,
    remove: Samples,
    trash: Samples,
}

fn add(total: &mut crate::process::Calls, more: &crate::process::Calls) {
    for (step, (n, s)) in &more.0 {
        let entry = total.0.entry(step.clone()).or_default();
        entry.0 += n;
        entry.1 += s;
    }
}

fn time<E: std::fmt::Display>(call: impl FnOnce() -> Result<(), E>, what: &str) -> BenchResult<Duration> {
    let started = Instant::now();
    call().map_err(at(what))?;
    Ok(started.elapsed())
}

/// The RADOS lease lock as Swell takes a volume's (exclusive, 10 s lease,
/// on `swell.lock.<image>`), acquired and released directly.
fn locks(io: &OtherClient, plan: &Plan, report: &mut Report) -> BenchResult<()> {
    let (mut acquire, mut release) = (Samples::default(), Samples::default());
    for run in 0..plan.runs {
        let image = format!("bench-{run}");
        acquire.push(time(|| io.lock_volume(&image, "swell-bench", Duration::from_secs(10)), "lock")?);
        release.push(time(|| io.unlock_volume(&image, "swell-bench"), "unlock")?);
    }
    let mut table = Table::versus("A volume's lease lock (rados_lock_exclusive, 10 s lease)");
    table.measured("acquire", &acquire, None);
    table.measured("release", &release, None);
    report.add(table);
    Ok(())
}

/// Figure 6 on rbd: the controller's memory, and the node's (with its RBD flags) idle.
async fn memory(rig: &Rig, served: &Served, idle: u64, storm: u64, site: &Site, plan: &Plan, report: &mut Report) -> BenchResult<()> {
    let mut table = Table::new("Figure 6 on rbd: resident memory", &["process", "idle", "under load", "load"]);
    let after = served.rss()?;
    table.row(vec!["swell-controller".into(), mib(idle), mib(storm.max(after)), "peak during the storms (figure 5)".into()]);
    let flags =
        [format!("--rbd-cluster-id={CLUSTER_ID}"), format!("--rbd-ceph-conf={}", site.conf.display()), format!("--rbd-keyring={}", site.keyring.display())];
    let node = Served::node(&plan.node_bin(), &rig.controller.root, &rig.controller.local_state_dir, &flags).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node_idle = node.rss()?;
    node.stop().await;
    table.row(vec!["swell-node (RBD configured)".into(), mib(node_idle), "–".into(), "".into()]);
    report.add(table);
    report.goal("rbd: swell-controller RSS idle ≤ 25 MiB", mib(idle), idle <= 25 << 20);
    report.goal("rbd: swell-node RSS idle ≤ 25 MiB", mib(node_idle), node_idle <= 25 << 20);
    Ok(())
}

/// The crowded pool: create, expand and delete in an empty pool, then beside
/// `foreign` thin 1 MiB images made directly with librbd.
async fn crowded(site: &Site, plan: &Plan, foreign: usize, report: &mut Report) -> BenchResult<()> {
    site.new_pool("crowd")?;
    let rig = site.rig(plan, "crowd", &fresh(&plan.scratch.join("rbd-crowd"))?, 19_875);
    let served = rig.start().await?;
    let csi = rig.csi(served.channel().await?);
    cycles(&csi, "warm", 3).await?;
    let empty = cycles(&csi, "empty", plan.runs).await?;
    let made = Instant::now();
    let io = Arc::new(site.client("crowd")?);
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let io = Arc::clone(&io);
            std::thread::spawn(move || -> Result<(), String> {
                for i in (w..foreign).step_by(32) {
                    io.create_image(&format!("foreign-{i}"), MIB).map_err(at(format!("create foreign-{i}")))?;
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| "a foreign-image worker panicked".to_owned())??;
    }
    let made = made.elapsed();
    let crowded = cycles(&csi, "crowded", plan.runs).await?;
    let mut table = Table::new(
        format!("The crowded pool on rbd ({}): an empty pool, then beside {foreign} foreign 1 MiB images", rig.controller.binary.display()),
        &["operation", "empty p50", "empty p99", "crowded p50", "crowded p99", "crowded ÷ empty (p50)"],
    );
    let goals = [("create", 25u64), ("expand", 20), ("delete", 30)];
    for (i, (what, target)) in goals.iter().enumerate() {
        let (e, c) = (&empty[i], &crowded[i]);
        table.row(vec![what.to_string(), ms(e.p50()), ms(e.p99()), ms(c.p50()), ms(c.p99()), ratio(c.p50(), e.p50())]);
        report.goal(
            format!("rbd: {what} p50 ≤ {target} ms, empty and crowded"),
            format!("{} / {}", ms(e.p50()), ms(c.p50())),
            e.p50().max(c.p50()) <= Duration::from_millis(*target),
        );
        report.goal(
            format!("rbd: {what} flat within 1.2× beside {foreign} foreign images"),
            ratio(c.p50(), e.p50()),
            c.p50().as_secs_f64() <= e.p50().as_secs_f64() * 1.2,
        );
    }
    table.note(format!(
        "{foreign} foreign images made with librbd from 32 threads in {:.1} s; {} runs of each operation per column.",
        made.as_secs_f64(),
        plan.runs
    ));
    report.add(table);
    served.stop().await;
    site.drop_pool("crowd")
}

/// `runs` volume lives (create, expand, delete); their samples in that order.
async fn cycles(csi: &Csi, tag: &str, runs: usize) -> BenchResult<[Samples; 3]> {
    let mut csi = csi.clone();
    let mut samples = crate::csi::three();
    for run in 0..runs {
        crate::csi::life(&mut csi, &format!("{tag}-{run}"), &mut samples).await?;
    }
    Ok(samples)
}
