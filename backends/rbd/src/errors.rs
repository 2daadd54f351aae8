//! How a failed librados/librbd call becomes a [`BackendError`], and which
//! failures mean the cluster connection itself is dead. Pure, so every errno
//! has a unit test.

use std::time::Duration;

use nix::errno::Errno;
use swell_storage::{BackendError, VolumeId};

/// Which layer a failed call went through; it decides whether a timeout
/// condemns the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// `rados_create` / `rados_connect`.
    Connect,
    /// A monitor command (`df`, `osd pool ls`).
    Monitor,
    /// An OSD operation (every librbd call on a pool or image).
    Osd,
}

/// A failed Ceph call, with what Swell was doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CephFailure {
    /// The step, e.g. `rbd_resize2`.
    pub step: String,
    /// What librados or librbd answered.
    pub errno: Errno,
    /// The volume it concerned, if any.
    pub volume: Option<VolumeId>,
    /// Bytes the call asked for (create, grow), for NoSpace.
    pub bytes: Option<u64>,
    /// The layer.
    pub via: Via,
    /// What the monitor said, if anything.
    pub detail: String,
}

/// An RBD operation's failure: a Ceph call, or a decision Swell made.
#[derive(Debug)]
pub(crate) enum RbdError {
    /// A librados/librbd call failed.
    Ceph(CephFailure),
    /// Swell refused (not found, no space, shrink, bad parameter).
    Refused(BackendError),
}

impl From<BackendError> for RbdError {
    fn from(err: BackendError) -> Self {
        RbdError::Refused(err)
    }
}

impl RbdError {
    /// A failed OSD-side call on `volume`.
    pub(crate) fn osd(step: impl Into<String>, errno: Errno, volume: Option<&VolumeId>) -> Self {
        RbdError::Ceph(CephFailure { step: step.into(), errno, volume: volume.cloned(), bytes: None, via: Via::Osd, detail: String::new() })
    }

    /// A failed monitor command.
    pub(crate) fn monitor(step: impl Into<String>, errno: Errno, detail: String) -> Self {
        RbdError::Ceph(CephFailure { step: step.into(), errno, volume: None, bytes: None, via: Via::Monitor, detail })
    }

    /// A failed connect.
    pub(crate) fn connect(step: impl Into<String>, errno: Errno) -> Self {
        RbdError::Ceph(CephFailure { step: step.into(), errno, volume: None, bytes: None, via: Via::Connect, detail: String::new() })
    }

    /// A copy for another caller that shared the failed call (a Swell
    /// refusal is copied by its message, keeping what the caller should do).
    pub(crate) fn duplicate(&self) -> RbdError {
        match self {
            RbdError::Ceph(failure) => RbdError::Ceph(failure.clone()),
            RbdError::Refused(err) => RbdError::Refused(match err {
                BackendError::NotFound(id) => BackendError::NotFound(id.clone()),
                BackendError::InvalidParameter { name, reason } => BackendError::InvalidParameter { name: name.clone(), reason: reason.clone() },
                BackendError::NoSpace { requested, available } => BackendError::NoSpace { requested: *requested, available: *available },
                BackendError::Timeout { step, after } => BackendError::Timeout { step: step.clone(), after: *after },
                BackendError::Unavailable { step, reason } => BackendError::Unavailable { step: step.clone(), reason: reason.clone() },
                BackendError::Contended { step, reason } => BackendError::Contended { step: step.clone(), reason: reason.clone() },
                BackendError::SnapshotNotFound(id) => BackendError::SnapshotNotFound(id.clone()),
                BackendError::Shrink { id, current, requested } => BackendError::Shrink { id: id.clone(), current: *current, requested: *requested },
                BackendError::NameTaken { name, reason } => BackendError::NameTaken { name: name.clone(), reason: reason.clone() },
                BackendError::Unsupported { backend, what } => BackendError::Unsupported { backend: backend.clone(), what: what.clone() },
                BackendError::Corrupt { step, detail } => BackendError::Corrupt { step: step.clone(), detail: detail.clone() },
                BackendError::Io { step, source } => BackendError::io(step.clone(), std::io::Error::new(source.kind(), source.to_string())),
            }),
        }
    }

    /// Records the bytes the failed call asked for.
    pub(crate) fn asking(mut self, bytes: u64) -> Self {
        if let RbdError::Ceph(failure) = &mut self {
            failure.bytes = Some(bytes);
        }
        self
    }

    /// Whether the cluster connection should be dropped and made anew: the
    /// client was blocklisted or disconnected, or the monitor stopped
    /// answering (librados reconnects to a restarted monitor by itself, but a
    /// handle whose monitor session timed out is not worth trusting). An OSD
    /// op timing out says nothing about the connection: PGs may be inactive.
    pub(crate) fn kills_connection(&self) -> bool {
        let RbdError::Ceph(failure) = self else { return false };
        let errno = failure.errno;
        match failure.via {
            Via::Connect => true,
            Via::Monitor => matches!(errno, Errno::ETIMEDOUT | Errno::ENOTCONN | Errno::ESHUTDOWN | Errno::ECONNREFUSED | Errno::ECONNRESET),
            Via::Osd => matches!(errno, Errno::ENOTCONN | Errno::ESHUTDOWN | Errno::ECONNREFUSED | Errno::ECONNRESET),
        }
    }

    /// The backend error the CSI layer maps to a status code.
    ///
    /// - ENOENT on a volume: NotFound.
    /// - ETIMEDOUT: Timeout (DEADLINE_EXCEEDED). librados gave up after
    ///   `op_timeout` (`rados_osd_op_timeout` / `rados_mon_op_timeout` /
    ///   `client_mount_timeout`); a write may still have been applied, which
    ///   is exactly what DEADLINE_EXCEEDED tells the caller (re-read, retry).
    /// - EAGAIN, ENOTCONN, ESHUTDOWN (Ceph's EBLOCKLISTED), ECONNREFUSED,
    ///   ECONNRESET, EBUSY (watchers: the image is still attached somewhere):
    ///   Unavailable. The cluster refused before acting; retry later.
    /// - EDQUOT, ENOSPC: NoSpace.
    /// - anything else: Io, naming the step and the volume.
    pub(crate) fn into_backend(self, op_timeout: Duration) -> BackendError {
        let failure = match self {
            RbdError::Refused(err) => return err,
            RbdError::Ceph(failure) => failure,
        };
        let errno = failure.errno;
        let on = failure.volume.as_ref().map(|v| format!("{} of {v}", failure.step)).unwrap_or_else(|| failure.step.clone());
        let said = if failure.detail.is_empty() { String::new() } else { format!(" ({})", failure.detail.trim()) };
        match errno {
            Errno::ENOENT if failure.volume.is_some() => BackendError::NotFound(failure.volume.unwrap_or_else(|| unreachable!("checked above"))),
            Errno::ETIMEDOUT => BackendError::Timeout { step: on, after: op_timeout },
            Errno::EAGAIN | Errno::ENOTCONN | Errno::ESHUTDOWN | Errno::ECONNREFUSED | Errno::ECONNRESET | Errno::EBUSY => {
                BackendError::Unavailable { step: on, reason: format!("{errno}: {}{said}", errno.desc()) }
            }
            Errno::EDQUOT | Errno::ENOSPC => BackendError::NoSpace { requested: failure.bytes.unwrap_or(0), available: 0 },
            _ => BackendError::io(on, std::io::Error::other(format!("{}{said}", std::io::Error::from(errno)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    fn id() -> VolumeId {
        "rbd:ceph:rbd:swell-00".parse().unwrap()
    }

    fn osd(errno: Errno) -> RbdError {
        RbdError::osd("rbd_resize2", errno, Some(&id()))
    }

    #[test]
    fn each_errno_maps_to_what_the_caller_should_do() {
        assert!(matches!(osd(Errno::ENOENT).into_backend(T), BackendError::NotFound(v) if v == id()));
        assert!(matches!(osd(Errno::ETIMEDOUT).into_backend(T), BackendError::Timeout { after, .. } if after == T));
        for errno in [Errno::EAGAIN, Errno::ENOTCONN, Errno::ESHUTDOWN, Errno::ECONNREFUSED, Errno::EBUSY] {
            assert!(matches!(osd(errno).into_backend(T), BackendError::Unavailable { .. }), "{errno}");
        }
        for errno in [Errno::EDQUOT, Errno::ENOSPC] {
            let err = osd(errno).asking(7).into_backend(T);
            assert!(matches!(err, BackendError::NoSpace { requested: 7, available: 0 }), "{errno}");
        }
        let io = osd(Errno::EIO).into_backend(T);
        assert!(matches!(io, BackendError::Io { .. }));
        let text = io.to_string();
        assert!(text.contains("rbd_resize2") && text.contains("rbd:ceph:rbd:swell-00"), "{text}");
    }

    #[test]
    fn enoent_without_a_volume_is_not_a_missing_volume() {
        let err = RbdError::monitor("df", Errno::ENOENT, "pool does not exist".into()).into_backend(T);
        assert!(matches!(&err, BackendError::Io { .. }), "{err}");
        assert!(err.to_string().contains("pool does not exist"));
    }

    #[test]
    fn only_connection_faults_condemn_the_connection() {
        assert!(!osd(Errno::ETIMEDOUT).kills_connection(), "inactive PGs are no reason to reconnect");
        assert!(osd(Errno::ESHUTDOWN).kills_connection(), "blocklisted");
        assert!(RbdError::monitor("df", Errno::ETIMEDOUT, String::new()).kills_connection());
        assert!(RbdError::connect("rados_connect", Errno::ETIMEDOUT).kills_connection());
        assert!(!RbdError::Refused(BackendError::NotFound(id())).kills_connection());
    }
}
