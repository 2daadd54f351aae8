//! Which volume capabilities Swell serves, one rule for the controller
//! (which refuses the rest at CreateVolume and ValidateVolumeCapabilities)
//! and the node (which makes and mounts them): the filesystems the node can
//! make and grow, and the access modes of a volume attached to one node.

use csi_proto::v1::volume_capability::access_mode::Mode;

/// The filesystems the node can make and grow; the first is the default
/// when a capability names none.
pub const SUPPORTED_FS: [&str; 3] = ["xfs", "ext4", "btrfs"];

/// The smallest volume each filesystem can be made on (`""` is the
/// default, xfs), as measured with xfsprogs 6.1 (it refuses under 300 MiB)
/// and btrfs-progs 6.2 (it refuses under 109 MiB; 110 leaves a MiB for
/// other versions); mke2fs 1.47 formats 128 KiB. Checked against the real
/// programs by the node's filesystem tests.
pub fn min_fs_bytes(fs_type: &str) -> u64 {
    const MIB: u64 = 1 << 20;
    match fs_type {
        "" | "xfs" => 300 * MIB,
        "btrfs" => 110 * MIB,
        _ => MIB,
    }
}

/// The supported filesystems as messages list them: `xfs (default), ext4, btrfs`.
pub fn supported_fs_list() -> String {
    let mut names: Vec<String> = SUPPORTED_FS.iter().map(|fs| (*fs).to_owned()).collect();
    names[0].push_str(" (default)");
    names.join(", ")
}

/// Whether a volume attaches read-only under `mode`; `None` for a mode
/// Swell does not serve (its volumes attach to one node).
pub fn single_node_access(mode: Mode) -> Option<bool> {
    match mode {
        Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter => Some(false),
        Mode::SingleNodeReaderOnly => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_node_modes_are_served_and_reader_only_is_read_only() {
        assert_eq!(single_node_access(Mode::SingleNodeReaderOnly), Some(true));
        assert_eq!(single_node_access(Mode::SingleNodeWriter), Some(false));
        for multi in [Mode::MultiNodeMultiWriter, Mode::MultiNodeReaderOnly, Mode::MultiNodeSingleWriter, Mode::Unknown] {
            assert_eq!(single_node_access(multi), None, "{multi:?}");
        }
        assert_eq!(supported_fs_list(), "xfs (default), ext4, btrfs");
    }
}
