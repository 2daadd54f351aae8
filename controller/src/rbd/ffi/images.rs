//! librbd: creating, opening, growing and removing images, the trash, and
//! pool statistics.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::ptr;

use super::{Errno, IoCtx, IoCtxT, check, cstr};

type ImageT = *mut c_void;
type PoolStatsT = *mut c_void;

/// `RBD_FEATURE_LAYERING` from rbd/features.h.
pub const RBD_FEATURE_LAYERING: u64 = 1 << 0;
/// `RBD_FEATURE_EXCLUSIVE_LOCK` from rbd/features.h (Swell never sets it).
pub const RBD_FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
/// `RBD_POOL_STAT_OPTION_IMAGE_PROVISIONED_BYTES`: the second entry of
/// `rbd_pool_stat_option_t` in librbd.h (after `RBD_POOL_STAT_OPTION_IMAGES`).
const RBD_POOL_STAT_OPTION_IMAGE_PROVISIONED_BYTES: c_int = 1;

const RBD_MAX_BLOCK_NAME_SIZE: usize = 24;
const RBD_MAX_IMAGE_NAME_SIZE: usize = 96;

/// `rbd_image_info_t` from librbd.h.
#[repr(C)]
struct RbdImageInfo {
    size: u64,
    obj_size: u64,
    num_objs: u64,
    order: c_int,
    block_name_prefix: [c_char; RBD_MAX_BLOCK_NAME_SIZE],
    parent_pool: i64,
    parent_name: [c_char; RBD_MAX_IMAGE_NAME_SIZE],
}

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
pub struct TrashEntry {
    /// The image id, which names it in the trash.
    pub id: String,
    /// The name it had.
    pub name: String,
}

/// `rbd_image_spec_t` from librbd.h.
#[repr(C)]
struct RbdImageSpec {
    id: *mut c_char,
    name: *mut c_char,
}

#[link(name = "rbd")]
unsafe extern "C" {
    fn rbd_create2(io: IoCtxT, name: *const c_char, size: u64, features: u64, order: *mut c_int) -> c_int;
    fn rbd_remove(io: IoCtxT, name: *const c_char) -> c_int;
    fn rbd_trash_move(io: IoCtxT, name: *const c_char, delay: u64) -> c_int;
    fn rbd_trash_list(io: IoCtxT, entries: *mut RbdTrashImageInfo, num_entries: *mut usize) -> c_int;
    fn rbd_trash_list_cleanup(entries: *mut RbdTrashImageInfo, num_entries: usize);
    fn rbd_trash_remove(io: IoCtxT, id: *const c_char, force: bool) -> c_int;
    fn rbd_list2(io: IoCtxT, images: *mut RbdImageSpec, max_images: *mut usize) -> c_int;
    fn rbd_image_spec_list_cleanup(images: *mut RbdImageSpec, num_images: usize);
    fn rbd_open(io: IoCtxT, name: *const c_char, image: *mut ImageT, snap_name: *const c_char) -> c_int;
    fn rbd_open_read_only(io: IoCtxT, name: *const c_char, image: *mut ImageT, snap_name: *const c_char) -> c_int;
    fn rbd_close(image: ImageT) -> c_int;
    fn rbd_stat(image: ImageT, info: *mut RbdImageInfo, infosize: usize) -> c_int;
    fn rbd_resize2(image: ImageT, size: u64, allow_shrink: bool, cb: *const c_void, cbdata: *mut c_void) -> c_int;
    fn rbd_metadata_get(image: ImageT, key: *const c_char, value: *mut c_char, val_len: *mut usize) -> c_int;
    fn rbd_metadata_set(image: ImageT, key: *const c_char, value: *const c_char) -> c_int;
    fn rbd_get_id(image: ImageT, id: *mut c_char, id_len: usize) -> c_int;
    fn rbd_pool_stats_create(stats: *mut PoolStatsT);
    fn rbd_pool_stats_destroy(stats: PoolStatsT);
    fn rbd_pool_stats_option_add_uint64(stats: PoolStatsT, stat_option: c_int, stat_val: *mut u64) -> c_int;
    fn rbd_pool_stats_get(io: IoCtxT, stats: PoolStatsT) -> c_int;
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
    /// `rbd_create2` with exactly `features` and the default object size.
    pub fn create_image(&self, name: &str, size: u64, features: u64) -> Result<(), Errno> {
        let name = cstr(name)?;
        let mut order: c_int = 0;
        // SAFETY: a live io context, a NUL-terminated name, a valid out pointer
        // (order 0 asks for the default object size).
        check(unsafe { rbd_create2(self.raw, name.as_ptr(), size, features, &mut order) }).map(drop)
    }

    /// `rbd_pool_stats_get` for the sum of the sizes of the pool's images
    /// (not in the trash, snapshots not counted). librbd reads each image's
    /// header object; no image is opened, so nothing is watched or locked.
    pub fn provisioned_bytes(&self) -> Result<u64, Errno> {
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

    /// `rbd_remove`.
    pub fn remove_image(&self, name: &str) -> Result<(), Errno> {
        let name = cstr(name)?;
        // SAFETY: a live io context and a NUL-terminated name.
        check(unsafe { rbd_remove(self.raw, name.as_ptr()) }).map(drop)
    }

    /// `rbd_trash_move` with no deferment: the name is free at once, the
    /// data stays until [`IoCtx::trash_remove`].
    pub fn trash_move(&self, name: &str) -> Result<(), Errno> {
        let name = cstr(name)?;
        // SAFETY: a live io context and a NUL-terminated name.
        check(unsafe { rbd_trash_move(self.raw, name.as_ptr(), 0) }).map(drop)
    }

    /// `rbd_trash_remove` (not forced: an image whose deferment has not
    /// ended stays). EBUSY while the image still has watchers.
    pub fn trash_remove(&self, id: &str) -> Result<(), Errno> {
        let id = cstr(id)?;
        // SAFETY: a live io context and a NUL-terminated id.
        check(unsafe { rbd_trash_remove(self.raw, id.as_ptr(), false) }).map(drop)
    }

    /// `rbd_trash_list`: every image in the pool's trash.
    pub fn trash_list(&self) -> Result<Vec<TrashEntry>, Errno> {
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

    /// `rbd_list2`: the names of all images in the pool.
    pub fn list_images(&self) -> Result<Vec<String>, Errno> {
        // SAFETY: rbd_list2 fills at most `count` specs of a live io context's
        // pool and initialises them on success; rbd_image_spec_list_cleanup
        // frees exactly the strings it set.
        unsafe {
            list_filled(
                |specs, count| rbd_list2(self.raw, specs, count),
                |spec: &RbdImageSpec| owned_string(spec.name),
                |specs, count| rbd_image_spec_list_cleanup(specs, count),
            )
        }
    }

    /// `rbd_open` (read-write: may take the exclusive lock and needs writes).
    pub fn open(&self, name: &str) -> Result<Image<'_>, Errno> {
        self.open_with(name, false)
    }

    /// `rbd_open_read_only`.
    pub fn open_read_only(&self, name: &str) -> Result<Image<'_>, Errno> {
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
pub struct Image<'io> {
    raw: ImageT,
    closed: bool,
    _io: PhantomData<&'io IoCtx>,
}

// SAFETY: an image handle may move between threads; it is never shared (not Sync).
unsafe impl Send for Image<'_> {}

impl Image<'_> {
    /// `rbd_stat`: the image's size in bytes now.
    pub fn size(&self) -> Result<u64, Errno> {
        // SAFETY: all-zero is a valid `rbd_image_info_t` (integers and char arrays).
        let mut info: RbdImageInfo = unsafe { std::mem::zeroed() };
        // SAFETY: an open image and a struct of the size passed.
        check(unsafe { rbd_stat(self.raw, &mut info, std::mem::size_of::<RbdImageInfo>()) })?;
        Ok(info.size)
    }

    /// `rbd_resize2` that refuses to shrink (librbd answers EINVAL then).
    pub fn grow(&self, size: u64) -> Result<(), Errno> {
        // SAFETY: an open image; no progress callback.
        check(unsafe { rbd_resize2(self.raw, size, false, ptr::null(), ptr::null_mut()) }).map(drop)
    }

    /// `rbd_metadata_get`; `None` when the key is not set.
    pub fn metadata(&self, key: &str) -> Result<Option<String>, Errno> {
        let key = cstr(key)?;
        let mut len = 256usize;
        loop {
            let mut buf = vec![0u8; len];
            // SAFETY: `buf` holds `len` bytes; librbd writes at most that many.
            let ret = unsafe { rbd_metadata_get(self.raw, key.as_ptr(), buf.as_mut_ptr().cast(), &mut len) };
            match ret {
                r if r == -(Errno::ERANGE as c_int) && len > buf.len() => continue,
                r if r == -(Errno::ENOENT as c_int) => return Ok(None),
                r => check(r)?,
            };
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
    }

    /// `rbd_get_id`: the image's id, which names its header object.
    pub fn id(&self) -> Result<String, Errno> {
        // Ids are 12–16 hex characters; librbd answers -ERANGE if it needs more.
        let mut buf = [0 as c_char; 64];
        // SAFETY: an open image and a buffer of the length passed.
        check(unsafe { rbd_get_id(self.raw, buf.as_mut_ptr(), buf.len()) })?;
        // SAFETY: on success librbd wrote a NUL-terminated string into `buf`.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
    }

    /// `rbd_metadata_set` (a write: needs a read-write open).
    pub fn set_metadata(&self, key: &str, value: &str) -> Result<(), Errno> {
        let (key, value) = (cstr(key)?, cstr(value)?);
        // SAFETY: an open image and NUL-terminated strings.
        check(unsafe { rbd_metadata_set(self.raw, key.as_ptr(), value.as_ptr()) }).map(drop)
    }

    /// `rbd_close`, reporting its error (it may flush and release locks).
    pub fn close(mut self) -> Result<(), Errno> {
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
    fn image_info_matches_the_c_layout() {
        // C layout: 3 × u64 (24) + int (4) + char[24] = 52, padded to 56 for the i64, + 8 + 96 = 160.
        assert_eq!(std::mem::size_of::<RbdImageInfo>(), 160);
        assert_eq!(std::mem::offset_of!(RbdImageInfo, parent_pool), 56);
    }

    #[test]
    fn trash_info_matches_the_c_layout() {
        // C layout: two pointers (16), an enum (4, padded to 8), two time_t (16) = 40.
        assert_eq!(std::mem::size_of::<RbdTrashImageInfo>(), 40);
        assert_eq!(std::mem::offset_of!(RbdTrashImageInfo, deletion_time), 24);
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
