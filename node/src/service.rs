//! The gRPC face of the node: a thin `Node` implementation that validates
//! each request into a typed value, calls the domain module for that RPC,
//! and lets `From<NodeError> for Status` pick the status code.

use std::sync::Arc;

use csi_proto::v1::node_server::Node;
use csi_proto::v1::node_service_capability::{Rpc, Type, rpc};
use csi_proto::v1::volume_usage::Unit;
use csi_proto::v1::*;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::stats::{Counts, Usage};
use crate::{NodeConfig, NodeContext, NodeError, expand, publish, stage, stats, validate};

/// The CSI Node service.
#[derive(Debug, Clone)]
pub struct NodeService {
    ctx: Arc<NodeContext>,
}

impl NodeService {
    /// Builds the service, creating the node's state directory; with
    /// `grow_on_backend_change` set, starts the background grower, and with
    /// `usage_report` set, the usage reporter (on the current Tokio
    /// runtime), each ending with the service.
    pub fn new(config: NodeConfig) -> Result<Self, NodeError> {
        let ctx = Arc::new(NodeContext::new(config)?);
        if let Some(interval) = ctx.config.grow_on_backend_change {
            crate::background_grow::spawn(&ctx, interval);
        }
        if let Some(min_gap) = ctx.config.usage_report {
            crate::usage_report::spawn(&ctx, min_gap);
        }
        Ok(NodeService { ctx })
    }

    /// What the node counts and times.
    pub fn metrics(&self) -> &crate::metrics::NodeMetrics {
        &self.ctx.metrics
    }
}

const CAPABILITIES: [rpc::Type; 4] = [rpc::Type::StageUnstageVolume, rpc::Type::ExpandVolume, rpc::Type::GetVolumeStats, rpc::Type::VolumeCondition];

impl NodeService {
    /// Refuses a path outside the kubelet directory or through a symlink.
    async fn confined(&self, field: &'static str, path: &std::path::Path) -> Result<(), NodeError> {
        crate::confine::confined(field, path, self.ctx.config.kubelet_dir.as_deref()).await
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn node_stage_volume(&self, request: Request<NodeStageVolumeRequest>) -> Result<Response<NodeStageVolumeResponse>, Status> {
        log_request("NodeStageVolume", request.get_ref());
        let req = validate::stage(request.get_ref())?;
        self.confined("staging_target_path", &req.staging_path).await?;
        stage::stage(&self.ctx, req).await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn node_unstage_volume(&self, request: Request<NodeUnstageVolumeRequest>) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        log_request("NodeUnstageVolume", request.get_ref());
        let req = validate::unstage(request.get_ref())?;
        self.confined("staging_target_path", &req.staging_path).await?;
        stage::unstage(&self.ctx, req).await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn node_publish_volume(&self, request: Request<NodePublishVolumeRequest>) -> Result<Response<NodePublishVolumeResponse>, Status> {
        log_request("NodePublishVolume", request.get_ref());
        let req = validate::publish(request.get_ref())?;
        self.confined("staging_target_path", &req.staging_path).await?;
        self.confined("target_path", &req.target_path).await?;
        publish::publish(&self.ctx, req).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn node_unpublish_volume(&self, request: Request<NodeUnpublishVolumeRequest>) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        log_request("NodeUnpublishVolume", request.get_ref());
        let req = validate::unpublish(request.get_ref())?;
        self.confined("target_path", &req.target_path).await?;
        publish::unpublish(&self.ctx, req).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn node_get_volume_stats(&self, request: Request<NodeGetVolumeStatsRequest>) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        log_request("NodeGetVolumeStats", request.get_ref());
        let req = validate::stats(request.get_ref())?;
        self.confined("volume_path", &req.volume_path).await?;
        let stats = stats::stats(&self.ctx, req).await?;
        let usage = match stats.usage {
            Usage::Filesystem { bytes, inodes } => vec![usage(Unit::Bytes, bytes), usage(Unit::Inodes, inodes)],
            Usage::Block { total_bytes } => {
                vec![VolumeUsage { total: to_i64(total_bytes), unit: Unit::Bytes as i32, ..Default::default() }]
            }
        };
        let volume_condition =
            Some(VolumeCondition { abnormal: stats.abnormal.is_some(), message: stats.abnormal.unwrap_or_else(|| "volume is healthy".to_owned()) });
        Ok(Response::new(NodeGetVolumeStatsResponse { usage, volume_condition }))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn node_expand_volume(&self, request: Request<NodeExpandVolumeRequest>) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        log_request("NodeExpandVolume", request.get_ref());
        let req = validate::expand(request.get_ref())?;
        self.confined("volume_path", &req.volume_path).await?;
        // Optional, and unused by the growth itself; still a path from the CO.
        let staging = &request.get_ref().staging_target_path;
        if !staging.is_empty() {
            self.confined("staging_target_path", std::path::Path::new(staging)).await?;
        }
        let capacity = expand::expand(&self.ctx, req).await?;
        Ok(Response::new(NodeExpandVolumeResponse { capacity_bytes: to_i64(capacity) }))
    }

    async fn node_get_capabilities(&self, request: Request<NodeGetCapabilitiesRequest>) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        log_request("NodeGetCapabilities", request.get_ref());
        let capabilities = CAPABILITIES.iter().map(|t| NodeServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: *t as i32 })) }).collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(&self, _request: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse { node_id: self.ctx.config.node_id.clone(), max_volumes_per_node: 0, accessible_topology: None }))
    }
}

/// A request as it may be logged: secrets blanked, everything else as sent.
trait Loggable: std::fmt::Debug + Clone {
    fn without_secrets(&self) -> Self {
        self.clone()
    }
}

impl Loggable for NodeStageVolumeRequest {
    fn without_secrets(&self) -> Self {
        NodeStageVolumeRequest { secrets: Default::default(), ..self.clone() }
    }
}

impl Loggable for NodePublishVolumeRequest {
    fn without_secrets(&self) -> Self {
        NodePublishVolumeRequest { secrets: Default::default(), ..self.clone() }
    }
}

impl Loggable for NodeExpandVolumeRequest {
    fn without_secrets(&self) -> Self {
        NodeExpandVolumeRequest { secrets: Default::default(), ..self.clone() }
    }
}

impl Loggable for NodeUnstageVolumeRequest {}
impl Loggable for NodeUnpublishVolumeRequest {}
impl Loggable for NodeGetVolumeStatsRequest {}
impl Loggable for NodeGetCapabilitiesRequest {}

/// Logs each request at debug (`RUST_LOG=swell_node::service=debug`) as its
/// caller sent it, so what kubelet really sends (paths, capability, the order
/// of calls) can be read off a node's log; secrets never are.
fn log_request<T: Loggable>(rpc: &'static str, request: &T) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(rpc, request = ?request.without_secrets(), "request");
    }
}

fn usage(unit: Unit, counts: Counts) -> VolumeUsage {
    VolumeUsage { total: to_i64(counts.total), available: to_i64(counts.available), used: to_i64(counts.used), unit: unit as i32 }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_requests_keep_everything_but_the_secrets() {
        let secrets: std::collections::HashMap<String, String> = [("key".to_owned(), "AQBsecretvalue==".to_owned())].into();
        let stage = NodeStageVolumeRequest { volume_id: "v".into(), staging_target_path: "/stage".into(), secrets: secrets.clone(), ..Default::default() };
        let publish = NodePublishVolumeRequest { volume_id: "v".into(), target_path: "/pub".into(), secrets: secrets.clone(), ..Default::default() };
        let expand =
            NodeExpandVolumeRequest { volume_id: "v".into(), volume_path: "/pub".into(), staging_target_path: "/stage".into(), secrets, ..Default::default() };
        for shown in [format!("{:?}", stage.without_secrets()), format!("{:?}", publish.without_secrets()), format!("{:?}", expand.without_secrets())] {
            assert!(!shown.contains("AQBsecretvalue"), "a secret is logged: {shown}");
            assert!(shown.contains("/stage") || shown.contains("/pub"), "the paths are not: {shown}");
        }
    }
}
