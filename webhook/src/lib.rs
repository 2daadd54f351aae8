//! `swell-webhook`: Swell's validating admission webhook for PVC resizes.
//! It answers AdmissionReview v1 for UPDATEs of PersistentVolumeClaims over
//! HTTPS, and lets a storage request of a Swell claim grow only when the
//! claim and the backend, read now, say the resize can go ahead.
//!
//! - `claim`: what an update changes (pure).
//! - `decision`: the rules, allow or deny with a message (pure).
//! - `volumes`: the claim's PV, from the API server.
//! - `facts`: the volume at its backend and its expansion record, read fresh.
//! - `review`: the AdmissionReview envelope; `webhook`: one review end to end.
//! - `tls`: the reloading certificate; `server`: HTTPS.
//!
//! Kubernetes types come from k8s-openapi with the `v1_37` API (its newest);
//! the review envelope from `kube::core::admission`.

mod claim;
mod decision;
mod facts;
mod review;
mod server;
mod tls;
mod volumes;
mod webhook;

pub use claim::{ClaimError, SizeChange, Update, read_update};
pub use decision::{FAILED, Facts, IN_PROGRESS, Policy, Step, Verdict, VolumeState, judge_claim, judge_facts};
pub use facts::{BackendFacts, FactsError, VolumeFacts};
pub use review::{ClaimReview, DecodeError, decode, respond};
pub use server::{Limits, REVIEW_PATH, serve};
pub use tls::ReloadingCert;
pub use volumes::{ApiVolumes, PersistentVolumes, PvError};
pub use webhook::Webhook;
