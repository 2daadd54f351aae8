//! The one place tests read a volume's expansion state: from outside the
//! controller, as the external-resizer sees it, through ControllerGetVolume's
//! size and volume condition (the metrics, as Prometheus scrapes them, are
//! read through [`crate::metrics`]). How the controller keeps its state
//! (files, the Ceph pool) is its own business; if a public signal moves,
//! re-point these functions and nothing else.

use csi_proto::v1::ControllerGetVolumeRequest;
use csi_proto::v1::controller_client::ControllerClient;
use tonic::Status;
use tonic::transport::Channel;

/// What the controller says about one volume now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpansionState {
    /// The size the controller read from the backend.
    pub size: u64,
    /// An expansion is recorded and not yet reached (the condition is abnormal).
    pub pending: bool,
    /// The condition's message (the reason, when pending).
    pub message: String,
}

/// The expansion state of `id`.
pub async fn expansion_state(client: &mut ControllerClient<Channel>, id: &str) -> Result<ExpansionState, Status> {
    let answer = client.controller_get_volume(ControllerGetVolumeRequest { volume_id: id.to_owned() }).await?.into_inner();
    let size = answer.volume.map(|v| v.capacity_bytes).ok_or_else(|| Status::internal(format!("ControllerGetVolume {id}: no volume")))?;
    let condition = answer.status.and_then(|s| s.volume_condition).ok_or_else(|| Status::internal(format!("ControllerGetVolume {id}: no volume condition")))?;
    Ok(ExpansionState { size: u64::try_from(size).unwrap_or(0), pending: condition.abnormal, message: condition.message })
}
