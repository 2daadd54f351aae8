//! Filesystems the node can put on a volume, behind one trait. The
//! implementation is chosen once from the requested fs type; callers never
//! branch on the kind. Each filesystem knows how to create itself, how it
//! grows (online when mounted, offline before mounting) and how big it
//! says it is.

mod btrfs;
mod ext4;
pub(crate) mod options;
mod xfs;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use csi_endpoint::capabilities::supported_fs_list;
use serde::{Deserialize, Serialize};

use crate::error::NodeError;
use crate::system::System;

/// mkfs and fsck may touch the whole device.
pub(crate) const FORMAT_DEADLINE: Duration = Duration::from_secs(60);
/// Growing or querying a filesystem.
pub(crate) const GROW_DEADLINE: Duration = Duration::from_secs(60);
/// How far short of the device a filesystem may stay and still count as
/// filling it (block and allocation-group rounding).
pub(crate) const SIZE_TOLERANCE: u64 = 1 << 20;

/// How one format (mkfs, or luksFormat) runs: the UUID it writes,
/// whether it may overwrite what an unfinished format of Swell's left
/// (`crate::format` decides), and its deadline.
#[derive(Debug, Clone)]
pub struct Format {
    /// The UUID the filesystem or LUKS header gets.
    pub(crate) uuid: String,
    /// Whether what is there (Swell's own unfinished format) is overwritten.
    pub(crate) overwrite: bool,
    /// When the program is killed.
    pub(crate) deadline: Duration,
}

impl Format {
    /// A format with a new random UUID.
    pub(crate) fn new(overwrite: bool, deadline: Duration) -> Result<Self, NodeError> {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).map_err(|e| NodeError::WorkerFailed { step: "make a filesystem UUID".into(), reason: e.to_string() })?;
        // RFC 9562 version 4 (random), variant 10.
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let uuid = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
        Ok(Format { uuid, overwrite, deadline })
    }
}

/// The filesystem kinds Swell formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// The default.
    Xfs,
    /// ext4; grows online only with CAP_SYS_RESOURCE, else offline at stage.
    Ext4,
    /// btrfs.
    Btrfs,
}

impl FsType {
    /// The default when a capability names no fs type.
    pub const DEFAULT: FsType = FsType::Xfs;

    /// The name mount and blkid use.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Xfs => "xfs",
            FsType::Ext4 => "ext4",
            FsType::Btrfs => "btrfs",
        }
    }

    /// The implementation for this kind.
    pub fn ops(self) -> &'static dyn FileSystem {
        match self {
            FsType::Xfs => &xfs::Xfs,
            FsType::Ext4 => &ext4::Ext4,
            FsType::Btrfs => &btrfs::Btrfs,
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsType {
    type Err = String;

    /// Parses a capability's fs type; empty means the default.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Ok(FsType::DEFAULT),
            "xfs" => Ok(FsType::Xfs),
            "ext4" => Ok(FsType::Ext4),
            "btrfs" => Ok(FsType::Btrfs),
            other => Err(format!("unsupported fs_type {other:?}; supported: {}", supported_fs_list())),
        }
    }
}

/// What the node does with a filesystem of one kind.
#[async_trait::async_trait]
pub trait FileSystem: Send + Sync {
    /// The kind.
    fn kind(&self) -> FsType;

    /// Creates the filesystem with `format`'s UUID, within its deadline.
    async fn mkfs(&self, sys: &dyn System, device: &Path, format: &Format) -> Result<(), NodeError>;

    /// Grows the mounted filesystem to fill its device.
    async fn grow_online(&self, sys: &dyn System, volume: &str, device: &Path, mount_point: &Path) -> Result<(), NodeError>;

    /// Grows the unmounted filesystem to fill its device if it does not
    /// already; filesystems that grow only when mounted do nothing here.
    async fn grow_offline(&self, sys: &dyn System, device: &Path, device_bytes: u64) -> Result<(), NodeError>;

    /// The size the filesystem itself reports, in bytes, while mounted.
    async fn size(&self, sys: &dyn System, device: &Path, mount_point: &Path) -> Result<u64, NodeError>;

    /// The options to mount it with: the capability's flags, plus what this
    /// filesystem needs to mount copies of itself (restores and clones) on
    /// the host of their source.
    fn mount_options(&self, flags: &[String]) -> Vec<String> {
        flags.to_vec()
    }
}

/// How long blkid may take to probe a device.
const BLKID_DEADLINE: Duration = Duration::from_secs(10);

/// What blkid finds on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probed {
    /// The filesystem's (or LUKS header's) type, as blkid names it.
    pub kind: String,
    /// Its UUID, where it has one.
    pub uuid: Option<String>,
}

/// The filesystem on a device, `None` when blank. Content blkid cannot
/// name as a filesystem (a partition table) is refused, never formatted.
pub(crate) async fn probe(sys: &dyn System, device: &Path) -> Result<Option<Probed>, NodeError> {
    let args = crate::system::args([
        Path::new("-p"),
        Path::new("-o"),
        Path::new("export"),
        Path::new("-s"),
        Path::new("TYPE"),
        Path::new("-s"),
        Path::new("UUID"),
        Path::new(crate::system::END_OF_OPTIONS),
        device,
    ]);
    match sys.run("blkid", args, BLKID_DEADLINE).await {
        Ok(out) => {
            let tag = |name: &str| out.stdout.lines().find_map(|line| line.strip_prefix(name)).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
            match tag("TYPE=") {
                Some(kind) => Ok(Some(Probed { kind, uuid: tag("UUID=") })),
                None => Err(NodeError::NotAFilesystem { device: device.to_owned() }),
            }
        }
        // blkid exits 2 when it finds nothing: a blank device.
        Err(e) if e.exit_code() == Some(2) => Ok(None),
        Err(e) => Err(NodeError::command(format!("probe {} for a filesystem", device.display()), e)),
    }
}

/// Whether a filesystem of `fs_bytes` fills a device of `device_bytes`:
/// the check made after every grow, so success is never claimed unverified.
pub(crate) fn fills_device(fs_bytes: u64, device_bytes: u64) -> bool {
    fs_bytes.saturating_add(SIZE_TOLERANCE) >= device_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The minimum CreateVolume holds each filesystem to is one its mkfs
    /// formats, and not far above what it needs: 2 MiB less is refused.
    #[tokio::test]
    async fn the_smallest_volume_allowed_per_filesystem_is_one_its_mkfs_formats() {
        const MIB: u64 = 1 << 20;
        let Some(sys) = crate::fixture::host_with(&["mkfs.xfs", "mkfs.ext4", "mkfs.btrfs"]) else { return };
        let dir = tempfile::tempdir().expect("temp dir");
        for fs in [FsType::Xfs, FsType::Ext4, FsType::Btrfs] {
            let min = csi_endpoint::capabilities::min_fs_bytes(fs.as_str());
            let image = dir.path().join(fs.as_str());
            let sized = |bytes| std::fs::File::create(&image).and_then(|f| f.set_len(bytes)).expect("sparse image");
            sized(min);
            // Overwriting, so the smaller size below, not the first format, decides.
            let format = Format::new(true, FORMAT_DEADLINE).expect("uuid");
            fs.ops().mkfs(&sys, &image, &format).await.unwrap_or_else(|e| panic!("{fs} on {min} bytes: {}", e.full_message()));
            if min > 2 * MIB {
                sized(min - 2 * MIB);
                assert!(fs.ops().mkfs(&sys, &image, &format).await.is_err(), "{fs} formats {} bytes: its minimum is lower", min - 2 * MIB);
            }
        }
    }

    /// Without `--`, each of these programs reads a device or mount point
    /// named `-V` as its version option, prints it and exits 0: a format or
    /// grow that did nothing would pass for done.
    #[tokio::test]
    async fn a_device_or_mount_point_named_like_an_option_reaches_the_programs_as_a_path() {
        let programs = ["mkfs.xfs", "xfs_growfs", "mkfs.ext4", "resize2fs", "e2fsck", "dumpe2fs", "mkfs.btrfs", "btrfs"];
        let Some(sys) = crate::fixture::host_with(&programs) else { return };
        let named_like_an_option = Path::new("-V");
        for fs in [FsType::Xfs, FsType::Ext4, FsType::Btrfs] {
            let ops = fs.ops();
            let formatted = ops.mkfs(&sys, named_like_an_option, &Format::new(true, FORMAT_DEADLINE).expect("uuid")).await;
            assert!(formatted.is_err(), "{fs}: a format of -V passed: {formatted:?}");
            let grown = ops.grow_online(&sys, "v", named_like_an_option, named_like_an_option).await;
            assert!(grown.is_err(), "{fs}: a grow of -V passed: {grown:?}");
            let grown = ops.grow_offline(&sys, named_like_an_option, 1 << 30).await;
            assert!(grown.is_err() || fs != FsType::Ext4, "{fs}: an offline grow of -V passed: {grown:?}");
            let size = ops.size(&sys, named_like_an_option, named_like_an_option).await;
            assert!(size.is_err(), "{fs}: a size of -V was read: {size:?}");
        }
        assert!(!Path::new("-V").exists(), "a program made a file named -V");
    }

    #[test]
    fn the_node_makes_exactly_the_filesystems_both_services_call_supported() {
        for name in csi_endpoint::capabilities::SUPPORTED_FS {
            assert_eq!(name.parse::<FsType>().map(FsType::as_str), Ok(name), "{name}");
        }
        assert_eq!(FsType::DEFAULT.as_str(), csi_endpoint::capabilities::SUPPORTED_FS[0], "the first listed is the default");
    }

    #[test]
    fn fs_type_is_chosen_from_the_capability() {
        assert_eq!("".parse::<FsType>(), Ok(FsType::Xfs));
        assert_eq!("xfs".parse::<FsType>(), Ok(FsType::Xfs));
        assert_eq!("ext4".parse::<FsType>(), Ok(FsType::Ext4));
        assert_eq!("btrfs".parse::<FsType>(), Ok(FsType::Btrfs));
        for bad in ["ext3", "XFS", "zfs", "nfs", " xfs"] {
            assert!(bad.parse::<FsType>().is_err(), "{bad} accepted");
        }
        for kind in [FsType::Xfs, FsType::Ext4, FsType::Btrfs] {
            assert_eq!(kind.ops().kind(), kind);
            assert_eq!(kind.as_str().parse::<FsType>(), Ok(kind));
        }
    }

    #[test]
    fn xfs_always_mounts_with_nouuid_so_a_clone_mounts_beside_its_source() {
        let words = |list: &[&str]| list.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(FsType::Xfs.ops().mount_options(&words(&["noatime"])), words(&["noatime", "nouuid"]));
        assert_eq!(FsType::Xfs.ops().mount_options(&words(&["noatime,nouuid"])), words(&["noatime,nouuid"]), "never twice");
        assert_eq!(FsType::Btrfs.ops().mount_options(&words(&["noatime"])), words(&["noatime"]), "btrfs mounts a copy by itself (temp-fsid)");
        assert_eq!(FsType::Ext4.ops().mount_options(&[]), Vec::<String>::new());
    }

    #[test]
    fn size_verification_allows_only_rounding() {
        use swell_storage::units::GIB;
        assert!(fills_device(2 * GIB, 2 * GIB));
        assert!(fills_device(2 * GIB - 4096, 2 * GIB), "block rounding");
        assert!(fills_device(2 * GIB - SIZE_TOLERANCE, 2 * GIB));
        assert!(!fills_device(2 * GIB - SIZE_TOLERANCE - 1, 2 * GIB));
        assert!(!fills_device(GIB, 2 * GIB), "an ungrown filesystem is caught");
        assert!(fills_device(u64::MAX, 1), "no overflow");
    }
}
