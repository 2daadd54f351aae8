//! An image's size, read from and grown in its header object directly,
//! without opening the image.
//!
//! Opening an image registers a watch and reads its whole header; closing
//! it unregisters the watch: most of the time of an open + resize + close
//! (docs/ceph-client.md). A Swell image (format 2, `layering` only) keeps
//! its size in the `size` key of its header's omap (`rbd_header.<id>`,
//! the id read from `rbd_id.<name>`), and librbd grows such an image by
//! calling the `rbd` object class's `set_size` on the header and then
//! telling the image's watchers to re-read it. This module does the same
//! in one compound write that also compares the size first: the size moves
//! from exactly the value the decision was made on, or not at all, so no
//! writer acting on a stale read (a replica that was frozen past its lease)
//! can ever move it backwards or twice. Images with any other feature
//! (object map, exclusive lock, journaling) are grown through librbd, which
//! knows how to keep those in step.

use std::time::Duration;

use crate::ffi::{Errno, IoCtx, NotifyReply, RBD_FEATURE_LAYERING, ReadOp, WriteOp};

/// How long an announcement waits for watchers to acknowledge. Live ones
/// answer in milliseconds; only dead clients' watches use it all up.
pub(crate) const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// What an image's header says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// The image id (names the header object).
    pub id: String,
    /// The size in bytes.
    pub size: u64,
    /// The feature bits.
    pub features: u64,
}

impl Header {
    /// The header object's name.
    pub(crate) fn object(&self) -> String {
        header_object(&self.id)
    }

    /// Whether this module may grow the image (no feature that librbd must
    /// keep in step with the size).
    pub(crate) fn grows_in_place(&self) -> bool {
        self.features & !RBD_FEATURE_LAYERING == 0
    }
}

fn header_object(id: &str) -> String {
    format!("rbd_header.{id}")
}

/// A Ceph-encoded string (`le32 length, bytes`).
fn decode_string(bytes: &[u8]) -> Option<String> {
    let len = usize::try_from(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?)).ok()?;
    let text = bytes.get(4..4usize.checked_add(len)?)?;
    String::from_utf8(text.to_vec()).ok()
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The image's id, `None` when no image of that name exists.
pub(crate) fn image_id(io: &IoCtx, image: &str) -> Result<Option<String>, Errno> {
    let mut op = ReadOp::default();
    op.read(0, 128);
    match op.operate(io, &format!("rbd_id.{image}")) {
        Ok(mut out) => Ok(out.data.pop().and_then(|data| decode_string(&data))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The image's header, read now; `None` when the image does not exist (or
/// is being created or removed: its id or header object is missing).
pub(crate) fn read(io: &IoCtx, image: &str) -> Result<Option<Header>, Errno> {
    let Some(id) = image_id(io, image)? else { return Ok(None) };
    let mut op = ReadOp::default();
    op.omap_get(&["features", "size"]);
    let page = match op.operate(io, &header_object(&id)) {
        Ok(mut out) => out.omaps.pop().unwrap_or_default(),
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let value = |key: &str| page.entries.iter().find(|(k, _)| k == key).and_then(|(_, v)| decode_u64(v));
    match (value("size"), value("features")) {
        (Some(size), Some(features)) => Ok(Some(Header { id, size, features })),
        // A header without its keys is an image half made or half removed.
        _ => Ok(None),
    }
}

/// Grows the image from `header.size` to `size` in one compound write: the
/// size is compared first, so a header that moved since it was read is left
/// alone (ECANCELED). Nothing is announced here; see [`announce`].
pub(crate) fn grow(io: &IoCtx, header: &Header, size: u64) -> Result<(), Errno> {
    let mut op = WriteOp::default();
    op.omap_cmp_eq("size", &header.size.to_le_bytes()).exec(c"rbd", c"set_size", &size.to_le_bytes());
    op.operate(io, &header.object())
}

/// Tells every client with the image open to re-read its header: the
/// notification librbd sends after a resize (an empty payload, which librbd
/// and krbd read as "the header changed").
pub(crate) fn announce(io: &IoCtx, header: &Header) -> Result<NotifyReply, Errno> {
    io.notify_empty(&header.object(), ANNOUNCE_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceph_strings_and_integers_decode_and_short_input_is_refused() {
        let mut encoded = 12u32.to_le_bytes().to_vec();
        encoded.extend(b"1a2b3c4d5e6f");
        assert_eq!(decode_string(&encoded).as_deref(), Some("1a2b3c4d5e6f"));
        for cut in 0..encoded.len() {
            assert_eq!(decode_string(&encoded[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_string(&u32::MAX.to_le_bytes()), None);
        assert_eq!(decode_u64(&(5u64 << 30).to_le_bytes()), Some(5 << 30));
        assert_eq!(decode_u64(&[1, 2, 3]), None);
    }

    #[test]
    fn only_layering_images_grow_in_place() {
        let header = |features| Header { id: "abc".into(), size: 1, features };
        assert!(header(RBD_FEATURE_LAYERING).grows_in_place());
        assert!(header(0).grows_in_place());
        assert!(!header(RBD_FEATURE_LAYERING | super::super::ffi::RBD_FEATURE_EXCLUSIVE_LOCK).grows_in_place());
        assert_eq!(header(0).object(), "rbd_header.abc");
    }
}
