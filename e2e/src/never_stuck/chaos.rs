//! Chaos: a real `swell-controller` process is SIGKILLed at random moments
//! while expansions are in flight, and restarted over the same state, round
//! after round. The test proves it hit something: a minimum share of kills
//! land between a recorded wish and the engine reaching its size (read from
//! the expansion record and the engine while the controller is dead; a kill
//! that only lost a reply does not count), and the restarted controller
//! completes each of them (the record reaches the size in a later
//! generation). After every restart: every expansion settles within the
//! engine's bound, no size goes down, no size ever answered OK is lost, and
//! Swell agrees with the engine. Data is checked through an in-process node: a file written
//! before, and a writer that writes and fsyncs through all of it.

use std::path::Path;
use std::time::{Duration, Instant};

use csi_proto::v1::DeleteVolumeRequest;
use csi_proto::v1::controller_client::ControllerClient;
use swell_storage::units::MIB;
use tonic::Code;
use tonic::transport::Channel;

use super::engine::{Engine, create};
use crate::chaos::{Xorshift, env_number};
use crate::harness::NodeUnderTest;
use crate::host;
use crate::observe::expansion_state;
use crate::process::ControllerProcess;
use crate::requests::{self, mount_capability};
use crate::resizer::expand_like_the_resizer;
use crate::sweep::{MountSweeper, leftovers};
use crate::timing::{assert_within_deadline, median};
use crate::writer::StreamingWriter;

/// How hard to shake.
#[derive(Debug, Clone, Copy)]
pub struct ChaosPlan {
    /// SIGKILLs (one per round).
    pub kills: u64,
    /// Seeds the kill timing and the sizes; printed, to replay a failure.
    pub seed: u64,
    /// The share of rounds whose kill must land between a recorded wish
    /// and the engine reaching its size.
    pub min_share_in_flight: f64,
}

impl ChaosPlan {
    /// `kills` rounds unless `SWELL_CHAOS_KILLS` says otherwise, seeded by
    /// `SWELL_CHAOS_SEED`; at least 15 % of the kills must land between a
    /// recorded wish and the engine reaching its size.
    pub fn from_env(kills: u64) -> ChaosPlan {
        ChaosPlan { kills: env_number("SWELL_CHAOS_KILLS", kills), seed: env_number("SWELL_CHAOS_SEED", 0x5eed_cafe), min_share_in_flight: 0.15 }
    }
}

const VOLUMES: u64 = 4;
const MOUNTED: u64 = 2;
const START: u64 = 320 * MIB;
/// Every this many rounds the node grows the filesystems and checks the data.
const VERIFY_EVERY: u64 = 25;
/// The deadline the chaos's own DeleteVolume calls are held to (the
/// controller's default backend timeout).
const DELETE_DEADLINE: Duration = Duration::from_secs(8);

struct Volume {
    id: String,
    /// Staged and published: `(staging, target, checksum of data.bin, writer)`.
    mounted: Option<(String, String, String, StreamingWriter)>,
    /// The size last read from the engine (never allowed to go down).
    size: u64,
    /// The largest size ever answered OK.
    acknowledged: u64,
}

/// Runs the plan on `engine`; see the module doc.
pub async fn controller_killed_mid_expansion(engine: &dyn Engine, plan: ChaosPlan) {
    let mut rng = Xorshift(plan.seed | 1);
    let dir = tempfile::Builder::new().prefix("swell-chaos-").tempdir_in("/var/tmp").expect("temp dir under /var/tmp");
    let _sweeper = MountSweeper(dir.path().to_owned());
    let root = dir.path();
    // The build users run: no failpoint holds a grow for the kills.
    let mut controller = ControllerProcess::start_with(root, &root.join("local"), engine.controller_args(root)).await.expect("controller process starts");
    let mut node = NodeUnderTest::serve(&root.join("node.sock"), &engine.node_config(root)).await.expect("node starts");
    let mut client = controller.client().await.expect("connect to the controller");
    // The records, read while the controller is dead.
    let store = engine.backend(root).expansion_store();

    let mut volumes = Vec::new();
    let cap = mount_capability("xfs");
    for i in 0..VOLUMES {
        let id = create(&mut client, &format!("chaos-{i}"), START).await;
        let mut mounted = None;
        if i < MOUNTED {
            let staging = root.join(format!("staging-{i}")).display().to_string();
            let target = root.join(format!("pod-{i}/vol")).display().to_string();
            node.client.node_stage_volume(requests::stage(&id, &staging, cap.clone())).await.unwrap_or_else(|e| panic!("stage {id}: {e:?}"));
            node.client
                .node_publish_volume(requests::publish(&id, &staging, &target, cap.clone(), false))
                .await
                .unwrap_or_else(|e| panic!("publish {id}: {e:?}"));
            let file = Path::new(&target).join("data.bin");
            host::write_pattern(&file, (8 * MIB) as usize, plan.seed + i).expect("write data.bin");
            let checksum = host::sha256_file(&file).expect("checksum data.bin");
            let writer = StreamingWriter::start(&Path::new(&target).join("stream.bin"), plan.seed ^ i, Duration::from_millis(5)).expect("start the writer");
            mounted = Some((staging, target, checksum, writer));
        }
        volumes.push(Volume { id, mounted, size: START, acknowledged: START });
    }

    // How long a round of expansions takes right after a restart (as every
    // round runs) sets the window the kills land in.
    let mut samples = Vec::new();
    for _ in 0..3 {
        controller.restart().await.unwrap_or_else(|e| panic!("restart before the chaos: {e}"));
        client = controller.client().await.expect("reconnect to the controller");
        settled(&mut client, &volumes, engine.settle_bound(), 0).await;
        let started = Instant::now();
        let calls: Vec<_> =
            volumes.iter().map(|v| tokio::spawn(expand_like_the_resizer(client.clone(), v.id.clone(), v.size.max(v.acknowledged) + 4 * MIB))).collect();
        for (v, call) in volumes.iter_mut().zip(calls) {
            let resized = call.await.expect("expansion task");
            let size = resized.size.unwrap_or_else(|| panic!("an expansion before the chaos: {:?}", resized.codes));
            v.acknowledged = v.acknowledged.max(size);
        }
        samples.push(started.elapsed());
    }
    check_engine(engine, root, &mut volumes, "before the chaos").await;
    let window = median(&samples).max(Duration::from_millis(5)) * 3 / 2;
    println!("chaos ({}): a round of {VOLUMES} expansions after a restart takes {samples:?}; kills land within {window:?} of firing", engine.name());

    let started = Instant::now();
    let (mut cut_off, mut answered_ok, mut aborted, mut rounds_in_flight, mut completed) = (0usize, 0usize, 0usize, 0u64, 0usize);
    let (mut settles, mut restarts) = (Vec::new(), Vec::new());
    for round in 0..plan.kills {
        let requested: Vec<u64> = volumes.iter().map(|v| v.size + (1 + rng.below(4)) * 4 * MIB).collect();
        let calls: Vec<_> =
            volumes.iter().zip(&requested).map(|(v, &bytes)| tokio::spawn(expand_like_the_resizer(client.clone(), v.id.clone(), bytes))).collect();
        if rng.below(2) == 0 {
            tokio::time::sleep(Duration::from_micros(rng.below(window.as_micros() as u64))).await;
        } else {
            // The other half kill the moment a wish of this round shows recorded and unreached.
            let until = Instant::now() + window;
            'watch: while Instant::now() < until {
                for (v, &bytes) in volumes.iter().zip(&requested) {
                    if let Ok(Some(record)) = store.record(&v.id.parse().expect("volume id")).await
                        && record.desired_bytes >= bytes
                        && record.current_bytes < bytes
                    {
                        break 'watch;
                    }
                }
            }
        }
        controller.kill().await;
        // Where the kill landed: the wish recorded, the engine short of it.
        let mut in_flight = Vec::new();
        for (i, v) in volumes.iter().enumerate() {
            let id = v.id.parse().expect("volume id");
            let record = store.record(&id).await.unwrap_or_else(|e| panic!("round {round}: read the record of {}: {e}", v.id));
            let truth = engine.size_outside_swell(root, &id).await.unwrap_or_else(|| panic!("round {round}: {} is gone", v.id));
            if let Some(record) = record.filter(|r| r.desired_bytes >= requested[i] && truth < requested[i]) {
                in_flight.push((i, record.generation));
            }
        }
        let restart = Instant::now();
        controller.restart().await.unwrap_or_else(|e| panic!("round {round}: restart failed: {e}"));
        restarts.push(restart.elapsed());
        let mut cut = vec![false; volumes.len()];
        for (i, call) in calls.into_iter().enumerate() {
            let resized = call.await.expect("expansion task");
            // ABORTED: the reconciler was visiting the volume; the call retried.
            aborted += resized.codes.iter().filter(|c| **c == Code::Aborted).count();
            match (resized.size, resized.codes.last()) {
                (Some(size), _) => {
                    answered_ok += 1;
                    volumes[i].acknowledged = volumes[i].acknowledged.max(size);
                }
                (None, Some(Code::Unavailable | Code::Unknown | Code::Cancelled)) => {
                    cut_off += 1;
                    cut[i] = true;
                }
                (None, codes) => panic!("round {round}: an expansion cut by the kill answered {codes:?} ({:?})", resized.codes),
            }
        }
        client = controller.client().await.expect("reconnect to the controller");

        let settle = Instant::now();
        settled(&mut client, &volumes, engine.settle_bound(), round).await;
        settles.push(settle.elapsed());
        check_engine(engine, root, &mut volumes, &format!("round {round}")).await;
        // The restarted controller finished each: the engine holds the size,
        // and the record says so in a generation written after the kill (it
        // may follow the engine by a moment: Swell reads the engine's size).
        for &(i, generation) in &in_flight {
            let v = &volumes[i];
            assert!(cut[i], "round {round}: {} answered although the kill found its wish unreached", v.id);
            assert!(v.size >= requested[i], "round {round}: {} holds {} after the restart, short of the {} wished", v.id, v.size, requested[i]);
            let until = Instant::now() + engine.settle_bound();
            loop {
                let record = store.record(&v.id.parse().expect("volume id")).await.expect("read the record").expect("a record");
                if record.current_bytes >= requested[i] && record.generation > generation {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "round {round}: the restarted controller did not complete {}: {record:?} (generation {generation} at the kill)",
                    v.id
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            completed += 1;
        }
        rounds_in_flight += u64::from(!in_flight.is_empty());
        if round % VERIFY_EVERY == VERIFY_EVERY - 1 || round + 1 == plan.kills {
            node_expand_and_verify(&mut node, &volumes, round).await;
        }
    }
    let share = rounds_in_flight as f64 / plan.kills.max(1) as f64;
    println!(
        "chaos ({}): {} SIGKILLs in {:.1} s (seed {:#x}): {cut_off} calls cut off, {answered_ok} answered OK, {aborted} ABORTED; \
         {rounds_in_flight} kills ({:.0}%) landed between a recorded wish and the engine reaching it, {completed} such expansions \
         completed by the restarted controller; a restart took {:?} (median); \
         settling took {:?} (median), {:?} at most; final sizes {:?} MiB",
        engine.name(),
        plan.kills,
        started.elapsed().as_secs_f64(),
        plan.seed,
        share * 100.0,
        median(&restarts),
        median(&settles),
        settles.iter().max().copied().unwrap_or_default(),
        volumes.iter().map(|v| v.size / MIB).collect::<Vec<_>>()
    );
    assert!(
        share >= plan.min_share_in_flight,
        "only {rounds_in_flight} of {} kills landed between a recorded wish and the engine reaching it (need {:.0}%): the chaos did not hit anything",
        plan.kills,
        plan.min_share_in_flight * 100.0
    );

    for v in &mut volumes {
        let Some((staging, target, _, writer)) = v.mounted.take() else { continue };
        let written = writer.stop_and_verify().unwrap_or_else(|e| panic!("{}: the writer's data: {e}", v.id));
        println!("chaos ({}): {}: {} records written and fsynced through the chaos, all read back intact", engine.name(), v.id, written.records);
        node.client.node_unpublish_volume(requests::unpublish(&v.id, &target)).await.unwrap_or_else(|e| panic!("unpublish {}: {e:?}", v.id));
        node.client.node_unstage_volume(requests::unstage(&v.id, &staging)).await.unwrap_or_else(|e| panic!("unstage {}: {e:?}", v.id));
    }
    assert_eq!(leftovers(root), Vec::<String>::new(), "nothing attached after unstage");
    for v in &volumes {
        delete_promptly(&mut client, &v.id).await;
    }
    // A delete may answer first and finish in the controller's background work.
    let until = Instant::now() + Duration::from_secs(30);
    for v in &volumes {
        while engine.size_outside_swell(root, &v.id.parse().expect("volume id")).await.is_some() {
            assert!(Instant::now() < until, "{} is still in the engine 30 s after its delete", v.id);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    controller.kill().await;
}

/// Reads every volume's size from the engine, without Swell: none may have
/// shrunk, none may hold less than was ever answered OK.
async fn check_engine(engine: &dyn Engine, root: &Path, volumes: &mut [Volume], when: &str) {
    for v in volumes {
        let truth = engine.size_outside_swell(root, &v.id.parse().expect("volume id")).await.unwrap_or_else(|| panic!("{when}: {} is gone", v.id));
        assert!(truth >= v.size, "{when}: {} shrank from {} to {truth}", v.id, v.size);
        assert!(truth >= v.acknowledged, "{when}: {} holds {truth} bytes, but {} were answered OK: an acknowledged expansion was lost", v.id, v.acknowledged);
        v.size = truth;
    }
}

/// Polls until no volume shows an expansion pending, checking on the way
/// that Swell never reports a size below the one last read from the engine.
async fn settled(client: &mut ControllerClient<Channel>, volumes: &[Volume], bound: Duration, round: u64) {
    let started = Instant::now();
    loop {
        let mut pending = Vec::new();
        for v in volumes {
            match expansion_state(client, &v.id).await {
                Ok(state) => {
                    assert!(state.size >= v.size, "round {round}: Swell reports {} at {} bytes, below the {} read before", v.id, state.size, v.size);
                    if state.pending {
                        pending.push(format!("{}: {}", v.id, state.message));
                    }
                }
                Err(status) => pending.push(format!("{}: ControllerGetVolume {:?}: {}", v.id, status.code(), status.message())),
            }
        }
        if pending.is_empty() {
            return;
        }
        assert!(started.elapsed() < bound, "round {round}: still pending after {bound:?}: {pending:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Grows each mounted filesystem to its volume's size and checks the file
/// written before the chaos and the writer's health.
async fn node_expand_and_verify(node: &mut NodeUnderTest, volumes: &[Volume], round: u64) {
    for v in volumes {
        let Some((staging, target, checksum, writer)) = &v.mounted else { continue };
        let started = Instant::now();
        let grown = node.client.node_expand_volume(requests::node_expand(&v.id, target, staging, v.size as i64, mount_capability("xfs"))).await;
        let grown = grown.unwrap_or_else(|e| panic!("round {round}: node expand {}: {e:?}", v.id)).into_inner();
        assert_eq!(grown.capacity_bytes as u64, v.size, "round {round}: node expand of {} reached the volume's size", v.id);
        let now = host::sha256_file(&Path::new(target).join("data.bin")).expect("checksum data.bin");
        assert_eq!(&now, checksum, "round {round}: data of {} changed", v.id);
        assert_eq!(writer.errors(), 0, "round {round}: the writer on {} met I/O errors", v.id);
        println!("  round {round}: NodeExpandVolume {} to {} MiB in {:?}, data intact, writer healthy", v.id, v.size / MIB, started.elapsed());
    }
}

/// DeleteVolume as the provisioner retries it: every answer comes within
/// the deadline, and only ABORTED (the reconciler is visiting the volume)
/// or DEADLINE_EXCEEDED may ask for a retry, for at most 30 s.
async fn delete_promptly(client: &mut ControllerClient<Channel>, id: &str) {
    let started = Instant::now();
    let mut retries = Vec::new();
    loop {
        let asked = Instant::now();
        let answer = client.delete_volume(DeleteVolumeRequest { volume_id: id.to_owned(), ..Default::default() }).await;
        assert_within_deadline(&format!("DeleteVolume {id}"), asked.elapsed(), DELETE_DEADLINE);
        match answer {
            Ok(_) => return,
            Err(status) if matches!(status.code(), Code::DeadlineExceeded | Code::Aborted) && started.elapsed() < Duration::from_secs(30) => {
                retries.push((status.code(), status.message().to_owned()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("delete {id} after {:?} ({retries:?}): {status:?}", started.elapsed()),
        }
    }
}
