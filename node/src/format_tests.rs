//! A format cut off (by its deadline, a crash) is redone by the next
//! stage, over its own UUID only: on the recording fake through the whole
//! stage (plain and encrypted), and on a real loop device with the real
//! mkfs.xfs, blkid and mount.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use swell_storage::VolumeId;
use swell_storage::command::{CommandError, Output};
use swell_storage::units::MIB;
use tonic::Code;

use super::*;
use crate::fixture::{Fixture, mount};
use crate::mountinfo::MountEntry;
use crate::system::fake::{Call, FakeSystem};
use crate::system::{HostSystem, LoopDevice, MountCall};
use std::os::unix::fs::MetadataExt as _;

fn formats(sys: &FakeSystem, program: &str) -> usize {
    sys.calls().iter().filter(|c| matches!(c, Call::Run(line) if line.starts_with(program))).count()
}

/// The device the last mkfs ran on (the last word of its command line).
fn formatted_device(sys: &FakeSystem) -> PathBuf {
    let line = sys.calls().into_iter().rev().find_map(|c| match c {
        Call::Run(line) if line.starts_with("mkfs") => Some(line),
        _ => None,
    });
    PathBuf::from(line.expect("mkfs ran").rsplit(' ').next().expect("a device"))
}

/// A first stage of a new volume whose mkfs.xfs is cut off after writing
/// its superblock; the volume and the device it was attached as.
async fn cut_off_first_stage(f: &Fixture) -> (VolumeId, PathBuf) {
    let id = f.volume(1, 64 * MIB);
    std::fs::create_dir_all(f.path("staging")).expect("mkdir");
    f.sys.cut_off("mkfs.xfs");
    let err = crate::stage::stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Xfs))).await.expect_err("cut off");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(f.sys.loops().is_empty(), "mkfs was killed and reaped: nothing runs, so nothing stays attached");
    (id, formatted_device(&f.sys))
}

#[tokio::test]
async fn a_stage_whose_mkfs_was_cut_off_formats_again_and_mounts() {
    let f = Fixture::new();
    let (id, device) = cut_off_first_stage(&f).await;
    let first = f.sys.filesystem(&device).expect("the cut mkfs left a superblock");
    f.sys.clear_failures();
    f.sys.clear_calls();
    crate::stage::stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Xfs))).await.expect("the retry stages");
    assert_eq!(f.device(&id).await, device, "attached as before");
    assert_eq!(formats(&f.sys, "mkfs.xfs -q -m uuid="), 1, "formatted again: {:?}", f.sys.calls());
    assert!(f.sys.calls().iter().any(|c| matches!(c, Call::Run(line) if line.starts_with("mkfs.xfs") && line.contains(" -f "))), "over the cut one");
    let second = f.sys.filesystem(&device).expect("formatted");
    assert_ne!(second.uuid, first.uuid, "a new filesystem");
    assert!(f.sys.mounted(&f.path("staging")).is_some());
    f.sys.clear_calls();
    crate::stage::stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Xfs))).await.expect("restage");
    assert_eq!(formats(&f.sys, "mkfs"), 0, "a finished format is never redone");
}

#[tokio::test]
async fn a_filesystem_someone_else_made_after_a_cut_format_is_never_formatted() {
    let f = Fixture::new();
    let (id, device) = cut_off_first_stage(&f).await;
    // Another writer formats the volume (with a UUID of its own) meanwhile.
    f.sys.format(&device, "xfs", 64 * MIB);
    f.sys.clear_failures();
    f.sys.clear_calls();
    crate::stage::stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Xfs))).await.expect("mounts what is there");
    assert_eq!(formats(&f.sys, "mkfs"), 0, "{:?}", f.sys.calls());
    assert_eq!(f.sys.filesystem(&device).expect("kept").uuid, None, "the other writer's filesystem is untouched");
    let found = f.ctx.formats.examine(f.sys.as_ref(), &id, Layer::Filesystem(FsType::Xfs), &device).await.expect("examine");
    assert_eq!(found, Found::Holds("xfs".into()), "the stale record was dropped");
    let refused = f.ctx.formats.make(f.sys.as_ref(), &id, &device, Layer::Filesystem(FsType::Xfs), &found).await.expect_err("refused");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused}");
}

#[tokio::test]
async fn an_encrypted_volume_whose_luks_format_was_cut_off_is_formatted_again_then_opened() {
    let sys = FakeSystem::default();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = FormatLog::open(dir.path()).expect("log");
    let id: VolumeId = "rbd:c:rbd:swell-0123456789abcdef0123456789abcdef".parse().expect("id");
    let device = Path::new("/dev/rbd0");
    let key = crate::crypt::key::DataKey::generate().expect("key");
    sys.cut_off("cryptsetup luksFormat");
    let err = crate::crypt::open(&sys, &log, &id, device, &key, false).await.expect_err("cut off");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert_eq!(sys.filesystem(device).expect("a header").kind, "crypto_LUKS");
    sys.clear_failures();
    sys.clear_calls();
    crate::crypt::open(&sys, &log, &id, device, &key, false).await.expect("opens");
    assert_eq!(formats(&sys, "cryptsetup luksFormat"), 1, "formatted again, not opened as it was: {:?}", sys.calls());
    sys.clear_calls();
    crate::crypt::open(&sys, &log, &id, device, &key, false).await.expect("opens again");
    assert_eq!(formats(&sys, "cryptsetup luksFormat"), 0, "a finished header is only opened");
}

/// The host, except that the first mkfs.xfs is cut off: it runs for real,
/// then its superblock is marked in progress (`xfs_db`), as mkfs.xfs leaves
/// it until its last write, and the call answers as a missed deadline.
#[derive(Debug, Default)]
struct CutFirstMkfs {
    host: HostSystem,
    cut: parking_lot::Mutex<bool>,
}

#[async_trait::async_trait]
impl System for CutFirstMkfs {
    async fn mount(&self, call: MountCall) -> Result<(), NodeError> {
        self.host.mount(call).await
    }
    async fn unmount(&self, target: &Path, lazy: bool) -> Result<(), NodeError> {
        self.host.unmount(target, lazy).await
    }
    async fn mounts(&self) -> Result<Vec<MountEntry>, NodeError> {
        self.host.mounts().await
    }
    async fn loop_attach(&self, file: &Path) -> Result<PathBuf, NodeError> {
        self.host.loop_attach(file).await
    }
    async fn loop_refresh(&self, device: &Path) -> Result<(), NodeError> {
        self.host.loop_refresh(device).await
    }
    async fn loop_detach(&self, device: &Path) -> Result<(), NodeError> {
        self.host.loop_detach(device).await
    }
    async fn loop_devices(&self) -> Result<Vec<LoopDevice>, NodeError> {
        self.host.loop_devices().await
    }
    async fn device_size(&self, device: &Path) -> Result<u64, NodeError> {
        self.host.device_size(device).await
    }
    async fn device_numbers(&self, device: &Path) -> Result<String, NodeError> {
        self.host.device_numbers(device).await
    }
    async fn xfs_data_bytes(&self, mount_point: &Path) -> Result<u64, NodeError> {
        self.host.xfs_data_bytes(mount_point).await
    }
    async fn btrfs_device_bytes(&self, mount_point: &Path) -> Result<u64, NodeError> {
        self.host.btrfs_device_bytes(mount_point).await
    }
    async fn run(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output, CommandError> {
        let device = args.last().cloned().unwrap_or_default();
        let out = self.host.run(program, args, deadline).await?;
        if program != "mkfs.xfs" || std::mem::replace(&mut *self.cut.lock(), true) {
            return Ok(out);
        }
        let marked = std::process::Command::new("xfs_db").args(["-x", "-c", "sb 0", "-c", "write inprogress 1"]).arg(&device).output().expect("xfs_db");
        assert!(marked.status.success(), "xfs_db: {}", String::from_utf8_lossy(&marked.stderr));
        Err(CommandError::Timeout { command: format!("mkfs.xfs {}", device.to_string_lossy()), after: deadline, reaped: true })
    }
    async fn run_with_secret(&self, program: &str, args: Vec<OsString>, secret: &[u8], deadline: Duration) -> Result<Output, CommandError> {
        self.host.run_with_secret(program, args, secret, deadline).await
    }
}

/// mkfs.xfs writes its superblock first, marked in progress: cut off
/// there, blkid names the device xfs and no mount accepts it, so a retry
/// that mounted what it found would fail for ever.
#[tokio::test]
async fn on_a_loop_device_an_xfs_format_cut_off_is_unmountable_until_the_next_attempt_formats_it_again() {
    if crate::fixture::host_with(&["mkfs.xfs", "blkid", "xfs_db"]).is_none() {
        return;
    }
    // /proc/self belongs to the process's effective user.
    if std::fs::metadata("/proc/self").expect("stat /proc/self").uid() != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs the tests as root");
        eprintln!("skipped: loop devices and mounts need root");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("image");
    std::fs::File::create(&image).and_then(|f| f.set_len(512 * MIB)).expect("backing file");
    let sys = CutFirstMkfs::default();
    let device = sys.loop_attach(&image).await.expect("loop device");
    let target = dir.path().join("mnt");
    let _attached = Attached { device: device.clone(), target: target.clone() };
    std::fs::create_dir(&target).expect("mkdir");
    let mount_call = || MountCall::Filesystem { device: device.clone(), target: target.clone(), fs_type: "xfs".into(), options: vec!["nouuid".into()] };
    let log = FormatLog::open(&dir.path().join("state")).expect("log");
    let id: VolumeId = "local:0123456789abcdef0123456789abcdef".parse().expect("id");
    let layer = Layer::Filesystem(FsType::Xfs);

    let found = ok(log.examine(&sys, &id, layer, &device).await);
    assert_eq!(found, Found::Blank);
    let cut = log.make(&sys, &id, &device, layer, &found).await.expect_err("cut off");
    assert_eq!(cut.code(), Code::DeadlineExceeded, "{cut}");
    let left = ok(probe(&sys, &device).await).expect("the cut format left a superblock");
    assert_eq!(left.kind, "xfs");
    assert!(sys.mount(mount_call()).await.is_err(), "a cut xfs mounted");
    let found = ok(log.examine(&sys, &id, layer, &device).await);
    assert_eq!(found, Found::Unfinished, "its UUID is the one recorded");
    ok(log.make(&sys, &id, &device, layer, &found).await);
    let made = ok(probe(&sys, &device).await).expect("formatted");
    assert_ne!(made.uuid, left.uuid);
    ok(sys.mount(mount_call()).await);
    std::fs::write(target.join("data"), b"written").expect("write");
    ok(sys.unmount(&target, false).await);
    assert_eq!(ok(log.examine(&sys, &id, layer, &device).await), Found::Holds("xfs".into()), "finished: never formatted again");
}

fn ok<T>(result: Result<T, NodeError>) -> T {
    result.unwrap_or_else(|e| panic!("{}", e.full_message()))
}

/// Unmounts and detaches on drop: a failed assertion leaves no loop
/// device or mount behind.
struct Attached {
    device: PathBuf,
    target: PathBuf,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::empty());
        if let Ok(device) = loopdev::LoopDevice::open(&self.device) {
            let _ = device.detach();
        }
    }
}
