//! RADOS object operations: compound reads and writes applied atomically
//! to one object (omap values, comparisons, class method calls), advisory
//! locks with a lease, and watch notifications.

use std::ffi::{CStr, CString, c_char, c_int, c_uchar, c_void};
use std::ptr;
use std::time::Duration;

use nix::errno::Errno;

use super::rados::{IoCtx, IoCtxT, check, cstr, rados_notify2, take_buffer};

type WriteOpT = *mut c_void;
type ReadOpT = *mut c_void;
type OmapIterT = *mut c_void;

/// `LIBRADOS_CMPXATTR_OP_EQ`.
const CMP_EQ: u8 = 1;
/// `LIBRADOS_LOCK_FLAG_MUST_RENEW`: only extend a lock this client holds;
/// ENOENT when it expired or was taken.
pub(crate) const LOCK_MUST_RENEW: u8 = 1 << 1;

/// `struct timeval`.
#[repr(C)]
struct TimeVal {
    tv_sec: i64,
    tv_usec: i64,
}

#[link(name = "rados")]
unsafe extern "C" {
    fn rados_create_write_op() -> WriteOpT;
    fn rados_release_write_op(op: WriteOpT);
    fn rados_write_op_create(op: WriteOpT, exclusive: c_int, category: *const c_char);
    fn rados_write_op_remove(op: WriteOpT);
    fn rados_write_op_omap_cmp2(op: WriteOpT, key: *const c_char, comparison: u8, val: *const c_char, key_len: usize, val_len: usize, prval: *mut c_int);
    fn rados_write_op_omap_set2(
        op: WriteOpT,
        keys: *const *const c_char,
        vals: *const *const c_char,
        key_lens: *const usize,
        val_lens: *const usize,
        num: usize,
    );
    fn rados_write_op_omap_rm_keys2(op: WriteOpT, keys: *const *const c_char, key_lens: *const usize, num: usize);
    fn rados_write_op_exec(op: WriteOpT, cls: *const c_char, method: *const c_char, in_buf: *const c_char, in_len: usize, prval: *mut c_int);
    fn rados_write_op_operate2(op: WriteOpT, io: IoCtxT, oid: *const c_char, mtime: *mut c_void, flags: c_int) -> c_int;
    fn rados_create_read_op() -> ReadOpT;
    fn rados_release_read_op(op: ReadOpT);
    fn rados_read_op_omap_get_vals_by_keys2(
        op: ReadOpT,
        keys: *const *const c_char,
        num: usize,
        key_lens: *const usize,
        iter: *mut OmapIterT,
        prval: *mut c_int,
    );
    fn rados_read_op_omap_get_vals2(
        op: ReadOpT,
        start_after: *const c_char,
        filter_prefix: *const c_char,
        max_return: u64,
        iter: *mut OmapIterT,
        more: *mut c_uchar,
        prval: *mut c_int,
    );
    fn rados_read_op_read(op: ReadOpT, offset: u64, len: usize, buf: *mut c_char, bytes_read: *mut usize, prval: *mut c_int);
    fn rados_read_op_operate(op: ReadOpT, io: IoCtxT, oid: *const c_char, flags: c_int) -> c_int;
    fn rados_omap_get_next2(iter: OmapIterT, key: *mut *mut c_char, val: *mut *mut c_char, key_len: *mut usize, val_len: *mut usize) -> c_int;
    fn rados_omap_get_end(iter: OmapIterT);
    fn rados_lock_exclusive(
        io: IoCtxT,
        oid: *const c_char,
        name: *const c_char,
        cookie: *const c_char,
        desc: *const c_char,
        duration: *mut TimeVal,
        flags: u8,
    ) -> c_int;
    fn rados_unlock(io: IoCtxT, oid: *const c_char, name: *const c_char, cookie: *const c_char) -> c_int;
    fn rados_break_lock(io: IoCtxT, oid: *const c_char, name: *const c_char, client: *const c_char, cookie: *const c_char) -> c_int;
    fn rados_list_lockers(
        io: IoCtxT,
        oid: *const c_char,
        name: *const c_char,
        exclusive: *mut c_int,
        tag: *mut c_char,
        tag_len: *mut usize,
        clients: *mut c_char,
        clients_len: *mut usize,
        cookies: *mut c_char,
        cookies_len: *mut usize,
        addrs: *mut c_char,
        addrs_len: *mut usize,
    ) -> isize;
}

/// A compound write to one object: every step is applied, or none (the
/// first failing comparison or method call cancels the whole operation).
/// librados copies keys, values and inputs when a step is added; only the
/// per-step result slots must outlive [`WriteOp::operate`].
pub(crate) struct WriteOp {
    raw: WriteOpT,
    /// Boxed: librados keeps pointers to them, which must not move when
    /// the vector grows.
    #[allow(clippy::vec_box)]
    results: Vec<Box<c_int>>,
}

// SAFETY: a write op is built and operated by one thread at a time; it owns
// its librados handle.
unsafe impl Send for WriteOp {}

impl Default for WriteOp {
    fn default() -> Self {
        // SAFETY: returns a fresh handle, released on drop.
        WriteOp { raw: unsafe { rados_create_write_op() }, results: Vec::new() }
    }
}

impl Drop for WriteOp {
    fn drop(&mut self) {
        // SAFETY: created in `default`, released once.
        unsafe { rados_release_write_op(self.raw) };
    }
}

impl WriteOp {
    fn result_slot(&mut self) -> *mut c_int {
        let mut slot = Box::new(0);
        let ptr: *mut c_int = &mut *slot;
        self.results.push(slot);
        ptr
    }

    /// Creates the object if it is missing (and fails with EEXIST if it
    /// exists, when `exclusive`).
    pub(crate) fn create(&mut self, exclusive: bool) -> &mut Self {
        // SAFETY: a live op; no category.
        unsafe { rados_write_op_create(self.raw, c_int::from(exclusive), ptr::null()) };
        self
    }

    /// Removes the object.
    pub(crate) fn remove(&mut self) -> &mut Self {
        // SAFETY: a live op.
        unsafe { rados_write_op_remove(self.raw) };
        self
    }

    /// Fails the whole operation with ECANCELED unless omap `key` holds
    /// exactly `value`. A missing key compares as empty, so `b""` asserts
    /// that the key is absent (for values that are never empty).
    pub(crate) fn omap_cmp_eq(&mut self, key: &str, value: &[u8]) -> &mut Self {
        let slot = self.result_slot();
        // SAFETY: a live op; librados copies key and value before returning;
        // `slot` lives in `self.results` until the op is released.
        unsafe { rados_write_op_omap_cmp2(self.raw, key.as_ptr().cast(), CMP_EQ, value.as_ptr().cast(), key.len(), value.len(), slot) };
        self
    }

    /// Sets omap values.
    pub(crate) fn omap_set<K: AsRef<str>, V: AsRef<[u8]>>(&mut self, pairs: &[(K, V)]) -> &mut Self {
        if pairs.is_empty() {
            return self;
        }
        let keys: Vec<*const c_char> = pairs.iter().map(|(k, _)| k.as_ref().as_ptr().cast()).collect();
        let key_lens: Vec<usize> = pairs.iter().map(|(k, _)| k.as_ref().len()).collect();
        let vals: Vec<*const c_char> = pairs.iter().map(|(_, v)| v.as_ref().as_ptr().cast()).collect();
        let val_lens: Vec<usize> = pairs.iter().map(|(_, v)| v.as_ref().len()).collect();
        // SAFETY: four arrays of `pairs.len()` entries pointing into `pairs`,
        // which librados copies before returning.
        unsafe { rados_write_op_omap_set2(self.raw, keys.as_ptr(), vals.as_ptr(), key_lens.as_ptr(), val_lens.as_ptr(), pairs.len()) };
        self
    }

    /// Removes omap keys (missing ones are no error).
    pub(crate) fn omap_rm<K: AsRef<str>>(&mut self, keys: &[K]) -> &mut Self {
        if keys.is_empty() {
            return self;
        }
        let ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ref().as_ptr().cast()).collect();
        let lens: Vec<usize> = keys.iter().map(|k| k.as_ref().len()).collect();
        // SAFETY: two arrays of `keys.len()` entries, copied before returning.
        unsafe { rados_write_op_omap_rm_keys2(self.raw, ptrs.as_ptr(), lens.as_ptr(), keys.len()) };
        self
    }

    /// Calls an object class method (`cls.method(input)`) as part of the write.
    pub(crate) fn exec(&mut self, cls: &CStr, method: &CStr, input: &[u8]) -> &mut Self {
        let slot = self.result_slot();
        // SAFETY: a live op, NUL-terminated names, an input buffer librados
        // copies; `slot` outlives the op.
        unsafe { rados_write_op_exec(self.raw, cls.as_ptr(), method.as_ptr(), input.as_ptr().cast(), input.len(), slot) };
        self
    }

    /// Applies the operation to `oid`.
    pub(crate) fn operate(self, io: &IoCtx, oid: &str) -> Result<(), Errno> {
        let oid = cstr(oid)?;
        // SAFETY: a live op and io context, a NUL-terminated name, no mtime.
        check(unsafe { rados_write_op_operate2(self.raw, io.raw, oid.as_ptr(), ptr::null_mut(), 0) }).map(drop)
    }
}

/// One page of an object's omap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OmapPage {
    /// Keys and values, in key order.
    pub entries: Vec<(String, Vec<u8>)>,
    /// Whether more keys follow the last one.
    pub more: bool,
}

/// A compound read of one object.
pub(crate) struct ReadOp {
    raw: ReadOpT,
    /// Boxed: librados keeps pointers to them, which must not move when
    /// the vector grows.
    #[allow(clippy::vec_box)]
    results: Vec<Box<c_int>>,
    omaps: Vec<OmapIterT>,
    /// Each buffer's heap data stays put when the vector grows; the count
    /// librados writes is boxed for the same reason.
    reads: Vec<(Vec<u8>, Box<usize>)>,
    more: Box<c_uchar>,
    /// Strings librados keeps pointers to until the op runs (start_after, prefix).
    strings: Vec<CString>,
}

// SAFETY: built and operated by one thread at a time; owns its handles.
unsafe impl Send for ReadOp {}

impl Default for ReadOp {
    fn default() -> Self {
        // SAFETY: a fresh handle, released on drop.
        ReadOp { raw: unsafe { rados_create_read_op() }, results: Vec::new(), omaps: Vec::new(), reads: Vec::new(), more: Box::new(0), strings: Vec::new() }
    }
}

impl Drop for ReadOp {
    fn drop(&mut self) {
        for iter in self.omaps.drain(..) {
            // SAFETY: allocated when the step was added, freed once.
            unsafe { rados_omap_get_end(iter) };
        }
        // SAFETY: created in `default`, released once.
        unsafe { rados_release_read_op(self.raw) };
    }
}

/// What a [`ReadOp`] read, by the order its steps were added.
#[derive(Debug, Default)]
pub(crate) struct ReadResult {
    /// One per omap step, in order.
    pub omaps: Vec<OmapPage>,
    /// One per data read step, in order.
    pub data: Vec<Vec<u8>>,
}

impl ReadOp {
    fn result_slot(&mut self) -> *mut c_int {
        let mut slot = Box::new(0);
        let ptr: *mut c_int = &mut *slot;
        self.results.push(slot);
        ptr
    }

    /// Reads the values of `keys` (missing keys are left out).
    pub(crate) fn omap_get<K: AsRef<str>>(&mut self, keys: &[K]) -> &mut Self {
        let ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ref().as_ptr().cast()).collect();
        let lens: Vec<usize> = keys.iter().map(|k| k.as_ref().len()).collect();
        let slot = self.result_slot();
        let mut iter: OmapIterT = ptr::null_mut();
        // SAFETY: arrays of `keys.len()` entries copied before returning; the
        // iterator is allocated now and freed on drop; `slot` outlives the op.
        unsafe { rados_read_op_omap_get_vals_by_keys2(self.raw, ptrs.as_ptr(), keys.len(), lens.as_ptr(), &mut iter, slot) };
        self.omaps.push(iter);
        self
    }

    /// Reads up to `max` omap entries after `start_after` whose keys start
    /// with `prefix`. At most one page step per op (one `more` flag).
    pub(crate) fn omap_page(&mut self, start_after: &str, prefix: &str, max: u64) -> Result<&mut Self, Errno> {
        let (after, prefix) = (cstr(start_after)?, cstr(prefix)?);
        let slot = self.result_slot();
        let mut iter: OmapIterT = ptr::null_mut();
        let more: *mut c_uchar = &mut *self.more;
        // SAFETY: NUL-terminated strings kept in `self.strings` until the op
        // is released (librados may read them when it runs); iterator freed
        // on drop; `slot` and `more` outlive the op.
        unsafe { rados_read_op_omap_get_vals2(self.raw, after.as_ptr(), prefix.as_ptr(), max, &mut iter, more, slot) };
        self.strings.extend([after, prefix]);
        self.omaps.push(iter);
        Ok(self)
    }

    /// Reads up to `len` bytes of the object's data from `offset`.
    pub(crate) fn read(&mut self, offset: u64, len: usize) -> &mut Self {
        let mut buf = vec![0u8; len];
        let mut got = Box::new(0usize);
        let slot = self.result_slot();
        // SAFETY: `buf` holds `len` bytes and, like `got` and `slot`, lives
        // (boxed, so it does not move) until the op is released.
        unsafe { rados_read_op_read(self.raw, offset, len, buf.as_mut_ptr().cast(), &mut *got, slot) };
        self.reads.push((buf, got));
        self
    }

    /// Runs the read on `oid`. ENOENT when the object does not exist.
    pub(crate) fn operate(mut self, io: &IoCtx, oid: &str) -> Result<ReadResult, Errno> {
        let oid = cstr(oid)?;
        // SAFETY: a live op and io context and a NUL-terminated name.
        check(unsafe { rados_read_op_operate(self.raw, io.raw, oid.as_ptr(), 0) })?;
        for result in &self.results {
            check(**result)?;
        }
        let mut out = ReadResult::default();
        let more = *self.more != 0;
        for iter in &self.omaps {
            // SAFETY: the op ran; each iterator holds its step's entries.
            let entries = unsafe { drain_omap(*iter) }?;
            out.omaps.push(OmapPage { entries, more });
        }
        for (buf, got) in self.reads.drain(..) {
            let mut data = buf;
            data.truncate(*got);
            out.data.push(data);
        }
        Ok(out)
    }
}

/// Copies every entry out of an omap iterator.
///
/// # Safety
/// `iter` is a live iterator whose read op has run.
unsafe fn drain_omap(iter: OmapIterT) -> Result<Vec<(String, Vec<u8>)>, Errno> {
    let mut entries = Vec::new();
    loop {
        let (mut key, mut val, mut key_len, mut val_len) = (ptr::null_mut(), ptr::null_mut(), 0usize, 0usize);
        // SAFETY: a live iterator and valid out pointers.
        check(unsafe { rados_omap_get_next2(iter, &mut key, &mut val, &mut key_len, &mut val_len) })?;
        if key.is_null() {
            return Ok(entries);
        }
        // SAFETY: librados points `key` and `val` at `key_len`/`val_len`
        // bytes it owns until the iterator moves on.
        let (key, val) = unsafe { (std::slice::from_raw_parts(key.cast::<u8>(), key_len), bytes_at(val, val_len)) };
        entries.push((String::from_utf8_lossy(key).into_owned(), val));
    }
}

/// # Safety
/// `p` is null or points at `len` readable bytes.
unsafe fn bytes_at(p: *const c_char, len: usize) -> Vec<u8> {
    if p.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec()
}

/// A holder of an advisory lock, as `rados lock info` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Locker {
    /// The client entity, e.g. `client.4123`.
    pub client: String,
    /// The cookie it locked with.
    pub cookie: String,
    /// Its address.
    pub address: String,
}

/// Who answered a notify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NotifyReply {
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

impl IoCtx {
    /// `rados_lock_exclusive`: takes lock `name` on `oid` (creating the
    /// object if missing) for `lease`, after which the OSD lets others take
    /// it. EBUSY when someone else holds it; with [`LOCK_MUST_RENEW`], ENOENT
    /// when this client no longer holds it.
    pub(crate) fn lock_exclusive(&self, oid: &str, name: &str, cookie: &str, description: &str, lease: Duration, flags: u8) -> Result<(), Errno> {
        let (oid, name, cookie, description) = (cstr(oid)?, cstr(name)?, cstr(cookie)?, cstr(description)?);
        let mut duration = TimeVal { tv_sec: i64::try_from(lease.as_secs()).unwrap_or(i64::MAX), tv_usec: i64::from(lease.subsec_micros()) };
        // SAFETY: a live io context, NUL-terminated strings and a valid timeval.
        check(unsafe { rados_lock_exclusive(self.raw, oid.as_ptr(), name.as_ptr(), cookie.as_ptr(), description.as_ptr(), &mut duration, flags) }).map(drop)
    }

    /// `rados_unlock`; ENOENT when the lock is not held with this cookie.
    pub(crate) fn unlock(&self, oid: &str, name: &str, cookie: &str) -> Result<(), Errno> {
        let (oid, name, cookie) = (cstr(oid)?, cstr(name)?, cstr(cookie)?);
        // SAFETY: a live io context and NUL-terminated strings.
        check(unsafe { rados_unlock(self.raw, oid.as_ptr(), name.as_ptr(), cookie.as_ptr()) }).map(drop)
    }

    /// `rados_break_lock`: removes another client's hold on lock `name`.
    pub(crate) fn break_lock(&self, oid: &str, name: &str, locker: &Locker) -> Result<(), Errno> {
        let (oid, name, client, cookie) = (cstr(oid)?, cstr(name)?, cstr(&locker.client)?, cstr(&locker.cookie)?);
        // SAFETY: a live io context and NUL-terminated strings.
        check(unsafe { rados_break_lock(self.raw, oid.as_ptr(), name.as_ptr(), client.as_ptr(), cookie.as_ptr()) }).map(drop)
    }

    /// `rados_list_lockers`: who holds lock `name` on `oid` now.
    pub(crate) fn lockers(&self, oid: &str, name: &str) -> Result<Vec<Locker>, Errno> {
        let (oid, name) = (cstr(oid)?, cstr(name)?);
        let mut size = 256usize;
        loop {
            let mut bufs = [vec![0u8; size], vec![0u8; size], vec![0u8; size], vec![0u8; size]];
            let mut lens = [size; 4];
            let mut exclusive: c_int = 0;
            let [tag, clients, cookies, addrs] = &mut bufs;
            let [tag_len, clients_len, cookies_len, addrs_len] = &mut lens;
            // SAFETY: four buffers of the lengths passed; librados writes at
            // most that much, or answers -ERANGE with the lengths it needs.
            let ret = unsafe {
                rados_list_lockers(
                    self.raw,
                    oid.as_ptr(),
                    name.as_ptr(),
                    &mut exclusive,
                    tag.as_mut_ptr().cast(),
                    tag_len,
                    clients.as_mut_ptr().cast(),
                    clients_len,
                    cookies.as_mut_ptr().cast(),
                    cookies_len,
                    addrs.as_mut_ptr().cast(),
                    addrs_len,
                )
            };
            if ret == -(Errno::ERANGE as isize) {
                size = lens.iter().copied().max().unwrap_or(size).max(size * 2);
                continue;
            }
            let count = usize::try_from(check(c_int::try_from(ret).unwrap_or(c_int::MIN))?).unwrap_or(0);
            let split = |buf: &[u8], len: usize| -> Vec<String> {
                buf[..len.min(buf.len())].split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
            };
            let (clients, cookies, addrs) = (split(&bufs[1], lens[1]), split(&bufs[2], lens[2]), split(&bufs[3], lens[3]));
            return Ok((0..count)
                .filter_map(|i| {
                    Some(Locker { client: clients.get(i)?.clone(), cookie: cookies.get(i)?.clone(), address: addrs.get(i).cloned().unwrap_or_default() })
                })
                .collect());
        }
    }

    /// `rados_notify2` with an empty payload, waiting at most `timeout` for
    /// the watchers' acknowledgements. Watchers that did not answer in time
    /// (librados: -ETIMEDOUT with a reply) are counted, not an error: the
    /// others were told all the same. -ETIMEDOUT without a reply is the
    /// notify itself timing out (inactive PGs) and stays an error.
    pub(crate) fn notify_empty(&self, object: &str, timeout: std::time::Duration) -> Result<NotifyReply, Errno> {
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
            (r, Some(parsed)) if r == -(Errno::ETIMEDOUT as c_int) => Ok(parsed),
            (r, _) => check(r).map(|_| NotifyReply::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
