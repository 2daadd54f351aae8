//! The node's own Prometheus metrics beside the per-RPC ones
//! (`csi_endpoint::rpc_metrics`): how long growing each kind of filesystem
//! online takes, and how it ended; and what the background grower
//! (`background_grow`) did.

use std::future::Future;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::filesystem::FsType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrowLabels {
    fs_type: &'static str,
    outcome: &'static str,
}

/// How one background grow of a volume ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackgroundOutcome {
    /// The device or the filesystem was grown before kubelet asked.
    Grown,
    /// Both already filled the backend (kubelet's call came first).
    AlreadyDone,
    /// The grow failed; kubelet's NodeExpandVolume tries again.
    Failed,
}

impl BackgroundOutcome {
    fn label(self) -> &'static str {
        match self {
            BackgroundOutcome::Grown => "grown",
            BackgroundOutcome::AlreadyDone => "already_done",
            BackgroundOutcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackgroundLabels {
    outcome: &'static str,
}

/// The node's metrics.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    grows: Family<GrowLabels, Histogram, fn() -> Histogram>,
    background: Family<BackgroundLabels, Counter>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics { grows: Family::new_with_constructor(csi_endpoint::rpc_metrics::latency_histogram), background: Family::default() }
    }
}

impl NodeMetrics {
    /// Registers `swell_node_filesystem_grow_duration_seconds` and
    /// `swell_node_background_grows` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("swell_node_filesystem_grow_duration_seconds", "Online filesystem grows, by filesystem and outcome (ok, error).", self.grows.clone());
        registry.register(
            "swell_node_background_grows",
            "Volumes grown as soon as their backend grew, before kubelet asked, by outcome (grown, already_done, failed).",
            self.background.clone(),
        );
    }

    /// Counts one background grow.
    pub(crate) fn count_background_grow(&self, outcome: BackgroundOutcome) {
        self.background.get_or_create(&BackgroundLabels { outcome: outcome.label() }).inc();
    }

    /// Runs `grow` (an online grow of an `fs_type` filesystem), timed.
    pub async fn time_grow<T, E>(&self, fs_type: FsType, grow: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let started = Instant::now();
        let result = grow.await;
        let labels = GrowLabels { fs_type: fs_type.as_str(), outcome: if result.is_ok() { "ok" } else { "error" } };
        self.grows.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        result
    }
}
