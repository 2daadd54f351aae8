//! Keyed locks that hold across processes: one lock file per key under a
//! directory, taken with `flock(LOCK_EX | LOCK_NB)`. Two controller
//! replicas, the webhook and `swell` may open one local state directory;
//! a lock of this process alone would let them act on one volume at once.
//! The kernel drops a flock when its process dies, so a killed holder never
//! leaves a volume locked. A busy key fails at once, like [`KeyedLocks`],
//! which also keeps the key within this process (flock locks belong to an
//! open file, so two opens in one process would exclude each other too;
//! the keyed lock answers first, and says whether this process holds it).
//!
//! A lock file is removed only by its holder, when what it guards is gone
//! ([`FileLock::remove`]); a process that opened the old file before the
//! removal finds, once it holds the lock, that its file is no longer the
//! one at the path, and tries again.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::durable;
use crate::locks::{KeyGuard, KeyedLocks};

/// How often a lock whose file was removed under it is tried again.
const ATTEMPTS: usize = 4;

/// The lock files of one directory.
#[derive(Debug, Clone)]
pub struct FileLocks {
    dir: PathBuf,
    here: KeyedLocks,
}

/// A held key; dropping it releases the key in this process and the flock.
#[derive(Debug)]
pub struct FileLock {
    path: PathBuf,
    _file: Flock<File>,
    _here: KeyGuard,
}

impl FileLocks {
    /// The locks under `dir`, made (0700) if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        durable::private_dir(dir)?;
        Ok(FileLocks { dir: dir.to_owned(), here: KeyedLocks::new() })
    }

    fn path(&self, key: &str) -> PathBuf {
        // Keys are volume ids or their keys: [a-z0-9._-:], never a path.
        self.dir.join(format!("{key}.lock"))
    }

    /// Takes `key` unless this or another process holds it (`Ok(None)`).
    pub fn try_lock(&self, key: &str) -> io::Result<Option<FileLock>> {
        let Some(here) = self.here.try_acquire(key) else { return Ok(None) };
        let path = self.path(key);
        for _ in 0..ATTEMPTS {
            let file = durable::private_file().read(true).write(true).create(true).truncate(false).open(&path)?;
            let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(file) => file,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, errno)) => return Err(io::Error::from(errno)),
            };
            let held = file.metadata()?;
            match std::fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(Some(FileLock { path, _file: file, _here: here })),
                // Its holder removed it after this open: take the new one.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!("{} kept being removed while it was locked", path.display())))
    }

    /// Whether this process holds `key`.
    pub fn held_here(&self, key: &str) -> bool {
        self.here.is_held(key)
    }
}

impl FileLock {
    /// Removes the lock file, still holding it: the key's volume is gone.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    #[test]
    fn a_key_is_held_once_in_this_process_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let locks = FileLocks::open(&dir.path().join("locks")).unwrap();
        let held = locks.try_lock("vol-a").unwrap().expect("first");
        assert!(locks.held_here("vol-a"));
        assert!(locks.try_lock("vol-a").unwrap().is_none());
        // Another handle on the same directory is another open file: the flock refuses it.
        let other = FileLocks::open(&dir.path().join("locks")).unwrap();
        assert!(other.try_lock("vol-a").unwrap().is_none());
        assert!(other.try_lock("vol-b").unwrap().is_some(), "other keys are free");
        drop(held);
        assert!(other.try_lock("vol-a").unwrap().is_some());
        let mode = std::fs::metadata(dir.path().join("locks/vol-a.lock")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn another_process_holding_the_key_refuses_it_and_its_death_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let locks = FileLocks::open(dir.path()).unwrap();
        let file = dir.path().join("vol.lock");
        std::fs::write(&file, b"").unwrap();
        // flock(1) takes the lock and becomes `sleep` (no fork): one process holds it.
        let mut holder = Command::new("flock").args(["--no-fork", "-x"]).arg(&file).args(["sleep", "30"]).spawn().expect("flock(1) from util-linux");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while locks.try_lock("vol").unwrap().is_some() {
            assert!(std::time::Instant::now() < until, "the other process never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        holder.kill().unwrap();
        holder.wait().unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while locks.try_lock("vol").unwrap().is_none() {
            assert!(std::time::Instant::now() < until, "a dead holder kept the lock");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn a_removed_lock_file_is_not_held_by_two() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileLocks::open(dir.path()).unwrap();
        let b = FileLocks::open(dir.path()).unwrap();
        let held = a.try_lock("vol").unwrap().unwrap();
        held.remove().unwrap();
        assert!(!dir.path().join("vol.lock").exists());
        let again = b.try_lock("vol").unwrap().expect("a new file");
        assert!(a.try_lock("vol").unwrap().is_none(), "the new file is held");
        drop(again);
    }
}
