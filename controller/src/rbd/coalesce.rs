//! Fresh readings shared by concurrent callers: at most one reading per key
//! runs at a time, and a caller takes the result of a reading that *started
//! after it arrived*, or starts one itself. Nothing is cached: a caller
//! never sees a reading older than its own request, but 64 admissions
//! arriving together cost two or three readings of the pool, not 64.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Readings per key (a pool name).
pub struct Coalescer<T, E> {
    state: Mutex<HashMap<String, Slot<T, E>>>,
    changed: Condvar,
}

type Shared<T, E> = Result<Arc<T>, Arc<E>>;

struct Slot<T, E> {
    /// Orders arrivals and reading starts.
    clock: u64,
    /// Whether a reading is running now.
    running: bool,
    /// The newest finished reading and when it started, kept only while
    /// some caller waits for it.
    last: Option<(u64, Shared<T, E>)>,
    waiting: usize,
}

impl<T, E> Default for Slot<T, E> {
    fn default() -> Self {
        Slot { clock: 0, running: false, last: None, waiting: 0 }
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

    /// A reading of `key` that started after this call: another caller's, or
    /// `read()` run here. `copy` duplicates a failure for each caller.
    pub fn read(&self, key: &str, deadline: Instant, read: impl FnOnce() -> Result<T, E>, copy: impl Fn(&E) -> E) -> Result<Arc<T>, Missed<E>> {
        let own = |shared: &Shared<T, E>| shared.as_ref().map(Arc::clone).map_err(|e| Missed::Failed(copy(e)));
        let mut state = self.lock();
        let slot = state.entry(key.to_owned()).or_default();
        let arrived = slot.clock;
        slot.clock += 1;
        // Whether this caller is counted in `waiting`.
        let mut counted = false;
        let result = loop {
            let slot = state.entry(key.to_owned()).or_default();
            if let Some((started, shared)) = &slot.last
                && *started > arrived
            {
                break own(shared);
            }
            if !slot.running {
                let started = slot.clock;
                slot.clock += 1;
                slot.running = true;
                if counted {
                    slot.leave();
                }
                drop(state);
                let mut done = Done { coalescer: self, key, started, result: None };
                let result = read().map(Arc::new).map_err(Arc::new);
                let mine = own(&result);
                done.result = Some(result);
                drop(done);
                return mine;
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(Missed::Deadline);
            }
            if !counted {
                slot.waiting += 1;
                counted = true;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        };
        if counted {
            state.entry(key.to_owned()).or_default().leave();
        }
        result
    }
}

impl<T, E> Slot<T, E> {
    /// A waiting caller is done waiting; the last one lets go of the result.
    fn leave(&mut self) {
        self.waiting -= 1;
        if self.waiting == 0 {
            self.last = None;
        }
    }
}

/// Ends a reading (also if `read` panicked): publishes its result to the
/// callers waiting for it and wakes them.
struct Done<'a, T, E> {
    coalescer: &'a Coalescer<T, E>,
    key: &'a str,
    started: u64,
    result: Option<Shared<T, E>>,
}

impl<T, E> Drop for Done<'_, T, E> {
    fn drop(&mut self) {
        let mut state = self.coalescer.lock();
        let slot = state.entry(self.key.to_owned()).or_default();
        slot.running = false;
        slot.last = match self.result.take() {
            Some(result) if slot.waiting > 0 => Some((self.started, result)),
            _ => None,
        };
        self.coalescer.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn a_lone_caller_reads_itself_every_time() {
        let c: Coalescer<u32, String> = Coalescer::default();
        let far = Instant::now() + Duration::from_secs(5);
        let reads = AtomicUsize::new(0);
        for i in 0..3 {
            let got = c.read("rbd", far, || Ok(reads.fetch_add(1, Ordering::SeqCst) as u32), String::clone);
            assert_eq!(got.ok().map(|v| *v), Some(i), "never a cached value");
        }
        assert!(matches!(c.read("rbd", far, || Err("boom".to_owned()), String::clone), Err(Missed::Failed(e)) if e == "boom"));
    }

    #[test]
    fn callers_arriving_during_a_reading_share_the_next_one() {
        let c: Arc<Coalescer<usize, String>> = Arc::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let far = Instant::now() + Duration::from_secs(10);
        let callers: Vec<_> = (0..32)
            .map(|_| {
                let (c, reads) = (Arc::clone(&c), Arc::clone(&reads));
                std::thread::spawn(move || {
                    let arrived = reads.load(Ordering::SeqCst);
                    let value = c.read(
                        "rbd",
                        far,
                        || {
                            std::thread::sleep(Duration::from_millis(30));
                            Ok(reads.fetch_add(1, Ordering::SeqCst) + 1)
                        },
                        String::clone,
                    );
                    let value = *value.ok().expect("a reading");
                    assert!(value > arrived, "a reading that started after the caller arrived");
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        let n = reads.load(Ordering::SeqCst);
        assert!((1..=8).contains(&n), "32 callers shared {n} readings");
        assert!(c.lock()["rbd"].last.is_none(), "nothing kept once nobody waits");
    }

    #[test]
    fn a_caller_stops_waiting_at_its_deadline() {
        let c: Arc<Coalescer<u8, String>> = Arc::default();
        let slow = {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                let far = Instant::now() + Duration::from_secs(10);
                c.read(
                    "rbd",
                    far,
                    || {
                        std::thread::sleep(Duration::from_millis(400));
                        Ok(1)
                    },
                    String::clone,
                )
                .is_ok()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        let got = c.read("rbd", started + Duration::from_millis(100), || Ok(2), String::clone);
        assert!(matches!(got, Err(Missed::Deadline)));
        assert!(started.elapsed() < Duration::from_millis(300));
        assert!(slow.join().unwrap());
    }
}
