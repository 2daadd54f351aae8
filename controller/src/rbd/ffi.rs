//! The one module with `unsafe`: a small hand-written `extern "C"` layer over
//! `librados.h` and `librbd.h` (Ceph 16.2), and safe wrappers returning the
//! negative errno as `Err(errno)` (positive). Nothing above this module sees
//! a raw pointer.
//!
//! Why not the `ceph` crate: its `connect_to_ceph` creates, reads the conf
//! and connects in one call, and its `config_set` refuses a handle that
//! exists, so the op and mount timeouts (which stop librbd hanging on
//! inactive PGs, see shared/CEPH-NOTES.md) cannot be set before connecting;
//! its `mon_command` also drops the errno when the monitor says why.
//!
//! Thread safety: librados cluster handles and io contexts may be used from
//! several threads at once (librbd duplicates the io context per image), so
//! [`Cluster`] and [`IoCtx`] are `Send + Sync`. An [`Image`] is used by one
//! thread at a time (`Send`, not `Sync`).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::path::Path;
use std::ptr;
use std::sync::Arc;

type RadosT = *mut c_void;
type IoCtxT = *mut c_void;
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

#[link(name = "rados")]
unsafe extern "C" {
    fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
    fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
    fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
    fn rados_connect(cluster: RadosT) -> c_int;
    fn rados_shutdown(cluster: RadosT);
    fn rados_ioctx_create(cluster: RadosT, pool_name: *const c_char, ioctx: *mut IoCtxT) -> c_int;
    fn rados_ioctx_destroy(io: IoCtxT);
    fn rados_mon_command(
        cluster: RadosT,
        cmd: *mut *const c_char,
        cmdlen: usize,
        inbuf: *const c_char,
        inbuflen: usize,
        outbuf: *mut *mut c_char,
        outbuflen: *mut usize,
        outs: *mut *mut c_char,
        outslen: *mut usize,
    ) -> c_int;
    fn rados_buffer_free(buf: *mut c_char);
    fn rados_getaddrs(cluster: RadosT, addrs: *mut *mut c_char) -> c_int;
    fn rados_get_instance_id(cluster: RadosT) -> u64;
    fn rados_notify2(
        io: IoCtxT,
        o: *const c_char,
        buf: *const c_char,
        buf_len: c_int,
        timeout_ms: u64,
        reply_buffer: *mut *mut c_char,
        reply_buffer_len: *mut usize,
    ) -> c_int;
    fn rados_wait_for_latest_osdmap(cluster: RadosT) -> c_int;
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

/// A positive errno.
pub type Errno = i32;

const EINVAL: Errno = 22;
const ERANGE: Errno = 34;
const ETIMEDOUT: Errno = 110;

fn check(ret: c_int) -> Result<c_int, Errno> {
    if ret < 0 { Err(-ret) } else { Ok(ret) }
}

/// A string for C; an interior NUL (never produced by Swell's own names) is EINVAL.
fn cstr(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| EINVAL)
}

/// A librados cluster handle, from `rados_create` until `rados_shutdown` on drop.
pub struct Cluster {
    raw: RadosT,
}

// SAFETY: librados cluster handles are documented thread-safe once connected;
// configuration (before connect) happens on one thread in `Connection::open`.
unsafe impl Send for Cluster {}
// SAFETY: as above.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// `rados_create` for `client.<user>`.
    pub fn create(user: &str) -> Result<Self, Errno> {
        let user = cstr(user)?;
        let mut raw: RadosT = ptr::null_mut();
        // SAFETY: `raw` is a valid out pointer; `user` outlives the call.
        check(unsafe { rados_create(&mut raw, user.as_ptr()) })?;
        Ok(Cluster { raw })
    }

    /// `rados_conf_read_file`.
    pub fn read_conf_file(&self, path: &Path) -> Result<(), Errno> {
        let path = cstr(&path.to_string_lossy())?;
        // SAFETY: a live handle and a NUL-terminated path.
        check(unsafe { rados_conf_read_file(self.raw, path.as_ptr()) }).map(drop)
    }

    /// `rados_conf_set`; only meaningful before [`connect`](Self::connect).
    pub fn conf_set(&self, option: &str, value: &str) -> Result<(), Errno> {
        let (option, value) = (cstr(option)?, cstr(value)?);
        // SAFETY: a live handle and NUL-terminated strings.
        check(unsafe { rados_conf_set(self.raw, option.as_ptr(), value.as_ptr()) }).map(drop)
    }

    /// `rados_connect`: blocks up to `client_mount_timeout`.
    pub fn connect(&self) -> Result<(), Errno> {
        // SAFETY: a live, configured handle.
        check(unsafe { rados_connect(self.raw) }).map(drop)
    }

    /// Opens an io context on `pool`; ENOENT when the pool does not exist.
    pub fn ioctx(self: &Arc<Self>, pool: &str) -> Result<IoCtx, Errno> {
        let pool = cstr(pool)?;
        let mut raw: IoCtxT = ptr::null_mut();
        // SAFETY: a live, connected handle; `raw` is a valid out pointer.
        check(unsafe { rados_ioctx_create(self.raw, pool.as_ptr(), &mut raw) })?;
        Ok(IoCtx { raw, _cluster: Arc::clone(self) })
    }

    /// `rados_mon_command` with one JSON command and no input. Returns the
    /// output buffer; on failure, the errno and the monitor's status string.
    pub fn mon_command(&self, command: &str) -> Result<Vec<u8>, (Errno, String)> {
        let command = cstr(command).map_err(|e| (e, "command holds a NUL byte".to_owned()))?;
        let mut cmd = [command.as_ptr()];
        let (mut out, mut out_len, mut status, mut status_len) = (ptr::null_mut(), 0usize, ptr::null_mut(), 0usize);
        // SAFETY: one valid command pointer, no input buffer, valid out pointers.
        let ret = unsafe { rados_mon_command(self.raw, cmd.as_mut_ptr(), 1, ptr::null(), 0, &mut out, &mut out_len, &mut status, &mut status_len) };
        // SAFETY: librados allocated these buffers with the given lengths; they
        // are copied, then released with rados_buffer_free as librados.h requires.
        let (output, status) = unsafe { (take_buffer(out, out_len), take_buffer(status, status_len)) };
        match check(ret) {
            Ok(_) => Ok(output),
            Err(errno) => Err((errno, String::from_utf8_lossy(&status).into_owned())),
        }
    }

    /// `rados_getaddrs`: this client's address(es) as the monitor would
    /// blocklist them, e.g. `127.0.0.1:0/3710147553`.
    pub fn addrs(&self) -> Result<String, Errno> {
        let mut raw: *mut c_char = ptr::null_mut();
        // SAFETY: a live, connected handle; `raw` is a valid out pointer.
        check(unsafe { rados_getaddrs(self.raw, &mut raw) })?;
        if raw.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: librados strdup()ed a NUL-terminated string; it is copied,
        // then released with free() as librados's own callers do.
        let addrs = unsafe { CStr::from_ptr(raw) }.to_string_lossy().into_owned();
        // SAFETY: allocated by strdup in librados, freed once.
        unsafe { nix::libc::free(raw.cast()) };
        Ok(addrs)
    }

    /// `rados_get_instance_id`: N of `client.N`, as `rbd status` names watchers.
    pub fn instance_id(&self) -> u64 {
        // SAFETY: a live, connected handle.
        unsafe { rados_get_instance_id(self.raw) }
    }

    /// `rados_wait_for_latest_osdmap`: returns once this client has the
    /// newest OSD map (e.g. the one holding a blocklist entry just added).
    pub fn wait_for_latest_osdmap(&self) -> Result<(), Errno> {
        // SAFETY: a live, connected handle.
        check(unsafe { rados_wait_for_latest_osdmap(self.raw) }).map(drop)
    }
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
        if ret == -ERANGE {
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

/// Copies and frees a librados-allocated buffer.
///
/// # Safety
/// `buf` is null or a buffer of `len` bytes allocated by librados.
unsafe fn take_buffer(buf: *mut c_char, len: usize) -> Vec<u8> {
    if buf.is_null() {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller.
    let copy = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }.to_vec();
    // SAFETY: the buffer came from librados and is freed once.
    unsafe { rados_buffer_free(buf) };
    copy
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: every IoCtx holds an Arc to this Cluster, so none is left.
        unsafe { rados_shutdown(self.raw) };
    }
}

/// Who answered a notify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifyReply {
    /// Watchers that acknowledged.
    pub acked: u32,
    /// Watchers that did not answer before the timeout (dead clients whose
    /// watch the OSD has not expired yet, or hung ones).
    pub timed_out: u32,
}

impl NotifyReply {
    /// Decodes librados' notify reply: le32 count of acks, each `le64 gid,
    /// le64 cookie, le32 length, payload`, then le32 count of timeouts, each
    /// `le64 gid, le64 cookie`. `None` when the buffer is short or empty.
    fn parse(reply: &[u8]) -> Option<NotifyReply> {
        fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (buf.get(..n)?, buf.get(n..)?);
            *buf = rest;
            Some(head)
        }
        fn le32(buf: &mut &[u8]) -> Option<u32> {
            take(buf, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        let mut buf = reply;
        let acked = le32(&mut buf)?;
        for _ in 0..acked {
            take(&mut buf, 16)?;
            let len = le32(&mut buf)?;
            take(&mut buf, usize::try_from(len).ok()?)?;
        }
        let timed_out = le32(&mut buf)?;
        take(&mut buf, usize::try_from(timed_out).ok()?.checked_mul(16)?)?;
        Some(NotifyReply { acked, timed_out })
    }
}

/// An io context on one pool; keeps its cluster alive.
pub struct IoCtx {
    raw: IoCtxT,
    _cluster: Arc<Cluster>,
}

// SAFETY: librados io contexts may be shared between threads for I/O; Swell
// never changes their settings (snapshot, namespace) after creation.
unsafe impl Send for IoCtx {}
// SAFETY: as above.
unsafe impl Sync for IoCtx {}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: images borrow the IoCtx, so none is open on it any more.
        unsafe { rados_ioctx_destroy(self.raw) };
    }
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

    /// `rados_notify2` with an empty payload, waiting at most `timeout` for
    /// the watchers' acknowledgements. Watchers that did not answer in time
    /// (librados: -ETIMEDOUT with a reply) are counted, not an error: the
    /// others were told all the same. -ETIMEDOUT without a reply is the
    /// notify itself timing out (inactive PGs) and stays an error.
    pub fn notify_empty(&self, object: &str, timeout: std::time::Duration) -> Result<NotifyReply, Errno> {
        let object = cstr(object)?;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        let (mut reply, mut reply_len): (*mut c_char, usize) = (ptr::null_mut(), 0);
        // SAFETY: a live io context, a NUL-terminated name, an empty payload
        // (a valid pointer of length 0) and valid out pointers.
        let ret = unsafe { rados_notify2(self.raw, object.as_ptr(), c"".as_ptr(), 0, timeout_ms, &mut reply, &mut reply_len) };
        // SAFETY: librados sets the reply (also on -ETIMEDOUT) or leaves it null.
        let reply = unsafe { take_buffer(reply, reply_len) };
        match (ret, NotifyReply::parse(&reply)) {
            (0, parsed) => Ok(parsed.unwrap_or_default()),
            (r, Some(parsed)) if r == -ETIMEDOUT => Ok(parsed),
            (r, _) => check(r).map(|_| NotifyReply::default()),
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
                r if r == -ERANGE && len > buf.len() => continue,
                -2 => return Ok(None),
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
    fn notify_replies_are_decoded_and_short_ones_refused() {
        let mut reply = Vec::new();
        reply.extend(2u32.to_le_bytes());
        for payload in [&b""[..], &b"ok"[..]] {
            reply.extend([7u8; 16]);
            reply.extend((payload.len() as u32).to_le_bytes());
            reply.extend(payload);
        }
        reply.extend(1u32.to_le_bytes());
        reply.extend([9u8; 16]);
        assert_eq!(NotifyReply::parse(&reply), Some(NotifyReply { acked: 2, timed_out: 1 }));
        for cut in 0..reply.len() {
            assert_eq!(NotifyReply::parse(&reply[..cut]), None, "cut at {cut}");
        }
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend([0u8; 20]);
        assert_eq!(NotifyReply::parse(&huge), None, "a count larger than the buffer");
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
