//! The real [`System`]: mount(2) through `sys-mount`, umount2(2) through `nix`, the
//! loop ioctls through `loopdev` (no `mount`, `umount` or `losetup`
//! processes), sysfs for sizes and loop backing files, and
//! `swell_storage::command` for the programs no library replaces (mkfs,
//! blkid, xfs_growfs, btrfs, resize2fs, the Ceph tools).
//!
//! A syscall on a device can block in the kernel for as long as what is
//! under it is stuck (a loop device over a hung rbd-fuse file blocks in D
//! state; no signal ends that wait). So every blocking call runs on tokio's
//! blocking pool and the caller stops waiting at a deadline: the RPC answers
//! DEADLINE_EXCEEDED while the stuck thread finishes whenever the kernel lets
//! it. Nothing here holds a lock across such a wait.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loopdev::{LoopControl, LoopDevice as KernelLoop};
use swell_storage::command::{self, CommandError, Output};
use sys_mount::{Mount, MountFlags};

use nix::fcntl::OFlag;
use nix::mount::MntFlags;

use super::seam::{LoopDevice, MountCall, System};
use super::{filesystem_geometry, mount_options};
use crate::confine;
use crate::error::NodeError;
use crate::mountinfo::{self, MountEntry};

/// mount(2) of a filesystem replays its log; a sick device can stall it.
const MOUNT_DEADLINE: Duration = Duration::from_secs(30);
/// Loop ioctls touch one device; attach also opens the backing file.
const LOOP_DEADLINE: Duration = Duration::from_secs(30);
/// sysfs and mountinfo reads do not touch devices but still get a bound.
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// LOOP_CTL_GET_FREE then LOOP_SET_FD races with other attachers (EBUSY).
const ATTACH_ATTEMPTS: u32 = 8;

/// The host's mounts, loop devices and programs; with a kubelet directory,
/// mounting and unmounting at paths under it only through descriptors
/// opened beneath it (no symlink followed).
#[derive(Debug, Default, Clone)]
pub(crate) struct HostSystem {
    kubelet_dir: Option<PathBuf>,
}

impl HostSystem {
    /// Confined to `kubelet_dir`; `None` confines nothing.
    pub(crate) fn confined_to(kubelet_dir: Option<PathBuf>) -> Self {
        HostSystem { kubelet_dir }
    }

    /// Runs `ask` on a descriptor of the filesystem mounted at `mount_point`.
    async fn ask_filesystem(&self, what: &str, mount_point: &Path, ask: fn(&std::os::fd::OwnedFd) -> io::Result<u64>) -> Result<u64, NodeError> {
        let (root, path) = (self.kubelet_dir.clone(), mount_point.to_owned());
        let step = format!("{what} at {}", mount_point.display());
        blocking(step, READ_DEADLINE, move || ask(&confine::open(root.as_deref(), &path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?)).await
    }
}

/// Runs `work` on the blocking pool; the caller waits at most `deadline`.
pub(crate) async fn blocking<T: Send + 'static>(
    step: String,
    deadline: Duration,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, NodeError> {
    let context = step.clone();
    blocking_node(step, deadline, move || work().map_err(|e| NodeError::io(context, e))).await
}

/// [`blocking`] for work that names its own errors.
async fn blocking_node<T: Send + 'static>(
    step: String,
    deadline: Duration,
    work: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(work)).await {
        Err(_) => Err(NodeError::Timeout { step, after: deadline }),
        Ok(Err(join)) => Err(NodeError::WorkerFailed { step, reason: join.to_string() }),
        Ok(Ok(result)) => result,
    }
}

/// `/sys/class/block/<name>` for a device path (symlinks resolved).
fn sysfs_dir(device: &Path) -> io::Result<PathBuf> {
    let real = std::fs::canonicalize(device)?;
    let name = real.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "device path has no name"))?;
    Ok(Path::new("/sys/class/block").join(name))
}

fn read_sysfs(device: &Path, attribute: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(sysfs_dir(device)?.join(attribute))?.trim().to_owned())
}

fn attach(file: &Path) -> io::Result<PathBuf> {
    let control = LoopControl::open()?;
    let backing = std::fs::OpenOptions::new().read(true).write(true).open(file)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let device = control.next_free()?;
        // LOOP_SET_FD alone: loopdev's attach_file adds a LOOP_SET_STATUS64 with
        // nothing to set, which freezes and flushes the new device (~15 ms).
        match device.attach_fd(backing.as_raw_fd()) {
            Ok(()) => return device.path().ok_or_else(|| io::Error::other("the attached loop device has no path")),
            // Another attacher took the same free device first: take the next.
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy && attempt < ATTACH_ATTEMPTS => continue,
            Err(e) => return Err(e),
        }
    }
}

fn list_loop_devices(sys_block: &Path) -> io::Result<Vec<LoopDevice>> {
    let mut devices = Vec::new();
    for entry in std::fs::read_dir(sys_block)?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else { continue };
        // A detached loop device has no backing_file.
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else { continue };
        devices.push(LoopDevice { device: Path::new("/dev").join(name), backing_file: backing.trim_end_matches('\n').to_owned() });
    }
    Ok(devices)
}

/// The step a mount call is, for errors and timeouts.
fn mount_step(call: &MountCall) -> String {
    match call {
        MountCall::Filesystem { device, target, fs_type, .. } => format!("mount {fs_type} {} at {}", device.display(), target.display()),
        MountCall::Bind { source, target } => format!("bind {} onto {}", source.display(), target.display()),
        MountCall::RemountReadOnly { target } => format!("remount {} read-only", target.display()),
    }
}

/// mount(2) onto descriptors opened by [`confine::open`]: a path under
/// `root` that a symlink was swapped into fails to open, instead of the
/// mount landing wherever the symlink points.
async fn mount(call: MountCall, root: Option<PathBuf>) -> Result<(), NodeError> {
    let step = mount_step(&call);
    blocking_node(step.clone(), MOUNT_DEADLINE, move || {
        let root = root.as_deref();
        let open = |field, path: &Path, flags| confine::open(root, path, flags).map_err(|e| confine::error(field, step.clone(), e));
        let result = match call {
            MountCall::Filesystem { device, target, fs_type, options } => {
                let target = open("staging_target_path", &target, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
                let options = mount_options::parse(&options);
                Mount::builder().fstype(fs_type.as_str()).flags(options.flags).data(&options.data).mount(device, confine::fd_path(&target)).map(drop)
            }
            // The kernel ignores the type of a bind; naming one keeps sys-mount
            // from trying every filesystem it knows.
            MountCall::Bind { source, target } => {
                let source = open("staging_target_path", &source, OFlag::O_PATH)?;
                let target = open("target_path", &target, OFlag::O_PATH)?;
                Mount::builder().fstype("none").flags(MountFlags::BIND).mount(confine::fd_path(&source), confine::fd_path(&target)).map(drop)
            }
            MountCall::RemountReadOnly { target } => {
                let target = open("target_path", &target, OFlag::O_PATH)?;
                let flags = MountFlags::BIND | MountFlags::REMOUNT | MountFlags::RDONLY;
                Mount::builder().fstype("none").flags(flags).mount("none", confine::fd_path(&target)).map(drop)
            }
        };
        result.map_err(|e| NodeError::io(step, e))
    })
    .await
}

/// umount2(2) of the top-most mount at `target`, named through its
/// directory's descriptor and not followed if a symlink.
async fn unmount(target: &Path, lazy: bool, root: Option<PathBuf>) -> Result<(), NodeError> {
    // nix's flag: sys-mount's NOFOLLOW has O_NOFOLLOW's value, which umount2 refuses (EINVAL).
    let flags = MntFlags::UMOUNT_NOFOLLOW | if lazy { MntFlags::MNT_DETACH } else { MntFlags::empty() };
    let path = target.to_owned();
    let step = format!("unmount {}", target.display());
    blocking_node(step.clone(), MOUNT_DEADLINE, move || {
        let leaf = confine::Leaf::of(root.as_deref(), &path).map_err(|e| confine::error("target_path", step.clone(), e))?;
        nix::mount::umount2(&leaf.path(), flags).map_err(|e| NodeError::io(step, e.into()))
    })
    .await
}

#[async_trait::async_trait]
impl System for HostSystem {
    async fn mount(&self, call: MountCall) -> Result<(), NodeError> {
        mount(call, self.kubelet_dir.clone()).await
    }

    async fn unmount(&self, target: &Path, lazy: bool) -> Result<(), NodeError> {
        unmount(target, lazy, self.kubelet_dir.clone()).await
    }

    async fn mounts(&self) -> Result<Vec<MountEntry>, NodeError> {
        let text = blocking("read /proc/self/mountinfo".into(), READ_DEADLINE, || std::fs::read_to_string("/proc/self/mountinfo")).await?;
        Ok(mountinfo::parse(&text))
    }

    async fn loop_attach(&self, file: &Path) -> Result<PathBuf, NodeError> {
        let file = file.to_owned();
        blocking(format!("attach {} to a loop device", file.display()), LOOP_DEADLINE, move || attach(&file)).await
    }

    async fn loop_refresh(&self, device: &Path) -> Result<(), NodeError> {
        let path = device.to_owned();
        blocking(format!("refresh the capacity of {}", device.display()), LOOP_DEADLINE, move || KernelLoop::open(path)?.set_capacity()).await
    }

    async fn loop_detach(&self, device: &Path) -> Result<(), NodeError> {
        let path = device.to_owned();
        blocking(format!("detach loop device {}", device.display()), LOOP_DEADLINE, move || KernelLoop::open(path)?.detach()).await
    }

    async fn loop_devices(&self) -> Result<Vec<LoopDevice>, NodeError> {
        blocking("list loop devices in /sys/block".into(), READ_DEADLINE, || list_loop_devices(Path::new("/sys/block"))).await
    }

    async fn device_size(&self, device: &Path) -> Result<u64, NodeError> {
        let path = device.to_owned();
        let step = format!("read the size of {} from sysfs", device.display());
        let text = blocking(step.clone(), READ_DEADLINE, move || read_sysfs(&path, "size")).await?;
        // sysfs counts 512-byte sectors whatever the device's block size.
        text.parse::<u64>().ok().and_then(|sectors| sectors.checked_mul(512)).ok_or(NodeError::Parse { step, detail: text })
    }

    async fn xfs_data_bytes(&self, mount_point: &Path) -> Result<u64, NodeError> {
        self.ask_filesystem("read the xfs geometry", mount_point, filesystem_geometry::xfs_data_bytes).await
    }

    async fn btrfs_device_bytes(&self, mount_point: &Path) -> Result<u64, NodeError> {
        self.ask_filesystem("read the btrfs devices", mount_point, filesystem_geometry::btrfs_device_bytes).await
    }

    async fn device_numbers(&self, device: &Path) -> Result<String, NodeError> {
        let path = device.to_owned();
        blocking(format!("read the numbers of {} from sysfs", device.display()), READ_DEADLINE, move || read_sysfs(&path, "dev")).await
    }

    async fn run(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output, CommandError> {
        command::run(program, args, deadline).await
    }

    async fn run_with_secret(&self, program: &str, args: Vec<OsString>, secret: &[u8], deadline: Duration) -> Result<Output, CommandError> {
        command::run_with_secret(program, args, secret, deadline).await
    }

    async fn run_leaving_daemon(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output, CommandError> {
        command::run_leaving_daemon(program, args, deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_attached_loop_devices_from_sysfs() {
        let sys = tempfile::tempdir().expect("temp dir");
        let add = |name: &str, backing: Option<&str>| {
            let dir = sys.path().join(name).join("loop");
            std::fs::create_dir_all(&dir).expect("mkdir");
            if let Some(b) = backing {
                std::fs::write(dir.join("backing_file"), format!("{b}\n")).expect("write");
            }
        };
        add("loop0", Some("/var/lib/swell/rbd-fuse/c/rbd/img"));
        add("loop1", None); // detached
        add("loop3", Some("/var/lib/swell/rbd-fuse/c/rbd/img (deleted)"));
        add("sda", Some("/not/a/loop"));
        let mut found = list_loop_devices(sys.path()).expect("scan");
        found.sort_by(|a, b| a.device.cmp(&b.device));
        let expected = [("/dev/loop0", "/var/lib/swell/rbd-fuse/c/rbd/img"), ("/dev/loop3", "/var/lib/swell/rbd-fuse/c/rbd/img (deleted)")]
            .map(|(device, backing_file)| LoopDevice { device: device.into(), backing_file: backing_file.into() });
        assert_eq!(found, expected);
    }

    fn mounted(path: &Path) -> bool {
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        mountinfo::find(&mountinfo::parse(&text), path).is_some()
    }

    /// tmpfs as a filesystem mount call: no device needed.
    fn tmpfs(target: &Path) -> MountCall {
        MountCall::Filesystem { device: "tmpfs".into(), target: target.to_owned(), fs_type: "tmpfs".into(), options: Vec::new() }
    }

    #[tokio::test]
    async fn mounts_and_unmounts_under_the_kubelet_dir_go_through_descriptors_and_land_there() {
        if !crate::fixture::root_or_skip("mounts_and_unmounts_under_the_kubelet_dir_go_through_descriptors_and_land_there") {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let kubelet = std::fs::canonicalize(dir.path()).expect("resolve").join("kubelet");
        let (staging, target) = (kubelet.join("plugins/staging"), kubelet.join("pods/p/vol"));
        std::fs::create_dir_all(&staging).expect("mkdir");
        std::fs::create_dir_all(&target).expect("mkdir");
        let host = HostSystem::confined_to(Some(kubelet));
        host.mount(tmpfs(&staging)).await.expect("mount");
        std::fs::write(staging.join("data"), b"staged").expect("write");
        host.mount(MountCall::Bind { source: staging.clone(), target: target.clone() }).await.expect("bind");
        host.mount(MountCall::RemountReadOnly { target: target.clone() }).await.expect("remount");
        assert!(mounted(&staging) && mounted(&target), "mountinfo shows both at their own paths");
        assert_eq!(std::fs::read(target.join("data")).expect("read"), b"staged");
        assert!(std::fs::write(target.join("more"), b"x").is_err(), "the bind is read-only");
        host.unmount(&target, false).await.expect("unmount");
        host.unmount(&staging, true).await.expect("lazy unmount (MNT_DETACH), as for a FUSE mount whose daemon is gone");
        assert!(!mounted(&staging) && !mounted(&target));
    }

    #[tokio::test]
    async fn a_pod_directory_swapped_for_a_symlink_after_the_path_check_gets_no_mount_and_unmounts_nothing_outside() {
        if !crate::fixture::root_or_skip("a_pod_directory_swapped_for_a_symlink_after_the_path_check_gets_no_mount_and_unmounts_nothing_outside") {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let root = std::fs::canonicalize(dir.path()).expect("resolve");
        let (kubelet, elsewhere) = (root.join("kubelet"), root.join("elsewhere"));
        let (pod, staging) = (kubelet.join("pods/p"), kubelet.join("plugins/staging"));
        for made in [&pod.join("vol"), &staging, &elsewhere.join("vol"), &elsewhere.join("mounted")] {
            std::fs::create_dir_all(made).expect("mkdir");
        }
        let host = HostSystem::confined_to(Some(kubelet.clone()));
        host.mount(tmpfs(&staging)).await.expect("mount");
        // A mount outside that is not Swell's to touch.
        HostSystem::default().mount(tmpfs(&elsewhere.join("mounted"))).await.expect("mount");
        for leaf in ["vol", "mounted"] {
            crate::confine::confined("target_path", &pod.join(leaf), Some(&kubelet)).await.expect("the request's check passes");
        }
        // The race: after the check, before the act.
        std::fs::rename(&pod, root.join("old-pod")).expect("move");
        std::os::unix::fs::symlink(&elsewhere, &pod).expect("symlink");

        let calls = [
            tmpfs(&pod.join("vol")),
            MountCall::Bind { source: staging.clone(), target: pod.join("vol") },
            MountCall::RemountReadOnly { target: pod.join("mounted") },
        ];
        for call in calls {
            let err = host.mount(call.clone()).await.expect_err("through a symlink");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{call:?}: {err}");
        }
        assert!(!mounted(&elsewhere.join("vol")), "a mount landed outside the kubelet dir");
        let err = host.unmount(&pod.join("mounted"), false).await.expect_err("through a symlink");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(mounted(&elsewhere.join("mounted")), "a mount outside the kubelet dir was unmounted");
        let writable = std::fs::write(elsewhere.join("mounted/file"), b"x");
        HostSystem::default().unmount(&elsewhere.join("mounted"), false).await.expect("clean up");
        host.unmount(&staging, false).await.expect("clean up");
        assert!(writable.is_ok(), "the mount outside was made read-only");
    }
}
