//! What the reconciler's passes found, as Prometheus metrics: expansions
//! pending, stuck and owed an announcement, the oldest wish's age, and the
//! outcome of every attempt. Per-volume detail (which volume, why) stays out
//! of the labels: it is in the log line of each stuck volume and in
//! `swell volumes`. Per-RPC metrics are the endpoint's
//! (`csi_endpoint::rpc_metrics`), backend call latencies the backends'
//! (`crate::backends`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::report::PassReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The reconciler's metrics.
#[derive(Clone, Default)]
pub struct ReconcilerMetrics {
    pending: Gauge,
    stuck: Gauge,
    owed: Gauge,
    oldest_pending_seconds: Gauge,
    unreadable: Gauge,
    passes: Counter,
    attempts: Family<OutcomeLabels, Counter>,
}

impl ReconcilerMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("swell_expansions_pending", "Volumes whose backend is short of the size last asked for.", self.pending.clone());
        registry.register("swell_expansions_stuck", "Pending expansions older than --stuck-after-secs.", self.stuck.clone());
        registry.register("swell_announcements_owed", "Volumes whose grown size their clients still have to be told.", self.owed.clone());
        registry.register(
            "swell_expansion_oldest_pending_seconds",
            "How long the oldest pending expansion has waited (0: none pending).",
            self.oldest_pending_seconds.clone(),
        );
        registry.register(
            "swell_expansion_records_unreadable",
            "Expansion records found that cannot be read: neither finished nor dropped until an operator looks.",
            self.unreadable.clone(),
        );
        registry.register("swell_reconciler_passes", "Reconciler passes over the pending records.", self.passes.clone());
        registry.register(
            "swell_reconciler_attempts",
            "Volumes the reconciler worked on, by outcome (completed, settled, failed, deferred).",
            self.attempts.clone(),
        );
    }

    /// Counts a finished pass and shows what it left.
    pub fn record(&self, report: &PassReport) {
        self.passes.inc();
        for (outcome, count) in [("completed", report.completed), ("settled", report.settled), ("failed", report.failed), ("deferred", report.deferred)] {
            self.attempts.get_or_create(&OutcomeLabels { outcome }).inc_by(count as u64);
        }
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.pending.set(gauge(report.pending));
        self.stuck.set(gauge(report.stuck.len()));
        self.owed.set(gauge(report.announcements_owed));
        self.unreadable.set(gauge(report.unreadable));
        self.oldest_pending_seconds.set(report.oldest_pending.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::StuckExpansion;

    #[test]
    fn a_pass_shows_as_counts_without_volume_labels() {
        let metrics = ReconcilerMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let stuck = StuckExpansion {
            volume_id: "local:ab".parse().unwrap(),
            desired_bytes: 2,
            current_bytes: 1,
            pending_for: Duration::from_secs(700),
            reason: "backend unavailable: \"osd down\"".into(),
        };
        let report = PassReport {
            completed: 1,
            failed: 2,
            pending: 2,
            oldest_pending: Some(Duration::from_secs(700)),
            stuck: vec![stuck],
            unreadable: 1,
            ..Default::default()
        };
        metrics.record(&report);
        metrics.record(&PassReport { failed: 1, ..report });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "swell_expansions_pending 2",
            "swell_expansions_stuck 1",
            "swell_expansion_oldest_pending_seconds 700",
            "swell_expansion_records_unreadable 1",
            "swell_reconciler_passes_total 2",
            r#"swell_reconciler_attempts_total{outcome="completed"} 2"#,
            r#"swell_reconciler_attempts_total{outcome="failed"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("local:ab") && !text.contains("osd down"), "no volume ids or reasons as labels:\n{text}");
    }
}
