//! The node's own Prometheus metrics beside the per-RPC ones
//! (`csi_endpoint::rpc_metrics`): how long growing each kind of filesystem
//! online takes, and how it ended.

use std::future::Future;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::filesystem::FsType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrowLabels {
    fs_type: &'static str,
    outcome: &'static str,
}

/// The node's metrics.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    grows: Family<GrowLabels, Histogram, fn() -> Histogram>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics { grows: Family::new_with_constructor(csi_endpoint::rpc_metrics::latency_histogram) }
    }
}

impl NodeMetrics {
    /// Registers `swell_node_filesystem_grow_duration_seconds` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("swell_node_filesystem_grow_duration_seconds", "Online filesystem grows, by filesystem and outcome (ok, error).", self.grows.clone());
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
