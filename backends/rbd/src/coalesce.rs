//! Readings shared by concurrent callers: at most one reading per key runs
//! at a time, and a caller takes a reading that started no earlier than it
//! asks (`not_before`), or starts one itself. Callers that need a reading
//! newer than their own request pass the time they arrived; callers content
//! with one a second old pass a second ago, and then 64 admissions arriving
//! together cost one reading of the pool, not 64.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Readings per key.
pub struct Coalescer<T, E> {
    state: Mutex<HashMap<String, Slot<T, E>>>,
    changed: Condvar,
}

type Shared<T, E> = Result<Arc<T>, Arc<E>>;

struct Slot<T, E> {
    /// Whether a reading is running now.
    running: bool,
    /// The newest finished reading and when it started.
    last: Option<(Instant, Shared<T, E>)>,
}

impl<T, E> Default for Slot<T, E> {
    fn default() -> Self {
        Slot { running: false, last: None }
    }
}

/// Why a caller got no reading.
pub enum Missed<E> {
    /// The reading failed (each caller gets its own copy of the error).
    Failed(E),
    /// `deadline` passed while waiting for another caller's reading.
    Deadline,
}

impl<T, E> Default for Coalescer<T, E> {
    fn default() -> Self {
        Coalescer { state: Mutex::new(HashMap::new()), changed: Condvar::new() }
    }
}

impl<T, E> Coalescer<T, E> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot<T, E>>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reading of `key` that started at or after `not_before`: the last
    /// one, another caller's running now, or `read()` run here. A failed
    /// reading is shared only with the callers that waited for it. `copy`
    /// duplicates a failure for each caller.
    pub fn read(
        &self,
        key: &str,
        not_before: Instant,
        deadline: Instant,
        read: impl FnOnce() -> Result<T, E>,
        copy: impl Fn(&E) -> E,
    ) -> Result<Arc<T>, Missed<E>> {
        let own = |shared: &Shared<T, E>| shared.as_ref().map(Arc::clone).map_err(|e| Missed::Failed(copy(e)));
        let arrived = Instant::now();
        let mut state = self.lock();
        loop {
            let slot = state.entry(key.to_owned()).or_default();
            if let Some((started, shared)) = &slot.last
                && *started >= not_before
                && (shared.is_ok() || *started >= arrived)
            {
                return own(shared);
            }
            if !slot.running {
                slot.running = true;
                drop(state);
                let mut done = Done { coalescer: self, key, started: Instant::now(), result: None };
                let result = read().map(Arc::new).map_err(Arc::new);
                let mine = own(&result);
                done.result = Some(result);
                return mine;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Missed::Deadline);
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Ends a reading (also if `read` panicked): publishes its result and wakes
/// the callers waiting for it.
struct Done<'a, T, E> {
    coalescer: &'a Coalescer<T, E>,
    key: &'a str,
    started: Instant,
    result: Option<Shared<T, E>>,
}

impl<T, E> Drop for Done<'_, T, E> {
    fn drop(&mut self) {
        let mut state = self.coalescer.lock();
        let slot = state.entry(self.key.to_owned()).or_default();
        slot.running = false;
        if let Some(result) = self.result.take() {
            slot.last = Some((self.started, result));
        }
        self.coalescer.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[test]
    fn a_caller_asking_for_a_fresh_reading_never_gets_an_older_one() {
        let c: Coalescer<u32, String> = Coalescer::default();
        let reads = AtomicUsize::new(0);
        for i in 0..3 {
            let got = c.read("rbd", Instant::now(), far(), || Ok(reads.fetch_add(1, Ordering::SeqCst) as u32), String::clone);
            assert_eq!(got.ok().map(|v| *v), Some(i), "never a reading older than the request");
        }
        assert!(matches!(c.read("rbd", Instant::now(), far(), || Err("boom".to_owned()), String::clone), Err(Missed::Failed(e)) if e == "boom"));
    }

    #[test]
    fn a_recent_enough_reading_is_reused_and_a_failure_is_not() {
        let c: Coalescer<u32, String> = Coalescer::default();
        let reads = AtomicUsize::new(0);
        let read = || Ok(reads.fetch_add(1, Ordering::SeqCst) as u32);
        let a_minute_ago = Instant::now() - Duration::from_secs(60);
        assert_eq!(c.read("rbd", a_minute_ago, far(), read, String::clone).ok().map(|v| *v), Some(0));
        assert_eq!(c.read("rbd", a_minute_ago, far(), || Ok(99), String::clone).ok().map(|v| *v), Some(0), "reused");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert!(c.read("rbd", Instant::now(), far(), || Err("down".to_owned()), String::clone).is_err());
        let again = c.read("rbd", a_minute_ago, far(), || Ok(7), String::clone);
        assert_eq!(again.ok().map(|v| *v), Some(7), "a failed reading is read again, not handed to later callers");
    }

    #[test]
    fn callers_arriving_during_a_reading_share_the_next_one() {
        let c: Arc<Coalescer<usize, String>> = Arc::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..32)
            .map(|_| {
                let (c, reads) = (Arc::clone(&c), Arc::clone(&reads));
                std::thread::spawn(move || {
                    let arrived = reads.load(Ordering::SeqCst);
                    let read = || {
                        std::thread::sleep(Duration::from_millis(30));
                        Ok(reads.fetch_add(1, Ordering::SeqCst) + 1)
                    };
                    let value = *c.read("rbd", Instant::now(), far(), read, String::clone).ok().expect("a reading");
                    assert!(value > arrived, "a reading that started after the caller arrived");
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        let n = reads.load(Ordering::SeqCst);
        assert!((1..32).contains(&n), "32 callers shared {n} readings");
    }

    #[test]
    fn a_caller_stops_waiting_at_its_deadline() {
        let c: Arc<Coalescer<u8, String>> = Arc::default();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let slow = {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                let read = || {
                    started_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_secs(3));
                    Ok(1)
                };
                c.read("rbd", Instant::now(), far(), read, String::clone).is_ok()
            })
        };
        started_rx.recv().unwrap();
        let asked = Instant::now();
        let got = c.read("rbd", Instant::now(), asked + Duration::from_millis(100), || Ok(2), String::clone);
        assert!(matches!(got, Err(Missed::Deadline)));
        assert!(asked.elapsed() < Duration::from_secs(2), "left at its deadline, not when the slow reading ended");
        assert!(slow.join().unwrap());
    }
}
