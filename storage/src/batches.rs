//! Work on a key done by the first caller that finds none running, for every
//! caller waiting: each caller queues its request; the first to find no
//! worker for the key becomes it and serves the queue, a batch at a time,
//! until it is empty; the others wait for their own answer. Sixty-four
//! callers arriving together cost a few rounds of work, not sixty-four.
//!
//! Blocking (a mutex and a condition variable): it serves the blocking
//! threads Ceph calls run on. A request still queued when its deadline
//! passes is withdrawn, so it is never served after its caller was told it
//! was late; one already in a batch being served is answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Its deadline passed while it was still queued.
    Late,
    /// The worker serving it panicked.
    Abandoned,
}

struct Slot<R, A> {
    request: R,
    deadline: Instant,
    answer: Mutex<Option<Result<A, Missed>>>,
}

struct Queue<R, A> {
    waiting: Vec<Arc<Slot<R, A>>>,
    working: bool,
}

impl<R, A> Default for Queue<R, A> {
    fn default() -> Self {
        Queue { waiting: Vec::new(), working: false }
    }
}

/// Queues of requests by key.
pub struct Batches<R, A> {
    queues: Mutex<HashMap<String, Queue<R, A>>>,
    changed: Condvar,
}

impl<R, A> Default for Batches<R, A> {
    fn default() -> Self {
        Batches { queues: Mutex::new(HashMap::new()), changed: Condvar::new() }
    }
}

impl<R, A> Batches<R, A> {
    /// Queues `request` under `key` and returns its answer. When no worker
    /// serves `key`, this caller becomes it: `serve` gets each batch of
    /// requests still within their deadlines, in arrival order, and answers
    /// them in the same order; it runs without the lock held.
    pub fn submit(&self, key: &str, request: R, deadline: Instant, mut serve: impl FnMut(&[&R]) -> Vec<A>) -> Result<A, Missed> {
        let slot = Arc::new(Slot { request, deadline, answer: Mutex::new(None) });
        let mut queues = self.queues.lock();
        queues.entry(key.to_owned()).or_default().waiting.push(Arc::clone(&slot));
        loop {
            if let Some(answer) = slot.answer.lock().take() {
                return answer;
            }
            let queue = queues.entry(key.to_owned()).or_default();
            if !queue.working {
                queue.working = true;
                drop(queues);
                self.work(key, &mut serve);
                queues = self.queues.lock();
                continue;
            }
            let now = Instant::now();
            if now >= deadline
                && let Some(at) = queue.waiting.iter().position(|s| Arc::ptr_eq(s, &slot))
            {
                queue.waiting.remove(at);
                return Err(Missed::Late);
            }
            let wait = deadline.saturating_duration_since(now).max(Duration::from_millis(10));
            self.changed.wait_for(&mut queues, wait);
        }
    }

    /// Serves batches of `key` until its queue is empty.
    fn work(&self, key: &str, serve: &mut impl FnMut(&[&R]) -> Vec<A>) {
        let mut shift = Shift { batches: self, key, batch: Vec::new() };
        loop {
            {
                let mut queues = self.queues.lock();
                let queue = queues.entry(key.to_owned()).or_default();
                let now = Instant::now();
                let (due, late): (Vec<_>, Vec<_>) = std::mem::take(&mut queue.waiting).into_iter().partition(|s| s.deadline > now);
                for slot in late {
                    *slot.answer.lock() = Some(Err(Missed::Late));
                }
                if due.is_empty() {
                    queue.working = false;
                    self.changed.notify_all();
                    return;
                }
                shift.batch = due;
            }
            let requests: Vec<&R> = shift.batch.iter().map(|s| &s.request).collect();
            let answers = serve(&requests);
            // Answered under the queues' lock: a caller checks its answer and
            // starts waiting under it too, so no wake-up is lost.
            let _queues = self.queues.lock();
            for (slot, answer) in shift.batch.drain(..).zip(answers) {
                *slot.answer.lock() = Some(Ok(answer));
            }
            self.changed.notify_all();
        }
    }
}

/// A worker's turn; if `serve` panics, its batch is answered Abandoned and
/// the key is free for the next caller.
struct Shift<'a, R, A> {
    batches: &'a Batches<R, A>,
    key: &'a str,
    batch: Vec<Arc<Slot<R, A>>>,
}

impl<R, A> Drop for Shift<'_, R, A> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut queues = self.batches.queues.lock();
        for slot in self.batch.drain(..) {
            slot.answer.lock().get_or_insert(Err(Missed::Abandoned));
        }
        if let Some(queue) = queues.get_mut(self.key) {
            queue.working = false;
        }
        self.batches.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[test]
    fn callers_arriving_while_one_works_are_served_together_each_with_its_answer() {
        let batches: Arc<Batches<u32, u32>> = Arc::default();
        let rounds = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..32u32)
            .map(|n| {
                let (batches, rounds) = (Arc::clone(&batches), Arc::clone(&rounds));
                std::thread::spawn(move || {
                    let answer = batches.submit("pool", n, far(), |batch| {
                        rounds.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        batch.iter().map(|n| *n * 10).collect()
                    });
                    assert_eq!(answer, Ok(n * 10), "each caller gets the answer to its own request");
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        let rounds = rounds.load(Ordering::SeqCst);
        assert!((1..32).contains(&rounds), "32 requests took {rounds} rounds");
    }

    #[test]
    fn a_request_still_queued_at_its_deadline_is_withdrawn_and_never_served() {
        let batches: Arc<Batches<&'static str, ()>> = Arc::default();
        let served = Arc::new(Mutex::new(Vec::new()));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let slow = {
            let (batches, served) = (Arc::clone(&batches), Arc::clone(&served));
            std::thread::spawn(move || {
                batches.submit("pool", "slow", far(), |batch| {
                    let _ = started_tx.send(());
                    std::thread::sleep(Duration::from_millis(500));
                    served.lock().extend(batch.iter().map(|r| **r));
                    vec![(); batch.len()]
                })
            })
        };
        started_rx.recv().unwrap();
        let asked = Instant::now();
        let late = batches.submit("pool", "late", asked + Duration::from_millis(100), |batch| {
            served.lock().extend(batch.iter().map(|r| **r));
            vec![(); batch.len()]
        });
        assert_eq!(late, Err(Missed::Late));
        assert!(asked.elapsed() < Duration::from_millis(400), "left at its deadline, not when the slow batch ended");
        assert_eq!(slow.join().unwrap(), Ok(()));
        assert_eq!(*served.lock(), ["slow"], "the withdrawn request was never served");
    }

    #[test]
    fn a_worker_that_panics_abandons_its_batch_and_frees_the_key() {
        let batches: Arc<Batches<u8, u8>> = Arc::default();
        let panicked = {
            let batches = Arc::clone(&batches);
            std::thread::spawn(move || batches.submit("pool", 1, far(), |_| panic!("boom")))
        };
        assert!(panicked.join().is_err());
        assert_eq!(batches.submit("pool", 2, far(), |batch| batch.iter().map(|n| **n).collect()), Ok(2), "the next caller works");
    }
}
