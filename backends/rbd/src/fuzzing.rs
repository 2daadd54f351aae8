//! The state object's entry decoding for the fuzz targets (fuzz/), built
//! only with the `fuzzing` feature. Each decodes stored bytes as a read of
//! the state object does and, when they parse, stores them again.

use crate::errors::RbdError;
use crate::state::{self, Key, Stored};

/// Decodes `raw` as the entry of volume image `image` (`snapshot` false) or
/// of snapshot key `image`, and answers its stored form again.
pub fn entry(snapshot: bool, image: &str, raw: &[u8]) -> Result<Vec<u8>, String> {
    let key = if snapshot { Key::Snapshot(image.to_owned()) } else { Key::Volume(image.to_owned()) };
    Stored::decode(&key, raw).map(|stored| stored.encode()).map_err(message)
}

/// Decodes `raw` as the pool's promised total.
pub fn total(raw: &[u8]) -> Result<u64, String> {
    state::decode_total(raw).map_err(message)
}

/// What a decode refusal says (they are Swell's own refusals, not Ceph's).
fn message(error: RbdError) -> String {
    match error {
        RbdError::Refused(refusal) => refusal.to_string(),
        other => format!("{other:?}"),
    }
}
