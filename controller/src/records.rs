//! The durable expansion record of each volume: what size was wanted, what
//! size the backend had when last read, and the last error. It is written
//! before the backend is asked to grow and again after, so an expansion cut
//! short by a crash or a fault is visible afterwards. The record never stands
//! in for the backend: every decision re-reads the real size.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use swell_storage::{VolumeId, durable};

/// One volume's expansion state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExpansionRecord {
    /// The volume.
    pub volume_id: String,
    /// The size the last accepted request asked the backend for.
    pub desired_bytes: u64,
    /// The backend's size when last read.
    pub current_bytes: u64,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When `desired_bytes` was last changed (seconds since the epoch).
    pub desired_since_unix: u64,
    /// When the record was last written.
    pub updated_unix: u64,
}

impl ExpansionRecord {
    /// Whether the backend has not yet reached the desired size.
    pub fn pending(&self) -> bool {
        self.desired_bytes > self.current_bytes
    }
}

/// The directory of records.
#[derive(Debug, Clone)]
pub struct ExpansionRecords {
    dir: PathBuf,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl ExpansionRecords {
    /// Opens (creating) the record directory under `state_dir`.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        let dir = state_dir.join("expansions");
        std::fs::create_dir_all(&dir)?;
        Ok(ExpansionRecords { dir })
    }

    fn path(&self, id: &VolumeId) -> PathBuf {
        // Ids are validated to [a-z0-9._-:], safe as a file name.
        self.dir.join(format!("{id}.json"))
    }

    /// Reads a volume's record.
    pub fn get(&self, id: &VolumeId) -> std::io::Result<Option<ExpansionRecord>> {
        durable::read_json(&self.path(id))
    }

    /// Records that `desired` bytes are wanted, before the backend is asked.
    pub fn begin(&self, id: &VolumeId, current: u64, desired: u64) -> std::io::Result<ExpansionRecord> {
        let now = now_unix();
        let since = match self.get(id)? {
            Some(old) if old.desired_bytes == desired => old.desired_since_unix,
            _ => now,
        };
        let record = ExpansionRecord {
            volume_id: id.to_string(),
            desired_bytes: desired,
            current_bytes: current,
            last_error: None,
            desired_since_unix: since,
            updated_unix: now,
        };
        durable::write_json(&self.path(id), &record)?;
        Ok(record)
    }

    /// Records the backend's size after an attempt, and its error if any.
    pub fn finish(&self, mut record: ExpansionRecord, current: u64, error: Option<String>) -> std::io::Result<ExpansionRecord> {
        record.current_bytes = current;
        record.last_error = error;
        record.updated_unix = now_unix();
        durable::write_json(&self.path(&record.volume_id.parse().map_err(std::io::Error::other)?), &record)?;
        Ok(record)
    }

    /// Every record, in no particular order; unreadable ones are logged and
    /// skipped so one corrupt file cannot stop the others being reconciled.
    pub fn list(&self) -> std::io::Result<Vec<ExpansionRecord>> {
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match durable::read_json::<ExpansionRecord>(&path) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(err) => tracing::error!(path = %path.display(), error = %err, "unreadable expansion record"),
            }
        }
        Ok(records)
    }

    /// Forgets a deleted volume.
    pub fn remove(&self, id: &VolumeId) -> std::io::Result<()> {
        durable::remove(&self.path(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_then_finish_tracks_desired_and_current() {
        let dir = tempfile::tempdir().unwrap();
        let records = ExpansionRecords::open(dir.path()).unwrap();
        let id: VolumeId = "local:aa".parse().unwrap();
        let started = records.begin(&id, 1, 2).unwrap();
        assert!(records.get(&id).unwrap().unwrap().pending(), "a crash here leaves a pending record");
        let done = records.finish(started, 2, None).unwrap();
        assert!(!done.pending());
        assert_eq!(records.get(&id).unwrap(), Some(done));
        records.remove(&id).unwrap();
        assert_eq!(records.get(&id).unwrap(), None);
    }

    #[test]
    fn a_lowered_request_replaces_a_failed_target() {
        let dir = tempfile::tempdir().unwrap();
        let records = ExpansionRecords::open(dir.path()).unwrap();
        let id: VolumeId = "local:bb".parse().unwrap();
        let failed = records.begin(&id, 1, 100).unwrap();
        records.finish(failed, 1, Some("backend timed out".into())).unwrap();
        let lowered = records.begin(&id, 1, 5).unwrap();
        assert_eq!((lowered.desired_bytes, lowered.last_error), (5, None));
    }
}
