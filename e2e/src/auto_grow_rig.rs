//! Auto-grow's rig (docs/auto-grow.md), for every backend: a controller
//! with auto-grow over the backend a test chooses, the stand-in API server
//! (`crate::apiserver`) it patches claims on, and the real webhook that
//! server asks; and the whole path under a writer, written once for the
//! backends' tests: a node reporting usage into the backend's store while
//! a writer fills a volume, which must be grown step by step to its limit,
//! never past it, without the writer ever seeing ENOSPC.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_proto::v1::NodeStageVolumeRequest;
use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::node_client::NodeClient;
use swell_backends::{BackendConfig, Backends};
use swell_controller::{AutoGrowConfig, AutoGrower, ControllerConfig, ReconcilerConfig};
use swell_local::{LocalBackend, LocalConfig};
use swell_storage::auto_grow::Skipped;
use swell_storage::units::MIB;
use swell_storage::{Backend, VolumeId};
use swell_webhook::{BackendFacts, Limits, Policy, Webhook};
use tonic::transport::Channel;

use crate::apiserver::{Cluster, StandInApiServer};
use crate::harness::{ControllerUnderTest, NodeUnderTest};
use crate::host;
use crate::metrics::{sample, scrape};
use crate::requests::{self, block_capability, mount_capability};
use crate::sweep::MountSweeper;
use crate::webhook::{DRIVER, FixedVolumes, RunningWebhook, TestPki};

/// The claims' namespace.
pub const NAMESPACE: &str = "db";

/// The class of the writer test: grow below 30% free by 50%, up to 640 MiB.
pub const CLASS: [(&str, &str); 4] = [("autoGrow", "true"), ("autoGrowFreeBelow", "30%"), ("autoGrowStep", "50%"), ("autoGrowLimit", "640Mi")];

/// The backend a rig's controller and webhook use, made in the rig's directory.
pub struct Engine {
    /// The controller's backends.
    pub backends: BackendConfig,
    /// What the webhook reads the pool's room from (another client of the
    /// same store, as a webhook replica is).
    pub webhook_facts: Arc<dyn Backend>,
    /// A client of the same store, for the tests' own reads.
    pub store: Arc<dyn Backend>,
    /// StorageClass parameters every claim's class carries (an RBD attach mode).
    pub parameters: HashMap<String, String>,
}

/// The local backend in `dir/local` (records in `dir/controller`): the
/// controller's, promising at most `capacity` bytes, and the webhook's view
/// of the same store, holding `webhook_capacity` (as a webhook reading
/// another moment of a shared pool would see it; default: `capacity`).
pub fn local_engine(dir: &Path, capacity: Option<u64>, webhook_capacity: Option<u64>) -> Engine {
    let config = |capacity_bytes| LocalConfig { capacity_bytes, ..LocalConfig::new(dir.join("local"), dir.join("controller")) };
    let opened = |capacity| -> Arc<dyn Backend> { Arc::new(LocalBackend::open(&config(capacity)).expect("open the local backend")) };
    Engine {
        backends: BackendConfig::local(config(capacity)),
        webhook_facts: opened(webhook_capacity.or(capacity)),
        store: opened(capacity),
        parameters: HashMap::new(),
    }
}

/// A controller with auto-grow, the stand-in API server it patches claims
/// on, and the real webhook that server asks.
pub struct Rig {
    /// The rig's directory.
    pub dir: PathBuf,
    /// The controller's client.
    pub controller: ControllerClient<Channel>,
    /// The controller's auto-grow.
    pub grower: AutoGrower,
    /// The stand-in API server.
    pub api: StandInApiServer,
    /// The backend's store, read directly.
    pub store: Arc<dyn Backend>,
    pvs: Arc<FixedVolumes>,
    parameters: HashMap<String, String>,
    contexts: HashMap<VolumeId, HashMap<String, String>>,
    served: (ControllerUnderTest, RunningWebhook),
    /// Unmounts and detaches what a test made, also when it fails; before
    /// the directory goes.
    _sweep: MountSweeper,
    _tmp: tempfile::TempDir,
}

impl Rig {
    /// A rig whose engine `engine` makes in the rig's directory, deciding
    /// on readings at most `usage_max_age` old.
    pub async fn start(usage_max_age: Duration, engine: impl FnOnce(&Path) -> Engine) -> Rig {
        Rig::start_with(grower_config(usage_max_age), engine).await
    }

    /// A rig whose engine `engine` makes in the rig's directory, its
    /// controller's auto-grow paced by `grower`.
    pub async fn start_with(grower: AutoGrowConfig, engine: impl FnOnce(&Path) -> Engine) -> Rig {
        crate::logs::log_when_asked();
        let tmp = tempfile::Builder::new().prefix("swell-auto-grow-").tempdir_in("/var/tmp").expect("temp dir under /var/tmp");
        let dir = tmp.path().to_owned();
        let Engine { backends, webhook_facts, store, parameters } = engine(&dir);
        let api = StandInApiServer::start().await;
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let config = ControllerConfig { driver_name: DRIVER.to_owned(), backends, reconciler: ReconcilerConfig::default() };
        let controller = swell_controller::build(&config).expect("controller builds");
        let kube = swell_controller::kube_client(Some(&kubeconfig)).await.expect("a client of the stand-in");
        let grower = controller.auto_grower(kube, grower);
        let served = ControllerUnderTest::serve(&dir, controller).await.expect("serve the controller");
        let pvs = Arc::new(FixedVolumes::default());
        let webhook = Webhook {
            driver_name: DRIVER.into(),
            deadline: Duration::from_secs(5),
            policy: Policy::default(),
            volumes: pvs.clone(),
            facts: Arc::new(BackendFacts::new(Backends::new(webhook_facts, Duration::from_secs(10)))),
        };
        let pki = TestPki::new();
        let webhook = RunningWebhook::start(webhook, &pki, Limits::default(), Duration::from_secs(60)).await;
        api.join(Cluster { webhook: Some(webhook.client(&pki)), resizer: Some(served.client.clone()) });
        Rig {
            dir: dir.clone(),
            controller: served.client.clone(),
            grower,
            api,
            store,
            pvs,
            parameters,
            contexts: HashMap::new(),
            served: (served, webhook),
            _sweep: MountSweeper(dir),
            _tmp: tmp,
        }
    }

    /// Makes claim `name` of `bytes` through CreateVolume with `class` (and
    /// the engine's parameters) as the StorageClass's parameters, binds it to its PV on the stand-in
    /// with `annotations`; returns the volume's id.
    pub async fn claim(&mut self, name: &str, bytes: u64, class: &[(&str, &str)], annotations: &[(&str, &str)], block: bool) -> VolumeId {
        let capability = if block { block_capability() } else { mount_capability("xfs") };
        let mut request = requests::create_volume(&format!("pv-{name}"), bytes as i64, capability);
        request.parameters = self.parameters.clone();
        request.parameters.extend(class.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        request.parameters.insert("csi.storage.k8s.io/pvc/name".into(), name.into());
        request.parameters.insert("csi.storage.k8s.io/pvc/namespace".into(), NAMESPACE.into());
        let volume = self.controller.create_volume(request).await.expect("CreateVolume").into_inner().volume.expect("a volume");
        let pv = format!("pv-{name}");
        self.pvs.add(&pv, &volume.volume_id);
        self.api.add_claim(NAMESPACE, name, &pv, &volume.volume_id, volume.capacity_bytes as u64, annotations);
        let id: VolumeId = volume.volume_id.parse().expect("a volume id");
        self.contexts.insert(id.clone(), volume.volume_context);
        id
    }

    /// NodeStageVolume of `id` with the volume context CreateVolume gave it, as kubelet sends it.
    pub fn stage(&self, id: &VolumeId, staging: &str, block: bool) -> NodeStageVolumeRequest {
        let capability = if block { block_capability() } else { mount_capability("xfs") };
        let volume_context = self.contexts.get(id).cloned().unwrap_or_default();
        NodeStageVolumeRequest { volume_context, ..requests::stage(&id.to_string(), staging, capability) }
    }

    /// The claim's storage request now.
    pub fn request_of(&self, name: &str) -> u64 {
        self.api.request_of(NAMESPACE, name).unwrap_or_else(|| panic!("claim {name} has a storage request in bytes"))
    }

    /// A sample of the controller's /metrics now.
    pub async fn metric(&self, name: &str) -> f64 {
        sample(&scrape(self.served.0.metrics).await, name)
    }

    /// The claim uids of the `AutoGrowSkipped` Events posted so far, each
    /// checked to say why.
    pub fn skip_events(&self) -> Vec<String> {
        let skips = self.api.events().into_iter().zip(self.api.event_uids()).filter(|((reason, _), _)| reason == "AutoGrowSkipped");
        skips
            .map(|((_, message), uid)| {
                assert!(message.contains(Skipped::BlockVolume.reason()), "the skip Event says why: {message}");
                uid
            })
            .collect()
    }

    /// The reasons of the Events posted so far.
    pub fn reasons(&self) -> Vec<String> {
        self.api.events().into_iter().map(|(reason, _)| reason).collect()
    }
}

/// Auto-grow looking every 200 ms, backing off 30 s after a refusal.
pub fn grower_config(usage_max_age: Duration) -> AutoGrowConfig {
    AutoGrowConfig { interval: Duration::from_millis(200), usage_max_age, base_backoff: Duration::from_secs(30), max_backoff: Duration::from_secs(60) }
}

/// Waits (at most `bound`) for `done`.
pub async fn until(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
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
pub fn write_paced(file: &Path, total: u64, pace: Duration) -> std::io::Result<u64> {
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

/// How the filesystem of a volume grown underneath it is grown on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilesystemGrow {
    /// By the node itself (`--grow-on-backend-change-ms`): the modes whose
    /// device shows the backend's grow (loop over a local file, krbd, rbd-nbd).
    ByTheNode,
    /// By NodeExpandVolume once the claim's capacity grew, as kubelet calls
    /// it (rbd-fuse's loop device is refreshed only then); the test stands
    /// in for kubelet, looking every 200 ms instead of at its next sync.
    ByKubelet,
}

/// The whole path under a writer, on the class [`CLASS`]: a 320 MiB xfs
/// volume and a block volume of the class, staged on a node (`node`, whose
/// usage report and background grow this sets) under `rig.dir`; a writer
/// writes 520 MiB into the filesystem at about 25 MiB/s, past 320 MiB only
/// if the volume grows in time, twice (480 MiB, then the 640 MiB limit).
/// It must never see an error; the claim is patched exactly to 480 MiB and
/// then 640 MiB, nothing past the limit; the at-limit Event is told once;
/// the block volume is never grown, and its claim told once that it is skipped.
pub async fn writer_scenario(rig: &mut Rig, mut node: swell_node::NodeConfig, grow: FilesystemGrow) {
    let id = rig.claim("data", 320 * MIB, &CLASS, &[], false).await;
    let block = rig.claim("raw", 320 * MIB, &CLASS, &[], true).await;
    node.grow_on_backend_change = Some(Duration::from_millis(200));
    node.usage_report = Some(Duration::from_millis(600));
    let served = NodeUnderTest::serve(&rig.dir.join("node.sock"), &node).await.expect("serve the node");
    let mut client = served.client.clone();
    let (staging, target) = (rig.dir.join("staging").display().to_string(), rig.dir.join("pod/vol").display().to_string());
    client.node_stage_volume(rig.stage(&id, &staging, false)).await.expect("stage");
    client.node_publish_volume(requests::publish(&id.to_string(), &staging, &target, mount_capability("xfs"), false)).await.expect("publish");
    // Made, as kubelet makes it: a directory on the host's filesystem, whose usage is not the volume's.
    std::fs::create_dir_all(rig.dir.join("block-staging")).expect("block staging dir");
    let block_staging = rig.dir.join("block-staging").display().to_string();
    client.node_stage_volume(rig.stage(&block, &block_staging, true)).await.expect("stage the block volume");

    let grower = rig.grower.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut stopped_too = stopped.clone();
    let running = tokio::spawn(grower.run(async move {
        let _ = stopped_too.wait_for(|s| *s).await;
    }));
    let kubelet = (grow == FilesystemGrow::ByKubelet).then(|| {
        let capacity = rig.api.capacity_reader(NAMESPACE, "data");
        tokio::spawn(stand_in_kubelet(client.clone(), capacity, id.clone(), staging.clone(), target.clone(), stopped))
    });
    let file = PathBuf::from(&target).join("data.bin");
    let started = Instant::now();
    let written = tokio::task::spawn_blocking(move || write_paced(&file, 520 * MIB, Duration::from_millis(40))).await.expect("the writer");
    let took = started.elapsed();
    let written = written.unwrap_or_else(|e| panic!("the writer failed after the volume was patched to {:?}: {e}", rig.api.patched_to()));
    println!("AUTO-GROW wrote {} MiB in {} ms; requests patched: {:?}", written / MIB, took.as_millis(), rig.api.patched_to());
    assert!(until(Duration::from_secs(30), || rig.reasons().iter().any(|r| r == "AutoGrowAtLimit")).await, "no at-limit Event: {:?}", rig.api.events());
    let _ = stop.send(true);
    running.await.expect("auto-grow stops");
    if let Some(kubelet) = kubelet {
        kubelet.await.expect("the stand-in kubelet stops");
    }

    assert_eq!(rig.api.patched_to(), vec![480 * MIB, 640 * MIB], "one step, then only to the limit, and nothing past it");
    assert_eq!(rig.request_of("data"), 640 * MIB);
    assert_eq!(rig.api.resizes(), 2, "each patch was resized by the resizer");
    let total = host::statvfs_total(Path::new(&target)).expect("statvfs");
    // More than the 480 MiB device of the first step can hold (xfs keeps a 64 MiB log).
    assert!(total > 480 * MIB, "the filesystem grew to the limit: {} MiB", total / MIB);
    let reasons = rig.reasons();
    assert_eq!(reasons.iter().filter(|r| *r == "AutoGrow").count(), 2, "{:?}", rig.api.events());
    assert_eq!(reasons.iter().filter(|r| *r == "AutoGrowAtLimit").count(), 1, "told once: {:?}", rig.api.events());
    assert_eq!(rig.metric(r#"swell_auto_grows_total{outcome="grown"}"#).await, 2.0);
    assert_eq!(rig.metric("swell_auto_grow_volumes_at_limit").await, 1.0);
    let (_, block_usage) = rig.store.auto_grow(&block).await.expect("read the block volume's auto-grow state");
    assert_eq!(block_usage.and_then(|u| u.skipped), Some(Skipped::BlockVolume), "the block volume's skip is recorded, not a reading");
    assert_eq!(rig.request_of("raw"), 320 * MIB, "the block volume was left alone");
    assert_eq!(rig.skip_events(), vec!["uid-raw".to_owned()], "one skip Event on the block volume's claim over every pass: {:?}", rig.api.events());

    client.node_unpublish_volume(requests::unpublish(&id.to_string(), &target)).await.expect("unpublish");
    client.node_unstage_volume(requests::unstage(&id.to_string(), &staging)).await.expect("unstage");
    client.node_unstage_volume(requests::unstage(&block.to_string(), &block_staging)).await.expect("unstage the block volume");
    drop(served);
}

/// Calls NodeExpandVolume whenever the claim's capacity grew, as kubelet
/// does at its sync of the pod (looking every 200 ms), until `stopped`.
pub async fn stand_in_kubelet(
    mut node: NodeClient<Channel>,
    capacity: impl Fn() -> u64 + Send + 'static,
    id: VolumeId,
    staging: String,
    target: String,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut expanded = capacity();
    while !*stopped.borrow() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = capacity();
        if now > expanded {
            let request = requests::node_expand(&id.to_string(), &target, &staging, now as i64, mount_capability("xfs"));
            node.node_expand_volume(request).await.unwrap_or_else(|e| panic!("NodeExpandVolume to {now}: {e}"));
            expanded = now;
        }
    }
}
