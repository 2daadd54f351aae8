//! Turns CSI requests into typed values, or says which field is wrong.

use csi_endpoint::capabilities::{SUPPORTED_FS, single_node_access};
use csi_proto::v1::volume_capability::{AccessType, access_mode::Mode};
use csi_proto::v1::{CapacityRange, VolumeCapability};
use swell_storage::VolumeId;

use crate::error::ControllerError;

/// A capacity range with its CSI zeros turned into `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    /// At least this many bytes, if set.
    pub required: Option<u64>,
    /// At most this many bytes, if set.
    pub limit: Option<u64>,
}

/// Requires a non-empty field.
pub(crate) fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, ControllerError> {
    if value.is_empty() { Err(ControllerError::invalid(field, "must be set")) } else { Ok(value) }
}

/// Requires a volume id and parses it. A string that is not a Swell id names
/// no volume of ours, which the caller reports as it reports a missing volume.
pub(crate) fn volume_id(value: &str) -> Result<Option<VolumeId>, ControllerError> {
    required("volume_id", value)?;
    Ok(value.parse().ok())
}

/// Validates an optional capacity range.
pub(crate) fn size_range(range: Option<&CapacityRange>) -> Result<SizeRange, ControllerError> {
    let Some(range) = range else { return Ok(SizeRange { required: None, limit: None }) };
    let non_negative = |field, v: i64| u64::try_from(v).map_err(|_| ControllerError::invalid(field, format!("{v} is negative")));
    let required = non_negative("capacity_range.required_bytes", range.required_bytes)?;
    let limit = non_negative("capacity_range.limit_bytes", range.limit_bytes)?;
    if limit != 0 && required > limit {
        return Err(ControllerError::invalid("capacity_range", format!("required_bytes {required} exceeds limit_bytes {limit}")));
    }
    Ok(SizeRange { required: (required != 0).then_some(required), limit: (limit != 0).then_some(limit) })
}

/// Why a well-formed capability is not one Swell serves, or `None` when it is.
pub(crate) fn unsupported_reason(cap: &VolumeCapability) -> Option<String> {
    let mode = cap.access_mode.as_ref().map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown));
    match mode {
        Some(mode) if single_node_access(mode).is_some() => {}
        Some(other) => return Some(format!("access mode {} is not supported: Swell volumes attach to one node", other.as_str_name())),
        None => return Some("access_mode is missing".into()),
    }
    match &cap.access_type {
        Some(AccessType::Mount(mount)) if !mount.fs_type.is_empty() && !SUPPORTED_FS.contains(&mount.fs_type.as_str()) => {
            Some(format!("fs_type {:?} is not supported (supported: {})", mount.fs_type, SUPPORTED_FS.join(", ")))
        }
        _ => None,
    }
}

/// Validates that each capability is complete and supported.
pub(crate) fn capabilities(field: &'static str, caps: &[VolumeCapability]) -> Result<(), ControllerError> {
    if caps.is_empty() {
        return Err(ControllerError::invalid(field, "at least one capability is required"));
    }
    caps.iter().try_for_each(|cap| capability(field, cap))
}

/// Validates one capability: the access type and mode must be present; an
/// unsupported mode or filesystem is named.
pub(crate) fn capability(field: &'static str, cap: &VolumeCapability) -> Result<(), ControllerError> {
    if cap.access_type.is_none() {
        return Err(ControllerError::invalid(field, "access_type (mount or block) is required"));
    }
    if cap.access_mode.is_none() {
        return Err(ControllerError::invalid(field, "access_mode is required"));
    }
    match unsupported_reason(cap) {
        Some(reason) => Err(ControllerError::invalid(field, reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};

    pub(crate) fn cap(mode: Mode, fs: Option<&str>) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(match fs {
                Some(fs) => AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() }),
                None => AccessType::Block(BlockVolume {}),
            }),
        }
    }

    #[test]
    fn capacity_ranges() {
        let r = |req, lim| size_range(Some(&CapacityRange { required_bytes: req, limit_bytes: lim }));
        assert_eq!(r(0, 0).unwrap(), SizeRange { required: None, limit: None });
        assert_eq!(r(5, 10).unwrap(), SizeRange { required: Some(5), limit: Some(10) });
        assert!(r(11, 10).unwrap_err().to_string().contains("exceeds limit_bytes"));
        assert!(r(-1, 0).unwrap_err().to_string().contains("required_bytes"));
        assert!(r(0, -1).unwrap_err().to_string().contains("limit_bytes"));
        assert_eq!(size_range(None).unwrap(), SizeRange { required: None, limit: None });
    }

    #[test]
    fn capabilities_must_be_complete_and_single_node() {
        assert!(capabilities("volume_capabilities", &[]).is_err());
        assert!(capability("c", &cap(Mode::SingleNodeWriter, Some("xfs"))).is_ok());
        assert!(capability("c", &cap(Mode::SingleNodeReaderOnly, None)).is_ok());
        assert!(capability("c", &cap(Mode::SingleNodeWriter, Some(""))).is_ok(), "empty fs_type means the default");
        let multi = capability("c", &cap(Mode::MultiNodeMultiWriter, Some("xfs"))).unwrap_err();
        assert!(multi.to_string().contains("MULTI_NODE_MULTI_WRITER"), "{multi}");
        assert!(capability("c", &cap(Mode::SingleNodeWriter, Some("zfs"))).unwrap_err().to_string().contains("zfs"));
        let no_type = VolumeCapability { access_type: None, ..cap(Mode::SingleNodeWriter, None) };
        assert!(capability("c", &no_type).unwrap_err().to_string().contains("access_type"));
        let no_mode = VolumeCapability { access_mode: None, ..cap(Mode::SingleNodeWriter, None) };
        assert!(capability("c", &no_mode).unwrap_err().to_string().contains("access_mode"));
    }

    #[test]
    fn ids_that_are_not_ours_are_reported_as_absent_not_invalid() {
        assert!(volume_id("").is_err());
        assert_eq!(volume_id("some-fake-id").unwrap(), None);
        assert!(volume_id("local:abc").unwrap().is_some());
    }
}
