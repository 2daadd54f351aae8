//! The backends this controller serves, keyed by the id prefix each owns, and
//! the deadline every backend call runs under: a hung engine turns into
//! DEADLINE_EXCEEDED for the caller instead of a hung RPC holding a lock.
//! Every call is timed, by operation and outcome, for the metrics.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use swell_storage::{Backend, BackendError, VolumeId};

use crate::error::ControllerError;

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
    pub fn for_new_volume(&self, kind: Option<&str>) -> Result<&Arc<dyn Backend>, ControllerError> {
        let kind = kind.unwrap_or(self.default_kind);
        self.by_kind.get(kind).ok_or_else(|| {
            let known: Vec<_> = self.by_kind.keys().copied().collect();
            ControllerError::invalid("parameters.backend", format!("{kind:?} is not configured (configured: {})", known.join(", ")))
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

    /// All backends, default first is not guaranteed; ordered by kind.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.by_kind.values()
    }

    /// Runs one backend call under the deadline, naming the step and volume
    /// in any error.
    pub async fn call<T>(&self, step: &'static str, volume: &str, work: impl Future<Output = Result<T, BackendError>>) -> Result<T, ControllerError> {
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
        tracing::warn!(volume, step, error = %source, "backend call failed");
        Err(ControllerError::Backend { volume: volume.to_owned(), step, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_storage::local::LocalBackend;

    #[tokio::test]
    async fn a_hung_backend_call_becomes_a_deadline_error() {
        let dir = tempfile::tempdir().unwrap();
        let backends = Backends::new(Arc::new(LocalBackend::open(dir.path(), None).unwrap()), Duration::from_millis(50));
        let hung = std::future::pending::<Result<(), BackendError>>();
        let err = backends.call("resize", "local:aa", hung).await.unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::DeadlineExceeded);
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
        let backends = Backends::new(Arc::new(LocalBackend::open(dir.path(), None).unwrap()), Duration::from_secs(1));
        assert!(backends.for_new_volume(None).is_ok());
        let err = backends.for_new_volume(Some("zfs")).err().unwrap();
        assert!(err.to_string().contains("zfs") && err.to_string().contains("local"), "{err}");
        assert!(backends.for_volume(&"rbd:x".parse().unwrap()).is_none());
    }
}
