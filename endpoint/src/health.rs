//! A health check answered from a result at most `max_age` old: `/healthz`
//! listens on the pod's address, and a pod polling it fast must not turn
//! each poll into a backend call. Concurrent callers share the one check in
//! flight; a check that fails is cached like one that passes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{NotReady, Probe};

/// How old a cached health result may be.
pub const HEALTH_MAX_AGE: Duration = Duration::from_secs(1);

/// A finished check: when, and the part and reason of a failure.
type Checked = (Instant, Result<(), (String, String)>);

/// `inner`, run at most once per `max_age`.
pub struct CachedProbe {
    inner: Arc<dyn Probe>,
    max_age: Duration,
    /// The last check. Held across a check so that callers queue behind
    /// it; every check is bounded by the backends' call deadline.
    last: Mutex<Option<Checked>>,
}

impl CachedProbe {
    /// Caches `inner`'s result for `max_age`.
    pub fn new(inner: Arc<dyn Probe>, max_age: Duration) -> Self {
        CachedProbe { inner, max_age, last: Mutex::new(None) }
    }
}

#[async_trait::async_trait]
impl Probe for CachedProbe {
    async fn check(&self) -> Result<(), NotReady> {
        let mut last = self.last.lock().await;
        let result = match &*last {
            Some((at, result)) if at.elapsed() < self.max_age => result.clone(),
            _ => {
                let result = self.inner.check().await.map_err(|e| (e.part, e.source.to_string()));
                *last = Some((Instant::now(), result.clone()));
                result
            }
        };
        result.map_err(|(part, reason)| NotReady::new(part, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counting {
        calls: AtomicUsize,
        down: AtomicBool,
    }

    #[async_trait::async_trait]
    impl Probe for Counting {
        async fn check(&self) -> Result<(), NotReady> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.down.load(Ordering::SeqCst) { Err(NotReady::new("backend rbd", "monitors slow")) } else { Ok(()) }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fast_poller_costs_one_check_per_second_and_sees_a_change_within_one() {
        let inner = Arc::new(Counting::default());
        let probe = Arc::new(CachedProbe::new(inner.clone(), HEALTH_MAX_AGE));
        let started = Instant::now();
        // 200 polls at once, then 800 more as fast as they come, for 0.5 s.
        let polls: Vec<_> = (0..200)
            .map(|_| {
                let probe = Arc::clone(&probe);
                tokio::spawn(async move { probe.check().await })
            })
            .collect();
        for poll in polls {
            poll.await.unwrap().unwrap();
        }
        for _ in 0..800 {
            probe.check().await.unwrap();
        }
        assert!(started.elapsed() < HEALTH_MAX_AGE, "the polls took {:?}", started.elapsed());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1, "1000 polls within a second ran the check once");
        // A backend that went down is reported within the cache's age.
        inner.down.store(true, Ordering::SeqCst);
        let went_down = Instant::now();
        while probe.check().await.is_ok() {
            assert!(went_down.elapsed() <= HEALTH_MAX_AGE + Duration::from_millis(200), "a failure was hidden for {:?}", went_down.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let failed = probe.check().await.unwrap_err();
        assert_eq!(failed.to_string(), "backend rbd: monitors slow");
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }
}
