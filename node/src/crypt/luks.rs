//! LUKS2 through `cryptsetup`: the data key goes to it on stdin
//! (`--key-file -`), never in its arguments, environment or a file. Opened
//! with `--disable-keyring`, so the volume key stays in the dm-crypt table
//! and `cryptsetup resize` grows the mapping without asking for the key
//! again (NodeExpandVolume carries no secret).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use swell_storage::VolumeId;
use swell_storage::command::CommandError;

use super::key::DataKey;
use crate::error::NodeError;
use crate::filesystem::Format;
use crate::system::System;

/// luksFormat writes and wipes the 16 MiB header area; slow under emulation.
pub(crate) const FORMAT_DEADLINE: Duration = Duration::from_secs(120);
/// open, resize, close and status touch only the header and the kernel.
const DEADLINE: Duration = Duration::from_secs(60);
/// `cryptsetup status` exits 4 (ENODEV) for a mapping that does not exist.
const INACTIVE: i32 = 4;

/// The device-mapper name of `volume`'s clear-text mapping: a digest of
/// the id, so any id makes a valid, unique name.
pub(crate) fn mapper_name(volume: &VolumeId) -> String {
    let digest = Sha256::digest(volume.to_string().as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("swell-luks-{hex}")
}

/// Where the mapping of `name` appears.
pub(crate) fn mapper_path(name: &str) -> PathBuf {
    Path::new("/dev/mapper").join(name)
}

fn words(items: &[&str]) -> Vec<OsString> {
    items.iter().map(OsString::from).collect()
}

/// The device under the active mapping `name`, `None` when it is not open.
pub(crate) async fn active_on(sys: &dyn System, volume: &VolumeId, name: &str) -> Result<Option<PathBuf>, NodeError> {
    match sys.run("cryptsetup", words(&["status", name]), DEADLINE).await {
        Ok(out) => out
            .stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix("device:").map(|d| Some(PathBuf::from(d.trim()))))
            .ok_or_else(|| NodeError::Parse { step: format!("cryptsetup status {name} for volume {volume}"), detail: out.stdout }),
        Err(e) if e.exit_code() == Some(INACTIVE) => Ok(None),
        Err(e) => Err(NodeError::command(format!("read the LUKS mapping {name} of volume {volume}"), e)),
    }
}

/// Writes a LUKS2 header with `format`'s UUID to `device`, with `key` as
/// its one passphrase. The key is 512 random bits, so PBKDF2 at its
/// minimum costs an attacker nothing they lack, and opening stays fast on
/// a slow node. `--batch-mode` overwrites without asking: what is there
/// is blank or Swell's own unfinished format (`crate::format`).
pub(crate) async fn format(sys: &dyn System, volume: &VolumeId, device: &Path, key: &DataKey, format: &Format) -> Result<(), NodeError> {
    let mut args = words(&["luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-"]);
    args.extend(["--uuid".into(), format.uuid.as_str().into(), device.into()]);
    sys.run_with_secret("cryptsetup", args, key.bytes(), format.deadline)
        .await
        .map_err(|e| NodeError::command(format!("luksFormat {} of volume {volume}", device.display()), e))?;
    Ok(())
}

/// Opens `device` as the mapping `name`; a wrong key fails here, before any
/// byte is written.
pub(crate) async fn open(sys: &dyn System, volume: &VolumeId, device: &Path, name: &str, key: &DataKey, read_only: bool) -> Result<PathBuf, NodeError> {
    let mut args = words(&["open", "--type", "luks2", "--disable-keyring", "--key-file", "-"]);
    if read_only {
        args.push("--readonly".into());
    }
    args.extend([device.into(), name.into()]);
    sys.run_with_secret("cryptsetup", args, key.bytes(), DEADLINE).await.map_err(|e| open_failed(volume, device, e))?;
    Ok(mapper_path(name))
}

fn open_failed(volume: &VolumeId, device: &Path, e: CommandError) -> NodeError {
    // cryptsetup exits 2 when no keyslot takes the passphrase.
    if e.exit_code() == Some(2) {
        return NodeError::WrongKey { volume: volume.to_string(), reason: format!("the data key opens no keyslot of the LUKS header on {}", device.display()) };
    }
    NodeError::command(format!("open the LUKS volume on {} of volume {volume}", device.display()), e)
}

/// Grows the mapping `name` to its device's size.
pub(crate) async fn resize(sys: &dyn System, volume: &VolumeId, name: &str) -> Result<(), NodeError> {
    sys.run("cryptsetup", words(&["resize", "--disable-keyring", name]), DEADLINE)
        .await
        .map_err(|e| NodeError::command(format!("cryptsetup resize {name} of volume {volume}"), e))?;
    Ok(())
}

/// Closes the mapping `name`; one that is not open is fine.
pub(crate) async fn close(sys: &dyn System, volume: &VolumeId, name: &str) -> Result<(), NodeError> {
    if active_on(sys, volume, name).await?.is_none() {
        return Ok(());
    }
    sys.run("cryptsetup", words(&["close", name]), DEADLINE)
        .await
        .map_err(|e| NodeError::command(format!("close the LUKS mapping {name} of volume {volume}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapper_names_are_fixed_per_volume_and_valid_for_device_mapper() {
        let a: VolumeId = "rbd:ceph-a:rbd:swell-0123456789abcdef0123456789abcdef".parse().expect("id");
        let b: VolumeId = "local:0123".parse().expect("id");
        assert_eq!(mapper_name(&a), mapper_name(&a));
        assert_ne!(mapper_name(&a), mapper_name(&b));
        // device-mapper names are at most 127 bytes and have no '/'.
        assert!(mapper_name(&a).len() < 128 && !mapper_name(&a).contains('/'));
        assert_eq!(mapper_path("swell-luks-x"), Path::new("/dev/mapper/swell-luks-x"));
    }
}
