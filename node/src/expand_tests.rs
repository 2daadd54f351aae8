//! NodeExpandVolume's decisions over the recording fake host: refresh the
//! device, grow the filesystem only when short, and refuse a path that is
//! not this volume's.

use swell_storage::units::MIB;
use tonic::Code;

use crate::expand::expand;
use crate::filesystem::FsType;
use crate::fixture::{Fixture, mount};
use crate::publish::publish;
use crate::staging::Access;
use crate::system::System;
use crate::system::fake::Call;

fn grows(calls: &[Call]) -> usize {
    calls.iter().filter(|c| matches!(c, Call::Run(line) if line.starts_with("xfs_growfs") || line.starts_with("btrfs filesystem resize"))).count()
}

#[tokio::test]
async fn a_grown_backing_file_is_refreshed_and_the_filesystem_grown_once() {
    for fs in [FsType::Xfs, FsType::Btrfs] {
        let f = Fixture::new();
        let id = f.volume(1, 64 * MIB);
        let device = f.staged(&id, fs).await;
        publish(&f.ctx, f.publish(&id, "staging", "pods/p/vol", mount(fs), false)).await.expect("publish");
        f.grow(&id, 128 * MIB);
        f.sys.clear_calls();
        let capacity = expand(&f.ctx, f.expand(&id, "pods/p/vol", 128 * MIB)).await.expect("expand");
        assert_eq!(capacity, 128 * MIB, "{fs}");
        let calls = f.sys.calls();
        assert_eq!(calls.iter().filter(|c| **c == Call::LoopRefresh(device.clone())).count(), 1, "{calls:?}");
        assert_eq!(grows(&calls), 1, "{fs}: {calls:?}");
        assert_eq!(f.sys.filesystem(&device).map(|s| s.size), Some(128 * MIB));

        f.sys.clear_calls();
        let again = expand(&f.ctx, f.expand(&id, "pods/p/vol", 128 * MIB)).await.expect("expand again");
        assert_eq!(again, capacity, "a repeated expand answers the same");
        assert_eq!(grows(&f.sys.calls()), 0, "{fs}: already grown, the filesystem is not touched");
    }
}

#[tokio::test]
async fn the_staging_path_is_accepted_as_the_volume_path() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    f.grow(&id, 96 * MIB);
    assert_eq!(expand(&f.ctx, f.expand(&id, "staging", 0)).await.expect("expand"), 96 * MIB);
}

#[tokio::test]
async fn a_path_that_is_not_this_volumes_mount_is_not_found_and_nothing_grows() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let other = f.volume(2, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    // Another volume staged and published elsewhere, a plain directory, and a tmpfs.
    let other_device = {
        std::fs::create_dir_all(f.path("other-staging")).expect("mkdir");
        crate::stage::stage(&f.ctx, f.stage(&other, "other-staging", mount(FsType::Xfs))).await.expect("stage other");
        f.device(&other).await
    };
    publish(&f.ctx, f.publish(&other, "other-staging", "pods/q/vol", mount(FsType::Xfs), false)).await.expect("publish other");
    std::fs::create_dir_all(f.path("plain")).expect("mkdir");
    std::fs::create_dir_all(f.path("tmp")).expect("mkdir");
    f.sys.add_foreign_mount(&f.path("tmp"), "tmpfs", "tmpfs");
    f.grow(&id, 128 * MIB);
    f.sys.clear_calls();
    for path in ["pods/q/vol", "other-staging", "plain", "tmp"] {
        let err = expand(&f.ctx, f.expand(&id, path, 0)).await.expect_err(path);
        assert_eq!(err.code(), Code::NotFound, "{path}: {err}");
        assert!(err.to_string().contains("not mounted at"), "{err}");
    }
    let calls = f.sys.calls();
    assert!(!calls.iter().any(|c| matches!(c, Call::LoopRefresh(_))), "{calls:?}");
    assert_eq!(grows(&calls), 0);
    assert_eq!(f.sys.filesystem(&other_device).map(|s| s.size), Some(64 * MIB), "the other volume is untouched");
}

#[tokio::test]
async fn a_missing_path_or_volume_is_not_found_and_an_unstaged_one_failed_precondition() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let err = expand(&f.ctx, f.expand(&id, "nowhere", 0)).await.expect_err("no path");
    assert_eq!(err.code(), Code::NotFound);
    std::fs::create_dir_all(f.path("staging")).expect("mkdir");
    let err = expand(&f.ctx, f.expand(&id, "staging", 0)).await.expect_err("unstaged");
    assert_eq!(err.code(), Code::FailedPrecondition);
    std::fs::remove_file(f.image(&id)).expect("rm");
    let err = expand(&f.ctx, f.expand(&id, "staging", 0)).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn a_backend_smaller_than_required_is_out_of_range_without_growing() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    f.sys.clear_calls();
    let err = expand(&f.ctx, f.expand(&id, "staging", 128 * MIB)).await.expect_err("too small");
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(grows(&f.sys.calls()), 0);
}

#[tokio::test]
async fn a_block_volume_only_needs_its_device_refreshed() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    crate::stage::stage(&f.ctx, f.stage(&id, "staging", Access::Block)).await.expect("stage");
    publish(&f.ctx, f.publish(&id, "staging", "pods/p/dev/blk", Access::Block, false)).await.expect("publish");
    f.grow(&id, 128 * MIB);
    f.sys.clear_calls();
    assert_eq!(expand(&f.ctx, f.expand(&id, "pods/p/dev/blk", 128 * MIB)).await.expect("expand"), 128 * MIB);
    assert!(f.sys.programs().is_empty(), "no filesystem tool for a raw device");
}

#[tokio::test]
async fn an_unhealthy_attachment_or_an_unmounted_staging_path_is_never_grown() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let device = f.staged(&id, FsType::Xfs).await;
    f.grow(&id, 128 * MIB);
    f.sys.unmount(&f.path("staging"), false).await.expect("unmount behind the node's back");
    let err = expand(&f.ctx, f.expand(&id, "staging", 0)).await.expect_err("not mounted");
    assert_eq!(err.code(), Code::FailedPrecondition, "not retried on this node: the restage grows it");
    assert!(err.to_string().contains("not mounted"), "{err}");
    f.sys.lose_loop(&device);
    f.sys.clear_calls();
    let err = expand(&f.ctx, f.expand(&id, "staging", 0)).await.expect_err("detached");
    assert_eq!(err.code(), Code::FailedPrecondition, "not retried on this node: the restage grows it");
    assert!(err.to_string().contains("detached"), "{err}");
    assert!(!f.sys.calls().iter().any(|c| matches!(c, Call::LoopRefresh(_))), "no refresh of a device that is not the volume's");
}

#[tokio::test]
async fn a_failed_grow_is_an_error_naming_the_volume_and_a_retry_finishes_it() {
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    f.staged(&id, FsType::Xfs).await;
    f.grow(&id, 128 * MIB);
    f.sys.fail("xfs_growfs", "xfs_growfs: killed");
    let err = expand(&f.ctx, f.expand(&id, "staging", 0)).await.expect_err("grow fails");
    assert_eq!(err.code(), Code::Internal);
    assert!(err.full_message().contains("xfs_growfs"), "{}", err.full_message());
    f.sys.clear_failures();
    assert_eq!(expand(&f.ctx, f.expand(&id, "staging", 0)).await.expect("retry"), 128 * MIB);
}

#[tokio::test]
async fn a_volume_attached_by_an_earlier_node_plugin_container_grows_and_detaches() {
    // A restarted node plugin pod: the loop device stays, and sysfs names its
    // file from the root of the dead container's hostPath mount.
    let f = Fixture::new();
    let id = f.volume(1, 64 * MIB);
    let device = f.staged(&id, FsType::Xfs).await;
    publish(&f.ctx, f.publish(&id, "staging", "pods/p/vol", mount(FsType::Xfs), false)).await.expect("publish");
    // The file's path below /var/lib/swell, as the dead container saw it.
    let image = f.image(&id);
    let below = image.strip_prefix(&f.ctx.config.local_state_dir).expect("the image lies in the local state directory");
    f.sys.show_backing(&device, &format!("/local/{}", below.display()));
    f.grow(&id, 128 * MIB);
    f.sys.clear_calls();
    let capacity = expand(&f.ctx, f.expand(&id, "pods/p/vol", 128 * MIB)).await.expect("expand after a restart");
    assert_eq!(capacity, 128 * MIB);
    assert!(f.sys.calls().contains(&Call::LoopRefresh(device.clone())), "{:?}", f.sys.calls());
    crate::publish::unpublish(&f.ctx, f.unpublish(&id, "pods/p/vol")).await.expect("unpublish");
    crate::stage::unstage(&f.ctx, f.unstage(&id, "staging")).await.expect("unstage");
    assert!(f.sys.loops().is_empty(), "the loop device outlived the unstage: {:?}", f.sys.loops());
}
