//! CSI requests as the sidecars and kubelet build them, so tests and the demo
//! read as the user's path rather than as protobuf plumbing.

use csi_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode};
use csi_proto::v1::*;

/// A single-node-writer mount capability with `fs_type` (empty: default).
pub fn mount_capability(fs_type: &str) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs_type.to_owned(), ..Default::default() })),
    }
}

/// A single-node-writer raw block capability.
pub fn block_capability() -> VolumeCapability {
    VolumeCapability { access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }), access_type: Some(AccessType::Block(BlockVolume {})) }
}

/// CreateVolume as the external-provisioner sends it.
pub fn create_volume(name: &str, bytes: i64, capability: VolumeCapability) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![capability],
        ..Default::default()
    }
}

/// ControllerExpandVolume as the external-resizer sends it: required only.
pub fn controller_expand(volume_id: &str, bytes: i64, capability: Option<VolumeCapability>) -> ControllerExpandVolumeRequest {
    ControllerExpandVolumeRequest {
        volume_id: volume_id.to_owned(),
        capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capability: capability,
        ..Default::default()
    }
}

/// NodeStageVolume.
pub fn stage(volume_id: &str, staging: &str, capability: VolumeCapability) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: volume_id.to_owned(),
        staging_target_path: staging.to_owned(),
        volume_capability: Some(capability),
        ..Default::default()
    }
}

/// NodePublishVolume.
pub fn publish(volume_id: &str, staging: &str, target: &str, capability: VolumeCapability, readonly: bool) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        staging_target_path: staging.to_owned(),
        target_path: target.to_owned(),
        volume_capability: Some(capability),
        readonly,
        ..Default::default()
    }
}

/// NodeExpandVolume as kubelet sends it for a volume in use, as the kube lane
/// saw kubelet 1.36 send it (`e2e/tests/kube`, which checks this function
/// against what Swell's node logged): `volume_path` the pod's publish path
/// (for raw block the device file kubelet published), `staging` the staging
/// path, the capability the volume was staged with, `required_bytes` the
/// PV's new capacity and no limit. kubelet asks NodeGetCapabilities first.
pub fn node_expand(volume_id: &str, publish_path: &str, staging: &str, bytes: i64, capability: VolumeCapability) -> NodeExpandVolumeRequest {
    NodeExpandVolumeRequest {
        volume_id: volume_id.to_owned(),
        volume_path: publish_path.to_owned(),
        staging_target_path: staging.to_owned(),
        capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capability: Some(capability),
        ..Default::default()
    }
}

/// NodeExpandVolume as csi-sanity sends it: no staging path and no
/// capability, which the spec allows and Swell must serve (kubelet always
/// sends both: [`node_expand`]).
pub fn node_expand_bare(volume_id: &str, volume_path: &str, bytes: i64) -> NodeExpandVolumeRequest {
    NodeExpandVolumeRequest {
        volume_id: volume_id.to_owned(),
        volume_path: volume_path.to_owned(),
        capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        ..Default::default()
    }
}

/// NodeUnpublishVolume.
pub fn unpublish(volume_id: &str, target: &str) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest { volume_id: volume_id.to_owned(), target_path: target.to_owned() }
}

/// NodeUnstageVolume.
pub fn unstage(volume_id: &str, staging: &str) -> NodeUnstageVolumeRequest {
    NodeUnstageVolumeRequest { volume_id: volume_id.to_owned(), staging_target_path: staging.to_owned() }
}

/// NodeGetVolumeStats.
pub fn stats(volume_id: &str, path: &str) -> NodeGetVolumeStatsRequest {
    NodeGetVolumeStatsRequest { volume_id: volume_id.to_owned(), volume_path: path.to_owned(), staging_target_path: String::new() }
}

/// The total bytes a NodeGetVolumeStats answer reports, if any.
pub fn total_bytes(response: &NodeGetVolumeStatsResponse) -> Option<i64> {
    response.usage.iter().find(|u| u.unit == volume_usage::Unit::Bytes as i32).map(|u| u.total)
}
