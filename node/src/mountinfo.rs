//! A pure parser for `/proc/self/mountinfo`, the kernel's own account of
//! what is mounted where. Pure so its edge cases (escaped spaces, optional
//! fields, bind mounts of single files) are unit-tested without root.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted filesystem's device.
    pub major_minor: String,
    /// The path inside that filesystem which is mounted (`/` for a whole
    /// fs, `/loop0` for a device node bind-mounted from devtmpfs).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, `nosuid`, ...).
    pub options: Vec<String>,
    /// The filesystem type.
    pub fs_type: String,
    /// The mount source (device path or a name).
    pub source: String,
}

impl MountEntry {
    /// Whether this mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Parses mountinfo text; malformed lines are skipped, never a panic.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The top-most mount at `path`, if any (later lines stack on earlier ones).
pub fn find<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // id parent major:minor root mount_point options [optional...] - fstype source super_options
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let _id = left.next()?;
    let _parent = left.next()?;
    let major_minor = left.next()?.to_owned();
    let root = PathBuf::from(unescape(left.next()?));
    let mount_point = PathBuf::from(unescape(left.next()?));
    // The kernel writes absolute paths: anything else (an empty field
    // between two spaces) is a malformed line, never a mount at "".
    if !mount_point.is_absolute() {
        return None;
    }
    let options = left.next()?.split(',').map(str::to_owned).collect();
    let mut right = right.split(' ');
    let fs_type = unescape(right.next()?);
    let source = unescape(right.next()?);
    Some(MountEntry { major_minor, root, mount_point, options, fs_type, source })
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'))) {
            Some(value) if value <= 0xff => {
                out.push(value as u8);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
97 22 7:0 / /var/lib/kubelet/plugins/staging/pv\\0401 rw,relatime shared:50 - xfs /dev/loop0 rw,attr2\n\
98 22 7:0 / /var/lib/kubelet/pods/p/volumes/vol ro,relatime shared:50 - xfs /dev/loop0 rw,attr2\n\
99 22 0:5 /loop1 /var/lib/kubelet/pods/p/dev/blk rw,nosuid master:2 - devtmpfs udev rw,size=1000k\n\
100 22 0:44 / /mnt/tab\\011and\\134back rw - tmpfs tmpfs rw\n\
not a mountinfo line\n";

    #[test]
    fn parses_fields_and_optional_tags() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 5, "the malformed line is skipped");
        let staged = &entries[1];
        assert_eq!(staged.major_minor, "7:0");
        assert_eq!(staged.fs_type, "xfs");
        assert_eq!(staged.source, "/dev/loop0");
        assert!(!staged.read_only());
        assert!(entries[2].read_only());
    }

    #[test]
    fn unescapes_spaces_tabs_and_backslashes() {
        let entries = parse(SAMPLE);
        assert_eq!(entries[1].mount_point, Path::new("/var/lib/kubelet/plugins/staging/pv 1"));
        assert_eq!(entries[4].mount_point, Path::new("/mnt/tab\tand\\back"));
        assert_eq!(unescape("a\\04"), "a\\04", "a truncated escape is kept as is");
        assert_eq!(unescape("\\999"), "\\999");
    }

    #[test]
    fn finds_the_top_most_mount_and_block_binds() {
        let mut entries = parse(SAMPLE);
        let blk = find(&entries, Path::new("/var/lib/kubelet/pods/p/dev/blk")).map(|e| e.root.clone());
        assert_eq!(blk, Some(PathBuf::from("/loop1")));
        assert!(find(&entries, Path::new("/nowhere")).is_none());
        let mut over = entries[0].clone();
        over.fs_type = "tmpfs".into();
        entries.push(over);
        assert_eq!(find(&entries, Path::new("/")).map(|e| e.fs_type.as_str()), Some("tmpfs"));
    }

    #[test]
    fn a_line_without_an_absolute_mount_point_is_skipped() {
        let entries = parse("99 22 0:44 /  rw - tmpfs tmpfs rw\n98 22 0:44 / mnt rw - tmpfs tmpfs rw\n");
        assert_eq!(entries, []);
    }

    #[test]
    fn survives_arbitrary_input() {
        for junk in ["", " - ", "1 2 3 - x", "\\", "1 2 3:4 / /x rw - ext4", "\u{fffd} \\0401 - a b"] {
            let _ = parse(junk);
        }
    }
}
