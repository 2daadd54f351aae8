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
    /// Builds the service, creating the node's state directory.
    pub fn new(config: NodeConfig) -> Result<Self, NodeError> {
        Ok(NodeService { ctx: Arc::new(NodeContext::new(config)?) })
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
        let req = validate::stage(request.get_ref())?;
        self.confined("staging_target_path", &req.staging_path).await?;
        stage::stage(&self.ctx, req).await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn node_unstage_volume(&self, request: Request<NodeUnstageVolumeRequest>) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = validate::unstage(request.get_ref())?;
        self.confined("staging_target_path", &req.staging_path).await?;
        stage::unstage(&self.ctx, req).await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn node_publish_volume(&self, request: Request<NodePublishVolumeRequest>) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = validate::publish(request.get_ref())?;
        self.confined("staging_target_path", &req.staging_path).await?;
        self.confined("target_path", &req.target_path).await?;
        publish::publish(&self.ctx, req).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn node_unpublish_volume(&self, request: Request<NodeUnpublishVolumeRequest>) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = validate::unpublish(request.get_ref())?;
        self.confined("target_path", &req.target_path).await?;
        publish::unpublish(&self.ctx, req).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn node_get_volume_stats(&self, request: Request<NodeGetVolumeStatsRequest>) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = validate::stats(request.get_ref())?;
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
        let req = validate::expand(request.get_ref())?;
        let capacity = expand::expand(&self.ctx, req).await?;
        Ok(Response::new(NodeExpandVolumeResponse { capacity_bytes: to_i64(capacity) }))
    }

    async fn node_get_capabilities(&self, _request: Request<NodeGetCapabilitiesRequest>) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let capabilities = CAPABILITIES.iter().map(|t| NodeServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: *t as i32 })) }).collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(&self, _request: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse { node_id: self.ctx.config.node_id.clone(), max_volumes_per_node: 0, accessible_topology: None }))
    }
}

fn usage(unit: Unit, counts: Counts) -> VolumeUsage {
    VolumeUsage { total: to_i64(counts.total), available: to_i64(counts.available), used: to_i64(counts.used), unit: unit as i32 }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
