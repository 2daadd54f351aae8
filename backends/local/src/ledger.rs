//! The local backend's ledger: the bytes its volumes hold, summed, kept in
//! one small file beside them (`ledger.json` in the state directory), so a
//! capacity decision reads one file however many volumes there are, and
//! every process on the directory (controller replicas, the webhook,
//! `swell`) decides on the same numbers.
//!
//! The volumes' files stay the truth; the ledger follows them and is crash
//! safe the way the records are (fsync + rename). Before a change touches a
//! volume's files, the volume goes into the ledger's `changing` set with
//! what the total counts for it; after, the total moves by the difference
//! measured on the files, in the same write that takes the volume out of the
//! set. A process killed in between leaves the volume in the set, and the
//! next one to find no change in flight counts it again from its files.
//!
//! Bytes an operation has been granted but not yet spent are `reserved` in
//! the ledger too, under the key of its volume or snapshot: admitting them
//! reads and writes the ledger under its lock, so two processes never both
//! take the last free bytes. A reservation ends when the change it was for
//! settles, or when its claim is dropped.
//!
//! "In flight" is told by `ledger.active`, which every claim and change
//! holds shared (flock, released by the kernel when its process dies), and
//! a repair exclusive: a repair, which recounts the changes and drops the
//! reservations left by dead processes, runs only when no process has a
//! claim or a change open.
//!
//! Only the mark must reach the disk before the volume's files change; the
//! settling write is not synced (one fsync'd write per change, not two): if
//! a crash loses it, the durable ledger still holds the mark and the volume
//! is counted again, and if it leaves the file unreadable, the ledger is
//! summed anew from the files, as on the first start.
//!
//! A ledger opened read-only (the webhook's view, on a read-only mount)
//! writes and locks nothing: it reads the file as it is, and sums the files
//! itself when there is none.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use swell_storage::durable;

/// What the ledger file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    /// The bytes of every volume, as of the last finished change.
    total_bytes: u64,
    /// Volumes whose files a change may be touching, with the bytes the
    /// total counts for each.
    changing: BTreeMap<String, u64>,
    /// Bytes granted to operations in flight and not yet in the total, by
    /// the key of what they are for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    reserved: BTreeMap<String, u64>,
    /// Whether the total counts the snapshots too; ledgers of earlier
    /// versions did not (every capacity call summed the snapshots' records),
    /// and are summed anew once.
    #[serde(default)]
    counts_snapshots: bool,
}

impl Stored {
    fn reserved_except(&self, key: &str) -> u64 {
        self.reserved.iter().filter(|(k, _)| k.as_str() != key).fold(0u64, |sum, (_, bytes)| sum.saturating_add(*bytes))
    }
}

/// The ledger of one local state directory.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    dir: PathBuf,
    read_only: bool,
}

/// Proof that this process has operations in flight on the directory:
/// while any process holds one, no repair runs.
#[derive(Debug)]
pub(crate) struct InFlight(#[allow(dead_code)] Flock<File>);

/// How the ledger learns what a volume's files hold: its bytes, 0 when it
/// is not a volume (no record or no backing file).
pub(crate) type Count<'a> = &'a dyn Fn(&str) -> io::Result<u64>;

impl Ledger {
    /// The ledger of `state_dir`, made from `keys` and `count` when it does
    /// not exist yet (the first start, or a state directory from before
    /// ledgers), repaired when a change was cut off.
    pub(crate) fn open(state_dir: &Path, keys: &dyn Fn() -> io::Result<Vec<String>>, count: Count<'_>) -> io::Result<Self> {
        let ledger = Ledger { dir: state_dir.to_owned(), read_only: false };
        ledger.promised(keys, count)?;
        Ok(ledger)
    }

    /// The stored ledger, summed anew from the files when there is none (or
    /// none this version can use).
    fn stored_or_summed(&self, keys: &dyn Fn() -> io::Result<Vec<String>>, count: Count<'_>) -> io::Result<Stored> {
        if let Some(stored) = self.stored() {
            return Ok(stored);
        }
        // Nobody changes a volume while the sum is taken.
        let _quiet = self.flock("active", FlockArg::LockExclusive)?;
        let _update = self.flock("lock", FlockArg::LockExclusive)?;
        if let Some(stored) = self.stored() {
            return Ok(stored);
        }
        let stored = Stored { total_bytes: sum(keys, count)?, counts_snapshots: true, ..Stored::default() };
        durable::write_json(&self.path(), &stored)?;
        Ok(stored)
    }

    /// Holds every process's operations off `state_dir` (none in flight,
    /// none begins) until the lock is dropped; waits for those in flight.
    pub(crate) fn quiet(state_dir: &Path) -> io::Result<Flock<File>> {
        Ledger { dir: state_dir.to_owned(), read_only: false }.flock("active", FlockArg::LockExclusive)
    }

    /// The ledger of `state_dir` for a reader that must not write.
    pub(crate) fn read_only(state_dir: &Path) -> Self {
        Ledger { dir: state_dir.to_owned(), read_only: true }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("ledger.json")
    }

    fn flock(&self, role: &str, arg: FlockArg) -> io::Result<Flock<File>> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the local backend was opened read-only"));
        }
        let file = durable::private_file().create(true).truncate(false).write(true).open(self.dir.join(format!("ledger.{role}")))?;
        Flock::lock(file, arg).map_err(|(_, errno)| io::Error::from(errno))
    }

    /// Marks this process as having an operation in flight.
    pub(crate) fn in_flight(&self) -> io::Result<InFlight> {
        self.flock("active", FlockArg::LockShared).map(InFlight)
    }

    /// The ledger, `None` when it is missing, was left unreadable or does
    /// not count the snapshots.
    fn stored(&self) -> Option<Stored> {
        match durable::read_json::<Stored>(&self.path()) {
            Ok(Some(stored)) if !stored.counts_snapshots => {
                tracing::info!(path = %self.path().display(), "local ledger from before snapshots were counted in it; summing the volumes and snapshots again");
                None
            }
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(path = %self.path().display(), error = %err, "local ledger unreadable (a crash during an unsynced write); summing the volumes again");
                None
            }
        }
    }

    fn read(&self) -> io::Result<Stored> {
        durable::read_json(&self.path())?.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{} is missing", self.path().display())))
    }

    /// Rewrites the ledger with `change` applied, excluding every other
    /// writer; synced to the disk when `durable`.
    fn update<T>(&self, durable: bool, change: impl FnOnce(&mut Stored) -> io::Result<T>) -> io::Result<T> {
        let _update = self.flock("lock", FlockArg::LockExclusive)?;
        let mut stored = self.read()?;
        let result = change(&mut stored)?;
        if durable {
            durable::write_json(&self.path(), &stored)?;
        } else {
            durable::replace(&self.path(), &serde_json::to_vec(&stored).map_err(io::Error::other)?, false)?;
        }
        Ok(result)
    }

    /// The bytes promised: what every volume holds (a volume being changed
    /// counts what it held before) and what operations in flight reserved.
    /// Counts again, from their files, the volumes of changes that were cut
    /// off, and drops reservations of dead processes, when nothing is in
    /// flight.
    /// A read-only ledger with no file sums `keys` itself.
    pub(crate) fn promised(&self, keys: &dyn Fn() -> io::Result<Vec<String>>, count: Count<'_>) -> io::Result<u64> {
        let stored = match (self.read_only, self.stored()) {
            (_, Some(stored)) => stored,
            (false, None) => self.stored_or_summed(keys, count)?,
            (true, None) => return sum(keys, count),
        };
        let promised = stored.total_bytes.saturating_add(stored.reserved_except(""));
        if self.read_only || (stored.changing.is_empty() && stored.reserved.is_empty()) {
            return Ok(promised);
        }
        let Ok(_quiet) = self.flock("active", FlockArg::LockExclusiveNonblock) else { return Ok(promised) };
        let repaired = self.update(true, |stored| {
            for (key, counted) in std::mem::take(&mut stored.changing) {
                stored.total_bytes = stored.total_bytes.saturating_sub(counted).saturating_add(count(&key)?);
            }
            stored.reserved.clear();
            Ok(stored.total_bytes)
        })?;
        tracing::info!(total_bytes = repaired, "local ledger: counted again the volumes of changes that were cut off");
        Ok(repaired)
    }

    /// Reserves `bytes` for `key` if `admit`, given the bytes promised to
    /// everything else, agrees; the decision and the reservation are one
    /// step under the ledger's lock. The outer error is the ledger's own.
    pub(crate) fn reserve<E>(&self, key: &str, bytes: u64, admit: impl FnOnce(u64) -> Result<(), E>) -> io::Result<Result<(), E>> {
        self.update(false, |stored| {
            let others = stored.total_bytes.saturating_add(stored.reserved_except(key));
            let admitted = admit(others);
            if admitted.is_ok() {
                stored.reserved.insert(key.to_owned(), bytes);
            }
            Ok(admitted)
        })
    }

    /// Ends `key`'s reservation, if it has one.
    pub(crate) fn release(&self, key: &str) -> io::Result<()> {
        self.update(false, |stored| {
            stored.reserved.remove(key);
            Ok(())
        })
    }

    /// Runs `work`, which changes the files of volume `key`, and moves the
    /// total by what it changed, measured by `count` on the files (whether
    /// `work` succeeded or not: a failed change may have done part). The
    /// volume's reservation, now spent, ends with it. The outer error is
    /// the ledger's own.
    pub(crate) fn change<T, E>(&self, key: &str, count: Count<'_>, work: impl FnOnce() -> Result<T, E>) -> io::Result<Result<T, E>> {
        let _active = self.in_flight()?;
        self.update(true, |stored| {
            // Already there (a change cut off, not yet repaired): the total
            // still counts what it counted then.
            if !stored.changing.contains_key(key) {
                stored.changing.insert(key.to_owned(), count(key)?);
            }
            Ok(())
        })?;
        let result = work();
        self.update(false, |stored| {
            let counted = stored.changing.remove(key).unwrap_or(0);
            stored.reserved.remove(key);
            stored.total_bytes = stored.total_bytes.saturating_sub(counted).saturating_add(count(key)?);
            Ok(())
        })?;
        Ok(result)
    }
}

/// The bytes of every volume, summed from their files.
pub(crate) fn sum(keys: &dyn Fn() -> io::Result<Vec<String>>, count: Count<'_>) -> io::Result<u64> {
    let mut total_bytes = 0u64;
    for key in keys()? {
        total_bytes = total_bytes.saturating_add(count(&key)?);
    }
    Ok(total_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    fn sizes(pairs: &[(&str, u64)]) -> RefCell<HashMap<String, u64>> {
        RefCell::new(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn a_new_ledger_sums_the_volumes_and_changes_move_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = sizes(&[("a", 10), ("b", 5)]);
        let count = |k: &str| Ok(files.borrow().get(k).copied().unwrap_or(0));
        let keys = || Ok(files.borrow().keys().cloned().collect());
        let ledger = Ledger::open(dir.path(), &keys, &count).unwrap();
        assert_eq!(ledger.promised(&keys, &count).unwrap(), 15);
        ledger.change("a", &count, || Ok::<_, ()>(files.borrow_mut().insert("a".into(), 30))).unwrap().unwrap();
        ledger.change("c", &count, || Ok::<_, ()>(files.borrow_mut().insert("c".into(), 1))).unwrap().unwrap();
        ledger.change("b", &count, || Ok::<_, ()>(files.borrow_mut().remove("b"))).unwrap().unwrap();
        assert_eq!(ledger.promised(&keys, &count).unwrap(), 31);
        // A failed change that did part of its work is counted for what it did.
        let failed: Result<(), &str> = ledger
            .change("c", &count, || {
                files.borrow_mut().insert("c".into(), 4);
                Err("disk gone")
            })
            .unwrap();
        assert!(failed.is_err());
        assert_eq!(ledger.promised(&keys, &count).unwrap(), 34);
        // Reopened, it is read, not summed again.
        files.borrow_mut().insert("stray".into(), 1000);
        assert_eq!(Ledger::open(dir.path(), &keys, &count).unwrap().promised(&keys, &count).unwrap(), 34);
    }

    #[test]
    fn a_change_cut_off_is_counted_again_from_the_files_once_none_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let files = sizes(&[("a", 10)]);
        let count = |k: &str| Ok(files.borrow().get(k).copied().unwrap_or(0));
        let keys = || Ok(files.borrow().keys().cloned().collect());
        let ledger = Ledger::open(dir.path(), &keys, &count).unwrap();
        // Killed after marking "a" and growing its file, before settling.
        ledger
            .update(true, |s| {
                s.changing.insert("a".into(), 10);
                Ok(())
            })
            .unwrap();
        files.borrow_mut().insert("a".into(), 25);
        {
            let _in_flight = ledger.flock("active", FlockArg::LockShared).unwrap();
            assert_eq!(ledger.promised(&keys, &count).unwrap(), 10, "a change in flight counts what it held before");
        }
        assert_eq!(Ledger::open(dir.path(), &keys, &count).unwrap().promised(&keys, &count).unwrap(), 25);
        assert!(ledger.read().unwrap().changing.is_empty());
        // A change of a volume still marked keeps the value the total counts.
        ledger
            .update(true, |s| {
                s.changing.insert("a".into(), 25);
                Ok(())
            })
            .unwrap();
        files.borrow_mut().insert("a".into(), 40);
        ledger.change("a", &count, || Ok::<_, ()>(files.borrow_mut().insert("a".into(), 50))).unwrap().unwrap();
        assert_eq!(ledger.promised(&keys, &count).unwrap(), 50);
    }

    #[test]
    fn a_ledger_left_unreadable_is_summed_again_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = sizes(&[("a", 10), ("b", 7)]);
        let count = |k: &str| Ok(files.borrow().get(k).copied().unwrap_or(0));
        let keys = || Ok(files.borrow().keys().cloned().collect());
        Ledger::open(dir.path(), &keys, &count).unwrap();
        // An unsynced write whose data never reached the disk.
        std::fs::write(dir.path().join("ledger.json"), b"").unwrap();
        assert_eq!(Ledger::open(dir.path(), &keys, &count).unwrap().promised(&keys, &count).unwrap(), 17);
    }

    #[test]
    fn reservations_of_two_processes_never_take_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let files = sizes(&[("a", 10)]);
        let count = |k: &str| Ok(files.borrow().get(k).copied().unwrap_or(0));
        let keys = || Ok(files.borrow().keys().cloned().collect());
        // Two handles open the lock files apart, as two processes do.
        let (first, second) = (Ledger::open(dir.path(), &keys, &count).unwrap(), Ledger::open(dir.path(), &keys, &count).unwrap());
        let room = 100u64;
        let admit = |bytes: u64| move |others: u64| if others + bytes <= room { Ok(()) } else { Err(room.saturating_sub(others)) };
        let (_a, _b) = (first.in_flight().unwrap(), second.in_flight().unwrap());
        assert_eq!(first.reserve("b", 60, admit(60)).unwrap(), Ok(()));
        assert_eq!(second.reserve("c", 60, admit(60)).unwrap(), Err(30), "the first reservation is seen by the second process");
        assert_eq!(second.reserve("c", 30, admit(30)).unwrap(), Ok(()));
        assert_eq!(first.promised(&keys, &count).unwrap(), 100);
        // Spent by its change: counted once, in the total.
        first.change("b", &count, || Ok::<_, ()>(files.borrow_mut().insert("b".into(), 60))).unwrap().unwrap();
        assert_eq!(second.promised(&keys, &count).unwrap(), 100);
        second.release("c").unwrap();
        assert_eq!(second.promised(&keys, &count).unwrap(), 70);
        // A read-only view sees the same numbers and writes nothing.
        assert_eq!(Ledger::read_only(dir.path()).promised(&keys, &count).unwrap(), 70);
    }

    #[test]
    fn a_dead_process_reservation_is_dropped_once_nothing_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let files = sizes(&[("a", 10)]);
        let count = |k: &str| Ok(files.borrow().get(k).copied().unwrap_or(0));
        let keys = || Ok(files.borrow().keys().cloned().collect());
        let ledger = Ledger::open(dir.path(), &keys, &count).unwrap();
        {
            let _alive = ledger.in_flight().unwrap();
            ledger.reserve("b", 50, |_| Ok::<_, ()>(())).unwrap().unwrap();
            assert_eq!(ledger.promised(&keys, &count).unwrap(), 60, "kept while its process is in flight");
        }
        // Its process went without releasing it (killed): the flock went with it.
        assert_eq!(ledger.promised(&keys, &count).unwrap(), 10);
        assert!(ledger.read().unwrap().reserved.is_empty());
    }

    #[test]
    fn a_read_only_ledger_without_a_file_sums_the_volumes_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = sizes(&[("a", 10), ("b", 5)]);
        let count = |k: &str| Ok(files.borrow().get(k).copied().unwrap_or(0));
        let keys = || Ok(files.borrow().keys().cloned().collect());
        let ledger = Ledger::read_only(dir.path());
        assert_eq!(ledger.promised(&keys, &count).unwrap(), 15);
        assert!(ledger.in_flight().is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
