//! CSI conformance of the Identity (node socket) and Node services, after the
//! CSI spec and what kubernetes-csi csi-sanity v5.4 checks. Argument checks
//! run anywhere; tests that attach and mount need root, losetup and
//! mkfs.xfs, and record a skip when the host lacks them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use csi_proto::v1::node_service_capability::rpc;
use csi_proto::v1::plugin_capability::{self, service, volume_expansion};
use csi_proto::v1::*;
use swell_e2e::{host, requests};
use tonic::Code;

// ---- Identity (node socket), capabilities and info ----

#[tokio::test]
async fn node_identity_names_the_same_driver_and_is_ready() {
    let mut drv = driver().await;
    let info = expect_ok(drv.node_identity.get_plugin_info(GetPluginInfoRequest {}).await, "GetPluginInfo");
    assert_eq!(info.name, "swell.csi.storage");
    assert!(!info.vendor_version.is_empty(), "vendor_version must be set");
    let probe = expect_ok(drv.node_identity.probe(ProbeRequest {}).await, "Probe");
    assert_eq!(probe.ready, Some(true));
    let caps = expect_ok(drv.node_identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await, "caps").capabilities;
    for cap in &caps {
        let known = match &cap.r#type {
            Some(plugin_capability::Type::Service(s)) => service::Type::try_from(s.r#type).is_ok_and(|t| t != service::Type::Unknown),
            Some(plugin_capability::Type::VolumeExpansion(v)) => volume_expansion::Type::try_from(v.r#type).is_ok_and(|t| t != volume_expansion::Type::Unknown),
            None => false,
        };
        assert!(known, "unknown plugin capability {cap:?}");
    }
}

#[tokio::test]
async fn node_capabilities_are_exactly_what_swell_serves() {
    let mut drv = driver().await;
    let caps = expect_ok(drv.node.node_get_capabilities(NodeGetCapabilitiesRequest {}).await, "NodeGetCapabilities");
    let got = node_rpc_types(&caps);
    let wanted: BTreeSet<i32> =
        [rpc::Type::StageUnstageVolume, rpc::Type::ExpandVolume, rpc::Type::GetVolumeStats, rpc::Type::VolumeCondition].into_iter().map(|t| t as i32).collect();
    assert_eq!(got, wanted);
}

#[tokio::test]
async fn node_get_info_names_the_node() {
    let mut drv = driver().await;
    let info = expect_ok(drv.node.node_get_info(NodeGetInfoRequest {}).await, "NodeGetInfo");
    assert_eq!(info.node_id, "swell-e2e-node");
    assert!(info.max_volumes_per_node >= 0);
}

// ---- Argument checks (no root needed: nothing may be attached) ----

#[tokio::test]
async fn node_stage_rejects_missing_fields_and_unknown_volumes() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("stage"), GIB).await.volume_id;
    let paths = NodePaths::under(drv.dir.path());
    let staging = s(&paths.staging);
    let n = &mut drv.d.node;
    let cases = [
        (requests::stage("", &staging, default_capability()), "volume_id"),
        (requests::stage(&id, "", default_capability()), "staging_target_path"),
        (NodeStageVolumeRequest { volume_capability: None, ..requests::stage(&id, &staging, default_capability()) }, "volume_capability"),
    ];
    for (request, field) in cases {
        expect_status(n.node_stage_volume(request).await, Code::InvalidArgument, &[field]);
    }
    for unknown in [absent_local_id(), "volume-id-1-missing".to_owned()] {
        expect_status(n.node_stage_volume(requests::stage(&unknown, &staging, default_capability())).await, Code::NotFound, &[]);
    }
    assert!(!host::is_mount_point(&paths.staging));
    assert!(host::loop_devices_for(&backing_file(&drv, &id)).is_empty(), "a refused stage attached the volume");
}

#[tokio::test]
async fn node_publish_rejects_missing_fields() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("publish"), GIB).await.volume_id;
    let paths = NodePaths::under(drv.dir.path());
    let (staging, target) = (s(&paths.staging), s(&paths.target));
    let cap = default_capability();
    let cases = [
        (requests::publish("", &staging, &target, cap.clone(), false), "volume_id"),
        (requests::publish(&id, &staging, "", cap.clone(), false), "target_path"),
        (requests::publish(&id, "", &target, cap.clone(), false), "staging_target_path"),
        (NodePublishVolumeRequest { volume_capability: None, ..requests::publish(&id, &staging, &target, cap, false) }, "volume_capability"),
    ];
    for (request, field) in cases {
        expect_status(drv.node.node_publish_volume(request).await, Code::InvalidArgument, &[field]);
    }
    assert!(!host::is_mount_point(&paths.target));
}

#[tokio::test]
async fn node_unpublish_and_unstage_reject_missing_fields() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("teardown"), GIB).await.volume_id;
    let paths = NodePaths::under(drv.dir.path());
    let (staging, target) = (s(&paths.staging), s(&paths.target));
    let n = &mut drv.d.node;
    expect_status(n.node_unpublish_volume(requests::unpublish("", &target)).await, Code::InvalidArgument, &["volume_id"]);
    expect_status(n.node_unpublish_volume(requests::unpublish(&id, "")).await, Code::InvalidArgument, &["target_path"]);
    expect_status(n.node_unstage_volume(requests::unstage("", &staging)).await, Code::InvalidArgument, &["volume_id"]);
    expect_status(n.node_unstage_volume(requests::unstage(&id, "")).await, Code::InvalidArgument, &["staging_target_path"]);
}

#[tokio::test]
async fn node_expand_rejects_missing_fields_and_unknown_volumes() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("nexpand"), GIB).await.volume_id;
    let n = &mut drv.d.node;
    expect_status(n.node_expand_volume(requests::node_expand_bare("", "some/path", GIB)).await, Code::InvalidArgument, &["volume_id"]);
    expect_status(n.node_expand_volume(requests::node_expand_bare(&id, "", GIB)).await, Code::InvalidArgument, &["volume_path"]);
    for unknown in [absent_local_id(), "volume-id-1-missing".to_owned()] {
        expect_status(n.node_expand_volume(requests::node_expand_bare(&unknown, "some/path", GIB)).await, Code::NotFound, &[]);
    }
}

#[tokio::test]
async fn node_get_volume_stats_rejects_missing_fields_and_unknown_volumes() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("stats"), GIB).await.volume_id;
    let n = &mut drv.d.node;
    expect_status(n.node_get_volume_stats(requests::stats("", "some/path")).await, Code::InvalidArgument, &["volume_id"]);
    expect_status(n.node_get_volume_stats(requests::stats(&id, "")).await, Code::InvalidArgument, &["volume_path"]);
    for unknown in [absent_local_id(), "id".to_owned()] {
        expect_status(n.node_get_volume_stats(requests::stats(&unknown, "some/path")).await, Code::NotFound, &[]);
    }
}

#[tokio::test]
async fn node_publish_of_an_unstaged_volume_is_failed_precondition() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("unstaged"), GIB).await.volume_id;
    let paths = NodePaths::under(drv.dir.path());
    let request = requests::publish(&id, &s(&paths.staging), &s(&paths.target), default_capability(), false);
    expect_status(drv.node.node_publish_volume(request).await, Code::FailedPrecondition, &[]);
    assert!(!host::is_mount_point(&paths.target), "an unstaged volume was published");
}

// ---- On a real host: loop devices, xfs, mounts ----

#[tokio::test]
async fn node_get_volume_stats_at_a_missing_path_is_not_found() {
    let test = "conformance_node::node_get_volume_stats_at_a_missing_path_is_not_found";
    if !node_host_ready(test) {
        return;
    }
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("stats-path"), GIB).await.volume_id;
    let paths = NodePaths::under(drv.dir.path());
    let _cleanup = paths.cleanup(backing_file(&drv, &id));
    let cap = default_capability();
    stage_and_publish(&mut drv, &id, &paths, &cap, 1).await;
    let missing = s(&drv.dir.path().join("path/does/not/exist"));
    expect_status(drv.node.node_get_volume_stats(requests::stats(&id, &missing)).await, Code::NotFound, &[]);
    unpublish_and_unstage(&mut drv, &id, &paths, 1).await;
    delete(&mut drv, &id).await;
}

#[tokio::test]
async fn node_full_lifecycle_is_idempotent_and_leaves_nothing_behind() {
    let test = "conformance_node::node_full_lifecycle_is_idempotent_and_leaves_nothing_behind";
    if !node_host_ready(test) {
        return;
    }
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("lifecycle"), GIB).await.volume_id;
    let image = backing_file(&drv, &id);
    let paths = NodePaths::under(drv.dir.path());
    let _cleanup = paths.cleanup(image.clone());
    let cap = default_capability();
    let target = s(&paths.target);

    stage_and_publish(&mut drv, &id, &paths, &cap, 2).await;
    assert_eq!(host::loop_devices_for(&image).len(), 1, "staging twice must attach one loop device");

    let stats = expect_ok(drv.node.node_get_volume_stats(requests::stats(&id, &target)).await, "NodeGetVolumeStats");
    let before = byte_usage(&stats);
    assert!(before.total <= GIB, "filesystem larger than its 1 GiB volume: {}", before.total);
    let condition = stats.volume_condition.expect("VOLUME_CONDITION announced but no volume_condition");
    assert!(!condition.abnormal, "healthy staged volume reported abnormal: {}", condition.message);

    for attempt in 1..=2 {
        let grown = expect_ok(drv.controller.controller_expand_volume(requests::controller_expand(&id, 2 * GIB, None)).await, "expand");
        assert_eq!(grown.capacity_bytes, 2 * GIB, "ControllerExpandVolume #{attempt}");
        assert!(grown.node_expansion_required);
    }
    for attempt in 1..=2 {
        let request = requests::node_expand(&id, &target, &s(&paths.staging), 2 * GIB, cap.clone());
        let grown = expect_ok(drv.node.node_expand_volume(request).await, &format!("NodeExpandVolume #{attempt}"));
        assert!(grown.capacity_bytes == 0 || grown.capacity_bytes >= 2 * GIB, "NodeExpandVolume reported {}", grown.capacity_bytes);
    }
    let stats = expect_ok(drv.node.node_get_volume_stats(requests::stats(&id, &target)).await, "NodeGetVolumeStats after");
    let after = byte_usage(&stats);
    assert!(after.total > GIB + GIB / 2, "filesystem did not grow to about 2 GiB: {} -> {}", before.total, after.total);
    assert!(after.total <= 2 * GIB);

    unpublish_and_unstage(&mut drv, &id, &paths, 2).await;
    delete(&mut drv, &id).await;
    delete(&mut drv, &id).await;
    assert!(list_ids(&mut drv).await.is_empty());
    assert!(!image.exists(), "backing file {} survived DeleteVolume", image.display());
}

#[tokio::test]
async fn node_incompatible_restage_or_republish_is_already_exists() {
    let test = "conformance_node::node_incompatible_restage_or_republish_is_already_exists";
    if !node_host_ready(test) {
        return;
    }
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("conflict"), GIB).await.volume_id;
    let paths = NodePaths::under(drv.dir.path());
    let _cleanup = paths.cleanup(backing_file(&drv, &id));
    let (staging, target) = (s(&paths.staging), s(&paths.target));
    stage_and_publish(&mut drv, &id, &paths, &requests::mount_capability("xfs"), 1).await;
    let ext4 = requests::stage(&id, &staging, requests::mount_capability("ext4"));
    expect_status(drv.node.node_stage_volume(ext4).await, Code::AlreadyExists, &[]);
    let read_only = requests::publish(&id, &staging, &target, requests::mount_capability("xfs"), true);
    expect_status(drv.node.node_publish_volume(read_only).await, Code::AlreadyExists, &[]);
    unpublish_and_unstage(&mut drv, &id, &paths, 1).await;
    delete(&mut drv, &id).await;
}

#[tokio::test]
async fn node_block_volume_lifecycle_grows_the_published_device() {
    let test = "conformance_node::node_block_volume_lifecycle_grows_the_published_device";
    if !node_host_ready(test) {
        return;
    }
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("block"), GIB).await.volume_id;
    let paths = NodePaths::under(drv.dir.path());
    let _cleanup = paths.cleanup(backing_file(&drv, &id));
    let target = s(&paths.target);
    stage_and_publish(&mut drv, &id, &paths, &requests::block_capability(), 2).await;
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&paths.target).unwrap().file_type().is_block_device(), "block target is not a block device");
    let stats = expect_ok(drv.node.node_get_volume_stats(requests::stats(&id, &target)).await, "stats");
    assert_eq!(requests::total_bytes(&stats), Some(GIB));
    expect_ok(drv.controller.controller_expand_volume(requests::controller_expand(&id, 2 * GIB, None)).await, "expand");
    let request = requests::node_expand(&id, &target, &s(&paths.staging), 2 * GIB, requests::block_capability());
    let grown = expect_ok(drv.node.node_expand_volume(request).await, "NodeExpandVolume");
    assert!(grown.capacity_bytes == 0 || grown.capacity_bytes >= 2 * GIB, "NodeExpandVolume reported {}", grown.capacity_bytes);
    let stats = expect_ok(drv.node.node_get_volume_stats(requests::stats(&id, &target)).await, "stats after");
    assert_eq!(requests::total_bytes(&stats), Some(2 * GIB), "the published device did not grow");
    unpublish_and_unstage(&mut drv, &id, &paths, 2).await;
    delete(&mut drv, &id).await;
}

#[tokio::test]
async fn node_unstage_detaches_even_after_the_volume_was_deleted() {
    let test = "conformance_node::node_unstage_detaches_even_after_the_volume_was_deleted";
    if !node_host_ready(test) {
        return;
    }
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("deleted"), GIB).await.volume_id;
    let paths = NodePaths::under(drv.dir.path());
    let image = backing_file(&drv, &id);
    let _cleanup = paths.cleanup(image.clone());
    stage_and_publish(&mut drv, &id, &paths, &default_capability(), 1).await;
    // The spec allows FAILED_PRECONDITION for a volume in use; OK is allowed too.
    match try_delete(&mut drv, &id).await {
        Ok(_) => {}
        Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message()),
    }
    unpublish_and_unstage(&mut drv, &id, &paths, 1).await;
    delete(&mut drv, &id).await;
    assert!(!image.exists());
}

#[tokio::test]
async fn node_stage_and_publish_refuse_multi_node_and_unknown_fs_capabilities() {
    use csi_proto::v1::volume_capability::access_mode::Mode;
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("caps"), GIB).await.volume_id;
    let paths = NodePaths::under(drv.dir.path());
    let (staging, target) = (s(&paths.staging), s(&paths.target));
    let mut refused: Vec<(VolumeCapability, &str)> = [Mode::MultiNodeMultiWriter, Mode::MultiNodeReaderOnly, Mode::MultiNodeSingleWriter]
        .into_iter()
        .map(|mode| (capability_with_mode(mode), mode.as_str_name()))
        .collect();
    refused.push((requests::mount_capability("zfs"), "zfs"));
    let mut block_multi = requests::block_capability();
    block_multi.access_mode = Some(volume_capability::AccessMode { mode: Mode::MultiNodeMultiWriter as i32 });
    refused.push((block_multi, "MULTI_NODE_MULTI_WRITER"));
    for (cap, word) in refused {
        let stage = requests::stage(&id, &staging, cap.clone());
        expect_status(drv.node.node_stage_volume(stage).await, Code::InvalidArgument, &["volume_capability", word]);
        let publish = requests::publish(&id, &staging, &target, cap, false);
        expect_status(drv.node.node_publish_volume(publish).await, Code::InvalidArgument, &["volume_capability", word]);
    }
    assert!(!host::is_mount_point(&paths.staging) && !host::is_mount_point(&paths.target));
    assert!(host::loop_devices_for(&backing_file(&drv, &id)).is_empty(), "a refused stage attached the volume");
}
