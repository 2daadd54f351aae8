//! Requests to typed values. Every field check that answers
//! INVALID_ARGUMENT happens here, before any state is read, naming the
//! field; the volume id is parsed last, and an id that cannot name a volume
//! answers NOT_FOUND.

use std::path::{Component, Path, PathBuf};

use csi_endpoint::capabilities::single_node_access;
use csi_proto::v1::volume_capability::AccessType;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::{
    NodeExpandVolumeRequest, NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest,
    VolumeCapability,
};
use swell_storage::VolumeId;
use swell_storage::rbd_attach::{self, RbdAttach};

use crate::crypt::key::{self as crypt_key, Kek};
use crate::error::NodeError;
use crate::filesystem::FsType;
use crate::staging::Access;

/// A validated NodeStageVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stage {
    pub volume: VolumeId,
    pub staging_path: PathBuf,
    pub access: Access,
    /// A read-only access mode or an `ro` mount flag: the volume is never
    /// formatted, repaired or grown.
    pub read_only: bool,
    /// How the StorageClass wants an RBD volume attached (volume context).
    pub attach: RbdAttach,
    /// The key-encryption key from the node-stage Secret; present exactly
    /// when the volume is encrypted.
    pub kek: Option<Kek>,
    /// The volume whose id the copied data key of an encrypted volume made
    /// from a source is still bound to (volume context, set by the controller).
    pub key_from: Option<VolumeId>,
}

/// A validated NodeUnstageVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unstage {
    pub volume: VolumeId,
    pub staging_path: PathBuf,
}

/// A validated NodePublishVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publish {
    pub volume: VolumeId,
    pub staging_path: PathBuf,
    pub target_path: PathBuf,
    pub access: Access,
    /// The readonly flag, or a read-only access mode.
    pub read_only: bool,
}

/// A validated NodeUnpublishVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unpublish {
    pub volume: VolumeId,
    pub target_path: PathBuf,
}

/// A validated NodeGetVolumeStats; the path is only checked for existence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stats {
    pub volume: VolumeId,
    pub volume_path: PathBuf,
}

/// A validated NodeExpandVolume; zero means "not given".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expand {
    pub volume: VolumeId,
    pub volume_path: PathBuf,
    pub required_bytes: u64,
    pub limit_bytes: u64,
}

pub(crate) fn stage(req: &NodeStageVolumeRequest) -> Result<Stage, NodeError> {
    require("volume_id", &req.volume_id)?;
    let staging_path = path("staging_target_path", &req.staging_target_path)?;
    let (access, mode_read_only) = capability(req.volume_capability.as_ref())?;
    let flag_read_only = matches!(&access, Access::Mount { mount_flags, .. } if words(mount_flags).any(|w| w == "ro"));
    let attach = RbdAttach::from_map(&req.volume_context).map_err(|e| invalid(context_field(e.key), e.reason))?;
    let volume = volume_id(&req.volume_id)?;
    if let Some(key) = attach.rbd_only_key()
        && volume.backend() != swell_storage::rbd_volume::KIND
    {
        return Err(invalid("volume_context", format!("{key} applies to rbd volumes only, not {}", volume.backend())));
    }
    let key_from = match req.volume_context.get(rbd_attach::KEY_FROM_KEY) {
        None => None,
        Some(_) if !attach.encrypted => return Err(invalid(KEY_FROM_FIELD, "names a key's source for a volume that is not encrypted")),
        Some(source) => Some(source.parse::<VolumeId>().map_err(|e| invalid(KEY_FROM_FIELD, format!("{source:?} is not a volume id: {e}")))?),
    };
    let kek = if attach.encrypted { Some(kek(&req.secrets)?) } else { None };
    Ok(Stage { volume, staging_path, access, read_only: mode_read_only || flag_read_only, attach, kek, key_from })
}

const KEY_FROM_FIELD: &str = "volume_context.encryptionKeyFrom";

/// The KEK an encrypted volume's node-stage Secret holds.
fn kek(secrets: &std::collections::HashMap<String, String>) -> Result<Kek, NodeError> {
    let Some(value) = secrets.get(crypt_key::SECRET_KEY) else {
        return Err(invalid(
            "secrets",
            format!("the volume is encrypted and the node-stage secret has no {} (csi.storage.k8s.io/node-stage-secret-name)", crypt_key::SECRET_KEY),
        ));
    };
    Kek::from_secret(value.as_bytes()).map_err(|reason| invalid("secrets", reason))
}

/// The volume context field an attach key is, as errors name it.
fn context_field(key: &str) -> &'static str {
    match key {
        rbd_attach::MOUNTER_KEY => "volume_context.mounter",
        rbd_attach::ENCRYPTED_KEY => "volume_context.encrypted",
        _ => "volume_context.mapOptions",
    }
}

pub(crate) fn unstage(req: &NodeUnstageVolumeRequest) -> Result<Unstage, NodeError> {
    require("volume_id", &req.volume_id)?;
    let staging_path = path("staging_target_path", &req.staging_target_path)?;
    Ok(Unstage { volume: volume_id(&req.volume_id)?, staging_path })
}

pub(crate) fn publish(req: &NodePublishVolumeRequest) -> Result<Publish, NodeError> {
    require("volume_id", &req.volume_id)?;
    let target_path = path("target_path", &req.target_path)?;
    let (access, mode_read_only) = capability(req.volume_capability.as_ref())?;
    let staging_path = path("staging_target_path", &req.staging_target_path)?;
    let read_only = req.readonly || mode_read_only;
    Ok(Publish { volume: volume_id(&req.volume_id)?, staging_path, target_path, access, read_only })
}

pub(crate) fn unpublish(req: &NodeUnpublishVolumeRequest) -> Result<Unpublish, NodeError> {
    require("volume_id", &req.volume_id)?;
    let target_path = path("target_path", &req.target_path)?;
    Ok(Unpublish { volume: volume_id(&req.volume_id)?, target_path })
}

pub(crate) fn stats(req: &NodeGetVolumeStatsRequest) -> Result<Stats, NodeError> {
    require("volume_id", &req.volume_id)?;
    require("volume_path", &req.volume_path)?;
    Ok(Stats { volume: volume_id(&req.volume_id)?, volume_path: PathBuf::from(&req.volume_path) })
}

pub(crate) fn expand(req: &NodeExpandVolumeRequest) -> Result<Expand, NodeError> {
    require("volume_id", &req.volume_id)?;
    require("volume_path", &req.volume_path)?;
    let range = req.capacity_range.unwrap_or_default();
    let required_bytes = u64::try_from(range.required_bytes).map_err(|_| invalid("capacity_range.required_bytes", "negative"))?;
    let limit_bytes = u64::try_from(range.limit_bytes).map_err(|_| invalid("capacity_range.limit_bytes", "negative"))?;
    if limit_bytes != 0 && required_bytes > limit_bytes {
        return Err(invalid("capacity_range", format!("required_bytes {required_bytes} exceeds limit_bytes {limit_bytes}")));
    }
    Ok(Expand { volume: volume_id(&req.volume_id)?, volume_path: PathBuf::from(&req.volume_path), required_bytes, limit_bytes })
}

fn invalid(field: &'static str, reason: impl Into<String>) -> NodeError {
    NodeError::InvalidArgument { field, reason: reason.into() }
}

fn require(field: &'static str, value: &str) -> Result<(), NodeError> {
    if value.is_empty() { Err(invalid(field, "missing")) } else { Ok(()) }
}

/// An absolute path without `..`; these paths are mounted over and removed.
fn path(field: &'static str, value: &str) -> Result<PathBuf, NodeError> {
    require(field, value)?;
    let p = Path::new(value);
    if !p.is_absolute() {
        return Err(invalid(field, format!("{value:?} is not absolute")));
    }
    if p.components().any(|c| c == Component::ParentDir) || value.contains('\0') {
        return Err(invalid(field, format!("{value:?} contains '..' or a NUL byte")));
    }
    Ok(p.to_path_buf())
}

/// The access type, and whether the access mode is read-only.
fn capability(cap: Option<&VolumeCapability>) -> Result<(Access, bool), NodeError> {
    let cap = cap.ok_or_else(|| invalid("volume_capability", "missing"))?;
    let mode = cap.access_mode.ok_or_else(|| invalid("volume_capability.access_mode", "missing"))?;
    let read_only = match Mode::try_from(mode.mode) {
        Ok(mode) => match single_node_access(mode) {
            Some(read_only) => read_only,
            None => return Err(invalid("volume_capability.access_mode", format!("{} is not supported", mode.as_str_name()))),
        },
        Err(_) => return Err(invalid("volume_capability.access_mode", format!("unknown mode {}", mode.mode))),
    };
    let access = match &cap.access_type {
        None => return Err(invalid("volume_capability.access_type", "missing (block or mount)")),
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(m)) => {
            let fs_type = m.fs_type.parse::<FsType>().map_err(|reason| invalid("volume_capability.mount.fs_type", reason))?;
            if let Some(word) = words(&m.mount_flags).find(|w| !fs_type.allows_mount_option(w)) {
                let reason = format!("{word:?} is not allowed on {fs_type} (docs/security.md lists the mount options Swell passes on)");
                return Err(invalid("volume_capability.mount.mount_flags", reason));
            }
            Access::Mount { fs_type, mount_flags: m.mount_flags.clone() }
        }
    };
    Ok((access, read_only))
}

/// The words of mount flags, each flag split at its commas.
pub(crate) fn words(flags: &[String]) -> impl Iterator<Item = &str> {
    flags.iter().flat_map(|f| f.split(',')).map(str::trim).filter(|w| !w.is_empty())
}

fn volume_id(value: &str) -> Result<VolumeId, NodeError> {
    value.parse().map_err(|e: swell_storage::volume_id::VolumeIdError| NodeError::VolumeNotFound { volume: value.to_owned(), reason: e.to_string() })
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
