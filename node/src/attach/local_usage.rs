//! A local volume's auto-grow state as the node reaches it: files in the
//! local state directory its loop attacher attaches backing files from
//! (docs/auto-grow.md; `swell_local::auto_grow` owns their layout), so
//! [`Attachers::usage_store`](super::Attachers::usage_store) serves local
//! volumes as it serves RBD ones.

use std::path::Path;
use std::time::Duration;

use swell_storage::VolumeId;
use swell_storage::auto_grow::{AutoGrowRecord, Usage};

use super::LoopAttacher;
use crate::error::NodeError;
use crate::usage_store::UsageStore;

/// A file operation on the state directory that takes longer is given up
/// (and tried at the next pass): a wedged disk must not wedge the reporter.
const FILE_DEADLINE: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl UsageStore for LoopAttacher {
    async fn record(&self, volume: &VolumeId) -> Result<Option<AutoGrowRecord>, NodeError> {
        in_state_dir(self.state_dir(), "read auto-grow policy", volume, swell_local::auto_grow::read_record).await
    }

    async fn usage(&self, volume: &VolumeId) -> Result<Option<Usage>, NodeError> {
        in_state_dir(self.state_dir(), "read usage", volume, swell_local::auto_grow::read_usage).await
    }

    async fn write_usage(&self, volume: &VolumeId, usage: &Usage, mark: bool) -> Result<(), NodeError> {
        let usage = *usage;
        in_state_dir(self.state_dir(), "write usage", volume, move |state_dir, id| {
            swell_local::auto_grow::write_usage(state_dir, id, &usage)?;
            if mark { swell_local::auto_grow::mark_wanted(state_dir, id) } else { Ok(()) }
        })
        .await
    }
}

/// Runs `work` on `volume`'s files in `state_dir` off the async threads,
/// under [`FILE_DEADLINE`].
async fn in_state_dir<T: Send + 'static>(
    state_dir: &Path,
    step: &'static str,
    volume: &VolumeId,
    work: impl FnOnce(&Path, &VolumeId) -> std::io::Result<T> + Send + 'static,
) -> Result<T, NodeError> {
    let (state_dir, id) = (state_dir.to_owned(), volume.clone());
    crate::system::blocking(format!("{step} of {volume}"), FILE_DEADLINE, move || work(&state_dir, &id)).await
}
