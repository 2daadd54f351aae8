//! Which CSI volume a PersistentVolume is: its volume handle, when the
//! driver asked about provisioned it.

use k8s_openapi::api::core::v1::PersistentVolume;

/// Why a PersistentVolume names no volume of the driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotOurVolume {
    /// Not a CSI volume at all.
    #[error("the PersistentVolume has no CSI source")]
    NoCsiSource,
    /// Another CSI driver's.
    #[error("the PersistentVolume belongs to CSI driver {0}")]
    OtherDriver(String),
}

/// The CSI volume handle of `pv` if `driver_name` serves it.
pub fn volume_handle<'a>(pv: &'a PersistentVolume, driver_name: &str) -> Result<&'a str, NotOurVolume> {
    let csi = pv.spec.as_ref().and_then(|s| s.csi.as_ref()).ok_or(NotOurVolume::NoCsiSource)?;
    if csi.driver != driver_name {
        return Err(NotOurVolume::OtherDriver(csi.driver.clone()));
    }
    Ok(&csi.volume_handle)
}
