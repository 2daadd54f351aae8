//! The records the local backend keeps beside its files: what it must
//! remember that a file's length cannot say. Their JSON is the on-disk
//! format; every change to it must read what earlier versions wrote.

use serde::{Deserialize, Serialize};
use swell_storage::{ContentSource, VolumeId};

/// The durable record kept beside each backing file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    /// The CO's name for the volume.
    pub name: String,
    /// The size last asked for; the file may lag behind after a crash.
    pub desired_bytes: u64,
    /// When the volume was created, seconds since the epoch.
    pub created_unix: u64,
    /// What the volume was made from, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ContentSource>,
}

/// The durable record kept beside each snapshot's copy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SnapshotRecord {
    /// The CO's name for the snapshot.
    pub name: String,
    /// The volume it was cut from.
    pub source: VolumeId,
    /// The source's size when it was cut.
    pub size_bytes: u64,
    /// When it was cut, nanoseconds since the epoch.
    pub created_unix_nanos: u64,
}
