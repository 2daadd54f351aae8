//! How long the node's two slow RPCs take on this machine: NodeStageVolume
//! (attach, mkfs, mount) and NodeExpandVolume (refresh the device, grow the
//! mounted filesystem, verify), for xfs and btrfs on local volumes (sparse
//! file + loop device). Prints the median and the spread of several rounds.
//!
//! `cargo bench -p swell-e2e --bench node_ops` (root; `SWELL_BENCH_ROUNDS`
//! sets the rounds, 7 by default). Speed is measured here, never asserted in
//! a test. A first round per filesystem warms the caches and is not counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use swell_e2e::harness::NodeUnderTest;
use swell_e2e::requests::{self, mount_capability};
use swell_e2e::sweep::sweep;
use swell_local::{LocalBackend, LocalConfig};
use swell_storage::Backend;

use swell_storage::units::MIB;

struct Timings {
    stage: Vec<Duration>,
    expand: Vec<Duration>,
}

async fn round(fs: &str, n: usize, timings: &mut Timings) -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::Builder::new().prefix("swell-bench-").tempdir_in("/var/tmp")?;
    let dir = tmp.path().to_owned();
    let mut config = swell_node::NodeConfig::new("bench");
    config.state_dir = dir.join("node");
    config.local_state_dir = dir.join("local");
    let backend = LocalBackend::open(&LocalConfig::new(&config.local_state_dir, dir.join("controller")))?;
    let server = NodeUnderTest::serve(&dir.join("node.sock"), &config).await?;
    let mut node = server.client.clone();
    let id = backend.create_volume(&format!("bench-{fs}-{n}"), 320 * MIB, &swell_storage::Placement::default()).await?.info().id.to_string();
    let staging = dir.join("staging").display().to_string();
    let target = dir.join("pod/vol").display().to_string();

    let started = Instant::now();
    node.node_stage_volume(requests::stage(&id, &staging, mount_capability(fs))).await?;
    timings.stage.push(started.elapsed());
    node.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability(fs), false)).await?;

    backend.grow_volume(&id.parse()?, 640 * MIB).await?;
    let started = Instant::now();
    node.node_expand_volume(requests::node_expand(&id, &target, &staging, (640 * MIB) as i64, mount_capability(fs))).await?;
    timings.expand.push(started.elapsed());

    node.node_unpublish_volume(requests::unpublish(&id, &target)).await?;
    node.node_unstage_volume(requests::unstage(&id, &staging)).await?;
    drop(server);
    sweep(&dir);
    Ok(())
}

fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = samples[samples.len() / 2];
    format!("median {:7.1} ms  (min {:7.1}, max {:7.1}, n={})", ms(median), ms(samples[0]), ms(samples[samples.len() - 1]), samples.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::var("SWELL_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(7).max(1);
    // Interleave the filesystems so a slow spell of the machine hits both.
    let mut results: BTreeMap<&str, Timings> = BTreeMap::new();
    // One unmeasured round each first: the first stage of a process pays for
    // cold caches (tool binaries, libraries, thread pools), not for Swell.
    for fs in ["xfs", "btrfs"] {
        round(fs, rounds, &mut Timings { stage: Vec::new(), expand: Vec::new() }).await?;
    }
    for n in 0..rounds {
        for fs in ["xfs", "btrfs"] {
            let timings = results.entry(fs).or_insert_with(|| Timings { stage: Vec::new(), expand: Vec::new() });
            round(fs, n, timings).await?;
        }
    }
    for (fs, timings) in &mut results {
        println!("{fs:5} NodeStageVolume   {}", summary(&mut timings.stage));
        println!("{fs:5} NodeExpandVolume  {}", summary(&mut timings.expand));
    }
    Ok(())
}
