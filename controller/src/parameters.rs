//! StorageClass parameters, parsed into a typed value. Keys the
//! external-provisioner adds itself (`csi.storage.k8s.io/...`) are ignored;
//! any other unknown key is an error, so a typo is not silently dropped.

use std::collections::HashMap;

use swell_storage::Placement;
use swell_storage::auto_grow::{AutoGrowPolicy, AutoGrowRecord, ClaimRef};
use swell_storage::rbd_attach::{self, RbdAttach};

use crate::auto_grow;
use crate::error::ControllerError;

/// The keys Swell understands.
pub const KNOWN_PARAMETERS: [&str; 10] = [
    "backend",
    "pool",
    rbd_attach::MOUNTER_KEY,
    rbd_attach::MAP_OPTIONS_KEY,
    rbd_attach::ENCRYPTED_KEY,
    auto_grow::ON_KEY,
    auto_grow::FREE_BELOW_KEY,
    auto_grow::INODES_FREE_BELOW_KEY,
    auto_grow::STEP_KEY,
    auto_grow::LIMIT_KEY,
];
const PROVISIONER_PREFIX: &str = "csi.storage.k8s.io/";
/// The claim's name and namespace, which the external-provisioner adds
/// with `--extra-create-metadata`.
const CLAIM_NAME_KEY: &str = "csi.storage.k8s.io/pvc/name";
const CLAIM_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pvc/namespace";

/// Typed StorageClass parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct VolumeParameters {
    /// Which backend provisions the volume (`local`, `rbd`); the default
    /// backend when absent.
    pub backend: Option<String>,
    /// Where the backend puts the volume.
    pub placement: Placement,
    /// How nodes attach it (RBD only), handed to them in the volume context.
    pub attach: RbdAttach,
    /// The auto-grow policy the backend keeps with the volume, if the class sets one.
    pub auto_grow: Option<AutoGrowPolicy>,
    /// The claim the volume is made for, when the provisioner names it.
    pub claim: Option<ClaimRef>,
}

impl VolumeParameters {
    /// Parses the request's parameter map.
    pub(crate) fn parse(raw: &HashMap<String, String>) -> Result<Self, ControllerError> {
        let attach = RbdAttach::from_map(raw).map_err(|e| ControllerError::invalid(attach_field(e.key), e.reason))?;
        let auto_grow = auto_grow::from_class(raw).map_err(|e| ControllerError::invalid(e.key, e.reason))?;
        let claim = match (raw.get(CLAIM_NAMESPACE_KEY), raw.get(CLAIM_NAME_KEY)) {
            (Some(namespace), Some(name)) => Some(ClaimRef { namespace: namespace.clone(), name: name.clone() }),
            _ => None,
        };
        let mut parsed = VolumeParameters { attach, auto_grow, claim, ..VolumeParameters::default() };
        for (key, value) in raw {
            if key.starts_with(PROVISIONER_PREFIX) {
                continue;
            }
            match key.as_str() {
                "backend" => parsed.backend = Some(value.clone()),
                // Checked by the backend: RBD needs the pool to exist, the
                // local backend has none.
                "pool" => parsed.placement.pool = Some(value.clone()),
                rbd_attach::MOUNTER_KEY | rbd_attach::MAP_OPTIONS_KEY | rbd_attach::ENCRYPTED_KEY => {}
                key if auto_grow::KEYS.contains(&key) => {}
                // ceph-csi users look for it here; in Swell the namespace is
                // the install's, so one install never lists another's volumes.
                "radosNamespace" => {
                    return Err(ControllerError::invalid(
                        "parameters.radosNamespace",
                        "an install's RADOS namespace is set by its controller's --rbd-namespace flag (as ceph-csi sets it per cluster), \
                         not per StorageClass (docs/rbd-state.md)",
                    ));
                }
                _ => {
                    return Err(ControllerError::invalid("parameters", format!("unknown key {key:?} (known: {})", KNOWN_PARAMETERS.join(", "))));
                }
            }
        }
        Ok(parsed)
    }

    /// What the backend keeps with the volume for auto-grow, if the class sets a policy.
    pub(crate) fn auto_grow_record(&self) -> Option<AutoGrowRecord> {
        self.auto_grow.map(|policy| AutoGrowRecord { policy, claim: self.claim.clone() })
    }

    /// Refuses RBD attach parameters (`mounter`, `mapOptions`) for a
    /// backend whose volumes are not RBD, and an auto-grow policy for a
    /// backend that cannot keep it. `encrypted` suits every backend: the
    /// node keeps the wrapped key with the volume, wherever that lives.
    pub(crate) fn check_backend(&self, kind: &str, keeps_auto_grow: bool) -> Result<(), ControllerError> {
        if self.auto_grow.is_some() && !keeps_auto_grow {
            return Err(ControllerError::invalid(
                "parameters.autoGrowLimit",
                format!("auto-grow is not available on {kind} volumes yet (docs/auto-grow.md); remove the autoGrow keys from this StorageClass"),
            ));
        }
        if kind != swell_storage::rbd_volume::KIND
            && let Some(key) = self.attach.rbd_only_key()
        {
            return Err(ControllerError::invalid(attach_field(key), format!("applies to rbd volumes only, and this one is {kind}")));
        }
        Ok(())
    }
}

/// The request field an attach key is, as errors name it.
fn attach_field(key: &str) -> &'static str {
    match key {
        rbd_attach::MOUNTER_KEY => "parameters.mounter",
        rbd_attach::ENCRYPTED_KEY => "parameters.encrypted",
        _ => "parameters.mapOptions",
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

    #[test]
    fn a_storage_class_rados_namespace_is_refused_naming_the_flag_that_sets_it() {
        let raw = HashMap::from([("radosNamespace".to_owned(), "team-b".to_owned())]);
        let err = tonic::Status::from(VolumeParameters::parse(&raw).unwrap_err());
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("parameters.radosNamespace") && err.message().contains("--rbd-namespace"), "{err:?}");
    }

    #[test]
    fn attach_parameters_are_parsed_once_and_refused_precisely() {
        let raw = HashMap::from([("mounter".to_owned(), "rbd-nbd".to_owned()), ("mapOptions".to_owned(), "io-timeout=30".to_owned())]);
        let parsed = VolumeParameters::parse(&raw).unwrap();
        assert_eq!(parsed.attach.volume_context().get("mapOptions").map(String::as_str), Some("nbd:io-timeout=30"));
        assert!(parsed.check_backend("rbd", false).is_ok());
        let local = tonic::Status::from(parsed.check_backend("local", true).unwrap_err());
        assert_eq!(local.code(), tonic::Code::InvalidArgument);
        assert!(local.message().contains("parameters.mounter") && local.message().contains("local"), "{local:?}");
        let bad = HashMap::from([("mapOptions".to_owned(), "krbd:exclusive".to_owned())]);
        let err = tonic::Status::from(VolumeParameters::parse(&bad).unwrap_err());
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("parameters.mapOptions") && err.message().contains("exclusive"), "{err:?}");
    }

    #[test]
    fn an_auto_grow_policy_is_parsed_with_the_rest_and_refused_where_it_cannot_be_kept() {
        let raw = HashMap::from([("autoGrow".to_owned(), "true".to_owned()), ("autoGrowLimit".to_owned(), "5Gi".to_owned())]);
        let parsed = VolumeParameters::parse(&raw).unwrap();
        assert_eq!(parsed.auto_grow.map(|p| (p.on, p.limit_bytes)), Some((true, 5 << 30)));
        assert!(parsed.check_backend("local", true).is_ok());
        let rbd = tonic::Status::from(parsed.check_backend("rbd", false).unwrap_err());
        assert_eq!(rbd.code(), tonic::Code::InvalidArgument);
        assert!(rbd.message().contains("parameters.autoGrowLimit") && rbd.message().contains("rbd"), "{rbd:?}");
        let bad = HashMap::from([("autoGrow".to_owned(), "true".to_owned()), ("autoGrowLimit".to_owned(), "lots".to_owned())]);
        let err = tonic::Status::from(VolumeParameters::parse(&bad).unwrap_err());
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("parameters.autoGrowLimit") && err.message().contains("lots"), "{err:?}");
    }

    #[test]
    fn encrypted_is_known_and_accepted_for_rbd_and_local_volumes() {
        let parsed = VolumeParameters::parse(&HashMap::from([("encrypted".to_owned(), "true".to_owned())])).unwrap();
        assert!(parsed.attach.encrypted);
        assert!(parsed.check_backend("rbd", false).is_ok());
        assert!(parsed.check_backend("local", true).is_ok());
        let with_mounter = HashMap::from([("encrypted".to_owned(), "true".to_owned()), ("mounter".to_owned(), "rbd".to_owned())]);
        let local = tonic::Status::from(VolumeParameters::parse(&with_mounter).unwrap().check_backend("local", true).unwrap_err());
        assert!(local.message().contains("parameters.mounter"), "what local volumes refuse is named: {local:?}");
        let bad = tonic::Status::from(VolumeParameters::parse(&HashMap::from([("encrypted".to_owned(), "1".to_owned())])).unwrap_err());
        assert!(bad.message().contains("parameters.encrypted"), "{bad:?}");
    }
}
