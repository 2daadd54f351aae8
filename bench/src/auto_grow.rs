//! Auto-grow's figures on the local backend (docs/auto-grow.md), on real
//! loop devices and filesystems (root):
//!
//! - what a node's usage reporting costs with N staged volumes: the node
//!   process's CPU time over a window with reporting on, beside the same
//!   node over the same staged volumes with it off, and the usage writes
//!   it makes to the backend's store per second, beside the bound its
//!   interval sets;
//! - the time from a filesystem crossing its threshold to the filesystem
//!   grown (the node's report, the controller's decision, the claim
//!   patched on the stand-in API server through the real webhook,
//!   ControllerExpandVolume as the resizer calls it, the node's background
//!   grow), beside a user's patch of the same claim to grown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use csi_proto::v1::node_client::NodeClient;
use swell_controller::AutoGrowConfig;
use swell_e2e::auto_grow_rig::{self, Engine, FilesystemGrow, NAMESPACE, Rig};
use swell_e2e::harness::NodeUnderTest;
use swell_e2e::host;
use swell_e2e::requests::{self, mount_capability};
use swell_storage::units::MIB;

use crate::csi::{self, Csi};
use crate::plan::{AutoGrowPlan, Pace, Plan, fresh};
use crate::process::Served;
use crate::report::{Report, Samples, Table};
use crate::step::{BenchResult, at};

/// The class of the reporting figure's volumes: auto-grow on, never crossed.
const REPORTED_CLASS: [(&str, &str); 2] = [("autoGrow", "true"), ("autoGrowLimit", "1Gi")];
/// Each reported volume: the smallest ext4 Swell makes, so hundreds fit.
const REPORTED_BYTES: u64 = 16 * MIB;
/// The class of the crossing figure's volume: a fixed step, so every
/// sample grows the same, and a limit it never reaches.
const CROSSING_CLASS: [(&str, &str); 4] = [("autoGrow", "true"), ("autoGrowFreeBelow", "20%"), ("autoGrowStep", "64Mi"), ("autoGrowLimit", "64Gi")];
/// How long a grow may take before the bench gives up on it.
const GROW_PATIENCE: Duration = Duration::from_secs(90);

/// Both figures, or, where this machine cannot mount loop devices, none
/// (an error under CI, which must measure them).
pub(crate) async fn run(plan: &Plan, auto: &AutoGrowPlan, report: &mut Report) -> BenchResult<()> {
    if !host::is_root() || host::missing_program("swell-bench", &["losetup", "mkfs.ext4", "mkfs.xfs", "xfs_growfs", "mount", "umount"]).is_some() {
        let why = "auto-grow figures not run: they need root, loop devices, ext4 and xfs tools";
        if host::in_ci() {
            return Err(why.into());
        }
        println!("{why}");
        return Ok(());
    }
    reporting_cost(plan, auto, report).await?;
    let local = Target { name: "local", engine: Box::new(|dir| auto_grow_rig::local_engine(dir, None, None)), rbd: None, grow: FilesystemGrow::ByTheNode };
    crossing_to_grown(plan, auto.pace, local, report).await
}

/// Where the crossing figure runs.
pub(crate) struct Target {
    /// The backend's name in the table.
    pub name: &'static str,
    /// Opens the backend in the rig's directory.
    pub engine: Box<dyn FnOnce(&Path) -> Engine>,
    /// The node's Ceph cluster, for RBD.
    pub rbd: Option<swell_storage::CephAccess>,
    /// Who grows the filesystem once the backend grew: the node itself, or
    /// NodeExpandVolume as kubelet calls it (rbd-fuse + loop).
    pub grow: FilesystemGrow,
}

/// The reporting figure: `auto.volumes` ext4 volumes with auto-grow on,
/// staged on one node process, measured over `auto.window` with the
/// node's reporting off, then on.
async fn reporting_cost(plan: &Plan, auto: &AutoGrowPlan, report: &mut Report) -> BenchResult<()> {
    let dir = fresh(&plan.scratch.join("local-usage"))?;
    let rig = crate::plan::Rig::local(plan, &dir, 19_873);
    let controller = rig.start().await?;
    let csi = Csi::new(controller.channel().await?, &REPORTED_CLASS);
    let names = (0..auto.volumes).map(|i| format!("usage-{i}")).collect();
    let ids = csi::create_many(&csi, names, REPORTED_BYTES, 8).await?;
    let node_flags = |report: Duration| {
        vec![
            format!("--kubelet-dir={}", dir.display()),
            "--grow-on-backend-change-ms=0".to_owned(),
            format!("--usage-report-interval-ms={}", report.as_millis()),
        ]
    };
    let local_state = &rig.controller.local_state_dir;
    let stagings: Vec<String> = (0..ids.len()).map(|i| dir.join(format!("staging-{i}")).display().to_string()).collect();

    let staged = Instant::now();
    let quiet = Served::node(&plan.node_bin(), &rig.controller.root, local_state, &node_flags(Duration::ZERO)).await?;
    let mut client = NodeClient::new(quiet.channel().await?);
    for (id, staging) in ids.iter().zip(&stagings) {
        client.node_stage_volume(requests::stage(id, staging, mount_capability("ext4"))).await.map_err(at(format!("stage {id}")))?;
    }
    println!("auto-grow: {} ext4 volumes staged in {:.0} s", ids.len(), staged.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let off = cpu_over(&quiet, auto.window, || Ok(())).await?;
    quiet.stop().await;

    let reporting = Served::node(&plan.node_bin(), &rig.controller.root, local_state, &node_flags(auto.pace.usage_report)).await?;
    let usage_files: Vec<PathBuf> = ids.iter().map(|id| usage_path(local_state, id)).collect::<BenchResult<_>>()?;
    // The first pass writes every volume's first reading; measured after it.
    let first = Instant::now();
    while usage_files.iter().any(|f| !f.exists()) {
        if first.elapsed() > GROW_PATIENCE {
            return Err(format!("the node wrote no usage of some of its {} volumes within {GROW_PATIENCE:?}", ids.len()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen: HashMap<&PathBuf, SystemTime> = HashMap::new();
    let (mut writes, mut gaps) = (0usize, Duration::ZERO);
    let on = cpu_over(&reporting, auto.window, || {
        for file in &usage_files {
            let modified = std::fs::metadata(file).and_then(|m| m.modified()).map_err(at(format!("stat {}", file.display())))?;
            if let Some(before) = seen.insert(file, modified).filter(|before| *before != modified) {
                writes += 1;
                gaps += modified.duration_since(before).unwrap_or_default();
            }
        }
        Ok(())
    })
    .await?;
    let mut client = NodeClient::new(reporting.channel().await?);
    for (id, staging) in ids.iter().zip(&stagings) {
        client.node_unstage_volume(requests::unstage(id, staging)).await.map_err(at(format!("unstage {id}")))?;
    }
    reporting.stop().await;
    let mut csi = csi;
    for id in &ids {
        csi.delete(id).await.map_err(at(format!("delete {id}")))?;
    }
    controller.stop().await;
    if writes == 0 && auto.window >= auto.pace.usage_report {
        return Err(format!("the node rewrote no usage reading in {:?} with --usage-report-interval-ms={}", auto.window, auto.pace.usage_report.as_millis()));
    }

    let secs = auto.window.as_secs_f64();
    let per_minute = |cpu: Duration| format!("{:.0} ms", cpu.as_secs_f64() * 1000.0 * 60.0 / secs);
    let extra = on.saturating_sub(off);
    let mut table = Table::new(
        format!("Usage reporting with {} staged ext4 volumes on one node (local, real loop devices), over {secs:.0} s", ids.len()),
        &["node", "CPU per minute", "usage writes per second in the window", "steady: volumes ÷ mean gap", "bound: volumes ÷ interval"],
    );
    table.row(vec!["reporting off (reference)".into(), per_minute(off), "0".into(), "-".into(), "-".into()]);
    // A volume's gap between two writes, averaged: the rate over a long
    // run, which a window's count misses by up to a round either way.
    let steady = if writes == 0 { "-".to_owned() } else { format!("{:.1}", ids.len() as f64 * writes as f64 / gaps.as_secs_f64().max(f64::EPSILON)) };
    let bound = ids.len() as f64 / auto.pace.usage_report.as_secs_f64();
    table.row(vec![
        format!("reporting every {} s", auto.pace.usage_report.as_secs()),
        per_minute(on),
        format!("{:.1}", writes as f64 / secs),
        steady,
        format!("{bound:.1}"),
    ]);
    table.note(format!(
        "The reporting's own cost: {} of CPU per minute, {:.2} ms per volume per minute (CPU read from /proc in 10 ms ticks). No volume \
         crosses its threshold, so each is written once per interval and read (statvfs) at every pass.",
        per_minute(extra),
        extra.as_secs_f64() * 1000.0 * 60.0 / secs / ids.len().max(1) as f64
    ));
    report.add(table);
    Ok(())
}

/// Where the node writes a local volume's usage (the local store's layout,
/// docs/local-backend.md).
fn usage_path(local_state: &Path, id: &str) -> BenchResult<PathBuf> {
    let id: swell_storage::VolumeId = id.parse().map_err(at(format!("volume id {id}")))?;
    Ok(swell_local::auto_grow::usage_file(local_state, &id))
}

/// The CPU time (user and system) `process` spends over `window`, calling
/// `look` every 100 ms meanwhile.
async fn cpu_over(process: &Served, window: Duration, mut look: impl FnMut() -> BenchResult<()>) -> BenchResult<Duration> {
    let before = cpu_time(process.pid())?;
    let started = Instant::now();
    look()?;
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
        look()?;
    }
    Ok(cpu_time(process.pid())?.saturating_sub(before))
}

/// User plus system CPU time of process `pid` so far.
fn cpu_time(pid: u32) -> BenchResult<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(at(format!("read /proc/{pid}/stat")))?;
    // Fields after the command name (which may hold spaces) in parentheses:
    // utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or_else(|| format!("no CPU times in /proc/{pid}/stat"));
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().and_then(|t| u64::try_from(t).ok()).unwrap_or(100);
    Ok(Duration::from_secs_f64((ticks(11)? + ticks(12)?) as f64 / per_second as f64))
}

/// The crossing figure: one 320 MiB xfs volume, staged and mounted on a
/// node, filled past its threshold (20% free) at once, `plan.runs` times,
/// each timed to its filesystem grown; between them, the same claim
/// patched by hand (64 MiB more) and timed the same way.
pub(crate) async fn crossing_to_grown(plan: &Plan, pace: Pace, on: Target, report: &mut Report) -> BenchResult<()> {
    let grower = AutoGrowConfig { interval: pace.grower, ..AutoGrowConfig::default() };
    let mut rig = Rig::start_with(grower, on.engine).await;
    let id = rig.claim("crossing", 320 * MIB, &CROSSING_CLASS, &[], false).await;
    let mut node = swell_node::NodeConfig::new("swell-bench");
    node.state_dir = rig.dir.join("node");
    node.local_state_dir = rig.dir.join("local");
    node.usage_report = Some(pace.usage_report);
    node.grow_on_backend_change = Some(pace.grow_on_change);
    node.rbd = on.rbd;
    let served = NodeUnderTest::serve(&rig.dir.join("node.sock"), &node).await.map_err(at("serve the node"))?;
    let mut client = served.client.clone();
    let (staging, target) = (rig.dir.join("staging").display().to_string(), rig.dir.join("pod/vol"));
    client.node_stage_volume(rig.stage(&id, &staging, false)).await.map_err(at("stage"))?;
    let target_arg = target.display().to_string();
    client.node_publish_volume(requests::publish(&id.to_string(), &staging, &target_arg, mount_capability("xfs"), false)).await.map_err(at("publish"))?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut grower_stopped = stopped.clone();
    let running = tokio::spawn(rig.grower.clone().run(async move {
        let _ = grower_stopped.wait_for(|s| *s).await;
    }));
    let kubelet = (on.grow == FilesystemGrow::ByKubelet).then(|| {
        let capacity = rig.api.capacity_reader(NAMESPACE, "crossing");
        tokio::spawn(auto_grow_rig::stand_in_kubelet(client.clone(), capacity, id.clone(), staging.clone(), target_arg.clone(), stopped))
    });
    let (mut crossing, mut patched) = (Samples::default(), Samples::default());
    let mut result = Ok(());
    for run in 0..plan.runs {
        let sample = async {
            crossing.push(cross_and_wait(&target, run).await?);
            settle(&rig, &target).await?;
            let request = rig.request_of("crossing");
            let started = Instant::now();
            let before = host::statvfs_total(&target).map_err(at("statvfs"))?;
            rig.api.patch_request(NAMESPACE, "crossing", request + 64 * MIB).await?;
            patched.push(grown_since(&target, before, started).await?);
            settle(&rig, &target).await
        };
        if let Err(e) = sample.await {
            result = Err(e);
            break;
        }
    }
    let _ = stop.send(true);
    let _ = running.await;
    if let Some(kubelet) = kubelet {
        let _ = kubelet.await;
    }
    let _ = client.node_unpublish_volume(requests::unpublish(&id.to_string(), &target_arg)).await;
    let _ = client.node_unstage_volume(requests::unstage(&id.to_string(), &staging)).await;
    drop(served);
    result?;
    let grown = rig.api.patched_to();
    let mut table = Table::versus(format!(
        "Auto-grow on {}: threshold crossed to filesystem grown (xfs, 64 MiB steps from 320 MiB to {})",
        on.name,
        mib_text(grown.last().copied())
    ));
    table.measured("a user's patch of the claim (+64 MiB) to the filesystem grown, same volume (reference)", &patched, None);
    table.measured("usage crossing its threshold to the filesystem grown, by auto-grow", &crossing, Some(&patched));
    table.note(format!(
        "Paced as {}: a crossing waits for the node's next usage pass (one sixth of its interval, at most 5 s) and the controller's next \
         pass; both paths then go through the stand-in API server, the real webhook, ControllerExpandVolume and {}.",
        pace.describe(),
        match on.grow {
            FilesystemGrow::ByTheNode => "the node's background grow",
            FilesystemGrow::ByKubelet =>
                "NodeExpandVolume once the claim's capacity grew, as kubelet calls it (rbd-fuse + loop; the bench stands in for kubelet, looking every 200 ms)",
        }
    ));
    report.add(table);
    Ok(())
}

fn mib_text(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".into(), |b| format!("{} MiB", b / MIB))
}

/// Fills the filesystem at `target` to just past its threshold (20% free)
/// with allocated blocks, then waits for it to grow; the time from the
/// fill to the filesystem grown.
async fn cross_and_wait(target: &Path, run: usize) -> BenchResult<Duration> {
    let stat = nix::sys::statvfs::statvfs(target).map_err(at("statvfs"))?;
    let (total, free) = (stat.blocks() * stat.fragment_size(), stat.blocks_available() * stat.fragment_size());
    let fill = free.saturating_sub(total / 5) + 8 * MIB;
    let file = std::fs::File::create(target.join(format!("fill-{run}"))).map_err(at("create the fill file"))?;
    let length = i64::try_from(fill).map_err(at("fill size"))?;
    nix::fcntl::posix_fallocate(&file, 0, length).map_err(at(format!("allocate {} MiB", fill / MIB)))?;
    file.sync_all().map_err(at("fsync the fill file"))?;
    grown_since(target, total, Instant::now()).await
}

/// Waits until the filesystem at `target` holds more than `before` bytes;
/// the time since `started`.
async fn grown_since(target: &Path, before: u64, started: Instant) -> BenchResult<Duration> {
    loop {
        if host::statvfs_total(target).map_err(at("statvfs"))? > before {
            return Ok(started.elapsed());
        }
        if started.elapsed() > GROW_PATIENCE {
            return Err(format!("the filesystem at {} did not grow within {GROW_PATIENCE:?}", target.display()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the claim's capacity caught up with its request (the
/// resizer finished), then empties the filesystem for the next sample.
async fn settle(rig: &Rig, target: &Path) -> BenchResult<()> {
    let capacity = rig.api.capacity_reader(NAMESPACE, "crossing");
    if !auto_grow_rig::until(GROW_PATIENCE, || capacity() >= rig.request_of("crossing")).await {
        return Err("the claim's capacity never reached its request".into());
    }
    for entry in std::fs::read_dir(target).map_err(at("list the volume"))? {
        let path = entry.map_err(at("list the volume"))?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("fill-")) {
            std::fs::remove_file(&path).map_err(at(format!("remove {}", path.display())))?;
        }
    }
    Ok(())
}
