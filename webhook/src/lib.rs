//! `swell-webhook`: Swell's validating admission webhook for PVC resizes.
//! It answers AdmissionReview v1 for UPDATEs of PersistentVolumeClaims over
//! HTTPS, and lets a storage request of a Swell claim grow only when the
//! claim and the backend, read now, say the resize can go ahead.
//!
//! - [`claim`]: what an update changes (pure).
//! - [`decision`]: the rules, allow or deny with a message (pure).
//! - [`volumes`]: the claim's PV, from the API server.
//! - [`facts`]: the volume at its backend and its expansion record, read fresh.
//! - [`review`]: the AdmissionReview envelope; [`webhook`]: one review end to end.
//! - [`tls`]: the reloading certificate; [`server`]: HTTPS.
//!
//! Kubernetes types come from k8s-openapi with the `v1_37` API (its newest);
//! the review envelope from `kube::core::admission`.

pub mod claim;
pub mod decision;
pub mod facts;
pub mod review;
pub mod server;
pub mod tls;
pub mod volumes;
pub mod webhook;

pub use decision::{Policy, Verdict};
pub use webhook::Webhook;
