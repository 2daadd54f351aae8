//! StorageClass parameters, parsed into a typed value. Keys the
//! external-provisioner adds itself (`csi.storage.k8s.io/...`) are ignored;
//! any other unknown key is an error, so a typo is not silently dropped.

use std::collections::HashMap;

use swell_storage::Placement;

use crate::error::ControllerError;

/// The keys Swell understands.
pub const KNOWN_PARAMETERS: [&str; 2] = ["backend", "pool"];
const PROVISIONER_PREFIX: &str = "csi.storage.k8s.io/";

/// Typed StorageClass parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct VolumeParameters {
    /// Which backend provisions the volume (`local`, `rbd`); the default
    /// backend when absent.
    pub backend: Option<String>,
    /// Where the backend puts the volume.
    pub placement: Placement,
}

impl VolumeParameters {
    /// Parses the request's parameter map.
    pub(crate) fn parse(raw: &HashMap<String, String>) -> Result<Self, ControllerError> {
        let mut parsed = VolumeParameters::default();
        for (key, value) in raw {
            if key.starts_with(PROVISIONER_PREFIX) {
                continue;
            }
            match key.as_str() {
                "backend" => parsed.backend = Some(value.clone()),
                // Checked by the backend: RBD needs the pool to exist, the
                // local backend has none.
                "pool" => parsed.placement.pool = Some(value.clone()),
                _ => {
                    return Err(ControllerError::invalid("parameters", format!("unknown key {key:?} (known: {})", KNOWN_PARAMETERS.join(", "))));
                }
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioner_keys_are_ignored_and_typos_refused() {
        let raw = HashMap::from([("backend".to_owned(), "local".to_owned()), ("csi.storage.k8s.io/pvc/name".to_owned(), "data".to_owned())]);
        let parsed = VolumeParameters::parse(&raw).unwrap();
        assert_eq!(parsed.backend.as_deref(), Some("local"));
        assert_eq!(parsed.placement, Placement::default());
        let pooled = VolumeParameters::parse(&HashMap::from([("pool".to_owned(), "fast".to_owned())])).unwrap();
        assert_eq!(pooled.placement.pool.as_deref(), Some("fast"));
        let typo = HashMap::from([("backedn".to_owned(), "local".to_owned())]);
        assert!(VolumeParameters::parse(&typo).unwrap_err().to_string().contains("backedn"));
    }
}
