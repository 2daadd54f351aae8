//! What a node test left attached under a directory, and taking it down.
//!
//! Everything is read from mountinfo, sysfs and /proc: `losetup -j` stats
//! every loop device's backing file and hangs for good behind a loop device
//! over a hung rbd-fuse.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Mounts at or under `dir`: `(mount point, filesystem type)`, read with
/// the node's own parser.
pub fn mounts_under(dir: &Path) -> Vec<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    swell_node::mountinfo::parse(&info)
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .map(|m| (m.mount_point.to_string_lossy().into_owned(), m.fs_type))
        .collect()
}

/// Loop devices whose backing file lies under `dir`, from sysfs.
pub fn loop_devices_under(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            Path::new(backing.trim_end()).starts_with(dir).then(|| format!("/dev/{name}"))
        })
        .collect()
}

/// The device-mapper devices (a node's LUKS mappings) open over `loops`,
/// by name, from sysfs (`/sys/block/loopN/holders/dm-M/dm/name`).
pub fn mappings_over(loops: &[String]) -> Vec<String> {
    let mut names: Vec<String> = loops
        .iter()
        .filter_map(|device| std::fs::read_dir(Path::new("/sys/block").join(device.trim_start_matches("/dev/")).join("holders")).ok())
        .flat_map(|holders| holders.flatten())
        .filter_map(|holder| std::fs::read_to_string(Path::new("/sys/block").join(holder.file_name()).join("dm/name")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// rbd-fuse processes with `dir` (or a path under it) on their command line.
pub fn rbd_fuse_pids_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let dir = dir.to_string_lossy().into_owned();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            args.first().is_some_and(|a| a.ends_with("rbd-fuse")) && args.iter().any(|a| a.starts_with(&dir))
        })
        .collect()
}

fn canonical(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned())
}

/// What is still attached under `dir`: mounts, loop devices, rbd-fuse processes.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let dir = canonical(dir);
    let mut found: Vec<String> = mounts_under(&dir).into_iter().map(|(p, t)| format!("{t} mount at {p}")).collect();
    let loops = loop_devices_under(&dir);
    found.extend(mappings_over(&loops).into_iter().map(|m| format!("device-mapper mapping {m}")));
    found.extend(loops.into_iter().map(|d| format!("loop device {d}")));
    found.extend(rbd_fuse_pids_under(&dir).into_iter().map(|p| format!("rbd-fuse pid {p}")));
    found
}

/// Takes down whatever is attached under `dir`, in dependency order:
/// filesystems and binds (deepest first), LUKS mappings over the loop
/// devices under them, the loop devices, then
/// the rbd-fuse mounts the loops read, waiting for their daemons to exit
/// (an rbd-fuse that lingers keeps a watch on its image).
pub fn sweep(dir: &Path) {
    let dir = canonical(dir);
    let (mut fuse, mut others): (Vec<_>, Vec<_>) = mounts_under(&dir).into_iter().partition(|(_, t)| t.starts_with("fuse"));
    others.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (mount, _) in others {
        let _ = Command::new("umount").arg("-l").arg(&mount).status();
    }
    let loops = loop_devices_under(&dir);
    for mapping in mappings_over(&loops) {
        let _ = Command::new("cryptsetup").arg("close").arg(&mapping).status();
    }
    for device in loops {
        let _ = Command::new("losetup").arg("-d").arg(&device).status();
    }
    fuse.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (mount, _) in fuse {
        let _ = Command::new("fusermount").arg("-uz").arg(&mount).status();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !rbd_fuse_pids_under(&dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in rbd_fuse_pids_under(&dir) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
}

/// Sweeps its directory on drop, also when a test panics, so the temporary
/// directory can go and no rbd-fuse keeps watching an image.
pub struct MountSweeper(pub PathBuf);

impl Drop for MountSweeper {
    fn drop(&mut self) {
        sweep(&self.0);
    }
}
