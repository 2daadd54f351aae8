//! Calls kubelet can overlap on one volume, on real loop devices, xfs and
//! mounts, with swell-node as a process whose xfs_growfs is a gate
//! (`ToolGate`): the first NodeExpandVolume is held inside the grow while
//! the other call arrives.
//! - NodeExpandVolume twice at once (a retry sent while the first still
//!   runs): the second is ABORTED at once and touches nothing, the first
//!   grows the filesystem, and the retry after it answers the same size
//!   without running the grow tool again.
//! - NodeExpandVolume racing NodeUnpublish/UnstageVolume (a pod rescheduled
//!   while its PVC grows): both are ABORTED while the grow runs and leave
//!   the mounts in place; once it is done they succeed and leave nothing,
//!   and the filesystem unmounted checks clean at the new size.
#![allow(clippy::unwrap_used)]

mod node_rig;

use std::time::Duration;

use node_rig::{Rig, rig};
use swell_e2e::host::{self, check_filesystem, statvfs_total};
use swell_e2e::node_process::ToolGate;
use swell_e2e::requests::{self, mount_capability};
use swell_storage::VolumeId;
use swell_storage::units::MIB;
use tonic::Code;

/// How long a held call may take to reach the gate, or to finish once released.
const STEP: Duration = Duration::from_secs(60);

/// A rig whose node runs xfs_growfs through a gate, with an xfs volume of
/// 320 MiB staged, published and written, grown underneath to 640 MiB;
/// `None` where the machine cannot run it.
async fn volume_grown_underneath(test: &str) -> Option<(Rig, ToolGate, VolumeId, String)> {
    let mut rig = rig(test).await?;
    let gate = ToolGate::new(&rig.dir, "xfs_growfs").unwrap();
    rig.serve_as_process(&[("PATH", gate.path())]).await;
    let id = rig.volume("pvc-race", 320 * MIB).await;
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    rig.node.node_stage_volume(requests::stage(&id.to_string(), &staging, mount_capability("xfs"))).await.unwrap();
    rig.node.node_publish_volume(requests::publish(&id.to_string(), &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    let file = rig.dir.join("pods/p/vol/data.bin");
    host::write_pattern(&file, 4 << 20, 7).unwrap();
    let sum = host::sha256_file(&file).unwrap();
    rig.grow(&id, 640 * MIB).await;
    Some((rig, gate, id, sum))
}

fn expand_request(rig: &Rig, id: &VolumeId) -> csi_proto::v1::NodeExpandVolumeRequest {
    requests::node_expand(&id.to_string(), &rig.path("pods/p/vol"), &rig.path("staging"), (640 * MIB) as i64, mount_capability("xfs"))
}

/// Sends the expansion with the gate armed and returns once it is held
/// inside xfs_growfs; the handle answers after [`ToolGate::release`].
async fn expansion_held_in_the_grow(
    rig: &Rig,
    gate: &ToolGate,
    id: &VolumeId,
) -> tokio::task::JoinHandle<Result<tonic::Response<csi_proto::v1::NodeExpandVolumeResponse>, tonic::Status>> {
    gate.arm();
    let (mut client, request) = (rig.node.clone(), expand_request(rig, id));
    let held = tokio::spawn(async move { client.node_expand_volume(request).await });
    assert!(gate.reached(STEP).await, "NodeExpandVolume never reached xfs_growfs");
    held
}

fn assert_busy(status: &tonic::Status, id: &VolumeId, call: &str) {
    assert_eq!(status.code(), Code::Aborted, "{call} while NodeExpandVolume grows: {status:?}");
    assert!(status.message().contains(&id.to_string()), "{call}: the answer names the volume: {}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_expands_of_one_volume_at_once_one_is_aborted_and_the_filesystem_grows_once() {
    let test = "two_node_expands_of_one_volume_at_once_one_is_aborted_and_the_filesystem_grows_once";
    let Some((mut rig, gate, id, sum)) = volume_grown_underneath(test).await else { return };
    let first = expansion_held_in_the_grow(&rig, &gate, &id).await;
    let second = rig.node.node_expand_volume(expand_request(&rig, &id)).await.expect_err("a second expand while the first grows");
    assert_busy(&second, &id, "a second NodeExpandVolume");
    gate.release();
    let grown = tokio::time::timeout(STEP, first).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(grown.capacity_bytes as u64, 640 * MIB);
    // Kubelet's retry after ABORTED: the same answer, and no second grow.
    let again = rig.node.node_expand_volume(expand_request(&rig, &id)).await.unwrap().into_inner();
    assert_eq!(again.capacity_bytes, grown.capacity_bytes, "the retry answers the grown size");
    assert_eq!(gate.calls().len(), 1, "xfs_growfs ran once: {:?}", gate.calls());
    let total = statvfs_total(&rig.dir.join("pods/p/vol")).unwrap();
    assert!(total > 640 * MIB * 85 / 100 && total <= 640 * MIB, "xfs grew to {total}");
    assert_eq!(host::sha256_file(&rig.dir.join("pods/p/vol/data.bin")).unwrap(), sum, "data intact");
    unpublish_unstage_leaves_nothing(&mut rig, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_and_unstage_during_a_node_expand_are_aborted_and_succeed_after_it() {
    let test = "unpublish_and_unstage_during_a_node_expand_are_aborted_and_succeed_after_it";
    let Some((mut rig, gate, id, sum)) = volume_grown_underneath(test).await else { return };
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    let held = expansion_held_in_the_grow(&rig, &gate, &id).await;
    let unpublish = rig.node.node_unpublish_volume(requests::unpublish(&id.to_string(), &target)).await.expect_err("unpublish during the grow");
    assert_busy(&unpublish, &id, "NodeUnpublishVolume");
    let unstage = rig.node.node_unstage_volume(requests::unstage(&id.to_string(), &staging)).await.expect_err("unstage during the grow");
    assert_busy(&unstage, &id, "NodeUnstageVolume");
    assert!(host::is_mount_point(&rig.dir.join("pods/p/vol")) && host::is_mount_point(&rig.dir.join("staging")), "a refused call unmounted something");
    assert!(rig.staging_record_exists(&id), "a refused unstage removed the staging record");
    gate.release();
    let grown = tokio::time::timeout(STEP, held).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(grown.capacity_bytes as u64, 640 * MIB);
    assert_eq!(host::sha256_file(&rig.dir.join("pods/p/vol/data.bin")).unwrap(), sum, "data intact");
    let file = rig.image(&id);
    unpublish_unstage_leaves_nothing(&mut rig, &id).await;
    check_filesystem("xfs", &file).unwrap_or_else(|e| panic!("xfs after the race: {e}"));
}

/// Kubelet's retries once the expansion is done: both succeed, and no
/// mount, loop device or staging record is left.
async fn unpublish_unstage_leaves_nothing(rig: &mut Rig, id: &VolumeId) {
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    rig.node.node_unpublish_volume(requests::unpublish(&id.to_string(), &target)).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(&id.to_string(), &staging)).await.unwrap();
    assert!(!host::is_mount_point(&rig.dir.join("staging")), "staging still mounted");
    assert!(host::loop_devices_for(&rig.image(id)).is_empty(), "no loop device left");
    assert!(!rig.staging_record_exists(id), "staging record removed");
}
