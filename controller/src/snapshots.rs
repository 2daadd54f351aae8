//! Snapshots and clones as the Controller service serves them: requests
//! turned into typed values, routed to the backend that owns the source,
//! and answers built from what the backend reports. CreateSnapshot,
//! DeleteSnapshot and ListSnapshots, and CreateVolume with a content
//! source, are answered here; the service only delegates.

use std::collections::HashMap;
use std::sync::Arc;

use csi_proto::v1::volume_content_source::{SnapshotSource, Type, VolumeSource};
use csi_proto::v1::{ListSnapshotsRequest, ListSnapshotsResponse, Snapshot, VolumeContentSource, list_snapshots_response};
use swell_backends::{Backends, CallError};
use swell_storage::locks::KeyedLocks;
use swell_storage::rbd_attach;
use swell_storage::{Backend, BackendError, ContentSource, Created, SnapshotId, SnapshotInfo, VolumeId, VolumeInfo};

use crate::error::ControllerError;
use crate::listing;
use crate::parameters::VolumeParameters;
use crate::sizing;
use crate::validate::{self, SizeRange};

/// StorageClass-style keys the snapshot sidecar adds itself.
const SNAPSHOTTER_PREFIX: &str = "csi.storage.k8s.io/";

/// The snapshot and clone side of the Controller service.
#[derive(Clone)]
pub(crate) struct Snapshots {
    backends: Backends,
    /// Creates in flight, by name (shared with volume creates; snapshot
    /// names are kept apart by a prefix).
    names: KeyedLocks,
}

/// A source a CreateVolume names, parsed; `Missing` for an id that is no
/// Swell id at all (it names nothing that exists).
enum Source {
    Found(ContentSource),
    Missing(String, &'static str),
}

impl Snapshots {
    /// Snapshots over `backends`, taking name locks from `names`.
    pub(crate) fn new(backends: Backends, names: KeyedLocks) -> Self {
        Snapshots { backends, names }
    }

    /// CreateSnapshot: idempotent by name; a name reused for another volume
    /// is ALREADY_EXISTS, a pool without room RESOURCE_EXHAUSTED.
    pub(crate) async fn create(&self, name: &str, source_volume_id: &str, parameters: &HashMap<String, String>) -> Result<SnapshotInfo, ControllerError> {
        let name = validate::name("name", name)?;
        validate::required("source_volume_id", source_volume_id)?;
        check_parameters(parameters)?;
        let not_found = || ControllerError::NotFound(source_volume_id.to_owned());
        let source: VolumeId = source_volume_id.parse().map_err(|_| not_found())?;
        let backend = self.backends.for_volume(&source).ok_or_else(not_found)?;
        let _guard = self.names.try_acquire(&format!("snapshot/{name}")).ok_or_else(|| ControllerError::Pending(format!("snapshot name {name:?}")))?;
        let created = self.backends.call("create snapshot", name, backend.create_snapshot(name, &source)).await.map_err(|err| match err {
            CallError { source: source @ BackendError::NoSpace { .. }, .. } => ControllerError::NoSpaceForSnapshot { name: name.to_owned(), source },
            other => other.into(),
        })?;
        Ok(match created {
            Created::New(info) | Created::Existing(info) => info,
        })
    }

    /// DeleteSnapshot: a snapshot that does not exist (or an id that is no
    /// Swell snapshot id) is deleted already.
    pub(crate) async fn delete(&self, snapshot_id: &str) -> Result<(), ControllerError> {
        validate::required("snapshot_id", snapshot_id)?;
        let Ok(id) = snapshot_id.parse::<SnapshotId>() else { return Ok(()) };
        let Some(backend) = self.backends.for_backend(id.backend()) else { return Ok(()) };
        let _guard = self.names.try_acquire(&format!("snapshot-id/{id}")).ok_or_else(|| ControllerError::Pending(format!("snapshot {id}")))?;
        Ok(self.backends.call("delete snapshot", snapshot_id, backend.delete_snapshot(&id)).await?)
    }

    /// ListSnapshots: every snapshot, or the one named by `snapshot_id`, or
    /// those of `source_volume_id`, a page at a time. Ids that are no Swell
    /// ids name nothing: the list is empty.
    pub(crate) async fn list(&self, req: &ListSnapshotsRequest) -> Result<ListSnapshotsResponse, ControllerError> {
        let mut found = Vec::new();
        if !req.snapshot_id.is_empty() {
            if let Ok(id) = req.snapshot_id.parse::<SnapshotId>()
                && let Some(backend) = self.backends.for_backend(id.backend())
                && let Some(info) = self.backends.call("read snapshot", &req.snapshot_id, backend.snapshot(&id)).await?
                && (req.source_volume_id.is_empty() || req.source_volume_id == info.source.to_string())
            {
                found.push(info);
            }
        } else if !req.source_volume_id.is_empty() {
            if let Ok(source) = req.source_volume_id.parse::<VolumeId>()
                && let Some(backend) = self.backends.for_volume(&source)
            {
                found = self.backends.call("list snapshots", &req.source_volume_id, backend.list_snapshots(Some(&source))).await?;
            }
        } else {
            for backend in self.backends.all() {
                found.extend(self.backends.call("list snapshots", backend.kind(), backend.list_snapshots(None)).await?);
            }
        }
        let page = listing::page(found, &req.starting_token, req.max_entries)?;
        let entries = page.entries.iter().map(|info| list_snapshots_response::Entry { snapshot: Some(to_snapshot(info)) }).collect();
        Ok(ListSnapshotsResponse { entries, next_token: page.next_token })
    }

    /// CreateVolume with a content source: the volume is made at the size
    /// asked for, never below the source's (OUT_OF_RANGE), by the backend
    /// that owns the source. Also returns the volume whose data the source
    /// holds (the snapshot's source, or the cloned volume): an encrypted
    /// copy's data key is still bound to that volume's id. A source whose
    /// encryption differs from the class's is refused before anything is
    /// made: the node could stage neither copy.
    pub(crate) async fn create_volume_from(
        &self,
        name: &str,
        range: SizeRange,
        backend: &Arc<dyn Backend>,
        params: &VolumeParameters,
        requested: &VolumeContentSource,
    ) -> Result<(VolumeInfo, VolumeId), ControllerError> {
        let source = match parse_source(requested)? {
            Source::Found(source) => source,
            Source::Missing(id, "snapshot") => return Err(ControllerError::SnapshotNotFound(id)),
            Source::Missing(id, _) => return Err(ControllerError::NotFound(id)),
        };
        let (source_bytes, origin) = self.source_size(backend, &source).await?;
        let encrypted = self.backends.call("read the source's encryption", &source.to_string(), backend.source_encrypted(&source)).await?;
        if let Some(reason) = encryption_mismatch(&source, encrypted, params.attach.encrypted) {
            return Err(ControllerError::invalid("volume_content_source", reason));
        }
        let size =
            sizing::allocation_from_source(range, source_bytes).map_err(|e| ControllerError::OutOfRange(format!("volume {name:?} from {source}: {e}")))?;
        let _guard = self.names.try_acquire(name).ok_or_else(|| ControllerError::Pending(format!("volume name {name:?}")))?;
        let created = self.backends.call("create volume from a source", name, backend.create_volume_from(name, size, &params.placement, &source)).await?;
        if let Created::Existing(info) = &created {
            sizing::check_compatible(info, range)?;
        }
        Ok((created.info().clone(), origin))
    }

    /// The size of `source`, which must belong to `backend` (the
    /// StorageClass's): a source elsewhere is INVALID_ARGUMENT; and the
    /// volume whose data it holds.
    async fn source_size(&self, backend: &Arc<dyn Backend>, source: &ContentSource) -> Result<(u64, VolumeId), ControllerError> {
        let owner = match source {
            ContentSource::Snapshot(id) => id.backend(),
            ContentSource::Volume(id) => id.backend(),
        };
        if owner != backend.kind() {
            if self.backends.for_backend(owner).is_none() {
                return Err(match source {
                    ContentSource::Snapshot(id) => ControllerError::SnapshotNotFound(id.to_string()),
                    ContentSource::Volume(id) => ControllerError::NotFound(id.to_string()),
                });
            }
            let reason = format!("{source} belongs to the {owner} backend; the volume would be made by the {} backend", backend.kind());
            return Err(ControllerError::invalid("volume_content_source", reason));
        }
        match source {
            ContentSource::Snapshot(id) => {
                let info = self.backends.call("read source snapshot", &id.to_string(), backend.snapshot(id)).await?;
                let info = info.ok_or_else(|| ControllerError::SnapshotNotFound(id.to_string()))?;
                if !info.ready {
                    return Err(ControllerError::Pending(format!("snapshot {id} (not ready to use yet)")));
                }
                Ok((info.size_bytes, info.source))
            }
            ContentSource::Volume(id) => {
                let info = self.backends.call("read source volume", &id.to_string(), backend.volume(id)).await?;
                Ok((info.ok_or_else(|| ControllerError::NotFound(id.to_string()))?.size_bytes, id.clone()))
            }
        }
    }
}

/// The content source of a request, typed.
fn parse_source(requested: &VolumeContentSource) -> Result<Source, ControllerError> {
    match &requested.r#type {
        Some(Type::Snapshot(SnapshotSource { snapshot_id })) => {
            validate::required("volume_content_source.snapshot.snapshot_id", snapshot_id)?;
            Ok(snapshot_id.parse().map(|id| Source::Found(ContentSource::Snapshot(id))).unwrap_or_else(|_| Source::Missing(snapshot_id.clone(), "snapshot")))
        }
        Some(Type::Volume(VolumeSource { volume_id })) => {
            validate::required("volume_content_source.volume.volume_id", volume_id)?;
            Ok(volume_id.parse().map(|id| Source::Found(ContentSource::Volume(id))).unwrap_or_else(|_| Source::Missing(volume_id.clone(), "volume")))
        }
        None => Err(ControllerError::invalid("volume_content_source", "names neither a snapshot nor a volume")),
    }
}

/// Why a copy of `source` cannot be made into a class of `class_encrypted`
/// when the source's data is `source_encrypted`, or `None` when they agree.
/// An encrypted source copied into a clear class would show the pod LUKS2
/// ciphertext or be refused at every stage; a clear one copied into an
/// encrypted class would be refused at every stage (docs/encryption.md).
fn encryption_mismatch(source: &ContentSource, source_encrypted: bool, class_encrypted: bool) -> Option<String> {
    let param = rbd_attach::ENCRYPTED_KEY;
    match (source_encrypted, class_encrypted) {
        (true, false) => Some(format!(
            "{source} holds encrypted data (its image has a wrapped data key): a copy of it needs a StorageClass with parameters.{param}: \"true\""
        )),
        (false, true) => Some(format!(
            "{source} holds data in the clear (its image has no wrapped data key: made without parameters.{param}: \"true\", or never staged), and this StorageClass sets parameters.{param}: \"true\": copy it into a class without it"
        )),
        _ => None,
    }
}

/// A snapshot as the CSI answer carries it.
pub(crate) fn to_snapshot(info: &SnapshotInfo) -> Snapshot {
    let since = info.created.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Snapshot {
        size_bytes: i64::try_from(info.size_bytes).unwrap_or(i64::MAX),
        snapshot_id: info.id.to_string(),
        source_volume_id: info.source.to_string(),
        creation_time: Some(prost_types::Timestamp {
            seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
        }),
        ready_to_use: info.ready,
        group_snapshot_id: String::new(),
    }
}

/// VolumeSnapshotClass parameters: Swell takes none of its own; the keys
/// the snapshot sidecar adds are ignored, any other is refused.
fn check_parameters(parameters: &HashMap<String, String>) -> Result<(), ControllerError> {
    match parameters.keys().find(|key| !key.starts_with(SNAPSHOTTER_PREFIX)) {
        Some(key) => Err(ControllerError::invalid("parameters", format!("unknown key {key:?}: Swell's snapshots take no parameters"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use swell_storage::snapshot::snapshot_key;

    fn info(key_name: &str) -> SnapshotInfo {
        SnapshotInfo {
            id: SnapshotId::new("local", "", &snapshot_key(key_name)).unwrap(),
            name: key_name.into(),
            source: "local:abcd".parse().unwrap(),
            size_bytes: 1 << 30,
            created: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            ready: true,
        }
    }

    #[test]
    fn a_copy_is_refused_naming_the_source_and_the_class_parameter_only_when_their_encryption_differs() {
        let source = ContentSource::Snapshot(SnapshotId::new("rbd", "c", &snapshot_key("s")).unwrap());
        assert_eq!(encryption_mismatch(&source, true, true), None);
        assert_eq!(encryption_mismatch(&source, false, false), None);
        for (source_encrypted, class_encrypted) in [(true, false), (false, true)] {
            let reason = encryption_mismatch(&source, source_encrypted, class_encrypted).expect("refused");
            assert!(reason.contains(&source.to_string()) && reason.contains("parameters.encrypted"), "{reason}");
            let status = tonic::Status::from(ControllerError::invalid("volume_content_source", reason));
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
    }

    #[test]
    fn snapshots_answer_with_their_source_size_and_cut_time() {
        let snapshot = to_snapshot(&info("s"));
        assert_eq!(snapshot.size_bytes, 1 << 30);
        assert_eq!(snapshot.source_volume_id, "local:abcd");
        assert_eq!(snapshot.creation_time, Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 123 }));
        assert!(snapshot.ready_to_use);
    }

    #[test]
    fn sources_parse_and_ids_of_nothing_are_missing() {
        let id = info("s").id.to_string();
        let by_snapshot = VolumeContentSource { r#type: Some(Type::Snapshot(SnapshotSource { snapshot_id: id.clone() })) };
        assert!(matches!(parse_source(&by_snapshot), Ok(Source::Found(ContentSource::Snapshot(s))) if s.to_string() == id));
        let fake = VolumeContentSource { r#type: Some(Type::Volume(VolumeSource { volume_id: "not-an-id".into() })) };
        assert!(matches!(parse_source(&fake), Ok(Source::Missing(_, "volume"))));
        let empty = VolumeContentSource { r#type: Some(Type::Snapshot(SnapshotSource { snapshot_id: String::new() })) };
        assert!(matches!(parse_source(&empty), Err(ControllerError::InvalidArgument { .. })));
        assert!(matches!(parse_source(&VolumeContentSource { r#type: None }), Err(ControllerError::InvalidArgument { .. })));
    }

    #[test]
    fn snapshot_pages_take_snapshot_tokens_only() {
        let all = vec![info("a"), info("b"), info("c")];
        let first = listing::page(all.clone(), "", 2).unwrap();
        assert_eq!(first.entries.len(), 2);
        let rest = listing::page(all.clone(), &first.next_token, 2).unwrap();
        assert_eq!((rest.entries.len(), rest.next_token.as_str()), (1, ""));
        assert!(matches!(listing::page(all, "local:abcd", 2), Err(ControllerError::BadToken(_))), "a volume id is no snapshot token");
    }

    #[test]
    fn only_the_sidecars_own_parameters_pass() {
        assert!(check_parameters(&HashMap::from([("csi.storage.k8s.io/volumesnapshot/name".to_owned(), "s".to_owned())])).is_ok());
        assert!(check_parameters(&HashMap::from([("pool".to_owned(), "x".to_owned())])).unwrap_err().to_string().contains("pool"));
    }
}
