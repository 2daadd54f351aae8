//! The controller's one error type and its one mapping to gRPC status codes.
//! Codes are chosen for what they make the external-resizer and provisioner
//! do (see docs/expansion-semantics.md): infeasible requests are
//! INVALID_ARGUMENT / OUT_OF_RANGE / NOT_FOUND, passing trouble is ABORTED /
//! UNAVAILABLE / DEADLINE_EXCEEDED, and FAILED_PRECONDITION is never used for
//! capacity or health because the resizer reads it as "volume in use".

use std::error::Error as _;

use swell_backends::{CallError, UnknownBackend};
use swell_storage::{BackendError, VolumeId};
use tonic::{Code, Status};

/// Everything a controller RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A request field is missing or wrong.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The protobuf field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The volume does not exist.
    #[error("volume {0} not found")]
    NotFound(String),
    /// The snapshot does not exist.
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    /// The pool has no room for a snapshot (CreateSnapshot's own code for
    /// it; a volume that does not fit is OUT_OF_RANGE).
    #[error("not enough space for snapshot {name:?}: {source}")]
    NoSpaceForSnapshot {
        /// The CO's snapshot name.
        name: String,
        /// The backend's refusal.
        source: BackendError,
    },
    /// A volume of this name exists and does not fit the request.
    #[error("volume {name:?} already exists as {id} with {existing} bytes, incompatible with the request ({reason})")]
    AlreadyExists {
        /// The CO's name.
        name: String,
        /// The existing volume's id.
        id: VolumeId,
        /// Its size.
        existing: u64,
        /// Why it does not fit.
        reason: String,
    },
    /// Another operation holds the volume (or name); retry later.
    #[error("an operation is pending for {0}; retry later")]
    Pending(String),
    /// The size cannot be given under the capacity range or pool capacity.
    #[error("{0}")]
    OutOfRange(String),
    /// A ListVolumes starting token this controller did not issue.
    #[error("starting_token {0:?} was not issued by this controller")]
    BadToken(String),
    /// An RPC Swell does not offer.
    #[error("{0} is not supported by Swell")]
    Unimplemented(&'static str),
    /// The backend failed during a step on a volume.
    #[error("{step} {volume}: {source}")]
    Backend {
        /// Volume id or name.
        volume: String,
        /// What the controller was doing.
        step: &'static str,
        /// The backend's error.
        source: BackendError,
    },
    /// The controller's own durable records could not be read or written.
    #[error("{step} for {volume}: {source}")]
    Record {
        /// Volume id.
        volume: String,
        /// What was being done.
        step: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<CallError> for ControllerError {
    fn from(CallError { volume, step, source }: CallError) -> Self {
        ControllerError::Backend { volume, step, source }
    }
}

impl From<UnknownBackend> for ControllerError {
    fn from(err: UnknownBackend) -> Self {
        ControllerError::invalid("parameters.backend", err.to_string())
    }
}

impl ControllerError {
    /// Shorthand for an invalid field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ControllerError::InvalidArgument { field, reason: reason.into() }
    }

    fn code(&self) -> Code {
        match self {
            ControllerError::InvalidArgument { .. } => Code::InvalidArgument,
            ControllerError::NotFound(_) | ControllerError::SnapshotNotFound(_) => Code::NotFound,
            ControllerError::NoSpaceForSnapshot { .. } => Code::ResourceExhausted,
            ControllerError::AlreadyExists { .. } => Code::AlreadyExists,
            ControllerError::Pending(_) | ControllerError::BadToken(_) => Code::Aborted,
            ControllerError::OutOfRange(_) => Code::OutOfRange,
            ControllerError::Unimplemented(_) => Code::Unimplemented,
            ControllerError::Record { .. } => Code::Internal,
            ControllerError::Backend { source, .. } => match source {
                BackendError::NotFound(_) | BackendError::SnapshotNotFound(_) => Code::NotFound,
                BackendError::NameTaken { .. } => Code::AlreadyExists,
                BackendError::Unsupported { .. } => Code::InvalidArgument,
                BackendError::InvalidParameter { .. } => Code::InvalidArgument,
                BackendError::NoSpace { .. } | BackendError::Shrink { .. } => Code::OutOfRange,
                BackendError::Contended { .. } => Code::Aborted,
                BackendError::Unavailable { .. } => Code::Unavailable,
                BackendError::Timeout { .. } => Code::DeadlineExceeded,
                BackendError::Corrupt { .. } | BackendError::Io { .. } => Code::Internal,
            },
        }
    }
}

impl From<ControllerError> for Status {
    fn from(err: ControllerError) -> Status {
        let mut message = err.to_string();
        let mut source = err.source().and_then(|s| s.source());
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        let status = Status::new(err.code(), message);
        // Every RPC's failure passes here once, inside its span.
        csi_endpoint::failures::log_answer(&status);
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn backend(source: BackendError) -> ControllerError {
        ControllerError::Backend { volume: "local:ab".into(), step: "grow", source }
    }

    #[test]
    fn backend_trouble_never_maps_to_failed_precondition() {
        let cases = [
            (backend(BackendError::NoSpace { requested: 2, available: 1 }), Code::OutOfRange),
            (backend(BackendError::Unavailable { step: "connect".into(), reason: "down".into() }), Code::Unavailable),
            (backend(BackendError::Timeout { step: "resize".into(), after: Duration::from_secs(5) }), Code::DeadlineExceeded),
            (backend(BackendError::io("write", std::io::Error::other("disk"))), Code::Internal),
            (backend(BackendError::corrupt("read promised total", "unreadable: x")), Code::Internal),
            (ControllerError::Pending("local:ab".into()), Code::Aborted),
            (backend(BackendError::Contended { step: "write record".into(), reason: "lease lost".into() }), Code::Aborted),
            (ControllerError::BadToken("x".into()), Code::Aborted),
            (ControllerError::NoSpaceForSnapshot { name: "s".into(), source: BackendError::NoSpace { requested: 2, available: 1 } }, Code::ResourceExhausted),
            (backend(BackendError::NameTaken { name: "s".into(), reason: "another source".into() }), Code::AlreadyExists),
            (ControllerError::invalid("volume_id", "missing"), Code::InvalidArgument),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn the_message_names_volume_step_and_cause() {
        let status = Status::from(backend(BackendError::Timeout { step: "rbd_resize".into(), after: Duration::from_secs(5) }));
        assert!(status.message().contains("local:ab"), "{}", status.message());
        assert!(status.message().contains("rbd_resize"), "{}", status.message());
    }
}
