//! Swell's end-to-end harness. It runs the real controller and node services
//! on real Unix sockets, as the sidecars and kubelet meet them, and hands out
//! gRPC clients; the demo, the conformance suite and the lifecycle tests all
//! stand on it.

pub mod ceph;
pub mod chaos;
pub mod harness;
pub mod host;
pub mod instrumented;
pub mod process;
pub mod requests;
pub mod resizer;
pub mod state;
pub mod sweep;
pub mod webhook;

pub use harness::{DriverUnderTest, HarnessError};
