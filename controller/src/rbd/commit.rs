//! Changes to a pool's state object ([`super::state`]), applied atomically
//! and batched.
//!
//! A change is decided against the values it replaces, then written in one
//! compound RADOS write that first compares those values (the total and
//! each entry touched) with what was read: if another controller replica
//! wrote in between, nothing is written and the batch is decided again from
//! a fresh read. So a promise is admitted against the exact total, across
//! processes, and an entry is never overwritten by a writer that read an
//! older one.
//!
//! Every change touches the total, so concurrent changes of one pool are
//! committed in batches: the first caller to find no commit running commits
//! everything queued, and goes on while more arrives; the others wait for
//! their own result. Sixty-four expansions arriving together cost a few
//! writes, not sixty-four in a row.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use swell_storage::{BackendError, ExpansionRecord};

use super::capacity::PoolRoom;
use super::errors::RbdError;
use super::ffi::{Errno, IoCtx, WriteOp};
use super::state::{self, Entry, Phase, STATE_OBJECT, TOTAL_KEY};

/// How often one batch is decided again after losing a race with another
/// writer before its callers are told to retry.
const ATTEMPTS: usize = 8;

/// One change of one image's entry.
#[derive(Debug, Clone)]
pub enum Change {
    /// Stores `record` for `image` if the stored record is the one it was
    /// made from (same generation; an absent entry counts as generation 0);
    /// bytes it promises beyond the stored entry are admitted against the
    /// pool first. With a `name`, the entry is made if missing and must
    /// name that volume; without, it must exist and keeps its name.
    Put {
        /// The image.
        image: String,
        /// The volume's CO name, when the change may make the entry.
        name: Option<String>,
        /// The phase to store; `None` keeps the stored one.
        phase: Option<Phase>,
        /// The record to store.
        record: ExpansionRecord,
    },
    /// Removes `image`'s entry and its promise (only the entry of that
    /// `generation`, when one is given).
    Remove {
        /// The image.
        image: String,
        /// The generation the entry must still have.
        generation: Option<u64>,
    },
}

impl Change {
    fn image(&self) -> &str {
        match self {
            Change::Put { image, .. } | Change::Remove { image, .. } => image,
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The entry as stored (its generation bumped).
    Stored(Entry),
    /// The entry removed, if there was one.
    Removed(Option<Entry>),
}

/// The pool's room when Swell has promised `total` bytes in it.
pub type RoomFn<'a> = dyn Fn(u64) -> Result<PoolRoom, RbdError> + 'a;

struct Slot {
    change: Change,
    deadline: Instant,
    result: Mutex<Option<Result<Outcome, RbdError>>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Arc<Slot>>,
    committing: bool,
}

/// The batching committer of every pool of one backend.
#[derive(Default)]
pub struct Committer {
    queues: Mutex<HashMap<String, Queue>>,
    changed: Condvar,
}

impl Committer {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to `pool`'s state object (through `io`) and returns
    /// what it did, committing other callers' changes in the same write
    /// when they are waiting. `room` tells the pool's room for admissions.
    pub fn apply(&self, io: &IoCtx, pool: &str, change: Change, deadline: Instant, room: &RoomFn<'_>) -> Result<Outcome, RbdError> {
        let slot = Arc::new(Slot { change, deadline, result: Mutex::new(None) });
        let mut queues = self.lock();
        queues.entry(pool.to_owned()).or_default().waiting.push(Arc::clone(&slot));
        loop {
            if let Some(result) = slot.result.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return result;
            }
            let queue = queues.entry(pool.to_owned()).or_default();
            if !queue.committing {
                queue.committing = true;
                drop(queues);
                self.commit_queued(io, pool, room);
                queues = self.lock();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                // Still queued: taken out, so it is never applied after its
                // caller was told it timed out.
                if let Some(at) = queue.waiting.iter().position(|s| Arc::ptr_eq(s, &slot)) {
                    queue.waiting.remove(at);
                    return Err(timeout(pool));
                }
            }
            let wait = deadline.saturating_duration_since(now).max(Duration::from_millis(10));
            queues = self.changed.wait_timeout(queues, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Commits batches of `pool` until its queue is empty.
    fn commit_queued(&self, io: &IoCtx, pool: &str, room: &RoomFn<'_>) {
        loop {
            let batch: Vec<Arc<Slot>> = {
                let mut queues = self.lock();
                let queue = queues.entry(pool.to_owned()).or_default();
                let now = Instant::now();
                let (due, late): (Vec<_>, Vec<_>) = std::mem::take(&mut queue.waiting).into_iter().partition(|s| s.deadline > now);
                for slot in late {
                    *slot.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(timeout(pool)));
                }
                if due.is_empty() {
                    queue.committing = false;
                    self.changed.notify_all();
                    return;
                }
                due
            };
            let changes: Vec<Change> = batch.iter().map(|s| s.change.clone()).collect();
            let results = commit(io, &changes, room);
            for (slot, result) in batch.iter().zip(results) {
                *slot.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            }
            self.changed.notify_all();
        }
    }
}

fn timeout(pool: &str) -> RbdError {
    RbdError::Refused(BackendError::Timeout { step: format!("commit to {STATE_OBJECT} of pool {pool}"), after: Duration::ZERO })
}

/// The values a batch was decided on, and what it decided.
struct Decision {
    results: Vec<Result<Outcome, RbdError>>,
    /// The stored total as read, and as decided.
    total: (Vec<u8>, u64),
    /// Per touched image: the stored value as read, and the entry decided.
    entries: BTreeMap<String, (Vec<u8>, Option<Entry>)>,
}

/// Decides and writes one batch, again from a fresh read each time another
/// writer got in between.
fn commit(io: &IoCtx, changes: &[Change], room: &RoomFn<'_>) -> Vec<Result<Outcome, RbdError>> {
    let mut keys = vec![TOTAL_KEY.to_owned()];
    keys.extend(changes.iter().map(|c| state::entry_key(c.image())));
    keys.sort();
    keys.dedup();
    for _ in 0..ATTEMPTS {
        let stored = match state::read_raw(io, &keys) {
            Ok(values) => values.into_iter().collect::<HashMap<String, Vec<u8>>>(),
            Err(err) => return changes.iter().map(|_| Err(err.duplicate())).collect(),
        };
        let decision = match decide(&stored, changes, room) {
            Ok(decision) => decision,
            Err(err) => return changes.iter().map(|_| Err(err.duplicate())).collect(),
        };
        if decision.entries.is_empty() {
            return decision.results;
        }
        match write(io, &decision) {
            Ok(()) => return decision.results,
            Err(Errno::ECANCELED) => continue,
            Err(errno) => {
                let err = RbdError::osd(format!("write {STATE_OBJECT}"), errno, None);
                return changes.iter().map(|_| Err(err.duplicate())).collect();
            }
        }
    }
    let reason = format!("{STATE_OBJECT} kept changing under other writers ({ATTEMPTS} attempts)");
    changes.iter().map(|_| Err(RbdError::Refused(BackendError::Contended { step: "commit volume state".into(), reason: reason.clone() }))).collect()
}

/// Applies `changes` in order to the values read, each on what the ones
/// before it left.
fn decide(stored: &HashMap<String, Vec<u8>>, changes: &[Change], room: &RoomFn<'_>) -> Result<Decision, RbdError> {
    let total_raw = stored.get(TOTAL_KEY).cloned().unwrap_or_default();
    let mut total = state::decode_total(&total_raw)?;
    let mut entries: BTreeMap<String, (Vec<u8>, Option<Entry>)> = BTreeMap::new();
    let mut results = Vec::with_capacity(changes.len());
    for change in changes {
        let image = change.image();
        let current = match entries.get(image) {
            Some((_, entry)) => Ok(entry.clone()),
            None => stored.get(&state::entry_key(image)).map(|raw| Entry::decode(image, raw)).transpose(),
        };
        let current = match current {
            Ok(current) => current,
            Err(err) => {
                results.push(Err(err));
                continue;
            }
        };
        let decided = match change {
            Change::Put { name, phase, record, .. } => put(image, current.as_ref(), name.as_deref(), *phase, record, total, room),
            // Nothing to remove: nothing to write.
            Change::Remove { .. } if current.is_none() => {
                results.push(Ok(Outcome::Removed(None)));
                continue;
            }
            Change::Remove { generation: Some(generation), .. } if current.as_ref().is_some_and(|e| e.record.generation != *generation) => {
                results.push(Err(changed(image, current.as_ref().map_or(0, |e| e.record.generation), *generation)));
                continue;
            }
            Change::Remove { .. } => Ok((None, Outcome::Removed(current.clone()))),
        };
        match decided {
            Ok((after, outcome)) => {
                let before = current.as_ref().map_or(0, Entry::promised);
                total = total.saturating_sub(before).saturating_add(after.as_ref().map_or(0, Entry::promised));
                let raw = stored.get(&state::entry_key(image)).cloned().unwrap_or_default();
                entries.entry(image.to_owned()).or_insert((raw, None)).1 = after;
                results.push(Ok(outcome));
            }
            Err(err) => results.push(Err(err)),
        }
    }
    Ok(Decision { results, total: (total_raw, total), entries })
}

fn changed(image: &str, stored: u64, expected: u64) -> RbdError {
    RbdError::Refused(BackendError::Contended {
        step: format!("record state of image {image}"),
        reason: format!("its entry changed since it was read (generation {stored}, not {expected})"),
    })
}

/// The entry a put stores, or why it may not.
fn put(
    image: &str,
    current: Option<&Entry>,
    name: Option<&str>,
    phase: Option<Phase>,
    record: &ExpansionRecord,
    total: u64,
    room: &RoomFn<'_>,
) -> Result<(Option<Entry>, Outcome), RbdError> {
    let stored_generation = current.map_or(0, |e| e.record.generation);
    if stored_generation != record.generation {
        return Err(changed(image, stored_generation, record.generation));
    }
    let name = match (current, name) {
        // A deleted volume's name may be taken again.
        (Some(current), Some(name)) if current.name != name && current.live() => {
            return Err(RbdError::Refused(BackendError::io(
                format!("record state of image {image}"),
                std::io::Error::other(format!("the image belongs to volume {:?}, not {name:?}", current.name)),
            )));
        }
        (_, Some(name)) => name.to_owned(),
        (Some(current), None) => current.name.clone(),
        (None, None) => return Err(RbdError::osd(format!("record state of image {image}"), Errno::ENOENT, record.volume_id.parse().ok().as_ref())),
    };
    let phase = phase.or(current.map(|e| e.phase)).unwrap_or_default();
    let wanted = Entry { name, phase, record: record.clone() };
    let more = wanted.promised().saturating_sub(current.map_or(0, Entry::promised));
    if more > 0 {
        let room = room(total)?;
        if let Some(reason) = &room.full {
            tracing::warn!(image, bytes = more, reason, "refusing: pool is full");
            return Err(BackendError::NoSpace { requested: more, available: 0 }.into());
        }
        if more > room.capacity.available_bytes {
            return Err(BackendError::NoSpace { requested: more, available: room.capacity.available_bytes }.into());
        }
    }
    let mut stored = wanted.clone();
    stored.record.generation += 1;
    Ok((Some(stored.clone()), Outcome::Stored(stored)))
}

/// Writes a decision in one compound write that first compares every value
/// it was made on (ECANCELED when one changed).
fn write(io: &IoCtx, decision: &Decision) -> Result<(), Errno> {
    let mut op = WriteOp::default();
    op.create(false).omap_cmp_eq(TOTAL_KEY, &decision.total.0);
    let (mut set, mut remove): (Vec<(String, Vec<u8>)>, Vec<String>) = (vec![(TOTAL_KEY.to_owned(), decision.total.1.to_string().into_bytes())], Vec::new());
    for (image, (raw, entry)) in &decision.entries {
        op.omap_cmp_eq(&state::entry_key(image), raw);
        match entry {
            Some(entry) => {
                set.push((state::entry_key(image), entry.encode()));
                if entry.pending() {
                    set.push((state::pending_key(image), b"1".to_vec()));
                } else {
                    remove.push(state::pending_key(image));
                }
            }
            None => remove.extend([state::entry_key(image), state::pending_key(image)]),
        }
    }
    op.omap_set(&set).omap_rm(&remove);
    op.operate(io, STATE_OBJECT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_storage::{Capacity, ExpansionRecord, VolumeId};

    fn entry(name: &str, current: u64, desired: u64) -> Entry {
        let id: VolumeId = "rbd:c:rbd:swell-00000000000000000000000000000000".parse().unwrap();
        Entry { name: name.into(), phase: Phase::Ready, record: ExpansionRecord::new(&id, current, current).wishing(current, desired) }
    }

    fn put(image: &str, entry: Entry) -> Change {
        Change::Put { image: image.into(), name: Some(entry.name), phase: Some(entry.phase), record: entry.record }
    }

    fn room(limit: u64) -> impl Fn(u64) -> Result<PoolRoom, RbdError> {
        move |total| Ok(PoolRoom { capacity: Capacity { total_bytes: limit, available_bytes: limit.saturating_sub(total) }, full: None })
    }

    fn stored(pairs: &[(&str, &Entry)], total: u64) -> HashMap<String, Vec<u8>> {
        let mut map: HashMap<String, Vec<u8>> = pairs.iter().map(|(i, e)| (state::entry_key(i), e.encode())).collect();
        map.insert(TOTAL_KEY.into(), total.to_string().into_bytes());
        map
    }

    #[test]
    fn a_batch_admits_in_order_against_the_running_total() {
        let changes = [put("a", entry("a", 0, 60)), put("b", entry("b", 0, 60)), put("c", entry("c", 0, 30))];
        let decision = decide(&stored(&[], 0), &changes, &room(100)).unwrap();
        assert!(decision.results[0].is_ok());
        assert!(matches!(&decision.results[1], Err(RbdError::Refused(BackendError::NoSpace { requested: 60, available: 40 }))), "{:?}", decision.results[1]);
        assert!(decision.results[2].is_ok());
        assert_eq!(decision.total.1, 90);
        assert_eq!(decision.entries.len(), 2, "the refused change touches nothing");
    }

    #[test]
    fn growing_promises_only_the_difference_and_removing_gives_it_back() {
        let a = entry("a", 10, 10);
        let mut grown = a.clone().record.wishing(10, 25);
        grown.generation = a.record.generation;
        // In order: the removal frees the room the grow then takes.
        let changes = [
            Change::Remove { image: "b".into(), generation: None },
            Change::Put { image: "a".into(), name: None, phase: None, record: grown },
            Change::Remove { image: "c".into(), generation: None },
        ];
        let b = entry("b", 40, 40);
        let decision = decide(&stored(&[("a", &a), ("b", &b)], 50), &changes, &room(60)).unwrap();
        assert!(decision.results.iter().all(Result::is_ok));
        assert_eq!(decision.total.1, 50 + 15 - 40);
        assert!(matches!(&decision.results[0], Ok(Outcome::Removed(Some(e))) if *e == b));
        assert!(matches!(&decision.results[2], Ok(Outcome::Removed(None))));
        assert_eq!(decision.entries.keys().collect::<Vec<_>>(), ["a", "b"], "removing nothing writes nothing");
    }

    #[test]
    fn a_stale_writer_and_a_name_clash_are_refused_without_touching_anything() {
        let a = entry("a", 10, 10);
        let mut newer = a.clone();
        newer.record.generation = 7;
        let stale = put("a", a.clone());
        let decision = decide(&stored(&[("a", &newer)], 10), &[stale], &room(100)).unwrap();
        assert!(matches!(&decision.results[0], Err(RbdError::Refused(BackendError::Contended { .. }))));
        let clash = put("a", Entry { name: "other".into(), ..newer.clone() });
        let decision = decide(&stored(&[("a", &newer)], 10), &[clash], &room(100)).unwrap();
        assert!(decision.results[0].is_err());
        assert!(decision.entries.is_empty());
        let orphan = Change::Put { image: "z".into(), name: None, phase: None, record: a.record.clone() };
        assert!(decide(&stored(&[], 0), &[orphan], &room(100)).unwrap().results[0].is_err(), "a record needs its entry");
    }

    #[test]
    fn a_deleted_volume_gives_its_bytes_back_and_its_name_may_be_taken_again() {
        let a = entry("a", 40, 40);
        let tombstone = Change::Put { image: "a".into(), name: None, phase: Some(Phase::Deleting), record: a.record.clone() };
        let decision = decide(&stored(&[("a", &a)], 40), &[tombstone], &room(50)).unwrap();
        assert_eq!(decision.total.1, 0);
        let Ok(Outcome::Stored(deleted)) = &decision.results[0] else { panic!("{:?}", decision.results[0].is_ok()) };
        let recreate = Change::Put { image: "a".into(), name: Some("other".into()), phase: Some(Phase::Creating), record: deleted.record.clone() };
        let decision = decide(&stored(&[("a", deleted)], 0), &[recreate], &room(50)).unwrap();
        assert!(decision.results[0].is_ok());
        assert_eq!(decision.total.1, 40);
        let stale_removal = Change::Remove { image: "a".into(), generation: Some(0) };
        assert!(decide(&stored(&[("a", deleted)], 0), &[stale_removal], &room(50)).unwrap().results[0].is_err());
    }

    #[test]
    fn a_full_pool_refuses_new_bytes_but_not_changes_that_promise_none() {
        let full = |_total: u64| Ok(PoolRoom { capacity: Capacity { total_bytes: 100, available_bytes: 0 }, full: Some("flag full".into()) });
        let a = entry("a", 10, 10);
        let settle = put("a", a.clone());
        let grow = put("b", entry("b", 0, 5));
        let decision = decide(&stored(&[("a", &a)], 10), &[settle, grow], &full).unwrap();
        assert!(decision.results[0].is_ok());
        assert!(matches!(&decision.results[1], Err(RbdError::Refused(BackendError::NoSpace { available: 0, .. }))));
    }
}
