//! Which mount options a capability may ask for, per filesystem: mount(2)
//! is the kernel's, and a word it takes is a power the claim's owner gets.
//! The generic words that would undo Swell's defaults (`suid`, `dev`) are
//! not allowed, nor are options that name other devices or paths
//! (`logdev=`, `journal_path=`, `subvol=`, `context=`) or stop the host
//! (`errors=panic`). A word with a value is allowed by its key, with a
//! value of `[A-Za-z0-9._:+-]` only.

use super::FsType;

/// What every mount of a Swell volume gets unless it says otherwise: no
/// set-user-id programs and no device nodes from a tenant's filesystem.
pub(crate) const DEFAULT_OPTIONS: [&str; 2] = ["nosuid", "nodev"];

/// mount(2)'s generic words a capability may use.
const GENERIC: &[&str] = &[
    "defaults",
    "async",
    "auto",
    "noauto",
    "nouser",
    "ro",
    "rw",
    "noatime",
    "atime",
    "nodiratime",
    "diratime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "nosuid",
    "nodev",
    "noexec",
    "exec",
    "sync",
    "dirsync",
];

const XFS: &[&str] = &[
    "nouuid",
    "discard",
    "nodiscard",
    "inode32",
    "inode64",
    "largeio",
    "nolargeio",
    "noquota",
    "quota",
    "uquota",
    "usrquota",
    "uqnoenforce",
    "gquota",
    "grpquota",
    "gqnoenforce",
    "pquota",
    "prjquota",
    "pqnoenforce",
    "swalloc",
    "wsync",
    "attr2",
    "noattr2",
    "filestreams",
    "noalign",
];
const XFS_KEYS: &[&str] = &["logbufs", "logbsize", "allocsize", "biosize", "sunit", "swidth"];

const EXT4: &[&str] = &[
    "discard",
    "nodiscard",
    "barrier",
    "nobarrier",
    "user_xattr",
    "nouser_xattr",
    "acl",
    "noacl",
    "journal_checksum",
    "nojournal_checksum",
    "journal_async_commit",
    "delalloc",
    "nodelalloc",
    "dioread_nolock",
    "dioread_lock",
    "usrquota",
    "grpquota",
    "prjquota",
    "quota",
    "noquota",
    "block_validity",
    "noblock_validity",
    "auto_da_alloc",
    "noauto_da_alloc",
    "i_version",
    "nombcache",
    "noinit_itable",
    "init_itable",
];
const EXT4_KEYS: &[&str] = &["data", "commit", "stripe", "barrier", "inode_readahead_blks", "max_batch_time", "min_batch_time", "init_itable"];
/// `errors=` takes a value from this list only: `panic` would let a tenant
/// stop the node with a corrupt filesystem.
const EXT4_ERRORS: &[&str] = &["continue", "remount-ro"];

const BTRFS: &[&str] = &[
    "compress",
    "compress-force",
    "discard",
    "nodiscard",
    "ssd",
    "nossd",
    "ssd_spread",
    "nossd_spread",
    "space_cache",
    "nospace_cache",
    "autodefrag",
    "noautodefrag",
    "datacow",
    "nodatacow",
    "datasum",
    "nodatasum",
    "flushoncommit",
    "noflushoncommit",
    "barrier",
    "nobarrier",
    "acl",
    "noacl",
    "treelog",
    "notreelog",
];
const BTRFS_KEYS: &[&str] = &["compress", "compress-force", "discard", "space_cache", "commit", "thread_pool", "max_inline"];

impl FsType {
    /// Whether one mount option word (no commas) is allowed on this
    /// filesystem.
    pub(crate) fn allows_mount_option(self, word: &str) -> bool {
        let (words, keys): (&[&str], &[&str]) = match self {
            FsType::Xfs => (XFS, XFS_KEYS),
            FsType::Ext4 => (EXT4, EXT4_KEYS),
            FsType::Btrfs => (BTRFS, BTRFS_KEYS),
        };
        match word.split_once('=') {
            None => GENERIC.contains(&word) || words.contains(&word),
            Some(("errors", value)) if self == FsType::Ext4 => EXT4_ERRORS.contains(&value),
            Some((key, value)) => keys.contains(&key) && !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "._:+-".contains(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_filesystem_allows_its_own_options_and_no_dangerous_one() {
        for (fs, ok) in [
            (FsType::Xfs, &["noatime", "nouuid", "logbufs=8", "ro", "nosuid"][..]),
            (FsType::Ext4, &["data=ordered", "errors=remount-ro", "commit=30", "discard"][..]),
            (FsType::Btrfs, &["compress=zstd:3", "ssd", "space_cache=v2", "noexec"][..]),
        ] {
            for word in ok {
                assert!(fs.allows_mount_option(word), "{fs} {word}");
            }
        }
        for (fs, bad) in [
            (FsType::Xfs, &["suid", "dev", "logdev=/dev/sda", "rtdev=/dev/sdb", "data=ordered", "context=system_u:object_r:x", ""][..]),
            (FsType::Ext4, &["errors=panic", "journal_path=/dev/sda", "journal_dev=8", "nouuid", "data=ordered,suid", "commit="][..]),
            (FsType::Btrfs, &["subvol=/other", "subvolid=5", "device=/dev/sda", "compress=zstd;rm", "logbufs=8"][..]),
        ] {
            for word in bad {
                assert!(!fs.allows_mount_option(word), "{fs} {word}");
            }
        }
    }
}
