//! The vocabulary every Swell crate shares: volume and snapshot ids (and the
//! RBD id contract between controller and node), size units, the backend
//! trait every backend crate implements, expansion records and holds,
//! durable private files, keyed locks (in this process and across
//! processes), blocking work under a deadline, and the single way to run an
//! external command. The backends themselves live in
//! their own crates (`backends/`).

pub mod auto_grow;
pub mod backend;
pub mod batches;
pub mod blocking;
pub mod command;
pub mod durable;
mod error;
pub mod expansion;
pub mod file_locks;
pub mod inflight;
pub mod locks;
pub mod rbd_attach;
pub mod rbd_volume;
pub mod snapshot;
pub mod units;
pub mod volume_id;

pub use backend::{Backend, Capacity, Created, Placement, VolumeInfo};
pub use error::BackendError;
pub use expansion::{ExpansionRecord, ExpansionStore, Hold, Records, Unreadable};
pub use rbd_volume::{CephAccess, RbdVolume};
pub use snapshot::{ContentSource, SnapshotId, SnapshotInfo};
pub use volume_id::VolumeId;
