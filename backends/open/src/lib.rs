//! The backends a Swell process serves, opened from one configuration: the
//! local backend always, and a Ceph RBD cluster when configured. The
//! controller, the webhook and `swell` take the same flags
//! ([`BackendArgs`]), build the same [`BackendConfig`] and call the same
//! [`open`]; each backend brings its own store of expansion records, so
//! all three read the same records for the same volume.
//!
//! - `args`: the command-line flags.
//! - `config`: the typed configuration and [`open`].
//! - `registry`: [`Backends`], the backends by the id prefix each owns,
//!   every call under one deadline and timed.

mod args;
mod config;
mod registry;

pub use args::BackendArgs;
pub use config::{BackendConfig, DEFAULT_CALL_DEADLINE, OpenError, open};
pub use registry::{Backends, CallError, UnknownBackend};
