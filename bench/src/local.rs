//! The local backend's figures. Its engine is the file system: a volume is a
//! sparse file, so the references are the same file operations done
//! directly (create + size + fsync, resize + fsync, remove), and Swell's own
//! engine call in-process (`LocalBackend`, without gRPC or the expansion
//! record) sits between them. NodeExpandVolume is measured against growing
//! the same kind of mounted loop device by hand.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use swell_local::{LocalBackend, LocalConfig};
use swell_storage::{Backend, Placement};

use crate::csi::{self, timed};
use crate::figures;
use crate::plan::{Plan, Rig, fresh};
use crate::process::Served;
use crate::report::{Report, Samples, Table, mib, ratio};
use crate::scale::{self, Point};
use crate::step::{BenchResult, at};
use swell_e2e::host;
use swell_e2e::requests::{self, mount_capability};
use swell_storage::units::{GIB, MIB};

/// Every local figure, then the scale run.
pub(crate) async fn run(plan: &Plan, sections: &[&str]) -> BenchResult<(Report, Vec<Point>)> {
    let mut report = Report::default();
    let mut points = Vec::new();
    if sections.contains(&"figures") {
        let rig = Rig::local(plan, &fresh(&plan.scratch.join("local-figures"))?, 19_871);
        let served = rig.start().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = served.rss()?;
        engine_figures(&rig, &served, plan, &mut report).await?;
        figures::parallel(&rig, &served, plan, &mut report, None).await?;
        let storm = figures::storm(&rig, &served, &mut report, 3).await?;
        let node = if sections.contains(&"node") { node_figure(&rig, &served, plan, &mut report).await? } else { None };
        memory(&rig, &served, idle, storm, node, &mut report);
        served.stop().await;
    }
    if sections.contains(&"auto-grow") {
        crate::auto_grow::run(plan, &plan.auto_grow, &mut report).await?;
    }
    if sections.contains(&"scale") {
        let rig = Rig::local(plan, &fresh(&plan.scratch.join("local-scale"))?, 19_872).roomy();
        points = scale::run(&rig, plan, &mut report).await?;
    }
    Ok((report, points))
}

/// Figures 1 and 3 on the local backend: create, expand and delete through
/// Swell's socket, through its engine in-process, and as raw file operations.
async fn engine_figures(rig: &Rig, served: &Served, plan: &Plan, report: &mut Report) -> BenchResult<()> {
    let mut csi = rig.csi(served.channel().await?);
    let raw_dir = fresh(&plan.scratch.join("local-raw"))?;
    let engine_dir = fresh(&plan.scratch.join("local-engine"))?;
    let engine =
        LocalBackend::open(&LocalConfig::new(engine_dir.join("local"), engine_dir.join("controller"))).map_err(at("open the in-process local backend"))?;
    let (mut swell, mut inproc, mut raw) = (csi::three(), csi::three(), csi::three());
    let calls_before = served.backend_calls().await?;
    // Interleaved, so a slow spell of the machine hits all three alike.
    for run in 0..plan.runs {
        let name = format!("figure-{run}");
        csi::life(&mut csi, &name, &mut swell).await?;

        let (took, made) = timed(engine.create_volume(&name, 64 * MIB, &Placement::default())).await;
        let vid = made.map_err(at("in-process create"))?.info().id.clone();
        inproc[0].push(took);
        let (took, grown) = timed(engine.grow_volume(&vid, 128 * MIB)).await;
        grown.map_err(at("in-process grow"))?;
        inproc[1].push(took);
        let (took, deleted) = timed(engine.delete_volume(&vid)).await;
        deleted.map_err(at("in-process delete"))?;
        inproc[2].push(took);

        let path = raw_dir.join(format!("{name}.img"));
        let (took, made) = timed(async { raw_size(&path, 64 * MIB, true) }).await;
        made?;
        raw[0].push(took);
        let (took, grown) = timed(async { raw_size(&path, 128 * MIB, false) }).await;
        grown?;
        raw[1].push(took);
        let (took, removed) = timed(async { fs::remove_file(&path).and_then(|()| sync_dir(&raw_dir)).map_err(at("remove")) }).await;
        removed?;
        raw[2].push(took);
    }
    let calls = served.backend_calls().await?.since(&calls_before);
    for (i, what) in ["CreateVolume (figure 3)", "ControllerExpandVolume, 64 → 128 MiB (figure 1)", "DeleteVolume (figure 3)"].iter().enumerate() {
        let mut table = Table::versus(format!("{what} on local"));
        table.measured("sparse file made, resized or removed directly, fsync'd (file and directory)", &raw[i], None);
        table.measured("Swell's local engine in-process (no gRPC, no expansion record)", &inproc[i], Some(&raw[i]));
        table.measured(format!("Swell through its socket ({})", rig.controller.binary.display()), &swell[i], Some(&raw[i]));
        report.add(table);
    }
    report.add(figures::step_costs(
        &format!("Where a create, an expand and a delete spend their backend time on local ({} of each)", plan.runs),
        &calls,
        plan.runs,
    ));
    Ok(())
}

/// Sizes the file at `path` (made new when `create`) and syncs it: what the
/// local engine does to a volume's data.
fn raw_size(path: &Path, bytes: u64, create: bool) -> BenchResult<()> {
    let file = OpenOptions::new().create(create).truncate(false).write(true).open(path).map_err(at(format!("open {}", path.display())))?;
    file.set_len(bytes).map_err(at("set_len"))?;
    file.sync_all().map_err(at("fsync"))?;
    if create {
        sync_dir(path.parent().unwrap_or(Path::new("/"))).map_err(at("fsync the directory"))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Figure 2: NodeExpandVolume of a mounted xfs and btrfs volume, 1 → 2 GiB,
/// against `losetup -c` and the filesystem's grow tool run by hand on the
/// same kind of loop device. Returns the node's RSS after it, or `None`
/// when this machine cannot mount loop devices.
async fn node_figure(rig: &Rig, served: &Served, plan: &Plan, report: &mut Report) -> BenchResult<Option<(u64, u64)>> {
    if !host::is_root() || host::missing_program("swell-bench", &["losetup", "mkfs.xfs", "xfs_growfs", "mkfs.btrfs", "btrfs", "mount", "umount"]).is_some() {
        let why = "not run: needs root, loop devices and xfs/btrfs tools";
        if host::in_ci() {
            return Err(format!("figure 2 {why}"));
        }
        println!("figure 2 {why}");
        return Ok(None);
    }
    // The node takes staging and target paths only below its kubelet
    // directory: here, the figure's scratch directory.
    let scratch = fresh(&plan.scratch.join("local-node"))?;
    let kubelet_dir = [format!("--kubelet-dir={}", scratch.display())];
    let node = Served::node(&plan.node_bin(), &rig.controller.root, &rig.controller.local_state_dir, &kubelet_dir).await?;
    let node_idle = node.rss()?;
    let mut client = csi_proto::v1::node_client::NodeClient::new(node.channel().await?);
    let mut csi = rig.csi(served.channel().await?);
    let mut table = Table::versus("Figure 2 on local: NodeExpandVolume of a mounted filesystem, 1 → 2 GiB");
    let runs = plan.runs;
    for fs in ["xfs", "btrfs"] {
        let (mut swell, mut hand) = (Samples::default(), Samples::default());
        for run in 0..runs {
            let id = csi.create(&format!("node-{fs}-{run}"), GIB).await.map_err(at("create"))?;
            let staging = scratch.join(format!("staging-{fs}-{run}"));
            let staging_arg = staging.display().to_string();
            let target = scratch.join(format!("pod-{fs}-{run}/vol")).display().to_string();
            client.node_stage_volume(requests::stage(&id, &staging_arg, mount_capability(fs))).await.map_err(at("stage"))?;
            client.node_publish_volume(requests::publish(&id, &staging_arg, &target, mount_capability(fs), false)).await.map_err(at("publish"))?;
            csi.expand(&id, 2 * GIB).await.map_err(at("expand"))?;
            let expand = requests::node_expand(&id, &target, &staging_arg, (2 * GIB) as i64, mount_capability(fs));
            let (took, grown) = timed(client.node_expand_volume(expand)).await;
            grown.map_err(at(format!("NodeExpandVolume {fs}")))?;
            swell.push(took);
            client.node_unpublish_volume(requests::unpublish(&id, &target)).await.map_err(at("unpublish"))?;
            client.node_unstage_volume(requests::unstage(&id, &staging_arg)).await.map_err(at("unstage"))?;
            csi.delete(&id).await.map_err(at("delete"))?;
            hand.push(by_hand(&scratch, fs, run)?);
        }
        table.measured(format!("{fs}: losetup -c + {} by hand", if fs == "xfs" { "xfs_growfs" } else { "btrfs filesystem resize max" }), &hand, None);
        table.measured(format!("{fs}: NodeExpandVolume through swell-node's socket"), &swell, Some(&hand));
        report.goal(
            format!("local: NodeExpandVolume {fs} ≤ 1.1× by hand"),
            ratio(swell.p50(), hand.p50()),
            swell.p50().as_secs_f64() <= hand.p50().as_secs_f64() * 1.1,
        );
    }
    table.note("NodeExpandVolume also waits for the device's new size and checks the filesystem's own size before it answers.");
    report.add(table);
    let node_after = node.rss()?;
    node.stop().await;
    Ok(Some((node_idle, node_after)))
}

fn run_tool(program: &str, args: &[&str]) -> BenchResult<String> {
    let out = Command::new(program).args(args).output().map_err(at(format!("run {program}")))?;
    if !out.status.success() {
        return Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One grow by hand: a 1 GiB sparse file on a loop device, formatted and
/// mounted, made 2 GiB, then (timed) the device refreshed and the
/// filesystem grown.
fn by_hand(scratch: &Path, fs: &str, run: usize) -> BenchResult<Duration> {
    let image = scratch.join(format!("hand-{fs}-{run}.img"));
    let mount = scratch.join(format!("hand-{fs}-{run}"));
    fs::create_dir_all(&mount).map_err(at("mount point"))?;
    raw_size(&image, GIB, true)?;
    let device = run_tool("losetup", &["-f", "--show", &image.display().to_string()])?;
    let mount_arg = mount.display().to_string();
    let result = (|| {
        match fs {
            "xfs" => run_tool("mkfs.xfs", &["-q", &device])?,
            _ => run_tool("mkfs.btrfs", &["-q", &device])?,
        };
        run_tool("mount", &[&device, &mount_arg])?;
        raw_size(&image, 2 * GIB, false)?;
        let started = Instant::now();
        run_tool("losetup", &["-c", &device])?;
        match fs {
            "xfs" => run_tool("xfs_growfs", &[&mount_arg])?,
            _ => run_tool("btrfs", &["filesystem", "resize", "max", &mount_arg])?,
        };
        let took = started.elapsed();
        run_tool("umount", &[&mount_arg])?;
        Ok(took)
    })();
    if result.is_err() {
        let _ = run_tool("umount", &[&mount_arg]);
    }
    let _ = run_tool("losetup", &["-d", &device]);
    let _ = fs::remove_file(&image);
    result
}

/// Figure 6 (local): the processes' memory.
fn memory(rig: &Rig, served: &Served, idle: u64, storm: u64, node: Option<(u64, u64)>, report: &mut Report) {
    let mut table = Table::new(format!("Figure 6 on {}: resident memory", rig.name), &["process", "idle", "under load", "load"]);
    let after = served.rss().unwrap_or(0);
    table.row(vec!["swell-controller".into(), mib(idle), mib(storm.max(after)), "peak during the storms (figure 5)".into()]);
    if let Some((node_idle, node_after)) = node {
        table.row(vec!["swell-node".into(), mib(node_idle), mib(node_after), "after the NodeStage/Expand/Unstage runs of figure 2".into()]);
        report.goal("local: swell-node RSS idle ≤ 25 MiB", mib(node_idle), node_idle <= 25 << 20);
    }
    report.add(table);
    report.goal(format!("{}: swell-controller RSS idle ≤ 25 MiB", rig.name), mib(idle), idle <= 25 << 20);
}
