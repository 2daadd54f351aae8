//! What the scenarios run on: the [`Engine`] (a backend and how to see it
//! without Swell), the local one, a controller served in-process over an
//! instrumented engine, and the CSI calls every scenario makes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::DeleteVolumeRequest;
use csi_proto::v1::controller_client::ControllerClient;
use swell_backends::Backends;
use swell_controller::ReconcilerConfig;
use swell_local::{LocalBackend, LocalConfig, image_path};
use swell_node::NodeConfig;
use swell_storage::{Backend, VolumeId};
use tonic::transport::Channel;

use crate::harness::ControllerUnderTest;
use crate::instrumented::InstrumentedBackend;
use crate::requests::{self, block_capability};

/// A storage engine the scenarios run on, and how to see it without Swell.
#[async_trait::async_trait]
pub trait Engine: Send + Sync {
    /// For messages: `local`, `rbd`.
    fn name(&self) -> &'static str;
    /// A backend over the engine for an in-process controller whose state lies under `root`.
    fn backend(&self, root: &Path) -> Arc<dyn Backend>;
    /// The deadline the in-process controller puts on each backend call.
    fn backend_deadline(&self) -> Duration;
    /// Flags that make a `swell-controller` process (state under `root`) serve this engine by default.
    fn controller_args(&self, root: &Path) -> Vec<String>;
    /// A node's configuration for this engine, with its state under `root`.
    fn node_config(&self, root: &Path) -> NodeConfig;
    /// The volume's size read by the engine's own means, not through Swell; `None` when it is gone.
    async fn size_outside_swell(&self, root: &Path, id: &VolumeId) -> Option<u64>;
    /// Latency added to every grow of the in-process controller, standing in
    /// for a remote engine where the engine itself answers in microseconds.
    fn stand_in_latency(&self) -> Duration;
    /// How much faster a batch of expansions of different volumes must go at
    /// once than one after another: well above 1 (a global lock), well below
    /// what this machine reaches.
    fn min_parallel_speedup(&self) -> f64;
    /// How long a restarted controller may take to finish every interrupted expansion.
    fn settle_bound(&self) -> Duration;
}

/// The embedded local backend: sparse files under `root/local`.
pub struct Local;

#[async_trait::async_trait]
impl Engine for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn backend(&self, root: &Path) -> Arc<dyn Backend> {
        Arc::new(LocalBackend::open(&LocalConfig::new(root.join("local"), root.join("controller"))).expect("open the local backend"))
    }

    fn backend_deadline(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn controller_args(&self, _root: &Path) -> Vec<String> {
        Vec::new()
    }

    fn node_config(&self, root: &Path) -> NodeConfig {
        let mut config = NodeConfig::new("swell-never-stuck-node");
        config.state_dir = root.join("node");
        config.local_state_dir = root.join("local");
        config
    }

    async fn size_outside_swell(&self, root: &Path, id: &VolumeId) -> Option<u64> {
        std::fs::metadata(image_path(&root.join("local"), id)).ok().map(|m| m.len())
    }

    fn stand_in_latency(&self) -> Duration {
        // A global lock would serialise 24 such grows into 1.2 s.
        Duration::from_millis(50)
    }

    fn min_parallel_speedup(&self) -> f64 {
        // Measured ~10 here; a global lock gives ~1.
        4.0
    }

    fn settle_bound(&self) -> Duration {
        Duration::from_secs(15)
    }
}

/// A controller served in-process over the engine wrapped in an
/// [`InstrumentedBackend`], its state in a fresh directory under /var/tmp.
pub struct InProcess {
    /// The wrapper: grows seen, lies to tell.
    pub backend: Arc<InstrumentedBackend>,
    /// The controller, its client and its reconciler.
    pub controller: ControllerUnderTest,
    /// The directory holding its state (and the local engine's files).
    pub dir: tempfile::TempDir,
}

impl InProcess {
    /// Starts a controller over `engine`; reconciler passes are the test's
    /// to run, and a failed volume is retried on the very next one.
    pub async fn start(engine: &dyn Engine, grow_latency: Duration) -> InProcess {
        Self::start_with(engine, grow_latency, ReconcilerConfig { base_backoff: Duration::ZERO, ..Default::default() }).await
    }

    /// Like [`start`](Self::start), with the reconciler's settings.
    pub async fn start_with(engine: &dyn Engine, grow_latency: Duration, reconciler: ReconcilerConfig) -> InProcess {
        let dir = tempfile::Builder::new().prefix("swell-never-stuck-").tempdir_in("/var/tmp").expect("temp dir under /var/tmp");
        let backend = InstrumentedBackend::new(engine.backend(dir.path()), grow_latency);
        let backends = Backends::new(backend.clone(), engine.backend_deadline());
        let controller = ControllerUnderTest::start(dir.path(), backends, reconciler).await.expect("start the controller");
        InProcess { backend, controller, dir }
    }

    /// A client of the controller.
    pub fn client(&self) -> ControllerClient<Channel> {
        self.controller.client.clone()
    }

    /// The volume's size as the engine holds it, past any lie.
    pub async fn true_size(&self, id: &str) -> u64 {
        let id: VolumeId = id.parse().expect("a volume id");
        self.backend.true_size(&id).await.expect("read the engine").expect("the volume exists")
    }
}

/// Creates a volume of exactly `bytes` and returns its id. Asked for as raw
/// block, which the controller sizes as asked (a filesystem's minimum would
/// raise it); it keeps no capability, so a test may stage it with any.
pub async fn create(client: &mut ControllerClient<Channel>, name: &str, bytes: u64) -> String {
    let created = client.create_volume(requests::create_volume(name, bytes as i64, block_capability())).await;
    let volume = created.unwrap_or_else(|e| panic!("create {name}: {e:?}")).into_inner().volume.expect("CreateVolume answered a volume");
    assert_eq!(volume.capacity_bytes as u64, bytes, "create {name}");
    volume.volume_id
}

/// Deletes a volume, requiring OK.
pub async fn delete(client: &mut ControllerClient<Channel>, id: &str) {
    client.delete_volume(DeleteVolumeRequest { volume_id: id.to_owned(), ..Default::default() }).await.unwrap_or_else(|e| panic!("delete {id}: {e:?}"));
}

/// ControllerExpandVolume to `bytes`: the size answered, or the status.
pub async fn expand(client: &mut ControllerClient<Channel>, id: &str, bytes: u64) -> Result<u64, tonic::Status> {
    Ok(client.controller_expand_volume(requests::controller_expand(id, bytes as i64, None)).await?.into_inner().capacity_bytes as u64)
}
