//! Snapshots and the sources a new volume can be made from, as every
//! backend and both services see them: the snapshot id contract, the key a
//! snapshot name gets, and what a backend reports about a snapshot.
//!
//! A snapshot id is `<backend>:<where>:snap-<32 hex>`: the backend and
//! whatever locates the snapshot there (RBD: cluster and pool; local:
//! nothing), then the key, the first 16 bytes of sha256 of the CO's
//! snapshot name, so a retried CreateSnapshot lands on the same snapshot.
//! The key's shape keeps snapshot ids and volume ids apart: no volume key
//! starts with `snap-`.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::volume_id::{VolumeId, VolumeIdError, is_name_digest, name_digest};
use serde::{Deserialize, Serialize};

/// Every snapshot key starts with this.
pub const KEY_PREFIX: &str = "snap-";

/// The key a snapshot named `name` gets in every backend.
pub fn snapshot_key(name: &str) -> String {
    format!("{KEY_PREFIX}{}", name_digest(name))
}

/// Whether `key` has the shape of a snapshot key.
pub fn is_snapshot_key(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(is_name_digest)
}

/// A parsed, validated snapshot id (same alphabet and length limit as a
/// volume id; its last part is a snapshot key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(VolumeId);

impl SnapshotId {
    /// The id of snapshot `key` of `backend`, located by `place` (empty:
    /// nothing to locate).
    pub fn new(backend: &str, place: &str, key: &str) -> Result<Self, VolumeIdError> {
        let raw = if place.is_empty() { format!("{backend}:{key}") } else { format!("{backend}:{place}:{key}") };
        raw.parse()
    }

    /// The backend that owns the snapshot.
    pub fn backend(&self) -> &str {
        self.0.backend()
    }

    /// The snapshot key (`snap-<32 hex>`).
    pub fn key(&self) -> &str {
        self.0.key().rsplit(':').next().unwrap_or_default()
    }

    /// What locates the snapshot in its backend (the parts between backend
    /// and key), empty when nothing does.
    pub fn place(&self) -> &str {
        self.0.key().rsplit_once(':').map_or("", |(place, _)| place)
    }
}

impl FromStr for SnapshotId {
    type Err = VolumeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id: VolumeId = s.parse()?;
        let key = id.key().rsplit(':').next().unwrap_or_default();
        if !is_snapshot_key(key) {
            return Err(VolumeIdError::Malformed(s.to_owned()));
        }
        Ok(SnapshotId(id))
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SnapshotId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What a new volume is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentSource {
    /// Restored from a snapshot.
    Snapshot(SnapshotId),
    /// Cloned from a volume.
    Volume(VolumeId),
}

impl fmt::Display for ContentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentSource::Snapshot(id) => write!(f, "snapshot {id}"),
            ContentSource::Volume(id) => write!(f, "volume {id}"),
        }
    }
}

/// A snapshot as its backend sees it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The id handed to Kubernetes.
    pub id: SnapshotId,
    /// The CO's name (the idempotency key of CreateSnapshot).
    pub name: String,
    /// The volume it was cut from (which may have been deleted since).
    pub source: VolumeId,
    /// The source's size when it was cut: the smallest volume it restores into.
    pub size_bytes: u64,
    /// When it was cut.
    pub created: SystemTime,
    /// Whether a volume can be made from it now.
    pub ready: bool,
}

/// Nanoseconds since the epoch, as records store times (0 before it).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// The time `nanos` after the epoch.
pub fn from_unix_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_digests_of_the_name() {
        let key = snapshot_key("snapshot-1");
        assert_eq!(key, snapshot_key("snapshot-1"));
        assert_ne!(key, snapshot_key("snapshot-2"));
        assert!(is_snapshot_key(&key), "{key}");
        for other in ["snap-", "snap-0123", "swell-0123456789abcdef0123456789abcdef", &format!("x{key}")] {
            assert!(!is_snapshot_key(other), "{other}");
        }
    }

    #[test]
    fn ids_round_trip_and_never_parse_from_volume_ids() {
        let key = snapshot_key("s");
        let local = SnapshotId::new("local", "", &key).unwrap();
        assert_eq!(local.to_string(), format!("local:{key}"));
        assert_eq!((local.backend(), local.place(), local.key()), ("local", "", key.as_str()));
        let rbd = SnapshotId::new("rbd", "ceph-a:fast", &key).unwrap();
        assert_eq!((rbd.backend(), rbd.place(), rbd.key()), ("rbd", "ceph-a:fast", key.as_str()));
        assert_eq!(rbd.to_string().parse::<SnapshotId>().unwrap(), rbd);
        for bad in ["local:0123abcd", "rbd:c:p:swell-0123456789abcdef0123456789abcdef", "local:snap-xyz", "", "snap"] {
            assert!(bad.parse::<SnapshotId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_serialise_as_their_ids() {
        let snap = ContentSource::Snapshot(SnapshotId::new("local", "", &snapshot_key("s")).unwrap());
        let vol = ContentSource::Volume("local:abcd".parse().unwrap());
        for source in [snap, vol] {
            let text = serde_json::to_string(&source).unwrap();
            assert_eq!(serde_json::from_str::<ContentSource>(&text).unwrap(), source, "{text}");
        }
        assert!(serde_json::from_str::<ContentSource>(r#"{"volume":"../x"}"#).is_err());
    }

    #[test]
    fn times_round_trip_through_nanos() {
        let now = SystemTime::now();
        assert_eq!(from_unix_nanos(unix_nanos(now)), now);
        assert_eq!(unix_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
