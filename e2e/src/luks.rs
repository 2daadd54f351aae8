//! What the encrypted-volume (LUKS2) tests of every backend share: the
//! node-stage Secret they pass, the marker they write through the
//! filesystem and look for in the clear and in the backend's bytes, and
//! what they read of a staged volume (its staging record's devices, the
//! type blkid sees).

use std::io::{Read, Write};
use std::path::Path;

use csi_proto::v1::NodeStageVolumeRequest;

/// The node-stage Secret's key that holds the key-encryption key.
pub const SECRET_KEY: &str = "encryptionKEK";
/// A value of it.
pub const SECRET: &str = "kek-one-0123456789abcdef0123456789abcdef";
/// Another value of it: a wrong Secret for volumes made under [`SECRET`].
pub const OTHER_SECRET: &str = "kek-two-0123456789abcdef0123456789abcdef";
/// Written through the filesystem; must never be found in the backend's bytes.
pub const MARKER: &[u8] = b"SWELL-LUKS-PLAINTEXT-MARKER-0451";

/// `request` with `secret` as its node-stage Secret's KEK (none: no Secret).
pub fn with_secret(mut request: NodeStageVolumeRequest, secret: Option<&str>) -> NodeStageVolumeRequest {
    if let Some(secret) = secret {
        request.secrets.insert(SECRET_KEY.to_owned(), secret.to_owned());
    }
    request
}

/// The attached device and clear-text mapping that the staging record of
/// volume `id` names, under a node whose state directory is `dir/node`.
pub fn record_devices(dir: &Path, id: &str) -> Result<(String, Option<String>), String> {
    let path = dir.join("node/staged").join(format!("{id}.json"));
    let text = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let record: serde_json::Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let device = record["device"].as_str().ok_or_else(|| format!("{} names no device", path.display()))?;
    Ok((device.to_owned(), record["mapper"].as_str().map(str::to_owned)))
}

/// What `blkid -p` calls the content of `device` (empty: nothing it knows).
pub fn blkid_type(device: &str) -> String {
    std::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE", device])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Writes 4 MiB of [`MARKER`] to `path` and fsyncs it; returns its SHA-256.
pub fn write_marker_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::create(path)?;
    for _ in 0..(4 << 20) / MARKER.len() {
        file.write_all(MARKER)?;
    }
    file.sync_all()?;
    crate::host::sha256_file(path)
}

/// The offset of the first 512-byte sector of `path` that starts with
/// [`MARKER`]: the filesystem writes file data in whole aligned blocks, so
/// clear text of the marker file starts sectors wherever it lies.
pub fn find_marker(path: &Path) -> std::io::Result<Option<u64>> {
    let mut file = std::fs::File::open(path)?;
    let mut chunk = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(at) = chunk[..n].chunks(512).position(|sector| sector.starts_with(MARKER)) {
            return Ok(Some(offset + at as u64 * 512));
        }
        offset += n as u64;
    }
}
