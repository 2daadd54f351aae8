//! The fan-out of records and files ([`crate::paths`]) at work: making a
//! bucket durably, walking keys in order a bucket at a time, and moving the
//! files of the flat layout of earlier versions into their buckets.
//!
//! Crash safety of the move (docs/local-backend.md): each file moves by one
//! `rename` that never replaces (RENAME_NOREPLACE), so a crash leaves it in
//! its old place or its new one, never both or neither; the move runs while
//! no process has an operation in flight (`ledger.active` held exclusive);
//! the buckets are durable (`syncfs`) before any file moves into them, and
//! the moves are (`syncfs` again) before the backend serves, so nothing
//! written later depends on a move the disk may still lose. A start after
//! a crash finds the files still flat and moves them.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use swell_storage::durable;

use crate::paths::is_bucket_name;

/// How a key of one kind (volume or snapshot) yields the digest it is
/// spread by; `None`: not a key of that kind.
pub(crate) type DigestOf = fn(&str) -> Option<&str>;

/// Makes the bucket holding `file` (0700), each new level synced into its
/// parent so a record synced inside it survives a crash; one `stat` when
/// it is there already.
pub(crate) fn make_bucket(file: &Path) -> io::Result<()> {
    let Some(leaf) = file.parent() else { return Ok(()) };
    if leaf.is_dir() {
        return Ok(());
    }
    let Some(middle) = leaf.parent() else { return Ok(()) };
    for dir in [middle, leaf] {
        if !dir.is_dir() {
            durable::private_dir(dir)?;
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
    }
    Ok(())
}

/// The bucket names in `dir`, in order; none when it does not exist.
fn buckets(dir: &Path) -> io::Result<Vec<String>> {
    names_in(dir, |name| is_bucket_name(name).then(|| name.to_owned()))
}

/// What `pick` makes of the names in `dir` (skipping those it answers
/// `None` for), sorted; none when `dir` does not exist.
pub(crate) fn names_in<T: Ord>(dir: &Path, mut pick: impl FnMut(&str) -> Option<T>) -> io::Result<Vec<T>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut picked = Vec::new();
    for entry in entries {
        if let Some(item) = entry?.file_name().to_str().and_then(&mut pick) {
            picked.push(item);
        }
    }
    picked.sort_unstable();
    Ok(picked)
}

/// Visits, in order, the keys of the records (`<key>.json`) under `top`
/// after `after`, until `visit` answers false. Only the buckets that can
/// hold a key past `after` are listed, one at a time, so a page costs its
/// own buckets whatever the number of keys.
pub(crate) fn walk_keys(top: &Path, digest_of: DigestOf, after: Option<&str>, visit: &mut dyn FnMut(&str) -> io::Result<bool>) -> io::Result<()> {
    let from = after.and_then(digest_of).map(|d| (d[..2].to_owned(), d[2..4].to_owned()));
    for first in buckets(top)? {
        if from.as_ref().is_some_and(|(f, _)| first < *f) {
            continue;
        }
        let middle = top.join(&first);
        for second in buckets(&middle)? {
            if from.as_ref().is_some_and(|(f, s)| (&first, &second) < (f, s)) {
                continue;
            }
            let mut keys = BTreeSet::new();
            for entry in fs::read_dir(middle.join(&second))? {
                let name = entry?.file_name();
                let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
                if digest_of(key).is_some() && after.is_none_or(|a| key > a) {
                    keys.insert(key.to_owned());
                }
            }
            for key in keys {
                if !visit(&key)? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Every key under `top`, in order.
pub(crate) fn all_keys(top: &Path, digest_of: DigestOf) -> io::Result<Vec<String>> {
    let mut keys = Vec::new();
    walk_keys(top, digest_of, None, &mut |key| {
        keys.push(key.to_owned());
        Ok(true)
    })?;
    Ok(keys)
}

/// What a file left flat in `top` by an earlier version is.
enum Flat {
    /// A backing file, copy, record or partial copy of `key`: moves into its bucket.
    Move,
    /// A temporary file of a record write a crash cut off: dropped.
    Drop,
    /// Nothing of ours: left alone.
    Keep,
}

fn classify(name: &str, digest_of: DigestOf) -> Flat {
    if name.starts_with('.') && name.ends_with(".tmp") {
        return Flat::Drop;
    }
    // `.<key>.img.part` is a copy in the making (crate::copy).
    let bare = name.strip_prefix('.').and_then(|n| n.strip_suffix(".part")).unwrap_or(name);
    let key = bare.strip_suffix(".img").or_else(|| bare.strip_suffix(".json"));
    if key.and_then(digest_of).is_some() { Flat::Move } else { Flat::Keep }
}

/// Whether `top` still holds files of the flat layout (one listing of its
/// at most 257 names once moved).
pub(crate) fn has_flat_files(top: &Path, digest_of: DigestOf) -> io::Result<bool> {
    let entries = match fs::read_dir(top) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        if name.to_str().is_some_and(|n| !matches!(classify(n, digest_of), Flat::Keep)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Moves every file of the flat layout in `top` into its bucket (`bucket`
/// names it from the key) and syncs what changed; returns how many moved.
/// The caller holds every other process off (see the module's doc).
///
/// The buckets are made first and made durable with one `syncfs`, then
/// the files move, then one more `syncfs`: two syncs for the whole move
/// rather than one per bucket and per file (10,000 volumes make about as
/// many buckets).
pub(crate) fn move_flat_files(top: &Path, digest_of: DigestOf, bucket: &dyn Fn(&str) -> PathBuf) -> io::Result<usize> {
    let mut moves = Vec::new();
    let mut dropped = false;
    for entry in fs::read_dir(top)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if !entry.file_type()?.is_file() {
            continue;
        }
        match classify(&name, digest_of) {
            Flat::Keep => {}
            Flat::Drop => {
                fs::remove_file(entry.path()).or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
                dropped = true;
            }
            Flat::Move => {
                let bare = name.strip_prefix('.').and_then(|n| n.strip_suffix(".part")).unwrap_or(&name);
                let key = bare.rsplit_once('.').map_or(bare, |(key, _)| key);
                moves.push((entry.path(), bucket(key).join(&name)));
            }
        }
    }
    if moves.is_empty() && !dropped {
        return Ok(0);
    }
    let buckets: BTreeSet<&Path> = moves.iter().filter_map(|(_, to)| to.parent()).collect();
    for dir in buckets {
        durable::private_dir(dir)?;
    }
    let sync = || File::open(top).and_then(|dir| nix::unistd::syncfs(&dir).map_err(io::Error::from));
    sync()?;
    let mut moved = 0;
    for (from, to) in &moves {
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => moved += 1,
            // Moved by another start meanwhile.
            Err(Errno::ENOENT) => {}
            Err(Errno::EEXIST) => {
                tracing::warn!(from = %from.display(), to = %to.display(), "a flat file and its moved copy both exist; the moved one is kept and the flat one left for an operator");
            }
            Err(errno) => return Err(io::Error::new(io::Error::from(errno).kind(), format!("move {} to {}: {errno}", from.display(), to.display()))),
        }
    }
    sync()?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_storage::units::MIB;
    use swell_storage::{Backend, Capacity, ContentSource, ExpansionRecord, Placement, SnapshotInfo, VolumeId, VolumeInfo};

    use crate::backend::tests::backend;
    use crate::backend::{LocalBackend, LocalConfig};
    use crate::paths::{image_path, record_path, snapshot_path, snapshot_record_path, snapshots_dir, volumes_dir};

    const POOL: u64 = 1024 * MIB;

    /// What a state directory holds before it is laid out flat.
    struct Made {
        volumes: Vec<VolumeInfo>,
        snapshot: SnapshotInfo,
        /// A volume with an expansion still to make: recorded, not done.
        pending: (VolumeId, u64),
    }

    /// Volumes (blank, grown, restored from a snapshot), a snapshot and a
    /// pending expansion, made through the backend.
    async fn populate(b: &LocalBackend) -> Made {
        let place = Placement::default();
        let a = b.create_volume("a", 8 * MIB, &place).await.unwrap().info().id.clone();
        b.grow_volume(&a, 12 * MIB).await.unwrap();
        let grown = b.create_volume("b", 4 * MIB, &place).await.unwrap().info().id.clone();
        let snapshot = b.create_snapshot("snap", &a).await.unwrap().info().clone();
        b.create_volume_from("c", 16 * MIB, &place, &ContentSource::Snapshot(snapshot.id.clone())).await.unwrap();
        let store = b.expansion_store();
        let hold = store.hold(&grown).await.unwrap().unwrap();
        store.write(&hold, ExpansionRecord::new(&grown, 4 * MIB, 4 * MIB).wishing(4 * MIB, 20 * MIB)).await.unwrap();
        hold.release().await;
        Made { volumes: b.list_volumes(None, 0).await.unwrap(), snapshot, pending: (grown, 20 * MIB) }
    }

    fn open(dir: &Path) -> LocalBackend {
        let config = LocalConfig { state_dir: dir.to_owned(), records_dir: dir.join("controller"), capacity_bytes: Some(POOL), read_only: false };
        LocalBackend::open(&config).unwrap()
    }

    /// Moves every file out of `top`'s buckets into `top` and removes the
    /// buckets: the layout earlier versions kept (the files are as they
    /// wrote them: names and record formats did not change). Returns the
    /// flat files in name order.
    fn flatten(top: &Path) -> Vec<PathBuf> {
        let mut flat = Vec::new();
        for first in buckets(top).unwrap() {
            for second in buckets(&top.join(&first)).unwrap() {
                let leaf = top.join(&first).join(&second);
                for entry in fs::read_dir(&leaf).unwrap() {
                    let entry = entry.unwrap();
                    let to = top.join(entry.file_name());
                    fs::rename(entry.path(), &to).unwrap();
                    flat.push(to);
                }
                fs::remove_dir(&leaf).unwrap();
            }
            fs::remove_dir(top.join(&first)).unwrap();
        }
        flat.sort();
        flat
    }

    /// [`flatten`] of every bucketed directory of the state directory `dir`:
    /// volumes, snapshots and expansion records, in that order.
    fn flatten_state(dir: &Path) -> Vec<PathBuf> {
        let mut flat = flatten(&volumes_dir(dir));
        flat.extend(flatten(&snapshots_dir(dir)));
        flat.extend(flatten(&dir.join("controller/expansions")));
        flat
    }

    /// Rewrites the ledger as versions before this one kept it: the
    /// volumes' bytes only, the snapshots summed on every call instead.
    fn ledger_of_earlier_versions(dir: &Path, made: &Made) {
        let path = dir.join("ledger.json");
        let mut ledger: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let total = ledger["total_bytes"].as_u64().unwrap() - made.snapshot.size_bytes;
        ledger = serde_json::json!({ "total_bytes": total, "changing": ledger["changing"] });
        fs::write(path, serde_json::to_vec_pretty(&ledger).unwrap()).unwrap();
    }

    /// Every volume, snapshot and pending expansion of `made` is where the
    /// new layout keeps it and answers as before, the ledger is exact, and
    /// each can still be grown, restored from and deleted.
    async fn assert_all_there_and_usable(dir: &Path, b: &LocalBackend, made: &Made) {
        assert_eq!(b.list_volumes(None, 0).await.unwrap(), made.volumes, "every volume listed, in order, at its size");
        for volume in &made.volumes {
            assert_eq!(b.volume(&volume.id).await.unwrap().as_ref(), Some(volume));
            assert!(image_path(dir, &volume.id).is_file() && record_path(dir, &volume.id).is_file(), "{} in its bucket", volume.id);
        }
        let snapshot = b.snapshot(&made.snapshot.id).await.unwrap().expect("the snapshot");
        assert!(snapshot.ready && snapshot.size_bytes == made.snapshot.size_bytes, "{snapshot:?}");
        assert!(snapshot_path(dir, snapshot.id.key()).is_file() && snapshot_record_path(dir, snapshot.id.key()).is_file());
        let held: u64 = made.volumes.iter().map(|v| v.size_bytes).sum::<u64>() + snapshot.size_bytes;
        assert_eq!(b.capacity(&Placement::default()).await.unwrap(), Capacity { total_bytes: POOL, available_bytes: POOL - held }, "the ledger is exact");
        let (pending, wanted) = &made.pending;
        let pending_now: Vec<VolumeId> = b.expansion_store().pending().await.unwrap().readable.into_iter().map(|r| r.volume_id).collect();
        assert_eq!(pending_now, vec![pending.clone()], "the pending expansion is still pending");
        let swept: Vec<VolumeId> = b.expansion_store().page(None, 10).await.unwrap().readable.into_iter().map(|r| r.volume_id).collect();
        assert_eq!(swept, vec![pending.clone()], "and its record is swept");
        assert_eq!(b.grow_volume(pending, *wanted).await.unwrap(), *wanted, "and can be made");
        let restored = b.create_volume_from("d", 16 * MIB, &Placement::default(), &ContentSource::Snapshot(snapshot.id.clone())).await.unwrap();
        assert_eq!(restored.info().size_bytes, 16 * MIB);
        b.delete_volume(&made.volumes[0].id).await.unwrap();
        b.delete_snapshot(&snapshot.id).await.unwrap();
        assert_eq!(b.volume(&made.volumes[0].id).await.unwrap(), None);
        for top in [volumes_dir(dir), snapshots_dir(dir), dir.join("controller/expansions")] {
            assert!(!has_flat_files(&top, |k| Some(k)).unwrap(), "{} still holds flat files", top.display());
        }
    }

    #[tokio::test]
    async fn a_state_directory_of_the_flat_layout_opens_with_every_volume_snapshot_and_pending_expansion_usable() {
        let (dir, b) = backend(Some(POOL));
        let made = populate(&b).await;
        drop(b);
        let flat = flatten_state(dir.path());
        assert_eq!(flat.len(), 9, "3 volumes' and a snapshot's files and records, and an expansion record: {flat:?}");
        ledger_of_earlier_versions(dir.path(), &made);
        // Leftovers of an earlier version: a record write a crash cut off
        // (dropped) and a file of nobody's (left alone).
        let key = made.volumes[0].id.key();
        fs::write(volumes_dir(dir.path()).join(format!(".{key}.json.x1y2z3.tmp")), b"{").unwrap();
        fs::write(volumes_dir(dir.path()).join("notes.txt"), b"mine").unwrap();
        let b = open(dir.path());
        assert_all_there_and_usable(dir.path(), &b, &made).await;
        let left: Vec<_> = fs::read_dir(volumes_dir(dir.path())).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(left.iter().all(|n| is_bucket_name(n) || n == "notes.txt") && left.contains(&"notes.txt".to_owned()), "{left:?}");
    }

    #[tokio::test]
    async fn a_move_cut_off_after_any_file_is_finished_by_the_next_start() {
        for cut in 0..=9 {
            let (dir, b) = backend(Some(POOL));
            let made = populate(&b).await;
            drop(b);
            let flat = flatten_state(dir.path());
            ledger_of_earlier_versions(dir.path(), &made);
            // A start killed after `cut` files moved, before it synced anything.
            for file in flat.iter().take(cut) {
                let name = file.file_name().unwrap().to_str().unwrap();
                let key = name.rsplit_once('.').unwrap().0;
                let to = match (key.strip_prefix("local:"), crate::paths::snapshot_digest(key)) {
                    (Some(hex), _) => file.with_file_name(&hex[..2]).join(&hex[2..4]),
                    (None, Some(_)) => crate::paths::snapshot_bucket(dir.path(), key),
                    (None, None) => crate::paths::volume_bucket(dir.path(), key),
                }
                .join(name);
                make_bucket(&to).unwrap();
                fs::rename(file, to).unwrap();
            }
            let b = open(dir.path());
            assert_all_there_and_usable(dir.path(), &b, &made).await;
        }
    }
}
