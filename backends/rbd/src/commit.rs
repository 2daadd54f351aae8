//! Changes to a pool's state ([`super::state`]), applied atomically to the
//! shard holding the entry ([`super::shards`]) and batched.
//!
//! A change is decided against the values it replaces, then written in one
//! compound RADOS write that first compares those values (the shard's
//! total and grant, and each entry touched) with what was read: if another
//! controller replica wrote in between, nothing is written and the batch is
//! decided again from a fresh read. So a promise is admitted against the
//! shard's exact total and grant, whose sum over the shards never passes
//! the pool's room ([`super::budget`]), and an entry is never overwritten
//! by a writer that read an older one. A batch that needs more than the
//! shard's grant raises it first.
//!
//! Every change touches its shard's total, so concurrent changes of one
//! shard are committed in batches ([`swell_storage::batches`]): the first
//! caller to find no commit running commits everything queued, and goes on
//! while more arrives; the others wait for their own result. Sixty-four
//! expansions arriving together cost a few writes, not sixty-four in a row.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use swell_storage::batches::Batches;
use swell_storage::{BackendError, ExpansionRecord};

use crate::budget::{self, Grant, Raised, RoomFn};
use crate::errors::RbdError;
use crate::ffi::{Errno, IoCtx, WriteOp};
use crate::layout::Layout;
use crate::state::{self, Entry, GRANT_KEY, GRANT_RAISED_AT_KEY, Key, Lineage, PENDING_KEY, Phase, SnapshotEntry, Stored, TOTAL_KEY};

/// How often one batch is decided again after losing a race with another
/// writer before its callers are told to retry.
const ATTEMPTS: usize = 8;

/// Raises of a shard's grant one batch may try.
const RAISES: usize = 3;

/// One change of one entry.
#[derive(Debug, Clone)]
pub(crate) enum Change {
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
        /// Where its data came from; `None` keeps the stored lineage.
        lineage: Option<Lineage>,
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
    /// Stores a snapshot's entry if the stored one is the one it was made
    /// from (same generation), and a live one of the same name; bytes it
    /// promises beyond the stored entry are admitted first.
    PutSnapshot {
        /// The snapshot key.
        key: String,
        /// The entry to store.
        entry: SnapshotEntry,
    },
    /// Removes a snapshot's entry (only of that `generation`, when given).
    RemoveSnapshot {
        /// The snapshot key.
        key: String,
        /// The generation the entry must still have.
        generation: Option<u64>,
    },
}

impl Change {
    fn key(&self) -> Key {
        match self {
            Change::Put { image, .. } | Change::Remove { image, .. } => Key::Volume(image.clone()),
            Change::PutSnapshot { key, .. } | Change::RemoveSnapshot { key, .. } => Key::Snapshot(key.clone()),
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The entry as stored (its generation bumped).
    Stored(Entry),
    /// The entry removed, if there was one.
    Removed(Option<Entry>),
    /// The snapshot entry as stored (its generation bumped).
    SnapshotStored(SnapshotEntry),
    /// The snapshot entry removed, if there was one.
    SnapshotRemoved(Option<SnapshotEntry>),
}

/// What a shard may promise: its grant, the pool's room beyond it (known
/// once a raise fell short, for the refusal's message), and the pool as it
/// is now (read only when a change promises more).
pub(crate) struct Limit<'a> {
    grant: u64,
    room_left: u64,
    pool: &'a dyn Fn() -> Result<PoolCheck, RbdError>,
}

/// The pool as an admission sees it: the grants stay within the policy's
/// total as it is now, not as it was when they were given (a quota set
/// since, OSDs filled).
#[derive(Debug, Clone, Default)]
pub(crate) struct PoolCheck {
    /// Why nothing may be promised at all, if so.
    full: Option<String>,
    /// The policy's total (docs/rbd-capacity.md).
    total: u64,
    /// That total less what the pool stores.
    unstored: u64,
    /// The sum of the shards' grants.
    granted: u64,
}

impl PoolCheck {
    /// Whether the shards were granted more than the pool now allows.
    fn over_granted(&self) -> bool {
        self.granted > self.total
    }
}

/// The batching committer of every pool of one backend.
#[derive(Default)]
pub(crate) struct Committer {
    /// Changes waiting, by pool, committed by the first caller waiting.
    batches: Batches<Change, Result<Outcome, RbdError>>,
}

impl Committer {
    /// Applies `change` to the shard of `pool` holding its entry (through
    /// `io`) and returns what it did, committing other callers' changes of
    /// that shard in the same write when they are waiting. `room` tells the
    /// pool's room for raising the shard's grant. A change still queued at
    /// `deadline` is never applied.
    pub(crate) fn apply(&self, io: &IoCtx, pool: &str, layout: &Layout, change: Change, deadline: Instant, room: &RoomFn<'_>) -> Result<Outcome, RbdError> {
        if *layout == Layout::Unsharded {
            let step = format!("record state in pool {pool}");
            return Err(RbdError::Refused(BackendError::Unavailable { step, reason: "this client may not move the pool's state into shards".into() }));
        }
        let shard = layout.shard_of(change.key().name());
        let target = Target { io, layout, shard, deadline };
        let committed = self.batches.submit(&format!("{pool}/{shard}"), change, deadline, |changes| {
            let changes: Vec<Change> = changes.iter().map(|c| (*c).clone()).collect();
            commit(&target, &changes, room)
        });
        committed.unwrap_or_else(|_| Err(timeout(pool, &layout.object(shard))))
    }
}

/// The shard a batch is committed to.
struct Target<'a> {
    io: &'a IoCtx,
    layout: &'a Layout,
    shard: u32,
    deadline: Instant,
}

fn timeout(pool: &str, object: &str) -> RbdError {
    RbdError::Refused(BackendError::Timeout { step: format!("commit to {object} of pool {pool}"), after: Duration::ZERO })
}

/// The values a batch was decided on, and what it decided.
struct Decision {
    results: Vec<Result<Outcome, RbdError>>,
    /// The stored total as read, and as decided.
    total: (Vec<u8>, u64),
    /// The stored grant as read.
    grant: Vec<u8>,
    /// The shard's list of entries with work left as read.
    pending: Vec<u8>,
    /// Whether the grant carries a raise's stamp, which the first change
    /// that uses the grant removes (a give back may take it again then).
    raise_stamped: bool,
    /// Per touched entry: the stored value as read, and the entry decided.
    entries: BTreeMap<Key, (Vec<u8>, Option<Stored>)>,
}

fn no_limit() -> Result<PoolCheck, RbdError> {
    Ok(PoolCheck { total: u64::MAX, unstored: u64::MAX, ..PoolCheck::default() })
}

/// Decides and writes one batch, again from a fresh read each time another
/// writer got in between; a batch that would pass the shard's grant raises
/// it first (once: what a raise cannot get is refused).
fn commit(target: &Target<'_>, changes: &[Change], room: &RoomFn<'_>) -> Vec<Result<Outcome, RbdError>> {
    let failed = |err: RbdError| changes.iter().map(|_| Err(err.duplicate())).collect();
    let object = target.layout.object(target.shard);
    let mut keys = vec![TOTAL_KEY.to_owned(), GRANT_KEY.to_owned(), GRANT_RAISED_AT_KEY.to_owned(), PENDING_KEY.to_owned()];
    keys.extend(changes.iter().map(|c| c.key().entry()));
    keys.sort();
    keys.dedup();
    let read_pool = || -> Result<PoolCheck, RbdError> {
        let room = room(0)?;
        let granted = budget::granted(target.io)?;
        Ok(PoolCheck { full: room.full, total: room.capacity.total_bytes, unstored: room.capacity.available_bytes, granted })
    };
    // Raises tried (a change of another writer may take what one got), and
    // the room the last one found beyond the grant.
    let (mut raises, mut room_left) = (0, 0);
    for _ in 0..ATTEMPTS {
        let stored = match state::read_raw(target.io, &object, &keys) {
            Ok(values) => values.into_iter().collect::<HashMap<String, Vec<u8>>>(),
            Err(err) => return failed(err),
        };
        let grant = match stored.get(GRANT_KEY).map(|raw| Grant::decode(raw)).transpose() {
            Ok(grant) => grant.unwrap_or_default().bytes,
            Err(err) => return failed(err),
        };
        // Read once an attempt, and only when a change promises more.
        let checked = std::cell::OnceCell::new();
        let pool = || match checked.get_or_init(read_pool) {
            Ok(check) => Ok(check.clone()),
            Err(err) => Err(err.duplicate()),
        };
        if raises < RAISES {
            // What the batch would promise if the grant were no limit.
            let unlimited = Limit { grant: u64::MAX, room_left: 0, pool: &no_limit };
            let (wanted, before) = match decide(&stored, changes, &unlimited) {
                Ok(decision) => (decision.total.1, state::decode_total(&decision.total.0).unwrap_or(0)),
                Err(err) => return failed(err),
            };
            let over_granted = || pool().map(|p| p.over_granted()).unwrap_or(false);
            if wanted > grant || (wanted > before && over_granted()) {
                raises += 1;
                match budget::raise(target.io, target.layout, target.shard, wanted, room, target.deadline) {
                    Ok(Raised::Enough) => {}
                    Ok(Raised::Short { room_left: left }) => (raises, room_left) = (RAISES, left),
                    Err(err) => return failed(err),
                }
                continue;
            }
        }
        let limit = Limit { grant, room_left, pool: &pool };
        let decision = match decide(&stored, changes, &limit) {
            Ok(decision) => decision,
            Err(err) => return failed(err),
        };
        if decision.entries.is_empty() {
            return decision.results;
        }
        match write(target.io, &object, &decision) {
            Ok(()) => return decision.results,
            Err(Errno::ECANCELED) => continue,
            Err(errno) => return failed(RbdError::osd(format!("write {object}"), errno, None)),
        }
    }
    let reason = format!("{object} kept changing under other writers ({ATTEMPTS} attempts)");
    changes.iter().map(|_| Err(RbdError::Refused(BackendError::Contended { step: "commit volume state".into(), reason: reason.clone() }))).collect()
}

/// Applies `changes` in order to the values read, each on what the ones
/// before it left.
fn decide(stored: &HashMap<String, Vec<u8>>, changes: &[Change], room: &Limit<'_>) -> Result<Decision, RbdError> {
    let total_raw = stored.get(TOTAL_KEY).cloned().unwrap_or_default();
    let mut total = state::decode_total(&total_raw)?;
    let mut entries: BTreeMap<Key, (Vec<u8>, Option<Stored>)> = BTreeMap::new();
    let mut results = Vec::with_capacity(changes.len());
    for change in changes {
        let key = change.key();
        let current = match entries.get(&key) {
            Some((_, entry)) => Ok(entry.clone()),
            None => stored.get(&key.entry()).map(|raw| Stored::decode(&key, raw)).transpose(),
        };
        let current = match current {
            Ok(current) => current,
            Err(err) => {
                results.push(Err(err));
                continue;
            }
        };
        let decided = match (change, &current) {
            (Change::Put { name, phase, lineage, record, .. }, Some(Stored::Volume(entry))) => {
                put(key.name(), Some(entry), name.as_deref(), *phase, lineage.as_ref(), record, total, room)
            }
            (Change::Put { name, phase, lineage, record, .. }, None) => put(key.name(), None, name.as_deref(), *phase, lineage.as_ref(), record, total, room),
            (Change::PutSnapshot { entry, .. }, Some(Stored::Snapshot(current))) => put_snapshot(key.name(), Some(current), entry, total, room),
            (Change::PutSnapshot { entry, .. }, None) => put_snapshot(key.name(), None, entry, total, room),
            // Nothing to remove: nothing to write.
            (Change::Remove { .. }, None) => {
                results.push(Ok(Outcome::Removed(None)));
                continue;
            }
            (Change::RemoveSnapshot { .. }, None) => {
                results.push(Ok(Outcome::SnapshotRemoved(None)));
                continue;
            }
            (Change::Remove { generation: Some(generation), .. } | Change::RemoveSnapshot { generation: Some(generation), .. }, Some(found))
                if found.generation() != *generation =>
            {
                results.push(Err(changed(key.name(), found.generation(), *generation)));
                continue;
            }
            (Change::Remove { .. }, Some(Stored::Volume(entry))) => Ok((None, Outcome::Removed(Some(entry.clone())))),
            (Change::RemoveSnapshot { .. }, Some(Stored::Snapshot(entry))) => Ok((None, Outcome::SnapshotRemoved(Some(entry.clone())))),
            // A key holds one kind only (`v.` or `s.`): unreachable unless corrupt.
            (_, Some(_)) => {
                Err(RbdError::Refused(BackendError::corrupt(format!("record state of {}", key.name()), "the stored entry is of another kind than the change")))
            }
        };
        match decided {
            Ok((after, outcome)) => {
                let before = current.as_ref().map_or(0, Stored::promised);
                total = total.saturating_sub(before).saturating_add(after.as_ref().map_or(0, Stored::promised));
                let raw = stored.get(&key.entry()).cloned().unwrap_or_default();
                entries.entry(key).or_insert((raw, None)).1 = after;
                results.push(Ok(outcome));
            }
            Err(err) => results.push(Err(err)),
        }
    }
    let grant = stored.get(GRANT_KEY).cloned().unwrap_or_default();
    let pending = stored.get(PENDING_KEY).cloned().unwrap_or_default();
    let raise_stamped = stored.contains_key(GRANT_RAISED_AT_KEY);
    Ok(Decision { results, total: (total_raw, total), grant, pending, raise_stamped, entries })
}

fn changed(image: &str, stored: u64, expected: u64) -> RbdError {
    RbdError::Refused(BackendError::Contended {
        step: format!("record state of image {image}"),
        reason: format!("its entry changed since it was read (generation {stored}, not {expected})"),
    })
}

/// The entry a put stores, or why it may not.
#[allow(clippy::too_many_arguments)]
fn put(
    image: &str,
    current: Option<&Entry>,
    name: Option<&str>,
    phase: Option<Phase>,
    lineage: Option<&Lineage>,
    record: &ExpansionRecord,
    total: u64,
    room: &Limit<'_>,
) -> Result<(Option<Stored>, Outcome), RbdError> {
    let stored_generation = current.map_or(0, |e| e.record.generation);
    if stored_generation != record.generation {
        return Err(changed(image, stored_generation, record.generation));
    }
    let name = match (current, name) {
        // A deleted volume's name may be taken again.
        (Some(current), Some(name)) if current.name != name && current.live() => {
            return Err(RbdError::Refused(BackendError::NameTaken {
                name: name.to_owned(),
                reason: format!("its image {image} belongs to volume {:?}", current.name),
            }));
        }
        (_, Some(name)) => name.to_owned(),
        (Some(current), None) => current.name.clone(),
        (None, None) => return Err(RbdError::osd(format!("record state of image {image}"), Errno::ENOENT, Some(&record.volume_id))),
    };
    let phase = phase.or(current.map(|e| e.phase)).unwrap_or_default();
    let lineage = lineage.cloned().or_else(|| current.map(|e| e.lineage.clone())).unwrap_or_default();
    let wanted = Entry { name, phase, lineage, record: record.clone() };
    admit(image, wanted.promised().saturating_sub(current.map_or(0, Entry::promised)), total, room)?;
    let mut stored = wanted.clone();
    stored.record.generation += 1;
    Ok((Some(Stored::Volume(stored.clone())), Outcome::Stored(stored)))
}

/// The snapshot entry a put stores, or why it may not.
fn put_snapshot(
    key: &str,
    current: Option<&SnapshotEntry>,
    wanted: &SnapshotEntry,
    total: u64,
    room: &Limit<'_>,
) -> Result<(Option<Stored>, Outcome), RbdError> {
    let stored_generation = current.map_or(0, |e| e.generation);
    if stored_generation != wanted.generation {
        return Err(changed(key, stored_generation, wanted.generation));
    }
    if let Some(current) = current.filter(|c| c.phase != Phase::Deleting && c.name != wanted.name) {
        return Err(RbdError::Refused(BackendError::NameTaken {
            name: wanted.name.clone(),
            reason: format!("its key {key} belongs to snapshot {:?}", current.name),
        }));
    }
    admit(key, wanted.promised().saturating_sub(current.map_or(0, SnapshotEntry::promised)), total, room)?;
    let mut stored = wanted.clone();
    stored.generation += 1;
    stored.updated_unix = swell_storage::expansion::now_unix();
    Ok((Some(Stored::Snapshot(stored.clone())), Outcome::SnapshotStored(stored)))
}

/// Admits `more` promised bytes against the shard's grant, in a pool not
/// full, not granted beyond its total and storing less than its total by
/// `more` (nothing to admit is always fine, also in a full pool).
fn admit(key: &str, more: u64, total: u64, limit: &Limit<'_>) -> Result<(), RbdError> {
    if more == 0 {
        return Ok(());
    }
    let pool = (limit.pool)()?;
    if let Some(reason) = &pool.full {
        tracing::warn!(entry = key, bytes = more, reason, "refusing: pool is full");
        return Err(BackendError::NoSpace { requested: more, available: 0 }.into());
    }
    if pool.over_granted() {
        return Err(BackendError::NoSpace { requested: more, available: 0 }.into());
    }
    if more > pool.unstored {
        return Err(BackendError::NoSpace { requested: more, available: pool.unstored }.into());
    }
    let granted = limit.grant.saturating_sub(total);
    if more > granted {
        return Err(BackendError::NoSpace { requested: more, available: granted.saturating_add(limit.room_left) }.into());
    }
    Ok(())
}

/// Writes a decision in one compound write that first compares every value
/// it was made on (ECANCELED when one changed). The shard's list of entries
/// with work left is rewritten (and compared) only when it changes.
fn write(io: &IoCtx, object: &str, decision: &Decision) -> Result<(), Errno> {
    let mut op = WriteOp::default();
    op.create(false).omap_cmp_eq(TOTAL_KEY, &decision.total.0).omap_cmp_eq(GRANT_KEY, &decision.grant);
    let mut set: Vec<(String, Vec<u8>)> = vec![(TOTAL_KEY.to_owned(), decision.total.1.to_string().into_bytes())];
    let mut removed = Vec::new();
    let was = state::decode_pending(&decision.pending);
    let mut pending = was.clone();
    for (key, (raw, entry)) in &decision.entries {
        op.omap_cmp_eq(&key.entry(), raw);
        match entry {
            Some(entry) => {
                set.push((key.entry(), entry.encode()));
                if entry.pending() {
                    pending.insert(key.entry());
                } else {
                    pending.remove(&key.entry());
                }
            }
            None => {
                removed.push(key.entry());
                pending.remove(&key.entry());
            }
        }
    }
    if pending != was {
        op.omap_cmp_eq(PENDING_KEY, &decision.pending);
        set.push((PENDING_KEY.to_owned(), state::encode_pending(&pending)));
    }
    // Removed only when there, and only by a change that uses the grant:
    // a delete of an absent key still leaves a tombstone in the OSD.
    let promised_before = state::decode_total(&decision.total.0).unwrap_or(0);
    if decision.raise_stamped && decision.total.1 > promised_before {
        removed.push(GRANT_RAISED_AT_KEY.to_owned());
    }
    op.omap_set(&set).omap_rm(&removed);
    op.operate(io, object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_storage::{ExpansionRecord, VolumeId};

    fn entry(name: &str, current: u64, desired: u64) -> Entry {
        let id: VolumeId = "rbd:c:rbd:swell-00000000000000000000000000000000".parse().unwrap();
        Entry {
            name: name.into(),
            phase: Phase::Ready,
            lineage: Lineage::default(),
            record: ExpansionRecord::new(&id, current, current).wishing(current, desired),
        }
    }

    fn put(image: &str, entry: Entry) -> Change {
        Change::Put { image: image.into(), name: Some(entry.name), phase: Some(entry.phase), lineage: None, record: entry.record }
    }

    /// A shard granted `grant` bytes in a pool with no room beyond.
    fn room(grant: u64) -> Limit<'static> {
        Limit { grant, room_left: 0, pool: &no_limit }
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
            Change::Put { image: "a".into(), name: None, phase: None, lineage: None, record: grown },
            Change::Remove { image: "c".into(), generation: None },
        ];
        let b = entry("b", 40, 40);
        let decision = decide(&stored(&[("a", &a), ("b", &b)], 50), &changes, &room(60)).unwrap();
        assert!(decision.results.iter().all(Result::is_ok));
        assert_eq!(decision.total.1, 50 + 15 - 40);
        assert!(matches!(&decision.results[0], Ok(Outcome::Removed(Some(e))) if *e == b));
        assert!(matches!(&decision.results[2], Ok(Outcome::Removed(None))));
        assert_eq!(decision.entries.keys().map(Key::name).collect::<Vec<_>>(), ["a", "b"], "removing nothing writes nothing");
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
        let orphan = Change::Put { image: "z".into(), name: None, phase: None, lineage: None, record: a.record.clone() };
        assert!(decide(&stored(&[], 0), &[orphan], &room(100)).unwrap().results[0].is_err(), "a record needs its entry");
    }

    #[test]
    fn a_deleted_volume_gives_its_bytes_back_and_its_name_may_be_taken_again() {
        let a = entry("a", 40, 40);
        let tombstone = Change::Put { image: "a".into(), name: None, phase: Some(Phase::Deleting), lineage: None, record: a.record.clone() };
        let decision = decide(&stored(&[("a", &a)], 40), &[tombstone], &room(50)).unwrap();
        assert_eq!(decision.total.1, 0);
        let Ok(Outcome::Stored(deleted)) = &decision.results[0] else { panic!("{:?}", decision.results[0].is_ok()) };
        let recreate =
            Change::Put { image: "a".into(), name: Some("other".into()), phase: Some(Phase::Creating), lineage: None, record: deleted.record.clone() };
        let decision = decide(&stored(&[("a", deleted)], 0), &[recreate], &room(50)).unwrap();
        assert!(decision.results[0].is_ok());
        assert_eq!(decision.total.1, 40);
        let stale_removal = Change::Remove { image: "a".into(), generation: Some(0) };
        assert!(decide(&stored(&[("a", deleted)], 0), &[stale_removal], &room(50)).unwrap().results[0].is_err());
    }

    #[test]
    fn snapshots_promise_their_size_beside_volumes_and_give_it_back_when_deleted() {
        let a = entry("a", 40, 40);
        let snap = SnapshotEntry {
            name: "s".into(),
            source_volume: "rbd:c:rbd:a".parse().unwrap(),
            source_image: "a".into(),
            source_image_id: "id".into(),
            size_bytes: 40,
            created_unix_nanos: 0,
            phase: Phase::Creating,
            depth: 0,
            updated_unix: 0,
            generation: 0,
        };
        let cut = Change::PutSnapshot { key: "k".into(), entry: snap.clone() };
        let full = decide(&stored(&[("a", &a)], 40), std::slice::from_ref(&cut), &room(60)).unwrap();
        assert!(matches!(&full.results[0], Err(RbdError::Refused(BackendError::NoSpace { requested: 40, available: 20 }))), "{:?}", full.results[0]);
        let decision = decide(&stored(&[("a", &a)], 40), &[cut], &room(100)).unwrap();
        assert_eq!(decision.total.1, 80);
        let Ok(Outcome::SnapshotStored(made)) = &decision.results[0] else { panic!("{:?}", decision.results[0]) };
        assert_eq!(made.generation, 1);
        assert_eq!(decision.entries.keys().next(), Some(&Key::Snapshot("k".into())));
        let mut map = stored(&[("a", &a)], 80);
        map.insert(Key::Snapshot("k".into()).entry(), made.encode());
        let other_name = Change::PutSnapshot { key: "k".into(), entry: SnapshotEntry { name: "t".into(), ..made.clone() } };
        assert!(decide(&map, &[other_name], &room(100)).unwrap().results[0].is_err(), "a live snapshot keeps its name");
        let stale = Change::PutSnapshot { key: "k".into(), entry: snap.clone() };
        assert!(decide(&map, &[stale], &room(100)).unwrap().results[0].is_err(), "a writer that read an older entry");
        let deleted = Change::PutSnapshot { key: "k".into(), entry: SnapshotEntry { phase: Phase::Deleting, ..made.clone() } };
        assert_eq!(decide(&map, &[deleted], &room(0)).unwrap().total.1, 40, "a deleted snapshot promises nothing");
        let removed = decide(&map, &[Change::RemoveSnapshot { key: "k".into(), generation: Some(made.generation) }], &room(0)).unwrap();
        assert!(matches!(&removed.results[0], Ok(Outcome::SnapshotRemoved(Some(_)))));
        assert_eq!(removed.total.1, 40);
    }

    #[test]
    fn a_write_keeps_the_lineage_it_does_not_name() {
        let mut clone = entry("a", 10, 10);
        clone.lineage = Lineage { source: None, depth: 2, flatten: true };
        let grow = Change::Put { image: "a".into(), name: None, phase: None, lineage: None, record: clone.record.clone().wishing(10, 20) };
        let decision = decide(&stored(&[("a", &clone)], 10), &[grow], &room(100)).unwrap();
        let Ok(Outcome::Stored(after)) = &decision.results[0] else { panic!("{:?}", decision.results[0]) };
        assert_eq!(after.lineage, clone.lineage);
    }

    #[test]
    fn a_full_pool_refuses_new_bytes_but_not_changes_that_promise_none() {
        let flagged = || Ok(PoolCheck { full: Some("flag full".to_owned()), total: 100, unstored: 100, granted: 0 });
        let full = Limit { grant: 100, room_left: 0, pool: &flagged };
        let a = entry("a", 10, 10);
        let settle = put("a", a.clone());
        let grow = put("b", entry("b", 0, 5));
        let decision = decide(&stored(&[("a", &a)], 10), &[settle, grow], &full).unwrap();
        assert!(decision.results[0].is_ok());
        assert!(matches!(&decision.results[1], Err(RbdError::Refused(BackendError::NoSpace { available: 0, .. }))));
    }
}
