//! The embedded local backend: each volume is a sparse file under a state
//! directory, beside a durable JSON record of its name and desired size. No
//! server to run; the node attaches the file with a loop device.
//!
//! The file's length is the volume's current size and is read from the file
//! system on every call. The record says what was asked for; the file says
//! what is. The sum of every volume's size, which capacity decisions need,
//! is kept by a ledger beside them, so no call reads every volume.
//! Snapshots and clones are copies of those files. The volumes' expansion
//! records are this backend's too: files under the controller's state
//! directory, held by keyed locks of the process.
//!
//! - `paths`: the on-disk layout and the ids it hands out.
//! - `layout`: the buckets records and files are spread over, and the move from the flat layout.
//! - `records`: the volume and snapshot records (their JSON is the on-disk format).
//! - `ledger`: the sum of the volumes' sizes, crash safe.
//! - `copy`: reflink or sparse copies of backing files.
//! - `state_dir`: the directory, its ledger and the claims of operations in flight.
//! - `snapshots`: snapshots, and volumes made from a snapshot or a volume.
//! - `expansions`: the expansion records and holds ([`swell_storage::ExpansionStore`]).
//! - `auto_grow`: each volume's auto-grow policy and the usage its node reports.
//! - `keys`: an encrypted volume's wrapped data key, which its node stores.
//! - `backend`: [`LocalBackend`], the [`swell_storage::Backend`].

pub mod auto_grow;
mod backend;
mod copy;
mod expansions;
pub mod keys;
mod layout;
mod ledger;
mod paths;
mod records;
mod snapshots;
mod state_dir;

pub use backend::{LocalBackend, LocalConfig, OpenError};
pub use paths::{KIND, image_path, snapshot_path, volume_id_for, wrapped_key_path};
