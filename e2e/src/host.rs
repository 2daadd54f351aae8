//! Small facts about the host the tests and the demo need: file checksums,
//! file-system sizes, loop devices, and what a test does when the machine
//! cannot run it. A test that cannot run notes a skip and returns at once (it
//! is printed, logged and left out of the totals, never a silent pass); under
//! `CI=true`, where the install step provides every package, a missing
//! program fails the test instead.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Where skipped tests are logged, one `test<TAB>reason` line each; the test script prints this file.
pub fn skip_log() -> PathBuf {
    std::env::var_os("SWELL_SKIP_LOG").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("swell-skips.log"))
}

/// Records that `test` cannot run on this machine, and why. The caller
/// returns at once: a skipped test asserts nothing.
pub fn note_skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Ok(mut log) = OpenOptions::new().create(true).append(true).open(skip_log()) {
        // One write(2) per line: tests skipping at once in other threads or
        // processes append whole lines (writeln! may split one into several
        // writes, and two skips' lines were found interleaved).
        let _ = log.write_all(format!("{test}\t{reason}\n").as_bytes());
    }
}

/// Whether this run is CI's (`CI=true`): there, what the install step
/// provides must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether `program` is a file in a directory on PATH.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

/// For a test that needs `programs`: the first one missing from PATH, as a
/// reason to skip; under CI, a missing program fails the test (panics).
pub fn missing_program(test: &str, programs: &[&str]) -> Option<String> {
    let missing = programs.iter().find(|p| !on_path(p))?;
    let reason = format!("{missing} is not installed (e2e/install-deps.sh installs it)");
    assert_not_ci(test, &reason);
    Some(reason)
}

/// Fails `test` under CI ([`in_ci`]), where the install step provides
/// what `reason` says is missing; elsewhere it returns and the test skips.
#[track_caller]
pub fn assert_not_ci(test: &str, reason: &str) {
    assert!(!in_ci(), "{test}: {reason}; under CI=true the install step must have provided it");
}

/// What this machine lacks for tests on loop devices and mounts (and FUSE,
/// with `fuse`): root, /dev/loop-control, /dev/fuse. These are skips even
/// under CI: no install step provides them.
pub fn machine_lacks(fuse: bool) -> Option<String> {
    if !is_root() {
        return Some("needs root (loop devices, mounts, Ceph daemons)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no loop devices here (/dev/loop-control is missing)".into());
    }
    if fuse && !Path::new("/dev/fuse").exists() {
        return Some("no FUSE here (/dev/fuse is missing)".into());
    }
    None
}

/// Notes a skip for `test` if the machine lacks something it needs or a
/// program is missing; `true` means the caller must return at once.
pub fn cannot_run(test: &str, fuse: bool, programs: &[&str]) -> bool {
    match machine_lacks(fuse).or_else(|| missing_program(test, programs)) {
        Some(reason) => {
            note_skip(test, &reason);
            true
        }
        None => false,
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

/// Writes `bytes` of deterministic pseudo-random data to `path` and fsyncs.
pub fn write_pattern(path: &Path, bytes: usize, seed: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(&crate::chaos::Xorshift::pattern(seed, bytes))?;
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

/// Whether `path` is a mount point now (per /proc/self/mountinfo, read
/// with the node's own parser).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    swell_node::mountinfo::find(&swell_node::mountinfo::parse(&info), path).is_some()
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

/// The size of a block device (or file) as the kernel reports it now.
pub fn device_bytes(device: &Path) -> std::io::Result<u64> {
    use std::io::Seek;
    std::fs::File::open(device)?.seek(std::io::SeekFrom::End(0))
}

/// A mounted filesystem's size as statvfs reports it (what
/// NodeGetVolumeStats reads), seen from outside the node.
pub fn statvfs_total(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stat.blocks().saturating_mul(stat.fragment_size()))
}

/// Why an encrypted-volume (LUKS2) test skips where [`lacks_dm_crypt`];
/// on e2e/allowed-skips.txt.
pub const NO_DM_CRYPT: &str = "device-mapper (dm-crypt) is not available here; the VM lane runs it";

/// Why this machine cannot open LUKS volumes, `None` when it can: the
/// device-mapper control node and cryptsetup are both needed.
pub fn lacks_dm_crypt() -> Option<&'static str> {
    (!Path::new("/dev/mapper/control").exists() || !on_path("cryptsetup")).then_some(NO_DM_CRYPT)
}

/// Why an ext4 online-grow test skips where [`online_ext4_grow_permitted`]
/// is false; on e2e/allowed-skips.txt.
pub const ONLINE_EXT4_GROW_NOT_PERMITTED: &str = "online resize2fs is not permitted here (no CAP_SYS_RESOURCE); the VM lane runs it";

/// Whether resize2fs can grow a mounted ext4 on this machine: it needs
/// CAP_SYS_RESOURCE, which some containers drop (the VM lane's guest has
/// it). Probed for real on a 64 MiB loop device under `scratch`.
pub fn online_ext4_grow_permitted(scratch: &Path) -> bool {
    fn sh(program: &str, args: &[&str]) -> Option<String> {
        let out = Command::new(program).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
    let image = scratch.join("ext4-probe.img");
    let mount_point = scratch.join("ext4-probe");
    let (img, mp) = (image.display().to_string(), mount_point.display().to_string());
    let _ = std::fs::create_dir_all(&mount_point);
    let mut works = false;
    if sh("truncate", &["-s", "64M", &img]).is_some()
        && let Some(device) = sh("losetup", &["--find", "--show", &img]).map(|d| d.trim().to_owned())
    {
        if sh("mkfs.ext4", &["-q", &device]).is_some() && sh("mount", &[&device, &mp]).is_some() {
            works = sh("truncate", &["-s", "128M", &img]).is_some() && sh("losetup", &["-c", &device]).is_some() && sh("resize2fs", &[&device]).is_some();
            let _ = Command::new("umount").arg(&mp).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&device).status();
    }
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_dir(&mount_point);
    works
}
