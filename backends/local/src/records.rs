//! The records the local backend keeps beside its files: what it must
//! remember that a file's length cannot say. Their JSON is the on-disk
//! format; every change to it must read what earlier versions wrote.

use serde::{Deserialize, Serialize};
use swell_storage::{ContentSource, VolumeId};

/// The durable record kept beside each backing file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct VolumeRecord {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_records_written_before_typed_ids_read_back_as_they_were() {
        let written = r#"{
  "name": "snapshot-1",
  "source": "local:0a1b2c3d4e5f60718293a4b5c6d7e8f9",
  "size_bytes": 1073741824,
  "created_unix_nanos": 1765000000000000000
}"#;
        let record: SnapshotRecord = serde_json::from_str(written).unwrap();
        assert_eq!(record.source, "local:0a1b2c3d4e5f60718293a4b5c6d7e8f9".parse::<VolumeId>().unwrap());
        assert_eq!(serde_json::to_string_pretty(&record).unwrap(), written);
        assert!(serde_json::from_str::<SnapshotRecord>(&written.replace("local:0a", "Local:0a")).is_err(), "a bad id makes the record unreadable");
    }
}
