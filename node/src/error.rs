//! The node's one error type. Each variant carries the volume and the step
//! it interrupted, keeps its source, and maps to exactly one gRPC status in
//! the single `From<NodeError> for Status` below; the code is chosen for what
//! kubelet should do next (see docs/expansion-semantics.md).

use std::error::Error as _;
use std::path::PathBuf;
use std::time::Duration;

use swell_storage::command::CommandError;
use tonic::{Code, Status};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The volume does not exist (or its id cannot name one).
    #[error("volume {volume} not found: {reason}")]
    VolumeNotFound { volume: String, reason: String },
    /// A path the request names does not exist.
    #[error("path {} does not exist", path.display())]
    PathNotFound { path: PathBuf },
    /// A path exists but does not hold this volume.
    #[error("volume {volume} is not mounted at {}", path.display())]
    NotAtPath { volume: String, path: PathBuf },
    /// Another operation holds the volume's lock.
    #[error("operation pending for volume {volume}")]
    Busy { volume: String },
    /// The volume must be staged first.
    #[error("volume {volume} is not staged at {}", path.display())]
    NotStaged { volume: String, path: PathBuf },
    /// The volume is already staged or published incompatibly.
    #[error("volume {volume}: {reason}")]
    Conflict { volume: String, reason: String },
    /// Online ext4 growth needs CAP_SYS_RESOURCE, which this node lacks.
    #[error(
        "online grow of ext4 on volume {volume} not permitted on this node (CAP_SYS_RESOURCE missing); \
         the filesystem will be grown offline at the next stage"
    )]
    OnlineGrowNotPermitted { volume: String, source: CommandError },
    /// The backend object is smaller than the size asked for.
    #[error("backend volume {volume} is {backing_bytes} bytes, smaller than the required {required_bytes} bytes")]
    BackendTooSmall { volume: String, backing_bytes: u64, required_bytes: u64 },
    /// The device did not pick up the backing object's size in time.
    #[error("device {} of volume {volume} still reports {actual} bytes, not the backing {expected} bytes, after {after:?}", device.display())]
    RefreshTimeout { volume: String, device: PathBuf, expected: u64, actual: u64, after: Duration },
    /// The filesystem did not reach the device's size after growing.
    #[error("filesystem of volume {volume} is {fs_bytes} bytes after growing, short of the device's {device_bytes} bytes")]
    GrowIncomplete { volume: String, fs_bytes: u64, device_bytes: u64 },
    /// An external command failed.
    #[error("{step}")]
    Command { step: String, source: CommandError },
    /// A local file operation failed.
    #[error("{step}")]
    Io { step: String, source: std::io::Error },
    /// A command printed something this code cannot read.
    #[error("{step}: unexpected output: {detail}")]
    Parse { step: String, detail: String },
    /// A blocking local operation (statvfs on a hung mount) ran out of time.
    #[error("{step} did not finish within {after:?}")]
    Timeout { step: String, after: Duration },
    /// The blocking worker a host call ran on failed (it panicked).
    #[error("{step}: {reason}")]
    WorkerFailed { step: String, reason: String },
    /// A path stays mounted after as many unmounts as mounts may be stacked.
    #[error("{} still mounted after {unmounts} unmounts", path.display())]
    StillMounted { path: PathBuf, unmounts: usize },
    /// A device holds data blkid does not know as a filesystem (a partition
    /// table): it is never formatted.
    #[error("{} holds data that is not a filesystem (partition table?); refusing to format it", device.display())]
    NotAFilesystem { device: PathBuf },
    /// rbd-fuse did not exit after its mount went, even on SIGTERM.
    #[error("rbd-fuse ({pids:?}) for {} of volume {volume} still runs; the image keeps its watcher", dir.display())]
    FuseStillRunning { volume: String, dir: PathBuf, pids: Vec<u32> },
    /// The volume's attachment is unhealthy: growing it would not help.
    #[error("cannot expand: {problem}; restage the volume")]
    AttachmentUnhealthy { volume: String, problem: String },
    /// Something at a path the node was asked to unmount or remove that the
    /// node did not make there: left alone.
    #[error("{} holds {found}, which is not volume {volume}'s; Swell unmounts and removes only what it made", path.display())]
    NotOurs { volume: String, path: PathBuf, found: String },
    /// A read-only stage of a blank volume: a reader never formats.
    #[error("volume {volume} holds no filesystem, and a read-only stage never formats one")]
    ReadOnlyBlank { volume: String },
    /// The node-stage secret does not open an encrypted volume: nothing was
    /// attached, formatted or opened.
    #[error("the node-stage secret does not open encrypted volume {volume}: {reason}")]
    WrongKey { volume: String, reason: String },
    /// The staging record says staged, but nothing is mounted there.
    #[error("staging path {} of {volume} is not mounted", path.display())]
    StagingNotMounted { volume: String, path: PathBuf },
}

impl NodeError {
    /// Wraps a failed command with the step it served.
    pub fn command(step: impl Into<String>, source: CommandError) -> Self {
        NodeError::Command { step: step.into(), source }
    }

    /// Wraps an I/O error with the step it served.
    pub fn io(step: impl Into<String>, source: std::io::Error) -> Self {
        NodeError::Io { step: step.into(), source }
    }

    /// A failed stat of a path the CO named: NOT_FOUND only when the path is
    /// not there; any other failure (EIO from a filesystem that shut down,
    /// ENOTCONN from a FUSE whose daemon died) is the host's own error, and
    /// kubelet must not take it for a missing path (which it does not retry).
    pub fn stat_failed(path: PathBuf, source: std::io::Error) -> Self {
        match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => NodeError::PathNotFound { path },
            _ => NodeError::io(format!("stat {}", path.display()), source),
        }
    }

    /// Names the volume in the step a host call failed at (the system
    /// seam knows devices and paths, not volumes).
    pub fn for_volume(self, volume: &impl std::fmt::Display) -> Self {
        match self {
            NodeError::Io { step, source } => NodeError::Io { step: format!("{step} for volume {volume}"), source },
            NodeError::Timeout { step, after } => NodeError::Timeout { step: format!("{step} for volume {volume}"), after },
            NodeError::Command { step, source } => NodeError::Command { step: format!("{step} for volume {volume}"), source },
            other => other,
        }
    }

    /// The status code kubelet acts on.
    pub fn code(&self) -> Code {
        match self {
            NodeError::InvalidArgument { .. } => Code::InvalidArgument,
            // NOT_FOUND as NodeGetVolumeStats answers it: no volume with this
            // id at this path.
            NodeError::VolumeNotFound { .. } | NodeError::PathNotFound { .. } | NodeError::NotAtPath { .. } => Code::NotFound,
            NodeError::Busy { .. } => Code::Aborted,
            // The caller's credential, not the volume, is wrong.
            NodeError::WrongKey { .. } => Code::PermissionDenied,
            NodeError::NotStaged { .. } | NodeError::ReadOnlyBlank { .. } | NodeError::NotOurs { .. } => Code::FailedPrecondition,
            NodeError::Conflict { .. } => Code::AlreadyExists,
            // Kubelet stops retrying on this node without blocking the mount;
            // the next stage grows the filesystem offline.
            NodeError::OnlineGrowNotPermitted { .. } => Code::FailedPrecondition,
            // A device detached or now another file's: no retry here can
            // help. Kubelet stops retrying on this node without blocking the
            // mount, and the restage (whose first stage grows) ends it.
            NodeError::AttachmentUnhealthy { .. } => Code::FailedPrecondition,
            // The same for a staging mount lost under an attached device:
            // the restage mounts it again and grows it.
            NodeError::StagingNotMounted { .. } => Code::FailedPrecondition,
            // Infeasible, not transient: INTERNAL would be retried forever,
            // while OUT_OF_RANGE marks NodeResizeInfeasible and lets the user
            // lower the request (KEP-1790).
            NodeError::BackendTooSmall { .. } => Code::OutOfRange,
            NodeError::RefreshTimeout { .. } | NodeError::Timeout { .. } => Code::DeadlineExceeded,
            NodeError::Command { source: CommandError::Timeout { .. }, .. } => Code::DeadlineExceeded,
            NodeError::GrowIncomplete { .. }
            | NodeError::Command { .. }
            | NodeError::Io { .. }
            | NodeError::Parse { .. }
            | NodeError::WorkerFailed { .. }
            | NodeError::StillMounted { .. }
            | NodeError::NotAFilesystem { .. }
            | NodeError::FuseStillRunning { .. } => Code::Internal,
        }
    }

    /// The message with every source in the chain appended.
    pub fn full_message(&self) -> String {
        let mut message = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }
}

impl NodeError {
    /// The message the CO sees, and shows in the pod's events: the full
    /// message, but of a failed external program only its name and how it
    /// ended ([`CommandError::public`]); the rest stays in the node's log.
    pub fn public_message(&self) -> String {
        let mut message = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            message.push_str(": ");
            if let Some(command) = cause.downcast_ref::<CommandError>() {
                message.push_str(&command.public());
                break;
            }
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }
}

impl From<NodeError> for Status {
    fn from(error: NodeError) -> Self {
        // Every RPC's failure passes here once, inside its span: the log
        // gets all of it, the answer what may be shown.
        csi_endpoint::failures::log_answer(&Status::new(error.code(), error.full_message()));
        Status::new(error.code(), error.public_message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_a_failed_program_but_not_its_command_line_keyring_or_user() {
        let failed = CommandError::Failed {
            command: "rbd map rbd/swell-0123 --id tenant-admin --keyring /etc/ceph/ceph.client.secret.keyring".into(),
            code: Some(13),
            stderr: "auth: unable to read /etc/ceph/ceph.client.secret.keyring".into(),
            stdout: String::new(),
        };
        let status = Status::from(NodeError::command("attach image rbd/swell-0123 of volume v", failed));
        let message = status.message();
        assert!(message.starts_with("attach image rbd/swell-0123 of volume v: `rbd` failed with exit code Some(13)"), "{message}");
        for secret in ["keyring", "tenant-admin", "--id", "/etc/ceph"] {
            assert!(!message.contains(secret), "{secret} in {message}");
        }
        let timeout = CommandError::Timeout { command: "mkfs.xfs /dev/loop3".into(), after: Duration::from_secs(60), reaped: true };
        assert!(!Status::from(NodeError::command("format", timeout)).message().contains("/dev/loop3"));
    }

    #[test]
    fn codes_follow_the_expansion_semantics() {
        let failed = CommandError::Failed { command: "x".into(), code: Some(1), stderr: "boom".into(), stdout: String::new() };
        let cases = [
            (NodeError::InvalidArgument { field: "volume_id", reason: "missing".into() }, Code::InvalidArgument),
            (NodeError::VolumeNotFound { volume: "v".into(), reason: "gone".into() }, Code::NotFound),
            (NodeError::PathNotFound { path: "/x".into() }, Code::NotFound),
            (NodeError::NotAtPath { volume: "v".into(), path: "/x".into() }, Code::NotFound),
            (NodeError::Busy { volume: "v".into() }, Code::Aborted),
            (NodeError::NotStaged { volume: "v".into(), path: "/s".into() }, Code::FailedPrecondition),
            (NodeError::Conflict { volume: "v".into(), reason: "r".into() }, Code::AlreadyExists),
            (NodeError::BackendTooSmall { volume: "v".into(), backing_bytes: 1, required_bytes: 2 }, Code::OutOfRange),
            (NodeError::GrowIncomplete { volume: "v".into(), fs_bytes: 1, device_bytes: 2 }, Code::Internal),
            (NodeError::OnlineGrowNotPermitted { volume: "v".into(), source: failed }, Code::FailedPrecondition),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn only_a_path_that_is_not_there_is_not_found() {
        use std::io::{Error, ErrorKind};
        let stat = |kind: ErrorKind| NodeError::stat_failed("/pods/p/vol".into(), Error::from(kind)).code();
        assert_eq!(stat(ErrorKind::NotFound), Code::NotFound);
        assert_eq!(stat(ErrorKind::NotADirectory), Code::NotFound);
        // A volume whose filesystem or FUSE daemon died is there, and broken.
        assert_eq!(NodeError::stat_failed("/pods/p/vol".into(), Error::from_raw_os_error(5)).code(), Code::Internal);
        assert_eq!(NodeError::stat_failed("/pods/p/vol".into(), Error::from_raw_os_error(107)).code(), Code::Internal);
    }

    #[test]
    fn a_command_timeout_is_deadline_exceeded() {
        let source = CommandError::Timeout { command: "mkfs.xfs".into(), after: Duration::from_secs(60), reaped: true };
        assert_eq!(NodeError::command("format", source).code(), Code::DeadlineExceeded);
    }

    #[test]
    fn the_message_walks_the_source_chain() {
        let source = CommandError::Failed {
            command: "resize2fs /dev/loop0".into(),
            code: Some(1),
            stderr: "Permission denied to resize filesystem".into(),
            stdout: String::new(),
        };
        let error = NodeError::command("grow ext4 on local:ab", source);
        // The log gets the chain whole; the answer names the program only.
        assert!(error.full_message().starts_with("grow ext4 on local:ab: `resize2fs /dev/loop0` failed"), "{}", error.full_message());
        assert!(error.full_message().contains("Permission denied"), "{}", error.full_message());
        let status = Status::from(error);
        assert!(status.message().starts_with("grow ext4 on local:ab: `resize2fs` failed"), "{}", status.message());
    }
}
