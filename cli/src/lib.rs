//! `swell`, the operator's view of Swell, for the person asking "why is my
//! resize slow?": every volume's requested, desired and current size, where
//! its expansion stands, for how long and why, read from the same state the
//! controller uses and, where a configuration is found, from Kubernetes.
//!
//! - [`view`]: one volume's state, decided from what was read (pure).
//! - [`error`]: why `swell` could not show what was asked.
//! - [`gather`]: the backends and expansion records, as the controller reads them.
//! - [`kubernetes`]: PersistentVolumes and their claims, through kube's client.
//! - [`render`]: tables and sizes.

pub mod error;
pub mod gather;
pub mod kubernetes;
pub mod render;
pub mod view;
