//! Where the node reads a volume's auto-grow policy and writes its usage
//! (docs/auto-grow.md): apart from the reporter (`usage_report`), so the
//! attachers that implement it for their backend need not import the
//! reporter, which reaches them through the node's context.

use swell_storage::VolumeId;
use swell_storage::auto_grow::{AutoGrowRecord, Usage};

use crate::error::NodeError;

/// Where a volume's auto-grow policy is read and its usage written: its
/// backend's store, reached without Kubernetes credentials.
#[async_trait::async_trait]
pub(crate) trait UsageStore: Send + Sync {
    /// The volume's stored auto-grow record, `None` without one.
    async fn record(&self, volume: &VolumeId) -> Result<Option<AutoGrowRecord>, NodeError>;

    /// The usage last written for the volume, `None` without one.
    async fn usage(&self, volume: &VolumeId) -> Result<Option<Usage>, NodeError>;

    /// Writes the reading, then, when `mark`, the volume's mark: the
    /// controller reads the usage it finds marked, so the usage is there first.
    async fn write_usage(&self, volume: &VolumeId, usage: &Usage, mark: bool) -> Result<(), NodeError>;
}
