//! Pure size decisions: what a create allocates, whether a volume found
//! under the requested name fits, and what an expansion does. Kept free of
//! I/O so the hard cases are plain unit tests.

use csi_endpoint::capabilities::min_fs_bytes;
use csi_proto::v1::VolumeCapability;
use csi_proto::v1::volume_capability::AccessType;
use swell_storage::VolumeInfo;
use swell_storage::units::{GIB, MIB};

use crate::error::ControllerError;
use crate::validate::SizeRange;

/// What CreateVolume allocates when the request names no size.
pub(crate) const DEFAULT_VOLUME_BYTES: u64 = GIB;
/// The finest size a loop device and every supported filesystem accept.
const SECTOR_ALIGN: u64 = 4096;

/// Why a size cannot be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SizeError {
    /// No aligned size fits between required and limit.
    #[error("no size aligned to {SECTOR_ALIGN} bytes lies between required {required} and limit {limit}")]
    NoAlignedFit {
        /// Lower bound.
        required: u64,
        /// Upper bound.
        limit: u64,
    },
    /// The volume is already larger than the caller's limit.
    #[error("volume is already {current} bytes, above limit_bytes {limit}; volumes never shrink")]
    AboveLimit {
        /// Its size now.
        current: u64,
        /// The limit asked for.
        limit: u64,
    },
    /// A volume made from a source cannot be smaller than the source.
    #[error("the source holds {source_bytes} bytes, more than the {asked} bytes asked for; a volume made from it cannot be smaller")]
    SmallerThanSource {
        /// The source's size.
        source_bytes: u64,
        /// The size (required, or limit) asked for.
        asked: u64,
    },
    /// The pool cannot give the extra bytes.
    #[error("growing by {needed} bytes needs more than the {available} bytes the pool can still give")]
    NoRoom {
        /// Extra bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
}

fn round_up(value: u64, align: u64) -> Option<u64> {
    value.checked_next_multiple_of(align)
}

/// The size to allocate for `range`: `required` rounded up to a MiB, or to
/// 4 KiB when a MiB would pass the limit.
pub(crate) fn allocation(range: SizeRange) -> Result<u64, SizeError> {
    let required = range.required.unwrap_or_else(|| range.limit.map_or(DEFAULT_VOLUME_BYTES, |l| l.min(DEFAULT_VOLUME_BYTES)));
    let limit = range.limit.unwrap_or(u64::MAX);
    [MIB, SECTOR_ALIGN]
        .into_iter()
        .filter_map(|align| round_up(required.max(1), align))
        .find(|size| *size <= limit)
        .ok_or(SizeError::NoAlignedFit { required, limit })
}

/// The range a create allocates for: `required` raised to the smallest
/// volume every requested filesystem can be made on (the spec lets a volume
/// be larger than required), so a small mount volume is never created
/// unstageable. OUT_OF_RANGE when `limit` leaves no room for that minimum.
/// Block capabilities have no filesystem and leave the range as asked.
pub(crate) fn formattable_range(name: &str, caps: &[VolumeCapability], range: SizeRange) -> Result<SizeRange, ControllerError> {
    let needed = caps.iter().filter_map(|cap| match &cap.access_type {
        Some(AccessType::Mount(mount)) => Some(mount.fs_type.as_str()),
        _ => None,
    });
    let Some((fs, min)) = needed.map(|fs| (fs, min_fs_bytes(fs))).max_by_key(|(_, min)| *min) else { return Ok(range) };
    if let Some(limit) = range.limit.filter(|limit| *limit < min) {
        let fs = if fs.is_empty() { "xfs" } else { fs };
        return Err(ControllerError::OutOfRange(format!("volume {name:?}: {fs} needs at least {min} bytes; limit_bytes {limit} leaves no room for it")));
    }
    Ok(SizeRange { required: range.required.map(|required| required.max(min)), limit: range.limit })
}

/// The size of a volume made from a source of `source_bytes` (a snapshot or
/// a volume): the source's size when the request names none, the request's
/// (rounded as [`allocation`] does) when it is larger; a request for less
/// than the source is refused.
pub(crate) fn allocation_from_source(range: SizeRange, source_bytes: u64) -> Result<u64, SizeError> {
    if let Some(asked) = range.required.or(range.limit).filter(|asked| *asked < source_bytes) {
        return Err(SizeError::SmallerThanSource { source_bytes, asked });
    }
    match range.required {
        Some(required) if required > source_bytes => allocation(range),
        _ => Ok(source_bytes),
    }
}

/// What ControllerExpandVolume does, given the volume's size read fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expansion {
    /// Already at least the required size: answer with the current size.
    AlreadyDone {
        /// The size now.
        current: u64,
    },
    /// Grow the volume to `target`.
    Grow {
        /// The size now.
        current: u64,
        /// The size to grow to.
        target: u64,
    },
}

/// Decides an expansion. `required` comes from a validated range; `available`
/// is the pool's room, read fresh.
pub(crate) fn plan_expansion(current: u64, range: SizeRange, available: u64) -> Result<Expansion, SizeError> {
    if let Some(limit) = range.limit.filter(|limit| current > *limit) {
        return Err(SizeError::AboveLimit { current, limit });
    }
    let required = range.required.unwrap_or(current);
    if current >= required {
        return Ok(Expansion::AlreadyDone { current });
    }
    let target = allocation(SizeRange { required: Some(required), limit: range.limit })?;
    let needed = target - current;
    if needed > available {
        return Err(SizeError::NoRoom { needed, available });
    }
    Ok(Expansion::Grow { current, target })
}

/// ALREADY_EXISTS unless `existing`, found under the requested name, fits `range`.
pub(crate) fn check_compatible(existing: &VolumeInfo, range: SizeRange) -> Result<(), ControllerError> {
    let too_small = range.required.is_some_and(|r| existing.size_bytes < r);
    let too_big = range.limit.is_some_and(|l| existing.size_bytes > l);
    if too_small || too_big {
        return Err(ControllerError::AlreadyExists {
            name: existing.name.clone(),
            id: existing.id.clone(),
            existing: existing.size_bytes,
            reason: format!("capacity range required={:?} limit={:?}", range.required, range.limit),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use swell_storage::units::GIB;

    fn range(required: Option<u64>, limit: Option<u64>) -> SizeRange {
        SizeRange { required, limit }
    }

    #[test]
    fn a_limit_below_what_the_filesystem_needs_is_out_of_range() {
        use csi_proto::v1::volume_capability::access_mode::Mode;
        let cap = |fs| crate::validate::tests::cap(Mode::SingleNodeWriter, fs);
        let err = formattable_range("v", &[cap(Some("xfs"))], range(Some(8 << 10), Some(8 << 10))).unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::OutOfRange);
        assert!(formattable_range("v", &[cap(Some(""))], range(None, Some(299 * MIB))).is_err(), "xfs is the default");
        assert!(formattable_range("v", &[cap(Some("btrfs"))], range(None, Some(109 * MIB))).is_err());
        assert!(formattable_range("v", &[cap(Some("ext4")), cap(Some("xfs"))], range(None, Some(8 * MIB))).is_err(), "every capability counts");
        assert_eq!(formattable_range("v", &[cap(Some("ext4"))], range(None, Some(8 * MIB))).unwrap(), range(None, Some(8 * MIB)));
        assert_eq!(formattable_range("v", &[cap(Some("xfs"))], range(None, Some(300 * MIB))).unwrap(), range(None, Some(300 * MIB)));
    }

    #[test]
    fn a_required_size_below_what_the_filesystem_needs_is_raised_to_it() {
        use csi_proto::v1::volume_capability::access_mode::Mode;
        let cap = |fs| crate::validate::tests::cap(Mode::SingleNodeWriter, fs);
        let raised = |caps: &[VolumeCapability], asked| formattable_range("v", caps, asked).unwrap();
        assert_eq!(raised(&[cap(Some("xfs"))], range(Some(8 << 10), None)), range(Some(300 * MIB), None), "no limit: raised");
        assert_eq!(raised(&[cap(Some(""))], range(Some(64 * MIB), Some(GIB))), range(Some(300 * MIB), Some(GIB)), "the default is xfs");
        assert_eq!(raised(&[cap(Some("btrfs"))], range(Some(MIB), Some(110 * MIB))), range(Some(110 * MIB), Some(110 * MIB)));
        assert_eq!(raised(&[cap(Some("ext4"))], range(Some(8 << 10), None)), range(Some(MIB), None));
        assert_eq!(raised(&[cap(Some("xfs"))], range(Some(GIB), None)), range(Some(GIB), None), "a larger size is kept");
        assert_eq!(raised(&[cap(None)], range(Some(8 << 10), Some(8 << 10))), range(Some(8 << 10), Some(8 << 10)), "a block volume has no filesystem");
        let allocated = allocation(raised(&[cap(Some("xfs"))], range(Some(64 * MIB), None)));
        assert_eq!(allocated, Ok(300 * MIB), "what the create allocates");
    }

    #[test]
    fn allocation_rounds_up_and_honours_the_limit() {
        assert_eq!(allocation(range(None, None)), Ok(GIB));
        assert_eq!(allocation(range(None, Some(MIB))), Ok(MIB));
        assert_eq!(allocation(range(Some(GIB), None)), Ok(GIB));
        assert_eq!(allocation(range(Some(GIB + 1), None)), Ok(GIB + MIB));
        assert_eq!(allocation(range(Some(GIB + 1), Some(GIB + 8192))), Ok(GIB + 4096));
        assert_eq!(allocation(range(Some(GIB + 1), Some(GIB + 100))), Err(SizeError::NoAlignedFit { required: GIB + 1, limit: GIB + 100 }));
        assert!(allocation(range(Some(u64::MAX - 1), None)).is_err(), "overflow is an error, not a panic");
    }

    #[test]
    fn a_volume_from_a_source_is_never_smaller_and_grows_as_asked() {
        assert_eq!(allocation_from_source(range(None, None), GIB), Ok(GIB), "no size asked: the source's");
        assert_eq!(allocation_from_source(range(Some(GIB), None), GIB), Ok(GIB), "the same size: nothing extra");
        assert_eq!(allocation_from_source(range(Some(GIB), Some(GIB)), GIB), Ok(GIB));
        assert_eq!(allocation_from_source(range(Some(2 * GIB), None), GIB), Ok(2 * GIB));
        assert_eq!(allocation_from_source(range(Some(GIB + 1), None), GIB), Ok(GIB + MIB), "larger: rounded as any create");
        assert_eq!(allocation_from_source(range(None, Some(4 * GIB)), GIB), Ok(GIB));
        let smaller = SizeError::SmallerThanSource { source_bytes: GIB, asked: GIB / 2 };
        assert_eq!(allocation_from_source(range(Some(GIB / 2), None), GIB), Err(smaller.clone()));
        assert_eq!(allocation_from_source(range(None, Some(GIB / 2)), GIB), Err(smaller));
        // A source of an odd size (a local volume sized to 4 KiB) restores exactly.
        assert_eq!(allocation_from_source(range(Some(GIB + 4096), None), GIB + 4096), Ok(GIB + 4096));
    }

    #[test]
    fn a_stale_or_repeated_request_is_success_with_the_current_size() {
        assert_eq!(plan_expansion(2 * GIB, range(Some(GIB), None), 0), Ok(Expansion::AlreadyDone { current: 2 * GIB }));
        assert_eq!(plan_expansion(2 * GIB, range(Some(2 * GIB), None), 0), Ok(Expansion::AlreadyDone { current: 2 * GIB }));
    }

    #[test]
    fn growth_is_exact_for_aligned_requests() {
        assert_eq!(plan_expansion(GIB, range(Some(3 * GIB), None), 10 * GIB), Ok(Expansion::Grow { current: GIB, target: 3 * GIB }));
    }

    #[test]
    fn growth_beyond_the_pool_or_limit_is_refused() {
        assert_eq!(plan_expansion(GIB, range(Some(3 * GIB), None), GIB), Err(SizeError::NoRoom { needed: 2 * GIB, available: GIB }));
        assert_eq!(plan_expansion(3 * GIB, range(Some(GIB), Some(2 * GIB)), 0), Err(SizeError::AboveLimit { current: 3 * GIB, limit: 2 * GIB }));
    }
}
