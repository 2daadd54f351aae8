//! A keyed set of non-blocking locks, one key per volume (or per name during
//! creation). A second operation on a busy key fails at once instead of
//! queueing behind a call that may hang; the caller answers ABORTED and the
//! sidecar retries. Keys of different volumes never contend.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

/// The set of keys currently held.
#[derive(Debug, Default, Clone)]
pub struct KeyedLocks {
    held: Arc<Mutex<HashSet<String>>>,
}

/// Proof that a key is held; dropping it releases the key, also on panic or
/// when the future holding it is cancelled.
#[derive(Debug)]
pub struct KeyGuard {
    held: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl KeyedLocks {
    /// An empty lock set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `key` if nobody holds it.
    pub fn try_acquire(&self, key: &str) -> Option<KeyGuard> {
        let mut held = self.held.lock();
        held.insert(key.to_owned()).then(|| KeyGuard { held: self.held.clone(), key: key.to_owned() })
    }

    /// Whether `key` is currently held.
    pub fn is_held(&self, key: &str) -> bool {
        self.held.lock().contains(key)
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        held.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_key_refuses_a_second_holder_until_released() {
        let locks = KeyedLocks::new();
        let guard = locks.try_acquire("vol-a").expect("first acquire");
        assert!(locks.try_acquire("vol-a").is_none());
        assert!(locks.try_acquire("vol-b").is_some(), "other keys are independent");
        drop(guard);
        assert!(locks.try_acquire("vol-a").is_some());
    }

    #[tokio::test]
    async fn a_cancelled_operation_releases_its_key() {
        let locks = KeyedLocks::new();
        let inner = locks.clone();
        let task = tokio::spawn(async move {
            let _guard = inner.try_acquire("vol").unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(locks.is_held("vol"));
        task.abort();
        let _ = task.await;
        assert!(!locks.is_held("vol"));
    }
}
