//! Auto-grow on the local backend (docs/auto-grow.md): volumes made through
//! CreateVolume with the StorageClass's policy, the controller's auto-grow
//! patching claims on a stand-in API server (`swell_e2e::apiserver`) that
//! asks the real `swell-webhook` and resizes through ControllerExpandVolume
//! like the external-resizer. The first test runs the whole path on a real
//! xfs under a writer, with the node reporting usage and growing the
//! filesystem itself (root: loop devices, mounts); the others stand in for
//! the node by writing its usage reading and mark into the backend's store,
//! and check one decision each.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use swell_backends::{BackendConfig, Backends};
use swell_controller::{AutoGrowConfig, AutoGrowOutcome, AutoGrower, ControllerConfig, ReconcilerConfig};
use swell_e2e::apiserver::{Cluster, StandInApiServer};
use swell_e2e::harness::{ControllerUnderTest, NodeUnderTest};
use swell_e2e::host;
use swell_e2e::metrics::{sample, scrape};
use swell_e2e::process::built_binary;
use swell_e2e::requests::{self, block_capability, mount_capability};
use swell_e2e::sweep::MountSweeper;
use swell_e2e::webhook::{DRIVER, FixedVolumes, RunningWebhook, TestPki};
use swell_local::{LocalBackend, LocalConfig};
use swell_storage::VolumeId;
use swell_storage::auto_grow::Usage;
use swell_storage::expansion::now_unix;
use swell_storage::units::MIB;
use swell_webhook::{BackendFacts, Limits, Policy, Webhook};
use tokio::sync::Mutex;
use tonic::transport::Channel;

const NAMESPACE: &str = "db";
/// Loop devices are few and the machine small: one test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A controller with auto-grow, the stand-in API server it patches claims
/// on, and the real webhook that server asks.
struct Rig {
    dir: PathBuf,
    local_state: PathBuf,
    controller: ControllerClient<Channel>,
    grower: AutoGrower,
    api: StandInApiServer,
    pvs: Arc<FixedVolumes>,
    served: (ControllerUnderTest, RunningWebhook),
    /// Unmounts and detaches what a test made, also when it fails; before
    /// the directory goes.
    _sweep: MountSweeper,
    _tmp: tempfile::TempDir,
}

struct Options {
    /// Bytes the controller's local backend may promise.
    capacity: Option<u64>,
    /// Bytes the webhook's view of the pool holds (as a webhook reading
    /// another moment of a shared pool would see it).
    webhook_capacity: Option<u64>,
    usage_max_age: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { capacity: None, webhook_capacity: None, usage_max_age: Duration::from_secs(60) }
    }
}

impl Rig {
    async fn start(options: Options) -> Rig {
        let tmp = tempfile::Builder::new().prefix("swell-auto-grow-").tempdir_in("/var/tmp").unwrap();
        let dir = tmp.path().to_owned();
        let (local_state, controller_state) = (dir.join("local"), dir.join("controller"));
        let api = StandInApiServer::start().await;
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let config = ControllerConfig {
            driver_name: DRIVER.to_owned(),
            backends: BackendConfig::local(LocalConfig { capacity_bytes: options.capacity, ..LocalConfig::new(&local_state, &controller_state) }),
            reconciler: ReconcilerConfig::default(),
        };
        let controller = swell_controller::build(&config).unwrap();
        let grower = controller.auto_grower(swell_controller::kube_client(Some(&kubeconfig)).await.unwrap(), grower_config(options.usage_max_age));
        let served = ControllerUnderTest::serve(&dir, controller).await.unwrap();
        let facts = LocalBackend::open(&LocalConfig {
            capacity_bytes: options.webhook_capacity.or(options.capacity),
            ..LocalConfig::new(&local_state, &controller_state)
        })
        .unwrap();
        let pvs = Arc::new(FixedVolumes::default());
        let webhook = Webhook {
            driver_name: DRIVER.into(),
            deadline: Duration::from_secs(5),
            policy: Policy::default(),
            volumes: pvs.clone(),
            facts: Arc::new(BackendFacts::new(Backends::new(Arc::new(facts), Duration::from_secs(5)))),
        };
        let pki = TestPki::new();
        let webhook = RunningWebhook::start(webhook, &pki, Limits::default(), Duration::from_secs(60)).await;
        api.join(Cluster { webhook: Some(webhook.client(&pki)), resizer: Some(served.client.clone()) });
        Rig {
            dir: dir.clone(),
            local_state,
            controller: served.client.clone(),
            grower,
            api,
            pvs,
            served: (served, webhook),
            _sweep: MountSweeper(dir),
            _tmp: tmp,
        }
    }

    /// Makes claim `name` of `bytes` through CreateVolume with `class` as
    /// the StorageClass's parameters, binds it to its PV on the stand-in
    /// with `annotations`; returns the volume's id.
    async fn claim(&mut self, name: &str, bytes: u64, class: &[(&str, &str)], annotations: &[(&str, &str)], block: bool) -> VolumeId {
        let capability = if block { block_capability() } else { mount_capability("xfs") };
        let mut request = requests::create_volume(&format!("pv-{name}"), bytes as i64, capability);
        request.parameters = class.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<HashMap<_, _>>();
        request.parameters.insert("csi.storage.k8s.io/pvc/name".into(), name.into());
        request.parameters.insert("csi.storage.k8s.io/pvc/namespace".into(), NAMESPACE.into());
        let volume = self.controller.create_volume(request).await.unwrap().into_inner().volume.unwrap();
        let pv = format!("pv-{name}");
        self.pvs.add(&pv, &volume.volume_id);
        self.api.add_claim(NAMESPACE, name, &pv, &volume.volume_id, volume.capacity_bytes as u64, annotations);
        volume.volume_id.parse().unwrap()
    }

    /// Writes what the node would: a reading `age` old with `free` of
    /// `total` bytes free, and the mark.
    fn node_reports(&self, id: &VolumeId, total: u64, free: u64, age: Duration) {
        let usage = Usage { bytes_used: total - free, bytes_total: total, inodes_used: 10, inodes_total: 10_000, read_unix: now_unix() - age.as_secs() };
        swell_local::auto_grow::write_usage(&self.local_state, id, &usage).unwrap();
        swell_local::auto_grow::mark_wanted(&self.local_state, id).unwrap();
    }

    fn request_of(&self, name: &str) -> u64 {
        self.api.claim(NAMESPACE, name)["spec"]["resources"]["requests"]["storage"].as_str().unwrap().parse().unwrap()
    }

    /// What `swell ARGS` prints about the rig's state.
    async fn swell(&self, args: &[&str]) -> String {
        let mut command = tokio::process::Command::new(built_binary("swell").expect("the swell binary (cargo build --bins)"));
        command
            .args(args)
            .arg(format!("--state-dir={}", self.dir.join("controller").display()))
            .arg(format!("--local-state-dir={}", self.local_state.display()));
        let out = command.env_remove("KUBECONFIG").env("HOME", &self.dir).kill_on_drop(true).output().await.unwrap();
        assert!(out.status.success(), "swell failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// A sample of the controller's /metrics now.
    async fn metric(&self, name: &str) -> f64 {
        sample(&scrape(self.served.0.metrics).await, name)
    }

    fn reasons(&self) -> Vec<String> {
        self.api.events().into_iter().map(|(reason, _)| reason).collect()
    }
}

fn grower_config(usage_max_age: Duration) -> AutoGrowConfig {
    AutoGrowConfig { interval: Duration::from_millis(200), usage_max_age, base_backoff: Duration::from_secs(30), max_backoff: Duration::from_secs(60) }
}

const CLASS: [(&str, &str); 4] = [("autoGrow", "true"), ("autoGrowFreeBelow", "30%"), ("autoGrowStep", "50%"), ("autoGrowLimit", "640Mi")];

/// Waits (at most `bound`) for `done`.
async fn until(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < bound {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// Writes `total` bytes into `file` a MiB at a time, `pace` apart, synced
/// every 8 MiB; the first error (ENOSPC) ends it.
fn write_paced(file: &Path, total: u64, pace: Duration) -> std::io::Result<u64> {
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(file)?;
    let chunk = vec![0x5au8; MIB as usize];
    let mut written = 0;
    while written < total {
        out.write_all(&chunk)?;
        written += MIB;
        if written % (8 * MIB) == 0 {
            out.sync_data()?;
        }
        std::thread::sleep(pace);
    }
    out.sync_all()?;
    Ok(written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_filling_xfs_gets_it_grown_to_its_limit_never_past_it_and_never_sees_enospc() {
    if host::cannot_run("auto_grow_under_a_writer", false, &["losetup", "mkfs.xfs", "xfs_growfs", "mount", "umount"]) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(Options::default()).await;
    let id = rig.claim("data", 320 * MIB, &CLASS, &[], false).await;
    let block = rig.claim("raw", 320 * MIB, &CLASS, &[], true).await;
    let mut config = swell_node::NodeConfig::new("auto-grow-node");
    config.state_dir = rig.dir.join("node");
    config.local_state_dir = rig.local_state.clone();
    config.grow_on_backend_change = Some(Duration::from_millis(200));
    config.usage_report = Some(Duration::from_millis(600));
    let node = NodeUnderTest::serve(&rig.dir.join("node.sock"), &config).await.unwrap();
    let mut client = node.client.clone();
    let (staging, target) = (rig.dir.join("staging"), rig.dir.join("pod/vol"));
    let (staging, target) = (staging.display().to_string(), target.display().to_string());
    client.node_stage_volume(requests::stage(&id.to_string(), &staging, mount_capability("xfs"))).await.unwrap();
    client.node_publish_volume(requests::publish(&id.to_string(), &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    // Made, as kubelet makes it: a directory on the host's filesystem, whose usage is not the volume's.
    std::fs::create_dir_all(rig.dir.join("block-staging")).unwrap();
    let block_staging = rig.dir.join("block-staging").display().to_string();
    client.node_stage_volume(requests::stage(&block.to_string(), &block_staging, block_capability())).await.unwrap();

    let grower = rig.grower.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(grower.run(async {
        let _ = stopped.await;
    }));
    // 520 MiB at about 25 MiB/s: past 320 MiB only if the volume grows in
    // time, twice (480 MiB, then the 640 MiB limit).
    let file = PathBuf::from(&target).join("data.bin");
    let started = Instant::now();
    let written = tokio::task::spawn_blocking(move || write_paced(&file, 520 * MIB, Duration::from_millis(40))).await.unwrap();
    let took = started.elapsed();
    let written = written.unwrap_or_else(|e| panic!("the writer failed after the volume was patched to {:?}: {e}", rig.api.patched_to()));
    println!("AUTO-GROW wrote {} MiB in {} ms; requests patched: {:?}", written / MIB, took.as_millis(), rig.api.patched_to());
    assert!(until(Duration::from_secs(20), || rig.reasons().iter().any(|r| r == "AutoGrowAtLimit")).await, "no at-limit Event: {:?}", rig.api.events());
    let _ = stop.send(());
    running.await.unwrap();

    assert_eq!(rig.api.patched_to(), vec![480 * MIB, 640 * MIB], "one step, then only to the limit, and nothing past it");
    assert_eq!(rig.request_of("data"), 640 * MIB);
    assert_eq!(rig.api.resizes(), 2, "each patch was resized by the resizer");
    let total = host::statvfs_total(Path::new(&target)).unwrap();
    // More than the 480 MiB device of the first step can hold (xfs keeps a 64 MiB log).
    assert!(total > 480 * MIB, "the node grew the filesystem to the limit: {} MiB", total / MIB);
    let reasons = rig.reasons();
    assert_eq!(reasons.iter().filter(|r| *r == "AutoGrow").count(), 2, "{:?}", rig.api.events());
    assert_eq!(reasons.iter().filter(|r| *r == "AutoGrowAtLimit").count(), 1, "told once: {:?}", rig.api.events());
    assert_eq!(rig.metric(r#"swell_auto_grows_total{outcome="grown"}"#).await, 2.0);
    assert_eq!(rig.metric("swell_auto_grow_volumes_at_limit").await, 1.0);
    assert_eq!(swell_local::auto_grow::read_usage(&rig.local_state, &block).unwrap(), None, "a block volume has no usage to report");
    assert_eq!(rig.request_of("raw"), 320 * MIB, "the block volume was left alone");

    client.node_unpublish_volume(requests::unpublish(&id.to_string(), &target)).await.unwrap();
    client.node_unstage_volume(requests::unstage(&id.to_string(), &staging)).await.unwrap();
    client.node_unstage_volume(requests::unstage(&block.to_string(), &block_staging)).await.unwrap();
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_looking_at_one_crossed_volume_grow_it_once() {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(Options::default()).await;
    let id = rig.claim("twice", 320 * MIB, &CLASS, &[], false).await;
    // A second controller process over the same state, patching the same API server.
    let kubeconfig = rig.dir.join("kubeconfig");
    let second = swell_controller::build(&ControllerConfig {
        driver_name: DRIVER.to_owned(),
        backends: BackendConfig::local(LocalConfig::new(&rig.local_state, rig.dir.join("controller"))),
        reconciler: ReconcilerConfig::default(),
    })
    .unwrap()
    .auto_grower(swell_controller::kube_client(Some(&kubeconfig)).await.unwrap(), grower_config(Duration::from_secs(60)));
    rig.node_reports(&id, 300 * MIB, 30 * MIB, Duration::ZERO);
    let (one, two) = tokio::join!(rig.grower.pass(), second.pass());
    let grown = one.iter().chain(&two).filter(|(_, o)| matches!(o, AutoGrowOutcome::Grown(..))).count();
    assert_eq!(grown, 1, "first: {one:?}, second: {two:?}");
    // Once the resize is in and the mark gone, neither grows again on the same reading.
    assert!(until(Duration::from_secs(10), || rig.api.resizes() == 1).await, "the resizer never finished");
    let (one, two) = tokio::join!(rig.grower.pass(), second.pass());
    assert!(one.is_empty() && two.is_empty(), "the mark was taken away: {one:?} {two:?}");
    assert_eq!(rig.api.patched_to(), vec![480 * MIB]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_older_than_the_bound_decides_nothing() {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(Options { usage_max_age: Duration::from_secs(30), ..Options::default() }).await;
    let id = rig.claim("stale", 320 * MIB, &CLASS, &[], false).await;
    // The node read it full, then stopped reporting (killed) a minute ago.
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::from_secs(60));
    assert_eq!(rig.grower.pass().await, vec![(id.clone(), AutoGrowOutcome::Stale)]);
    assert_eq!(rig.api.patched_to(), Vec::<u64>::new());
    // `swell volume` shows the policy and how old the last reading is.
    let text = rig.swell(&["volume", &id.to_string(), "--kubernetes=never"]).await;
    assert!(text.contains("on, below 30% free, by 50%, up to 640Mi, claim db/stale"), "{text}");
    assert!(text.contains("290Mi of 300Mi used, 10 of 10000 inodes, read 1m"), "{text}");
    // A fresh reading decides.
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    assert_eq!(rig.grower.pass().await, vec![(id, AutoGrowOutcome::Grown(320 * MIB, 480 * MIB))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_turns_auto_grow_on_within_its_class_bounds_and_only_lowers_the_limit() {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(Options::default()).await;
    let bounds = [("autoGrowLimit", "1Gi")];
    let annotations = [("swell.csi.storage/auto-grow", "true"), ("swell.csi.storage/auto-grow-step", "50%"), ("swell.csi.storage/auto-grow-limit", "400Mi")];
    let id = rig.claim("opted-in", 320 * MIB, &bounds, &annotations, false).await;
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    assert_eq!(rig.grower.pass().await, vec![(id, AutoGrowOutcome::Grown(320 * MIB, 400 * MIB))], "a 50% step, cut to the claim's lower limit");
    let raising = [("swell.csi.storage/auto-grow", "true"), ("swell.csi.storage/auto-grow-limit", "2Gi")];
    let id = rig.claim("greedy", 320 * MIB, &bounds, &raising, false).await;
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    assert_eq!(rig.grower.pass().await, vec![(id, AutoGrowOutcome::Grown(320 * MIB, 384 * MIB))], "the class's 20% step");
    let events = rig.api.events();
    assert!(events.iter().any(|(r, m)| r == "AutoGrowAnnotationIgnored" && m.contains("auto-grow-limit") && m.contains("only lower")), "{events:?}");
    assert_eq!(rig.api.patched_to(), vec![400 * MIB, 384 * MIB]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_annotation_is_an_event_and_is_ignored_not_guessed() {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(Options::default()).await;
    // The class sets bounds only; the claim's attempt to turn auto-grow on is misspelt.
    let bounds = [("autoGrowLimit", "1Gi")];
    let id = rig.claim("typo", 320 * MIB, &bounds, &[("swell.csi.storage/auto-grow", "yes")], false).await;
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    assert_eq!(rig.grower.pass().await, vec![(id.clone(), AutoGrowOutcome::Off("auto-grow off for this claim"))]);
    assert_eq!(rig.api.patched_to(), Vec::<u64>::new(), "no resize");
    let events = rig.api.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "AutoGrowAnnotationIgnored");
    assert!(events[0].1.contains("swell.csi.storage/auto-grow") && events[0].1.contains("\"yes\""), "{events:?}");
    assert_eq!(rig.api.event_uids(), vec!["uid-typo"], "the Event names the claim's uid, which `kubectl describe pvc` lists Events by");
    assert_eq!(rig.grower.pass().await, vec![], "the mark was taken away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_stops_auto_grow_with_one_event_and_a_backoff() {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(Options { capacity: Some(400 * MIB), ..Options::default() }).await;
    let id = rig.claim("full", 320 * MIB, &CLASS, &[], false).await;
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    assert_eq!(rig.grower.pass().await, vec![(id.clone(), AutoGrowOutcome::NoRoom)]);
    assert_eq!(rig.grower.pass().await, vec![(id.clone(), AutoGrowOutcome::BackingOff)], "not tried again at once");
    assert_eq!(rig.api.patched_to(), Vec::<u64>::new());
    let events = rig.api.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "AutoGrowNoRoom");
    assert!(events[0].1.contains("the pool can give"), "{events:?}");
    assert_eq!(rig.metric(r#"swell_auto_grows_total{outcome="no_room"}"#).await, 1.0, "the backoff's skip is no decision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_denial_is_an_event_and_backs_off_instead_of_looping() {
    let _serial = SERIAL.lock().await;
    // The controller sees room the webhook's reading of the pool does not.
    let mut rig = Rig::start(Options { capacity: Some(2048 * MIB), webhook_capacity: Some(400 * MIB), ..Options::default() }).await;
    let id = rig.claim("denied", 320 * MIB, &CLASS, &[], false).await;
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    let outcome = rig.grower.pass().await;
    assert!(matches!(outcome.as_slice(), [(_, AutoGrowOutcome::Refused(reason))] if reason.contains("denied")), "{outcome:?}");
    assert_eq!(rig.grower.pass().await, vec![(id.clone(), AutoGrowOutcome::BackingOff)]);
    assert_eq!(rig.api.patched_to(), vec![480 * MIB], "asked once");
    assert_eq!(rig.request_of("denied"), 320 * MIB, "the denied patch changed nothing");
    let events = rig.api.events();
    assert_eq!(events.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), vec!["AutoGrowRefused"], "{events:?}");
}
