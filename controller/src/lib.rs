//! Swell's CSI controller: provisions volumes on a backend and grows them on
//! request, deciding every expansion on the backend's size read fresh under a
//! per-volume lock, with a durable record of desired versus current size;
//! and, with auto-grow on, raises the claims of volumes about to fill
//! through the Kubernetes API (`grower`).

mod auto_grow;
mod claims;
mod error;
mod expand;
mod grower;
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

pub use claims::kube_client;
pub use error::ControllerError;
pub use grower::{AutoGrowConfig, AutoGrower, Outcome as AutoGrowOutcome};
pub use parameters::KNOWN_PARAMETERS;
pub use reconciler::{Reconciler, ReconcilerConfig};
pub use report::{PassReport, StuckExpansion};
pub use server::{Controller, ControllerConfig, StartError, build, build_over};
pub use service::ControllerService;
pub use swell_backends::Backends;
