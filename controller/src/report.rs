//! What a reconciler pass found and did: the counts the metrics show and
//! the stuck volumes the log names.

use std::time::Duration;

use swell_storage::VolumeId;

/// A volume whose expansion has been pending too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckExpansion {
    /// The volume.
    pub volume_id: VolumeId,
    /// Bytes wanted.
    pub desired_bytes: u64,
    /// Bytes the backend had when last read.
    pub current_bytes: u64,
    /// How long the wish has been pending.
    pub pending_for: Duration,
    /// The last error, or "in progress".
    pub reason: String,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Records with work left at the start of the pass.
    pub examined: usize,
    /// Volumes grown to their desired size.
    pub completed: usize,
    /// Records found already satisfied (and announced where owed).
    pub settled: usize,
    /// Volumes whose attempt failed (they back off).
    pub failed: usize,
    /// Volumes skipped: busy, or still backing off.
    pub deferred: usize,
    /// Settled records the sweep checked against the backend in this pass.
    pub swept: usize,
    /// Records still short of their desired size after the pass.
    pub pending: usize,
    /// Records whose size the volume's clients still have to be told.
    pub announcements_owed: usize,
    /// How long the oldest wish still short of its size has waited.
    pub oldest_pending: Option<Duration>,
    /// Volumes pending for longer than `stuck_after`.
    pub stuck: Vec<StuckExpansion>,
    /// Expansion records found that cannot be read (damaged, or naming no
    /// volume id), neither worked on nor dropped.
    pub unreadable: usize,
}
