//! Where the webhook reads a volume's expansion record: in the backend's
//! own store when it keeps one (RBD: the pool's state object, beside the
//! images), else in the controller's file records under its `--state-dir`,
//! the choice the controller's expander makes too. The only module that
//! knows where records live.

use std::path::Path;
use std::sync::Arc;

use swell_storage::expansion_files::ExpansionRecords;
use swell_storage::{Backend, BackendError, ExpansionStore, VolumeId};

/// Read access to the volumes' expansion records.
#[derive(Clone)]
pub struct RecordStore {
    files: Arc<dyn ExpansionStore>,
}

impl RecordStore {
    /// The records of the controller whose state directory is `state_dir`,
    /// for backends that keep none themselves.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        Ok(RecordStore { files: Arc::new(ExpansionRecords::open(state_dir)?) })
    }

    /// The desired size of the volume's record while it wants more than the
    /// size the record last saw; `None` without such a record. The caller
    /// compares it with the backend's fresh size as well.
    pub async fn open_desired(&self, backend: &Arc<dyn Backend>, id: &VolumeId) -> Result<Option<u64>, BackendError> {
        let store = backend.expansion_store().unwrap_or_else(|| Arc::clone(&self.files));
        let record = store.record(id).await?;
        Ok(record.filter(|r| r.growing()).map(|r| r.desired_bytes))
    }
}
