//! Every INVALID_ARGUMENT (and the NOT_FOUND for bad ids) of `validate`.

use csi_proto::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};
use csi_proto::v1::{CapacityRange, VolumeCapability};
use tonic::Code;

use super::*;

const ID: &str = "local:0123456789abcdef0123456789abcdef";

fn mount_cap(fs_type: &str, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs_type.into(), ..Default::default() })),
    }
}

fn stage_req() -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: ID.into(),
        staging_target_path: "/staging/pv".into(),
        volume_capability: Some(mount_cap("", Mode::SingleNodeWriter)),
        ..Default::default()
    }
}

fn field_of(err: NodeError) -> &'static str {
    match err {
        NodeError::InvalidArgument { field, .. } => field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[test]
fn stage_accepts_a_default_mount_and_block() {
    let ok = stage(&stage_req()).expect("valid");
    assert_eq!(ok.access, Access::Mount { fs_type: FsType::Xfs, mount_flags: vec![] });
    let mut req = stage_req();
    req.volume_capability = Some(VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeMultiWriter as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    });
    assert_eq!(stage(&req).expect("valid").access, Access::Block);
}

fn with_flags(fs_type: &str, flags: &[&str]) -> NodeStageVolumeRequest {
    let mut req = stage_req();
    let mut cap = mount_cap(fs_type, Mode::SingleNodeWriter);
    if let Some(AccessType::Mount(mount)) = cap.access_type.as_mut() {
        mount.mount_flags = flags.iter().map(|f| (*f).to_owned()).collect();
    }
    req.volume_capability = Some(cap);
    req
}

#[test]
fn mount_flags_outside_the_filesystems_allow_list_are_invalid_and_read_only_is_seen() {
    for (fs, flags) in
        [("xfs", &["suid"][..]), ("", &["noatime,dev"][..]), ("ext4", &["errors=panic"][..]), ("btrfs", &["subvol=/x"][..]), ("xfs", &["logdev=/dev/sda"][..])]
    {
        let err = stage(&with_flags(fs, flags)).expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains("not allowed"), "{err}");
        assert_eq!(field_of(err), "volume_capability.mount.mount_flags");
    }
    let ok = stage(&with_flags("ext4", &["noatime,errors=remount-ro", "ro"])).expect("allowed");
    assert!(ok.read_only, "an ro flag stages read-only");
    let mut reader = stage_req();
    reader.volume_capability = Some(mount_cap("", Mode::SingleNodeReaderOnly));
    assert!(stage(&reader).expect("valid").read_only, "a reader's mode stages read-only");
    assert!(!stage(&stage_req()).expect("valid").read_only);
}

#[test]
fn stage_rejects_each_bad_field_by_name() {
    type Mutation = Box<dyn Fn(&mut NodeStageVolumeRequest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("volume_id", Box::new(|r| r.volume_id.clear())),
        ("staging_target_path", Box::new(|r| r.staging_target_path.clear())),
        ("staging_target_path", Box::new(|r| r.staging_target_path = "relative/path".into())),
        ("staging_target_path", Box::new(|r| r.staging_target_path = "/a/../etc".into())),
        ("volume_capability", Box::new(|r| r.volume_capability = None)),
        ("volume_capability.access_type", Box::new(|r| r.volume_capability.as_mut().expect("cap").access_type = None)),
        ("volume_capability.access_mode", Box::new(|r| r.volume_capability.as_mut().expect("cap").access_mode = None)),
        ("volume_capability.access_mode", Box::new(|r| r.volume_capability = Some(mount_cap("", Mode::MultiNodeMultiWriter)))),
        ("volume_capability.access_mode", Box::new(|r| r.volume_capability = Some(mount_cap("", Mode::Unknown)))),
        ("volume_capability.access_mode", Box::new(|r| r.volume_capability.as_mut().expect("cap").access_mode = Some(AccessMode { mode: 99 }))),
        ("volume_capability.mount.fs_type", Box::new(|r| r.volume_capability = Some(mount_cap("ntfs", Mode::SingleNodeWriter)))),
    ];
    for (field, mutate) in cases {
        let mut req = stage_req();
        mutate(&mut req);
        let err = stage(&req).expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(field_of(err), field);
    }
}

#[test]
fn stage_reads_the_attach_choice_from_the_volume_context_and_refuses_a_bad_one() {
    let rbd_id = swell_storage::RbdVolume::for_name("c", "rbd", "pvc").expect("volume").id().to_string();
    let context = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let mut req = stage_req();
    req.volume_id = rbd_id.clone();
    req.volume_context = context(&[("mounter", "rbd-nbd"), ("mapOptions", "nbd:io-timeout=30"), ("imageName", "ignored")]);
    let staged = stage(&req).expect("valid");
    assert_eq!(staged.attach.mounter, Some(rbd_attach::AttachMode::Nbd));
    assert_eq!(staged.attach.map_options.nbd(), ["--io-timeout", "30"]);
    for (pairs, field) in [
        (&[("mounter", "krbd")][..], "volume_context.mounter"),
        (&[("mapOptions", "krbd:exclusive")][..], "volume_context.mapOptions"),
        (&[("mounter", "fuse"), ("mapOptions", "lock_on_read")][..], "volume_context.mapOptions"),
    ] {
        req.volume_context = context(pairs);
        let err = stage(&req).expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(field_of(err), field);
    }
    let mut local = stage_req();
    local.volume_context = context(&[("mounter", "rbd")]);
    assert_eq!(field_of(stage(&local).expect_err("local volume with a mounter")), "volume_context");
    local.volume_context = context(&[("encrypted", "true")]);
    local.secrets = context(&[("encryptionKEK", "0123456789abcdef0123456789abcdef")]);
    assert!(stage(&local).expect("a local volume may be encrypted").kek.is_some());
}

#[test]
fn stage_reads_the_source_an_encrypted_copy_took_its_key_from_and_refuses_it_elsewhere() {
    let rbd_id = |name: &str| swell_storage::RbdVolume::for_name("c", "rbd", name).expect("volume").id().to_string();
    let context = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let mut req = stage_req();
    req.volume_id = rbd_id("restored");
    req.secrets = context(&[("encryptionKEK", "0123456789abcdef0123456789abcdef")]);
    req.volume_context = context(&[("encrypted", "true"), ("encryptionKeyFrom", &rbd_id("source"))]);
    assert_eq!(stage(&req).expect("valid").key_from.map(|v| v.to_string()), Some(rbd_id("source")));
    let source = rbd_id("source");
    for pairs in [&[("encrypted", "true"), ("encryptionKeyFrom", "not an id")][..], &[("encryptionKeyFrom", source.as_str())][..]] {
        req.volume_context = context(pairs);
        assert_eq!(field_of(stage(&req).expect_err("refused")), "volume_context.encryptionKeyFrom", "{pairs:?}");
    }
}

#[test]
fn an_id_that_names_no_volume_is_not_found() {
    for bad in ["fake-vol-id", "local:../x", "LOCAL:AB"] {
        let mut req = stage_req();
        req.volume_id = bad.into();
        assert_eq!(stage(&req).expect_err(bad).code(), Code::NotFound);
    }
}

#[test]
fn unstage_unpublish_need_id_and_path() {
    let unstage_req = |id: &str, p: &str| NodeUnstageVolumeRequest { volume_id: id.into(), staging_target_path: p.into() };
    assert_eq!(field_of(unstage(&unstage_req("", "/s")).expect_err("id")), "volume_id");
    assert_eq!(field_of(unstage(&unstage_req(ID, "")).expect_err("path")), "staging_target_path");
    assert!(unstage(&unstage_req(ID, "/s")).is_ok());
    let unpublish_req = |id: &str, p: &str| NodeUnpublishVolumeRequest { volume_id: id.into(), target_path: p.into() };
    assert_eq!(field_of(unpublish(&unpublish_req("", "/t")).expect_err("id")), "volume_id");
    assert_eq!(field_of(unpublish(&unpublish_req(ID, "")).expect_err("path")), "target_path");
    assert!(unpublish(&unpublish_req(ID, "/t")).is_ok());
}

#[test]
fn publish_rejects_each_missing_field_and_reads_readonly() {
    let full = NodePublishVolumeRequest {
        volume_id: ID.into(),
        staging_target_path: "/staging/pv".into(),
        target_path: "/pods/p/vol".into(),
        volume_capability: Some(mount_cap("ext4", Mode::SingleNodeReaderOnly)),
        ..Default::default()
    };
    let ok = publish(&full).expect("valid");
    assert!(ok.read_only, "a read-only mode publishes read-only");
    for field in ["volume_id", "target_path", "volume_capability", "staging_target_path"] {
        let mut req = full.clone();
        match field {
            "volume_id" => req.volume_id.clear(),
            "target_path" => req.target_path.clear(),
            "volume_capability" => req.volume_capability = None,
            _ => req.staging_target_path.clear(),
        }
        assert_eq!(field_of(publish(&req).expect_err(field)), field);
    }
}

#[test]
fn stats_and_expand_need_id_and_path_but_not_an_absolute_one() {
    let s = |id: &str, p: &str| NodeGetVolumeStatsRequest { volume_id: id.into(), volume_path: p.into(), ..Default::default() };
    assert_eq!(field_of(stats(&s("", "some/path")).expect_err("id")), "volume_id");
    assert_eq!(field_of(stats(&s(ID, "")).expect_err("path")), "volume_path");
    assert!(stats(&s(ID, "some/path")).is_ok(), "a relative path is NOT_FOUND later, not invalid");
    let e = |id: &str, p: &str, range: Option<CapacityRange>| NodeExpandVolumeRequest {
        volume_id: id.into(),
        volume_path: p.into(),
        capacity_range: range,
        ..Default::default()
    };
    assert_eq!(field_of(expand(&e("", "/p", None)).expect_err("id")), "volume_id");
    assert_eq!(field_of(expand(&e(ID, "", None)).expect_err("path")), "volume_path");
    let inverted = Some(CapacityRange { required_bytes: 2 << 30, limit_bytes: 1 << 30 });
    assert_eq!(field_of(expand(&e(ID, "/p", inverted)).expect_err("range")), "capacity_range");
    let negative = Some(CapacityRange { required_bytes: -1, limit_bytes: 0 });
    assert_eq!(field_of(expand(&e(ID, "/p", negative)).expect_err("neg")), "capacity_range.required_bytes");
    let only_required = expand(&e(ID, "/p", Some(CapacityRange { required_bytes: 5, limit_bytes: 0 }))).expect("valid");
    assert_eq!((only_required.required_bytes, only_required.limit_bytes), (5, 0));
}
