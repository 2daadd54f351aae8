//! Online growth of Ceph RBD volumes under a running workload, on a real
//! throwaway cluster, in the attach mode under test (see `rbd_node.rs`): a
//! `swell-io` writer and reader stream through xfs and through a raw block
//! volume while the image grows; the controller's own grow (the image header
//! written and its watchers notified) reaches the attached device while a
//! writer runs; a volume grown while unstaged comes up grown; and swell-node,
//! as a real process, killed in the middle of NodeExpandVolume with the
//! volume published, then restarted: the next NodeExpandVolume finishes the
//! grow, unstage leaves nothing, the filesystem checks clean.
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csi_proto::v1::{CreateVolumeRequest, NodeStageVolumeRequest};
use swell_e2e::host::{check_filesystem, statvfs_total};
use swell_e2e::node_process::{KillAt, NodeProcess, grow_tool_stand_in};
use swell_e2e::rbd_rig::{self, NodeRig as Rig, Swell, node_rig};
use swell_e2e::requests::{self, block_capability, mount_capability, total_bytes};
use swell_e2e::stream_io::{self, RECORD, Span, Streams};
use swell_storage::rbd_attach::{AttachMode, RbdAttach};
use swell_storage::units::{GIB, MIB};

const FROM: u64 = 512 * MIB;

async fn stage_publish(rig: &mut Rig, id: &str, capability: csi_proto::v1::VolumeCapability, target: &str) -> PathBuf {
    let staging = rig.path("staging");
    rig.node.node_stage_volume(rig.stage(id, &staging, capability.clone())).await.unwrap();
    rig.node.node_publish_volume(requests::publish(id, &staging, &rig.path(target), capability, false)).await.unwrap();
    rig.dir.join(target)
}

async fn unpublish_unstage_clean(rig: &mut Rig, name: &str, id: &str, target: &Path) {
    rig.node.node_unpublish_volume(requests::unpublish(id, &target.display().to_string())).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(id, &rig.path("staging"))).await.unwrap();
    assert_eq!(rig.leftovers(name), Vec::<String>::new(), "nothing left after unstage");
}

/// Streams records through `data` over `span` while the image grows from
/// FROM to 1 GiB: the writer waits at its gate until the grow has answered.
async fn grow_under_streams(rig: &mut Rig, name: &str, id: &str, capability: csi_proto::v1::VolumeCapability, target: &Path, data: &Path, span: Span) {
    let streams = Streams::start(data, &rig.dir, span).unwrap();
    assert!(streams.wait_for(span.gate - span.first, Duration::from_secs(60)).await, "the writer did not reach its gate");
    rig.resize(name, GIB);
    let expand = requests::node_expand(id, &target.display().to_string(), &rig.path("staging"), GIB as i64, capability);
    assert_eq!(rig.node.node_expand_volume(expand).await.unwrap().into_inner().capacity_bytes as u64, GIB);
    streams.open_gate().unwrap();
    assert!(streams.wait_for(span.limit - span.first, Duration::from_secs(120)).await, "the writer stalled after the grow");
    let (writer, reader) = streams.finish(data).await.unwrap();
    println!("rbd: writer synced {} records, {} past its gate, reader verified {} reads", writer.records, span.limit - span.gate, reader.records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_xfs_grows_under_a_streaming_writer() {
    let Some(mut rig) = node_rig("rbd_node_online_xfs").await else { return };
    let id = rig.image("online-xfs", FROM);
    let target = stage_publish(&mut rig, &id, mount_capability("xfs"), "pods/p/vol").await;
    // xfs full but for 16 MiB: 2 MiB before the gate, 24 MiB after it.
    let room = stream_io::fill_leaving(&target, 16 * MIB).unwrap();
    let span = Span { first: 0, gate: 32, limit: 32 + (24 * MIB) / RECORD as u64 };
    grow_under_streams(&mut rig, "online-xfs", &id, mount_capability("xfs"), &target, &target.join("stream.dat"), span).await;
    assert!((span.limit - span.gate) * RECORD as u64 > room, "the writer must write past the {room} bytes xfs had before the grow");
    let stats = rig.node.node_get_volume_stats(requests::stats(&id, &target.display().to_string())).await.unwrap().into_inner();
    assert!(total_bytes(&stats).unwrap() as u64 > GIB * 85 / 100, "xfs did not grow to about 1 GiB");
    unpublish_unstage_clean(&mut rig, "online-xfs", &id, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_raw_block_grows_under_a_streaming_writer_and_an_open_descriptor_sees_it() {
    let Some(mut rig) = node_rig("rbd_node_online_block").await else { return };
    let id = rig.image("online-blk", FROM);
    let target = stage_publish(&mut rig, &id, block_capability(), "pods/p/dev/blk").await;
    let mut opened_before = std::fs::File::open(&target).unwrap();
    assert_eq!(opened_before.seek(SeekFrom::End(0)).unwrap(), FROM);
    // 40 records below the old end, then 40 past it.
    let old_end = FROM / RECORD as u64;
    grow_under_streams(&mut rig, "online-blk", &id, block_capability(), &target, &target, Span { first: old_end - 40, gate: old_end, limit: old_end + 40 })
        .await;
    assert_eq!(opened_before.seek(SeekFrom::End(0)).unwrap(), GIB, "a descriptor opened before the grow sees the new size");
    drop(opened_before);
    unpublish_unstage_clean(&mut rig, "online-blk", &id, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_volume_grown_while_unstaged_comes_up_at_the_new_size() {
    let Some(mut rig) = node_rig("rbd_node_grown_unstaged").await else { return };
    let id = rig.image("unstaged", FROM);
    let target = stage_publish(&mut rig, &id, mount_capability("xfs"), "pods/p/vol").await;
    let data = target.join("data");
    assert_eq!(stream_io::write_until(&data, &rig.dir.join("no-stop"), &rig.dir.join("progress"), 32).records, 32);
    unpublish_unstage_clean(&mut rig, "unstaged", &id, &target).await;
    rig.resize("unstaged", GIB);
    let target = stage_publish(&mut rig, &id, mount_capability("xfs"), "pods/p/vol").await;
    let total = statvfs_total(&target).unwrap();
    println!("rbd: xfs came up at {total} bytes over the 1 GiB image");
    assert!(total > GIB * 85 / 100 && total <= GIB, "{total}");
    stream_io::verify(&data, 32).unwrap();
    let expand = requests::node_expand(&id, &target.display().to_string(), &rig.path("staging"), GIB as i64, mount_capability("xfs"));
    assert_eq!(rig.node.node_expand_volume(expand).await.unwrap().into_inner().capacity_bytes as u64, GIB);
    unpublish_unstage_clean(&mut rig, "unstaged", &id, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_node_killed_mid_expand_with_the_volume_published_finishes_after_restart() {
    let Some(mut rig) = node_rig("rbd_node_killed_mid_expand").await else { return };
    let (bin, mark) = grow_tool_stand_in(&rig.dir, "xfs", KillAt::BeforeTheTool).unwrap();
    let path: OsString = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()).into();
    let mut process = NodeProcess::start(&rig.config, rig.dir.join("process.sock"), &[("PATH", path)]).await.unwrap();
    let id = rig.image("killed", FROM);
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    let mut node = process.client().await.unwrap();
    node.node_stage_volume(rig.stage(&id, &staging, mount_capability("xfs"))).await.unwrap();
    node.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    let data = rig.dir.join("pods/p/vol/data");
    assert_eq!(stream_io::write_until(&data, &rig.dir.join("no-stop"), &rig.dir.join("progress"), 32).records, 32);
    let before = statvfs_total(Path::new(&target)).unwrap();

    rig.resize("killed", GIB);
    let expand = requests::node_expand(&id, &target, &staging, GIB as i64, mount_capability("xfs"));
    let call = tokio::spawn({
        let (mut node, expand) = (node.clone(), expand.clone());
        async move { node.node_expand_volume(expand).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !mark.exists() {
        assert!(tokio::time::Instant::now() < deadline, "NodeExpandVolume never reached the grow step");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    process.kill().await;
    assert!(tokio::time::timeout(Duration::from_secs(30), call).await.unwrap().unwrap().is_err(), "a killed node answered OK");
    assert_eq!(statvfs_total(Path::new(&target)).unwrap(), before, "the kill landed before the grow");
    // What serves the device outlives the node (a restarted container
    // finds it): rbd-fuse and rbd-nbd left the node's process group; a
    // krbd mapping is the kernel's.
    let attached = rig.attachments("killed");
    let expected = if rig.mode == AttachMode::Krbd { 1 } else { 2 };
    assert_eq!(attached.len(), expected, "the attachment survives the killed node: {attached:?}");

    process.restart(&[]).await.unwrap();
    let mut node = process.client().await.unwrap();
    node.node_stage_volume(rig.stage(&id, &staging, mount_capability("xfs"))).await.unwrap();
    assert_eq!(rig.attachments("killed"), attached, "the restage found the attachment");
    let grown = node.node_expand_volume(expand).await.unwrap().into_inner();
    assert_eq!(grown.capacity_bytes as u64, GIB);
    assert!(statvfs_total(Path::new(&target)).unwrap() > GIB * 85 / 100);
    stream_io::verify(&data, 32).unwrap();

    // Check the filesystem unmounted, on the node's own device, before unstage detaches it.
    node.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(rig.dir.join("node/staged").join(format!("{id}.json"))).unwrap()).unwrap();
    let device = PathBuf::from(record["device"].as_str().unwrap());
    assert!(std::process::Command::new("umount").arg(&staging).status().unwrap().success());
    check_filesystem("xfs", &device).unwrap();
    println!("rbd: xfs check of the unmounted filesystem after the kill: clean");
    node.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    assert_eq!(rig.leftovers("killed"), Vec::<String>::new(), "nothing left after unstage");
}

/// The device size as the kernel reports it now.
fn device_bytes(device: &Path) -> u64 {
    swell_e2e::host::device_bytes(device).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_controller_grow_reaches_the_attached_device_under_a_streaming_writer() {
    let Some(mut rig) = node_rig("rbd_node_controller_grow").await else { return };
    let mut swell = Swell::start(rig.env, Duration::from_secs(3), Duration::from_secs(8)).await;
    let create = CreateVolumeRequest { parameters: rig.parameters.clone(), ..requests::create_volume("ctl-grow", FROM as i64, mount_capability("xfs")) };
    let volume = swell.client.create_volume(create).await.unwrap().into_inner().volume.unwrap();
    let expected_context = RbdAttach::from_map(&rig.parameters).unwrap().volume_context();
    assert_eq!(volume.volume_context, expected_context, "the StorageClass's attach choice reaches the node in the volume context");
    let id = volume.volume_id.clone();
    let features = rbd_rig::cli(rig.env, "rbd", &["info", "--format", "json", &rbd_rig::volume("ctl-grow").spec()]).unwrap();
    assert!(features.contains(r#""features":["layering"]"#), "grown in place through its header: {features}");

    // As kubelet stages it: with the volume context from CreateVolume.
    let (staging, target) = (rig.path("staging"), rig.dir.join("pods/p/vol"));
    let stage = NodeStageVolumeRequest { volume_context: volume.volume_context.clone(), ..requests::stage(&id, &staging, mount_capability("xfs")) };
    rig.node.node_stage_volume(stage).await.unwrap();
    rig.node.node_publish_volume(requests::publish(&id, &staging, &target.display().to_string(), mount_capability("xfs"), false)).await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(rig.dir.join("node/staged").join(format!("{id}.json"))).unwrap()).unwrap();
    let device = PathBuf::from(record["device"].as_str().unwrap());
    assert_eq!(device_bytes(&device), FROM);

    let data = target.join("stream.dat");
    let streams = Streams::start(&data, &rig.dir, Span::to((FROM / 2) / RECORD as u64)).unwrap();
    assert!(streams.wait_for(20, Duration::from_secs(60)).await, "the writer did not get going");
    let grown = swell.client.controller_expand_volume(requests::controller_expand(&id, GIB as i64, None)).await.unwrap().into_inner();
    assert!(grown.node_expansion_required);
    let asked = Instant::now();
    match rig.mode {
        // The kernel client (krbd) and rbd-nbd's librbd hear the header
        // notify and resize the device themselves, with nobody refreshing it.
        AttachMode::Krbd | AttachMode::Nbd => {
            while device_bytes(&device) != GIB {
                assert!(
                    asked.elapsed() < Duration::from_secs(30),
                    "{} still shows {} bytes 30 s after the header grew",
                    device.display(),
                    device_bytes(&device)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("{}: {} showed the new size {:?} after ControllerExpandVolume answered", rig.mode, device.display(), asked.elapsed());
        }
        // A loop device keeps its size until NodeExpandVolume refreshes it.
        AttachMode::FuseLoop => assert_eq!(device_bytes(&device), FROM, "the loop device grew before any refresh"),
    }
    let expand = requests::node_expand(&id, &target.display().to_string(), &staging, GIB as i64, mount_capability("xfs"));
    assert_eq!(rig.node.node_expand_volume(expand).await.unwrap().into_inner().capacity_bytes as u64, GIB);
    assert_eq!(device_bytes(&device), GIB);
    let at_grow = streams.written();
    assert!(streams.wait_for(at_grow + 20, Duration::from_secs(60)).await, "the writer stalled after the grow");
    let (writer, reader) = streams.finish(&data).await.unwrap();
    println!("rbd ({}): writer synced {} records, reader verified {} reads", rig.mode, writer.records, reader.records);
    let stats = rig.node.node_get_volume_stats(requests::stats(&id, &target.display().to_string())).await.unwrap().into_inner();
    assert!(total_bytes(&stats).unwrap() as u64 > GIB * 85 / 100, "xfs did not grow to about 1 GiB");
    unpublish_unstage_clean(&mut rig, "ctl-grow", &id, &target).await;
    swell.client.delete_volume(csi_proto::v1::DeleteVolumeRequest { volume_id: id, ..Default::default() }).await.unwrap();
}
