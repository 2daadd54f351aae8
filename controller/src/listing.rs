//! ListVolumes pagination. The token is the id of the last entry returned,
//! so a page boundary survives volumes being created or deleted between
//! calls; a token that is not a volume id was not issued here. Each backend
//! lists only the page it is asked for ([`swell_storage::Backend::list_volumes`]),
//! so a page costs the same with 10 volumes as with 10,000.

use swell_storage::{VolumeId, VolumeInfo};

use crate::error::ControllerError;

/// Where a page starts and how long it may be, from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The id the page starts after.
    pub after: Option<VolumeId>,
    /// Entries at most; 0: all.
    pub max: usize,
}

impl Window {
    /// Parses a request's token and size.
    pub fn parse(starting_token: &str, max_entries: i32) -> Result<Self, ControllerError> {
        let max = usize::try_from(max_entries).map_err(|_| ControllerError::invalid("max_entries", "must not be negative"))?;
        let after = match starting_token {
            "" => None,
            token => Some(token.parse().map_err(|_| ControllerError::BadToken(token.to_owned()))?),
        };
        Ok(Window { after, max })
    }

    /// Where a backend of `kind` starts listing, `None` when none of its
    /// volumes belongs to the window (every id of it comes before `after`).
    pub fn start_in(&self, kind: &str) -> Option<Option<&VolumeId>> {
        match &self.after {
            Some(after) if after.backend() > kind => None,
            Some(after) if after.backend() == kind => Some(Some(after)),
            _ => Some(None),
        }
    }

    /// Entries still to ask a backend for when `have` are gathered: one past
    /// the page, to know whether another follows; 0 for all.
    pub fn wanted(&self, have: usize) -> usize {
        if self.max == 0 { 0 } else { (self.max + 1).saturating_sub(have) }
    }

    /// Whether `have` entries fill the page and tell that another follows.
    pub fn full(&self, have: usize) -> bool {
        self.max > 0 && have > self.max
    }

    /// The page of `volumes` (ordered by id, gathered from the backends in
    /// id order) and the token for the next.
    pub fn cut(&self, mut volumes: Vec<VolumeInfo>) -> Page {
        let next_token = if self.full(volumes.len()) {
            volumes.truncate(self.max);
            volumes.last().map(|v| v.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Page { volumes, next_token }
    }
}

/// One page of volumes and the token for the next, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    /// The entries of this page.
    pub volumes: Vec<VolumeInfo>,
    /// Where the next page starts, empty when this was the last.
    pub next_token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vols(ids: &[&str]) -> Vec<VolumeInfo> {
        ids.iter().map(|k| VolumeInfo { id: k.parse().unwrap(), name: k.to_string(), size_bytes: 1 }).collect()
    }

    #[test]
    fn a_page_asks_one_past_its_end_and_names_its_last_entry() {
        let window = Window::parse("", 2).unwrap();
        assert_eq!(window.wanted(0), 3);
        let page = window.cut(vols(&["local:a", "local:b", "rbd:c:p:x"]));
        assert_eq!(page, Page { volumes: vols(&["local:a", "local:b"]), next_token: "local:b".into() });
        let last = Window::parse("local:b", 2).unwrap().cut(vols(&["rbd:c:p:x"]));
        assert_eq!(last, Page { volumes: vols(&["rbd:c:p:x"]), next_token: String::new() });
    }

    #[test]
    fn backends_before_the_token_are_skipped_and_the_one_holding_it_starts_after_it() {
        let window = Window::parse("local:b", 0).unwrap();
        assert_eq!(window.start_in("local"), Some(Some(&"local:b".parse().unwrap())));
        assert_eq!(window.start_in("rbd"), Some(None));
        assert_eq!(Window::parse("rbd:c:p:x", 0).unwrap().start_in("local"), None);
        assert_eq!(window.wanted(5), 0, "0 means everything");
        assert!(!window.full(1_000));
    }

    #[test]
    fn bad_tokens_abort_and_negative_sizes_are_invalid() {
        assert!(matches!(Window::parse("invalid-token", 0), Err(ControllerError::BadToken(_))));
        assert!(matches!(Window::parse("", -1), Err(ControllerError::InvalidArgument { .. })));
    }
}
