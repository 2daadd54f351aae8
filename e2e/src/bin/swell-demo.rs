//! `swell-demo`: one volume's whole life over real gRPC — create, stage,
//! publish, write, grow online, verify, tear down — printing every step with
//! its timing. On the embedded local backend by default; `--backend rbd`
//! runs the same on a throwaway single-host Ceph cluster started for it.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use swell_e2e::ceph::{self, TestCluster};
use swell_e2e::harness::{DriverOptions, DriverUnderTest};
use swell_e2e::{host, requests};
use swell_storage::CephAccess;

const MIB: i64 = swell_storage::units::MIB as i64;
const GIB: i64 = swell_storage::units::GIB as i64;

/// Runs one volume through its life on Swell and grows it while mounted.
#[derive(Debug, Parser)]
struct Args {
    /// Backend to provision from: `local` (embedded, no servers) or `rbd`
    /// (a throwaway Ceph cluster: 1 mon, 1 mgr, 3 OSDs, replicated pool).
    #[arg(long, default_value = "local", value_parser = ["local", "rbd"])]
    backend: String,
    /// Monitor port of the throwaway Ceph cluster (`--backend rbd`).
    #[arg(long, default_value_t = 30300)]
    ceph_port: u16,
    /// Filesystem to format the volume with (xfs, btrfs, ext4).
    #[arg(long, default_value = "xfs")]
    fs: String,
    /// Size at creation, in GiB.
    #[arg(long, default_value_t = 1)]
    initial_gib: i64,
    /// Size after expansion, in GiB.
    #[arg(long, default_value_t = 2)]
    expanded_gib: i64,
    /// Working directory for sockets, state and mounts (default: a fresh temp dir).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

struct Steps {
    started: Instant,
    number: usize,
}

impl Steps {
    async fn run<T, E: std::fmt::Display>(&mut self, what: &str, step: impl std::future::Future<Output = Result<T, E>>) -> Result<T, String> {
        self.number += 1;
        let begun = Instant::now();
        let result = step.await;
        let took = begun.elapsed();
        match result {
            Ok(value) => {
                println!("[{:>2}] {what:<52} ok   {:>8.1} ms", self.number, took.as_secs_f64() * 1e3);
                Ok(value)
            }
            Err(err) => {
                println!("[{:>2}] {what:<52} FAIL {:>8.1} ms", self.number, took.as_secs_f64() * 1e3);
                Err(format!("{what}: {err}"))
            }
        }
    }
}

fn gib(bytes: i64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(err) = demo(args).await {
        eprintln!("demo failed: {err}");
        std::process::exit(1);
    }
}

async fn demo(args: Args) -> Result<(), String> {
    if !host::is_root() {
        return Err("run as root: the node attaches loop devices and mounts filesystems".into());
    }
    let scratch = tempfile::Builder::new().prefix("swell-demo-").tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
    let root = args.workdir.clone().unwrap_or_else(|| scratch.path().to_owned());
    let staging = root.join("staging");
    let target = root.join("pod/volume");
    let (staging_s, target_s) = (staging.display().to_string(), target.display().to_string());
    let capability = requests::mount_capability(&args.fs);
    let mut steps = Steps { started: Instant::now(), number: 0 };

    let mut options = DriverOptions::default();
    let mut cluster = None;
    if args.backend == "rbd" {
        println!("Swell demo: {} volume on Ceph RBD (a throwaway local cluster), under {}", args.fs, root.display());
        steps.run("install Ceph 16.2 packages (if missing)", async { ceph::install() }).await?;
        let ceph_dir = root.join("ceph");
        let up = steps.run("start Ceph: 1 mon, 1 mgr, 3 OSDs, pool rbd (size 3)", async { TestCluster::up(&ceph_dir, args.ceph_port) }).await?;
        options.rbd = Some(CephAccess::new("demo", &up.conf, &up.keyring));
        cluster = Some(up);
    } else {
        println!("Swell demo: {} volume on the embedded local backend, under {}", args.fs, root.display());
    }
    let mut driver = steps.run("start controller and node on Unix sockets", DriverUnderTest::start(&root, options)).await?;
    let mut create = requests::create_volume("demo-volume", args.initial_gib * GIB, capability.clone());
    create.parameters.insert("backend".into(), args.backend.clone());
    let created =
        steps.run(&format!("CreateVolume {} ({})", gib(args.initial_gib * GIB), args.backend), driver.controller.create_volume(create)).await?.into_inner();
    let volume = created.volume.ok_or("CreateVolume returned no volume")?;
    let id = volume.volume_id.clone();
    println!("     volume id {id}, {}", gib(volume.capacity_bytes));

    steps
        .run(&format!("NodeStageVolume (attach, mkfs.{}, mount)", args.fs), driver.node.node_stage_volume(requests::stage(&id, &staging_s, capability.clone())))
        .await?;
    steps
        .run(
            "NodePublishVolume (bind mount into the pod)",
            driver.node.node_publish_volume(requests::publish(&id, &staging_s, &target_s, capability.clone(), false)),
        )
        .await?;

    let data = target.join("payload.bin");
    steps.run("write 64 MiB and fsync", async { host::write_pattern(&data, (64 * MIB) as usize, 42) }).await?;
    let checksum = steps.run("checksum the file (sha256)", async { host::sha256_file(&data) }).await?;
    let before = steps.run("NodeGetVolumeStats before", driver.node.node_get_volume_stats(requests::stats(&id, &target_s))).await?.into_inner();
    let before = requests::total_bytes(&before).ok_or("no byte usage reported")?;

    let expanded = steps
        .run(
            &format!("ControllerExpandVolume to {}", gib(args.expanded_gib * GIB)),
            driver.controller.controller_expand_volume(requests::controller_expand(&id, args.expanded_gib * GIB, Some(capability.clone()))),
        )
        .await?
        .into_inner();
    let grown = steps
        .run(
            "NodeExpandVolume (online, still mounted)",
            driver.node.node_expand_volume(requests::node_expand(&id, &target_s, &staging_s, expanded.capacity_bytes, capability.clone())),
        )
        .await?
        .into_inner();
    let after = steps.run("NodeGetVolumeStats after", driver.node.node_get_volume_stats(requests::stats(&id, &target_s))).await?.into_inner();
    let after = requests::total_bytes(&after).ok_or("no byte usage reported")?;
    let checksum_after = steps.run("checksum the file again", async { host::sha256_file(&data) }).await?;

    println!("     filesystem size: {} before, {} after (device {})", gib(before), gib(after), gib(grown.capacity_bytes));
    println!("     sha256 {} ({})", &checksum[..16], if checksum == checksum_after { "intact" } else { "CHANGED" });
    if checksum != checksum_after {
        return Err("the file changed across the expansion".into());
    }
    if after <= before || grown.capacity_bytes < args.expanded_gib * GIB {
        return Err(format!("the filesystem did not grow: {before} -> {after} bytes"));
    }

    steps.run("NodeUnpublishVolume", driver.node.node_unpublish_volume(requests::unpublish(&id, &target_s))).await?;
    steps.run("NodeUnstageVolume (unmount, detach loop)", driver.node.node_unstage_volume(requests::unstage(&id, &staging_s))).await?;
    steps.run("DeleteVolume", driver.controller.delete_volume(csi_proto::v1::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() })).await?;
    steps
        .run("stop services", async {
            driver.stop().await;
            Ok::<_, String>(())
        })
        .await?;
    if let Some(cluster) = cluster {
        steps.run("stop and remove the Ceph cluster", async { cluster.purge() }).await?;
    }
    println!("Done in {:.2} s: grew a mounted {} volume online with its data intact.", steps.started.elapsed().as_secs_f64(), args.fs);
    Ok(())
}
