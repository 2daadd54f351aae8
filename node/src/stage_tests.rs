//! NodeStageVolume's and NodeUnstageVolume's decisions over the recording
//! fake host: what is attached, formatted, grown and mounted, and what is
//! left alone, for a first stage, a repeated one, and every conflict.

use swell_storage::units::MIB;
use tonic::Code;

use super::*;
use crate::fixture::{Fixture, exists, mount};
use crate::system::fake::Call;

fn mounts(calls: &[Call]) -> Vec<&MountCall> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Mount(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Without `--`, `blkid -p -o value -s TYPE -V` prints its version and
/// exits 0: the version would be taken for the device's filesystem.
#[tokio::test]
async fn a_device_named_like_an_option_is_probed_as_a_path() {
    let Some(sys) = crate::fixture::host_with(&["blkid"]) else { return };
    let found = crate::filesystem::probe(&sys, Path::new("-V")).await;
    assert!(matches!(found, Ok(None)), "blkid read -V as an option: {found:?}");
}

#[tokio::test]
async fn a_first_stage_formats_a_blank_device_and_mounts_it_with_the_flags() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let access = Access::Mount { fs_type: FsType::Xfs, mount_flags: vec!["noatime".into(), "nouuid".into()] };
    stage(&f.ctx, f.stage(&id, "staging", access.clone())).await.expect("stage");

    let calls = f.sys.calls();
    assert_eq!(calls.first(), Some(&Call::LoopAttach(f.image(&id))), "{calls:?}");
    assert_eq!(f.sys.programs(), ["blkid", "mkfs.xfs"], "probe, format");
    assert_eq!(f.sys.size_reads(), 1, "the size checked once");
    let device = f.device(&id).await;
    let expected = MountCall::Filesystem {
        device: device.clone(),
        target: f.path("staging"),
        fs_type: "xfs".into(),
        options: words(&["nosuid", "nodev", "noatime", "nouuid"]),
    };
    assert_eq!(mounts(&calls), [&expected]);
    assert!(exists(&f.path("staging")), "the staging directory is created");
    let record = f.ctx.staging.read(&id).await.expect("read").expect("recorded");
    assert_eq!((record.staging_path, record.access), (f.path("staging"), access));
}

#[tokio::test]
async fn a_repeated_stage_attaches_formats_and_mounts_nothing() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Btrfs).await;
    f.sys.clear_calls();
    stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Btrfs))).await.expect("restage");
    let calls = f.sys.calls();
    assert!(!calls.iter().any(|c| matches!(c, Call::LoopAttach(_) | Call::Mount(_) | Call::Unmount(_))), "{calls:?}");
    assert!(!f.sys.programs().iter().any(|p| p.starts_with("mkfs") || p == "blkid"), "{calls:?}");
    assert_eq!(f.sys.loops().len(), 1);
}

#[tokio::test]
async fn a_stage_elsewhere_or_as_something_else_is_already_exists_and_touches_nothing() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    f.sys.clear_calls();
    for (path, access) in [("other", mount(FsType::Xfs)), ("staging", Access::Block), ("staging", mount(FsType::Ext4))] {
        let err = stage(&f.ctx, f.stage(&id, path, access)).await.expect_err("conflict");
        assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    }
    assert_eq!(f.sys.calls(), [], "a refused stage makes no call");
}

#[tokio::test]
async fn a_device_holding_another_filesystem_is_never_formatted_and_is_detached_again() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Ext4).await;
    unstage(&f.ctx, f.unstage(&id, "staging")).await.expect("unstage");
    // The loop device is gone but the file keeps its ext4; the fake keys
    // filesystems by device, so the next attach gets the same one.
    let device = std::path::PathBuf::from("/dev/loop0");
    f.sys.format(&device, "ext4", 64 * MIB);
    f.sys.clear_calls();
    let err = stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Btrfs))).await.expect_err("wrong fs");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.to_string().contains("ext4"), "{err}");
    assert!(!f.sys.programs().iter().any(|p| p.starts_with("mkfs")), "never formatted");
    assert_eq!(f.sys.loops().len(), 0, "what the failed stage attached is detached");
    assert_eq!(f.sys.filesystem(&device).map(|fs| fs.kind), Some("ext4".into()));
}

#[tokio::test]
async fn a_staging_path_holding_another_mount_is_refused() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.sys.add_foreign_mount(&f.path("staging"), "tmpfs", "tmpfs");
    let err = stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Xfs))).await.expect_err("foreign mount");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.to_string().contains("tmpfs"), "{err}");
    assert!(mounts(&f.sys.calls()).is_empty());
    assert!(f.ctx.staging.read(&id).await.expect("read").is_none(), "nothing recorded");
}

#[tokio::test]
async fn a_filesystem_smaller_than_its_device_is_grown_at_stage() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    unstage(&f.ctx, f.unstage(&id, "staging")).await.expect("unstage");
    // Expanded while unstaged: the device comes back larger than its xfs.
    f.grow(&id, 128 * MIB);
    f.sys.format(std::path::Path::new("/dev/loop0"), "xfs", 64 * MIB);
    f.sys.clear_calls();
    let device = f.staged(&id, FsType::Xfs).await;
    assert_eq!(f.sys.programs(), ["blkid", "xfs_growfs"], "grown once");
    assert_eq!(f.sys.size_reads(), 2, "the size checked before the grow and verified after");
    assert_eq!(f.sys.filesystem(&device).map(|fs| fs.size), Some(128 * MIB));
}

#[tokio::test]
async fn ext4_grown_while_unstaged_is_checked_and_grown_before_it_is_mounted() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Ext4).await;
    unstage(&f.ctx, f.unstage(&id, "staging")).await.expect("unstage");
    f.grow(&id, 128 * MIB);
    f.sys.format(std::path::Path::new("/dev/loop0"), "ext4", 64 * MIB);
    f.sys.deny_online_ext4_grow();
    f.sys.clear_calls();
    let device = f.staged(&id, FsType::Ext4).await;
    let programs = f.sys.programs();
    assert_eq!(&programs[..4], ["blkid", "dumpe2fs", "e2fsck", "resize2fs"], "{programs:?}");
    let mount_at = f.sys.calls().iter().position(|c| matches!(c, Call::Mount(_))).expect("mounted");
    let resize_at = f.sys.calls().iter().position(|c| matches!(c, Call::Run(line) if line.starts_with("resize2fs"))).expect("resized");
    assert!(resize_at < mount_at, "offline grow happens before the mount");
    assert_eq!(f.sys.filesystem(&device).map(|fs| fs.size), Some(128 * MIB));
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| (*w).to_owned()).collect()
}

#[tokio::test]
async fn a_read_only_stage_of_a_blank_volume_formats_nothing_and_is_failed_precondition() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let reader = Stage { read_only: true, ..f.stage(&id, "staging", Access::Mount { fs_type: FsType::Xfs, mount_flags: vec![] }) };
    let err = stage(&f.ctx, reader).await.expect_err("a blank volume cannot be read");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(f.sys.programs(), ["blkid"], "probed, never formatted");
    assert!(mounts(&f.sys.calls()).is_empty());
    assert_eq!(f.ctx.staging.read(&id).await.expect("read"), None);
}

#[tokio::test]
async fn a_read_only_stage_of_ext4_grown_while_unstaged_is_neither_repaired_nor_grown() {
    let f = Fixture::new();
    let id = f.volume(1, 128 * MIB);
    f.sys.format(std::path::Path::new("/dev/loop0"), "ext4", 64 * MIB);
    let reader = Stage { read_only: true, ..f.stage(&id, "staging", Access::Mount { fs_type: FsType::Ext4, mount_flags: vec![] }) };
    stage(&f.ctx, reader).await.expect("stage");
    assert_eq!(f.sys.programs(), ["blkid"], "no e2fsck, no resize2fs");
    let device = f.device(&id).await;
    assert_eq!(f.sys.filesystem(&device).map(|fs| fs.size), Some(64 * MIB));
    let mounted = mounts(&f.sys.calls()).into_iter().next().cloned().expect("mounted");
    assert!(matches!(&mounted, MountCall::Filesystem { options, .. } if options.iter().any(|o| o == "ro")), "{mounted:?}");
}

#[tokio::test]
async fn a_read_only_stage_never_grows() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let access = Access::Mount { fs_type: FsType::Xfs, mount_flags: vec!["ro".into()] };
    f.sys.format(std::path::Path::new("/dev/loop0"), "xfs", 32 * MIB);
    stage(&f.ctx, f.stage(&id, "staging", access)).await.expect("stage");
    assert_eq!(f.sys.programs(), ["blkid"], "no size check, no grow on a read-only mount");
}

#[tokio::test]
async fn a_failed_mount_leaves_no_loop_device_and_no_record() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.sys.fail("mount", "EIO");
    let err = stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Xfs))).await.expect_err("mount fails");
    assert_eq!(err.code(), Code::Internal);
    assert!(err.to_string().contains(&id.to_string()), "the error names the volume: {err}");
    assert_eq!(f.sys.loops().len(), 0);
    assert!(f.ctx.staging.read(&id).await.expect("read").is_none());
}

#[tokio::test]
async fn a_mount_past_its_deadline_keeps_its_loop_device_and_a_retry_converges() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.sys.fail("mount", "TIMEOUT");
    let err = stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Xfs))).await.expect_err("mount timed out");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    // The mount may still be running: nothing is detached under it.
    assert_eq!(f.sys.loops().len(), 1, "{:?}", f.sys.calls());
    assert!(!f.sys.calls().iter().any(|c| matches!(c, Call::LoopDetach(_))), "{:?}", f.sys.calls());
    f.sys.clear_failures();
    stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Xfs))).await.expect("a retry stages");
    assert_eq!(f.sys.loops().len(), 1, "the same loop device, not a second");
}

#[tokio::test]
async fn a_volume_without_its_backing_object_is_not_found_and_not_attached() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    std::fs::remove_file(f.image(&id)).expect("rm");
    let err = stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Xfs))).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(f.sys.calls(), []);
}

#[tokio::test]
async fn a_volume_busy_with_another_call_is_aborted() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let _held = f.ctx.lock(&id).await.expect("lock");
    let err = stage(&f.ctx, f.stage(&id, "staging", mount(FsType::Xfs))).await.expect_err("busy");
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(f.sys.calls(), []);
    assert!(f.ctx.try_lock_for_background(&id).is_none(), "a background grow leaves a volume an RPC holds alone");
}

#[tokio::test]
async fn an_unstage_waits_for_a_background_grow_of_its_volume_instead_of_aborting() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let device = f.staged(&id, FsType::Xfs).await;
    f.sys.clear_calls();
    let hold = f.ctx.try_lock_for_background(&id).expect("the volume is free");
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        drop(hold);
    });
    let started = std::time::Instant::now();
    unstage(&f.ctx, f.unstage(&id, "staging")).await.expect("the unstage waited for the grow");
    assert!(started.elapsed() >= std::time::Duration::from_millis(150), "it ran only once the grow let go: {:?}", started.elapsed());
    assert_eq!(f.sys.calls(), [Call::Unmount(f.path("staging")), Call::LoopDetach(device)]);
    release.await.expect("release");
}

/// Woken by the grow's end, not by a poll: on a paused clock a poll would
/// have to let time pass, and none does.
#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_a_background_grow_takes_the_volume_the_moment_the_grow_lets_go() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let hold = f.ctx.try_lock_for_background(&id).expect("the volume is free");
    let release = tokio::spawn(async move {
        tokio::task::yield_now().await;
        drop(hold);
    });
    let started = tokio::time::Instant::now();
    let _guard = f.ctx.lock(&id).await.expect("the call waited for the grow");
    assert_eq!(started.elapsed(), std::time::Duration::ZERO, "the call slept instead of being woken");
    release.await.expect("release");
}

#[tokio::test]
async fn unstage_unmounts_detaches_and_forgets_and_a_repeat_does_nothing() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let device = f.staged(&id, FsType::Xfs).await;
    f.sys.clear_calls();
    unstage(&f.ctx, f.unstage(&id, "staging")).await.expect("unstage");
    assert_eq!(f.sys.calls(), [Call::Unmount(f.path("staging")), Call::LoopDetach(device)]);
    assert!(f.ctx.staging.read(&id).await.expect("read").is_none());
    f.sys.clear_calls();
    unstage(&f.ctx, f.unstage(&id, "staging")).await.expect("unstage again");
    assert_eq!(f.sys.calls(), [], "nothing staged: nothing to undo");
}

#[tokio::test]
async fn unstage_of_a_path_the_volume_is_not_staged_at_touches_nothing() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    f.sys.clear_calls();
    unstage(&f.ctx, f.unstage(&id, "elsewhere")).await.expect("answered OK");
    assert_eq!(f.sys.calls(), []);
    assert!(f.ctx.staging.read(&id).await.expect("read").is_some(), "still staged");
}
