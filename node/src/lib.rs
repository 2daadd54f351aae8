//! Swell's CSI Node service: attaches a volume's backing object to this node
//! as a block device, formats and mounts it at the staging path, bind-mounts
//! it into pods, grows device and filesystem on expansion, and reports usage
//! and health, and writes mounted volumes' usage where auto-grow reads it
//! (`usage_report`). The gRPC layer (`service`) is thin; each RPC's domain logic
//! lives in a module of its own and knows nothing of gRPC. Every mount, loop
//! device and program reaches the host through `system`, so those decisions
//! are unit-tested against a recording double.

mod attach;
mod background_grow;
mod config;
mod confine;
mod context;
mod crypt;
mod error;
mod expand;
mod filesystem;
#[cfg(test)]
mod fixture;
mod format;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod metrics;
mod mount;
pub mod mountinfo;
mod publish;
mod server;
mod service;
mod stage;
mod staged_passes;
mod staging;
mod stats;
mod system;
mod usage_report;
mod usage_store;
mod validate;

pub use attach::rbd::{AttachMode, host_mode as rbd_attach_mode};
pub use config::NodeConfig;
pub use context::NodeContext;
pub use error::NodeError;
pub use server::{Node, StartError, build};
pub use service::NodeService;
