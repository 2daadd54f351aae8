//! Swell's CSI controller: provisions volumes on a backend and grows them on
//! request, deciding every expansion on the backend's size read fresh under a
//! per-volume lock, with a durable record of desired versus current size.

pub mod error;
pub mod expand;
pub mod listing;
pub mod metrics;
pub mod parameters;
pub mod reconciler;
mod report;
pub mod server;
pub mod service;
pub mod sizing;
pub mod snapshots;
pub mod validate;

pub use parameters::KNOWN_PARAMETERS;
pub use service::{BackendProbe, ControllerService};
pub use swell_backends::Backends;
