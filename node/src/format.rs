//! Formats that a deadline or a crash can cut off: luksFormat on the
//! attached device, mkfs on the data device. A cut mkfs.xfs leaves a
//! superblock that blkid names as xfs and that no mount accepts, and a cut
//! luksFormat a header no key opens: a retry that trusted what it found
//! would fail for ever. So each format is recorded as begun, with the UUID
//! Swell gives the new filesystem or header, before the program starts,
//! and forgotten only after it exited 0. A stage that finds a record and a
//! device holding that UUID knows the content is its own unfinished format
//! and formats again; blank devices are formatted, and anything else is
//! never overwritten (and its stale record dropped).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use swell_storage::{VolumeId, durable};

use crate::crypt::key::DataKey;
use crate::error::NodeError;
use crate::filesystem::{Format, FsType, probe};
use crate::staging::blocking;
use crate::system::System;

/// What a format puts on a device.
#[derive(Clone, Copy)]
pub(crate) enum Layer<'a> {
    /// A LUKS2 header keyed with the volume's data key.
    Luks(&'a DataKey),
    /// A filesystem.
    Filesystem(FsType),
}

impl Layer<'_> {
    /// The name of its record, so both layers of one volume keep their own.
    fn record_name(&self) -> &'static str {
        match self {
            Layer::Luks(_) => "luks",
            Layer::Filesystem(_) => "filesystem",
        }
    }

    fn deadline(&self) -> Duration {
        match self {
            Layer::Luks(_) => crate::crypt::luks::FORMAT_DEADLINE,
            Layer::Filesystem(_) => crate::filesystem::FORMAT_DEADLINE,
        }
    }
}

/// What a device holds, seen from the layer about to go on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// Nothing blkid recognises.
    Blank,
    /// What a format of Swell's that never finished left.
    Unfinished,
    /// Content of this kind (blkid's name), finished or someone else's.
    Holds(String),
}

/// The record of a begun format.
#[derive(Debug, Serialize, Deserialize)]
struct Begun {
    uuid: String,
}

/// The records, one file per volume and layer under `<state_dir>/formatting`.
#[derive(Debug, Clone)]
pub(crate) struct FormatLog {
    dir: PathBuf,
}

impl FormatLog {
    /// Opens the log, creating its directory (0700).
    pub(crate) fn open(state_dir: &Path) -> Result<Self, NodeError> {
        let dir = state_dir.join("formatting");
        for dir in [state_dir, &dir] {
            durable::private_dir(dir).map_err(|e| NodeError::io(format!("create {}", dir.display()), e))?;
        }
        Ok(FormatLog { dir })
    }

    fn path(&self, volume: &VolumeId, layer: Layer<'_>) -> PathBuf {
        // Volume ids are validated to [a-z0-9._-:], safe as file names.
        self.dir.join(format!("{volume}.{}.json", layer.record_name()))
    }

    async fn begun(&self, volume: &VolumeId, layer: Layer<'_>) -> Result<Option<String>, NodeError> {
        let path = self.path(volume, layer);
        let read = blocking(move || durable::read_json::<Begun>(&path)).await;
        read.map(|begun| begun.map(|b| b.uuid)).map_err(|e| NodeError::io(format!("read the format record of volume {volume}"), e))
    }

    async fn forget(&self, volume: &VolumeId, layer: Layer<'_>) -> Result<(), NodeError> {
        let path = self.path(volume, layer);
        blocking(move || durable::remove(&path)).await.map_err(|e| NodeError::io(format!("remove the format record of volume {volume}"), e))
    }

    /// What `device` holds for `layer` of `volume`.
    pub(crate) async fn examine(&self, sys: &dyn System, volume: &VolumeId, layer: Layer<'_>, device: &Path) -> Result<Found, NodeError> {
        let found = probe(sys, device).await?;
        let begun = self.begun(volume, layer).await?;
        Ok(match (found, begun) {
            (None, _) => Found::Blank,
            (Some(found), Some(uuid)) if found.uuid.as_deref() == Some(uuid.as_str()) => Found::Unfinished,
            (Some(found), begun) => {
                if begun.is_some() {
                    // Not what our format wrote: someone's data, never ours to redo.
                    tracing::warn!(device = %device.display(), found = %found.kind, "a format record does not match the device; dropped");
                    self.forget(volume, layer).await?;
                }
                Found::Holds(found.kind)
            }
        })
    }

    /// Formats `device` with `layer`, over an unfinished format of ours
    /// when `found` says so (anything but [`Found::Blank`] or
    /// [`Found::Unfinished`] is refused here too).
    pub(crate) async fn make(&self, sys: &dyn System, volume: &VolumeId, device: &Path, layer: Layer<'_>, found: &Found) -> Result<(), NodeError> {
        self.make_within(sys, volume, device, layer, found, layer.deadline()).await
    }

    /// [`FormatLog::make`] with the program's deadline given.
    pub(crate) async fn make_within(
        &self,
        sys: &dyn System,
        volume: &VolumeId,
        device: &Path,
        layer: Layer<'_>,
        found: &Found,
        deadline: Duration,
    ) -> Result<(), NodeError> {
        let overwrite = match found {
            Found::Blank => false,
            Found::Unfinished => true,
            Found::Holds(kind) => {
                let reason = format!("{} holds {kind}; Swell formats only a blank device or its own unfinished format", device.display());
                return Err(NodeError::Conflict { volume: volume.to_string(), reason });
            }
        };
        if overwrite {
            tracing::warn!(device = %device.display(), layer = layer.record_name(), "formatting again: the last format did not finish");
        }
        let format = Format::new(overwrite, deadline)?;
        let path = self.path(volume, layer);
        let begun = Begun { uuid: format.uuid.clone() };
        blocking(move || durable::write_json(&path, &begun)).await.map_err(|e| NodeError::io(format!("record the format of volume {volume}"), e))?;
        match layer {
            Layer::Luks(key) => crate::crypt::luks::format(sys, volume, device, key, &format).await?,
            Layer::Filesystem(fs_type) => fs_type.ops().mkfs(sys, device, &format).await.map_err(|e| e.for_volume(&volume.to_string()))?,
        }
        self.forget(volume, layer).await
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
