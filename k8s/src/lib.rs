//! What Swell reads from Kubernetes objects, shared by the admission webhook
//! and `swell`: storage quantities as exact byte counts ([`quantity`]), and
//! the CSI volume handle of a PersistentVolume ([`volume_handle`]). Pure
//! functions over k8s-openapi's types.

pub mod quantity;
mod volume;

pub use volume::{NotOurVolume, volume_handle};
