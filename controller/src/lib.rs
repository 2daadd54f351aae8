//! Swell's CSI controller: provisions volumes on a backend and grows them on
//! request, deciding every expansion on the backend's size read fresh under a
//! per-volume lock, with a durable record of desired versus current size.

mod error;
mod expand;
mod listing;
mod metrics;
mod parameters;
mod reconciler;
mod report;
mod server;
mod service;
mod sizing;
mod snapshots;
mod validate;

pub use error::ControllerError;
pub use parameters::KNOWN_PARAMETERS;
pub use reconciler::{Reconciler, ReconcilerConfig};
pub use report::{PassReport, StuckExpansion};
pub use server::{Controller, ControllerConfig, StartError, build, build_over};
pub use service::ControllerService;
pub use swell_backends::Backends;
