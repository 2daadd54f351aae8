//! [`BackendError`]: why a backend call failed, one variant per thing the
//! caller should do next.

use std::time::Duration;

use crate::snapshot::SnapshotId;
use crate::volume_id::VolumeId;

/// Why a backend call failed. Each variant maps to one CSI status code in the
/// services, so the variant is chosen for what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The volume does not exist.
    #[error("volume {0} does not exist")]
    NotFound(VolumeId),
    /// The snapshot does not exist.
    #[error("snapshot {0} does not exist")]
    SnapshotNotFound(SnapshotId),
    /// A StorageClass parameter is missing or wrong.
    #[error("parameter {name:?}: {reason}")]
    InvalidParameter {
        /// The parameter's key.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The pool cannot hold the requested size under its capacity policy.
    #[error("{requested} bytes requested but only {available} bytes available")]
    NoSpace {
        /// Bytes the operation needed.
        requested: u64,
        /// Bytes the pool can still give.
        available: u64,
    },
    /// The engine refused a shrink (sizes only grow).
    #[error("volume {id} is {current} bytes; shrinking to {requested} is not supported")]
    Shrink {
        /// The volume.
        id: VolumeId,
        /// Its size now.
        current: u64,
        /// The smaller size asked for.
        requested: u64,
    },
    /// The name is taken by a volume or snapshot that does not fit the
    /// request (another source); the caller must use another name.
    #[error("{name:?} already exists: {reason}")]
    NameTaken {
        /// The CO's name.
        name: String,
        /// How the existing one differs.
        reason: String,
    },
    /// The engine cannot do what was asked (a source it cannot make a
    /// volume from, a feature it lacks).
    #[error("{what} is not supported by the {backend} backend")]
    Unsupported {
        /// The backend.
        backend: String,
        /// What was asked.
        what: String,
    },
    /// Another operation (in this process or another controller replica)
    /// holds the volume or changed its record meanwhile; retry later.
    #[error("{step}: {reason}")]
    Contended {
        /// What Swell was doing.
        step: String,
        /// Who or what got in the way.
        reason: String,
    },
    /// The engine is unreachable or unhealthy; worth retrying later.
    #[error("backend unavailable during {step}: {reason}")]
    Unavailable {
        /// What Swell was doing.
        step: String,
        /// What went wrong.
        reason: String,
    },
    /// The engine did not answer within Swell's deadline.
    #[error("backend did not finish {step} within {after:?}")]
    Timeout {
        /// What Swell was doing.
        step: String,
        /// The deadline.
        after: Duration,
    },
    /// Swell's own metadata does not read back as Swell wrote it (a bug, or
    /// another writer): nothing to retry, an operator must look.
    #[error("{step}: Swell's own state is inconsistent: {detail}")]
    Corrupt {
        /// What Swell was doing.
        step: String,
        /// What does not fit.
        detail: String,
    },
    /// An unexpected local failure (I/O, a worker that died).
    #[error("{step}: {source}")]
    Io {
        /// What Swell was doing.
        step: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl BackendError {
    /// Wraps an I/O error with the step it interrupted.
    pub fn io(step: impl Into<String>, source: std::io::Error) -> Self {
        BackendError::Io { step: step.into(), source }
    }

    /// Metadata that does not read back as written, with the step reading it.
    pub fn corrupt(step: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        BackendError::Corrupt { step: step.into(), detail: detail.to_string() }
    }
}
