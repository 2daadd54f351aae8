//! The node's request checks for the fuzz targets (fuzz/), built only with
//! the `fuzzing` feature: each runs the check its RPC runs before touching
//! anything, and answers the status the RPC would.

use csi_proto::v1::{
    NodeExpandVolumeRequest, NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest,
};
use tonic::Status;

use crate::validate;

/// A request of a Node RPC that takes input.
#[derive(Debug)]
pub enum NodeRequest {
    /// NodeStageVolume.
    Stage(NodeStageVolumeRequest),
    /// NodeUnstageVolume.
    Unstage(NodeUnstageVolumeRequest),
    /// NodePublishVolume.
    Publish(NodePublishVolumeRequest),
    /// NodeUnpublishVolume.
    Unpublish(NodeUnpublishVolumeRequest),
    /// NodeGetVolumeStats.
    Stats(NodeGetVolumeStatsRequest),
    /// NodeExpandVolume.
    Expand(NodeExpandVolumeRequest),
}

/// Runs the check of `request`'s RPC; an error is the status the RPC answers.
pub fn check(request: &NodeRequest) -> Result<(), Status> {
    let checked = match request {
        NodeRequest::Stage(r) => validate::stage(r).map(drop),
        NodeRequest::Unstage(r) => validate::unstage(r).map(drop),
        NodeRequest::Publish(r) => validate::publish(r).map(drop),
        NodeRequest::Unpublish(r) => validate::unpublish(r).map(drop),
        NodeRequest::Stats(r) => validate::stats(r).map(drop),
        NodeRequest::Expand(r) => validate::expand(r).map(drop),
    };
    checked.map_err(Status::from)
}
