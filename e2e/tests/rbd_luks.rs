//! Encrypted RBD volumes (StorageClass `encrypted: "true"`, LUKS2 through
//! cryptsetup; docs/encryption.md) on the node service against the real
//! cluster, in the attach mode under test. dm-crypt is a kernel part the
//! CI host lacks: the VM lane runs these in krbd and rbd-nbd mode.
//!
//! What they prove: the first stage formats LUKS2 and keeps only a wrapped
//! data key with the image; what reaches Ceph is ciphertext (a marker
//! written through xfs is in the clear-text device and nowhere in `rbd
//! export`); the volume grows online under a writer through device refresh,
//! `cryptsetup resize` and xfs_growfs, and a raw block one too; a restage
//! opens it with its data; a wrong or missing secret is refused before
//! anything is attached; a restore of a snapshot, larger than its source,
//! opens with the source's data key, bound to the restore at its first
//! stage, and its filesystem grows to the larger size; a node killed in an
//! expand after the mapping grew keeps the mapping open, and its restarted
//! successor restages on it and finishes the grow.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use csi_proto::v1::NodeStageVolumeRequest;
use swell_e2e::host;
use swell_e2e::luks::{OTHER_SECRET, SECRET, SECRET_KEY, blkid_type, with_secret, write_marker_file};
use swell_e2e::node_process::{KillAt, NodeProcess, grow_tool_stand_in};
use swell_e2e::rbd_rig::{self, NodeRig as Rig, node_rig};
use swell_e2e::requests::{self, block_capability, mount_capability};
use swell_e2e::writer::StreamingWriter;
use swell_storage::rbd_attach::{ENCRYPTED_KEY, KEY_FROM_KEY, WRAPPED_KEY_META};
use swell_storage::units::{GIB, MIB};
use tonic::Code;

/// A node rig whose StorageClass asks for encryption; `None` (skip noted)
/// where device-mapper is missing.
async fn rig(test: &str) -> Option<Rig> {
    if let Some(reason) = host::lacks_dm_crypt() {
        host::note_skip(test, reason);
        return None;
    }
    let mut rig = node_rig(test).await?;
    rig.parameters.insert(ENCRYPTED_KEY.to_owned(), "true".to_owned());
    Some(rig)
}

fn stage(rig: &Rig, id: &str, capability: csi_proto::v1::VolumeCapability, secret: Option<&str>) -> NodeStageVolumeRequest {
    with_secret(rig.stage(id, &rig.path("staging"), capability), secret)
}

fn wrapped_key(rig: &Rig, name: &str) -> Result<String, String> {
    rbd_rig::cli(rig.env, "rbd", &["image-meta", "get", &rbd_rig::volume(name).spec(), WRAPPED_KEY_META]).map(|s| s.trim().to_owned())
}

/// The staging record's attached device and clear-text mapping.
fn record_devices(rig: &Rig, id: &str) -> (String, Option<String>) {
    swell_e2e::luks::record_devices(&rig.dir, id).unwrap()
}

/// Where the marker starts in `path`, if anywhere.
fn find_marker(path: &Path) -> Option<u64> {
    swell_e2e::luks::find_marker(path).unwrap()
}

/// Grows the image to `size` and expands the published volume; checks
/// the capacity and that xfs grew with the mapping; returns the expand's time.
async fn grow(rig: &mut Rig, name: &str, id: &str, size: u64) -> Duration {
    let target = rig.path("pods/p/vol");
    rig.resize(name, size);
    let started = Instant::now();
    let grown = rig.node.node_expand_volume(requests::node_expand(id, &target, &rig.path("staging"), size as i64, mount_capability("xfs"))).await.unwrap();
    let took = started.elapsed();
    assert_eq!(grown.into_inner().capacity_bytes as u64, size, "capacity is the image's new size");
    // The LUKS2 header takes 16 MiB; statvfs leaves out xfs's log.
    let total = host::statvfs_total(Path::new(&target)).unwrap();
    assert!(total > size * 85 / 100 && total <= size - 16 * MIB, "xfs grew with the mapping to about {size}: {total}");
    took
}

/// Unstages: the mapping closes, nothing of the image is left attached.
async fn unstage_clean(rig: &mut Rig, name: &str, id: &str) {
    let mapper = record_devices(rig, id).1.expect("an encrypted volume's record names its mapping");
    rig.node.node_unstage_volume(requests::unstage(id, &rig.path("staging"))).await.unwrap();
    assert!(!Path::new(&mapper).exists(), "{mapper} closed at unstage");
    assert_eq!(rig.leftovers(name), Vec::<String>::new(), "nothing left after unstage");
}

/// Stages (xfs), publishes and writes the marker file; returns its checksum.
async fn stage_publish_mark(rig: &mut Rig, id: &str) -> String {
    let started = Instant::now();
    rig.node.node_stage_volume(stage(rig, id, mount_capability("xfs"), Some(SECRET))).await.unwrap();
    println!("encrypted stage ({}: attach + luksFormat + open + mkfs.xfs + mount) took {:?}", rig.mode, started.elapsed());
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    rig.node.node_publish_volume(requests::publish(id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    write_marker_file(&rig.dir.join("pods/p/vol/marker.bin")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_rbd_volume_keeps_only_ciphertext_on_ceph_grows_online_under_a_writer_and_restages_intact() {
    let test = "an_encrypted_rbd_volume_keeps_only_ciphertext_on_ceph_grows_online_under_a_writer_and_restages_intact";
    let Some(mut rig) = rig(test).await else { return };
    let name = "luks-rt";
    let id = rig.image(name, 512 * MIB);
    let sum = stage_publish_mark(&mut rig, &id).await;
    let (device, mapper) = record_devices(&rig, &id);
    // The marker is in the clear on the device xfs is on (the search can
    // find it)...
    let clear = mapper.clone().unwrap_or_else(|| device.clone());
    assert!(find_marker(Path::new(&clear)).is_some(), "the marker written through xfs is on {clear}");
    // ...and nowhere in what Ceph stores.
    let export = rig.dir.join("export.img");
    rbd_rig::cli(rig.env, "rbd", &["export", &rbd_rig::volume(name).spec(), &export.display().to_string()]).unwrap();
    assert_eq!(std::fs::metadata(&export).unwrap().len(), 512 * MIB, "the whole image exported");
    assert_eq!(find_marker(&export), None, "plaintext of the marker file found in the image's bytes on Ceph");
    std::fs::remove_file(&export).unwrap();
    let mapper = mapper.expect("the record names the clear-text mapping");
    assert!(mapper.starts_with("/dev/mapper/swell-luks-"), "{mapper}");
    assert_eq!(blkid_type(&device), "crypto_LUKS", "{device} holds a LUKS header");
    let wrapped = wrapped_key(&rig, name).unwrap();
    assert!(wrapped.starts_with("v1:") && !wrapped.contains(SECRET), "the image keeps the data key wrapped: {wrapped}");

    // A repeated stage (the node plugin restarted) reuses the open mapping.
    rig.node.node_stage_volume(stage(&rig, &id, mount_capability("xfs"), Some(SECRET))).await.unwrap();
    assert_eq!(record_devices(&rig, &id), (device.clone(), Some(mapper.clone())));

    // Online growth: image → device → LUKS mapping → xfs; timed as
    // rbd_node times it without LUKS (no writer), then once under a writer.
    let target = rig.path("pods/p/vol");
    let mut took = Vec::new();
    for size in [640 * MIB, 768 * MIB, 896 * MIB] {
        took.push(grow(&mut rig, name, &id, size).await);
    }
    println!("NodeExpandVolume p50 ({}, xfs, LUKS2): {}", rig.mode, swell_e2e::timing::p50_summary(&took));
    let writer = StreamingWriter::start(&rig.dir.join("pods/p/vol/stream.bin"), 21, Duration::from_millis(20)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let under_writer = grow(&mut rig, name, &id, GIB).await;
    let written = writer.stop_and_verify().unwrap();
    assert!(written.records >= 5, "the writer kept writing: {written:?}");
    println!("{}: grown to 1 GiB in {under_writer:?} under a writer, which synced {} records, all read back", rig.mode, written.records);

    // Unstage closes the mapping and detaches; a restage opens it again.
    rig.node.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
    unstage_clean(&mut rig, name, &id).await;
    rig.node.node_stage_volume(stage(&rig, &id, mount_capability("xfs"), Some(SECRET))).await.unwrap();
    let staged = host::statvfs_total(&rig.dir.join("staging")).unwrap();
    assert!(staged > GIB * 85 / 100, "the restaged xfs keeps its grown size: {staged}");
    assert_eq!(host::sha256_file(&rig.dir.join("staging/marker.bin")).unwrap(), sum, "data intact after the restage");
    assert_eq!(wrapped_key(&rig, name).unwrap(), wrapped, "the restage used the stored key, not a new one");
    unstage_clean(&mut rig, name, &id).await;
    rig.remove(name).expect("rbd rm succeeds: no watchers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_raw_block_volume_refuses_a_wrong_or_missing_secret_untouched_then_opens_and_grows_online() {
    let test = "an_encrypted_raw_block_volume_refuses_a_wrong_or_missing_secret_untouched_then_opens_and_grows_online";
    let Some(mut rig) = rig(test).await else { return };
    let name = "luks-key";
    let id = rig.image(name, 256 * MIB);
    // A raw block volume: the first stage formats LUKS2 and opens it.
    rig.node.node_stage_volume(stage(&rig, &id, block_capability(), Some(SECRET))).await.unwrap();
    let (device, mapper) = record_devices(&rig, &id);
    assert_eq!(blkid_type(&device), "crypto_LUKS");
    assert!(mapper.is_some_and(|m| Path::new(&m).exists()), "the mapping is open");
    unstage_clean(&mut rig, name, &id).await;
    let wrapped = wrapped_key(&rig, name).unwrap();

    let refused = rig.node.node_stage_volume(stage(&rig, &id, block_capability(), Some(OTHER_SECRET))).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("KEK"), "names the key mismatch: {}", refused.message());
    assert!(!refused.message().contains(OTHER_SECRET) && !refused.message().contains(SECRET), "{}", refused.message());
    let missing = rig.node.node_stage_volume(stage(&rig, &id, block_capability(), None)).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert!(missing.message().contains(SECRET_KEY), "{}", missing.message());
    let short = rig.node.node_stage_volume(stage(&rig, &id, block_capability(), Some("short"))).await.unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument, "{short:?}");
    // Nothing was attached, opened or rewritten.
    assert_eq!(rig.leftovers(name), Vec::<String>::new(), "a refused stage attached nothing");
    assert!(!rig.dir.join("node/staged").join(format!("{id}.json")).exists(), "no staging record");
    assert_eq!(wrapped_key(&rig, name).unwrap(), wrapped, "the wrapped key is untouched");

    // The right secret still opens it: the refusals changed nothing.
    rig.node.node_stage_volume(stage(&rig, &id, block_capability(), Some(SECRET))).await.unwrap();
    let (device, _) = record_devices(&rig, &id);
    assert_eq!(blkid_type(&device), "crypto_LUKS");
    // Published raw, it grows online: image, device, then the mapping.
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/dev/blk"));
    rig.node.node_publish_volume(requests::publish(&id, &staging, &target, block_capability(), false)).await.unwrap();
    rig.resize(name, 384 * MIB);
    let grown = rig.node.node_expand_volume(requests::node_expand(&id, &target, &staging, (384 * MIB) as i64, block_capability())).await.unwrap();
    assert_eq!(grown.into_inner().capacity_bytes as u64, 384 * MIB);
    let stats = rig.node.node_get_volume_stats(requests::stats(&id, &target)).await.unwrap().into_inner();
    assert_eq!(requests::total_bytes(&stats), Some((384 - 16) as i64 * MIB as i64), "the clear-text device is the image less the 16 MiB LUKS2 header");
    rig.node.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
    unstage_clean(&mut rig, name, &id).await;
    rig.remove(name).expect("rbd rm succeeds: no watchers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_snapshot_restored_larger_opens_with_its_copied_key_bound_to_it_and_grows_at_first_stage() {
    let test = "an_encrypted_snapshot_restored_larger_opens_with_its_copied_key_bound_to_it_and_grows_at_first_stage";
    let Some(mut rig) = rig(test).await else { return };
    let (source_name, name) = ("luks-src", "luks-restored");
    let source = rig.image(source_name, 384 * MIB);
    let sum = stage_publish_mark(&mut rig, &source).await;
    let source_total = host::statvfs_total(&rig.dir.join("staging")).unwrap();
    rig.node.node_unpublish_volume(requests::unpublish(&source, &rig.path("pods/p/vol"))).await.unwrap();
    unstage_clean(&mut rig, source_name, &source).await;
    let source_key = wrapped_key(&rig, source_name).unwrap();
    // As the controller restores a snapshot: a clone, grown; librbd copies
    // the image metadata, so the restore holds the source's wrapped key.
    let id = rig.restore_of(source_name, name, 512 * MIB);
    assert_eq!(wrapped_key(&rig, name).unwrap(), source_key, "the restore carries the source's wrapped key");
    let from_source = |rig: &Rig, secret| {
        let mut request = stage(rig, &id, mount_capability("xfs"), Some(secret));
        request.volume_context.insert(KEY_FROM_KEY.to_owned(), source.clone());
        request
    };

    // Bound to the source: refused untouched unless the context names the
    // source, and with a wrong secret.
    let unnamed = rig.node.node_stage_volume(stage(&rig, &id, mount_capability("xfs"), Some(SECRET))).await.unwrap_err();
    assert_eq!(unnamed.code(), Code::PermissionDenied, "{unnamed:?}");
    let wrong = rig.node.node_stage_volume(from_source(&rig, OTHER_SECRET)).await.unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
    assert!(wrong.message().contains("KEK"), "{}", wrong.message());
    assert_eq!(rig.leftovers(name), Vec::<String>::new(), "a refused stage attached nothing");
    assert_eq!(wrapped_key(&rig, name).unwrap(), source_key, "a refused stage rewrote nothing");

    // The first stage binds the key to the restore, opens the source's
    // LUKS2 header on the larger device and grows xfs to fill it.
    let started = Instant::now();
    rig.node.node_stage_volume(from_source(&rig, SECRET)).await.unwrap();
    println!("first stage of an encrypted restore, 384 -> 512 MiB ({}): {:?}", rig.mode, started.elapsed());
    let (device, mapper) = record_devices(&rig, &id);
    assert_eq!(blkid_type(&device), "crypto_LUKS");
    let staged = host::statvfs_total(&rig.dir.join("staging")).unwrap();
    // xfs keeps the 64 MiB log mkfs gave it; the rest grows with the device.
    let grown = staged - source_total;
    assert!(grown > 126 * MIB && grown <= 128 * MIB, "xfs grew by the restore's 128 MiB more: {source_total} -> {staged}");
    assert_eq!(host::sha256_file(&rig.dir.join("staging/marker.bin")).unwrap(), sum, "the source's data, read through the source's key");
    let bound = wrapped_key(&rig, name).unwrap();
    assert!(bound != source_key && bound.starts_with("v1:"), "the key was wrapped again for the restore: {bound}");
    assert!(mapper.is_some(), "the record names the clear-text mapping");
    unstage_clean(&mut rig, name, &id).await;

    // Bound to its own id now: a stage without the source named opens it.
    rig.node.node_stage_volume(stage(&rig, &id, mount_capability("xfs"), Some(SECRET))).await.unwrap();
    assert_eq!(host::sha256_file(&rig.dir.join("staging/marker.bin")).unwrap(), sum, "data intact at the restage");
    assert_eq!(wrapped_key(&rig, name).unwrap(), bound, "bound once");
    unstage_clean(&mut rig, name, &id).await;

    // What Ceph stores of the restore is ciphertext.
    let export = rig.dir.join("export.img");
    rbd_rig::cli(rig.env, "rbd", &["export", &rbd_rig::volume(name).spec(), &export.display().to_string()]).unwrap();
    assert_eq!(std::fs::metadata(&export).unwrap().len(), 512 * MIB);
    assert_eq!(find_marker(&export), None, "plaintext of the marker file found in the restore's bytes on Ceph");
    std::fs::remove_file(&export).unwrap();
    rig.remove(name).expect("rbd rm of the restore");
    rbd_rig::cli(rig.env, "rbd", &["snap", "purge", &rbd_rig::volume(source_name).spec()]).unwrap();
    rig.remove(source_name).expect("rbd rm of the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_volume_whose_node_is_killed_mid_expand_keeps_its_mapping_open_and_the_restarted_node_finishes() {
    let test = "an_encrypted_volume_whose_node_is_killed_mid_expand_keeps_its_mapping_open_and_the_restarted_node_finishes";
    let Some(mut rig) = rig(test).await else { return };
    // xfs_growfs stands in to hold the expand after `cryptsetup resize`.
    let (bin, mark) = grow_tool_stand_in(&rig.dir, "xfs", KillAt::BeforeTheTool).unwrap();
    let path: std::ffi::OsString = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()).into();
    let mut process = NodeProcess::start(&rig.config, rig.dir.join("process.sock"), &[("PATH", path)]).await.unwrap();
    let name = "luks-killed";
    let id = rig.image(name, 384 * MIB);
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));
    let mut node = process.client().await.unwrap();
    node.node_stage_volume(stage(&rig, &id, mount_capability("xfs"), Some(SECRET))).await.unwrap();
    node.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    let data = rig.dir.join("pods/p/vol/data");
    assert_eq!(swell_e2e::stream_io::write_until(&data, &rig.dir.join("no-stop"), &rig.dir.join("progress"), 32).records, 32);
    let before = host::statvfs_total(Path::new(&target)).unwrap();
    let (device, mapper) = record_devices(&rig, &id);
    let mapper = mapper.expect("the record names the clear-text mapping");

    rig.resize(name, 512 * MIB);
    let expand = requests::node_expand(&id, &target, &staging, (512 * MIB) as i64, mount_capability("xfs"));
    let call = tokio::spawn({
        let (mut node, expand) = (node.clone(), expand.clone());
        async move { node.node_expand_volume(expand).await }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !mark.exists() {
        assert!(Instant::now() < deadline, "NodeExpandVolume never reached the filesystem grow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    process.kill().await;
    assert!(tokio::time::timeout(Duration::from_secs(30), call).await.unwrap().unwrap().is_err(), "a killed node answered OK");
    assert_eq!(host::statvfs_total(Path::new(&target)).unwrap(), before, "the kill landed before xfs grew");
    // The mapping is the kernel's: open, already resized to the grown image.
    assert!(Path::new(&mapper).exists(), "{mapper} stays open after the kill");
    assert_eq!(host::device_bytes(Path::new(&mapper)).unwrap(), (512 - 16) * MIB, "cryptsetup resize ran before the kill");

    process.restart(&[]).await.unwrap();
    let mut node = process.client().await.unwrap();
    node.node_stage_volume(stage(&rig, &id, mount_capability("xfs"), Some(SECRET))).await.unwrap();
    assert_eq!(record_devices(&rig, &id), (device, Some(mapper)), "the restage reused the device and the open mapping");
    let grown = node.node_expand_volume(expand).await.unwrap().into_inner();
    assert_eq!(grown.capacity_bytes as u64, 512 * MIB);
    let total = host::statvfs_total(Path::new(&target)).unwrap();
    assert!(total - before > 126 * MIB && total - before <= 128 * MIB, "xfs grew with the mapping by 128 MiB: {before} -> {total}");
    swell_e2e::stream_io::verify(&data, 32).unwrap();
    node.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
    drop(node);
    // Unstage through the restarted process, then check nothing is left.
    let mapper = record_devices(&rig, &id).1.expect("mapping");
    process.client().await.unwrap().node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    assert!(!Path::new(&mapper).exists(), "{mapper} closed at unstage");
    assert_eq!(rig.leftovers(name), Vec::<String>::new(), "nothing left after unstage");
    drop(process);
    rig.remove(name).expect("rbd rm succeeds: no watchers");
}
