//! The CSI mount flags (`mount -o` words) as mount(2) takes them: the
//! generic words become `MS_*` flags, everything else (`nouuid`, `discard`,
//! `compress=zstd`...) goes to the filesystem as its data string, as the
//! `mount` program does.

use sys_mount::MountFlags;

/// Flags and the filesystem's own options for one mount(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountOptions {
    /// The generic flags.
    pub flags: MountFlags,
    /// Comma-joined options for the filesystem, empty when none.
    pub data: String,
}

/// Splits `options` (each may itself be comma-separated) into flags and
/// data. A later word wins over an earlier one (`ro` then `rw` is `rw`).
pub(crate) fn parse(options: &[String]) -> MountOptions {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for word in options.iter().flat_map(|o| o.split(',')).map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "defaults" | "async" | "auto" | "noauto" | "nouser" => {}
            "ro" => flags.insert(MountFlags::RDONLY),
            "rw" => flags.remove(MountFlags::RDONLY),
            "noatime" => flags.insert(MountFlags::NOATIME),
            "atime" => flags.remove(MountFlags::NOATIME),
            "nodiratime" => flags.insert(MountFlags::NODIRATIME),
            "diratime" => flags.remove(MountFlags::NODIRATIME),
            "relatime" => flags.insert(MountFlags::RELATIME),
            "norelatime" => flags.remove(MountFlags::RELATIME),
            "strictatime" => flags.insert(MountFlags::STRICTATIME),
            "nosuid" => flags.insert(MountFlags::NOSUID),
            "suid" => flags.remove(MountFlags::NOSUID),
            "nodev" => flags.insert(MountFlags::NODEV),
            "dev" => flags.remove(MountFlags::NODEV),
            "noexec" => flags.insert(MountFlags::NOEXEC),
            "exec" => flags.remove(MountFlags::NOEXEC),
            "sync" => flags.insert(MountFlags::SYNCHRONOUS),
            "dirsync" => flags.insert(MountFlags::DIRSYNC),
            other => data.push(other),
        }
    }
    MountOptions { flags, data: data.join(",") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn generic_words_become_flags_and_the_rest_is_data() {
        let parsed = parse(&words(&["noatime", "nouuid,nosuid", "discard", " ro "]));
        assert_eq!(parsed.flags, MountFlags::NOATIME | MountFlags::NOSUID | MountFlags::RDONLY);
        assert_eq!(parsed.data, "nouuid,discard");
        assert_eq!(parse(&[]), MountOptions { flags: MountFlags::empty(), data: String::new() });
        assert_eq!(parse(&words(&["defaults", ",,"])).data, "");
    }

    #[test]
    fn a_later_word_wins() {
        assert_eq!(parse(&words(&["ro", "rw"])).flags, MountFlags::empty());
        assert_eq!(parse(&words(&["nodev,dev,noexec"])).flags, MountFlags::NOEXEC);
        assert_eq!(parse(&words(&["compress=zstd:3", "ssd"])).data, "compress=zstd:3,ssd");
    }
}
