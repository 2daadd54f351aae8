//! Swell's end-to-end harness. It runs the real controller and node services
//! on real Unix sockets, as the sidecars and kubelet meet them, and hands out
//! gRPC clients; the demo, the conformance suite and the lifecycle tests all
//! stand on it, and the never-stuck scenarios are written here once for
//! every backend.

pub mod apiserver;
pub mod auto_grow_rig;
pub mod ceph;
pub mod chaos;
pub mod harness;
pub mod host;
pub mod instrumented;
pub mod logs;
pub mod luks;
pub mod metrics;
pub mod never_stuck;
pub mod node_process;
pub mod observe;
pub mod operator;
pub mod process;
#[cfg(feature = "rbd")]
pub mod rbd_rig;
pub mod requests;
pub mod resizer;
pub mod snapshots;
pub mod state;
pub mod stream_io;
pub mod sweep;
pub mod timing;
pub mod webhook;
pub mod writer;

pub use harness::{DriverUnderTest, HarnessError};
