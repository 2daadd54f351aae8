//! The node's one seam to the host: every mount, unmount, loop-device
//! ioctl, sysfs read and external program the node uses goes through the
//! [`System`] trait. [`HostSystem`] is the real one (mount(2) through
//! `sys-mount`, umount2(2) through `nix`, the loop ioctls through `loopdev`,
//! programs through `swell_storage::command`); the node's is confined to the
//! kubelet directory, mounting and unmounting under it only through
//! descriptors opened beneath it. The recording
//! double in `fake` lets the decisions of stage, publish and expand be
//! unit-tested without root, in the manner of youki's `Syscall`.

mod filesystem_geometry;
mod host;
pub(crate) mod mount_options;
mod seam;

#[cfg(test)]
pub(crate) mod fake;

pub(crate) use host::{HostSystem, blocking};
#[cfg(test)]
pub(crate) use seam::LoopDevice;
pub(crate) use seam::{END_OF_OPTIONS, MountCall, System, args, loop_backing, loop_devices_backing, names_file};
