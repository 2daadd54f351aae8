//! Chaos: the controller process is SIGKILLed at random moments while
//! expansions are in flight, at least 100 times, and restarted over the same
//! state. After every restart: no volume stays behind its recorded wish past
//! the reconciler's deadline, the recorded size equals the backend's, no
//! volume ever shrinks, and the data written through the node is intact.
//!
//! `SWELL_CHAOS_KILLS` and `SWELL_CHAOS_SEED` override the defaults.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use swell_controller::ExpansionRecords;
use swell_e2e::chaos::{Xorshift, env_number};
use swell_e2e::harness::NodeUnderTest;
use swell_e2e::host;
use swell_e2e::process::ControllerProcess;
use swell_e2e::requests::{self, mount_capability};
use swell_storage::VolumeId;
use swell_storage::local::image_path;
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;
/// How long the reconciler may take to settle every record after a restart.
const RECONCILE_DEADLINE: Duration = Duration::from_secs(15);

struct Volume {
    id: String,
    staging: String,
    target: String,
    checksum: String,
    size: u64,
}

/// Polls until every record is settled and matches the backend; returns the
/// backend sizes and whether any record was still pending at the first look
/// (work the restarted controller had to finish).
async fn settled(records: &ExpansionRecords, local: &Path, volumes: &[Volume]) -> Result<(HashMap<String, u64>, bool), String> {
    let deadline = Instant::now() + RECONCILE_DEADLINE;
    let mut had_pending = false;
    loop {
        let mut problems = Vec::new();
        let mut sizes = HashMap::new();
        for volume in volumes {
            let id: VolumeId = volume.id.parse().map_err(|e| format!("{e}"))?;
            let backend = std::fs::metadata(image_path(local, &id)).map_err(|e| format!("{}: {e}", volume.id))?.len();
            sizes.insert(volume.id.clone(), backend);
            match records.get(&id) {
                Ok(Some(r)) if r.desired_bytes > backend || r.current_bytes != backend => {
                    problems.push(format!("{}: desired {} current {} backend {backend}", volume.id, r.desired_bytes, r.current_bytes));
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("{}: record unreadable: {e}", volume.id)),
            }
        }
        if problems.is_empty() {
            return Ok((sizes, had_pending));
        }
        had_pending = true;
        if Instant::now() > deadline {
            return Err(format!("stuck past the reconciler deadline: {problems:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_killed_mid_expansion_never_leaves_a_volume_stuck() {
    if !host::is_root() {
        host::note_skip("chaos_controller", "needs root to stage volumes on loop devices");
        return;
    }
    let kills = env_number("SWELL_CHAOS_KILLS", 100);
    let seed = env_number("SWELL_CHAOS_SEED", 0x5eed_cafe);
    let mut rng = Xorshift(seed | 1);
    let dir = tempfile::Builder::new().prefix("swell-chaos-").tempdir_in("/var/tmp").unwrap();
    let local = dir.path().join("local");
    let mut controller = ControllerProcess::start(dir.path(), &local).await.expect("controller process starts");
    let mut node = NodeUnderTest::start(dir.path(), &local).await.expect("node starts");
    let records = ExpansionRecords::open(&dir.path().join("controller")).unwrap();

    let mut client = controller.client().await.unwrap();
    let mut volumes = Vec::new();
    for i in 0..4 {
        let cap = mount_capability("xfs");
        let created = client.create_volume(requests::create_volume(&format!("chaos-{i}"), (320 * MIB) as i64, cap.clone())).await.unwrap();
        let id = created.into_inner().volume.unwrap().volume_id;
        let staging = dir.path().join(format!("staging-{i}")).display().to_string();
        let target = dir.path().join(format!("pod-{i}/vol")).display().to_string();
        node.client.node_stage_volume(requests::stage(&id, &staging, cap.clone())).await.unwrap();
        node.client.node_publish_volume(requests::publish(&id, &staging, &target, cap, false)).await.unwrap();
        let file = Path::new(&target).join("data.bin");
        host::write_pattern(&file, (8 * MIB) as usize, seed + i).unwrap();
        let checksum = host::sha256_file(&file).unwrap();
        volumes.push(Volume { id, staging, target, checksum, size: 320 * MIB });
    }

    let started = Instant::now();
    let mut interrupted_calls = 0;
    let mut rounds_with_pending = 0;
    for round in 0..kills {
        // Fire one expansion per volume, then kill the controller at a random moment.
        let calls: Vec<_> = volumes
            .iter()
            .map(|v| {
                let mut client: ControllerClient<Channel> = client.clone();
                let bytes = (v.size + (1 + rng.below(4)) * 16 * MIB) as i64;
                let id = v.id.clone();
                tokio::spawn(async move { client.controller_expand_volume(requests::controller_expand(&id, bytes, None)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_micros(rng.below(8_000))).await;
        controller.restart().await.unwrap_or_else(|e| panic!("round {round}: restart failed: {e}"));
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => {}
                Err(status) => {
                    interrupted_calls += 1;
                    assert!(
                        matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Aborted),
                        "round {round}: an expansion cut by the kill answered {status:?}"
                    );
                }
            }
        }
        client = controller.client().await.unwrap();

        let (sizes, had_pending) = settled(&records, &local, &volumes).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        rounds_with_pending += usize::from(had_pending);
        for volume in &mut volumes {
            let now = sizes[&volume.id];
            assert!(now >= volume.size, "round {round}: {} shrank from {} to {now}", volume.id, volume.size);
            volume.size = now;
        }
        if round % 20 == 19 || round + 1 == kills {
            for volume in &volumes {
                let grown = node.client.node_expand_volume(requests::node_expand(&volume.id, &volume.target, "", volume.size as i64, None)).await;
                let grown = grown.unwrap_or_else(|e| panic!("round {round}: node expand {}: {e:?}", volume.id)).into_inner();
                assert_eq!(grown.capacity_bytes as u64, volume.size);
                let now = host::sha256_file(&Path::new(&volume.target).join("data.bin")).unwrap();
                assert_eq!(now, volume.checksum, "round {round}: data of {} changed", volume.id);
            }
        }
    }
    println!(
        "chaos: {kills} SIGKILLs in {:.1} s (seed {seed:#x}), {interrupted_calls} calls cut off, \
         {rounds_with_pending} restarts found an unfinished expansion, 0 stuck; final sizes {:?} MiB",
        started.elapsed().as_secs_f64(),
        volumes.iter().map(|v| v.size / MIB).collect::<Vec<_>>()
    );

    for volume in &volumes {
        node.client.node_unpublish_volume(requests::unpublish(&volume.id, &volume.target)).await.unwrap();
        node.client.node_unstage_volume(requests::unstage(&volume.id, &volume.staging)).await.unwrap();
        client.delete_volume(csi_proto::v1::DeleteVolumeRequest { volume_id: volume.id.clone(), ..Default::default() }).await.unwrap();
    }
}
