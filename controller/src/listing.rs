//! ListVolumes and ListSnapshots pagination. The token is the id of the
//! last entry returned, so a page boundary survives entries being created or
//! deleted between calls; a token that is not an id of that kind was not
//! issued here. Each backend lists only the volumes a page needs
//! ([`swell_storage::Backend::list_volumes`]), so a page of volumes costs the
//! same with 10 volumes as with 10,000; snapshots are listed whole and cut.

use std::fmt::Display;
use std::str::FromStr;

use swell_storage::{SnapshotId, SnapshotInfo, VolumeId, VolumeInfo};

use crate::error::ControllerError;

/// What a list pages through: entries with an ordered id.
pub(crate) trait Listed {
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

/// Where a page starts and how long it may be, from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window<Id> {
    /// The id the page starts after.
    pub after: Option<Id>,
    /// Entries at most; 0: all.
    pub max: usize,
}

impl<Id: Ord + FromStr + Display> Window<Id> {
    /// Parses a request's token and size.
    pub(crate) fn parse(starting_token: &str, max_entries: i32) -> Result<Self, ControllerError> {
        let max = usize::try_from(max_entries).map_err(|_| ControllerError::invalid("max_entries", "must not be negative"))?;
        let after = match starting_token {
            "" => None,
            token => Some(token.parse().map_err(|_| ControllerError::BadToken(token.to_owned()))?),
        };
        Ok(Window { after, max })
    }

    /// Entries still to ask a backend for when `have` are gathered: one past
    /// the page, to know whether another follows; 0 for all.
    pub(crate) fn wanted(&self, have: usize) -> usize {
        if self.max == 0 { 0 } else { (self.max + 1).saturating_sub(have) }
    }

    /// Whether `have` entries fill the page and tell that another follows.
    pub(crate) fn full(&self, have: usize) -> bool {
        self.max > 0 && have > self.max
    }

    /// The page of `entries` (in any order; those up to the token are left
    /// out) and the token for the next.
    pub(crate) fn cut<T: Listed<Id = Id>>(&self, mut entries: Vec<T>) -> Page<T> {
        entries.sort_by(|a, b| a.id().cmp(b.id()));
        if let Some(after) = &self.after {
            entries.retain(|e| e.id() > after);
        }
        let next_token = if self.full(entries.len()) {
            entries.truncate(self.max);
            entries.last().map(|e| e.id().to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Page { entries, next_token }
    }
}

impl Window<VolumeId> {
    /// Where a backend of `kind` starts listing, `None` when none of its
    /// volumes belongs to the window (every id of it comes before `after`).
    pub(crate) fn start_in(&self, kind: &str) -> Option<Option<&VolumeId>> {
        match &self.after {
            Some(after) if after.backend() > kind => None,
            Some(after) if after.backend() == kind => Some(Some(after)),
            _ => Some(None),
        }
    }
}

/// One page of entries and the token for the next, if any.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Page<T> {
    /// The entries of this page.
    pub entries: Vec<T>,
    /// Where the next page starts, empty when this was the last.
    pub next_token: String,
}

/// Cuts a page out of `entries`, all of a list gathered at once.
pub(crate) fn page<T: Listed>(entries: Vec<T>, starting_token: &str, max_entries: i32) -> Result<Page<T>, ControllerError> {
    Ok(Window::parse(starting_token, max_entries)?.cut(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vols(ids: &[&str]) -> Vec<VolumeInfo> {
        ids.iter().map(|k| VolumeInfo { id: k.parse().unwrap(), name: k.to_string(), size_bytes: 1 }).collect()
    }

    #[test]
    fn a_page_asks_one_past_its_end_and_names_its_last_entry() {
        let window = Window::<VolumeId>::parse("", 2).unwrap();
        assert_eq!(window.wanted(0), 3);
        let page = window.cut(vols(&["local:a", "local:b", "rbd:c:p:x"]));
        assert_eq!(page, Page { entries: vols(&["local:a", "local:b"]), next_token: "local:b".into() });
        let last = Window::<VolumeId>::parse("local:b", 2).unwrap().cut(vols(&["rbd:c:p:x"]));
        assert_eq!(last, Page { entries: vols(&["rbd:c:p:x"]), next_token: String::new() });
    }

    #[test]
    fn backends_before_the_token_are_skipped_and_the_one_holding_it_starts_after_it() {
        let window = Window::<VolumeId>::parse("local:b", 0).unwrap();
        assert_eq!(window.start_in("local"), Some(Some(&"local:b".parse().unwrap())));
        assert_eq!(window.start_in("rbd"), Some(None));
        assert_eq!(Window::<VolumeId>::parse("rbd:c:p:x", 0).unwrap().start_in("local"), None);
        assert_eq!(window.wanted(5), 0, "0 means everything");
        assert!(!window.full(1_000));
    }

    #[test]
    fn pages_walk_every_volume_once_even_across_deletions() {
        let first = page(vols(&["local:c", "local:a", "local:b", "local:d"]), "", 2).unwrap();
        assert_eq!(first.entries, vols(&["local:a", "local:b"]));
        assert_eq!(first.next_token, "local:b");
        // "b" deleted and "e" created between the calls.
        let second = page(vols(&["local:a", "local:c", "local:d", "local:e"]), &first.next_token, 2).unwrap();
        assert_eq!(second.entries, vols(&["local:c", "local:d"]));
        let last = page(vols(&["local:a", "local:c", "local:d", "local:e"]), &second.next_token, 2).unwrap();
        assert_eq!((last.entries, last.next_token), (vols(&["local:e"]), String::new()));
    }

    #[test]
    fn zero_means_everything_and_bad_tokens_abort() {
        assert_eq!(page(vols(&["local:a", "local:b"]), "", 0).unwrap().entries.len(), 2);
        assert!(matches!(page(vols(&["local:a"]), "invalid-token", 0), Err(ControllerError::BadToken(_))));
        assert!(matches!(page(vols(&["local:a"]), "", -1), Err(ControllerError::InvalidArgument { .. })));
    }
}
