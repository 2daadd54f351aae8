//! Reading a claim's PersistentVolume from the API server, behind a small
//! trait so tests give a PV without one. The real one is a single `get`
//! (RBAC: `get persistentvolumes`, nothing else).

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Api;

/// Looks PVs up by name.
#[async_trait::async_trait]
pub trait PersistentVolumes: Send + Sync + 'static {
    /// The PV named `name`, `None` if there is none; the error says why it
    /// could not be read.
    async fn get(&self, name: &str) -> Result<Option<PersistentVolume>, PvError>;
}

/// Why a PersistentVolume could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading PersistentVolume {name}: {source}")]
pub struct PvError {
    /// The PV asked for.
    pub name: String,
    /// What the API server (or its client) answered.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// PVs read from the API server with kube's client.
#[derive(Clone)]
pub struct ApiVolumes {
    api: Api<PersistentVolume>,
}

impl ApiVolumes {
    /// PVs through `client`.
    pub fn new(client: kube::Client) -> Self {
        ApiVolumes { api: Api::all(client) }
    }
}

#[async_trait::async_trait]
impl PersistentVolumes for ApiVolumes {
    async fn get(&self, name: &str) -> Result<Option<PersistentVolume>, PvError> {
        self.api.get_opt(name).await.map_err(|e| PvError { name: name.to_owned(), source: Box::new(e) })
    }
}
