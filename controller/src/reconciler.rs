//! The reconciler: at start-up and then periodically, every expansion
//! record with work left (a grow short of its wish, or a size its volume's
//! clients were not told of) is compared with the backend's size read fresh
//! and finished. Settled records cost nothing per pass: every user call
//! reads the backend fresh anyway, so they are only checked by a slow sweep
//! that visits each once per `sweep_interval`, at most `sweep_reads_per_sec`
//! backend reads a second, without holding the volume unless something is
//! off. Work is bounded in concurrency, failed volumes back off
//! exponentially, and a volume behind for longer than `stuck_after` is
//! reported, with the reason, in the log (and counted in the metrics).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use swell_storage::expansion::{DEFAULT_STUCK_AFTER_SECS, now_unix};
use swell_storage::{ExpansionRecord, Records, VolumeId};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::expand::{Expander, Reconciled};
use crate::metrics::ReconcilerMetrics;
pub(crate) use crate::report::{PassReport, StuckExpansion};

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
    /// How often the slow sweep visits every settled record.
    pub sweep_interval: Duration,
    /// Backend reads the sweep may make per second.
    pub sweep_reads_per_sec: u32,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            interval: Duration::from_secs(10),
            max_concurrency: 4,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            stuck_after: Duration::from_secs(DEFAULT_STUCK_AFTER_SECS),
            sweep_interval: Duration::from_secs(3600),
            sweep_reads_per_sec: 20,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    not_before: Instant,
}

/// Where the sweep is: the last record it checked in each store, and when
/// the current round over every record began.
#[derive(Debug, Default)]
struct SweepCursor {
    after: HashMap<&'static str, Option<VolumeId>>,
    round_started: Option<Instant>,
    /// Stores whose records the current round has all visited.
    finished: Vec<&'static str>,
}

/// The reconciler over one expander.
#[derive(Clone)]
pub struct Reconciler {
    expander: Expander,
    config: ReconcilerConfig,
    backoff: Arc<Mutex<HashMap<VolumeId, Backoff>>>,
    sweep: Arc<Mutex<SweepCursor>>,
    last_report: Arc<Mutex<PassReport>>,
    /// Records a listing found but could not read, with why.
    unreadable: Arc<Mutex<BTreeMap<VolumeId, String>>>,
    metrics: ReconcilerMetrics,
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
        Reconciler {
            expander,
            config,
            backoff: Arc::default(),
            sweep: Arc::default(),
            last_report: Arc::default(),
            unreadable: Arc::default(),
            metrics: ReconcilerMetrics::default(),
        }
    }

    /// The metrics every pass updates.
    pub fn metrics(&self) -> &ReconcilerMetrics {
        &self.metrics
    }

    /// The report of the last finished pass.
    pub fn last_report(&self) -> PassReport {
        self.last_report.lock().clone()
    }

    /// Runs passes until `shutdown` resolves; the first pass runs at once so
    /// expansions interrupted by a crash are finished at start-up.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let mut report = self.pass().await;
            report.swept = self.sweep_step(self.config.interval).await;
            self.publish(report);
            self.collect_garbage().await;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    fn publish(&self, report: PassReport) {
        *self.last_report.lock() = report;
    }

    /// Lets every backend finish deletions it had to defer (RBD: images
    /// moved to the trash, purged once no client watches them).
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

    /// The records with work left, from every store; unreadable ones are
    /// noted, not worked on.
    async fn pending_records(&self) -> Vec<ExpansionRecord> {
        let mut records = Vec::new();
        for (kind, store) in self.expander.backends().stores() {
            match self.expander.backends().call("list pending expansions", kind, store.pending()).await {
                Ok(found) => {
                    self.note_listed(&found);
                    records.extend(found.readable);
                }
                Err(err) => tracing::error!(backend = kind, error = %err, "reconciler: cannot list pending expansions"),
            }
        }
        records
    }

    /// Keeps the records a listing could not read (each logged once, when
    /// first found) and forgets those it read.
    fn note_listed(&self, listed: &Records) {
        let mut unreadable = self.unreadable.lock();
        for record in &listed.readable {
            unreadable.remove(&record.volume_id);
        }
        for found in &listed.unreadable {
            if unreadable.insert(found.volume.clone(), found.reason.clone()).is_none() {
                tracing::warn!(volume.id = %found.volume, reason = %found.reason, "unreadable expansion record: it is neither finished nor dropped until an operator repairs or removes it");
            }
        }
    }

    /// One pass over the records with work left.
    pub async fn pass(&self) -> PassReport {
        let records = self.pending_records().await;
        let ids: Vec<VolumeId> = records.iter().map(|r| r.volume_id.clone()).collect();
        let mut report = PassReport { examined: records.len(), ..Default::default() };
        for outcome in self.work_on_all(ids).await {
            match outcome {
                Outcome::Completed => report.completed += 1,
                Outcome::Settled => report.settled += 1,
                Outcome::Failed => report.failed += 1,
                Outcome::Deferred => report.deferred += 1,
            }
        }
        let left = self.pending_records().await;
        report.pending = left.iter().filter(|r| r.growing()).count();
        report.announcements_owed = left.iter().filter(|r| r.announcement_owed()).count();
        let now = now_unix();
        report.oldest_pending = left.iter().filter_map(|r| r.waiting_for(now)).max();
        report.stuck = self.stuck(&left, now);
        report.unreadable = self.unreadable.lock().len();
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
        self.metrics.record(&report);
        self.publish(report.clone());
        report
    }

    async fn work_on_all(&self, ids: Vec<VolumeId>) -> Vec<Outcome> {
        let permits = Arc::new(Semaphore::new(self.config.max_concurrency.max(1)));
        let tasks: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let (this, permits) = (self.clone(), permits.clone());
                let span = tracing::info_span!("reconcile", volume.id = %id);
                tokio::spawn(
                    async move {
                        let _permit = permits.acquire_owned().await;
                        this.work_on(&id).await
                    }
                    .instrument(span),
                )
            })
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await.unwrap_or(Outcome::Failed));
        }
        outcomes
    }

    /// One step of the slow sweep over settled records: as many as the read
    /// budget allows in `period`, from where the last step stopped. Each is
    /// compared with the backend without holding it; only a record the
    /// backend disagrees with (a lost grow, a size nobody announced, a
    /// deleted volume) is reconciled. Returns how many were checked.
    pub async fn sweep_step(&self, period: Duration) -> usize {
        let budget = (u64::from(self.config.sweep_reads_per_sec) * period.as_secs().max(1)).min(10_000) as usize;
        {
            let mut cursor = self.sweep.lock();
            let stores = self.expander.backends().stores().len();
            if cursor.finished.len() >= stores {
                if cursor.round_started.is_some_and(|started| started.elapsed() < self.config.sweep_interval) {
                    return 0;
                }
                *cursor = SweepCursor::default();
            }
            cursor.round_started.get_or_insert_with(Instant::now);
        }
        let mut checked = 0;
        for (kind, store) in self.expander.backends().stores() {
            let after = {
                let cursor = self.sweep.lock();
                if cursor.finished.contains(&kind) {
                    continue;
                }
                cursor.after.get(kind).cloned().flatten()
            };
            let left = budget.saturating_sub(checked);
            if left == 0 {
                break;
            }
            let page = match self.expander.backends().call("list expansion records", kind, store.page(after.as_ref(), left)).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(backend = kind, error = %err, "sweep: cannot list expansion records");
                    continue;
                }
            };
            self.note_listed(&page);
            checked += page.unreadable.len();
            let mut off = Vec::new();
            for record in &page.readable {
                checked += 1;
                if self.disagrees(&record.volume_id, record).await {
                    off.push(record.volume_id.clone());
                }
            }
            if !off.is_empty() {
                tracing::info!(backend = kind, volumes = off.len(), "sweep: records the backend disagrees with; reconciling them");
                self.work_on_all(off).await;
            }
            let mut cursor = self.sweep.lock();
            if page.len() < left {
                cursor.finished.push(kind);
            }
            cursor.after.insert(kind, page.last().cloned());
        }
        checked
    }

    /// Whether the backend's size, read now, tells another story than `record`.
    async fn disagrees(&self, id: &VolumeId, record: &ExpansionRecord) -> bool {
        let backends = self.expander.backends();
        let Some(backend) = backends.for_volume(id) else { return false };
        match backends.call("sweep: read volume", &id.to_string(), backend.volume(id)).await {
            Ok(Some(info)) => info.size_bytes != record.current_bytes || record.pending() || record.last_error.is_some(),
            Ok(None) => true,
            Err(err) => {
                tracing::debug!(volume.id = %id, error = %err, "sweep: cannot read volume; checked again next round");
                false
            }
        }
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
        let backoff = self.backoff.lock();
        backoff.get(id).is_some_and(|b| Instant::now() < b.not_before)
    }

    fn clear_backoff(&self, id: &VolumeId) {
        self.backoff.lock().remove(id);
    }

    fn note_failure(&self, id: &VolumeId) -> Duration {
        let mut backoff = self.backoff.lock();
        let failures = backoff.get(id).map_or(0, |b| b.failures) + 1;
        let delay = backoff_delay(self.config.base_backoff, self.config.max_backoff, failures);
        backoff.insert(id.clone(), Backoff { failures, not_before: Instant::now() + delay });
        delay
    }

    /// The growing records that have waited too long.
    fn stuck(&self, pending: &[ExpansionRecord], now: u64) -> Vec<StuckExpansion> {
        pending
            .iter()
            .filter_map(|r| Some((r, r.waiting_for(now)?)))
            .map(|(r, pending_for)| StuckExpansion {
                pending_for,
                reason: r.last_error.clone().unwrap_or_else(|| "in progress".into()),
                volume_id: r.volume_id.clone(),
                desired_bytes: r.desired_bytes,
                current_bytes: r.current_bytes,
            })
            .filter(|s| s.pending_for >= self.config.stuck_after)
            .collect()
    }
}

/// `base * 2^(failures-1)`, capped.
pub(crate) fn backoff_delay(base: Duration, cap: Duration, failures: u32) -> Duration {
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
