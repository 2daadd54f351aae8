//! librbd: creating, opening, growing and removing images, the trash,
//! pool statistics, snapshots, clones (format 2) and flattening.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::ptr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;

use super::rados::{IoCtx, IoCtxT, check, cstr};

type ImageT = *mut c_void;
type PoolStatsT = *mut c_void;
type ImageOptionsT = *mut c_void;
type ProgressFn = unsafe extern "C" fn(offset: u64, total: u64, data: *mut c_void) -> c_int;

/// `RBD_FEATURE_LAYERING` from rbd/features.h.
pub(crate) const RBD_FEATURE_LAYERING: u64 = 1 << 0;
/// `RBD_FEATURE_EXCLUSIVE_LOCK` from rbd/features.h (Swell never sets it).
#[cfg(test)]
pub(crate) const RBD_FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
/// `RBD_POOL_STAT_OPTION_IMAGE_PROVISIONED_BYTES`: the second entry of
/// `rbd_pool_stat_option_t` in librbd.h (after `RBD_POOL_STAT_OPTION_IMAGES`).
const RBD_POOL_STAT_OPTION_IMAGE_PROVISIONED_BYTES: c_int = 1;

/// `RBD_IMAGE_OPTION_FEATURES` and `RBD_IMAGE_OPTION_CLONE_FORMAT` from
/// the `rbd_image_option_t` enum of librbd.h.
const RBD_IMAGE_OPTION_FEATURES: c_int = 1;
const RBD_IMAGE_OPTION_CLONE_FORMAT: c_int = 12;

/// `rbd_trash_image_info_t` from librbd.h.
#[repr(C)]
struct RbdTrashImageInfo {
    id: *mut c_char,
    name: *mut c_char,
    source: c_int,
    deletion_time: i64,
    deferment_end_time: i64,
}

/// An image in a pool's trash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrashEntry {
    /// The image id, which names it in the trash.
    pub id: String,
    /// The name it had.
    pub name: String,
}

/// `rbd_snap_info_t` from librbd.h.
#[repr(C)]
struct RbdSnapInfo {
    id: u64,
    size: u64,
    name: *const c_char,
}

/// A user snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapInfo {
    /// Its id within the image.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The image's size when it was taken.
    pub size: u64,
}

/// `struct timespec` (Linux, 64-bit).
#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// `rbd_snap_namespace_type_t`'s user namespace (librbd.h).
const RBD_SNAP_NAMESPACE_TYPE_USER: c_int = 0;

#[link(name = "rbd")]
unsafe extern "C" {
    fn rbd_create2(io: IoCtxT, name: *const c_char, size: u64, features: u64, order: *mut c_int) -> c_int;
    fn rbd_remove(io: IoCtxT, name: *const c_char) -> c_int;
    fn rbd_trash_move(io: IoCtxT, name: *const c_char, delay: u64) -> c_int;
    fn rbd_trash_list(io: IoCtxT, entries: *mut RbdTrashImageInfo, num_entries: *mut usize) -> c_int;
    fn rbd_trash_list_cleanup(entries: *mut RbdTrashImageInfo, num_entries: usize);
    fn rbd_trash_remove(io: IoCtxT, id: *const c_char, force: bool) -> c_int;
    fn rbd_open(io: IoCtxT, name: *const c_char, image: *mut ImageT, snap_name: *const c_char) -> c_int;
    fn rbd_open_read_only(io: IoCtxT, name: *const c_char, image: *mut ImageT, snap_name: *const c_char) -> c_int;
    fn rbd_close(image: ImageT) -> c_int;
    fn rbd_resize2(image: ImageT, size: u64, allow_shrink: bool, cb: *const c_void, cbdata: *mut c_void) -> c_int;
    fn rbd_pool_stats_create(stats: *mut PoolStatsT);
    fn rbd_pool_stats_destroy(stats: PoolStatsT);
    fn rbd_pool_stats_option_add_uint64(stats: PoolStatsT, stat_option: c_int, stat_val: *mut u64) -> c_int;
    fn rbd_pool_stats_get(io: IoCtxT, stats: PoolStatsT) -> c_int;
    fn rbd_rename(io: IoCtxT, src: *const c_char, dst: *const c_char) -> c_int;
    fn rbd_image_options_create(opts: *mut ImageOptionsT);
    fn rbd_image_options_destroy(opts: ImageOptionsT);
    fn rbd_image_options_set_uint64(opts: ImageOptionsT, optname: c_int, optval: u64) -> c_int;
    fn rbd_clone3(p_io: IoCtxT, p_name: *const c_char, p_snap_name: *const c_char, c_io: IoCtxT, c_name: *const c_char, c_opts: ImageOptionsT) -> c_int;
    fn rbd_snap_create(image: ImageT, name: *const c_char) -> c_int;
    fn rbd_snap_remove(image: ImageT, name: *const c_char) -> c_int;
    fn rbd_snap_list(image: ImageT, snaps: *mut RbdSnapInfo, max_snaps: *mut c_int) -> c_int;
    fn rbd_snap_list_end(snaps: *mut RbdSnapInfo);
    fn rbd_snap_get_timestamp(image: ImageT, snap_id: u64, timestamp: *mut Timespec) -> c_int;
    fn rbd_snap_get_namespace_type(image: ImageT, snap_id: u64, namespace_type: *mut c_int) -> c_int;
    fn rbd_flatten_with_progress(image: ImageT, cb: ProgressFn, cbdata: *mut c_void) -> c_int;
    fn rbd_namespace_exists(io: IoCtxT, namespace_name: *const c_char, exists: *mut bool) -> c_int;
    fn rbd_metadata_get(image: ImageT, key: *const c_char, value: *mut c_char, val_len: *mut usize) -> c_int;
    fn rbd_metadata_set(image: ImageT, key: *const c_char, value: *const c_char) -> c_int;
}

/// The progress callback of a flatten: asks librbd to stop (a negative
/// return) once the deadline in `data` has passed.
///
/// # Safety
/// `data` points to the `Instant` passed by [`Image::flatten`], alive for
/// the whole call.
unsafe extern "C" fn stop_at_deadline(_offset: u64, _total: u64, data: *mut c_void) -> c_int {
    // SAFETY: guaranteed by the caller (flatten passes a live &Instant).
    let deadline = unsafe { &*data.cast::<Instant>() };
    // Tests hold a flatten mid-copy here (a sleep per object copied).
    fail::fail_point!("rbd-flatten-copying");
    if Instant::now() >= *deadline { -(Errno::ETIMEDOUT as c_int) } else { 0 }
}

/// Calls a librbd list function that fills a caller-sized array and answers
/// -ERANGE, with the count it needs, when the array is too small. Returns
/// the entries converted by `read`, after `cleanup` freed what librbd
/// allocated in them.
///
/// # Safety
/// `fill(ptr, &mut count)` writes at most `count` entries to `ptr` and, on
/// success, initialises the first `count` (the new value); `read` may then
/// follow their pointers, and `cleanup(ptr, count)` frees what they own.
unsafe fn list_filled<E, T>(fill: impl Fn(*mut E, &mut usize) -> c_int, read: impl Fn(&E) -> T, cleanup: impl Fn(*mut E, usize)) -> Result<Vec<T>, Errno> {
    let mut capacity = 64usize;
    loop {
        let mut raw: Vec<E> = Vec::with_capacity(capacity);
        let mut count = capacity;
        let ret = fill(raw.as_mut_ptr(), &mut count);
        if ret == -(Errno::ERANGE as c_int) {
            capacity = count.max(capacity * 2);
            continue;
        }
        check(ret)?;
        // SAFETY: on success `fill` initialised the first `count` entries.
        unsafe { raw.set_len(count) };
        let items = raw.iter().map(&read).collect();
        cleanup(raw.as_mut_ptr(), count);
        return Ok(items);
    }
}

/// A copy of a C string librbd owns; empty for a null pointer.
fn owned_string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: librbd sets non-null strings to NUL-terminated ones it owns,
    // alive until the list's cleanup.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl IoCtx {
    /// `rbd_namespace_exists`: whether `rbd namespace create` made RBD
    /// namespace `name` in this pool (librbd reads the pool's default
    /// namespace for it, whatever this context's).
    pub(crate) fn rbd_namespace_exists(&self, name: &str) -> Result<bool, Errno> {
        let name = cstr(name)?;
        let mut exists = false;
        // SAFETY: a live io context, a NUL-terminated name, a valid out pointer.
        check(unsafe { rbd_namespace_exists(self.raw, name.as_ptr(), &mut exists) })?;
        Ok(exists)
    }

    /// `rbd_create2` with exactly `features` and the default object size.
    pub(crate) fn create_image(&self, name: &str, size: u64, features: u64) -> Result<(), Errno> {
        let name = cstr(name)?;
        let mut order: c_int = 0;
        // SAFETY: a live io context, a NUL-terminated name, a valid out pointer
        // (order 0 asks for the default object size).
        check(unsafe { rbd_create2(self.raw, name.as_ptr(), size, features, &mut order) }).map(drop)
    }

    /// `rbd_pool_stats_get` for the sum of the sizes of the pool's images
    /// (not in the trash, snapshots not counted). librbd reads each image's
    /// header object; no image is opened, so nothing is watched or locked.
    pub(crate) fn provisioned_bytes(&self) -> Result<u64, Errno> {
        let mut stats: PoolStatsT = ptr::null_mut();
        // SAFETY: a valid out pointer; destroyed below on every path.
        unsafe { rbd_pool_stats_create(&mut stats) };
        let mut provisioned: u64 = 0;
        // SAFETY: `stats` is live; `provisioned` outlives `rbd_pool_stats_get`,
        // which is where librbd writes through the pointer.
        let ret = unsafe { rbd_pool_stats_option_add_uint64(stats, RBD_POOL_STAT_OPTION_IMAGE_PROVISIONED_BYTES, &mut provisioned) };
        // SAFETY: a live io context and stats object.
        let ret = if ret < 0 { ret } else { unsafe { rbd_pool_stats_get(self.raw, stats) } };
        // SAFETY: created above, destroyed once; librbd no longer writes to `provisioned`.
        unsafe { rbd_pool_stats_destroy(stats) };
        check(ret).map(|_| provisioned)
    }

    /// `rbd_rename` within this pool.
    pub(crate) fn rename_image(&self, from: &str, to: &str) -> Result<(), Errno> {
        let (from, to) = (cstr(from)?, cstr(to)?);
        // SAFETY: a live io context and NUL-terminated names.
        check(unsafe { rbd_rename(self.raw, from.as_ptr(), to.as_ptr()) }).map(drop)
    }

    /// `rbd_clone3`: `name` (in this pool) as a format-2 clone of
    /// `parent`'s snapshot `snapshot` (in `parent_io`'s pool), with exactly
    /// `features`. Format 2 needs no protected snapshot, and lets the
    /// snapshot and its image be removed while clones still read from them.
    pub(crate) fn clone_image(&self, parent_io: &IoCtx, parent: &str, snapshot: &str, name: &str, features: u64) -> Result<(), Errno> {
        let (parent, snapshot, name) = (cstr(parent)?, cstr(snapshot)?, cstr(name)?);
        let mut opts: ImageOptionsT = ptr::null_mut();
        // SAFETY: a valid out pointer; the options are destroyed below on every path.
        unsafe { rbd_image_options_create(&mut opts) };
        // SAFETY: live options; librbd copies the values.
        let set = unsafe {
            check(rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FEATURES, features))
                .and_then(|_| check(rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_CLONE_FORMAT, 2)))
        };
        // SAFETY: live io contexts and options, NUL-terminated names.
        let cloned = set.and_then(|_| check(unsafe { rbd_clone3(parent_io.raw, parent.as_ptr(), snapshot.as_ptr(), self.raw, name.as_ptr(), opts) }));
        // SAFETY: created above, destroyed once, no longer used by librbd.
        unsafe { rbd_image_options_destroy(opts) };
        cloned.map(drop)
    }

    /// `rbd_remove`.
    pub(crate) fn remove_image(&self, name: &str) -> Result<(), Errno> {
        let name = cstr(name)?;
        // SAFETY: a live io context and a NUL-terminated name.
        check(unsafe { rbd_remove(self.raw, name.as_ptr()) }).map(drop)
    }

    /// `rbd_trash_move` with no deferment: the name is free at once, the
    /// data stays until [`IoCtx::trash_remove`].
    pub(crate) fn trash_move(&self, name: &str) -> Result<(), Errno> {
        let name = cstr(name)?;
        // SAFETY: a live io context and a NUL-terminated name.
        check(unsafe { rbd_trash_move(self.raw, name.as_ptr(), 0) }).map(drop)
    }

    /// `rbd_trash_remove` (not forced: an image whose deferment has not
    /// ended stays). EBUSY while the image still has watchers.
    pub(crate) fn trash_remove(&self, id: &str) -> Result<(), Errno> {
        let id = cstr(id)?;
        // SAFETY: a live io context and a NUL-terminated id.
        check(unsafe { rbd_trash_remove(self.raw, id.as_ptr(), false) }).map(drop)
    }

    /// `rbd_trash_list`: every image in the pool's trash.
    pub(crate) fn trash_list(&self) -> Result<Vec<TrashEntry>, Errno> {
        // SAFETY: rbd_trash_list fills at most `count` entries of a live io
        // context's trash and initialises them on success;
        // rbd_trash_list_cleanup frees exactly the strings it set.
        unsafe {
            list_filled(
                |entries, count| rbd_trash_list(self.raw, entries, count),
                |info: &RbdTrashImageInfo| TrashEntry { id: owned_string(info.id), name: owned_string(info.name) },
                |entries, count| rbd_trash_list_cleanup(entries, count),
            )
        }
    }

    /// `rbd_open` (read-write: may take the exclusive lock and needs writes).
    pub(crate) fn open(&self, name: &str) -> Result<Image<'_>, Errno> {
        self.open_with(name, false)
    }

    /// `rbd_open_read_only`.
    pub(crate) fn open_read_only(&self, name: &str) -> Result<Image<'_>, Errno> {
        self.open_with(name, true)
    }

    fn open_with(&self, name: &str, read_only: bool) -> Result<Image<'_>, Errno> {
        let name = cstr(name)?;
        let mut raw: ImageT = ptr::null_mut();
        // SAFETY: a live io context, a NUL-terminated name, a valid out pointer, no snapshot.
        let ret = unsafe {
            if read_only {
                rbd_open_read_only(self.raw, name.as_ptr(), &mut raw, ptr::null())
            } else {
                rbd_open(self.raw, name.as_ptr(), &mut raw, ptr::null())
            }
        };
        check(ret)?;
        Ok(Image { raw, closed: false, _io: PhantomData })
    }
}

/// An open image; closed by [`Image::close`] (or, ignoring errors, on drop).
pub(crate) struct Image<'io> {
    raw: ImageT,
    closed: bool,
    _io: PhantomData<&'io IoCtx>,
}

// SAFETY: an image handle may move between threads; it is never shared (not Sync).
unsafe impl Send for Image<'_> {}

impl Image<'_> {
    /// `rbd_resize2` that refuses to shrink (librbd answers EINVAL then).
    pub(crate) fn grow(&self, size: u64) -> Result<(), Errno> {
        // SAFETY: an open image; no progress callback.
        check(unsafe { rbd_resize2(self.raw, size, false, ptr::null(), ptr::null_mut()) }).map(drop)
    }

    /// `rbd_snap_create` (a write: needs a read-write open).
    pub(crate) fn create_snapshot(&self, name: &str) -> Result<(), Errno> {
        let name = cstr(name)?;
        // SAFETY: an open image and a NUL-terminated name.
        check(unsafe { rbd_snap_create(self.raw, name.as_ptr()) }).map(drop)
    }

    /// `rbd_snap_remove`: a snapshot format-2 clones still read from moves
    /// to the snapshot trash and goes with its last clone.
    pub(crate) fn remove_snapshot(&self, name: &str) -> Result<(), Errno> {
        let name = cstr(name)?;
        // SAFETY: an open image and a NUL-terminated name.
        check(unsafe { rbd_snap_remove(self.raw, name.as_ptr()) }).map(drop)
    }

    /// The image's user snapshots. `rbd_snap_list` also lists those in the
    /// image's snapshot trash (removed while format-2 clones still read from
    /// them, named by a UUID; they go by themselves with their last clone):
    /// counted as the image's, they kept a deleted volume's image for good.
    pub(crate) fn snapshots(&self) -> Result<Vec<SnapInfo>, Errno> {
        let mut user = Vec::new();
        for snap in self.all_snapshots()? {
            let mut namespace: c_int = -1;
            // SAFETY: an open image and a valid out pointer.
            check(unsafe { rbd_snap_get_namespace_type(self.raw, snap.id, &mut namespace) })?;
            if namespace == RBD_SNAP_NAMESPACE_TYPE_USER {
                user.push(snap);
            }
        }
        Ok(user)
    }

    /// `rbd_snap_list`: every snapshot, in every namespace.
    fn all_snapshots(&self) -> Result<Vec<SnapInfo>, Errno> {
        let mut capacity: c_int = 16;
        loop {
            let slots = usize::try_from(capacity).map_err(|_| Errno::ERANGE)?;
            let mut raw: Vec<RbdSnapInfo> = Vec::with_capacity(slots);
            let mut max = capacity;
            // SAFETY: an open image and room for `max` entries.
            let ret = unsafe { rbd_snap_list(self.raw, raw.as_mut_ptr(), &mut max) };
            if ret == -(Errno::ERANGE as c_int) {
                capacity = max.max(capacity.saturating_mul(2));
                continue;
            }
            let count = usize::try_from(check(ret)?).map_err(|_| Errno::ERANGE)?;
            // SAFETY: on success librbd initialised `count` entries (plus a
            // terminating one, which rbd_snap_list_end does not need here).
            unsafe { raw.set_len(count) };
            let snaps = raw.iter().map(|s| SnapInfo { id: s.id, name: owned_string(s.name), size: s.size }).collect();
            // SAFETY: frees the names librbd allocated in exactly these entries.
            unsafe { rbd_snap_list_end(raw.as_mut_ptr()) };
            return Ok(snaps);
        }
    }

    /// `rbd_snap_get_timestamp`: when snapshot `id` was taken.
    pub(crate) fn snapshot_time(&self, id: u64) -> Result<SystemTime, Errno> {
        let mut time = Timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: an open image and a valid out pointer.
        check(unsafe { rbd_snap_get_timestamp(self.raw, id, &mut time) })?;
        let nanos = u32::try_from(time.tv_nsec).unwrap_or(0);
        Ok(UNIX_EPOCH + Duration::new(u64::try_from(time.tv_sec).unwrap_or(0), nanos))
    }

    /// `rbd_flatten_with_progress`: copies what the image reads from its
    /// parent into the image and detaches it. Asked to stop once `deadline`
    /// passes (ETIMEDOUT then); what was copied stays, so a later flatten
    /// goes on from there.
    pub(crate) fn flatten(&self, deadline: Instant) -> Result<(), Errno> {
        // SAFETY: an open image; the callback only reads `deadline`, which
        // outlives the call.
        check(unsafe { rbd_flatten_with_progress(self.raw, stop_at_deadline, (&deadline as *const Instant).cast_mut().cast()) }).map(drop)
    }

    /// `rbd_metadata_get`: the image metadata value of `key`, `None` when unset.
    pub(crate) fn metadata(&self, key: &str) -> Result<Option<String>, Errno> {
        let key = cstr(key)?;
        let mut capacity: usize = 512;
        loop {
            let mut buf = vec![0u8; capacity];
            let mut len = capacity;
            // SAFETY: an open image, a NUL-terminated key, room for `len` bytes.
            let ret = unsafe { rbd_metadata_get(self.raw, key.as_ptr(), buf.as_mut_ptr().cast(), &mut len) };
            match check(ret) {
                // librbd wrote the length it needs (with the NUL) into `len`.
                Err(Errno::ERANGE) if len > capacity => capacity = len,
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
                Ok(_) => {
                    let value = CStr::from_bytes_until_nul(&buf).map_err(|_| Errno::EINVAL)?;
                    return Ok(Some(value.to_string_lossy().into_owned()));
                }
            }
        }
    }

    /// `rbd_metadata_set` (a write: needs a read-write open).
    pub(crate) fn set_metadata(&self, key: &str, value: &str) -> Result<(), Errno> {
        let (key, value) = (cstr(key)?, cstr(value)?);
        // SAFETY: an open image and NUL-terminated strings, which librbd copies.
        check(unsafe { rbd_metadata_set(self.raw, key.as_ptr(), value.as_ptr()) }).map(drop)
    }

    /// `rbd_close`, reporting its error (it may flush and release locks).
    pub(crate) fn close(mut self) -> Result<(), Errno> {
        self.closed = true;
        // SAFETY: an open image, closed exactly once.
        check(unsafe { rbd_close(self.raw) }).map(drop)
    }
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        if !self.closed {
            // SAFETY: an open image, closed exactly once.
            unsafe { rbd_close(self.raw) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trash_info_matches_the_c_layout() {
        // C layout: two pointers (16), an enum (4, padded to 8), two time_t (16) = 40.
        assert_eq!(std::mem::size_of::<RbdTrashImageInfo>(), 40);
        assert_eq!(std::mem::offset_of!(RbdTrashImageInfo, deletion_time), 24);
    }

    #[test]
    fn snap_info_and_timespec_match_the_c_layout() {
        // C layout: two uint64_t and a pointer = 24; struct timespec = 16.
        assert_eq!(std::mem::size_of::<RbdSnapInfo>(), 24);
        assert_eq!(std::mem::offset_of!(RbdSnapInfo, name), 16);
        assert_eq!(std::mem::size_of::<Timespec>(), 16);
        // librbd.h: rbd_image_option_t.
        assert_eq!((RBD_IMAGE_OPTION_FEATURES, RBD_IMAGE_OPTION_CLONE_FORMAT), (1, 12));
    }

    #[test]
    fn the_flatten_callback_stops_only_after_the_deadline() {
        let mut later = Instant::now() + Duration::from_secs(60);
        // SAFETY: a live Instant for the duration of the call.
        assert_eq!(unsafe { stop_at_deadline(0, 1, (&mut later as *mut Instant).cast()) }, 0);
        let mut past = Instant::now();
        // SAFETY: as above.
        assert!(unsafe { stop_at_deadline(0, 1, (&mut past as *mut Instant).cast()) } < 0);
    }

    #[test]
    fn feature_bits_and_stat_options_match_the_headers() {
        // rbd/features.h: LAYERING (1<<0), EXCLUSIVE_LOCK (1<<2).
        assert_eq!(RBD_FEATURE_LAYERING, 1);
        assert_eq!(RBD_FEATURE_EXCLUSIVE_LOCK, 4);
        // librbd.h: enum { IMAGES, IMAGE_PROVISIONED_BYTES, ... }.
        assert_eq!(RBD_POOL_STAT_OPTION_IMAGE_PROVISIONED_BYTES, 1);
    }
}
