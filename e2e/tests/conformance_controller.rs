//! CSI conformance of the Identity and Controller services, after the CSI spec
//! and what kubernetes-csi csi-sanity v5.4 checks. Each test runs its own
//! driver in a fresh directory.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use csi_proto::v1::controller_service_capability::rpc;
use csi_proto::v1::plugin_capability::{self, service, volume_expansion};
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_content_source::{self, SnapshotSource, VolumeSource};
use csi_proto::v1::*;
use swell_e2e::requests;
use tonic::Code;

// ---- Identity (controller socket) ----

#[tokio::test]
async fn identity_names_the_driver_announces_its_services_and_is_ready() {
    let mut drv = driver().await;
    let id = &mut drv.d.controller_identity;
    let info = expect_ok(id.get_plugin_info(GetPluginInfoRequest {}).await, "GetPluginInfo");
    assert_eq!(info.name, "swell.csi.storage");
    assert!(!info.vendor_version.is_empty(), "vendor_version must be set");
    let caps = expect_ok(id.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await, "caps").capabilities;
    let has = |wanted: &plugin_capability::Type| caps.iter().any(|c| c.r#type.as_ref() == Some(wanted));
    let controller = plugin_capability::Service { r#type: service::Type::ControllerService as i32 };
    let online = plugin_capability::VolumeExpansion { r#type: volume_expansion::Type::Online as i32 };
    assert!(has(&plugin_capability::Type::Service(controller)), "CONTROLLER_SERVICE missing: {caps:?}");
    assert!(has(&plugin_capability::Type::VolumeExpansion(online)), "VolumeExpansion ONLINE missing: {caps:?}");
    assert_eq!(expect_ok(id.probe(ProbeRequest {}).await, "Probe").ready, Some(true));
}

#[tokio::test]
async fn controller_capabilities_are_exactly_what_swell_serves() {
    let mut drv = driver().await;
    let caps = expect_ok(drv.controller.controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await, "caps");
    let got = controller_rpc_types(&caps);
    let wanted: BTreeSet<i32> = [
        rpc::Type::CreateDeleteVolume,
        rpc::Type::ListVolumes,
        rpc::Type::GetCapacity,
        rpc::Type::ExpandVolume,
        rpc::Type::GetVolume,
        rpc::Type::VolumeCondition,
        rpc::Type::CreateDeleteSnapshot,
        rpc::Type::ListSnapshots,
        rpc::Type::CloneVolume,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    assert_eq!(got, wanted);
}

// ---- CreateVolume ----

#[tokio::test]
async fn create_volume_rejects_missing_fields_and_creates_nothing() {
    let mut drv = driver().await;
    let name = unique_name("invalid");
    let no_name = requests::create_volume("", GIB, default_capability());
    expect_status(drv.controller.create_volume(no_name).await, Code::InvalidArgument, &["name"]);
    let no_caps = CreateVolumeRequest { volume_capabilities: vec![], ..requests::create_volume(&name, GIB, default_capability()) };
    expect_status(drv.controller.create_volume(no_caps).await, Code::InvalidArgument, &["volume_capabilities"]);
    for (cap, field) in [
        (VolumeCapability { access_type: None, ..default_capability() }, "access_type"),
        (VolumeCapability { access_mode: None, ..default_capability() }, "access_mode"),
    ] {
        let request = requests::create_volume(&name, GIB, cap);
        expect_status(drv.controller.create_volume(request).await, Code::InvalidArgument, &[field]);
    }
    assert!(list_ids(&mut drv).await.is_empty(), "a refused CreateVolume left a volume behind");
}

#[tokio::test]
async fn create_volume_returns_an_id_and_at_least_the_required_size() {
    let mut drv = driver().await;
    let volume = create(&mut drv, &unique_name("ok"), GIB).await;
    let (fetched, _) = get_volume(&mut drv, &volume.volume_id).await;
    assert_eq!((fetched.volume_id.as_str(), fetched.capacity_bytes), (volume.volume_id.as_str(), volume.capacity_bytes));
    assert_eq!(list_ids(&mut drv).await, vec![volume.volume_id.clone()]);
    delete(&mut drv, &volume.volume_id).await;
}

#[tokio::test]
async fn create_volume_is_idempotent_for_the_same_name_and_size() {
    let mut drv = driver().await;
    let name = unique_name("same");
    let first = expect_ok(drv.controller.create_volume(create_exact(&name, GIB)).await, "first").volume.unwrap();
    let second = expect_ok(drv.controller.create_volume(create_exact(&name, GIB)).await, "second").volume.unwrap();
    assert_eq!(first.volume_id, second.volume_id);
    assert_eq!((first.capacity_bytes, second.capacity_bytes), (GIB, GIB));
    assert_eq!(list_ids(&mut drv).await.len(), 1);
}

#[tokio::test]
async fn create_volume_same_name_other_size_is_already_exists() {
    let mut drv = driver().await;
    let name = unique_name("clash");
    let first = expect_ok(drv.controller.create_volume(create_exact(&name, GIB)).await, "first").volume.unwrap();
    expect_status(drv.controller.create_volume(create_exact(&name, 2 * GIB)).await, Code::AlreadyExists, &[&name]);
    assert_eq!(size_of(&mut drv, &first.volume_id).await, GIB, "the existing volume was changed");
    assert_eq!(list_ids(&mut drv).await.len(), 1);
}

#[tokio::test]
async fn create_volume_accepts_a_128_character_name() {
    let mut drv = driver().await;
    let name = format!("sanity-{}", "x".repeat(121));
    assert_eq!(name.len(), 128);
    let volume = create(&mut drv, &name, GIB).await;
    assert!(volume.volume_id.len() <= 128, "volume_id longer than the spec's 128 bytes");
}

#[tokio::test]
async fn create_volume_rejects_required_above_limit() {
    let mut drv = driver().await;
    let request = CreateVolumeRequest {
        capacity_range: Some(CapacityRange { required_bytes: 2 * GIB, limit_bytes: GIB }),
        ..requests::create_volume(&unique_name("range"), 2 * GIB, default_capability())
    };
    expect_status(drv.controller.create_volume(request).await, Code::InvalidArgument, &["capacity_range"]);
    assert!(list_ids(&mut drv).await.is_empty());
}

#[tokio::test]
async fn create_volume_from_a_source_that_does_not_exist_is_not_found() {
    let mut drv = driver().await;
    let absent_snapshot = format!("local:{}", swell_storage::snapshot::snapshot_key("absent"));
    let sources = [
        volume_content_source::Type::Snapshot(SnapshotSource { snapshot_id: "snap-1".into() }),
        volume_content_source::Type::Snapshot(SnapshotSource { snapshot_id: absent_snapshot }),
        volume_content_source::Type::Volume(VolumeSource { volume_id: absent_local_id() }),
        volume_content_source::Type::Volume(VolumeSource { volume_id: "not-an-id".into() }),
    ];
    for source in sources {
        let request = CreateVolumeRequest {
            volume_content_source: Some(VolumeContentSource { r#type: Some(source.clone()) }),
            ..requests::create_volume(&unique_name("clone"), GIB, default_capability())
        };
        expect_status(drv.controller.create_volume(request).await, Code::NotFound, &[]);
    }
    let empty = CreateVolumeRequest {
        volume_content_source: Some(VolumeContentSource { r#type: None }),
        ..requests::create_volume(&unique_name("clone"), GIB, default_capability())
    };
    expect_status(drv.controller.create_volume(empty).await, Code::InvalidArgument, &["volume_content_source"]);
    assert!(list_ids(&mut drv).await.is_empty());
}

#[tokio::test]
async fn create_volume_refuses_multi_node_access_modes() {
    let mut drv = driver().await;
    for mode in [Mode::MultiNodeMultiWriter, Mode::MultiNodeReaderOnly, Mode::MultiNodeSingleWriter] {
        let request = requests::create_volume(&unique_name("multi"), GIB, capability_with_mode(mode));
        expect_status(drv.controller.create_volume(request).await, Code::InvalidArgument, &[mode.as_str_name()]);
    }
    assert!(list_ids(&mut drv).await.is_empty());
}

#[tokio::test]
async fn create_volume_refuses_unknown_parameters_but_ignores_provisioner_keys() {
    let mut drv = driver().await;
    let typo =
        CreateVolumeRequest { parameters: parameters("nonexistent-key", "x"), ..requests::create_volume(&unique_name("params"), GIB, default_capability()) };
    expect_status(drv.controller.create_volume(typo).await, Code::InvalidArgument, &["nonexistent-key"]);
    // The local backend has no pools: a StorageClass naming one is a mistake to report, not to ignore.
    let pooled = CreateVolumeRequest { parameters: parameters("pool", "fast"), ..requests::create_volume(&unique_name("params"), GIB, default_capability()) };
    expect_status(drv.controller.create_volume(pooled).await, Code::InvalidArgument, &["pool", "no pools"]);
    assert!(list_ids(&mut drv).await.is_empty());
    // The external-provisioner adds these with --extra-create-metadata.
    let metadata = CreateVolumeRequest {
        parameters: parameters("csi.storage.k8s.io/pvc/name", "data"),
        ..requests::create_volume(&unique_name("params"), GIB, default_capability())
    };
    expect_ok(drv.controller.create_volume(metadata).await, "CreateVolume with provisioner metadata");
}

#[tokio::test]
async fn create_volume_beyond_capacity_is_out_of_range_and_creates_nothing() {
    let mut drv = driver_with_capacity(2 * GIB).await;
    let request = requests::create_volume(&unique_name("huge"), 3 * GIB, default_capability());
    expect_status(drv.controller.create_volume(request).await, Code::OutOfRange, &[]);
    assert!(list_ids(&mut drv).await.is_empty(), "a refused create left a volume");
    assert_eq!(available(&mut drv).await, 2 * GIB);
    create(&mut drv, &unique_name("fits"), GIB).await;
}

#[tokio::test]
async fn a_mount_volume_below_its_filesystems_minimum_is_raised_to_it_or_out_of_range() {
    let mut drv = driver().await;
    let min = |fs| i64::try_from(csi_endpoint::capabilities::min_fs_bytes(fs)).unwrap();
    let capacity = |response: CreateVolumeResponse| response.volume.expect("volume").capacity_bytes;
    for fs in ["", "xfs", "btrfs", "ext4"] {
        let small = requests::create_volume(&unique_name("small"), 8 << 10, requests::mount_capability(fs));
        assert_eq!(capacity(expect_ok(drv.controller.create_volume(small).await, fs)), min(fs), "{fs:?}: raised to the minimum");
    }
    let within = CreateVolumeRequest {
        capacity_range: Some(CapacityRange { required_bytes: 64 * MIB, limit_bytes: GIB }),
        ..requests::create_volume(&unique_name("within"), 0, requests::mount_capability("xfs"))
    };
    assert_eq!(capacity(expect_ok(drv.controller.create_volume(within).await, "limit above the minimum")), min("xfs"));
    let capped = CreateVolumeRequest {
        capacity_range: Some(CapacityRange { required_bytes: 64 * MIB, limit_bytes: 200 * MIB }),
        ..requests::create_volume(&unique_name("capped"), 0, requests::mount_capability("xfs"))
    };
    expect_status(drv.controller.create_volume(capped).await, Code::OutOfRange, &["xfs", "limit_bytes"]);
    let block = CreateVolumeRequest {
        capacity_range: Some(CapacityRange { required_bytes: 8 << 10, limit_bytes: 8 << 10 }),
        ..requests::create_volume(&unique_name("block"), 0, requests::block_capability())
    };
    assert_eq!(capacity(expect_ok(drv.controller.create_volume(block).await, "block")), 8 << 10, "a block volume has no minimum");
}

// ---- DeleteVolume ----

#[tokio::test]
async fn delete_volume_requires_an_id() {
    let mut drv = driver().await;
    expect_status(try_delete(&mut drv, "").await, Code::InvalidArgument, &["volume_id"]);
}

#[tokio::test]
async fn delete_volume_of_unknown_or_malformed_ids_succeeds_and_touches_nothing() {
    let mut drv = driver().await;
    let kept = create(&mut drv, &unique_name("kept"), GIB).await.volume_id;
    for id in [absent_local_id(), "some-fake-id".to_owned(), "local:../../etc".to_owned(), "rbd:pool:img".to_owned()] {
        expect_ok(try_delete(&mut drv, &id).await, &format!("DeleteVolume {id}"));
    }
    assert_eq!(list_ids(&mut drv).await, vec![kept]);
}

#[tokio::test]
async fn delete_volume_twice_succeeds() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("twice"), GIB).await.volume_id;
    delete(&mut drv, &id).await;
    delete(&mut drv, &id).await;
    assert!(list_ids(&mut drv).await.is_empty());
    let request = ControllerGetVolumeRequest { volume_id: id };
    expect_status(drv.controller.controller_get_volume(request).await, Code::NotFound, &[]);
}

// ---- ValidateVolumeCapabilities ----

#[tokio::test]
async fn validate_capabilities_rejects_missing_fields_and_unknown_volumes() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("validate"), GIB).await.volume_id;
    let c = &mut drv.d.controller;
    expect_status(c.validate_volume_capabilities(validate("", vec![default_capability()])).await, Code::InvalidArgument, &["volume_id"]);
    expect_status(c.validate_volume_capabilities(validate(&id, vec![])).await, Code::InvalidArgument, &["volume_capabilities"]);
    for unknown in [absent_local_id(), "some-fake-id".to_owned()] {
        expect_status(c.validate_volume_capabilities(validate(&unknown, vec![default_capability()])).await, Code::NotFound, &[]);
    }
}

#[tokio::test]
async fn validate_capabilities_confirms_single_node_and_refuses_multi_node() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("validate"), GIB).await.volume_id;
    let caps = vec![default_capability(), requests::block_capability()];
    let answer = expect_ok(drv.controller.validate_volume_capabilities(validate(&id, caps.clone())).await, "validate");
    let confirmed = answer.confirmed.expect("supported capabilities not confirmed");
    assert_eq!(confirmed.volume_capabilities, caps);
    let multi = vec![capability_with_mode(Mode::MultiNodeMultiWriter)];
    let answer = expect_ok(drv.controller.validate_volume_capabilities(validate(&id, multi)).await, "validate multi");
    assert!(answer.confirmed.is_none(), "multi-node writer confirmed: {answer:?}");
    assert!(!answer.message.is_empty(), "refusal without a message");
}

// ---- ListVolumes ----

#[tokio::test]
async fn list_volumes_tracks_creates_and_deletes() {
    let mut drv = driver().await;
    assert!(list_page(&mut drv, 0, "").await.entries.is_empty());
    let before = list_ids(&mut drv).await.len();
    let id = create(&mut drv, &unique_name("listed"), GIB).await.volume_id;
    let after_create = list_ids(&mut drv).await;
    assert_eq!(after_create.len(), before + 1);
    assert!(after_create.contains(&id));
    delete(&mut drv, &id).await;
    let after_delete = list_ids(&mut drv).await;
    assert_eq!(after_delete.len(), before);
    assert!(!after_delete.contains(&id));
}

#[tokio::test]
async fn list_volumes_rejects_foreign_tokens_and_negative_sizes() {
    let mut drv = driver().await;
    create(&mut drv, &unique_name("listed"), GIB).await;
    let bad_token = ListVolumesRequest { max_entries: 0, starting_token: "invalid-token".into() };
    expect_status(drv.controller.list_volumes(bad_token).await, Code::Aborted, &["invalid-token"]);
    let negative = ListVolumesRequest { max_entries: -1, starting_token: String::new() };
    expect_status(drv.controller.list_volumes(negative).await, Code::InvalidArgument, &["max_entries"]);
}

#[tokio::test]
async fn list_volumes_pages_cover_every_volume_exactly_once() {
    let mut drv = driver().await;
    let mut created = BTreeSet::new();
    for _ in 0..5 {
        created.insert(create(&mut drv, &unique_name("page"), 64 * MIB).await.volume_id);
    }
    let first = list_page(&mut drv, 2, "").await;
    assert_eq!(first.entries.len(), 2);
    assert!(!first.next_token.is_empty(), "a partial page needs a next_token");
    let mut seen = page_ids(&first);
    seen.extend(walk(&mut drv, first.next_token).await);
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a volume was listed twice: {seen:?}");
    assert_eq!(unique, created);
}

#[tokio::test]
async fn list_volumes_token_survives_deleting_the_last_listed_volume() {
    let mut drv = driver().await;
    let mut created = BTreeSet::new();
    for _ in 0..4 {
        created.insert(create(&mut drv, &unique_name("page"), 64 * MIB).await.volume_id);
    }
    let first = list_page(&mut drv, 2, "").await;
    let first_ids = page_ids(&first);
    assert_eq!(first_ids.len(), 2);
    assert!(!first.next_token.is_empty());
    let gone = first_ids[1].clone();
    delete(&mut drv, &gone).await;
    let added = create(&mut drv, &unique_name("page-new"), 64 * MIB).await.volume_id;
    let rest = walk(&mut drv, first.next_token).await;
    assert!(!rest.contains(&gone), "a deleted volume was listed after its deletion");
    let mut seen = first_ids.clone();
    seen.extend(rest);
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a volume was listed twice: {seen:?}");
    for id in created.iter().filter(|id| **id != gone) {
        assert!(unique.contains(id), "volume {id} existed throughout but was never listed");
    }
    // A volume created mid-walk may or may not appear; nothing else may.
    assert!(unique.iter().all(|id| created.contains(id) || *id == added), "{unique:?}");
    let now: BTreeSet<String> = list_ids(&mut drv).await.into_iter().collect();
    let expected: BTreeSet<String> = created.iter().filter(|id| **id != gone).cloned().chain([added]).collect();
    assert_eq!(now, expected);
}

// ---- GetCapacity and ControllerGetVolume ----

#[tokio::test]
async fn get_capacity_reports_room_and_subtracts_promised_bytes_exactly() {
    assert!(available(&mut driver().await.d).await > 0, "no room on the default backend");
    let mut drv = driver_with_capacity(10 * GIB).await;
    assert_eq!(available(&mut drv).await, 10 * GIB);
    let id = create(&mut drv, &unique_name("cap"), 3 * GIB).await.volume_id;
    assert_eq!(available(&mut drv).await, 7 * GIB);
    delete(&mut drv, &id).await;
    assert_eq!(available(&mut drv).await, 10 * GIB);
}

#[tokio::test]
async fn controller_get_volume_unknown_is_not_found() {
    let mut drv = driver().await;
    for id in [absent_local_id(), "some-fake-id".to_owned()] {
        let request = ControllerGetVolumeRequest { volume_id: id };
        expect_status(drv.controller.controller_get_volume(request).await, Code::NotFound, &[]);
    }
    let empty = ControllerGetVolumeRequest { volume_id: String::new() };
    expect_status(drv.controller.controller_get_volume(empty).await, Code::InvalidArgument, &["volume_id"]);
}

#[tokio::test]
async fn controller_get_volume_reports_the_volume_and_a_normal_condition() {
    let mut drv = driver().await;
    let created = create(&mut drv, &unique_name("get"), GIB).await;
    let (volume, condition) = get_volume(&mut drv, &created.volume_id).await;
    assert_eq!(volume.volume_id, created.volume_id);
    assert_eq!(volume.capacity_bytes, created.capacity_bytes);
    let condition = condition.expect("VOLUME_CONDITION announced but no volume_condition returned");
    assert!(!condition.abnormal, "fresh volume abnormal: {}", condition.message);
}

// ---- ControllerExpandVolume ----

#[tokio::test]
async fn expand_rejects_missing_and_contradictory_fields() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("expand"), GIB).await.volume_id;
    let c = &mut drv.d.controller;
    expect_status(c.controller_expand_volume(requests::controller_expand("", 2 * GIB, None)).await, Code::InvalidArgument, &["volume_id"]);
    let no_range = ControllerExpandVolumeRequest { capacity_range: None, ..requests::controller_expand(&id, 2 * GIB, None) };
    expect_status(c.controller_expand_volume(no_range).await, Code::InvalidArgument, &["capacity_range"]);
    expect_status(c.controller_expand_volume(expand_range(&id, 3 * GIB, 2 * GIB)).await, Code::InvalidArgument, &["capacity_range"]);
    assert_eq!(size_of(&mut drv, &id).await, GIB, "a refused expansion changed the size");
}

#[tokio::test]
async fn expand_unknown_or_malformed_volume_is_not_found() {
    let mut drv = driver().await;
    for id in [absent_local_id(), "some-fake-id".to_owned()] {
        let request = requests::controller_expand(&id, 2 * GIB, None);
        expect_status(drv.controller.controller_expand_volume(request).await, Code::NotFound, &[]);
    }
}

#[tokio::test]
async fn expand_without_capability_grows_to_exactly_the_requested_size() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("expand"), GIB).await.volume_id;
    let grown = expect_ok(drv.controller.controller_expand_volume(requests::controller_expand(&id, 2 * GIB, None)).await, "expand");
    assert_eq!(grown.capacity_bytes, 2 * GIB, "csi-sanity requires the exact requested size");
    assert!(grown.node_expansion_required, "a loop-backed filesystem needs the node step");
    let (volume, condition) = get_volume(&mut drv, &id).await;
    assert_eq!(volume.capacity_bytes, 2 * GIB);
    assert!(!condition.expect("volume_condition").abnormal);
    // As the external-resizer sends it: with the capability.
    let with_cap = requests::controller_expand(&id, 3 * GIB, Some(default_capability()));
    assert_eq!(expect_ok(drv.controller.controller_expand_volume(with_cap).await, "expand with capability").capacity_bytes, 3 * GIB);
    // An unaligned request gets at least what it asked for.
    let odd = requests::controller_expand(&id, 3 * GIB + 1, None);
    let odd = expect_ok(drv.controller.controller_expand_volume(odd).await, "unaligned expand").capacity_bytes;
    assert!(odd > 3 * GIB, "got {odd}");
    assert_eq!(size_of(&mut drv, &id).await, odd);
}

#[tokio::test]
async fn expand_is_idempotent() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("expand"), GIB).await.volume_id;
    for attempt in 0..2 {
        let grown = expect_ok(drv.controller.controller_expand_volume(requests::controller_expand(&id, 2 * GIB, None)).await, "expand");
        assert_eq!(grown.capacity_bytes, 2 * GIB, "attempt {attempt}");
    }
    assert_eq!(size_of(&mut drv, &id).await, 2 * GIB);
}

#[tokio::test]
async fn expand_to_a_smaller_size_succeeds_without_shrinking() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("expand"), GIB).await.volume_id;
    expect_ok(drv.controller.controller_expand_volume(requests::controller_expand(&id, 3 * GIB, None)).await, "grow");
    let stale = expect_ok(drv.controller.controller_expand_volume(requests::controller_expand(&id, 2 * GIB, None)).await, "stale");
    assert_eq!(stale.capacity_bytes, 3 * GIB, "answer must be the current, larger size");
    assert_eq!(size_of(&mut drv, &id).await, 3 * GIB, "the volume shrank");
}

#[tokio::test]
async fn expand_beyond_the_pool_is_out_of_range_and_changes_nothing() {
    let mut drv = driver_with_capacity(4 * GIB).await;
    let id = create(&mut drv, &unique_name("expand"), GIB).await.volume_id;
    expect_status(drv.controller.controller_expand_volume(requests::controller_expand(&id, 8 * GIB, None)).await, Code::OutOfRange, &[]);
    let (volume, condition) = get_volume(&mut drv, &id).await;
    assert_eq!(volume.capacity_bytes, GIB);
    assert!(!condition.expect("volume_condition").abnormal, "a refused request is no fault of the volume");
    assert_eq!(available(&mut drv).await, 3 * GIB);
    // KEP-1790: the user lowers the request to what fits, and it works.
    let lowered = expect_ok(drv.controller.controller_expand_volume(requests::controller_expand(&id, 4 * GIB, None)).await, "lowered");
    assert_eq!(lowered.capacity_bytes, 4 * GIB);
}

#[tokio::test]
async fn expand_with_limit_below_current_size_is_out_of_range() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("expand"), 2 * GIB).await.volume_id;
    let request = expand_range(&id, GIB, GIB + 512 * MIB);
    expect_status(drv.controller.controller_expand_volume(request).await, Code::OutOfRange, &[]);
    assert_eq!(size_of(&mut drv, &id).await, 2 * GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_expansions_answer_ok_or_aborted_and_never_lose_growth() {
    let mut drv = driver_with_capacity(64 * GIB).await;
    let initial = create(&mut drv, &unique_name("race"), GIB).await;
    let id = initial.volume_id.clone();
    let mut calls = Vec::new();
    for i in 0..16 {
        let (mut client, id, size) = (drv.controller.clone(), id.clone(), (2 + i) * GIB);
        calls.push(tokio::spawn(async move { (size, client.controller_expand_volume(requests::controller_expand(&id, size, None)).await) }));
    }
    let (mut succeeded, mut aborted) = (Vec::new(), Vec::new());
    for call in calls {
        let (size, result) = call.await.unwrap();
        match result {
            Ok(answer) => {
                assert!(answer.get_ref().capacity_bytes >= size, "OK for {size} with {}", answer.get_ref().capacity_bytes);
                succeeded.push(size);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "size {size}: {}", status.message());
                aborted.push(size);
            }
        }
    }
    eprintln!("concurrent expansions: {} OK, {} ABORTED", succeeded.len(), aborted.len());
    assert!(!succeeded.is_empty(), "every concurrent call was aborted");
    let (volume, condition) = get_volume(&mut drv, &id).await;
    assert!(volume.capacity_bytes >= initial.capacity_bytes);
    assert!(volume.capacity_bytes >= *succeeded.iter().max().unwrap(), "growth lost: {} < {succeeded:?}", volume.capacity_bytes);
    assert!(volume.capacity_bytes <= 17 * GIB, "grew past every request: {}", volume.capacity_bytes);
    assert!(!condition.expect("volume_condition").abnormal);
    // ABORTED is transient: the retries succeed (no lock left stuck).
    for size in aborted {
        let retry = expect_ok(drv.controller.controller_expand_volume(requests::controller_expand(&id, size, None)).await, "retry");
        assert!(retry.capacity_bytes >= size);
    }
    assert_eq!(size_of(&mut drv, &id).await, 17 * GIB, "after the retries the largest request holds");
}

#[tokio::test]
async fn snapshot_requests_are_checked_and_listed_a_page_at_a_time() {
    let mut drv = driver().await;
    // The smallest volume the default filesystem (xfs) allows.
    let size = i64::try_from(csi_endpoint::capabilities::min_fs_bytes("")).unwrap();
    let vol = create(&mut drv, &unique_name("snapped"), size).await;
    let snap = |name: &str, source: &str| CreateSnapshotRequest { name: name.into(), source_volume_id: source.into(), ..Default::default() };
    expect_status(drv.controller.create_snapshot(snap("", &vol.volume_id)).await, Code::InvalidArgument, &["name"]);
    expect_status(drv.controller.create_snapshot(snap("s", "")).await, Code::InvalidArgument, &["source_volume_id"]);
    expect_status(drv.controller.create_snapshot(snap("s", &absent_local_id())).await, Code::NotFound, &[]);
    expect_status(drv.controller.delete_snapshot(DeleteSnapshotRequest::default()).await, Code::InvalidArgument, &["snapshot_id"]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let made = expect_ok(drv.controller.create_snapshot(snap(&format!("snap-{i}"), &vol.volume_id)).await, "create snapshot");
        let made = made.snapshot.expect("snapshot");
        assert!(made.ready_to_use && made.size_bytes == size && made.source_volume_id == vol.volume_id && made.creation_time.is_some());
        ids.push(made.snapshot_id);
    }
    let again = expect_ok(drv.controller.create_snapshot(snap("snap-0", &vol.volume_id)).await, "repeat").snapshot.expect("snapshot");
    assert_eq!(again.snapshot_id, ids[0], "idempotent by name");
    let list = |token: &str, max: i32| ListSnapshotsRequest { max_entries: max, starting_token: token.into(), ..Default::default() };
    let first = expect_ok(drv.controller.list_snapshots(list("", 2)).await, "page 1");
    let second = expect_ok(drv.controller.list_snapshots(list(&first.next_token, 2)).await, "page 2");
    let mut paged: Vec<String> = first.entries.iter().chain(&second.entries).filter_map(|e| e.snapshot.as_ref()).map(|s| s.snapshot_id.clone()).collect();
    assert_eq!(second.next_token, "");
    paged.sort();
    ids.sort();
    assert_eq!(paged, ids);
    expect_status(drv.controller.list_snapshots(list("not-a-token", 0)).await, Code::Aborted, &[]);
    expect_status(drv.controller.list_snapshots(list("", -1)).await, Code::InvalidArgument, &["max_entries"]);
    let by_id = ListSnapshotsRequest { snapshot_id: ids[1].clone(), ..Default::default() };
    assert_eq!(expect_ok(drv.controller.list_snapshots(by_id).await, "by id").entries.len(), 1);
    for absent in ["local:snap-00000000000000000000000000000000", "nothing"] {
        let by_id = ListSnapshotsRequest { snapshot_id: absent.into(), ..Default::default() };
        assert!(expect_ok(drv.controller.list_snapshots(by_id).await, "absent id").entries.is_empty());
        let by_source = ListSnapshotsRequest { source_volume_id: absent.into(), ..Default::default() };
        assert!(expect_ok(drv.controller.list_snapshots(by_source).await, "absent source").entries.is_empty());
    }
    let by_source = ListSnapshotsRequest { source_volume_id: vol.volume_id.clone(), ..Default::default() };
    assert_eq!(expect_ok(drv.controller.list_snapshots(by_source).await, "by source").entries.len(), 3);
    for id in &ids {
        expect_ok(drv.controller.delete_snapshot(DeleteSnapshotRequest { snapshot_id: id.clone(), ..Default::default() }).await, "delete");
    }
    assert!(expect_ok(drv.controller.list_snapshots(list("", 0)).await, "empty").entries.is_empty());
}

#[tokio::test]
async fn an_encrypted_local_volume_is_created_and_its_snapshot_restore_and_clone_carry_its_wrapped_key_and_name_its_source() {
    let mut drv = driver().await;
    let size = i64::try_from(csi_endpoint::capabilities::min_fs_bytes("")).unwrap();
    let encrypted = parameters("encrypted", "true");
    let create_from = |name: &str, bytes: i64, source: volume_content_source::Type| CreateVolumeRequest {
        parameters: encrypted.clone(),
        volume_content_source: Some(VolumeContentSource { r#type: Some(source) }),
        ..requests::create_volume(name, bytes, default_capability())
    };
    let request = CreateVolumeRequest { parameters: encrypted.clone(), ..requests::create_volume(&unique_name("sealed"), size, default_capability()) };
    let source = expect_ok(drv.controller.create_volume(request).await, "CreateVolume, local, encrypted").volume.expect("volume");
    assert_eq!(source.volume_context.get("encrypted").map(String::as_str), Some("true"), "the node is told to encrypt: {:?}", source.volume_context);
    assert!(!source.volume_context.contains_key("encryptionKeyFrom"), "a new volume's key is its own");
    // As the node stores it at the first stage.
    let state = drv.local_state_dir.clone();
    let source_id: swell_storage::VolumeId = source.volume_id.parse().unwrap();
    swell_local::keys::write_wrapped_key(&state, &source_id, "v1:0011223344556677:bm9uY2U:c2VhbGVk").unwrap();

    let snap = CreateSnapshotRequest { name: unique_name("sealed-snap"), source_volume_id: source.volume_id.clone(), ..Default::default() };
    let snapshot = expect_ok(drv.controller.create_snapshot(snap).await, "CreateSnapshot").snapshot.expect("snapshot");
    let restore =
        create_from(&unique_name("restored"), 2 * size, volume_content_source::Type::Snapshot(SnapshotSource { snapshot_id: snapshot.snapshot_id.clone() }));
    let clone = create_from(&unique_name("cloned"), size, volume_content_source::Type::Volume(VolumeSource { volume_id: source.volume_id.clone() }));
    let mut copies = Vec::new();
    for request in [restore, clone] {
        let copy = expect_ok(drv.controller.create_volume(request).await, "CreateVolume from a source, encrypted").volume.expect("volume");
        assert_eq!(copy.volume_context.get("encryptionKeyFrom"), Some(&source.volume_id), "names the volume its key is bound to: {:?}", copy.volume_context);
        let id: swell_storage::VolumeId = copy.volume_id.parse().unwrap();
        assert_eq!(
            swell_local::keys::read_wrapped_key(&state, &id).unwrap().as_deref(),
            Some("v1:0011223344556677:bm9uY2U:c2VhbGVk"),
            "the copy holds the source's wrapped key"
        );
        copies.push(id);
    }
    expect_ok(drv.controller.delete_snapshot(DeleteSnapshotRequest { snapshot_id: snapshot.snapshot_id, ..Default::default() }).await, "DeleteSnapshot");
    for id in copies.iter().chain([&source_id]) {
        delete(&mut drv, &id.to_string()).await;
        assert_eq!(swell_local::keys::read_wrapped_key(&state, id).unwrap(), None, "DeleteVolume removed the key of {id}");
    }
    let found = std::process::Command::new("find").arg(&state).args(["-name", "*.wrapped-key"]).output().unwrap();
    assert!(found.status.success() && found.stdout.is_empty(), "key files left behind: {}", String::from_utf8_lossy(&found.stdout));
}

// ---- Gaps csi-sanity leaves open ----

/// Capabilities a request must not get past validation with, each with the
/// word its refusal names.
fn broken_capabilities() -> Vec<(VolumeCapability, &'static str)> {
    vec![
        (VolumeCapability { access_type: None, ..default_capability() }, "access_type"),
        (VolumeCapability { access_mode: None, ..default_capability() }, "access_mode"),
        (capability_with_mode(Mode::MultiNodeMultiWriter), "MULTI_NODE"),
        (requests::mount_capability("zfs"), "zfs"),
    ]
}

#[tokio::test]
async fn expand_with_required_bytes_zero_or_a_bad_capability_is_invalid_argument() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("expand-gaps"), GIB).await.volume_id;
    let c = &mut drv.d.controller;
    // 0 means "not given" (CapacityRange): there is no size to grow to.
    expect_status(c.controller_expand_volume(expand_range(&id, 0, 0)).await, Code::InvalidArgument, &["required_bytes"]);
    expect_status(c.controller_expand_volume(expand_range(&id, 0, 2 * GIB)).await, Code::InvalidArgument, &["required_bytes"]);
    for (cap, word) in broken_capabilities() {
        let request = requests::controller_expand(&id, 2 * GIB, Some(cap));
        expect_status(c.controller_expand_volume(request).await, Code::InvalidArgument, &["volume_capability", word]);
    }
    assert_eq!(size_of(&mut drv, &id).await, GIB, "a refused expansion changed the size");
}

#[tokio::test]
async fn create_volume_refuses_an_unsupported_fs_type_and_negative_sizes() {
    let mut drv = driver().await;
    let name = unique_name("create-gaps");
    let zfs = requests::create_volume(&name, GIB, requests::mount_capability("zfs"));
    expect_status(drv.controller.create_volume(zfs).await, Code::InvalidArgument, &["zfs"]);
    let negative = |required, limit| CreateVolumeRequest {
        capacity_range: Some(CapacityRange { required_bytes: required, limit_bytes: limit }),
        ..requests::create_volume(&name, GIB, default_capability())
    };
    expect_status(drv.controller.create_volume(negative(-1, 0)).await, Code::InvalidArgument, &["required_bytes", "negative"]);
    expect_status(drv.controller.create_volume(negative(GIB, -GIB)).await, Code::InvalidArgument, &["limit_bytes", "negative"]);
    expect_status(drv.controller.create_volume(negative(i64::MIN, i64::MIN)).await, Code::InvalidArgument, &["negative"]);
    assert!(list_ids(&mut drv).await.is_empty(), "a refused CreateVolume left a volume behind");
}

#[tokio::test]
async fn validate_capabilities_with_an_incomplete_capability_is_invalid_argument() {
    let mut drv = driver().await;
    let id = create(&mut drv, &unique_name("validate-gaps"), GIB).await.volume_id;
    let c = &mut drv.d.controller;
    for incomplete in [VolumeCapability { access_type: None, ..default_capability() }, VolumeCapability { access_mode: None, ..default_capability() }] {
        // Alone, and behind a complete one: one incomplete capability is enough.
        for caps in [vec![incomplete.clone()], vec![default_capability(), incomplete]] {
            expect_status(c.validate_volume_capabilities(validate(&id, caps)).await, Code::InvalidArgument, &["volume_capabilities"]);
        }
    }
}
