//! What a client on the CSI socket may send, over the real sockets of both
//! services: a header list past 64 KiB and a message past 4 MiB are
//! refused, changing nothing, and the same connection still serves a
//! well-formed call afterwards; a name past CSI's 128 bytes is
//! INVALID_ARGUMENT. And who may connect at all: the socket's owner, and
//! with `--socket-group` that group's members, no one else.
#![allow(clippy::unwrap_used)]

use csi_proto::v1::ProbeRequest;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use swell_e2e::harness::{DriverOptions, DriverUnderTest};
use swell_e2e::host::{in_ci, is_root, note_skip};
use swell_e2e::process::ControllerProcess;
use swell_e2e::requests::{self, mount_capability};
use swell_storage::units::GIB;
use tonic::Code;
use tonic::metadata::MetadataValue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_messages_and_names_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut driver = DriverUnderTest::start(dir.path(), DriverOptions::default()).await.unwrap();

    // 100 KiB of metadata: past the header list bound of the shim and the server.
    let mut probe = tonic::Request::new(ProbeRequest {});
    probe.metadata_mut().insert("x-filler", MetadataValue::try_from("v".repeat(100 << 10)).unwrap());
    let refused = driver.controller_identity.probe(probe).await;
    assert!(refused.is_err(), "a 100 KiB header list was served");
    // The refusal closed the connection: wait until the channel has dialled again.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while driver.controller_identity.probe(ProbeRequest {}).await.is_err() {
        assert!(std::time::Instant::now() < until, "the socket did not serve again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // 5 MiB of parameters: past the message bound.
    let mut create = requests::create_volume("pvc-big", GIB as i64, mount_capability("xfs"));
    create.parameters.insert("filler".into(), "p".repeat(5 << 20));
    let status = driver.controller.create_volume(create).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // A name longer than CSI allows.
    let status = driver.controller.create_volume(requests::create_volume(&"n".repeat(129), GIB as i64, mount_capability("xfs"))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("128"), "{}", status.message());

    // Nothing was made, and a well-formed call is served (a refused connection is redialled).
    let listed = driver.controller.list_volumes(csi_proto::v1::ListVolumesRequest::default()).await.unwrap().into_inner();
    assert!(listed.entries.is_empty(), "{listed:?}");
    driver.controller_identity.probe(ProbeRequest {}).await.unwrap();
    driver.controller.create_volume(requests::create_volume(&"n".repeat(128), GIB as i64, mount_capability("xfs"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_string_with_a_newline_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("controller.log");
    let env = vec![("RUST_LOG".to_owned(), "info".to_owned())];
    let controller =
        swell_e2e::process::ControllerProcess::start_logging(dir.path(), &dir.path().join("local"), Vec::new(), env, Some(log.clone())).await.unwrap();
    let mut client = controller.client().await.unwrap();
    let forged = "pvc-a\n2026-01-01T00:00:00Z ERROR forged: the disk is on fire";
    let created = client.create_volume(requests::create_volume(forged, GIB as i64, mount_capability("xfs"))).await.unwrap().into_inner();
    // A volume id with a newline: not ours, so DeleteVolume answers OK, and logs it in its span.
    client.delete_volume(csi_proto::v1::DeleteVolumeRequest { volume_id: "local:x\nERROR forged".into(), ..Default::default() }).await.unwrap();
    client.delete_volume(csi_proto::v1::DeleteVolumeRequest { volume_id: created.volume.unwrap().volume_id, ..Default::default() }).await.unwrap();
    drop(controller);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("pvc-a\\n2026"), "the name is logged, escaped: {text}");
    assert!(!text.lines().any(|line| line.starts_with("2026-01-01T00:00:00Z") || line.starts_with("ERROR forged")), "a forged line: {text}");
}

/// Whether a process of uid 65532 with `groups` as its only groups can
/// connect to the Unix socket at `socket` (as a non-root sidecar would).
fn unprivileged_can_connect(socket: &Path, groups: &str) -> bool {
    let connect = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)";
    let status = std::process::Command::new("setpriv")
        .args(["--reuid=65532", "--regid=65532", &format!("--groups={groups}"), "/usr/bin/python3", "-c", connect])
        .arg(socket)
        .status()
        .unwrap();
    assert!(matches!(status.code(), Some(0 | 13)), "the connecting process failed otherwise: {status}");
    status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_group_lets_its_members_connect_and_no_one_else() {
    if !is_root() {
        assert!(!in_ci(), "socket_group_lets_its_members_connect_and_no_one_else needs root (to act as another user); CI runs as root");
        note_skip("socket_group_lets_its_members_connect_and_no_one_else", "not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The other user must reach the socket's directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (shared, private) = (dir.path().join("shared"), dir.path().join("private"));
    for root in [&shared, &private] {
        std::fs::create_dir(root).unwrap();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let mut grouped = ControllerProcess::start_with(&shared, &shared.join("local"), vec!["--socket-group=65533".into()]).await.unwrap();
    let mut owner_only = ControllerProcess::start(&private, &private.join("local")).await.unwrap();

    let meta = std::fs::metadata(&grouped.socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 65533), "the grouped socket's mode and group");
    assert!(unprivileged_can_connect(&grouped.socket, "65533"), "a member of the socket's group was refused");
    assert!(!unprivileged_can_connect(&grouped.socket, "65534"), "a user outside the socket's group connected");
    assert_eq!(std::fs::metadata(&owner_only.socket).unwrap().mode() & 0o777, 0o600);
    assert!(!unprivileged_can_connect(&owner_only.socket, "65533"), "another user connected to an owner-only socket");

    grouped.kill().await;
    owner_only.kill().await;
}
