//! What a PVC update asks for, read from the old and the new object: whether
//! Swell provisioned the claim, and if its storage request changed, the
//! sizes and resize state the decision needs. Pure: no I/O.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use swell_k8s::quantity::{self, QuantityError};

/// The annotation the PV controller sets to the provisioner's name.
pub(crate) const PROVISIONER_ANNOTATION: &str = "volume.kubernetes.io/storage-provisioner";
/// Its beta form, still set alongside it.
pub(crate) const BETA_PROVISIONER_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The resource whose request is judged.
const STORAGE: &str = "storage";

/// A size change of a Swell claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeChange {
    /// `namespace/name`.
    pub claim: String,
    /// The bound PV (`spec.volumeName`), if bound.
    pub volume_name: Option<String>,
    /// The request before the update, in bytes.
    pub old_request: u64,
    /// The request the update asks for, in bytes.
    pub new_request: u64,
    /// `status.capacity.storage`: what the volume is known to hold.
    pub capacity: Option<u64>,
    /// `status.allocatedResourceStatuses.storage`, e.g. ControllerResizeInProgress.
    pub resize_status: Option<String>,
}

impl SizeChange {
    /// The name a user knows the volume by: the PV if bound, else the claim.
    pub fn volume_label(&self) -> &str {
        self.volume_name.as_deref().unwrap_or(&self.claim)
    }
}

/// What an update is, for the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Not Swell's claim, or its storage request is unchanged: allowed
    /// untouched. The text says which.
    Untouched(&'static str),
    /// A Swell claim whose storage request changed.
    Resize(SizeChange),
}

/// Why an update cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// A size field holds something that is not a size.
    #[error("{field}: {source}")]
    Quantity {
        /// Which field.
        field: &'static str,
        /// The parse error.
        source: QuantityError,
    },
    /// A Swell claim without a storage request.
    #[error("{0} has no spec.resources.requests.storage")]
    NoRequest(&'static str),
}

/// Sorts an update of `old` into `new` for the driver `driver_name`.
pub fn read_update(old: &PersistentVolumeClaim, new: &PersistentVolumeClaim, driver_name: &str) -> Result<Update, ClaimError> {
    if !provisioned_by(new, driver_name) && !provisioned_by(old, driver_name) {
        return Ok(Update::Untouched("not provisioned by Swell"));
    }
    let old_request = request(old);
    let new_request = request(new);
    // The same text is the same size; only differing texts need reading.
    if old_request.map(|q| &q.0) == new_request.map(|q| &q.0) {
        return Ok(Update::Untouched("storage request unchanged"));
    }
    let old_request = bytes(old_request.ok_or(ClaimError::NoRequest("the old object"))?, "oldObject spec.resources.requests.storage")?;
    let new_request = bytes(new_request.ok_or(ClaimError::NoRequest("the new object"))?, "object spec.resources.requests.storage")?;
    if old_request == new_request {
        return Ok(Update::Untouched("storage request unchanged"));
    }
    let status = old.status.as_ref();
    let capacity = match status.and_then(|s| s.capacity.as_ref()).and_then(|c| c.get(STORAGE)) {
        Some(q) => Some(bytes(q, "oldObject status.capacity.storage")?),
        None => None,
    };
    let resize_status = status.and_then(|s| s.allocated_resource_statuses.as_ref()).and_then(|s| s.get(STORAGE)).cloned();
    let namespace = new.metadata.namespace.as_deref().unwrap_or_default();
    let name = new.metadata.name.as_deref().unwrap_or_default();
    Ok(Update::Resize(SizeChange {
        claim: format!("{namespace}/{name}"),
        volume_name: new.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty()),
        old_request,
        new_request,
        capacity,
        resize_status,
    }))
}

fn provisioned_by(claim: &PersistentVolumeClaim, driver_name: &str) -> bool {
    let annotations = claim.metadata.annotations.as_ref();
    [PROVISIONER_ANNOTATION, BETA_PROVISIONER_ANNOTATION].iter().any(|key| annotations.and_then(|a| a.get(*key)).is_some_and(|v| v == driver_name))
}

fn request(claim: &PersistentVolumeClaim) -> Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity> {
    claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get(STORAGE)
}

fn bytes(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity, field: &'static str) -> Result<u64, ClaimError> {
    quantity::bytes(q).map_err(|source| ClaimError::Quantity { field, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DRIVER: &str = "swell.csi.storage";

    fn claim(request: &str, annotation: Option<(&str, &str)>, capacity: Option<&str>, status: Option<&str>) -> PersistentVolumeClaim {
        let mut annotations = serde_json::Map::new();
        if let Some((k, v)) = annotation {
            annotations.insert(k.into(), json!(v));
        }
        let mut object = json!({
            "metadata": {"name": "data", "namespace": "apps", "annotations": annotations},
            "spec": {"volumeName": "pvc-1", "resources": {"requests": {"storage": request}}},
            "status": {"phase": "Bound"}
        });
        if let Some(c) = capacity {
            object["status"]["capacity"] = json!({"storage": c});
        }
        if let Some(s) = status {
            object["status"]["allocatedResourceStatuses"] = json!({"storage": s});
        }
        serde_json::from_value(object).unwrap()
    }

    fn swell(request: &str) -> PersistentVolumeClaim {
        claim(request, Some((PROVISIONER_ANNOTATION, DRIVER)), Some("10Gi"), None)
    }

    #[test]
    fn other_provisioners_and_unchanged_requests_are_untouched() {
        let other = |r| claim(r, Some((PROVISIONER_ANNOTATION, "ebs.csi.aws.com")), Some("10Gi"), None);
        assert_eq!(read_update(&other("10Gi"), &other("20Gi"), DRIVER), Ok(Update::Untouched("not provisioned by Swell")));
        let none = |r| claim(r, None, None, None);
        assert_eq!(read_update(&none("10Gi"), &none("1Ti"), DRIVER), Ok(Update::Untouched("not provisioned by Swell")));
        assert_eq!(read_update(&swell("10Gi"), &swell("10Gi"), DRIVER), Ok(Update::Untouched("storage request unchanged")));
        // Numerically equal, textually not: unchanged.
        assert_eq!(read_update(&swell("10Gi"), &swell("10240Mi"), DRIVER), Ok(Update::Untouched("storage request unchanged")));
        // An unreadable size that did not change is not this webhook's business.
        assert_eq!(read_update(&swell("junk"), &swell("junk"), DRIVER), Ok(Update::Untouched("storage request unchanged")));
    }

    #[test]
    fn the_beta_annotation_counts_too() {
        let beta = |r| claim(r, Some((BETA_PROVISIONER_ANNOTATION, DRIVER)), Some("10Gi"), Some("ControllerResizeInProgress"));
        let Update::Resize(change) = read_update(&beta("10Gi"), &beta("20Gi"), DRIVER).unwrap() else { panic!("not judged") };
        assert_eq!(
            change,
            SizeChange {
                claim: "apps/data".into(),
                volume_name: Some("pvc-1".into()),
                old_request: 10 << 30,
                new_request: 20 << 30,
                capacity: Some(10 << 30),
                resize_status: Some("ControllerResizeInProgress".into()),
            }
        );
        assert_eq!(change.volume_label(), "pvc-1");
    }

    #[test]
    fn unreadable_sizes_are_named() {
        let err = read_update(&swell("10Gi"), &swell("20Zi"), DRIVER).unwrap_err();
        assert!(err.to_string().starts_with("object spec.resources.requests.storage: \"20Zi\""), "{err}");
        let mut removed = swell("10Gi");
        removed.spec.as_mut().unwrap().resources = None;
        assert_eq!(read_update(&swell("10Gi"), &removed, DRIVER), Err(ClaimError::NoRequest("the new object")));
    }
}
