//! The reconciler: at start-up and then periodically, every expansion record
//! is compared with the backend's size read fresh, and any volume behind its
//! desired size is grown (or its record settled). Work is bounded in
//! concurrency, failed volumes back off exponentially, and a volume behind
//! for longer than `stuck_after` is reported, with the reason, in the log and
//! in the metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use swell_storage::VolumeId;
use tokio::sync::Semaphore;

use crate::expand::{Expander, Reconciled};

/// How the reconciler paces itself.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Time between passes.
    pub interval: Duration,
    /// Volumes worked on at once.
    pub max_concurrency: usize,
    /// First retry delay after a failure; doubles per failure.
    pub base_backoff: Duration,
    /// Cap on the retry delay.
    pub max_backoff: Duration,
    /// A volume behind its desired size for longer than this is stuck.
    pub stuck_after: Duration,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            interval: Duration::from_secs(10),
            max_concurrency: 4,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            stuck_after: Duration::from_secs(600),
        }
    }
}

/// A volume whose expansion has been pending too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckExpansion {
    /// The volume.
    pub volume_id: String,
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
    /// Records examined.
    pub examined: usize,
    /// Volumes grown to their desired size.
    pub completed: usize,
    /// Records found already satisfied.
    pub settled: usize,
    /// Volumes whose attempt failed (they back off).
    pub failed: usize,
    /// Volumes skipped: busy, or still backing off.
    pub deferred: usize,
    /// Records still short of their desired size after the pass.
    pub pending: usize,
    /// Volumes pending for longer than `stuck_after`.
    pub stuck: Vec<StuckExpansion>,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    not_before: Instant,
}

/// The reconciler over one expander.
#[derive(Clone)]
pub struct Reconciler {
    expander: Expander,
    config: ReconcilerConfig,
    backoff: Arc<Mutex<HashMap<VolumeId, Backoff>>>,
    last_report: Arc<Mutex<PassReport>>,
}

enum Outcome {
    Completed,
    Settled,
    Failed,
    Deferred,
}

impl Reconciler {
    /// A reconciler working through `expander`.
    pub fn new(expander: Expander, config: ReconcilerConfig) -> Self {
        Reconciler { expander, config, backoff: Arc::default(), last_report: Arc::default() }
    }

    /// The report of the last finished pass (for metrics).
    pub fn last_report(&self) -> PassReport {
        self.last_report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs passes until `shutdown` resolves; the first pass runs at once so
    /// expansions interrupted by a crash are finished at start-up.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            self.pass().await;
            self.collect_garbage().await;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    /// Lets every backend finish deletions it had to defer (RBD: images
    /// moved to the trash while Ceph still listed watchers).
    pub async fn collect_garbage(&self) {
        let backends = self.expander.backends();
        for backend in backends.all() {
            match backends.call("collect garbage", backend.kind(), backend.collect_garbage()).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(backend = backend.kind(), removed, "finished deferred deletions"),
                Err(err) => tracing::warn!(backend = backend.kind(), error = %err, "cannot finish deferred deletions; retrying on the next pass"),
            }
        }
    }

    /// One pass over every record.
    pub async fn pass(&self) -> PassReport {
        let records = match self.expander.records().list() {
            Ok(records) => records,
            Err(err) => {
                tracing::error!(error = %err, "reconciler: cannot list expansion records");
                return PassReport::default();
            }
        };
        let permits = Arc::new(Semaphore::new(self.config.max_concurrency.max(1)));
        let mut tasks = Vec::new();
        for record in &records {
            let Ok(id) = record.volume_id.parse::<VolumeId>() else { continue };
            let this = self.clone();
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                this.work_on(&id).await
            }));
        }
        let mut report = PassReport { examined: records.len(), ..Default::default() };
        for task in tasks {
            match task.await {
                Ok(Outcome::Completed) => report.completed += 1,
                Ok(Outcome::Settled) => report.settled += 1,
                Ok(Outcome::Failed) | Err(_) => report.failed += 1,
                Ok(Outcome::Deferred) => report.deferred += 1,
            }
        }
        let (pending, stuck) = self.pending_now();
        report.pending = pending;
        report.stuck = stuck;
        for stuck in &report.stuck {
            tracing::warn!(
                volume.id = %stuck.volume_id,
                desired = stuck.desired_bytes,
                current = stuck.current_bytes,
                pending_secs = stuck.pending_for.as_secs(),
                reason = %stuck.reason,
                "expansion stuck"
            );
        }
        *self.last_report.lock().unwrap_or_else(|p| p.into_inner()) = report.clone();
        report
    }

    async fn work_on(&self, id: &VolumeId) -> Outcome {
        if self.backing_off(id) {
            return Outcome::Deferred;
        }
        match self.expander.reconcile(id).await {
            Ok(Reconciled::Completed { from, to }) => {
                tracing::info!(volume.id = %id, from, to, "reconciler completed an interrupted expansion");
                self.clear_backoff(id);
                Outcome::Completed
            }
            Ok(Reconciled::Settled { .. } | Reconciled::Gone) => {
                self.clear_backoff(id);
                Outcome::Settled
            }
            Ok(Reconciled::Busy) => Outcome::Deferred,
            Err(err) => {
                let delay = self.note_failure(id);
                tracing::warn!(volume.id = %id, error = %err, retry_in_secs = delay.as_secs_f64(), "reconciler attempt failed");
                Outcome::Failed
            }
        }
    }

    fn backing_off(&self, id: &VolumeId) -> bool {
        let backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        backoff.get(id).is_some_and(|b| Instant::now() < b.not_before)
    }

    fn clear_backoff(&self, id: &VolumeId) {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    fn note_failure(&self, id: &VolumeId) -> Duration {
        let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let failures = backoff.get(id).map_or(0, |b| b.failures) + 1;
        let delay = backoff_delay(self.config.base_backoff, self.config.max_backoff, failures);
        backoff.insert(id.clone(), Backoff { failures, not_before: Instant::now() + delay });
        delay
    }

    /// How many records are short of their wish, and which of them for too long.
    fn pending_now(&self) -> (usize, Vec<StuckExpansion>) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let pending: Vec<_> = self.expander.records().list().unwrap_or_default().into_iter().filter(|r| r.pending()).collect();
        let count = pending.len();
        let stuck = pending
            .into_iter()
            .map(|r| StuckExpansion {
                pending_for: Duration::from_secs(now.saturating_sub(r.desired_since_unix)),
                reason: r.last_error.clone().unwrap_or_else(|| "in progress".into()),
                volume_id: r.volume_id,
                desired_bytes: r.desired_bytes,
                current_bytes: r.current_bytes,
            })
            .filter(|s| s.pending_for >= self.config.stuck_after)
            .collect();
        (count, stuck)
    }
}

/// `base * 2^(failures-1)`, capped.
pub fn backoff_delay(base: Duration, cap: Duration, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(300));
        let delays: Vec<_> = (1..=4).map(|f| backoff_delay(base, cap, f).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(backoff_delay(base, cap, 40), cap);
    }
}
