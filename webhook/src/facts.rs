//! Fresh facts about a volume at its backend, behind [`VolumeFacts`] so the
//! decision can be tested without one. [`BackendFacts`] reads them from
//! Swell's backends (opened as the controller opens them) and the volume's
//! expansion record in its backend's store, every time: nothing is cached.

use swell_backends::Backends;
use swell_storage::{BackendError, VolumeId};

use crate::decision::VolumeState;

/// Reads what the backend holds for a volume now.
#[async_trait::async_trait]
pub trait VolumeFacts: Send + Sync + 'static {
    /// The volume's state; the error says why it could not be read (the
    /// webhook then applies its policy for unchecked resizes).
    async fn read(&self, id: &VolumeId) -> Result<VolumeState, FactsError>;
}

/// Why a volume's facts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The volume's backend is not configured here.
    #[error("no {} backend is configured for volume {volume}", volume.backend())]
    NoBackend {
        /// The volume.
        volume: VolumeId,
    },
    /// A backend read failed.
    #[error("{step} of {volume}: {source}")]
    Backend {
        /// What was being read.
        step: &'static str,
        /// The volume.
        volume: VolumeId,
        /// The backend's error.
        source: BackendError,
    },
    /// The volume's expansion record could not be read.
    #[error("read the expansion record of {volume}: {source}")]
    Record {
        /// The volume.
        volume: VolumeId,
        /// The store's error.
        source: BackendError,
    },
}

/// Facts from Swell's backends and their expansion records.
#[derive(Clone)]
pub struct BackendFacts {
    backends: Backends,
}

impl BackendFacts {
    /// Facts from `backends`.
    pub fn new(backends: Backends) -> Self {
        BackendFacts { backends }
    }
}

/// The desired size of the volume's record while it wants more than the
/// size the record last saw; `None` without such a record. The caller
/// compares it with the backend's fresh size as well.
async fn open_desired(backend: &dyn swell_storage::Backend, id: &VolumeId) -> Result<Option<u64>, BackendError> {
    let record = backend.expansion_store().record(id).await?;
    Ok(record.filter(|r| r.growing()).map(|r| r.desired_bytes))
}

#[async_trait::async_trait]
impl VolumeFacts for BackendFacts {
    async fn read(&self, id: &VolumeId) -> Result<VolumeState, FactsError> {
        let backend = self.backends.for_volume(id).ok_or_else(|| FactsError::NoBackend { volume: id.clone() })?;
        let volume_id = id.to_string();
        let unreadable = |step, source| FactsError::Backend { step, volume: id.clone(), source };
        if let Err(err) = backend.check_health().await {
            return match err {
                BackendError::Timeout { .. } => Err(unreadable("health check", err)),
                other => Ok(VolumeState { volume_id, size_bytes: None, recorded_desired: None, available_bytes: 0, unusable: Some(other.to_string()) }),
            };
        }
        let (volume, room, record) = tokio::join!(backend.volume(id), backend.room_for(id), open_desired(backend.as_ref(), id));
        let volume = volume.map_err(|e| unreadable("read volume", e))?;
        let room = room.map_err(|e| unreadable("read capacity", e))?;
        let recorded_desired = record.map_err(|source| FactsError::Record { volume: id.clone(), source })?;
        Ok(VolumeState { volume_id, size_bytes: volume.map(|v| v.size_bytes), recorded_desired, available_bytes: room.available_bytes, unusable: None })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use swell_local::{LocalBackend, LocalConfig};
    use swell_storage::Backend;

    use super::*;

    // Open records are read through the backend's store; the e2e tests
    // (e2e/tests/webhook_*.rs) leave them with the harness's one helper.
    #[tokio::test]
    async fn reads_size_and_room_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalConfig { state_dir: dir.path().join("local"), records_dir: dir.path().join("controller"), capacity_bytes: Some(10 << 30) };
        let local = Arc::new(LocalBackend::open(&config).unwrap());
        let created = local.create_volume("pvc-a", 1 << 30, &Default::default()).await.unwrap();
        let id = created.info().id.clone();
        let facts = BackendFacts::new(Backends::new(local.clone(), Duration::from_secs(5)));
        let state = facts.read(&id).await.unwrap();
        assert_eq!((state.size_bytes, state.recorded_desired, state.unusable, state.available_bytes), (Some(1 << 30), None, None, 9 << 30));
        local.grow_volume(&id, 3 << 30).await.unwrap();
        let state = facts.read(&id).await.unwrap();
        assert_eq!((state.size_bytes, state.available_bytes), (Some(3 << 30), 7 << 30));
        local.delete_volume(&id).await.unwrap();
        assert_eq!(facts.read(&id).await.unwrap().size_bytes, None);
        let err = facts.read(&"rbd:c:p:swell-00".parse().unwrap()).await.unwrap_err();
        assert_eq!(err.to_string(), "no rbd backend is configured for volume rbd:c:p:swell-00");
    }
}
