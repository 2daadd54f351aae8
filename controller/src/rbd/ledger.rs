//! The in-process ledger of bytes promised to creates and grows in flight,
//! so two admissions never both take the same free bytes of a pool.
//!
//! The pool is read (monitor commands, librbd pool stats) *outside* the
//! ledger's mutex, so admissions of different images run side by side; the
//! mutex is held only for the arithmetic. That opens one gap: an operation
//! that finishes while another admission is reading the pool may be missing
//! from that reading (its new size not yet visible) *and* from the ledger
//! (its promise ended). So an ended promise stays counted for every reading
//! that began before it ended: each reading takes a [`Snapshot`] first, and
//! a promise ended after the snapshot still counts against it. Ended
//! promises are dropped once no reading older than their end is left.
//! Counting one twice only makes an admission more careful, never wrong.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes promised per pool, shared by every operation of one backend.
#[derive(Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Ticks at every snapshot and every ended promise; orders them.
    clock: u64,
    next_id: u64,
    promises: HashMap<u64, Entry>,
    /// Readings in progress: snapshot id → the clock when it was taken.
    readings: BTreeMap<u64, u64>,
}

struct Entry {
    pool: String,
    bytes: u64,
    /// The clock when the promise ended, `None` while in flight.
    ended: Option<u64>,
}

impl Inner {
    /// Bytes that a reading taken at `taken` may not see in `pool`.
    fn promised(&self, pool: &str, taken: u64) -> u64 {
        self.promises.values().filter(|e| e.pool == pool && e.ended.is_none_or(|ended| ended > taken)).fold(0u64, |sum, e| sum.saturating_add(e.bytes))
    }

    /// Forgets ended promises that no reading in progress can miss.
    fn prune(&mut self) {
        let oldest = self.readings.values().min().copied();
        self.promises.retain(|_, e| match (e.ended, oldest) {
            (None, _) => true,
            (Some(ended), Some(oldest)) => ended > oldest,
            (Some(_), None) => false,
        });
    }
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a reading of the pool; take it *before* reading.
    pub fn snapshot(&self) -> Snapshot {
        let mut inner = self.lock();
        inner.clock += 1;
        inner.next_id += 1;
        let (id, taken) = (inner.next_id, inner.clock);
        inner.readings.insert(id, taken);
        Snapshot { ledger: self.clone(), id, taken }
    }

    /// How many promises are remembered (in flight or still needed).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().promises.len()
    }
}

/// A reading of the pool in progress; ends when dropped.
pub struct Snapshot {
    ledger: Ledger,
    id: u64,
    taken: u64,
}

impl Snapshot {
    /// Bytes promised in `pool` that the reading may not include.
    pub fn promised(&self, pool: &str) -> u64 {
        self.ledger.lock().promised(pool, self.taken)
    }

    /// Under the ledger's lock: `decide(promised)` with the bytes promised in
    /// `pool` that the reading may not include; when it agrees, `bytes` are
    /// promised until the returned [`Promise`] is dropped.
    pub fn admit<E>(&self, pool: &str, bytes: u64, decide: impl FnOnce(u64) -> Result<(), E>) -> Result<Promise, E> {
        let mut inner = self.ledger.lock();
        decide(inner.promised(pool, self.taken))?;
        inner.next_id += 1;
        let id = inner.next_id;
        inner.promises.insert(id, Entry { pool: pool.to_owned(), bytes, ended: None });
        Ok(Promise { ledger: self.ledger.clone(), id })
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut inner = self.ledger.lock();
        inner.readings.remove(&self.id);
        inner.prune();
    }
}

/// An admitted operation's promise; drop it once the operation finished (so
/// its effect is visible in the pool).
pub struct Promise {
    ledger: Ledger,
    id: u64,
}

impl Drop for Promise {
    fn drop(&mut self) {
        let mut inner = self.ledger.lock();
        inner.clock += 1;
        let now = inner.clock;
        if let Some(entry) = inner.promises.get_mut(&self.id) {
            entry.ended = Some(now);
        }
        inner.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(limit: u64, bytes: u64) -> impl FnOnce(u64) -> Result<(), u64> {
        move |promised| if promised + bytes <= limit { Ok(()) } else { Err(promised) }
    }

    #[test]
    fn promises_in_flight_count_until_dropped() {
        let ledger = Ledger::default();
        let read = ledger.snapshot();
        let a = read.admit("rbd", 6, room(10, 6)).unwrap();
        assert_eq!(read.admit("rbd", 6, room(10, 6)).err(), Some(6), "the same free bytes twice");
        assert!(read.admit("other", 6, room(10, 6)).is_ok(), "pools are apart");
        drop(read);
        drop(a);
        assert_eq!(ledger.snapshot().promised("rbd"), 0);
    }

    #[test]
    fn a_promise_ended_during_a_reading_still_counts_for_that_reading() {
        let ledger = Ledger::default();
        let grow = ledger.snapshot().admit("rbd", 5, room(10, 5)).unwrap();
        let reading = ledger.snapshot(); // may or may not see the grow's new size
        drop(grow);
        assert_eq!(reading.promised("rbd"), 5, "the ended grow may be missing from the reading");
        assert_eq!(ledger.snapshot().promised("rbd"), 0, "a later reading sees the image itself");
        assert_eq!(ledger.len(), 1, "kept while the older reading lasts");
        drop(reading);
        assert_eq!(ledger.len(), 0, "then forgotten");
    }

    #[test]
    fn a_promise_ended_before_a_reading_is_not_counted_twice() {
        let ledger = Ledger::default();
        let old = ledger.snapshot();
        drop(old.admit("rbd", 5, room(10, 5)).unwrap());
        let new = ledger.snapshot();
        assert_eq!(new.promised("rbd"), 0);
        assert_eq!(old.promised("rbd"), 5);
        drop(old);
        drop(new);
        assert_eq!(ledger.len(), 0);
    }
}
