//! The backends this controller serves, keyed by the id prefix each owns, and
//! the deadline every backend call runs under: a hung engine turns into
//! DEADLINE_EXCEEDED for the caller instead of a hung RPC holding a lock.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swell_storage::{Backend, BackendError, VolumeId};

use crate::error::ControllerError;

/// The configured backends and the default one for new volumes.
#[derive(Clone)]
pub struct Backends {
    by_kind: BTreeMap<&'static str, Arc<dyn Backend>>,
    default_kind: &'static str,
    deadline: Duration,
    calls: Arc<Mutex<BTreeMap<&'static str, CallStats>>>,
}

/// What the backend calls of one step cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CallStats {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed (or hit the deadline).
    pub failures: u64,
    /// Time spent in them, in seconds.
    pub seconds: f64,
}

impl Backends {
    /// A registry whose first backend is the default for new volumes.
    pub fn new(first: Arc<dyn Backend>, deadline: Duration) -> Self {
        let default_kind = first.kind();
        Backends { by_kind: BTreeMap::from([(default_kind, first)]), default_kind, deadline, calls: Arc::default() }
    }

    /// The deadline of one backend call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Backend calls made so far, by step.
    pub fn call_stats(&self) -> BTreeMap<&'static str, CallStats> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self, step: &'static str, took: Duration, failed: bool) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let stats = calls.entry(step).or_default();
        stats.calls += 1;
        stats.failures += u64::from(failed);
        stats.seconds += took.as_secs_f64();
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
        self.count(step, started.elapsed(), !matches!(outcome, Ok(Ok(_))));
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
        let stats = backends.call_stats()["resize"];
        assert_eq!((stats.calls, stats.failures), (2, 1), "{stats:?}");
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
