//! Copies of a backing file, for local snapshots and clones: a reflink (the
//! copy shares the source's blocks until either side writes) where the
//! state directory's filesystem supports one (xfs with reflink, btrfs),
//! else a copy of the source's data ranges only, so the copy keeps every
//! hole of the sparse source and costs what the source really holds.
//!
//! A copy is written to a temporary name beside its destination, synced,
//! then renamed into place: a destination that exists is complete.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::copy_file_range;
use nix::unistd::{Whence, lseek};

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// Blocks shared with the source (copy on write).
    Reflink,
    /// The source's data ranges copied, its holes kept.
    Sparse,
}

/// Copies at most this much per `copy_file_range` call.
const CHUNK: usize = 64 << 20;

/// Where a copy to `to` is made before it is complete.
pub(crate) fn partial_path(to: &Path) -> PathBuf {
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    to.with_file_name(format!(".{name}.part"))
}

/// Copies `from` to `to` as `len` bytes (the copy is extended with a hole
/// when `len` is larger than the source), then syncs it and renames it into
/// place. An interrupted copy leaves only its partial file, which the next
/// copy to `to` replaces.
pub(crate) fn copy_file(from: &Path, to: &Path, len: u64) -> io::Result<Method> {
    let partial = partial_path(to);
    remove_if_present(&partial)?;
    let method = match reflink_copy::reflink(from, &partial) {
        Ok(()) => Method::Reflink,
        Err(e) if reflink_unsupported(&e) => {
            remove_if_present(&partial)?;
            copy_data_ranges(from, &partial)?;
            Method::Sparse
        }
        Err(e) => return Err(e),
    };
    let copy = OpenOptions::new().write(true).open(&partial)?;
    if copy.metadata()?.len() < len {
        copy.set_len(len)?;
    }
    copy.sync_all()?;
    drop(copy);
    fs::rename(&partial, to)?;
    if let Some(dir) = to.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(method)
}

/// Whether the filesystem (or the pair of paths) cannot share blocks, as
/// opposed to a failure a plain copy would hit too.
fn reflink_unsupported(error: &io::Error) -> bool {
    if error.kind() == io::ErrorKind::Unsupported {
        return true;
    }
    error.raw_os_error().map(Errno::from_raw).is_some_and(|e| matches!(e, Errno::EOPNOTSUPP | Errno::EXDEV | Errno::EINVAL | Errno::ENOTTY | Errno::ENOSYS))
}

/// Copies the data ranges of `from` (found with SEEK_DATA / SEEK_HOLE) to
/// a new file `to` of the same length; the ranges between stay holes.
fn copy_data_ranges(from: &Path, to: &Path) -> io::Result<()> {
    let source = File::open(from)?;
    let len = i64::try_from(source.metadata()?.len()).map_err(io::Error::other)?;
    let copy = OpenOptions::new().write(true).create_new(true).open(to)?;
    copy.set_len(len.unsigned_abs())?;
    let mut at = 0i64;
    while at < len {
        let data = match lseek(&source, at, Whence::SeekData) {
            Ok(offset) => offset,
            // No data after `at`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(&source, data, Whence::SeekHole).map_err(io::Error::from)?.min(len);
        let (mut read_at, mut write_at) = (data, data);
        while read_at < hole {
            let want = usize::try_from(hole - read_at).unwrap_or(CHUNK).min(CHUNK);
            let copied = copy_file_range(&source, Some(&mut read_at), &copy, Some(&mut write_at), want).map_err(io::Error::from)?;
            if copied == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} ended while being copied", from.display())));
            }
        }
        at = hole;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    use swell_storage::units::MIB;

    fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
        let mut file = OpenOptions::new().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(bytes).unwrap();
    }

    fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
        let mut file = File::open(path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0; len];
        file.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn a_sparse_copy_keeps_data_and_holes_and_grows_to_the_length_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a.img"), dir.path().join("b.img"));
        File::create(&from).unwrap().set_len(256 * MIB).unwrap();
        write_at(&from, 0, b"head");
        write_at(&from, 100 * MIB, &[7u8; 3 * 4096]);
        write_at(&from, 256 * MIB - 4, b"tail");
        let method = copy_file(&from, &to, 512 * MIB).unwrap();
        assert_eq!(fs::metadata(&to).unwrap().len(), 512 * MIB);
        assert_eq!(read_at(&to, 0, 4), b"head");
        assert_eq!(read_at(&to, 100 * MIB, 3 * 4096), vec![7u8; 3 * 4096]);
        assert_eq!(read_at(&to, 256 * MIB - 4, 4), b"tail");
        assert_eq!(read_at(&to, 300 * MIB, 8), vec![0u8; 8]);
        if method == Method::Sparse {
            assert!(fs::metadata(&to).unwrap().blocks() * 512 < 4 * MIB, "holes kept: {} blocks", fs::metadata(&to).unwrap().blocks());
        }
        assert!(!partial_path(&to).exists(), "the partial file was renamed into place");
        // The copy is independent of its source.
        write_at(&from, 0, b"HEAD");
        assert_eq!(read_at(&to, 0, 4), b"head");
    }

    #[test]
    fn the_data_range_copy_skips_holes_wherever_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a.img"), dir.path().join("b.img"));
        File::create(&from).unwrap().set_len(64 * MIB).unwrap();
        write_at(&from, 32 * MIB, b"middle");
        copy_data_ranges(&from, &to).unwrap();
        assert_eq!(fs::metadata(&to).unwrap().len(), 64 * MIB);
        assert_eq!(read_at(&to, 32 * MIB, 6), b"middle");
        assert!(fs::metadata(&to).unwrap().blocks() * 512 <= MIB, "only the data range was written");
    }

    #[test]
    fn a_copy_replaces_a_partial_one_left_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a.img"), dir.path().join("b.img"));
        fs::write(&from, b"complete").unwrap();
        fs::write(partial_path(&to), b"half").unwrap();
        copy_file(&from, &to, 0).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"complete");
    }

    #[test]
    fn a_missing_source_is_an_error_and_leaves_no_destination() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("b.img");
        assert!(copy_file(&dir.path().join("none"), &to, 10).is_err());
        assert!(!to.exists());
    }
}
