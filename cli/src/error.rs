//! Why `swell` could not show what was asked: one variant per situation,
//! each naming what the operator should look at.

use std::path::PathBuf;
use std::time::Duration;

use swell_backends::{CallError, OpenError};
use swell_storage::VolumeId;
use swell_storage::volume_id::VolumeIdError;

/// What stopped `swell`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A state directory the flags name does not exist (it is never made).
    #[error("{flag} {} does not exist: give the directory the controller uses", dir.display())]
    NoDirectory {
        /// The flag.
        flag: &'static str,
        /// The directory it names.
        dir: PathBuf,
    },
    /// The backends could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A volume id of a backend not configured here.
    #[error("no {} backend is configured here for {volume}", volume.backend())]
    NoBackend {
        /// The volume asked for.
        volume: VolumeId,
    },
    /// A backend call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The argument is no Swell volume id.
    #[error("{raw:?} is not a Swell volume id: {source}")]
    BadId {
        /// The argument as given.
        raw: String,
        /// Why it does not parse.
        source: VolumeIdError,
    },
    /// Neither the backend nor the records know the volume.
    #[error("{0}: no such volume at its backend, and no expansion record")]
    NoSuchVolume(VolumeId),
}

/// Why Kubernetes could not be asked about the claims.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KubernetesError {
    /// Reading the configuration (kubeconfig, service account) hung.
    #[error("reading the Kubernetes configuration took longer than {0:?}")]
    ConfigTimeout(Duration),
    /// The client could not be made from the configuration.
    #[error("Kubernetes client for {server}: {source}")]
    Client {
        /// The API server.
        server: String,
        /// kube's error.
        source: kube::Error,
    },
    /// The API server refused or failed the listing.
    #[error("listing PersistentVolumes and claims at {server}: {source}")]
    List {
        /// The API server.
        server: String,
        /// kube's error.
        source: kube::Error,
    },
    /// The API server did not list in time.
    #[error("{server} did not list PersistentVolumes and claims within {deadline:?}")]
    ListTimeout {
        /// The API server.
        server: String,
        /// How long it had.
        deadline: Duration,
    },
}
