//! A mounted filesystem's own size, asked of the filesystem through its
//! ioctls on a descriptor of its mount point: what `xfs_spaceman -c info`
//! and `btrfs filesystem show` print, without starting either program
//! (a process start is most of what a check of the size costs, and the node
//! checks before and after every grow). Struct layouts are the kernel's
//! UAPI (`xfs_fs.h`, `btrfs.h`); each is asserted to its ABI size.
//!
//! The node's one place of `unsafe` besides the Ceph FFI: an ioctl has no
//! safe form, and no maintained crate wraps these two.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;

/// `struct xfs_fsop_geom_v1`: the geometry every XFS kernel answers.
#[repr(C)]
#[derive(Default)]
struct XfsGeometryV1 {
    blocksize: u32,
    rtextsize: u32,
    agblocks: u32,
    agcount: u32,
    logblocks: u32,
    sectsize: u32,
    inodesize: u32,
    imaxpct: u32,
    datablocks: u64,
    rtblocks: u64,
    rtextents: u64,
    logstart: u64,
    uuid: [u8; 16],
    sunit: u32,
    swidth: u32,
    version: i32,
    flags: u32,
    logsectsize: u32,
    rtsectsize: u32,
    dirblocksize: u32,
}
const _: () = assert!(std::mem::size_of::<XfsGeometryV1>() == 112);

nix::ioctl_read!(xfs_geometry_v1, b'X', 100, XfsGeometryV1);

/// The data section of the XFS mounted where `dir` is open: its blocks
/// times its block size.
pub(super) fn xfs_data_bytes(dir: &OwnedFd) -> io::Result<u64> {
    let mut geometry = XfsGeometryV1::default();
    // SAFETY: the kernel writes at most size_of::<XfsGeometryV1>() bytes
    // into the struct, which lives across the call.
    unsafe { xfs_geometry_v1(dir.as_raw_fd(), &mut geometry) }?;
    geometry.datablocks.checked_mul(u64::from(geometry.blocksize)).ok_or_else(|| io::Error::other("xfs geometry overflows"))
}

/// `struct btrfs_ioctl_fs_info_args`.
#[repr(C)]
struct BtrfsFsInfo {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; 16],
    reserved: [u8; 944],
}
const _: () = assert!(std::mem::size_of::<BtrfsFsInfo>() == 1024);

/// `struct btrfs_ioctl_dev_info_args` (its fsid and padding as one field).
#[repr(C)]
struct BtrfsDevInfo {
    devid: u64,
    uuid: [u8; 16],
    bytes_used: u64,
    total_bytes: u64,
    unused: [u8; 3032],
    path: [u8; 1024],
}
const _: () = assert!(std::mem::size_of::<BtrfsDevInfo>() == 4096);

nix::ioctl_read!(btrfs_fs_info, 0x94, 31, BtrfsFsInfo);
nix::ioctl_readwrite!(btrfs_dev_info, 0x94, 30, BtrfsDevInfo);

/// The sum of the sizes the btrfs mounted where `dir` is open records for
/// its devices. Device ids run from 1 to `max_id`, with gaps where a device
/// was removed (ENODEV).
pub(super) fn btrfs_device_bytes(dir: &OwnedFd) -> io::Result<u64> {
    // SAFETY: all-zero is a valid value of these plain-integer structs.
    let mut fs: BtrfsFsInfo = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<BtrfsFsInfo>() bytes.
    unsafe { btrfs_fs_info(dir.as_raw_fd(), &mut fs) }?;
    let (mut total, mut found) = (0u64, 0u64);
    for devid in 1..=fs.max_id {
        // SAFETY: as above.
        let mut device: BtrfsDevInfo = unsafe { std::mem::zeroed() };
        device.devid = devid;
        // SAFETY: the kernel reads devid and uuid and writes at most the struct.
        match unsafe { btrfs_dev_info(dir.as_raw_fd(), &mut device) } {
            Ok(_) => {
                total = total.checked_add(device.total_bytes).ok_or_else(|| io::Error::other("btrfs device sizes overflow"))?;
                found += 1;
            }
            Err(Errno::ENODEV) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if found != fs.num_devices {
        return Err(io::Error::other(format!("btrfs lists {} devices, {found} answered", fs.num_devices)));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use crate::system::{HostSystem, MountCall, System, args};

    /// The number after `key` in a tool's output line.
    fn number_after(text: &str, line_start: &str, key: &str) -> u64 {
        let line = text.lines().find(|l| l.trim_start().starts_with(line_start)).unwrap_or_else(|| panic!("no {line_start} line in {text}"));
        let rest = &line[line.find(key).expect(key) + key.len()..];
        rest.trim_start().chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect("a number")
    }

    /// What the filesystem's own tool prints for its size: the reference
    /// the ioctls must match.
    fn tool_says(fs: &str, mount_point: &Path) -> u64 {
        let mount_point = mount_point.to_str().expect("utf-8");
        let (program, arguments, line, keys) = if fs == "xfs" {
            ("xfs_spaceman", vec!["-c", "info", mount_point], "data", &["bsize=", "blocks="][..])
        } else {
            ("btrfs", vec!["filesystem", "show", "--raw", mount_point], "devid", &[" size "][..])
        };
        // Run directly: the tool is the test's reference, not one of the node's programs.
        let out = std::process::Command::new(program).args(arguments).output().expect(program);
        assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
        let out = String::from_utf8_lossy(&out.stdout);
        keys.iter().map(|key| number_after(&out, line, key)).product()
    }

    /// Unmounts and detaches what a test made, also when it fails.
    struct Undo {
        device: PathBuf,
        mount_point: PathBuf,
    }

    impl Drop for Undo {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.mount_point, nix::mount::MntFlags::MNT_DETACH);
            let _ = loopdev::LoopDevice::open(&self.device).and_then(|d| d.detach());
        }
    }

    /// On real xfs and btrfs, mounted from loop devices, before and after
    /// an online grow: the ioctls read what the filesystems' own tools print.
    #[tokio::test]
    async fn the_ioctls_read_the_size_the_filesystems_tools_print_before_and_after_a_grow() {
        if !crate::fixture::root_or_skip("the_ioctls_read_the_size_the_filesystems_tools_print_before_and_after_a_grow") {
            return;
        }
        let Some(sys) = crate::fixture::host_with(&["mkfs.xfs", "xfs_growfs", "xfs_spaceman", "mkfs.btrfs", "btrfs"]) else { return };
        let dir = tempfile::tempdir().expect("temp dir");
        for fs in ["xfs", "btrfs"] {
            let (image, mount_point) = (dir.path().join(format!("{fs}.img")), dir.path().join(fs));
            std::fs::create_dir(&mount_point).expect("mkdir");
            let file = std::fs::File::create(&image).expect("image");
            file.set_len(320 << 20).expect("size");
            let device = sys.loop_attach(&image).await.expect("attach");
            let _undo = Undo { device: device.clone(), mount_point: mount_point.clone() };
            sys.run(&format!("mkfs.{fs}"), args(["-q", device.to_str().expect("utf-8")]), Duration::from_secs(60)).await.expect("mkfs");
            let mount = MountCall::Filesystem { device: device.clone(), target: mount_point.clone(), fs_type: fs.into(), options: Vec::new() };
            sys.mount(mount).await.expect("mount");
            let read = |sys: &HostSystem| {
                let (sys, mount_point) = (sys.clone(), mount_point.clone());
                async move { if fs == "xfs" { sys.xfs_data_bytes(&mount_point).await } else { sys.btrfs_device_bytes(&mount_point).await } }
            };
            let before = read(&sys).await.expect("ioctl");
            assert_eq!(before, tool_says(fs, &mount_point), "{fs} before the grow");
            file.set_len(640 << 20).expect("grow the file");
            sys.loop_refresh(&device).await.expect("refresh");
            let grow = if fs == "xfs" {
                vec!["xfs_growfs", mount_point.to_str().expect("utf-8")]
            } else {
                vec!["btrfs", "filesystem", "resize", "max", mount_point.to_str().expect("utf-8")]
            };
            sys.run(grow[0], args(&grow[1..]), Duration::from_secs(60)).await.expect("grow");
            let after = read(&sys).await.expect("ioctl");
            assert_eq!(after, tool_says(fs, &mount_point), "{fs} after the grow");
            assert!(after > before + (250 << 20), "{fs}: {before} → {after}");
        }
        let err = HostSystem::default().xfs_data_bytes(dir.path()).await.expect_err("not an xfs");
        assert!(err.to_string().contains("xfs geometry"), "{err}");
    }
}
