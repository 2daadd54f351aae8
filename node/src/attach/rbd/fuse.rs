//! The fallback attach mode for hosts without the rbd and nbd modules:
//! rbd-fuse exposes ONE image per mount as a file (`-r <image>`; in pool
//! mode it would keep every image it ever opened open, and `rbd rm` fails
//! on the watchers), and the loop helpers turn the file into a block device.
//!
//! Layout: `<state_dir>/rbd-fuse/<cluster-id>/<pool>/<image>` is the mount
//! point (0700; the pool level keeps equal image names of two pools apart),
//! the image is the file `<image>` inside it.
//!
//! Traps this module exists to avoid (measured on Ceph 16.2.15):
//! - the kernel caches a FUSE file's size for `attr_timeout` (1 s): after a
//!   resize, the loop device would re-read the old size, a silent
//!   half-expansion.
//!   The mount uses `attr_timeout=0,entry_timeout=0`, and a refresh still
//!   waits until the file shows the image's size before LOOP_SET_CAPACITY;
//! - rbd-fuse mounts even when the image is missing (an empty directory),
//!   so attach waits for the file to appear;
//! - after the unmount the daemon needs 1–2 s to close the image; until
//!   it exits the image keeps a watcher, so detach waits for it;
//! - nothing here stats a file on another FUSE mount or runs `losetup -j`
//!   or resolves a path on one (see `loop_device`): a hung rbd-fuse would
//!   block that call for good.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use swell_storage::VolumeId;

use swell_storage::RbdVolume;

use super::cluster::{Cluster, rbd_volume};
use crate::attach::Attacher;
use crate::attach::loop_device::{attach_file, detach_device};
use crate::error::NodeError;
use crate::mount;
use crate::system::{self, System};
use swell_storage::rbd_attach::MapOptions;

/// rbd-fuse connects (bounded by client_mount_timeout) before it forks.
const MOUNT_DEADLINE: Duration = Duration::from_secs(30);
/// How long the image file may take to appear in a fresh mount.
const APPEAR_DEADLINE: Duration = Duration::from_secs(15);
/// How long the FUSE file may take to show a resized image's size.
const SIZE_DEADLINE: Duration = Duration::from_secs(10);
/// One stat of the FUSE file; a hung cluster must not hang the RPC.
const STAT_DEADLINE: Duration = Duration::from_secs(5);
/// rbd-fuse needs 1–2 s to exit after the unmount (closing the image).
const EXIT_DEADLINE: Duration = Duration::from_secs(15);
/// After SIGTERM, for a daemon that did not exit on unmount.
const TERM_DEADLINE: Duration = Duration::from_secs(5);
/// A detached loop device may briefly hold the file; unmount retries.
const UNMOUNT_ATTEMPTS: u32 = 5;
const POLL: Duration = Duration::from_millis(50);

/// The mount type rbd-fuse mounts show in mountinfo.
const FS_TYPE: &str = "fuse.rbd-fuse";

/// Attaches RBD images as loop devices over rbd-fuse files.
#[derive(Debug, Clone)]
pub(crate) struct FuseAttacher {
    cluster: Cluster,
    root: PathBuf,
}

impl FuseAttacher {
    /// An attacher whose mounts live under `root` (created 0700 and made
    /// absolute here, since sysfs and mountinfo report absolute paths).
    pub(crate) fn new(cluster: Cluster, root: &Path) -> Result<Self, NodeError> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(root).map_err(|e| NodeError::io(format!("create {}", root.display()), e))?;
        let root = std::fs::canonicalize(root).map_err(|e| NodeError::io(format!("resolve {}", root.display()), e))?;
        Ok(FuseAttacher { cluster, root })
    }

    fn sys(&self) -> &dyn System {
        self.cluster.sys()
    }

    /// The mount point for `image`.
    pub(crate) fn mount_dir(&self, image: &RbdVolume) -> PathBuf {
        self.root.join(&image.pool).join(&image.image)
    }

    /// The file that is the image.
    pub(crate) fn image_file(&self, image: &RbdVolume) -> PathBuf {
        self.mount_dir(image).join(&image.image)
    }

    /// `rbd-fuse <cluster args> -p pool -r image <dir> -o attr_timeout=0,entry_timeout=0`.
    pub(crate) fn mount_args(&self, image: &RbdVolume, dir: &Path) -> Vec<OsString> {
        let mut args = self.cluster.data_path_args();
        args.extend(["-p".into(), image.pool.clone().into(), "-r".into(), image.image.clone().into(), dir.into()]);
        args.extend(["-o".into(), "attr_timeout=0,entry_timeout=0".into()]);
        args
    }

    /// Whether an rbd-fuse is mounted at `dir` (and what else might be).
    async fn mounted(&self, volume: &VolumeId, dir: &Path) -> Result<bool, NodeError> {
        match mount::mounted_at(self.sys(), dir).await? {
            None => Ok(false),
            Some(entry) if entry.fs_type == FS_TYPE => Ok(true),
            Some(entry) => {
                Err(NodeError::Conflict { volume: volume.to_string(), reason: format!("{} holds a {} mount, not rbd-fuse", dir.display(), entry.fs_type) })
            }
        }
    }

    /// Mounts rbd-fuse for `image` unless a live one is there, and waits
    /// until the image file shows up.
    async fn ensure_mounted(&self, volume: &VolumeId, image: &RbdVolume) -> Result<PathBuf, NodeError> {
        refuse_namespaced(volume, image)?;
        let dir = self.mount_dir(image);
        let file = self.image_file(image);
        if self.mounted(volume, &dir).await? {
            if !rbd_fuse_pids(&dir).is_empty() {
                wait_for_file(volume, &file).await?;
                return Ok(file);
            }
            // The daemon died under its mount (ENOTCONN): clear it, remount.
            tracing::warn!(dir = %dir.display(), "rbd-fuse mount without its daemon; remounting");
            self.detach_stale(volume, image).await?;
            unmount(self.sys(), volume, &dir, true).await?;
        } else {
            // No mount at all: a loop device may still read the image
            // through one that died with an earlier node plugin container.
            self.detach_stale(volume, image).await?;
        }
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| NodeError::io(format!("create {}", dir.display()), e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| NodeError::io(format!("chmod {}", dir.display()), e))?;
        self.sys()
            .run("rbd-fuse", self.mount_args(image, &dir), MOUNT_DEADLINE)
            .await
            .map_err(|e| NodeError::command(format!("mount rbd-fuse for image {} of volume {volume}", image.spec()), e))?;
        if let Err(error) = wait_for_file(volume, &file).await {
            // Leave no mount behind; the caller sees why.
            if let Err(e) = self.unmount_and_wait(volume, &dir).await {
                tracing::warn!(error = %e.full_message(), "unmount after a failed rbd-fuse attach");
            }
            return Err(error);
        }
        Ok(file)
    }

    /// The loop devices reading `image`'s file, through a live mount or a
    /// dead one (see [`names_image_file`]).
    async fn devices_reading(&self, image: &RbdVolume) -> Result<Vec<PathBuf>, NodeError> {
        let file = self.image_file(image);
        let mut devices: Vec<PathBuf> =
            self.sys().loop_devices().await?.into_iter().filter(|l| names_image_file(&l.backing_file, &file)).map(|l| l.device).collect();
        devices.sort();
        Ok(devices)
    }

    /// Detaches the loop devices still reading `image` through an rbd-fuse
    /// whose daemon is gone: they serve nothing any more, and a fresh attach
    /// would leave them behind for good. One still held open (a staging
    /// mount over it) goes when its last user closes it.
    async fn detach_stale(&self, volume: &VolumeId, image: &RbdVolume) -> Result<(), NodeError> {
        for device in self.devices_reading(image).await? {
            tracing::warn!(device = %device.display(), "detaching a loop device over a dead rbd-fuse");
            detach_device(self.sys(), volume, &device).await?;
        }
        Ok(())
    }

    /// Unmounts `dir` (if mounted) and waits until its rbd-fuse has exited,
    /// so the image has no watcher left; then removes the mount point.
    async fn unmount_and_wait(&self, volume: &VolumeId, dir: &Path) -> Result<(), NodeError> {
        let pids = rbd_fuse_pids(dir);
        if self.mounted(volume, dir).await? {
            unmount(self.sys(), volume, dir, false).await?;
        }
        if !wait_for_exit(&pids, EXIT_DEADLINE).await {
            tracing::warn!(?pids, dir = %dir.display(), "rbd-fuse did not exit after unmount; sending SIGTERM");
            for pid in &pids {
                // An exited process (ESRCH) is what we want anyway.
                let _ = i32::try_from(*pid).map(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM));
            }
            if !wait_for_exit(&pids, TERM_DEADLINE).await {
                return Err(NodeError::FuseStillRunning { volume: volume.to_string(), dir: dir.to_owned(), pids: pids.clone() });
            }
        }
        // Tidy only: a leftover empty directory is harmless.
        let _ = std::fs::remove_dir(dir);
        if let Some(pool_dir) = dir.parent() {
            let _ = std::fs::remove_dir(pool_dir);
        }
        Ok(())
    }
}

/// rbd-fuse (Ceph 16) takes a pool and an image and opens it in the pool's
/// default namespace: given a namespaced volume it would attach another
/// install's image of the same name.
fn refuse_namespaced(volume: &VolumeId, image: &RbdVolume) -> Result<(), NodeError> {
    if image.namespace.is_empty() {
        return Ok(());
    }
    Err(NodeError::InvalidArgument {
        field: "volume_context.mounter",
        reason: format!(
            "rbd-fuse opens images in a pool's default RADOS namespace only, and volume {volume} is in namespace {:?}: use mounter krbd or rbd-nbd",
            image.namespace
        ),
    })
}

#[async_trait::async_trait]
impl Attacher for FuseAttacher {
    async fn backing_size(&self, volume: &VolumeId) -> Result<Option<u64>, NodeError> {
        self.cluster.image_size(volume, &rbd_volume(volume)?).await
    }

    async fn attach(&self, volume: &VolumeId, _options: &MapOptions) -> Result<PathBuf, NodeError> {
        let image = rbd_volume(volume)?;
        let file = self.ensure_mounted(volume, &image).await?;
        if let Some(device) = system::loop_devices_backing(self.sys(), &file).await?.into_iter().next() {
            return Ok(device);
        }
        attach_file(self.sys(), volume, &file).await
    }

    async fn find(&self, volume: &VolumeId) -> Result<Option<PathBuf>, NodeError> {
        let image = rbd_volume(volume)?;
        Ok(system::loop_devices_backing(self.sys(), &self.image_file(&image)).await?.into_iter().next())
    }

    async fn detach(&self, volume: &VolumeId, device: Option<&Path>) -> Result<(), NodeError> {
        let image = rbd_volume(volume)?;
        let file = self.image_file(&image);
        let mut devices = self.devices_reading(&image).await?;
        // Compared as sysfs prints it, never resolved: resolving a path on
        // the FUSE mount would hang behind a hung rbd-fuse.
        if let Some(recorded) = device
            && !devices.iter().any(|d| d == recorded)
            && system::loop_backing(self.sys(), recorded).await?.is_some_and(|b| names_image_file(&b, &file))
        {
            devices.push(recorded.to_owned());
        }
        for device in &devices {
            detach_device(self.sys(), volume, device).await?;
        }
        self.unmount_and_wait(volume, &self.mount_dir(&image)).await
    }

    async fn refresh_capacity(&self, volume: &VolumeId, device: &Path) -> Result<(), NodeError> {
        let image = rbd_volume(volume)?;
        let Some(expected) = self.cluster.image_size(volume, &image).await? else {
            return Err(NodeError::VolumeNotFound { volume: volume.to_string(), reason: "its image does not exist".into() });
        };
        // The loop device reads the file's size; the file must show the
        // new size first (attribute caching), or LOOP_SET_CAPACITY is a no-op.
        let file = self.image_file(&image);
        let started = Instant::now();
        loop {
            let actual = stat_size(&file).await?;
            if actual == expected {
                break;
            }
            if started.elapsed() >= SIZE_DEADLINE {
                return Err(NodeError::RefreshTimeout { volume: volume.to_string(), device: file, expected, actual, after: SIZE_DEADLINE });
            }
            tokio::time::sleep(POLL).await;
        }
        self.sys().loop_refresh(device).await.map_err(|e| e.for_volume(volume))
    }

    async fn condition(&self, volume: &VolumeId, device: &Path) -> Result<Option<String>, NodeError> {
        let image = rbd_volume(volume)?;
        let dir = self.mount_dir(&image);
        let file = self.image_file(&image);
        if !matches!(mount::mounted_at(self.sys(), &dir).await?, Some(entry) if entry.fs_type == FS_TYPE) {
            return Ok(Some(format!("the rbd-fuse mount of volume {volume} at {} is gone", dir.display())));
        }
        if rbd_fuse_pids(&dir).is_empty() {
            return Ok(Some(format!("the rbd-fuse serving volume {volume} at {} has exited", dir.display())));
        }
        match system::loop_backing(self.sys(), device).await? {
            None => Ok(Some(format!("loop device {} of volume {volume} is detached", device.display()))),
            Some(b) if Path::new(&b) == file => Ok(None),
            Some(b) => Ok(Some(format!("loop device {} now backs {b}, not volume {volume}", device.display()))),
        }
    }
}

/// Whether sysfs's `backing` names the image file `file` of `image`: its
/// path, or `/<image>`, as the kernel prints it once the rbd-fuse mount the
/// device reads through is gone from every mount namespace (the node
/// plugin's container died, and its daemon with it): from that mount's
/// root. Image names are digests of the volume's name, so the bare name is
/// this volume's.
fn names_image_file(backing: &str, file: &Path) -> bool {
    system::names_file(backing, file, 1)
}

/// Polls until `file` exists in a fresh rbd-fuse mount.
async fn wait_for_file(volume: &VolumeId, file: &Path) -> Result<(), NodeError> {
    let started = Instant::now();
    loop {
        match tokio::time::timeout(STAT_DEADLINE, tokio::fs::metadata(file)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => return Err(NodeError::io(format!("stat {}", file.display()), e)),
            Err(_) => return Err(NodeError::Timeout { step: format!("stat {}", file.display()), after: STAT_DEADLINE }),
        }
        if started.elapsed() >= APPEAR_DEADLINE {
            return Err(NodeError::VolumeNotFound {
                volume: volume.to_string(),
                reason: format!("rbd-fuse does not show the image as {} after {APPEAR_DEADLINE:?}", file.display()),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The FUSE file's size, with a deadline.
async fn stat_size(file: &Path) -> Result<u64, NodeError> {
    match tokio::time::timeout(STAT_DEADLINE, tokio::fs::metadata(file)).await {
        Ok(Ok(meta)) => Ok(meta.len()),
        Ok(Err(e)) => Err(NodeError::io(format!("stat {}", file.display()), e)),
        Err(_) => Err(NodeError::Timeout { step: format!("stat {}", file.display()), after: STAT_DEADLINE }),
    }
}

/// Unmounts the rbd-fuse mount (lazily for a mount whose daemon is gone),
/// retried briefly: a just-detached loop device may still hold the file.
async fn unmount(sys: &dyn System, volume: &VolumeId, dir: &Path, lazy: bool) -> Result<(), NodeError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sys.unmount(dir, lazy).await {
            Ok(()) => return Ok(()),
            Err(NodeError::Io { source, .. }) if attempt < UNMOUNT_ATTEMPTS && source.kind() == std::io::ErrorKind::ResourceBusy => {
                tokio::time::sleep(POLL * 2u32.pow(attempt)).await;
            }
            Err(e) => return Err(e.for_volume(volume)),
        }
    }
}

/// Pids of rbd-fuse processes serving a mount at `dir`, from /proc.
fn rbd_fuse_pids(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| serves(&c, dir)))
        .collect()
}

/// Whether a NUL-separated command line is an rbd-fuse mounting `dir`.
fn serves(cmdline: &[u8], dir: &Path) -> bool {
    let mut args = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty());
    let is_rbd_fuse = args.next().is_some_and(|argv0| argv0.rsplit(|b| *b == b'/').next() == Some(b"rbd-fuse".as_slice()));
    let dir = dir.as_os_str().as_encoded_bytes();
    is_rbd_fuse && args.any(|a| a == dir)
}

/// Waits until none of `pids` is alive; `false` at the deadline.
async fn wait_for_exit(pids: &[u32], deadline: Duration) -> bool {
    let started = Instant::now();
    loop {
        if pids.iter().all(|pid| exited(*pid)) {
            return true;
        }
        if started.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `pid` has exited. A detached rbd-fuse is re-parented to the
/// init of its PID namespace: in a pod that is swell-node itself (the
/// container's PID 1), so it is reaped here, or it stays a zombie whose
/// /proc entry never goes (every unstage then failed once under kubelet).
fn exited(pid: u32) -> bool {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    if let Ok(raw) = i32::try_from(pid) {
        match waitpid(nix::unistd::Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) => return true,
            // ECHILD: another process's child, judged by /proc below.
            Err(_) => {}
        }
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| is_zombie(&stat))
}

/// Whether a /proc/<pid>/stat line shows a zombie (state `Z`, after the
/// command name, which may hold spaces and parentheses).
fn is_zombie(stat: &str) -> bool {
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_storage::CephAccess;

    #[tokio::test]
    async fn an_exited_child_nobody_waited_for_counts_as_exited() {
        // As an orphaned rbd-fuse is swell-node's child when swell-node is PID 1:
        // never waited for by whoever started it.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("true").spawn().expect("spawn true");
        assert!(wait_for_exit(&[child.id()], Duration::from_secs(5)).await, "a zombie child was taken for a running rbd-fuse");
        assert!(!Path::new(&format!("/proc/{}", child.id())).exists(), "the child was not reaped");
    }

    #[tokio::test]
    async fn a_running_process_has_not_exited() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        assert!(!wait_for_exit(&[child.id()], Duration::from_millis(300)).await);
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
    }

    #[test]
    fn a_zombie_is_read_from_the_state_after_the_command_name() {
        assert!(is_zombie("61 (rbd-fuse) Z 1 61 61 0 -1"));
        assert!(!is_zombie("61 (rbd-fuse) S 1 61 61 0 -1"));
        assert!(!is_zombie("62 (a) Z) S 1 62"));
        assert!(!is_zombie("garbage"));
    }

    fn attacher(root: &Path) -> FuseAttacher {
        let config =
            CephAccess { cluster_id: "ceph-a".into(), ceph_conf: "/etc/ceph/a.conf".into(), keyring: "/etc/ceph/a.keyring".into(), user: "swell".into() };
        let cluster = Cluster::new(config, std::sync::Arc::new(crate::system::HostSystem::default()));
        FuseAttacher::new(cluster, root).expect("attacher")
    }

    #[test]
    fn one_private_mount_per_image_with_attribute_caching_off() {
        let state = tempfile::tempdir().expect("temp dir");
        let root = state.path().join("rbd-fuse/ceph-a");
        let fuse = attacher(&root);
        let mode = std::fs::metadata(&root).expect("root exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let image = RbdVolume::for_name("ceph-a", "rbd", "pvc-1").unwrap();
        let root = std::fs::canonicalize(&root).expect("resolve");
        let name = &image.image;
        assert_eq!(fuse.mount_dir(&image), root.join("rbd").join(name));
        assert_eq!(fuse.image_file(&image), root.join("rbd").join(name).join(name));
        let args: Vec<String> = fuse.mount_args(&image, &fuse.mount_dir(&image)).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args.join(" "),
            format!(
                "-c /etc/ceph/a.conf --id swell --keyring /etc/ceph/a.keyring --client-mount-timeout 10 \
                 -p rbd -r {name} {} -o attr_timeout=0,entry_timeout=0",
                root.join("rbd").join(name).display()
            )
        );
    }

    #[tokio::test]
    async fn a_namespaced_volume_is_refused_before_rbd_fuse_could_open_the_default_namespace() {
        let state = tempfile::tempdir().expect("temp dir");
        let fuse = attacher(&state.path().join("rbd-fuse/ceph-a"));
        let spaced = RbdVolume::for_name_in("ceph-a", "rbd", "team-b", "pvc-1").unwrap();
        let err = fuse.attach(&spaced.id(), &MapOptions::default()).await.expect_err("refused");
        assert!(matches!(&err, NodeError::InvalidArgument { field: "volume_context.mounter", reason } if reason.contains("team-b")), "{err:?}");
        assert!(!fuse.mount_dir(&spaced).exists(), "nothing was made for it");
    }

    #[test]
    fn recognises_the_rbd_fuse_serving_a_mount() {
        let dir = Path::new("/var/lib/swell/node/rbd-fuse/c/rbd/img");
        let ours = b"rbd-fuse\0-c\0/etc/ceph/c.conf\0-p\0rbd\0-r\0img\0/var/lib/swell/node/rbd-fuse/c/rbd/img\0-o\0attr_timeout=0\0";
        assert!(serves(ours, dir));
        let full_path = b"/usr/bin/rbd-fuse\0-r\0img\0/var/lib/swell/node/rbd-fuse/c/rbd/img\0";
        assert!(serves(full_path, dir));
        let other_mount = b"rbd-fuse\0-r\0img\0/var/lib/swell/node/rbd-fuse/c/rbd/img2\0";
        assert!(!serves(other_mount, dir));
        let not_fuse = b"vim\0/var/lib/swell/node/rbd-fuse/c/rbd/img\0";
        assert!(!serves(not_fuse, dir));
        assert!(!serves(b"", dir));
    }
}

#[cfg(test)]
#[path = "fuse_dead_mount_tests.rs"]
mod dead_mount_tests;
