//! Small objects of Swell's own whose omap is a set of keys (the trash
//! record, the auto-grow marks): read whole, a key dropped, either on an
//! object that may not exist yet.

use crate::ffi::{Errno, IoCtx, ReadOp, WriteOp};

/// Keys read per round trip.
const PAGE: u64 = 1000;

/// Every key of `oid` with its value, in key order; none when the object
/// does not exist.
pub(crate) fn all_entries(io: &IoCtx, oid: &str) -> Result<Vec<(String, Vec<u8>)>, Errno> {
    let mut entries = Vec::new();
    let mut after = String::new();
    loop {
        let mut op = ReadOp::default();
        op.omap_page(&after, "", PAGE)?;
        let page = match op.operate(io, oid) {
            Ok(mut out) => out.omaps.pop().unwrap_or_default(),
            Err(Errno::ENOENT) => return Ok(entries),
            Err(e) => return Err(e),
        };
        let Some((last, _)) = page.entries.last() else { return Ok(entries) };
        after = last.clone();
        entries.extend(page.entries);
        if !page.more {
            return Ok(entries);
        }
    }
}

/// Drops `key` from `oid`; a missing key or object is no error.
pub(crate) fn remove_key(io: &IoCtx, oid: &str, key: &str) -> Result<(), Errno> {
    let mut op = WriteOp::default();
    op.omap_rm(&[key]);
    match op.operate(io, oid) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}
