//! What Swell's controller and node share: volume and snapshot ids, the backend
//! trait and its embedded local implementation, expansion records and holds, durable
//! files, keyed locks, and the single way to run an external command.

// Nothing from outside the process is unwrapped; tests may.
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod command;
pub mod durable;
pub mod expansion;
pub mod expansion_files;
pub mod local;
pub mod locks;
pub mod rbd_attach;
pub mod rbd_volume;
pub mod snapshot;
pub mod units;
pub mod volume_id;

pub use backend::{Backend, BackendError, Capacity, Created, Placement, VolumeInfo};
pub use expansion::{ExpansionRecord, ExpansionStore, Hold};
pub use rbd_volume::{CephAccess, RbdVolume};
pub use snapshot::{ContentSource, SnapshotId, SnapshotInfo};
pub use volume_id::VolumeId;
