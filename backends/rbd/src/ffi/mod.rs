//! The one module with `unsafe`: a small hand-written `extern "C"` layer over
//! `librados.h` and `librbd.h` (Ceph 16.2), and safe wrappers returning the
//! negative errno as `Err(errno)` (positive). Nothing above this module sees
//! a raw pointer. [`Cluster`] and [`IoCtx`] live here; RADOS object
//! operations (compound reads and writes, omap, class calls, locks,
//! notifications) in `objects`, librbd images, snapshots, clones and the
//! trash in `images`.
//!
//! Why not the `ceph` crate: its `connect_to_ceph` creates, reads the conf
//! and connects in one call, and its `config_set` refuses a handle that
//! exists, so the op and mount timeouts (which stop librbd hanging on
//! inactive PGs, see docs/ceph-client.md) cannot be set before connecting;
//! its `mon_command` also drops the errno when the monitor says why.
//!
//! Thread safety: librados cluster handles and io contexts may be used from
//! several threads at once (librbd duplicates the io context per image), so
//! [`Cluster`] and [`IoCtx`] are `Send + Sync`. An [`Image`] is used by one
//! thread at a time (`Send`, not `Sync`).
//!
//! - `rados`: cluster handles, io contexts, monitor commands.
//! - `objects`: RADOS object operations.
//! - `images`: librbd images, snapshots, clones, the trash.

#![allow(unsafe_code)]

mod images;
mod objects;
mod rados;

#[cfg(feature = "test-util")]
pub(crate) use images::Image;
#[cfg(test)]
pub(crate) use images::RBD_FEATURE_EXCLUSIVE_LOCK;
pub(crate) use images::{RBD_FEATURE_LAYERING, TrashEntry};
pub(crate) use nix::errno::Errno;
pub(crate) use objects::{LOCK_MUST_RENEW, NotifyReply, OmapPage, ReadOp, WriteOp};
pub(crate) use rados::{Cluster, IoCtx};
