//! Where the webhook reads a volume's open expansion record: today the
//! controller's file records under its `--state-dir`
//! ([`swell_controller::ExpansionRecords`]). The only module that knows
//! where records live, so moving them (e.g. into the backend) changes this
//! file alone.

use std::path::Path;

use swell_controller::ExpansionRecords;
use swell_storage::VolumeId;

/// Read access to the controller's expansion records.
#[derive(Debug, Clone)]
pub struct RecordStore {
    records: ExpansionRecords,
}

impl RecordStore {
    /// The records of the controller whose state directory is `state_dir`.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        Ok(RecordStore { records: ExpansionRecords::open(state_dir)? })
    }

    /// The desired size of the volume's record if it has not been reached
    /// by the size the record last saw; `None` without an open record. The
    /// caller compares it with the backend's fresh size as well.
    pub async fn open_desired(&self, id: &VolumeId) -> std::io::Result<Option<u64>> {
        let (records, id) = (self.records.clone(), id.clone());
        let record = tokio::task::spawn_blocking(move || records.get(&id)).await.map_err(std::io::Error::other)??;
        Ok(record.filter(|r| r.pending()).map(|r| r.desired_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_unreached_records_are_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let writer = ExpansionRecords::open(dir.path()).unwrap();
        let id: VolumeId = "local:aa".parse().unwrap();
        assert_eq!(store.open_desired(&id).await.unwrap(), None);
        let begun = writer.begin(&id, 10, 20).unwrap();
        assert_eq!(store.open_desired(&id).await.unwrap(), Some(20));
        writer.finish(begun, 20, None).unwrap();
        assert_eq!(store.open_desired(&id).await.unwrap(), None);
    }
}
