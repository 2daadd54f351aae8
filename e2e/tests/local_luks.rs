//! An encrypted local volume (StorageClass `encrypted: "true"`, LUKS2
//! through cryptsetup over the backing file's loop device;
//! docs/encryption.md) through a real swell-node process. dm-crypt is a
//! kernel part the CI host lacks: the VM lane runs this.
//!
//! What it proves: the first stage formats LUKS2 and keeps only a wrapped
//! data key, in a 0600 file beside the volume's record; the volume grows
//! online under a writer through the loop device's refresh, `cryptsetup
//! resize` and xfs_growfs; an unstage closes the mapping and a restage
//! opens it with the same key and the data intact; a wrong or missing
//! secret is refused before anything is attached, rewriting nothing; and
//! the backing file holds ciphertext only (a marker written through xfs is
//! on the clear-text mapping and nowhere in the file).
#![allow(clippy::unwrap_used)]

mod node_rig;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use csi_proto::v1::NodeStageVolumeRequest;
use swell_e2e::host;
use swell_e2e::luks::{OTHER_SECRET, SECRET, SECRET_KEY, blkid_type, find_marker, record_devices, with_secret, write_marker_file};
use swell_e2e::requests::{self, mount_capability};
use swell_e2e::sweep::leftovers;
use swell_e2e::writer::StreamingWriter;
use swell_storage::rbd_attach::ENCRYPTED_KEY;
use swell_storage::units::MIB;
use tonic::Code;

/// Small: under emulation luksFormat, mkfs.xfs and every write go through
/// emulated AES. xfs needs 300 MiB, and the LUKS2 header takes 16.
const SIZE: u64 = 320 * MIB;
const GROWN: u64 = 448 * MIB;
const LUKS2_HEADER: u64 = 16 * MIB;

fn stage(id: &str, staging: &str, secret: Option<&str>) -> NodeStageVolumeRequest {
    let mut request = requests::stage(id, staging, mount_capability("xfs"));
    request.volume_context.insert(ENCRYPTED_KEY.to_owned(), "true".to_owned());
    with_secret(request, secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_local_volume_keeps_only_ciphertext_in_its_backing_file_grows_online_under_a_writer_restages_intact_and_refuses_a_wrong_secret() {
    let test = "an_encrypted_local_volume_keeps_only_ciphertext_in_its_backing_file_grows_online_under_a_writer_restages_intact_and_refuses_a_wrong_secret";
    if let Some(reason) = host::lacks_dm_crypt() {
        host::note_skip(test, reason);
        return;
    }
    let Some(mut rig) = node_rig::rig(test).await else { return };
    rig.serve_as_process(&[]).await;
    let volume = rig.volume("luks-local", SIZE).await;
    let (id, image) = (volume.to_string(), rig.image(&volume));
    let key_file = swell_local::wrapped_key_path(rig.backend.state_dir(), &volume);
    let (staging, target) = (rig.path("staging"), rig.path("pods/p/vol"));

    // The first stage: a key made and stored wrapped, LUKS2 formatted, xfs on the mapping.
    let started = Instant::now();
    rig.node.node_stage_volume(stage(&id, &staging, Some(SECRET))).await.unwrap();
    println!("encrypted local stage (attach + luksFormat + open + mkfs.xfs + mount) took {:?}", started.elapsed());
    let (device, mapper) = record_devices(&rig.dir, &id).unwrap();
    let mapper = mapper.expect("the record names the clear-text mapping");
    assert!(mapper.starts_with("/dev/mapper/swell-luks-"), "{mapper}");
    assert_eq!(blkid_type(&device), "crypto_LUKS", "{device} holds a LUKS header");
    assert_eq!(host::loop_devices_for(&image), vec![device.clone()], "the backing file is what is attached");
    let wrapped = std::fs::read_to_string(&key_file).unwrap();
    assert!(wrapped.starts_with("v1:") && !wrapped.contains(SECRET), "the key file holds the data key wrapped: {wrapped}");
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);

    rig.node.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    let sum = write_marker_file(&rig.dir.join("pods/p/vol/marker.bin")).unwrap();
    assert!(find_marker(Path::new(&mapper)).unwrap().is_some(), "the marker written through xfs is on {mapper} (the search finds it)");

    // Online growth under a writer: backing file → loop refresh → cryptsetup resize → xfs_growfs.
    let before = host::statvfs_total(Path::new(&target)).unwrap();
    let writer = StreamingWriter::start(&rig.dir.join("pods/p/vol/stream.bin"), 21, Duration::from_millis(20)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.grow(&volume, GROWN).await;
    let started = Instant::now();
    let grown = rig.node.node_expand_volume(requests::node_expand(&id, &target, &staging, GROWN as i64, mount_capability("xfs"))).await.unwrap();
    let took = started.elapsed();
    let written = writer.stop_and_verify().unwrap();
    assert_eq!(grown.into_inner().capacity_bytes as u64, GROWN, "capacity is the backing file's new size");
    assert_eq!(host::device_bytes(Path::new(&device)).unwrap(), GROWN, "the loop device was refreshed");
    assert_eq!(host::device_bytes(Path::new(&mapper)).unwrap(), GROWN - LUKS2_HEADER, "cryptsetup resize grew the mapping");
    let after = host::statvfs_total(Path::new(&target)).unwrap();
    assert!(after - before > 126 * MIB && after - before <= 128 * MIB, "xfs grew with the mapping by 128 MiB: {before} -> {after}");
    assert!(written.records >= 5, "the writer kept writing: {written:?}");
    println!("encrypted local volume grown to 448 MiB in {took:?} under a writer, which synced {} records, all read back", written.records);

    // Unstage closes the mapping and detaches the loop device.
    rig.node.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
    rig.node.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    assert!(!Path::new(&mapper).exists(), "{mapper} closed at unstage");
    assert_eq!(leftovers(&rig.dir), Vec::<String>::new(), "nothing left after unstage");

    // A wrong or missing secret: refused before anything is attached, the key untouched.
    let wrong = rig.node.node_stage_volume(stage(&id, &staging, Some(OTHER_SECRET))).await.unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
    assert!(wrong.message().contains("KEK"), "names the key mismatch: {}", wrong.message());
    assert!(!wrong.message().contains(OTHER_SECRET) && !wrong.message().contains(SECRET), "{}", wrong.message());
    let missing = rig.node.node_stage_volume(stage(&id, &staging, None)).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert!(missing.message().contains(SECRET_KEY), "{}", missing.message());
    assert_eq!(leftovers(&rig.dir), Vec::<String>::new(), "a refused stage attached nothing");
    assert!(!rig.staging_record_exists(&volume), "no staging record");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), wrapped, "the wrapped key is untouched");

    // The right secret opens it again: the same key, the data and the grown size kept.
    rig.node.node_stage_volume(stage(&id, &staging, Some(SECRET))).await.unwrap();
    assert_eq!(host::sha256_file(&rig.dir.join("staging/marker.bin")).unwrap(), sum, "data intact after the restage");
    assert!(host::statvfs_total(&rig.dir.join("staging")).unwrap() >= after, "the restaged xfs keeps its grown size");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), wrapped, "the restage used the stored key, not a new one");
    rig.node.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    assert_eq!(leftovers(&rig.dir), Vec::<String>::new(), "nothing left after the last unstage");

    // What the state directory holds of the volume is ciphertext.
    assert_eq!(std::fs::metadata(&image).unwrap().len(), GROWN);
    assert_eq!(find_marker(&image).unwrap(), None, "plaintext of the marker file found in the backing file");
}
