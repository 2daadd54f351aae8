//! `swell-bench`: Swell's figures next to the engine it drives, measured in
//! one run on the local backend and on a throwaway Ceph cluster, printed as
//! Markdown and written under `target/bench/` with the scale chart.
//!
//!     cargo build --release -p swell-controller -p swell-node -p swell-bench
//!     target/release/swell-bench                      # everything (about 6 minutes on 2 cores; as root)
//!     target/release/swell-bench --short              # a few runs, 100 volumes (CI)
//!
//! `--controller-bin PATH` measures another controller build with the same
//! client-side figures (a "before" column); `--peer-cephcsi PATH` measures
//! ceph-csi's RBD controller beside Swell's on the same cluster (section
//! `peer`, skipped without it, as in CI's short run). Nothing here asserts a timing:
//! goals are judged and printed, and the exit status says only whether
//! every measurement could be made.
//!
//! - [`plan`]: what a run measures, and the rig of one backend; [`step`]:
//!   how a failed step is told.
//! - [`report`]: samples, tables, goals and the Markdown they make.
//! - [`process`]: the controller and node as processes, their RSS, start-up
//!   time and backend-call counters.
//! - [`csi`]: the CSI calls a benchmark times, alone, in parallel, in storms.
//! - [`figures`]: what both backends share: step costs, parallel expansions, storms.
//! - [`scale`]: the same controller with 100, 1,000 and 10,000 volumes.
//! - [`local`]: the local backend's figures and raw-file references.
//! - [`auto_grow`]: usage reporting's cost per node, and threshold crossed
//!   to filesystem grown beside a user's patch (local).
//! - [`ceph`]: the RBD figures, with librbd, RADOS and the `rbd` CLI as references.
//! - [`peer`]: ceph-csi beside Swell on one pool, every figure as a ratio.
//! - [`chart`]: expand latency and RSS against volume count, as a PNG.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

mod auto_grow;
#[cfg(feature = "rbd")]
mod ceph;
mod chart;
mod csi;
mod figures;
mod local;
#[cfg(feature = "rbd")]
mod peer;
mod plan;
mod process;
mod report;
mod scale;
mod step;

use plan::Plan;
use report::Report;

#[derive(Debug, Parser)]
#[command(about = "Swell's benchmarks, side by side with the raw engine")]
struct Args {
    /// A few runs and 100 volumes: checks that every figure can be made (CI).
    #[arg(long)]
    short: bool,
    /// Backends to measure.
    #[arg(long, value_delimiter = ',', default_value = "local,rbd")]
    backends: Vec<String>,
    /// What to measure: figures (1-6), node (figure 2), crowded (a pool
    /// full of other clients' images), auto-grow (local: usage reporting's
    /// cost, crossing to grown), scale, peer (ceph-csi beside Swell, with
    /// --peer-cephcsi).
    #[arg(long, value_delimiter = ',', default_value = "figures,node,crowded,auto-grow,scale,peer")]
    sections: Vec<String>,
    /// Volumes staged on the node whose usage reporting is measured (default 500; 4 with --short).
    #[arg(long)]
    usage_volumes: Option<usize>,
    /// Seconds the node's CPU is measured, with reporting and without (default 60; 3 with --short).
    #[arg(long)]
    usage_window_secs: Option<u64>,
    /// Samples per figure (default 30; 3 with --short).
    #[arg(long)]
    runs: Option<usize>,
    /// Volume counts of the scale run (default 100,1000,10000; 100 with --short).
    #[arg(long, value_delimiter = ',')]
    scale: Vec<usize>,
    /// Foreign images beside Swell's in the crowded pool (default 5000; 100 with --short).
    #[arg(long)]
    #[cfg_attr(not(feature = "rbd"), allow(dead_code))]
    foreign: Option<usize>,
    /// The swell-controller binary to measure (default: the one beside this binary).
    #[arg(long)]
    controller_bin: Option<PathBuf>,
    /// A ceph-csi binary (`cephcsi`) whose RBD controller is measured
    /// beside Swell's on the same cluster (section peer); runs as root.
    #[arg(long)]
    peer_cephcsi: Option<PathBuf>,
    /// Calls in each of the peer section's storms.
    #[arg(long, default_value_t = 500)]
    #[cfg_attr(not(feature = "rbd"), allow(dead_code))]
    peer_storm: usize,
    /// Where the tables and the chart go (default: target/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Scratch space for volumes and sockets.
    #[arg(long, default_value = "/var/tmp/swell-bench")]
    scratch: PathBuf,
}

fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()).unwrap_or_default();
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let memory = read("/proc/meminfo").lines().find_map(|l| l.strip_prefix("MemTotal:")).map(|v| v.trim().to_owned()).unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let ceph = std::process::Command::new("ceph").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let debian = read("/etc/debian_version").trim().to_owned();
    format!(
        "{cpu}, {cores} cores, {memory} memory; Linux {kernel}, Debian {debian}; {ceph}; the test cluster is 1 mon, 1 mgr, 3 OSDs on one host (pools of size 3)"
    )
}

fn default_out(exe: &Path) -> PathBuf {
    // target/<profile>/swell-bench → target/bench
    exe.parent().and_then(Path::parent).map_or_else(|| PathBuf::from("target/bench"), |target| target.join("bench"))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let exe = std::env::current_exe().map_err(|e| format!("where am I: {e}"))?;
    let bin_dir = exe.parent().ok_or("no directory for this binary")?.to_owned();
    let controller_bin = args.controller_bin.clone().unwrap_or_else(|| bin_dir.join("swell-controller"));
    for binary in [&controller_bin, &bin_dir.join("swell-node")] {
        if !binary.is_file() {
            return Err(format!("{} is not built: cargo build --release -p swell-controller -p swell-node -p swell-bench", binary.display()));
        }
    }
    let plan = Plan {
        runs: args.runs.unwrap_or(if args.short { 3 } else { 30 }).max(1),
        scale: match (&args.scale[..], args.short) {
            ([], true) => vec![100],
            ([], false) => vec![100, 1_000, 10_000],
            (given, _) => given.to_vec(),
        },
        bin_dir,
        label: controller_bin.display().to_string(),
        controller_bin,
        scratch: args.scratch.clone(),
        auto_grow: plan::AutoGrowPlan {
            volumes: args.usage_volumes.unwrap_or(if args.short { 4 } else { 500 }).max(1),
            window: Duration::from_secs(args.usage_window_secs.unwrap_or(if args.short { 3 } else { 60 })),
            pace: if args.short { plan::Pace::quick() } else { plan::Pace::shipped() },
        },
    };
    #[cfg(feature = "rbd")]
    let foreign = args.foreign.unwrap_or(if args.short { 100 } else { 5_000 });
    let sections: Vec<&str> = args.sections.iter().map(String::as_str).collect();
    if cfg!(not(feature = "rbd")) && args.peer_cephcsi.is_some() {
        return Err("--peer-cephcsi needs the rbd feature (ceph-csi's controller runs on the Ceph test cluster)".into());
    }
    let out = args.out.clone().unwrap_or_else(|| default_out(&exe));
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    std::fs::create_dir_all(&plan.scratch).map_err(|e| format!("create {}: {e}", plan.scratch.display()))?;

    let started = Instant::now();
    let machine = machine();
    println!("swell-bench: {} runs a figure, scale {:?}, controller {}\nmachine: {machine}\n", plan.runs, plan.scale, plan.label);
    let mut documents = vec![format!(
        "Measured {} with `swell-bench{}` ({} runs a figure; controller `{}`), on {machine}.\n",
        today(),
        if args.short { " --short" } else { "" },
        plan.runs,
        plan.label
    )];
    let mut series: Vec<chart::Series> = Vec::new();
    for backend in &args.backends {
        let (report, points): (Report, Vec<scale::Point>) = match backend.as_str() {
            "local" => local::run(&plan, &sections).await?,
            #[cfg(feature = "rbd")]
            "rbd" => rbd(&plan, &sections, foreign, &args).await?,
            other => return Err(format!("unknown backend {other:?} (this build has: local{})", if cfg!(feature = "rbd") { ", rbd" } else { "" })),
        };
        let name: &'static str = if backend == "local" { "local" } else { "rbd" };
        let text = report.markdown(&format!("Backend: {name}"));
        std::fs::write(out.join(format!("{name}.md")), &text).map_err(|e| format!("write {name}.md: {e}"))?;
        documents.push(text);
        if !points.is_empty() {
            series.push((name, scale::series(&points)));
        }
    }
    if !series.is_empty() {
        let png = out.join("scale.png");
        chart::draw(&png, "Swell: expand latency and controller memory against volumes", &series)?;
        documents.push("![expand latency and RSS against volumes](scale.png)\n".into());
        println!("chart: {}", png.display());
    }
    std::fs::write(out.join("bench.md"), documents.join("\n")).map_err(|e| format!("write bench.md: {e}"))?;
    println!("swell-bench: done in {:.0} s; tables in {}", started.elapsed().as_secs_f64(), out.join("bench.md").display());
    Ok(())
}

/// The RBD figures and the peer's, on one throwaway cluster.
#[cfg(feature = "rbd")]
async fn rbd(plan: &Plan, sections: &[&str], foreign: usize, args: &Args) -> Result<(Report, Vec<scale::Point>), String> {
    let site = ceph::Site::up()?;
    let (mut report, points) = ceph::run(&site, plan, sections, foreign).await?;
    if sections.contains(&"peer") {
        match &args.peer_cephcsi {
            Some(binary) => peer::run(&site, plan, &peer::Peer { binary: binary.clone(), storm: args.peer_storm.max(1) }, &mut report).await?,
            None => println!("peer: not measured (no --peer-cephcsi)\n"),
        }
    }
    site.purge()?;
    Ok((report, points))
}

/// Today's date (UTC), as `date` prints it.
fn today() -> String {
    std::process::Command::new("date").args(["-u", "+%F"]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}
