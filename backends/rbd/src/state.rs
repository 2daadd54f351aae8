//! What Swell remembers about a pool's volumes, kept in the pool itself:
//! one RADOS object, `swell.state`, whose omap holds
//!
//! - `v.<image>`: the volume's entry (its CO name, its phase and its
//!   expansion record, JSON), from the moment its create is admitted until
//!   its image is in the trash;
//! - `p.<image>`: present while that entry has work left (a grow short of
//!   its wish, a size its clients were not told, a create not confirmed, a
//!   delete not finished), so the background work reads only those;
//! - `s.<snapshot key>`: a snapshot's entry (its CO name, its source image
//!   and that image's RBD id, its size, phase and parent depth, JSON), and
//!   `ps.<snapshot key>` while it has work left, as for volumes;
//! - `total`: the bytes Swell has promised in the pool, the sum of every
//!   entry's promise (a volume: the larger of its wish and its size; a
//!   snapshot: its size), kept by every change in the same atomic write as
//!   the entry it changes.
//!
//! Why one object in the pool, not image metadata: a create must be
//! admitted (its bytes promised) before its image exists, the pending
//! entries must be found without opening every image, and the total must
//! change in the same step as the entry. Omap on one object gives all three
//! in one compound write with comparisons (docs/rbd-state.md). Every write
//! goes through [`super::commit`].

use serde::{Deserialize, Serialize};
use swell_storage::{BackendError, ContentSource, ExpansionRecord, VolumeId};

use crate::errors::RbdError;
use crate::ffi::{Errno, IoCtx, OmapPage, ReadOp};

/// The pool's state object.
pub(crate) const STATE_OBJECT: &str = "swell.state";
/// The omap key of the promised total.
pub(crate) const TOTAL_KEY: &str = "total";
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

/// The omap key marking an image's entry pending.
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

    /// The omap key marking the entry pending.
    pub(crate) fn pending(&self) -> String {
        match self {
            Key::Volume(image) => pending_key(image),
            Key::Snapshot(key) => format!("{SNAPSHOT_PENDING_PREFIX}{key}"),
        }
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

/// Parses the stored total (absent: nothing promised yet).
pub(crate) fn decode_total(raw: &[u8]) -> Result<u64, RbdError> {
    if raw.is_empty() {
        return Ok(0);
    }
    std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()).ok_or_else(|| corrupt("promised total", String::from_utf8_lossy(raw)))
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> RbdError {
    RbdError::Refused(BackendError::corrupt(format!("read {what} in {STATE_OBJECT}"), format!("unreadable: {detail}")))
}

fn read_error(what: &str, errno: Errno) -> RbdError {
    RbdError::osd(format!("read {what} of {STATE_OBJECT}"), errno, None)
}

/// Whether this client may read the pool's state object. A cephx user kept
/// to its own pools (`osd 'profile rbd pool=<pool>'`, as deploy/ documents)
/// gets EPERM from every other pool, where it can have no volume either;
/// any other answer is left to the read that follows.
pub(crate) fn readable(io: &IoCtx) -> bool {
    let mut op = ReadOp::default();
    op.omap_get(&[TOTAL_KEY.to_owned()]);
    !matches!(op.operate(io, STATE_OBJECT), Err(Errno::EPERM))
}

/// Raw values of `keys` (absent ones left out); a missing object holds none.
pub(crate) fn read_raw(io: &IoCtx, keys: &[String]) -> Result<Vec<(String, Vec<u8>)>, RbdError> {
    let mut values = Vec::new();
    for chunk in keys.chunks(PAGE as usize) {
        let mut op = ReadOp::default();
        op.omap_get(chunk);
        match op.operate(io, STATE_OBJECT) {
            Ok(mut out) => values.extend(out.omaps.pop().unwrap_or_default().entries),
            Err(Errno::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(read_error("keys", e)),
        }
    }
    Ok(values)
}

/// An image's entry, read now.
pub(crate) fn read_entry(io: &IoCtx, image: &str) -> Result<Option<Entry>, RbdError> {
    read_raw(io, &[entry_key(image)])?.into_iter().next().map(|(_, raw)| Entry::decode(image, &raw)).transpose()
}

/// The promised total, read now.
pub(crate) fn read_total(io: &IoCtx) -> Result<u64, RbdError> {
    match read_raw(io, &[TOTAL_KEY.to_owned()])?.into_iter().next() {
        Some((_, raw)) => decode_total(&raw),
        None => Ok(0),
    }
}

/// Up to `limit` keys with `prefix` after `after` (a full key), in order.
fn page_keys(io: &IoCtx, prefix: &str, after: &str, limit: u64) -> Result<OmapPage, RbdError> {
    let mut op = ReadOp::default();
    op.omap_page(after, prefix, limit).map_err(|e| read_error(prefix, e))?;
    match op.operate(io, STATE_OBJECT) {
        Ok(mut out) => Ok(out.omaps.pop().unwrap_or_default()),
        Err(Errno::ENOENT) => Ok(OmapPage::default()),
        Err(e) => Err(read_error(prefix, e)),
    }
}

/// The one omap pager: the keys with `prefix` after `after` (a full key,
/// empty for the first), in order, a page at a time. `visit` is given each
/// key (without the prefix) and value and says whether it counts; the walk
/// ends once `limit` have counted or no key is left.
fn walk(io: &IoCtx, prefix: &str, after: String, limit: usize, mut visit: impl FnMut(&str, Vec<u8>) -> bool) -> Result<(), RbdError> {
    let (mut after, mut counted) = (after, 0);
    while counted < limit {
        let want = (limit - counted).min(PAGE as usize) as u64;
        let OmapPage { entries, more } = page_keys(io, prefix, &after, want)?;
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

/// The names after `prefix` of every key with it.
fn all_marked(io: &IoCtx, prefix: &str) -> Result<Vec<String>, RbdError> {
    let mut names = Vec::new();
    walk(io, prefix, String::new(), usize::MAX, |name, _| {
        names.push(name.to_owned());
        true
    })?;
    Ok(names)
}

/// A listed entry: its name (an image, a snapshot key) and the entry, or
/// why it cannot be read; the caller reports an unreadable one.
pub(crate) type Listed<T> = (String, Result<T, RbdError>);

/// The entries of `keys` (full keys), decoded by `decode`.
fn read_decoded<T>(io: &IoCtx, prefix: &str, keys: &[String], decode: impl Fn(&str, &[u8]) -> Result<T, RbdError>) -> Result<Vec<Listed<T>>, RbdError> {
    let listed = read_raw(io, keys)?;
    Ok(listed
        .into_iter()
        .filter_map(|(key, raw)| {
            let name = key.strip_prefix(prefix)?.to_owned();
            let entry = decode(&name, &raw);
            Some((name, entry))
        })
        .collect())
}

/// The entries marked pending: two reads per 512 of them, however many
/// settled entries the pool holds.
pub(crate) fn pending_entries(io: &IoCtx) -> Result<Vec<Listed<Entry>>, RbdError> {
    let keys: Vec<String> = all_marked(io, PENDING_PREFIX)?.iter().map(|i| entry_key(i)).collect();
    read_decoded(io, ENTRY_PREFIX, &keys, Entry::decode)
}

/// The snapshot entries marked pending (an unreadable one is logged).
pub(crate) fn pending_snapshots(io: &IoCtx) -> Result<Vec<(String, SnapshotEntry)>, RbdError> {
    let keys: Vec<String> = all_marked(io, SNAPSHOT_PENDING_PREFIX)?.iter().map(|k| Key::Snapshot(k.clone()).entry()).collect();
    let listed = read_decoded(io, SNAPSHOT_PREFIX, &keys, SnapshotEntry::decode)?;
    Ok(listed.into_iter().filter_map(|(key, entry)| decoded("snapshot", &key, entry).map(|entry| (key, entry))).collect())
}

/// A snapshot's entry, read now.
pub(crate) fn read_snapshot(io: &IoCtx, key: &str) -> Result<Option<SnapshotEntry>, RbdError> {
    read_raw(io, &[Key::Snapshot(key.to_owned()).entry()])?.into_iter().next().map(|(_, raw)| SnapshotEntry::decode(key, &raw)).transpose()
}

/// Every snapshot entry of the pool, in key order.
pub(crate) fn all_snapshots(io: &IoCtx) -> Result<Vec<(String, SnapshotEntry)>, RbdError> {
    let mut snapshots = Vec::new();
    walk(io, SNAPSHOT_PREFIX, String::new(), usize::MAX, |key, raw| {
        if let Some(entry) = decoded("snapshot", key, SnapshotEntry::decode(key, &raw)) {
            snapshots.push((key.to_owned(), entry));
        }
        true
    })?;
    Ok(snapshots)
}

/// Up to `limit` entries that `wanted` keeps, and unreadable ones, after
/// `after` (an image name), in image order; the others are skipped, not
/// counted.
pub(crate) fn entries_after(io: &IoCtx, after: Option<&str>, limit: usize, wanted: impl Fn(&Entry) -> bool) -> Result<Vec<Listed<Entry>>, RbdError> {
    let mut entries = Vec::new();
    walk(io, ENTRY_PREFIX, after.map(entry_key).unwrap_or_default(), limit, |image, raw| {
        let entry = Entry::decode(image, &raw);
        if entry.as_ref().is_ok_and(|e| !wanted(e)) {
            return false;
        }
        entries.push((image.to_owned(), entry));
        true
    })?;
    Ok(entries)
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
        assert_eq!((snapshot.entry(), snapshot.pending()), ("s.snap-ab".to_owned(), "ps.snap-ab".to_owned()));
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
