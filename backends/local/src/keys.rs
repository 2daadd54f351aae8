//! An encrypted local volume's wrapped data key (docs/encryption.md):
//! `<key>.wrapped-key` beside the volume's record, one line of text.
//!
//! The node writes and reads it through [`write_wrapped_key`] and
//! [`read_wrapped_key`]: it holds the key-encryption key, wraps and
//! unwraps; this crate only ever sees the wrapped form, and knows nothing
//! of it but that it is one short printable line. The backend copies it
//! with the data: a snapshot keeps a copy beside its record, a restore or
//! a clone gets its source's, so the copy opens with its source's data key
//! (the node binds it to the copy at its first stage); each copy goes with
//! its volume or snapshot.
//!
//! Files are written through a uniquely named temporary file (0600),
//! fsynced, renamed into place and the directory fsynced: a reader finds
//! the old key or the new one, never a torn one, and a crash never leaves a
//! volume whose data was formatted under a key that is not on disk.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use swell_storage::{VolumeId, durable};

use crate::paths::{record_path, wrapped_key_path};

/// The most a wrapped key file may hold: the stored form is about 160
/// bytes; a larger file is not one, and is not read into memory whole.
const MAX_BYTES: u64 = 1024;

/// The wrapped data key stored with volume `id`, `None` before its first
/// stage. A file that is not one short printable line is InvalidData,
/// naming the file and what is wrong, never taken for "no key" (the stage
/// would then make a new key and format over the data).
pub fn read_wrapped_key(state_dir: &Path, id: &VolumeId) -> io::Result<Option<String>> {
    read_key_file(&wrapped_key_path(state_dir, id))
}

/// Stores `wrapped` as volume `id`'s wrapped data key, replacing any.
/// Refused (NotFound) for a volume that has no record, so a node never
/// leaves a key of a deleted volume behind, and (InvalidInput) for a value
/// that would not read back.
pub fn write_wrapped_key(state_dir: &Path, id: &VolumeId, wrapped: &str) -> io::Result<()> {
    if let Err(problem) = check_line(wrapped) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("wrapped key of volume {id}: {problem}")));
    }
    if !record_path(state_dir, id).is_file() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no local volume {id}")));
    }
    durable::replace(&wrapped_key_path(state_dir, id), format!("{wrapped}\n").as_bytes(), true)
}

/// Makes `to` hold what `from` holds (a copy of the wrapped key, durably),
/// or nothing when `from` has none; returns whether a key was copied.
pub(crate) fn copy_key(from: &Path, to: &Path) -> io::Result<bool> {
    match read_key_file(from)? {
        Some(wrapped) => durable::replace(to, format!("{wrapped}\n").as_bytes(), true).map(|()| true),
        None => durable::remove(to).map(|()| false),
    }
}

/// Whether the key file at `path` holds a wrapped key (a malformed one is
/// an error, as for [`read_wrapped_key`]).
pub(crate) fn holds_key(path: &Path) -> io::Result<bool> {
    read_key_file(path).map(|key| key.is_some())
}

fn read_key_file(path: &Path) -> io::Result<Option<String>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("open {}: {e}", path.display()))),
    };
    let malformed = |problem: String| io::Error::new(io::ErrorKind::InvalidData, format!("wrapped key file {}: {problem}", path.display()));
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(malformed(format!("larger than {MAX_BYTES} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| malformed("not text".into()))?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    check_line(line).map_err(malformed)?;
    Ok(Some(line.to_owned()))
}

/// Why `line` cannot be a stored wrapped key, if it cannot.
fn check_line(line: &str) -> Result<(), String> {
    if line.is_empty() {
        return Err("empty".into());
    }
    if line.len() as u64 >= MAX_BYTES {
        return Err(format!("longer than {} bytes", MAX_BYTES - 1));
    }
    match line.chars().find(|c| !c.is_ascii_graphic()) {
        Some(c) => Err(format!("holds {c:?}: not one line of printable characters")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::backend::tests::backend;
    use crate::paths::snapshot_wrapped_key_path;
    use swell_storage::units::MIB;
    use swell_storage::{Backend, ContentSource, Placement};

    const WRAPPED: &str = "v1:0011223344556677:bm9uY2U:c2VhbGVk";

    #[tokio::test]
    async fn a_wrapped_key_is_stored_private_and_whole_beside_its_record_and_read_back() {
        let (dir, local) = backend(None);
        let id = local.create_volume("pvc-1", 8 * MIB, &Placement::default()).await.unwrap().info().id.clone();
        assert_eq!(read_wrapped_key(dir.path(), &id).unwrap(), None, "no key before the first stage");
        write_wrapped_key(dir.path(), &id, "v1:old").unwrap();
        write_wrapped_key(dir.path(), &id, WRAPPED).unwrap();
        assert_eq!(read_wrapped_key(dir.path(), &id).unwrap().as_deref(), Some(WRAPPED));
        let file = wrapped_key_path(dir.path(), &id);
        assert_eq!(file.parent(), record_path(dir.path(), &id).parent(), "beside the record");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<String> = fs::read_dir(file.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "no temporary file left: {names:?}");
        assert_eq!(local.list_volumes(None, 0).await.unwrap().len(), 1, "the key file is no volume");
        for bad in ["", "two\nlines", "v1:a b", &"x".repeat(2000)] {
            let err = write_wrapped_key(dir.path(), &id, bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {err}");
        }
        assert_eq!(read_wrapped_key(dir.path(), &id).unwrap().as_deref(), Some(WRAPPED), "a refused write changes nothing");
        let unknown: VolumeId = "local:0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(write_wrapped_key(dir.path(), &unknown, WRAPPED).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(!wrapped_key_path(dir.path(), &unknown).exists());
    }

    #[tokio::test]
    async fn a_malformed_key_file_is_refused_naming_the_file_never_read_as_no_key() {
        let (dir, local) = backend(None);
        let id = local.create_volume("pvc-1", 8 * MIB, &Placement::default()).await.unwrap().info().id.clone();
        let file = wrapped_key_path(dir.path(), &id);
        let cases: [(&[u8], &str); 5] =
            [(b"", "empty"), (b"\n", "empty"), (b"v1:a\nv1:b\n", "printable"), (b"v1:\xff\xfe", "not text"), (&[b'x'; 4096], "larger than 1024 bytes")];
        for (bytes, problem) in cases {
            fs::write(&file, bytes).unwrap();
            let err = read_wrapped_key(dir.path(), &id).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bytes:?}");
            let message = err.to_string();
            assert!(message.contains(&file.display().to_string()) && message.contains(problem), "{bytes:?}: {message}");
        }
    }

    #[tokio::test]
    async fn the_key_follows_a_snapshot_and_its_restore_and_a_clone_and_goes_with_each() {
        let (dir, local) = backend(None);
        let path = dir.path();
        let source = local.create_volume("source", 8 * MIB, &Placement::default()).await.unwrap().info().id.clone();
        write_wrapped_key(path, &source, WRAPPED).unwrap();
        let snapshot = local.create_snapshot("snap", &source).await.unwrap().info().clone();
        let snapshot_key = snapshot_wrapped_key_path(path, snapshot.id.key());
        assert_eq!(read_key_file(&snapshot_key).unwrap().as_deref(), Some(WRAPPED), "the snapshot keeps a copy");
        assert_eq!(fs::metadata(&snapshot_key).unwrap().permissions().mode() & 0o777, 0o600);
        // The source's key changes after the snapshot (as at a rebinding):
        // the restore gets the snapshot's copy, a clone the source's key now.
        write_wrapped_key(path, &source, "v1:rewrapped").unwrap();
        let from_snapshot = ContentSource::Snapshot(snapshot.id.clone());
        for source in [&from_snapshot, &ContentSource::Volume(source.clone())] {
            assert!(local.source_encrypted(source).await.unwrap(), "{source} holds a key: the controller takes it as encrypted");
        }
        let restored = local.create_volume_from("restored", 16 * MIB, &Placement::default(), &from_snapshot).await.unwrap().info().id.clone();
        assert_eq!(read_wrapped_key(path, &restored).unwrap().as_deref(), Some(WRAPPED), "the restore holds the snapshot's copy");
        let clone = local.create_volume_from("clone", 8 * MIB, &Placement::default(), &ContentSource::Volume(source.clone())).await.unwrap().info().id.clone();
        assert_eq!(read_wrapped_key(path, &clone).unwrap().as_deref(), Some("v1:rewrapped"), "the clone holds its source's key");
        // A repeated create finds the volume made: a key the node bound
        // since is kept, not copied over again.
        write_wrapped_key(path, &restored, "v1:bound").unwrap();
        local.create_volume_from("restored", 16 * MIB, &Placement::default(), &from_snapshot).await.unwrap();
        assert_eq!(read_wrapped_key(path, &restored).unwrap().as_deref(), Some("v1:bound"));

        local.delete_snapshot(&snapshot.id).await.unwrap();
        assert!(!snapshot_key.exists(), "DeleteSnapshot removes its copy of the key");
        for id in [&source, &restored, &clone] {
            let file = wrapped_key_path(path, id);
            local.delete_volume(id).await.unwrap();
            assert!(!file.exists(), "DeleteVolume removes {}", file.display());
        }
    }

    #[tokio::test]
    async fn a_volume_without_a_key_gives_its_snapshot_and_copies_none() {
        let (dir, local) = backend(None);
        let source = local.create_volume("clear", 8 * MIB, &Placement::default()).await.unwrap().info().id.clone();
        let snapshot = local.create_snapshot("snap", &source).await.unwrap().info().clone();
        assert!(!snapshot_wrapped_key_path(dir.path(), snapshot.id.key()).exists());
        for source in [ContentSource::Snapshot(snapshot.id.clone()), ContentSource::Volume(source.clone())] {
            assert!(!local.source_encrypted(&source).await.unwrap(), "{source} holds no key: in the clear");
        }
        let restored = local.create_volume_from("restored", 8 * MIB, &Placement::default(), &ContentSource::Snapshot(snapshot.id)).await.unwrap();
        assert_eq!(read_wrapped_key(dir.path(), &restored.info().id).unwrap(), None);
    }
}
