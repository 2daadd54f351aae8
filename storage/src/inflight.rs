//! Work in flight in this process, by key, that another caller may wait for
//! (for a bounded time) instead of being refused at once: the reconciler's
//! attempt on a volume, which a user's call waits out; a lock being given
//! back, which the next holder waits out. The work is marked while a guard
//! lives; dropping the guard, also when its future is cancelled, wakes every
//! waiter.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The keys being worked on now.
#[derive(Debug)]
pub struct InFlight<K> {
    running: Mutex<HashMap<K, Arc<Notify>>>,
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        InFlight { running: Mutex::new(HashMap::new()) }
    }
}

/// Marks one key's work as running until dropped.
#[must_use = "the work counts as running only while this lives"]
pub struct Running<'a, K: Eq + Hash> {
    inflight: &'a InFlight<K>,
    key: K,
    done: Arc<Notify>,
}

impl<K: Eq + Hash + Clone> InFlight<K> {
    /// Marks `key` as being worked on until the guard drops.
    pub fn begin(&self, key: K) -> Running<'_, K> {
        let done = Arc::new(Notify::new());
        self.running.lock().insert(key.clone(), Arc::clone(&done));
        Running { inflight: self, key, done }
    }

    /// Waits, at most `limit`, for the work on `key` running now to end.
    /// Returns whether there was any (`false` at once when none runs).
    pub async fn wait(&self, key: &K, limit: Duration) -> bool {
        let Some(done) = self.running.lock().get(key).cloned() else { return false };
        let ended = done.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        // Ended between the look-up and `enable`: nothing to wait for.
        let still = self.running.lock().get(key).is_some_and(|d| Arc::ptr_eq(d, &done));
        if still {
            let _ = tokio::time::timeout(limit, ended).await;
        }
        true
    }
}

impl<K: Eq + Hash> Drop for Running<'_, K> {
    fn drop(&mut self) {
        let mut running = self.inflight.running.lock();
        if running.get(&self.key).is_some_and(|d| Arc::ptr_eq(d, &self.done)) {
            running.remove(&self.key);
        }
        drop(running);
        self.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_waiter_wakes_when_the_work_ends_and_nothing_running_is_not_waited_for() {
        let inflight: Arc<InFlight<&'static str>> = Arc::default();
        assert!(!inflight.wait(&"vol", Duration::from_secs(10)).await, "nothing runs");
        let worker = {
            let inflight = Arc::clone(&inflight);
            tokio::spawn(async move {
                let _running = inflight.begin("vol");
                tokio::time::sleep(Duration::from_millis(100)).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        assert!(inflight.wait(&"vol", Duration::from_secs(10)).await);
        assert!(started.elapsed() < Duration::from_secs(5), "woken when the work ended, not at the limit");
        worker.await.unwrap();
        assert!(!inflight.wait(&"vol", Duration::from_secs(10)).await, "the guard unmarked it");
    }

    #[tokio::test]
    async fn a_waiter_stops_at_its_limit_and_a_cancelled_worker_unmarks_its_key() {
        let inflight: Arc<InFlight<u8>> = Arc::default();
        let worker = {
            let inflight = Arc::clone(&inflight);
            tokio::spawn(async move {
                let _running = inflight.begin(1);
                std::future::pending::<()>().await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        assert!(inflight.wait(&1, Duration::from_millis(50)).await);
        assert!(started.elapsed() < Duration::from_secs(5));
        worker.abort();
        let _ = worker.await;
        assert!(!inflight.wait(&1, Duration::from_secs(10)).await);
    }
}
