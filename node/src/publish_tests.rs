//! NodePublishVolume's and NodeUnpublishVolume's decisions over the
//! recording fake host: which bind mounts are made, when a publish is
//! already done, and what is refused.

use swell_storage::units::MIB;
use tonic::Code;

use super::*;
use crate::filesystem::FsType;
use crate::fixture::{Fixture, exists, mount};
use crate::system::fake::Call;

#[tokio::test]
async fn a_mount_volume_is_bound_from_its_staging_path_once() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    f.sys.clear_calls();
    let req = f.publish(&id, "staging", "pods/p/vol", mount(FsType::Xfs), false);
    publish(&f.ctx, req.clone()).await.expect("publish");
    assert_eq!(f.sys.calls(), [Call::Mount(MountCall::Bind { source: f.path("staging"), target: f.path("pods/p/vol") })]);
    assert!(exists(&f.path("pods/p/vol")), "the target directory is created");
    f.sys.clear_calls();
    publish(&f.ctx, req).await.expect("publish again");
    assert_eq!(f.sys.calls(), [], "already published alike: nothing to do");
}

#[tokio::test]
async fn a_read_only_publish_is_a_bind_then_a_read_only_remount() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    f.sys.clear_calls();
    publish(&f.ctx, f.publish(&id, "staging", "pods/ro/vol", mount(FsType::Xfs), true)).await.expect("publish ro");
    let target = f.path("pods/ro/vol");
    assert_eq!(
        f.sys.calls(),
        [
            Call::Mount(MountCall::Bind { source: f.path("staging"), target: target.clone() }),
            Call::Mount(MountCall::RemountReadOnly { target: target.clone() })
        ]
    );
    publish(&f.ctx, f.publish(&id, "staging", "pods/ro/vol", mount(FsType::Xfs), true)).await.expect("again");
    let err = publish(&f.ctx, f.publish(&id, "staging", "pods/ro/vol", mount(FsType::Xfs), false)).await.expect_err("rw over ro");
    assert_eq!(err.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn a_failed_read_only_remount_leaves_no_writable_mount() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    f.sys.fail("remount", "EPERM");
    let err = publish(&f.ctx, f.publish(&id, "staging", "pods/ro/vol", mount(FsType::Xfs), true)).await.expect_err("remount fails");
    assert_eq!(err.code(), Code::Internal);
    assert!(f.sys.mounted(&f.path("pods/ro/vol")).is_none(), "the writable bind is taken down again");
}

#[tokio::test]
async fn a_block_volume_binds_its_device_node_onto_a_file() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    crate::stage::stage(&f.ctx, f.stage(&id, "staging", Access::Block)).await.expect("stage block");
    let device = f.device(&id).await;
    f.sys.clear_calls();
    let req = f.publish(&id, "staging", "pods/p/dev/blk", Access::Block, false);
    publish(&f.ctx, req.clone()).await.expect("publish");
    let target = f.path("pods/p/dev/blk");
    assert_eq!(f.sys.calls(), [Call::Mount(MountCall::Bind { source: device, target: target.clone() })]);
    assert!(std::fs::metadata(&target).expect("target").is_file(), "a file to bind the device node onto");
    f.sys.clear_calls();
    publish(&f.ctx, req).await.expect("again");
    assert_eq!(f.sys.calls(), []);
}

#[tokio::test]
async fn publish_needs_the_volume_staged_at_that_path_and_as_that_kind() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let err = publish(&f.ctx, f.publish(&id, "staging", "pods/p/vol", mount(FsType::Xfs), false)).await.expect_err("unstaged");
    assert_eq!(err.code(), Code::FailedPrecondition);
    f.staged(&id, FsType::Xfs).await;
    let err = publish(&f.ctx, f.publish(&id, "other", "pods/p/vol", mount(FsType::Xfs), false)).await.expect_err("other staging");
    assert_eq!(err.code(), Code::FailedPrecondition);
    for access in [Access::Block, mount(FsType::Btrfs)] {
        let err = publish(&f.ctx, f.publish(&id, "staging", "pods/p/vol", access, false)).await.expect_err("other kind");
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    f.sys.clear_calls();
    f.sys.add_foreign_mount(&f.path("pods/p/vol"), "tmpfs", "tmpfs");
    let err = publish(&f.ctx, f.publish(&id, "staging", "pods/p/vol", mount(FsType::Xfs), false)).await.expect_err("foreign mount");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(!f.sys.calls().iter().any(|c| matches!(c, Call::Mount(_))), "nothing is mounted over it");
}

#[tokio::test]
async fn unpublish_unmounts_and_removes_the_target_and_a_repeat_is_fine() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    publish(&f.ctx, f.publish(&id, "staging", "pods/p/vol", mount(FsType::Xfs), false)).await.expect("publish");
    f.sys.clear_calls();
    unpublish(&f.ctx, f.unpublish(&id, "pods/p/vol")).await.expect("unpublish");
    assert_eq!(f.sys.calls(), [Call::Unmount(f.path("pods/p/vol"))]);
    assert!(!exists(&f.path("pods/p/vol")));
    unpublish(&f.ctx, f.unpublish(&id, "pods/p/vol")).await.expect("again");
}

#[tokio::test]
async fn unpublish_never_deletes_what_is_not_its_own() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    std::fs::create_dir_all(f.path("pods/p/vol")).expect("mkdir");
    std::fs::write(f.path("pods/p/vol/keep"), b"data").expect("write");
    let err = unpublish(&f.ctx, f.unpublish(&id, "pods/p/vol")).await.expect_err("not empty");
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(std::fs::read(f.path("pods/p/vol/keep")).expect("kept"), b"data");
}

#[tokio::test]
async fn a_pod_directory_swapped_for_a_symlink_after_the_path_check_makes_and_removes_nothing_outside() {
    let mut f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    let kubelet = f.path("kubelet");
    f.ctx.config.kubelet_dir = Some(kubelet.clone());
    let (pod, elsewhere) = (kubelet.join("pods/p"), f.path("elsewhere"));
    std::fs::create_dir_all(&pod).expect("mkdir");
    // What an unpublish would take for its own: an empty directory and an empty file.
    std::fs::create_dir_all(elsewhere.join("vol")).expect("mkdir");
    std::fs::File::create(elsewhere.join("dev")).expect("create");
    for target in ["vol", "dev", "new/vol"] {
        crate::confine::confined("target_path", &pod.join(target), Some(&kubelet)).await.expect("the request's check passes");
    }
    // The race: after the check, before the act.
    std::fs::remove_dir(&pod).expect("rmdir");
    std::os::unix::fs::symlink(&elsewhere, &pod).expect("symlink");
    f.sys.clear_calls();

    for target in ["kubelet/pods/p/vol", "kubelet/pods/p/dev"] {
        let err = unpublish(&f.ctx, f.unpublish(&id, target)).await.expect_err("through a symlink");
        assert_eq!(err.code(), Code::InvalidArgument, "{target}: {err}");
    }
    assert!(elsewhere.join("vol").is_dir() && elsewhere.join("dev").is_file(), "unpublish removed a path outside the kubelet dir");
    let err = publish(&f.ctx, f.publish(&id, "staging", "kubelet/pods/p/new/vol", mount(FsType::Xfs), false)).await.expect_err("through a symlink");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = crate::confine::create_file(Some(kubelet.clone()), &pod.join("new/dev")).await.expect_err("through a symlink");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(!exists(&elsewhere.join("new")), "publish made a directory outside the kubelet dir");
    assert!(!f.sys.calls().iter().any(|c| matches!(c, Call::Mount(_))), "nothing is mounted: {:?}", f.sys.calls());
}

#[tokio::test]
async fn a_confined_publish_and_unpublish_make_and_remove_their_targets() {
    let mut f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    f.ctx.config.kubelet_dir = Some(f.path("kubelet"));
    publish(&f.ctx, f.publish(&id, "staging", "kubelet/pods/p/vol", mount(FsType::Xfs), false)).await.expect("publish");
    assert!(f.path("kubelet/pods/p/vol").is_dir());
    unpublish(&f.ctx, f.unpublish(&id, "kubelet/pods/p/vol")).await.expect("unpublish");
    assert!(!exists(&f.path("kubelet/pods/p/vol")) && f.path("kubelet/pods/p").is_dir());
    crate::confine::create_file(Some(f.path("kubelet")), &f.path("kubelet/pods/q/dev")).await.expect("create");
    assert!(f.path("kubelet/pods/q/dev").is_file());
    unpublish(&f.ctx, f.unpublish(&id, "kubelet/pods/q/dev")).await.expect("unpublish a file");
    assert!(!exists(&f.path("kubelet/pods/q/dev")));
}
