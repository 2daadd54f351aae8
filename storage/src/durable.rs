//! Crash-safe private files: a record is written to a temporary file of a
//! unique name, fsynced, renamed over the old one and the directory
//! fsynced, so after a crash a reader sees either the old record or the new
//! one, never a torn mix, and two processes writing the same record never
//! share a temporary file. Records are 0600 and the directories made here
//! 0700: volume data and what describes it are readable by root alone.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The mode of every file Swell keeps.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every directory Swell keeps its files in.
pub const DIR_MODE: u32 = 0o700;

/// Atomically replaces `path` with `value` serialised as JSON, synced.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    replace(path, &bytes, true)
}

/// Replaces `path` with `bytes` through a uniquely named temporary file;
/// synced (file and directory) when `sync`.
pub fn replace(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("record path has no parent"))?;
    let file_name = path.file_name().ok_or_else(|| io::Error::other("record path has no file name"))?;
    // tempfile makes it O_EXCL with mode 0600 and a random suffix.
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{}.", file_name.to_string_lossy())).suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if sync {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if sync {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a JSON record; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a record and syncs its directory; a missing file is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Makes `dir` (and missing parents) with mode 0700, and takes group and
/// other access away from one that exists: directories made by earlier
/// versions were 0755, and closing the directory closes what is in it.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Options that create a file with mode 0600 (the mode counts only when
/// the file is made).
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Rec {
        size: u64,
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        assert_eq!(read_json::<Rec>(&path).unwrap(), None);
        write_json(&path, &Rec { size: 1 }).unwrap();
        write_json(&path, &Rec { size: 2 }).unwrap();
        assert_eq!(read_json::<Rec>(&path).unwrap(), Some(Rec { size: 2 }));
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn records_are_private_and_directories_closed() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("a/b");
        private_dir(&records).unwrap();
        assert_eq!(mode(&records), 0o700);
        write_json(&records.join("r.json"), &Rec { size: 1 }).unwrap();
        assert_eq!(mode(&records.join("r.json")), 0o600);
        // A directory an earlier version made world-readable is closed.
        let open = dir.path().join("open");
        DirBuilder::new().mode(0o755).create(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        let file = private_file().write(true).create_new(true).open(open.join("f")).unwrap();
        drop(file);
        assert_eq!(mode(&open.join("f")), 0o600);
    }

    #[test]
    fn writers_of_one_record_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::thread::scope(|scope| {
            for writer in 0..8u64 {
                let path = &path;
                scope.spawn(move || {
                    for n in 0..200 {
                        write_json(path, &Rec { size: writer * 1000 + n }).unwrap();
                        read_json::<Rec>(path).unwrap().expect("a whole record");
                    }
                });
            }
        });
        let size = read_json::<Rec>(&path).unwrap().unwrap().size;
        assert_eq!(size % 1000, 199, "one writer's last record: {size}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        fs::write(&path, b"{not json").unwrap();
        let err = read_json::<Rec>(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn removing_a_missing_record_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        remove(&dir.path().join("none.json")).unwrap();
    }
}
