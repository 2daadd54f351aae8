//! librados itself: cluster handles, io contexts and monitor commands, and
//! the two conventions every call of the FFI follows (negative errno
//! returns, NUL-terminated strings).
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;
use std::ptr;
use std::sync::Arc;

use nix::errno::Errno;

type RadosT = *mut c_void;
pub(super) type IoCtxT = *mut c_void;

#[link(name = "rados")]
unsafe extern "C" {
    fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
    fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
    fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
    fn rados_connect(cluster: RadosT) -> c_int;
    fn rados_shutdown(cluster: RadosT);
    fn rados_ioctx_create(cluster: RadosT, pool_name: *const c_char, ioctx: *mut IoCtxT) -> c_int;
    fn rados_ioctx_destroy(io: IoCtxT);
    fn rados_set_pool_full_try(io: IoCtxT);
    fn rados_ioctx_set_namespace(io: IoCtxT, nspace: *const c_char);
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
    pub(super) fn rados_notify2(
        io: IoCtxT,
        o: *const c_char,
        buf: *const c_char,
        buf_len: c_int,
        timeout_ms: u64,
        reply_buffer: *mut *mut c_char,
        reply_buffer_len: *mut usize,
    ) -> c_int;
}

/// librados and librbd answer `-errno`; non-negative values are results.
pub(super) fn check(ret: c_int) -> Result<c_int, Errno> {
    if ret < 0 { Err(Errno::from_raw(-ret)) } else { Ok(ret) }
}

/// A string for C; an interior NUL (never produced by Swell's own names) is EINVAL.
pub(super) fn cstr(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno::EINVAL)
}

/// A librados cluster handle, from `rados_create` until `rados_shutdown` on drop.
pub(crate) struct Cluster {
    raw: RadosT,
}

// SAFETY: librados cluster handles are documented thread-safe once connected;
// configuration (before connect) happens on one thread in `Connection::open`.
unsafe impl Send for Cluster {}
// SAFETY: as above.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// `rados_create` for `client.<user>`.
    pub(crate) fn create(user: &str) -> Result<Self, Errno> {
        let user = cstr(user)?;
        let mut raw: RadosT = ptr::null_mut();
        // SAFETY: `raw` is a valid out pointer; `user` outlives the call.
        check(unsafe { rados_create(&mut raw, user.as_ptr()) })?;
        Ok(Cluster { raw })
    }

    /// `rados_conf_read_file`.
    pub(crate) fn read_conf_file(&self, path: &Path) -> Result<(), Errno> {
        let path = cstr(&path.to_string_lossy())?;
        // SAFETY: a live handle and a NUL-terminated path.
        check(unsafe { rados_conf_read_file(self.raw, path.as_ptr()) }).map(drop)
    }

    /// `rados_conf_set`; only meaningful before [`connect`](Self::connect).
    pub(crate) fn conf_set(&self, option: &str, value: &str) -> Result<(), Errno> {
        let (option, value) = (cstr(option)?, cstr(value)?);
        // SAFETY: a live handle and NUL-terminated strings.
        check(unsafe { rados_conf_set(self.raw, option.as_ptr(), value.as_ptr()) }).map(drop)
    }

    /// `rados_connect`: blocks up to `client_mount_timeout`.
    pub(crate) fn connect(&self) -> Result<(), Errno> {
        // SAFETY: a live, configured handle.
        check(unsafe { rados_connect(self.raw) }).map(drop)
    }

    /// Opens an io context on `pool`, in its RADOS `namespace` (empty: the
    /// default one); ENOENT when the pool does not exist. Every object and
    /// image reached through it is in that namespace. Its writes to a full
    /// pool fail at once (ENOSPC, EDQUOT) instead of waiting, unbounded, for
    /// room (librados's FULL_TRY): a request on a full pool is answered with
    /// the reason, not a timeout.
    pub(crate) fn ioctx(self: &Arc<Self>, pool: &str, namespace: &str) -> Result<IoCtx, Errno> {
        let (pool, namespace) = (cstr(pool)?, cstr(namespace)?);
        let mut raw: IoCtxT = ptr::null_mut();
        // SAFETY: a live, connected handle; `raw` is a valid out pointer.
        check(unsafe { rados_ioctx_create(self.raw, pool.as_ptr(), &mut raw) })?;
        // SAFETY: a live io context, not yet shared with any other thread;
        // librados copies the name.
        unsafe {
            rados_set_pool_full_try(raw);
            rados_ioctx_set_namespace(raw, namespace.as_ptr());
        }
        Ok(IoCtx { raw, _cluster: Arc::clone(self) })
    }

    /// `rados_mon_command` with one JSON command and no input. Returns the
    /// output buffer; on failure, the errno and the monitor's status string.
    pub(crate) fn mon_command(&self, command: &str) -> Result<Vec<u8>, (Errno, String)> {
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
    pub(crate) fn addrs(&self) -> Result<String, Errno> {
        let mut raw: *mut c_char = ptr::null_mut();
        // SAFETY: a live, connected handle; `raw` is a valid out pointer.
        check(unsafe { rados_getaddrs(self.raw, &mut raw) })?;
        if raw.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: librados strdup()ed a NUL-terminated string; it is copied,
        // then released with free() as librados's own callers do.
        let addrs = unsafe { CStr::from_ptr(raw) }.to_string_lossy().into_owned();
        // SAFETY: allocated by strdup in librados, freed once.
        unsafe { nix::libc::free(raw.cast()) };
        Ok(addrs)
    }

    /// `rados_get_instance_id`: N of `client.N`, as `rbd status` names watchers.
    pub(crate) fn instance_id(&self) -> u64 {
        // SAFETY: a live, connected handle.
        unsafe { rados_get_instance_id(self.raw) }
    }
}

/// Copies and frees a librados-allocated buffer.
///
/// # Safety
/// `buf` is null or a buffer of `len` bytes allocated by librados.
pub(super) unsafe fn take_buffer(buf: *mut c_char, len: usize) -> Vec<u8> {
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

/// An io context on one pool; keeps its cluster alive.
pub(crate) struct IoCtx {
    pub(super) raw: IoCtxT,
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
