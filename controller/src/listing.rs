//! ListVolumes and ListSnapshots pagination. The token is the id of the
//! last entry returned, so a page boundary survives entries being created or
//! deleted between calls; a token that is not an id of that kind was not
//! issued here.

use std::fmt::Display;
use std::str::FromStr;

use swell_storage::{SnapshotId, SnapshotInfo, VolumeId, VolumeInfo};

use crate::error::ControllerError;

/// What a list pages through: entries with an ordered id.
pub trait Listed {
    /// The id the entries are ordered by, and the token is made of.
    type Id: Ord + FromStr + Display;
    /// This entry's id.
    fn id(&self) -> &Self::Id;
}

impl Listed for VolumeInfo {
    type Id = VolumeId;
    fn id(&self) -> &VolumeId {
        &self.id
    }
}

impl Listed for SnapshotInfo {
    type Id = SnapshotId;
    fn id(&self) -> &SnapshotId {
        &self.id
    }
}

/// One page of entries and the token for the next, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The entries of this page.
    pub entries: Vec<T>,
    /// Where the next page starts, empty when this was the last.
    pub next_token: String,
}

/// Cuts a page out of `entries`.
pub fn page<T: Listed>(mut entries: Vec<T>, starting_token: &str, max_entries: i32) -> Result<Page<T>, ControllerError> {
    let max = usize::try_from(max_entries).map_err(|_| ControllerError::invalid("max_entries", "must not be negative"))?;
    entries.sort_by(|a, b| a.id().cmp(b.id()));
    if !starting_token.is_empty() {
        let after: T::Id = starting_token.parse().map_err(|_| ControllerError::BadToken(starting_token.to_owned()))?;
        entries.retain(|v| *v.id() > after);
    }
    let next_token = if max > 0 && entries.len() > max {
        entries.truncate(max);
        entries.last().map(|v| v.id().to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Page { entries, next_token })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vols(keys: &[&str]) -> Vec<VolumeInfo> {
        keys.iter().map(|k| VolumeInfo { id: VolumeId::new("local", k).unwrap(), name: k.to_string(), size_bytes: 1 }).collect()
    }

    #[test]
    fn pages_walk_every_volume_once_even_across_deletions() {
        let first = page(vols(&["c", "a", "b", "d"]), "", 2).unwrap();
        assert_eq!(first.entries, vols(&["a", "b"]));
        assert_eq!(first.next_token, "local:b");
        // "b" deleted and "e" created between the calls.
        let second = page(vols(&["a", "c", "d", "e"]), &first.next_token, 2).unwrap();
        assert_eq!(second.entries, vols(&["c", "d"]));
        let last = page(vols(&["a", "c", "d", "e"]), &second.next_token, 2).unwrap();
        assert_eq!((last.entries, last.next_token), (vols(&["e"]), String::new()));
    }

    #[test]
    fn zero_means_everything_and_bad_tokens_abort() {
        assert_eq!(page(vols(&["a", "b"]), "", 0).unwrap().entries.len(), 2);
        assert!(matches!(page(vols(&["a"]), "invalid-token", 0), Err(ControllerError::BadToken(_))));
        assert!(matches!(page(vols(&["a"]), "", -1), Err(ControllerError::InvalidArgument { .. })));
    }
}
