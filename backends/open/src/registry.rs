//! The backends a process serves, keyed by the id prefix each owns, and the
//! deadline every backend call runs under: a hung engine turns into a
//! Timeout for the caller instead of a hung RPC holding a lock. Every call is
//! timed, by operation and outcome, for the metrics.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use swell_storage::{Backend, BackendError, ExpansionRecord, ExpansionStore, VolumeId};

/// The configured backends and the default one for new volumes.
#[derive(Clone)]
pub struct Backends {
    by_kind: BTreeMap<&'static str, Arc<dyn Backend>>,
    default_kind: &'static str,
    deadline: Duration,
    calls: Family<CallLabels, Histogram, fn() -> Histogram>,
}

/// A backend call's operation (the step its errors name: a fixed set in the
/// code) and how it ended: `ok`, `error` or `timeout`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: &'static str,
    outcome: &'static str,
}

/// A backend call that failed: the step and the volume (id, or name before
/// it has one) it was about, and the backend's error.
#[derive(Debug, thiserror::Error)]
#[error("{step} {volume}: {source}")]
pub struct CallError {
    /// Volume id or name.
    pub volume: String,
    /// What the caller was doing.
    pub step: &'static str,
    /// The backend's error.
    pub source: BackendError,
}

/// A StorageClass named a backend this process does not serve.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} is not configured (configured: {known})")]
pub struct UnknownBackend {
    /// The backend asked for.
    pub kind: String,
    /// The ones configured, comma-separated.
    pub known: String,
}

impl Backends {
    /// A registry whose first backend is the default for new volumes.
    pub fn new(first: Arc<dyn Backend>, deadline: Duration) -> Self {
        let default_kind = first.kind();
        let calls = Family::new_with_constructor(csi_endpoint::rpc_metrics::latency_histogram as fn() -> Histogram);
        Backends { by_kind: BTreeMap::from([(default_kind, first)]), default_kind, deadline, calls }
    }

    /// The deadline of one backend call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Registers `swell_backend_call_duration_seconds` in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register("swell_backend_call_duration_seconds", "Backend calls, by operation and outcome (ok, error, timeout).", self.calls.clone());
    }

    /// Adds another backend.
    pub fn with(mut self, backend: Arc<dyn Backend>) -> Self {
        self.by_kind.insert(backend.kind(), backend);
        self
    }

    /// The backend named by a StorageClass `backend` parameter, or the default.
    pub fn for_new_volume(&self, kind: Option<&str>) -> Result<&Arc<dyn Backend>, UnknownBackend> {
        let kind = kind.unwrap_or(self.default_kind);
        self.by_kind.get(kind).ok_or_else(|| {
            let known: Vec<_> = self.by_kind.keys().copied().collect();
            UnknownBackend { kind: kind.to_owned(), known: known.join(", ") }
        })
    }

    /// The backend owning an existing volume; `None` for ids of no backend here.
    pub fn for_volume(&self, id: &VolumeId) -> Option<&Arc<dyn Backend>> {
        self.by_kind.get(id.backend())
    }

    /// The backend of kind `kind` (the prefix of the ids it owns), if configured.
    pub fn for_backend(&self, kind: &str) -> Option<&Arc<dyn Backend>> {
        self.by_kind.get(kind)
    }

    /// All backends, ordered by kind.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.by_kind.values()
    }

    /// Each backend's kind and the store of its expansion records.
    pub fn stores(&self) -> Vec<(&'static str, Arc<dyn ExpansionStore>)> {
        self.by_kind.values().map(|backend| (backend.kind(), backend.expansion_store())).collect()
    }

    /// The expansion record of `id`, read now; `None` for a volume of no
    /// backend here.
    pub async fn record(&self, id: &VolumeId) -> Result<Option<ExpansionRecord>, CallError> {
        let Some(backend) = self.for_volume(id) else { return Ok(None) };
        self.call("read expansion record", &id.to_string(), backend.expansion_store().record(id)).await
    }

    /// Runs one backend call under the deadline, naming the step and volume
    /// in any error.
    pub async fn call<T>(&self, step: &'static str, volume: &str, work: impl Future<Output = Result<T, BackendError>>) -> Result<T, CallError> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.deadline, work).await;
        let ended = match outcome {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        self.calls.get_or_create(&CallLabels { operation: step, outcome: ended }).observe(started.elapsed().as_secs_f64());
        let source = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(source)) => source,
            Err(_) => BackendError::Timeout { step: step.to_owned(), after: self.deadline },
        };
        // Logged once, by whoever handles it (the RPC's answer, the reconciler).
        Err(CallError { volume: volume.to_owned(), step, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_local::{LocalBackend, LocalConfig};

    fn local(dir: &std::path::Path) -> Arc<dyn Backend> {
        Arc::new(LocalBackend::open(&LocalConfig { state_dir: dir.join("local"), records_dir: dir.join("controller"), capacity_bytes: None }).unwrap())
    }

    #[tokio::test]
    async fn a_hung_backend_call_becomes_a_deadline_error() {
        let dir = tempfile::tempdir().unwrap();
        let backends = Backends::new(local(dir.path()), Duration::from_millis(50));
        let hung = std::future::pending::<Result<(), BackendError>>();
        let err = backends.call("resize", "local:aa", hung).await.unwrap_err();
        assert!(matches!(err.source, BackendError::Timeout { .. }), "{err}");
        backends.call("resize", "local:aa", async { Ok(()) }).await.unwrap();
        let mut registry = Registry::default();
        backends.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for outcome in ["ok", "timeout"] {
            let series = format!(r#"swell_backend_call_duration_seconds_count{{operation="resize",outcome="{outcome}"}} 1"#);
            assert!(text.contains(&series), "{series} in\n{text}");
        }
    }

    #[test]
    fn unknown_backends_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let backends = Backends::new(local(dir.path()), Duration::from_secs(1));
        assert!(backends.for_new_volume(None).is_ok());
        let err = backends.for_new_volume(Some("zfs")).err().unwrap();
        assert!(err.to_string().contains("zfs") && err.to_string().contains("local"), "{err}");
        assert!(backends.for_volume(&"rbd:x".parse().unwrap()).is_none());
    }
}
