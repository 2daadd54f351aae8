//! Where an expansion's state lives: the durable record of what size a
//! volume should have, what size its backend had when last read, and whether
//! the volume's clients were told; and the hold on a volume that keeps two
//! operations (in this process or in another controller replica) from
//! deciding about it at once.
//!
//! The expander and the reconciler only see [`ExpansionStore`]: the local
//! backend keeps its records in files on its one host, the RBD backend keeps
//! them in its Ceph pool beside the images, so a controller on another
//! machine finds them. A record never stands in for the backend: every
//! decision re-reads the real size.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::BackendError;
use crate::volume_id::VolumeId;

/// One volume's expansion state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExpansionRecord {
    /// The volume.
    pub volume_id: VolumeId,
    /// The size the last accepted request asked the backend for.
    pub desired_bytes: u64,
    /// The backend's size when last read.
    pub current_bytes: u64,
    /// The size the volume's clients were last told of (RBD: the header
    /// notification every open image re-reads its size on). A size the
    /// backend holds but the clients were not told of is owed to them.
    #[serde(default)]
    pub announced_bytes: u64,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When `desired_bytes` was last changed (seconds since the epoch).
    pub desired_since_unix: u64,
    /// When the record was last written.
    pub updated_unix: u64,
    /// Bumped by every write: a writer that finds another generation than
    /// the one it read lost the volume to another holder and must not write.
    #[serde(default)]
    pub generation: u64,
}

impl ExpansionRecord {
    /// A record of a volume that has `current` bytes and wants `desired`.
    pub fn new(id: &VolumeId, current: u64, desired: u64) -> Self {
        let now = now_unix();
        ExpansionRecord {
            volume_id: id.clone(),
            desired_bytes: desired,
            current_bytes: current,
            announced_bytes: current,
            last_error: None,
            desired_since_unix: now,
            updated_unix: now,
            generation: 0,
        }
    }

    /// Whether the backend has not yet reached the desired size.
    pub fn growing(&self) -> bool {
        self.desired_bytes > self.current_bytes
    }

    /// How long the wish has waited at `now` (seconds since the epoch);
    /// `None` unless the backend is short of it.
    pub fn waiting_for(&self, now: u64) -> Option<std::time::Duration> {
        self.growing().then(|| std::time::Duration::from_secs(now.saturating_sub(self.desired_since_unix)))
    }

    /// Whether the backend holds a size the volume's clients were not told of.
    pub fn announcement_owed(&self) -> bool {
        self.current_bytes > self.announced_bytes
    }

    /// Whether the reconciler has work here: a grow to finish or a size to announce.
    pub fn pending(&self) -> bool {
        self.growing() || self.announcement_owed()
    }

    /// The record after a new wish for `desired` bytes, the backend read at
    /// `current`. The wish's age is kept when it is the same wish again.
    pub fn wishing(mut self, current: u64, desired: u64) -> Self {
        let now = now_unix();
        if self.desired_bytes != desired || !self.growing() {
            self.desired_since_unix = now;
        }
        self.desired_bytes = desired;
        self.current_bytes = current;
        self.last_error = None;
        self.updated_unix = now;
        self
    }

    /// The record after an attempt: the backend read at `current`, its
    /// clients told of `announced` (when they were), and the error if any.
    pub fn reached(mut self, current: u64, announced: Option<u64>, error: Option<String>) -> Self {
        self.current_bytes = current;
        if let Some(announced) = announced {
            self.announced_bytes = announced;
        }
        self.last_error = error;
        self.updated_unix = now_unix();
        self
    }

    /// Bytes this volume may come to hold: the larger of its wish and its size.
    pub fn promised_bytes(&self) -> u64 {
        self.desired_bytes.max(self.current_bytes)
    }
}

/// A record that is there but cannot be read (damaged JSON, an id that does
/// not parse): reported by whoever lists it, never skipped in silence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The volume its place in the store names (file name, omap key).
    pub volume: VolumeId,
    /// Why it cannot be read.
    pub reason: String,
}

/// What a listing of a store's records found, each list in the store's
/// order (by volume id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// The records read.
    pub readable: Vec<ExpansionRecord>,
    /// The records found but not read.
    pub unreadable: Vec<Unreadable>,
}

impl Records {
    /// How many records the listing found, read or not.
    pub fn len(&self) -> usize {
        self.readable.len() + self.unreadable.len()
    }

    /// Whether it found none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last volume listed, where the next page starts after.
    pub fn last(&self) -> Option<&VolumeId> {
        let read = self.readable.last().map(|r| &r.volume_id);
        let unread = self.unreadable.last().map(|u| &u.volume);
        read.into_iter().chain(unread).max()
    }
}

/// How long a grow may stay short of its wish before it counts as stuck,
/// unless `--stuck-after-secs` says otherwise (the controller's log and
/// metrics, and `swell volumes`, judge by the same).
pub const DEFAULT_STUCK_AFTER_SECS: u64 = 600;

/// Seconds since the epoch (0 before it).
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a holder of a volume can do with its hold.
#[async_trait::async_trait]
pub trait HeldVolume: Send + Sync {
    /// Whether the hold is still this process's. A lease that ran out (the
    /// process was frozen, or could not renew it) is lost: the holder must
    /// not change the volume any more.
    fn still_held(&self) -> bool;

    /// Gives the volume back. A store may keep it a moment for this
    /// process's next operation on the volume.
    async fn release(self: Box<Self>);

    /// Gives a deleted volume back at once: no next operation can reuse
    /// the hold, and the background work finishing the delete needs it.
    async fn release_deleted(self: Box<Self>);
}

/// A volume held for one operation. Released by [`Hold::release`], or, when
/// dropped, in the background.
pub struct Hold(Option<Box<dyn HeldVolume>>);

impl Hold {
    /// Wraps a store's hold.
    pub fn new(held: Box<dyn HeldVolume>) -> Self {
        Hold(Some(held))
    }

    /// Whether the hold is still this process's (see [`HeldVolume::still_held`]).
    pub fn still_held(&self) -> bool {
        self.0.as_ref().is_some_and(|h| h.still_held())
    }

    /// Gives the volume back now.
    pub async fn release(mut self) {
        if let Some(held) = self.0.take() {
            held.release().await;
        }
    }

    /// Gives a deleted volume back (see [`HeldVolume::release_deleted`]).
    pub async fn release_deleted(mut self) {
        if let Some(held) = self.0.take() {
            held.release_deleted().await;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(held) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(held.release());
        }
    }
}

/// Where a backend's expansion records and holds live.
#[async_trait::async_trait]
pub trait ExpansionStore: Send + Sync + 'static {
    /// Takes `id` for one operation, or `None` at once when another
    /// operation (here or in another controller process) has it.
    async fn hold(&self, id: &VolumeId) -> Result<Option<Hold>, BackendError>;

    /// The volume's record, read now.
    async fn record(&self, id: &VolumeId) -> Result<Option<ExpansionRecord>, BackendError>;

    /// Writes `record` (made from the one last read, or new) under `hold`,
    /// durably, and returns it as stored (its generation bumped). Refused
    /// when the hold was lost or the stored record is no longer the one
    /// `record` was made from. A store that keeps the capacity ledger (RBD)
    /// admits the bytes the record promises here, and refuses with NoSpace.
    async fn write(&self, hold: &Hold, record: ExpansionRecord) -> Result<ExpansionRecord, BackendError>;

    /// Drops the record of a deleted volume, and with it the volume's hold.
    async fn forget(&self, hold: Hold, id: &VolumeId) -> Result<(), BackendError>;

    /// The records with work left ([`ExpansionRecord::pending`]), and those
    /// marked pending that cannot be read; the cost follows their number,
    /// not the number of volumes.
    async fn pending(&self) -> Result<Records, BackendError>;

    /// Up to `limit` records (read or not) after the one of `after`, by
    /// volume id, for the slow sweep over every record and for `swell`.
    async fn page(&self, after: Option<&VolumeId>, limit: usize) -> Result<Records, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> VolumeId {
        "local:aa".parse().unwrap()
    }

    #[test]
    fn a_record_is_pending_while_growing_or_owing_an_announcement() {
        let settled = ExpansionRecord::new(&id(), 10, 10);
        assert!(!settled.pending());
        let wish = settled.clone().wishing(10, 20);
        assert!(wish.growing() && wish.pending());
        assert_eq!(wish.promised_bytes(), 20);
        let grown_unheard = wish.clone().reached(20, None, None);
        assert!(!grown_unheard.growing() && grown_unheard.announcement_owed() && grown_unheard.pending());
        assert_eq!(wish.waiting_for(wish.desired_since_unix + 7), Some(std::time::Duration::from_secs(7)));
        let done = wish.reached(20, Some(20), None);
        assert!(!done.pending());
        assert_eq!(done.waiting_for(u64::MAX), None);
    }

    #[test]
    fn the_same_wish_keeps_its_age_and_a_new_one_restarts_it() {
        let mut wish = ExpansionRecord::new(&id(), 10, 10).wishing(10, 20);
        wish.desired_since_unix = 5;
        let again = wish.clone().reached(10, None, Some("timeout".into())).wishing(10, 20);
        assert_eq!(again.desired_since_unix, 5);
        assert_eq!(again.last_error, None);
        let lowered = again.wishing(10, 15);
        assert_ne!(lowered.desired_since_unix, 5);
    }

    /// A record file as every earlier version wrote it (pretty JSON, the
    /// id as text), and one from before announcements and generations.
    const WRITTEN_BEFORE_TYPED_IDS: &str = r#"{
  "volume_id": "local:0a1b2c3d4e5f60718293a4b5c6d7e8f9",
  "desired_bytes": 2147483648,
  "current_bytes": 1073741824,
  "announced_bytes": 1073741824,
  "last_error": "backend unavailable during grow volume: osd down",
  "desired_since_unix": 1765000000,
  "updated_unix": 1765000042,
  "generation": 3
}"#;
    const WRITTEN_BEFORE_GENERATIONS: &str = r#"{"volume_id":"rbd:ceph-a:rbd:swell-0a1b2c3d4e5f60718293a4b5c6d7e8f9","desired_bytes":10,"current_bytes":10,"last_error":null,"desired_since_unix":1,"updated_unix":2}"#;

    #[test]
    fn records_written_before_typed_ids_read_back_as_they_were() {
        let record: ExpansionRecord = serde_json::from_str(WRITTEN_BEFORE_TYPED_IDS).unwrap();
        assert_eq!(record.volume_id, "local:0a1b2c3d4e5f60718293a4b5c6d7e8f9".parse::<VolumeId>().unwrap());
        assert_eq!((record.desired_bytes, record.current_bytes, record.generation), (2 << 30, 1 << 30, 3));
        assert!(record.growing());
        let rewritten = serde_json::to_string_pretty(&record).unwrap();
        assert_eq!(rewritten, WRITTEN_BEFORE_TYPED_IDS, "written back byte for byte as before");
        let old: ExpansionRecord = serde_json::from_str(WRITTEN_BEFORE_GENERATIONS).unwrap();
        assert_eq!((old.volume_id.backend(), old.announced_bytes, old.generation), ("rbd", 0, 0));
    }

    #[test]
    fn a_record_whose_id_does_not_parse_is_unreadable_not_a_record_of_no_volume() {
        let damaged = WRITTEN_BEFORE_TYPED_IDS.replace("local:0a1b", "local:../0a1b");
        let err = serde_json::from_str::<ExpansionRecord>(&damaged).unwrap_err();
        assert!(err.to_string().contains("local:../0a1b"), "{err}");
    }
}
