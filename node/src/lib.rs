//! Swell's CSI Node service: attaches a volume's backing object to this node
//! as a block device, formats and mounts it at the staging path, bind-mounts
//! it into pods, grows device and filesystem on expansion, and reports usage
//! and health. The gRPC layer (`service`) is thin; each RPC's domain logic
//! lives in a module of its own and knows nothing of gRPC. Every mount, loop
//! device and program reaches the host through `system`, so those decisions
//! are unit-tested against a recording double.

pub mod attach;
pub mod config;
mod context;
pub mod error;
pub mod expand;
pub mod filesystem;
#[cfg(test)]
mod fixture;
pub mod metrics;
pub mod mount;
pub mod mountinfo;
pub mod publish;
pub mod server;
pub mod service;
pub mod stage;
pub mod staging;
pub mod stats;
pub mod system;
pub mod validate;

pub use config::NodeConfig;
pub use context::NodeContext;
pub use error::NodeError;
pub use service::NodeService;
