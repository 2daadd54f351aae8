//! Online growth under a running workload, on local volumes (sparse file +
//! loop device): a `swell-io` writer writes and fdatasyncs records and a
//! reader reads them back, as processes of their own, while the backing
//! file grows and NodeExpandVolume grows xfs, btrfs, ext4 (where online
//! resize2fs is permitted: CAP_SYS_RESOURCE) or a raw block device.
//! The writer waits at the volume's old end (raw block) or with the
//! filesystem full (xfs, btrfs, ext4) until the grow, then writes into the
//! grown space. No I/O error, no record read back wrong, every acknowledged
//! record intact afterwards, read from the device. And for raw block: what
//! was written before the grow reads
//! back after it, and a file descriptor opened before sees the new size.
//! Needs root.
#![allow(clippy::unwrap_used)]

mod node_rig;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use csi_proto::v1::VolumeCapability;
use node_rig::{Rig, rig};
use swell_e2e::chaos::Xorshift;
use swell_e2e::host;
use swell_e2e::requests::total_bytes;
use swell_e2e::requests::{self, block_capability, mount_capability};
use swell_e2e::stream_io::{self, RECORD, Span, Streams};
use swell_storage::units::MIB;

const FROM: u64 = 320 * MIB;
const TO: u64 = 640 * MIB;

/// Stages and publishes `id` with `capability`; returns the target path.
async fn stage_publish(rig: &mut Rig, id: &str, capability: VolumeCapability, target: &str) -> PathBuf {
    let (staging, target) = (rig.path("staging"), rig.path(target));
    rig.node.node_stage_volume(requests::stage(id, &staging, capability.clone())).await.unwrap();
    rig.node.node_publish_volume(requests::publish(id, &staging, &target, capability, false)).await.unwrap();
    PathBuf::from(target)
}

async fn unpublish_unstage(rig: &mut Rig, id: &str, target: &Path) {
    rig.node.node_unpublish_volume(requests::unpublish(id, &target.display().to_string())).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(id, &rig.path("staging"))).await.unwrap();
}

/// Streams records through `data` over `span` while the volume grows from
/// FROM to TO: the writer waits at its gate until the grow has answered.
async fn grow_under_streams(rig: &mut Rig, id: &str, capability: VolumeCapability, target: &Path, data: &Path, span: Span) {
    let streams = Streams::start(data, &rig.dir, span).unwrap();
    assert!(streams.wait_for(span.gate - span.first, Duration::from_secs(60)).await, "the writer did not reach its gate");
    rig.grow(&id.parse().unwrap(), TO).await;
    let expand = requests::node_expand(id, &target.display().to_string(), &rig.path("staging"), TO as i64, capability);
    let grown = rig.node.node_expand_volume(expand).await.unwrap().into_inner();
    assert_eq!(grown.capacity_bytes as u64, TO);
    streams.open_gate().unwrap();
    assert!(streams.wait_for(span.limit - span.first, Duration::from_secs(120)).await, "the writer stalled after the grow");
    let (writer, reader) = streams.finish(data).await.unwrap();
    println!("writer synced {} records, {} past its gate, reader verified {} reads", writer.records, span.limit - span.gate, reader.records);
}

async fn filesystem_grows_under_a_streaming_writer(fs: &str) {
    let Some(mut rig) = rig(&format!("node_online_io_{fs}")).await else { return };
    if fs == "ext4" && !rig.online_ext4_grow_works() {
        host::note_skip("ext4_grows_under_a_streaming_writer", host::ONLINE_EXT4_GROW_NOT_PERMITTED);
        return;
    }
    let id = rig.volume(&format!("pvc-io-{fs}"), FROM).await.to_string();
    let target = stage_publish(&mut rig, &id, mount_capability(fs), "pods/p/vol").await;
    // The filesystem full but for 16 MiB: 2 MiB before the gate, then 24 MiB
    // after it, which only the grown space can hold.
    let room = stream_io::fill_leaving(&target, 16 * MIB).unwrap();
    let span = Span { first: 0, gate: 32, limit: 32 + (24 * MIB) / RECORD as u64 };
    grow_under_streams(&mut rig, &id, mount_capability(fs), &target, &target.join("stream.dat"), span).await;
    assert!((span.limit - span.gate) * RECORD as u64 > room, "the writer must write past the {room} bytes {fs} had before the grow");
    let stats = rig.node.node_get_volume_stats(requests::stats(&id, &target.display().to_string())).await.unwrap().into_inner();
    let total = total_bytes(&stats).unwrap() as u64;
    assert!(total > TO * 85 / 100 && total <= TO, "{fs} grew to {total}");
    unpublish_unstage(&mut rig, &id, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_grows_under_a_streaming_writer() {
    filesystem_grows_under_a_streaming_writer("xfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_grows_under_a_streaming_writer() {
    filesystem_grows_under_a_streaming_writer("btrfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_grows_under_a_streaming_writer() {
    filesystem_grows_under_a_streaming_writer("ext4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_block_volume_grows_under_a_streaming_writer() {
    let Some(mut rig) = rig("node_online_io_block").await else { return };
    let id = rig.volume("pvc-io-block", FROM).await.to_string();
    let target = stage_publish(&mut rig, &id, block_capability(), "pods/p/dev/blk").await;
    // 40 records below the old end, then 40 past it.
    let old_end = FROM / RECORD as u64;
    grow_under_streams(&mut rig, &id, block_capability(), &target, &target, Span { first: old_end - 40, gate: old_end, limit: old_end + 40 }).await;
    unpublish_unstage(&mut rig, &id, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_block_data_survives_the_grow_and_an_open_descriptor_sees_the_new_size() {
    let Some(mut rig) = rig("node_block_open_fd").await else { return };
    let id = rig.volume("pvc-block-fd", 64 * MIB).await.to_string();
    let target = stage_publish(&mut rig, &id, block_capability(), "pods/p/dev/blk").await;
    let mut device = std::fs::OpenOptions::new().read(true).write(true).open(&target).unwrap();
    let before = Xorshift::pattern(5, 8 << 20);
    device.write_all(&before).unwrap();
    device.sync_all().unwrap();
    assert_eq!(device.seek(SeekFrom::End(0)).unwrap(), 64 * MIB);

    rig.grow(&id.parse().unwrap(), 128 * MIB).await;
    let expand = requests::node_expand(&id, &target.display().to_string(), &rig.path("staging"), (128 * MIB) as i64, block_capability());
    rig.node.node_expand_volume(expand).await.unwrap();

    assert_eq!(device.seek(SeekFrom::End(0)).unwrap(), 128 * MIB, "the descriptor opened before the grow sees the new size");
    let beyond = Xorshift::pattern(6, 4 << 20);
    device.write_all_at(&beyond, 100 * MIB).unwrap();
    device.sync_all().unwrap();
    drop(device);
    let mut fresh = std::fs::File::open(&target).unwrap();
    let mut read = vec![0u8; before.len()];
    fresh.read_exact(&mut read).unwrap();
    assert!(read == before, "data written before the grow reads back after it");
    let mut read = vec![0u8; beyond.len()];
    fresh.read_exact_at(&mut read, 100 * MIB).unwrap();
    assert!(read == beyond, "data written beyond the old end through the old descriptor reads back");
    drop(fresh);
    unpublish_unstage(&mut rig, &id, &target).await;
}
