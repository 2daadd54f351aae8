//! Reporting staged volumes' usage into their backend's store, for
//! auto-grow (docs/auto-grow.md): the controller decides on what the node
//! wrote there, so the node needs no Kubernetes credentials and the
//! controller no access to kubelet.
//!
//! Every pass walks this node's own staging records (the cost follows the
//! volumes staged here) and, for each mounted volume whose stored policy
//! has auto-grow on, reads statvfs and writes the reading to the volume's
//! store ([`UsageStore`]: beside a local volume's record, in an RBD image's
//! metadata): at most once per `min_gap` per volume, and at once when the
//! volume crosses its threshold, which also marks it as wanting to grow.
//! The policy is read once per staging (it is stored at CreateVolume,
//! before any stage), so a volume without one costs one read per staging
//! and no write. Block volumes have no filesystem to read: the skip is
//! written (and marked) once per volume instead of a reading, so the
//! controller tells the claim once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use swell_storage::VolumeId;
use swell_storage::auto_grow::{AutoGrowPolicy, Skipped, Usage};
use swell_storage::expansion::now_unix;
use tokio::time::Instant;

use crate::NodeContext;
use crate::error::NodeError;
use crate::staged_passes::{self, StagedPass};
use crate::staging::Access;
use crate::stats;
use crate::usage_store::UsageStore;

/// What the reporter remembers of a volume between passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reported {
    at: Instant,
    crossed: bool,
    bytes_total: u64,
}

/// What the reporter keeps of a staged volume: the policy it reports
/// against (`None`: nothing to report) and its last written reading.
#[derive(Debug, Clone, Copy)]
struct Watched {
    policy: Option<AutoGrowPolicy>,
    last: Option<Reported>,
}

/// How often a pass looks, for reports at most `min_gap` apart per volume:
/// often enough to see a crossing soon after it happens.
pub(crate) fn pass_interval(min_gap: Duration) -> Duration {
    (min_gap / 6).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// Starts the reporter over `ctx`; it stops by itself once the node is gone.
pub(crate) fn spawn(ctx: &Arc<NodeContext>, min_gap: Duration) {
    let interval = pass_interval(min_gap);
    tracing::info!(min_gap_ms = min_gap.as_millis() as u64, interval_ms = interval.as_millis() as u64, "reporting staged volumes' usage for auto-grow");
    staged_passes::spawn(ctx, interval, Reporter { min_gap });
}

struct Reporter {
    min_gap: Duration,
}

impl StagedPass for Reporter {
    type Kept = Watched;
    const NAME: &'static str = "usage report";

    async fn visit(&self, ctx: &NodeContext, volume: &VolumeId, watched: &mut HashMap<VolumeId, Watched>) {
        // Staged here, so its backend is served here; nothing to report otherwise.
        let Ok(store) = ctx.attachers.usage_store(volume) else { return };
        if let Err(e) = report(ctx, store, volume, self.min_gap, watched).await {
            tracing::warn!(%volume, error = %e.full_message(), "usage report failed; tried again next pass");
        }
    }
}

/// Reads and, when due, writes `volume`'s usage.
async fn report(
    ctx: &NodeContext,
    store: &dyn UsageStore,
    volume: &VolumeId,
    min_gap: Duration,
    watched: &mut HashMap<VolumeId, Watched>,
) -> Result<(), NodeError> {
    let Some(record) = ctx.staging.read(volume).await? else { return Ok(()) };
    let kept = match watched.get(volume) {
        Some(kept) => *kept,
        None => {
            let mut policy = store.record(volume).await?.map(|record| record.policy);
            if policy.is_some() && !matches!(record.access, Access::Mount { .. }) {
                // Logged once per staging (the entry goes when it is unstaged).
                tracing::warn!(%volume, "auto-grow skipped: {}", Skipped::BlockVolume.reason());
                report_skip(store, volume, Skipped::BlockVolume).await?;
                policy = None;
            }
            let kept = Watched { policy, last: None };
            watched.insert(volume.clone(), kept);
            kept
        }
    };
    let Some(policy) = kept.policy else { return Ok(()) };
    let stats::Usage::Filesystem { bytes, inodes } = stats::filesystem_usage(record.staging_path.clone()).await? else { return Ok(()) };
    let usage =
        Usage { bytes_used: bytes.used, bytes_total: bytes.total, inodes_used: inodes.used, inodes_total: inodes.total, read_unix: now_unix(), skipped: None };
    // Measured against the class's threshold even where the class leaves
    // auto-grow off: a claim may turn it on, which only the controller reads.
    let crossed = AutoGrowPolicy { on: true, ..policy }.crossed(&usage).is_some();
    let this = Reported { at: Instant::now(), crossed, bytes_total: usage.bytes_total };
    let Some(mark) = due(kept.last, this, min_gap) else {
        return Ok(());
    };
    store.write_usage(volume, &usage, mark).await?;
    if mark {
        tracing::info!(%volume, bytes_used = usage.bytes_used, bytes_total = usage.bytes_total, limit_bytes = policy.limit_bytes, "usage crossed the auto-grow threshold");
    }
    watched.insert(volume.clone(), Watched { policy: Some(policy), last: Some(this) });
    Ok(())
}

/// Writes and marks that `volume` is skipped, unless its store says so
/// already: the controller's Event on the claim is posted once per volume,
/// not once per staging or node restart.
async fn report_skip(store: &dyn UsageStore, volume: &VolumeId, why: Skipped) -> Result<(), NodeError> {
    if store.usage(volume).await?.and_then(|usage| usage.skipped) == Some(why) {
        return Ok(());
    }
    store.write_usage(volume, &Usage::skipped(why, now_unix()), true).await
}

/// Whether reading `now` is written (`None`: not), and whether with the
/// mark: the first one, one `min_gap` after the last, and at once, marked,
/// one that crosses the threshold or is still across it after the
/// filesystem grew (a grow that was not enough). A volume that stays
/// across is marked once: the controller's answer (a grow, or its limit)
/// holds until the usage crosses anew.
fn due(before: Option<Reported>, now: Reported, min_gap: Duration) -> Option<bool> {
    let crossing = now.crossed && before.is_none_or(|b| !b.crossed || now.bytes_total != b.bytes_total);
    let gap_over = before.is_none_or(|b| now.at.duration_since(b.at) >= min_gap);
    (crossing || gap_over).then_some(crossing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_written_first_then_after_the_gap_or_at_once_on_crossing() {
        let gap = Duration::from_secs(30);
        let at = Instant::now();
        let reading = |after: Duration, crossed: bool, bytes_total: u64| Reported { at: at + after, crossed, bytes_total };
        let soon = Duration::from_secs(1);
        assert_eq!(due(None, reading(soon, false, 100), gap), Some(false), "first reading");
        assert_eq!(due(None, reading(soon, true, 100), gap), Some(true), "first reading, already across");
        let calm = Some(reading(Duration::ZERO, false, 100));
        assert_eq!(due(calm, reading(Duration::from_secs(29), false, 100), gap), None, "within the gap");
        assert_eq!(due(calm, reading(gap, false, 100), gap), Some(false), "after the gap");
        assert_eq!(due(calm, reading(soon, true, 100), gap), Some(true), "a crossing is written and marked at once");
        let crossed = Some(reading(Duration::ZERO, true, 100));
        assert_eq!(due(crossed, reading(soon, true, 100), gap), None, "still across: no storm of writes");
        assert_eq!(due(crossed, reading(gap, true, 100), gap), Some(false), "still across after the gap: written, not marked again");
        assert_eq!(due(crossed, reading(soon, true, 120), gap), Some(true), "grown but still across: written and marked at once");
        assert_eq!(pass_interval(gap), Duration::from_secs(5));
        assert_eq!(pass_interval(Duration::from_millis(300)), Duration::from_millis(100));
    }
}
