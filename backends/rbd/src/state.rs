//! What Swell remembers about a pool's volumes, kept in the pool itself,
//! spread over the shard objects of the pool's layout ([`crate::layout`]):
//! each entry lives in the shard its name hashes to, whose omap holds
//!
//! - `v.<image>`: the volume's entry (its CO name, its phase and its
//!   expansion record, JSON), from the moment its create is admitted until
//!   its image is in the trash;
//! - `s.<snapshot key>`: a snapshot's entry (its CO name, its source image
//!   and that image's RBD id, its size, phase and parent depth, JSON);
//! - `pending`: the keys of the entries with work left (a grow short of its
//!   wish, a size its clients were not told, a create not confirmed, a
//!   delete not finished), one a line, so the background work reads only
//!   those; rewritten in place, never a key removed and added per change;
//! - `total`: the bytes the shard's entries promise (a volume: the larger
//!   of its wish and its size; a snapshot: its size), kept by every change
//!   in the same atomic write as the entry it changes;
//! - `grant`: the bytes the pool's budget lets the shard promise
//!   ([`crate::budget`]), which `total` never passes.
//!
//! Why objects in the pool, not image metadata: a create must be admitted
//! (its bytes promised) before its image exists, the pending entries must
//! be found without opening every image, and the total must change in the
//! same step as the entry. Omap gives all three in one compound write with
//! comparisons (docs/rbd-state.md). Every write goes through
//! [`super::commit`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use swell_storage::{BackendError, ContentSource, ExpansionRecord, VolumeId};

use crate::errors::RbdError;
use crate::ffi::{Errno, IoCtx, OmapPage, ReadOp};
use crate::layout::{Layout, STATE_OBJECT};

/// The omap key of the bytes a shard's entries promise.
pub(crate) const TOTAL_KEY: &str = "total";
/// The omap key of the bytes the budget granted the shard.
pub(crate) const GRANT_KEY: &str = "grant";
/// The omap key of when the shard's grant was last raised (milliseconds
/// since the Unix epoch, by the raiser's clock).
pub(crate) const GRANT_RAISED_AT_KEY: &str = "grant-raised-at";
/// The omap key listing the shard's entries with work left.
pub(crate) const PENDING_KEY: &str = "pending";
const ENTRY_PREFIX: &str = "v.";
const PENDING_PREFIX: &str = "p.";
const SNAPSHOT_PREFIX: &str = "s.";
const SNAPSHOT_PENDING_PREFIX: &str = "ps.";
/// Keys read or listed per omap call.
const PAGE: u64 = 512;

/// The omap key of an image's entry.
pub(crate) fn entry_key(image: &str) -> String {
    format!("{ENTRY_PREFIX}{image}")
}

/// The omap key marking an image's entry pending in the one object of
/// releases before sharding (whose shards list them under [`PENDING_KEY`]).
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn pending_key(image: &str) -> String {
    format!("{PENDING_PREFIX}{image}")
}

/// One entry of the state object: a volume's (by image) or a snapshot's (by key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Key {
    /// The entry of a volume's image.
    Volume(String),
    /// The entry of a snapshot.
    Snapshot(String),
}

impl Key {
    /// The omap key of the entry.
    pub(crate) fn entry(&self) -> String {
        match self {
            Key::Volume(image) => entry_key(image),
            Key::Snapshot(key) => format!("{SNAPSHOT_PREFIX}{key}"),
        }
    }

    /// The entry a stored omap key (an entry's, or a pending mark of the
    /// one object before sharding) belongs to; `None` for other keys.
    pub(crate) fn of_stored(stored: &str) -> Option<Key> {
        let volume = stored.strip_prefix(ENTRY_PREFIX).or_else(|| stored.strip_prefix(PENDING_PREFIX)).map(|n| Key::Volume(n.to_owned()));
        volume.or_else(|| stored.strip_prefix(SNAPSHOT_PREFIX).or_else(|| stored.strip_prefix(SNAPSHOT_PENDING_PREFIX)).map(|n| Key::Snapshot(n.to_owned())))
    }

    /// The image or snapshot key, for messages.
    pub(crate) fn name(&self) -> &str {
        match self {
            Key::Volume(name) | Key::Snapshot(name) => name,
        }
    }
}

/// Where a volume is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    /// Its bytes are promised and its image is being made (or was, and the
    /// background work has not confirmed it yet).
    Creating,
    /// A volume.
    #[default]
    Ready,
    /// Deleted: it promises nothing any more; its image goes to the trash
    /// in the background, then the entry goes.
    Deleting,
}

/// Where a volume's data came from, and what reading it costs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lineage {
    /// The snapshot or volume it was made from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ContentSource>,
    /// Clone parents a read may go through below its own data (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
    /// Deeper than the limit: the background work flattens it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flatten: bool,
}

fn is_zero(depth: &u32) -> bool {
    *depth == 0
}

/// One volume as the pool's state object records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The CO's name for the volume (the idempotency key of CreateVolume).
    pub name: String,
    /// Where it is in its life.
    #[serde(default)]
    pub phase: Phase,
    /// Where its data came from.
    #[serde(flatten)]
    pub lineage: Lineage,
    /// Its expansion state.
    #[serde(flatten)]
    pub record: ExpansionRecord,
}

impl Entry {
    /// Bytes this volume counts against the pool.
    pub(crate) fn promised(&self) -> u64 {
        match self.phase {
            Phase::Deleting => 0,
            Phase::Creating | Phase::Ready => self.record.promised_bytes(),
        }
    }

    /// Whether background work is owed here (and the entry marked for it).
    pub(crate) fn pending(&self) -> bool {
        self.phase != Phase::Ready || self.record.pending() || (self.lineage.flatten && self.live())
    }

    /// Whether it is a volume (made or being made), not a deleted one.
    pub(crate) fn live(&self) -> bool {
        self.phase != Phase::Deleting
    }

    /// The stored form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| unreachable!("an entry is plain data"))
    }

    /// Parses a stored entry.
    pub(crate) fn decode(image: &str, raw: &[u8]) -> Result<Entry, RbdError> {
        serde_json::from_slice(raw).map_err(|e| corrupt(&format!("entry of image {image}"), e))
    }
}

/// One snapshot as the pool's state object records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotEntry {
    /// The CO's name (the idempotency key of CreateSnapshot).
    pub name: String,
    /// The volume id it was cut from, as the CO knows it.
    pub source_volume: VolumeId,
    /// The source's image name when it was cut.
    pub source_image: String,
    /// The source image's RBD id: it names the image for good, also after
    /// its volume was deleted and the image kept under another name.
    pub source_image_id: String,
    /// The source's size when it was cut.
    pub size_bytes: u64,
    /// When it was cut (nanoseconds since the epoch; 0 before).
    #[serde(default)]
    pub created_unix_nanos: u64,
    /// Where it is in its life (`creating` until the RBD snapshot exists).
    pub phase: Phase,
    /// The source's parent depth when it was cut.
    #[serde(default)]
    pub depth: u32,
    /// When the entry was last written (seconds since the epoch).
    pub updated_unix: u64,
    /// Bumped by every write, as a volume record's.
    #[serde(default)]
    pub generation: u64,
}

impl SnapshotEntry {
    /// Bytes it counts against the pool: it may come to hold its whole size
    /// (its source rewritten), so all of it until it is deleted.
    pub(crate) fn promised(&self) -> u64 {
        match self.phase {
            Phase::Deleting => 0,
            Phase::Creating | Phase::Ready => self.size_bytes,
        }
    }

    /// Whether background work is owed here.
    pub(crate) fn pending(&self) -> bool {
        self.phase != Phase::Ready
    }

    /// The stored form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| unreachable!("an entry is plain data"))
    }

    /// Parses a stored entry.
    pub(crate) fn decode(key: &str, raw: &[u8]) -> Result<SnapshotEntry, RbdError> {
        serde_json::from_slice(raw).map_err(|e| corrupt(&format!("entry of snapshot {key}"), e))
    }
}

/// An entry of either kind, as a change stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    /// A volume's.
    Volume(Entry),
    /// A snapshot's.
    Snapshot(SnapshotEntry),
}

impl Stored {
    /// Parses the stored value of `key`.
    pub(crate) fn decode(key: &Key, raw: &[u8]) -> Result<Stored, RbdError> {
        match key {
            Key::Volume(image) => Entry::decode(image, raw).map(Stored::Volume),
            Key::Snapshot(snapshot) => SnapshotEntry::decode(snapshot, raw).map(Stored::Snapshot),
        }
    }

    /// The stored form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Stored::Volume(entry) => entry.encode(),
            Stored::Snapshot(entry) => entry.encode(),
        }
    }

    /// Bytes it counts against the pool.
    pub(crate) fn promised(&self) -> u64 {
        match self {
            Stored::Volume(entry) => entry.promised(),
            Stored::Snapshot(entry) => entry.promised(),
        }
    }

    /// Whether background work is owed here.
    pub(crate) fn pending(&self) -> bool {
        match self {
            Stored::Volume(entry) => entry.pending(),
            Stored::Snapshot(entry) => entry.pending(),
        }
    }

    /// Its generation.
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Stored::Volume(entry) => entry.record.generation,
            Stored::Snapshot(entry) => entry.generation,
        }
    }
}

/// Parses a stored byte count (absent: none).
pub(crate) fn decode_total(raw: &[u8]) -> Result<u64, RbdError> {
    if raw.is_empty() {
        return Ok(0);
    }
    std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()).ok_or_else(|| corrupt("promised total", String::from_utf8_lossy(raw)))
}

pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> RbdError {
    RbdError::Refused(BackendError::corrupt(format!("read {what} in {STATE_OBJECT}"), format!("unreadable: {detail}")))
}

fn read_error(what: &str, errno: Errno) -> RbdError {
    RbdError::osd(format!("read {what} of {STATE_OBJECT}"), errno, None)
}

/// Raw values of `keys` in object `oid` (absent ones left out); a missing
/// object holds none.
pub(crate) fn read_raw(io: &IoCtx, oid: &str, keys: &[String]) -> Result<Vec<(String, Vec<u8>)>, RbdError> {
    let mut values = Vec::new();
    for chunk in keys.chunks(PAGE as usize) {
        let mut op = ReadOp::default();
        op.omap_get(chunk);
        match op.operate(io, oid) {
            Ok(mut out) => values.extend(out.omaps.pop().unwrap_or_default().entries),
            Err(Errno::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(read_error(&format!("keys of {oid}"), e)),
        }
    }
    Ok(values)
}

/// The stored value of `key`'s entry, read now from its shard.
fn read_one(io: &IoCtx, layout: &Layout, key: &Key) -> Result<Option<Vec<u8>>, RbdError> {
    Ok(read_raw(io, &layout.object_of(key.name()), &[key.entry()])?.into_iter().next().map(|(_, raw)| raw))
}

/// An image's entry, read now.
pub(crate) fn read_entry(io: &IoCtx, layout: &Layout, image: &str) -> Result<Option<Entry>, RbdError> {
    read_one(io, layout, &Key::Volume(image.to_owned()))?.map(|raw| Entry::decode(image, &raw)).transpose()
}

/// A snapshot's entry, read now.
pub(crate) fn read_snapshot(io: &IoCtx, layout: &Layout, key: &str) -> Result<Option<SnapshotEntry>, RbdError> {
    read_one(io, layout, &Key::Snapshot(key.to_owned()))?.map(|raw| SnapshotEntry::decode(key, &raw)).transpose()
}

/// The bytes Swell promised in the pool, the sum of its shards' totals,
/// read now (the shards at once: one round trip, not one per shard).
pub(crate) fn read_total(io: &IoCtx, layout: &Layout) -> Result<u64, RbdError> {
    let totals = layout.each_object(|oid| match read_raw(io, oid, &[TOTAL_KEY.to_owned()])?.into_iter().next() {
        Some((_, raw)) => decode_total(&raw),
        None => Ok(0),
    });
    totals.into_iter().try_fold(0u64, |sum, total| Ok(sum.saturating_add(total?)))
}

/// Up to `limit` keys with `prefix` after `after` (a full key), in order.
fn page_keys(io: &IoCtx, oid: &str, prefix: &str, after: &str, limit: u64) -> Result<OmapPage, RbdError> {
    let mut op = ReadOp::default();
    op.omap_page(after, prefix, limit).map_err(|e| read_error(prefix, e))?;
    match op.operate(io, oid) {
        Ok(mut out) => Ok(out.omaps.pop().unwrap_or_default()),
        Err(Errno::ENOENT) => Ok(OmapPage::default()),
        Err(e) => Err(read_error(&format!("{prefix} of {oid}"), e)),
    }
}

/// The one omap pager: the keys of `oid` with `prefix` after `after` (a
/// full key, empty for the first), in order, a page at a time. `visit` is
/// given each key (without the prefix) and value and says whether it
/// counts; the walk ends once `limit` have counted or no key is left.
fn walk(io: &IoCtx, oid: &str, prefix: &str, after: String, limit: usize, mut visit: impl FnMut(&str, Vec<u8>) -> bool) -> Result<(), RbdError> {
    let (mut after, mut counted) = (after, 0);
    while counted < limit {
        let want = (limit - counted).min(PAGE as usize) as u64;
        let OmapPage { entries, more } = page_keys(io, oid, prefix, &after, want)?;
        let Some((last, _)) = entries.last() else { break };
        after = last.clone();
        for (key, value) in entries {
            if let Some(name) = key.strip_prefix(prefix)
                && visit(name, value)
            {
                counted += 1;
            }
        }
        if !more {
            break;
        }
    }
    Ok(())
}

/// Decodes a listed entry; an unreadable one is logged and skipped so it
/// cannot hide the others.
fn decoded<T>(what: &str, name: &str, decoded: Result<T, RbdError>) -> Option<T> {
    match decoded {
        Ok(entry) => Some(entry),
        Err(err) => {
            tracing::error!(name, error = ?err, "skipping an unreadable {what} entry of {STATE_OBJECT}");
            None
        }
    }
}

/// A listed entry: its name (an image, a snapshot key) and the entry, or
/// why it cannot be read; the caller reports an unreadable one.
pub(crate) type Listed<T> = (String, Result<T, RbdError>);

/// The shards' lists, each of `(name, entry)`, as one in name order; the
/// first shard that could not be read fails it.
fn merged<T>(shards: Vec<Result<Vec<(String, T)>, RbdError>>) -> Result<Vec<(String, T)>, RbdError> {
    let mut all = Vec::new();
    for shard in shards {
        all.extend(shard?);
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all)
}

/// Parses a shard's list of entries with work left (absent: none).
pub(crate) fn decode_pending(raw: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(raw).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// The stored form of a list of entries with work left.
pub(crate) fn encode_pending(pending: &BTreeSet<String>) -> Vec<u8> {
    pending.iter().map(String::as_str).collect::<Vec<_>>().join("\n").into_bytes()
}

/// The entries of every shard with work left whose keys start with
/// `entry`, decoded by `decode`: per shard, one read of its list and one
/// per 512 entries on it, however many settled entries it holds. In the one
/// object before sharding they are marked by keys with the prefix `pending`.
fn marked<T: Send>(
    io: &IoCtx,
    layout: &Layout,
    pending: &str,
    entry: &str,
    decode: impl Fn(&str, &[u8]) -> Result<T, RbdError> + Sync,
) -> Result<Vec<Listed<T>>, RbdError> {
    let shards = layout.each_object(|oid| {
        let mut keys = Vec::new();
        if *layout == Layout::Unsharded {
            walk(io, oid, pending, String::new(), usize::MAX, |name, _| {
                keys.push(format!("{entry}{name}"));
                true
            })?;
        } else if let Some((_, raw)) = read_raw(io, oid, &[PENDING_KEY.to_owned()])?.into_iter().next() {
            keys.extend(decode_pending(&raw).into_iter().filter(|key| key.starts_with(entry)));
        }
        let listed = read_raw(io, oid, &keys)?;
        Ok(listed
            .into_iter()
            .filter_map(|(key, raw)| {
                let name = key.strip_prefix(entry)?.to_owned();
                let decoded = decode(&name, &raw);
                Some((name, decoded))
            })
            .collect::<Vec<_>>())
    });
    merged(shards)
}

/// The entries marked pending, in image order.
pub(crate) fn pending_entries(io: &IoCtx, layout: &Layout) -> Result<Vec<Listed<Entry>>, RbdError> {
    marked(io, layout, PENDING_PREFIX, ENTRY_PREFIX, Entry::decode)
}

/// The snapshot entries marked pending (an unreadable one is logged).
pub(crate) fn pending_snapshots(io: &IoCtx, layout: &Layout) -> Result<Vec<(String, SnapshotEntry)>, RbdError> {
    let listed = marked(io, layout, SNAPSHOT_PENDING_PREFIX, SNAPSHOT_PREFIX, SnapshotEntry::decode)?;
    Ok(listed.into_iter().filter_map(|(key, entry)| decoded("snapshot", &key, entry).map(|entry| (key, entry))).collect())
}

/// Every snapshot entry of the pool, in key order.
pub(crate) fn all_snapshots(io: &IoCtx, layout: &Layout) -> Result<Vec<(String, SnapshotEntry)>, RbdError> {
    let shards = layout.each_object(|oid| {
        let mut snapshots = Vec::new();
        walk(io, oid, SNAPSHOT_PREFIX, String::new(), usize::MAX, |key, raw| {
            if let Some(entry) = decoded("snapshot", key, SnapshotEntry::decode(key, &raw)) {
                snapshots.push((key.to_owned(), entry));
            }
            true
        })?;
        Ok(snapshots)
    });
    merged(shards)
}

/// Up to `limit` entries that `wanted` keeps, and unreadable ones, after
/// `after` (an image name), in image order; the others are skipped, not
/// counted. Each shard is read from `after` for at most `limit` of them,
/// and the shards' lists merged.
pub(crate) fn entries_after(
    io: &IoCtx,
    layout: &Layout,
    after: Option<&str>,
    limit: usize,
    wanted: impl Fn(&Entry) -> bool + Sync,
) -> Result<Vec<Listed<Entry>>, RbdError> {
    let from = after.map(entry_key).unwrap_or_default();
    let shards = layout.each_object(|oid| {
        let mut entries = Vec::new();
        walk(io, oid, ENTRY_PREFIX, from.clone(), limit, |image, raw| {
            let entry = Entry::decode(image, &raw);
            if entry.as_ref().is_ok_and(|e| !wanted(e)) {
                return false;
            }
            entries.push((image.to_owned(), entry));
            true
        })?;
        Ok(entries)
    });
    let mut all = merged(shards)?;
    all.truncate(limit);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_storage::VolumeId;

    #[test]
    fn entries_round_trip_and_promise_the_larger_of_wish_and_size() {
        let id: VolumeId = "rbd:c:rbd:swell-00000000000000000000000000000000".parse().unwrap();
        let entry = Entry { name: "pvc-1".into(), phase: Phase::Ready, lineage: Lineage::default(), record: ExpansionRecord::new(&id, 10, 10).wishing(10, 30) };
        assert_eq!(entry.promised(), 30);
        assert!(entry.pending());
        let decoded = Entry::decode("img", &entry.encode()).unwrap();
        assert_eq!(decoded, entry);
        assert!(Entry::decode("img", b"{").is_err());
        let settled = Entry { record: ExpansionRecord::new(&id, 10, 10), ..entry };
        assert!(!settled.pending());
        let deleted = Entry { phase: Phase::Deleting, ..settled.clone() };
        assert_eq!(deleted.promised(), 0, "a deleted volume promises nothing");
        assert!(deleted.pending() && !deleted.live());
        assert!(Entry { phase: Phase::Creating, ..settled }.pending());
    }

    #[test]
    fn entries_before_lineage_read_as_plain_volumes_and_lineage_round_trips() {
        let id: VolumeId = "rbd:c:rbd:swell-00000000000000000000000000000000".parse().unwrap();
        let mut old = serde_json::to_value(ExpansionRecord::new(&id, 10, 10)).unwrap();
        old["name"] = "pvc".into();
        let decoded = Entry::decode("img", old.to_string().as_bytes()).unwrap();
        assert_eq!(decoded.lineage, Lineage::default());
        let snapshot: swell_storage::SnapshotId = format!("rbd:c:rbd:{}", swell_storage::snapshot::snapshot_key("s")).parse().unwrap();
        let clone = Entry { lineage: Lineage { source: Some(ContentSource::Snapshot(snapshot)), depth: 3, flatten: true }, ..decoded };
        assert_eq!(Entry::decode("img", &clone.encode()).unwrap(), clone);
        assert!(clone.pending(), "a volume to flatten is background work");
        let snap = SnapshotEntry {
            name: "s".into(),
            source_volume: id.clone(),
            source_image: "swell-00".into(),
            source_image_id: "abc".into(),
            size_bytes: 40,
            created_unix_nanos: 0,
            phase: Phase::Creating,
            depth: 0,
            updated_unix: 0,
            generation: 0,
        };
        assert_eq!((snap.promised(), snap.pending()), (40, true));
        assert_eq!(SnapshotEntry::decode("k", &snap.encode()).unwrap(), snap);
        assert_eq!(SnapshotEntry { phase: Phase::Deleting, ..snap }.promised(), 0);
    }

    #[test]
    fn totals_parse_strictly() {
        assert_eq!(decode_total(b"").unwrap(), 0);
        assert_eq!(decode_total(b"1073741824").unwrap(), 1 << 30);
        for bad in [&b"-1"[..], b"1e9", b"abc", b" 5"] {
            assert!(decode_total(bad).is_err(), "{bad:?}");
        }
        assert_eq!(entry_key("swell-ab"), "v.swell-ab");
        assert_eq!(pending_key("swell-ab"), "p.swell-ab");
        let snapshot = Key::Snapshot("snap-ab".into());
        assert_eq!(snapshot.entry(), "s.snap-ab");
        for (stored, key) in
            [("p.a", Key::Volume("a".into())), ("v.a", Key::Volume("a".into())), ("ps.k", Key::Snapshot("k".into())), ("s.k", Key::Snapshot("k".into()))]
        {
            assert_eq!(Key::of_stored(stored), Some(key), "{stored}");
        }
        assert_eq!((Key::of_stored("total"), Key::of_stored("grant"), Key::of_stored("pending")), (None, None, None));
        let pending: BTreeSet<String> = ["v.b", "s.k", "v.a"].into_iter().map(str::to_owned).collect();
        assert_eq!(decode_pending(&encode_pending(&pending)), pending);
        assert!(decode_pending(b"").is_empty());
    }

    #[test]
    fn entries_written_before_typed_ids_read_back_and_write_back_the_same() {
        let image = "swell-0a1b2c3d4e5f60718293a4b5c6d7e8f9";
        let volume = format!(
            r#"{{"name":"pvc-1","phase":"ready","volume_id":"rbd:ceph-a:rbd:{image}","desired_bytes":20,"current_bytes":10,"announced_bytes":10,"last_error":null,"desired_since_unix":5,"updated_unix":6,"generation":2}}"#
        );
        let entry = Entry::decode(image, volume.as_bytes()).unwrap();
        assert_eq!(entry.record.volume_id.to_string(), format!("rbd:ceph-a:rbd:{image}"));
        assert_eq!(String::from_utf8(entry.encode()).unwrap(), volume);
        let snapshot = format!(
            r#"{{"name":"s","source_volume":"rbd:ceph-a:rbd:{image}","source_image":"{image}","source_image_id":"10a2","size_bytes":10,"created_unix_nanos":7,"phase":"ready","depth":1,"updated_unix":8,"generation":1}}"#
        );
        let snap = SnapshotEntry::decode("snap-0", snapshot.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(snap.encode()).unwrap(), snapshot);
        let damaged = volume.replace("rbd:ceph-a", "rbd:Ceph-A");
        assert!(Entry::decode(image, damaged.as_bytes()).is_err(), "an id that does not parse makes the entry unreadable");
    }
}
