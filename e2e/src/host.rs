//! Small facts about the host the tests and the demo need: file checksums,
//! file-system sizes, loop devices, and a visible record of tests that could
//! not run here (a skip is printed and logged, never a silent pass).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Where skipped tests are logged; the test script prints this file.
pub fn skip_log() -> PathBuf {
    std::env::var_os("SWELL_SKIP_LOG").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("swell-skips.log"))
}

/// Records that `test` could not run here, and why.
pub fn note_skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Ok(mut log) = OpenOptions::new().create(true).append(true).open(skip_log()) {
        let _ = writeln!(log, "{test}: {reason}");
    }
}

/// Whether this process runs as root (loop devices and mounts need it).
pub fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    // /proc/self/status avoids an unsafe getuid call.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(u32::MAX)
}

/// SHA-256 of a file's content, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `bytes` of deterministic pseudo-random data for `seed`.
pub fn pattern(bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(bytes + 8);
    while data.len() < bytes {
        // xorshift64: fast, incompressible enough to exercise the device.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(bytes);
    data
}

/// Writes `bytes` of deterministic pseudo-random data to `path` and fsyncs.
pub fn write_pattern(path: &Path, bytes: usize, seed: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(&pattern(bytes, seed))?;
    file.sync_all()
}

/// The loop devices backed by `file`, also after it was deleted. Read from
/// sysfs: `losetup -j` stats every loop device's backing file and hangs
/// behind any one of them on a hung FUSE mount.
pub fn loop_devices_for(file: &Path) -> Vec<String> {
    let wanted = file.to_string_lossy();
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    let mut devices: Vec<String> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let backing = std::fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim_end_matches('\n');
            let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
            (name.starts_with("loop") && backing == wanted).then(|| format!("/dev/{name}"))
        })
        .collect();
    devices.sort();
    devices
}

/// Whether `path` is a mount point now (per /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Checks an unmounted filesystem without changing it (`xfs_repair -n`,
/// `btrfs check --readonly`, `e2fsck -n`): on a block device, or on an image
/// file through a read-only loop device; the tool's output when it is not clean.
pub fn check_filesystem(fs: &str, device_or_file: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(device_or_file).map_err(|e| format!("stat {}: {e}", device_or_file.display()))?;
    if !meta.file_type().is_block_device() {
        let out = Command::new("losetup").args(["--find", "--show", "--read-only"]).arg(device_or_file).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("losetup: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let checked = check_filesystem(fs, &device);
        let _ = Command::new("losetup").arg("-d").arg(&device).status();
        return checked;
    }
    let mut check = match fs {
        "xfs" => Command::new("xfs_repair"),
        "btrfs" => Command::new("btrfs"),
        _ => Command::new("e2fsck"),
    };
    match fs {
        "xfs" => check.arg("-n"),
        "btrfs" => check.args(["check", "--readonly"]),
        _ => check.args(["-f", "-n"]),
    };
    let out = check.arg(device_or_file).output().map_err(|e| format!("run the {fs} check: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{fs} check of {} failed:\n{}\n{}", device_or_file.display(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// A mounted filesystem's size as statvfs reports it (what
/// NodeGetVolumeStats reads), seen from outside the node.
pub fn statvfs_total(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stat.blocks().saturating_mul(stat.fragment_size()))
}
