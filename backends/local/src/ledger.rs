//! The local backend's ledger: the bytes its volumes hold, summed, kept in
//! one small file beside them (`ledger.json` in the state directory), so a
//! capacity decision reads one file however many volumes there are.
//!
//! The volumes' files stay the truth; the ledger follows them and is crash
//! safe the way the records are (fsync + rename). Before a change touches a
//! volume's files, the volume goes into the ledger's `changing` set with
//! what the total counts for it; after, the total moves by the difference
//! measured on the files, in the same write that takes the volume out of the
//! set. A process killed in between leaves the volume in the set, and the
//! next one to find no change in flight counts it again from its files.
//! "In flight" is told by `ledger.active`, which every change holds shared
//! (flock, released by the kernel when its process dies), and a repair
//! exclusive.
//!
//! Only the mark must reach the disk before the volume's files change; the
//! settling write is not synced (one fsync'd write per change, not two): if
//! a crash loses it, the durable ledger still holds the mark and the volume
//! is counted again, and if it leaves the file unreadable, the ledger is
//! summed anew from the files, as on the first start.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
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
}

/// The ledger of one local state directory.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    dir: PathBuf,
}

/// How the ledger learns what a volume's files hold: its bytes, 0 when it
/// is not a volume (no record or no backing file).
pub(crate) type Count<'a> = &'a dyn Fn(&str) -> io::Result<u64>;

impl Ledger {
    /// The ledger of `state_dir`, made from `keys` and `count` when it does
    /// not exist yet (the first start, or a state directory from before
    /// ledgers), repaired when a change was cut off.
    pub(crate) fn open(state_dir: &Path, keys: &dyn Fn() -> io::Result<Vec<String>>, count: Count<'_>) -> io::Result<Self> {
        let ledger = Ledger { dir: state_dir.to_owned() };
        if ledger.stored().is_none() {
            // Nobody changes a volume while the sum is taken.
            let _quiet = ledger.flock("active", FlockArg::LockExclusive)?;
            let _update = ledger.flock("lock", FlockArg::LockExclusive)?;
            if ledger.stored().is_none() {
                let mut total_bytes = 0u64;
                for key in keys()? {
                    total_bytes = total_bytes.saturating_add(count(&key)?);
                }
                durable::write_json(&ledger.path(), &Stored { total_bytes, changing: BTreeMap::new() })?;
            }
        }
        ledger.total(count)?;
        Ok(ledger)
    }

    fn path(&self) -> PathBuf {
        self.dir.join("ledger.json")
    }

    fn flock(&self, role: &str, arg: FlockArg) -> io::Result<Flock<File>> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(self.dir.join(format!("ledger.{role}")))?;
        Flock::lock(file, arg).map_err(|(_, errno)| io::Error::from(errno))
    }

    /// The ledger, `None` when it is missing or was left unreadable.
    fn stored(&self) -> Option<Stored> {
        match durable::read_json::<Stored>(&self.path()) {
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
    fn update(&self, durable: bool, change: impl FnOnce(&mut Stored) -> io::Result<()>) -> io::Result<()> {
        let _update = self.flock("lock", FlockArg::LockExclusive)?;
        let mut stored = self.read()?;
        change(&mut stored)?;
        if durable {
            return durable::write_json(&self.path(), &stored);
        }
        let tmp = self.dir.join(".ledger.json.unsynced");
        std::fs::write(&tmp, serde_json::to_vec(&stored).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, self.path())
    }

    /// The bytes every volume holds (a volume being changed counts what it
    /// held before). Counts again, from their files, the volumes of changes
    /// that were cut off, when no change is in flight.
    pub(crate) fn total(&self, count: Count<'_>) -> io::Result<u64> {
        let stored = self.read()?;
        if stored.changing.is_empty() {
            return Ok(stored.total_bytes);
        }
        let Ok(_quiet) = self.flock("active", FlockArg::LockExclusiveNonblock) else { return Ok(stored.total_bytes) };
        let mut repaired = 0;
        self.update(true, |stored| {
            for (key, counted) in std::mem::take(&mut stored.changing) {
                stored.total_bytes = stored.total_bytes.saturating_sub(counted).saturating_add(count(&key)?);
            }
            repaired = stored.total_bytes;
            Ok(())
        })?;
        tracing::info!(total_bytes = repaired, "local ledger: counted again the volumes of changes that were cut off");
        Ok(repaired)
    }

    /// Runs `work`, which changes the files of volume `key`, and moves the
    /// total by what it changed, measured by `count` on the files (whether
    /// `work` succeeded or not: a failed change may have done part). The
    /// outer error is the ledger's own.
    pub(crate) fn change<T, E>(&self, key: &str, count: Count<'_>, work: impl FnOnce() -> Result<T, E>) -> io::Result<Result<T, E>> {
        let _active = self.flock("active", FlockArg::LockShared)?;
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
            stored.total_bytes = stored.total_bytes.saturating_sub(counted).saturating_add(count(key)?);
            Ok(())
        })?;
        Ok(result)
    }
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
        assert_eq!(ledger.total(&count).unwrap(), 15);
        ledger.change("a", &count, || Ok::<_, ()>(files.borrow_mut().insert("a".into(), 30))).unwrap().unwrap();
        ledger.change("c", &count, || Ok::<_, ()>(files.borrow_mut().insert("c".into(), 1))).unwrap().unwrap();
        ledger.change("b", &count, || Ok::<_, ()>(files.borrow_mut().remove("b"))).unwrap().unwrap();
        assert_eq!(ledger.total(&count).unwrap(), 31);
        // A failed change that did part of its work is counted for what it did.
        let failed: Result<(), &str> = ledger
            .change("c", &count, || {
                files.borrow_mut().insert("c".into(), 4);
                Err("disk gone")
            })
            .unwrap();
        assert!(failed.is_err());
        assert_eq!(ledger.total(&count).unwrap(), 34);
        // Reopened, it is read, not summed again.
        files.borrow_mut().insert("stray".into(), 1000);
        assert_eq!(Ledger::open(dir.path(), &keys, &count).unwrap().total(&count).unwrap(), 34);
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
            assert_eq!(ledger.total(&count).unwrap(), 10, "a change in flight counts what it held before");
        }
        assert_eq!(Ledger::open(dir.path(), &keys, &count).unwrap().total(&count).unwrap(), 25);
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
        assert_eq!(ledger.total(&count).unwrap(), 50);
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
        assert_eq!(Ledger::open(dir.path(), &keys, &count).unwrap().total(&count).unwrap(), 17);
    }
}
