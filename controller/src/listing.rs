//! ListVolumes pagination. The token is the id of the last entry returned,
//! so a page boundary survives volumes being created or deleted between
//! calls; a token that is not a volume id was not issued here.

use swell_storage::{VolumeId, VolumeInfo};

use crate::error::ControllerError;

/// One page of volumes and the token for the next, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    /// The entries of this page.
    pub volumes: Vec<VolumeInfo>,
    /// Where the next page starts, empty when this was the last.
    pub next_token: String,
}

/// Cuts a page out of `volumes` (ordered by id).
pub fn page(mut volumes: Vec<VolumeInfo>, starting_token: &str, max_entries: i32) -> Result<Page, ControllerError> {
    let max = usize::try_from(max_entries).map_err(|_| ControllerError::invalid("max_entries", "must not be negative"))?;
    volumes.sort_by(|a, b| a.id.cmp(&b.id));
    if !starting_token.is_empty() {
        let after: VolumeId = starting_token.parse().map_err(|_| ControllerError::BadToken(starting_token.to_owned()))?;
        volumes.retain(|v| v.id > after);
    }
    let next_token = if max > 0 && volumes.len() > max {
        volumes.truncate(max);
        volumes.last().map(|v| v.id.to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Page { volumes, next_token })
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
        assert_eq!(first.volumes, vols(&["a", "b"]));
        assert_eq!(first.next_token, "local:b");
        // "b" deleted and "e" created between the calls.
        let second = page(vols(&["a", "c", "d", "e"]), &first.next_token, 2).unwrap();
        assert_eq!(second.volumes, vols(&["c", "d"]));
        let last = page(vols(&["a", "c", "d", "e"]), &second.next_token, 2).unwrap();
        assert_eq!((last.volumes, last.next_token), (vols(&["e"]), String::new()));
    }

    #[test]
    fn zero_means_everything_and_bad_tokens_abort() {
        assert_eq!(page(vols(&["a", "b"]), "", 0).unwrap().volumes.len(), 2);
        assert!(matches!(page(vols(&["a"]), "invalid-token", 0), Err(ControllerError::BadToken(_))));
        assert!(matches!(page(vols(&["a"]), "", -1), Err(ControllerError::InvalidArgument { .. })));
    }
}
