//! Readings shared by concurrent callers: at most one reading per key runs
//! at a time, and a caller takes a reading that started no earlier than it
//! asks (`not_before`), or waits for the next one, which the first caller
//! waiting runs ([`swell_storage::batches`]). Callers that need a reading
//! newer than their own request pass the time they arrived; callers content
//! with one a second old pass a second ago, and then 64 admissions arriving
//! together cost one reading of the pool, not 64.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use swell_storage::batches::Batches;

type Shared<T, E> = Result<Arc<T>, Arc<E>>;
/// A finished reading and when it started.
type Reading<T, E> = (Instant, Shared<T, E>);

/// Readings per key.
pub(crate) struct Coalescer<T, E> {
    /// Callers waiting for a reading, served by the first of them.
    batches: Batches<Instant, Shared<T, E>>,
    /// The newest finished reading of each key and when it started.
    last: Mutex<HashMap<String, Reading<T, E>>>,
}

/// Why a caller got no reading.
pub(crate) enum Missed<E> {
    /// The reading failed (each caller gets its own copy of the error).
    Failed(E),
    /// `deadline` passed while waiting for another caller's reading.
    Deadline,
}

impl<T, E> Default for Coalescer<T, E> {
    fn default() -> Self {
        Coalescer { batches: Batches::default(), last: Mutex::new(HashMap::new()) }
    }
}

impl<T, E> Coalescer<T, E> {
    /// A reading of `key` that started at or after `not_before`: the last
    /// one, or the next one, run by the first caller waiting for it
    /// ([`Batches`]). A failed reading is shared only with the callers that
    /// waited for it. `copy` duplicates a failure for each caller.
    pub(crate) fn read(
        &self,
        key: &str,
        not_before: Instant,
        deadline: Instant,
        read: impl Fn() -> Result<T, E>,
        copy: impl Fn(&E) -> E,
    ) -> Result<Arc<T>, Missed<E>> {
        let own = |shared: &Shared<T, E>| shared.as_ref().map(Arc::clone).map_err(|e| Missed::Failed(copy(e)));
        if let Some(reading) = self.recent(key, not_before) {
            return Ok(reading);
        }
        let answer = self.batches.submit(key, not_before, deadline, |waiting| {
            // One reading that started after every waiter's bound serves them all.
            let bound = waiting.iter().map(|not_before| **not_before).max().unwrap_or(not_before);
            let reading = match self.recent(key, bound) {
                Some(reading) => Ok(reading),
                None => {
                    let started = Instant::now();
                    let reading = read().map(Arc::new).map_err(Arc::new);
                    self.last.lock().insert(key.to_owned(), (started, reading.clone()));
                    reading
                }
            };
            vec![reading; waiting.len()]
        });
        match answer {
            Ok(shared) => own(&shared),
            Err(_) => Err(Missed::Deadline),
        }
    }

    /// The last reading of `key` if it started at or after `not_before` and
    /// succeeded.
    fn recent(&self, key: &str, not_before: Instant) -> Option<Arc<T>> {
        match self.last.lock().get(key) {
            Some((started, Ok(reading))) if *started >= not_before => Some(Arc::clone(reading)),
            _ => None,
        }
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
