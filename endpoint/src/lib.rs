//! How Swell's binaries meet the container orchestrator: parsing the CSI
//! endpoint, serving gRPC on a carefully prepared Unix socket with graceful
//! shutdown (to every client, whatever `:authority` it sends), connecting to one as a client (the e2e harness and tools do), and
//! the Identity service both binaries expose.

// Nothing from outside the process is unwrapped; tests may.
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod authority;
pub mod identity;
pub mod socket;

pub use identity::{IdentityService, Probe};
pub use socket::{EndpointError, connect, parse_endpoint, serve, shutdown_signal};
