//! Volume ids: the handle Kubernetes stores in the PV and hands back on every
//! call. An id names its backend and a backend-specific key, as
//! `<backend>:<key>`, so any service can route it without a lookup table.
//! Ids are parsed strictly: they end up in file names, so only a small
//! alphabet is accepted, and they never reach a shell.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The CSI spec caps ids at 128 bytes.
pub const MAX_ID_LEN: usize = 128;

/// The 32 hex digits (16 bytes of sha256) every key derived from a CO name
/// is built on, so a retried create lands on the same volume or snapshot.
pub fn name_digest(name: &str) -> String {
    Sha256::digest(name.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Whether `hex` has the shape of a [`name_digest`].
pub fn is_name_digest(hex: &str) -> bool {
    hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A parsed, validated volume id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId {
    backend: String,
    key: String,
}

/// Why a string is not a Swell volume id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeIdError {
    /// Empty string.
    #[error("volume id is empty")]
    Empty,
    /// Longer than the CSI limit.
    #[error("volume id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// Not of the form `<backend>:<key>`.
    #[error("volume id {0:?} is not of the form <backend>:<key>")]
    Malformed(String),
    /// A character outside `[a-z0-9._-]` (and `:` between key parts).
    #[error("volume id {0:?} holds a character outside [a-z0-9._-:]")]
    BadCharacter(String),
}

impl VolumeId {
    /// Builds an id from its parts, validating both.
    pub fn new(backend: &str, key: &str) -> Result<Self, VolumeIdError> {
        format!("{backend}:{key}").parse()
    }

    /// The backend that owns this volume (`local`, `rbd`).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The backend-specific key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl FromStr for VolumeId {
    type Err = VolumeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(VolumeIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(VolumeIdError::TooLong);
        }
        let (backend, key) = s.split_once(':').ok_or_else(|| VolumeIdError::Malformed(s.to_owned()))?;
        let part_ok = |p: &str, extra: &[char]| {
            !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c) || extra.contains(&c))
        };
        if backend.is_empty() || key.is_empty() || key.split(':').any(str::is_empty) {
            return Err(VolumeIdError::Malformed(s.to_owned()));
        }
        if !part_ok(backend, &[]) || !key.split(':').all(|p| part_ok(p, &[])) {
            return Err(VolumeIdError::BadCharacter(s.to_owned()));
        }
        Ok(VolumeId { backend: backend.to_owned(), key: key.to_owned() })
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.backend, self.key)
    }
}

/// Stored as its text, as records have always kept it; a stored id that
/// does not parse makes its record unreadable, never a record of no volume.
impl serde::Serialize for VolumeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for VolumeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_back() {
        let id: VolumeId = "local:0123abcd".parse().unwrap();
        assert_eq!((id.backend(), id.key()), ("local", "0123abcd"));
        assert_eq!(id.to_string(), "local:0123abcd");
        let rbd: VolumeId = "rbd:ceph-a:rbd:pvc-1".parse().unwrap();
        assert_eq!(rbd.key(), "ceph-a:rbd:pvc-1");
    }

    #[test]
    fn rejects_what_could_escape_a_directory_or_a_shell() {
        for bad in ["local:../../etc", "local:a/b", "local:$(reboot)", "local: x", "local:.hidden", "local:A"] {
            assert!(bad.parse::<VolumeId>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rejects_malformed_and_oversized_ids() {
        assert_eq!("".parse::<VolumeId>(), Err(VolumeIdError::Empty));
        assert!(matches!("nocolon".parse::<VolumeId>(), Err(VolumeIdError::Malformed(_))));
        assert!(matches!("local:".parse::<VolumeId>(), Err(VolumeIdError::Malformed(_))));
        assert!(matches!("local:a::b".parse::<VolumeId>(), Err(VolumeIdError::Malformed(_))));
        let long = format!("local:{}", "a".repeat(200));
        assert_eq!(long.parse::<VolumeId>(), Err(VolumeIdError::TooLong));
    }
}
