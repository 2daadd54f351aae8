//! The CSI Controller service: validates each request into typed values,
//! calls the backend or the expander, and maps errors in one place. Every RPC
//! runs in a span carrying the volume it is about; secrets are never logged.

use std::collections::HashMap;
use std::sync::Arc;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::controller_service_capability::{self, rpc};
use csi_proto::v1::*;
use swell_backends::Backends;
use swell_storage::locks::KeyedLocks;
use swell_storage::rbd_attach;
use swell_storage::{Backend, Created, VolumeId, VolumeInfo};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::error::ControllerError;
use crate::expand::Expander;
use crate::listing;
use crate::parameters::VolumeParameters;
use crate::sizing;
use crate::snapshots::{self, Snapshots};
use crate::validate;

/// The Controller service.
#[derive(Clone)]
pub struct ControllerService {
    backends: Backends,
    /// Creates in flight, by name.
    names: KeyedLocks,
    expander: Expander,
    snapshots: Snapshots,
}

type Answer<T> = Result<Response<T>, Status>;

impl ControllerService {
    /// A controller over `backends`.
    pub fn new(backends: Backends) -> Self {
        let expander = Expander::new(backends.clone());
        let names = KeyedLocks::new();
        let snapshots = Snapshots::new(backends.clone(), names.clone());
        ControllerService { backends, names, expander, snapshots }
    }

    /// The expander, shared with the reconciler so both use the same locks.
    pub fn expander(&self) -> &Expander {
        &self.expander
    }

    /// The backends, for the Identity probe.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    async fn create(&self, req: CreateVolumeRequest) -> Result<Volume, ControllerError> {
        let name = validate::name("name", &req.name)?;
        validate::capabilities("volume_capabilities", &req.volume_capabilities)?;
        let range = validate::size_range(req.capacity_range.as_ref())?;
        let params = VolumeParameters::parse(&req.parameters)?;
        let backend = self.backends.for_new_volume(params.backend.as_deref())?;
        params.check_backend(backend.kind(), backend.keeps_auto_grow())?;
        let mut volume_context = params.attach.volume_context();
        if let Some(source) = &req.volume_content_source {
            let (info, origin) = self.snapshots.create_volume_from(name, range, backend, &params, source).await?;
            self.keep_auto_grow(backend, name, &info.id, &params).await?;
            // An encrypted copy holds its source's wrapped key, bound to
            // the source's id: the node binds it to this volume at its first
            // stage, trusting only this context (docs/encryption.md).
            if params.attach.encrypted {
                volume_context.insert(rbd_attach::KEY_FROM_KEY.to_owned(), origin.to_string());
            }
            return Ok(Volume { content_source: Some(source.clone()), volume_context, ..to_volume(&info) });
        }
        let size = sizing::allocation(sizing::formattable_range(name, &req.volume_capabilities, range)?)
            .map_err(|e| ControllerError::OutOfRange(format!("volume {name:?}: {e}")))?;

        let _guard = self.names.try_acquire(name).ok_or_else(|| ControllerError::Pending(format!("volume name {name:?}")))?;
        let created = self.backends.call("create volume", name, backend.create_volume(name, size, &params.placement)).await?;
        if let Created::Existing(info) = &created {
            sizing::check_compatible(info, range)?;
        }
        self.keep_auto_grow(backend, name, &created.info().id, &params).await?;
        Ok(Volume { volume_context, ..to_volume(created.info()) })
    }

    /// Stores the class's auto-grow policy with the volume just made. After
    /// the create, so a retry that finds the volume stores it again.
    async fn keep_auto_grow(&self, backend: &Arc<dyn Backend>, name: &str, id: &VolumeId, params: &VolumeParameters) -> Result<(), ControllerError> {
        if let Some(record) = params.auto_grow_record() {
            if record.claim.is_none() && record.policy.on {
                tracing::warn!(volume.id = %id, "auto-grow cannot act: CreateVolume did not name the claim (the provisioner needs --extra-create-metadata)");
            }
            self.backends.call("store auto-grow policy", name, backend.set_auto_grow(id, &record)).await?;
        }
        Ok(())
    }

    async fn delete(&self, id: &VolumeId) -> Result<(), ControllerError> {
        if self.backends.for_volume(id).is_none() {
            return Ok(());
        }
        self.expander.delete(id).await
    }

    async fn lookup(&self, raw_id: &str) -> Result<VolumeInfo, ControllerError> {
        let not_found = || ControllerError::NotFound(raw_id.to_owned());
        let id = validate::volume_id(raw_id)?.ok_or_else(not_found)?;
        let backend = self.backends.for_volume(&id).ok_or_else(not_found)?;
        self.backends.call("read volume", raw_id, backend.volume(&id)).await?.ok_or_else(not_found)
    }

    /// The volumes of `window`, from the backends in id order (each
    /// backend's ids start with its kind, and they are walked by kind), each
    /// asked only for what the page still needs.
    async fn page(&self, window: &listing::Window<VolumeId>) -> Result<listing::Page<VolumeInfo>, ControllerError> {
        let mut volumes = Vec::new();
        for backend in self.backends.all() {
            let Some(after) = window.start_in(backend.kind()) else { continue };
            let wanted = window.wanted(volumes.len());
            volumes.extend(self.backends.call("list volumes", backend.kind(), backend.list_volumes(after, wanted)).await?);
            if window.full(volumes.len()) {
                break;
            }
        }
        Ok(window.cut(volumes))
    }

    /// A volume whose backend size is below the last recorded wish, or whose
    /// last expansion failed, is reported abnormal.
    async fn condition(&self, volume: &VolumeInfo) -> VolumeCondition {
        match self.expander.record(&volume.id).await {
            Ok(Some(record)) if record.desired_bytes > volume.size_bytes => VolumeCondition {
                abnormal: true,
                message: format!(
                    "expansion to {} bytes not finished (backend has {}){}",
                    record.desired_bytes,
                    volume.size_bytes,
                    record.last_error.map(|e| format!(": {e}")).unwrap_or_default()
                ),
            },
            Ok(_) => VolumeCondition { abnormal: false, message: "healthy".into() },
            Err(e) => VolumeCondition { abnormal: true, message: format!("expansion record unreadable: {e}") },
        }
    }
}

fn to_volume(info: &VolumeInfo) -> Volume {
    Volume {
        capacity_bytes: i64::try_from(info.size_bytes).unwrap_or(i64::MAX),
        volume_id: info.id.to_string(),
        volume_context: HashMap::new(),
        content_source: None,
        accessible_topology: Vec::new(),
    }
}

fn bytes(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn capability(rpc: rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability { r#type: Some(controller_service_capability::Type::Rpc(controller_service_capability::Rpc { r#type: rpc as i32 })) }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    #[instrument(skip_all, fields(volume.name = %request.get_ref().name.escape_debug()))]
    async fn create_volume(&self, request: Request<CreateVolumeRequest>) -> Answer<CreateVolumeResponse> {
        let volume = self.create(request.into_inner()).await?;
        tracing::info!(volume.id = %volume.volume_id, bytes = volume.capacity_bytes, "volume ready");
        Ok(Response::new(CreateVolumeResponse { volume: Some(volume) }))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn delete_volume(&self, request: Request<DeleteVolumeRequest>) -> Answer<DeleteVolumeResponse> {
        // A string that is no id of ours names a volume that does not exist.
        if let Some(id) = validate::volume_id(&request.get_ref().volume_id)? {
            self.delete(&id).await?;
            tracing::info!(volume.id = %id, "volume deleted");
        }
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(&self, _: Request<ControllerPublishVolumeRequest>) -> Answer<ControllerPublishVolumeResponse> {
        Err(ControllerError::Unimplemented("ControllerPublishVolume").into())
    }

    async fn controller_unpublish_volume(&self, _: Request<ControllerUnpublishVolumeRequest>) -> Answer<ControllerUnpublishVolumeResponse> {
        Err(ControllerError::Unimplemented("ControllerUnpublishVolume").into())
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn validate_volume_capabilities(&self, request: Request<ValidateVolumeCapabilitiesRequest>) -> Answer<ValidateVolumeCapabilitiesResponse> {
        let req = request.into_inner();
        validate::required("volume_id", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(ControllerError::invalid("volume_capabilities", "at least one capability is required").into());
        }
        for cap in &req.volume_capabilities {
            if cap.access_type.is_none() || cap.access_mode.is_none() {
                return Err(ControllerError::invalid("volume_capabilities", "access_type and access_mode are required").into());
            }
        }
        self.lookup(&req.volume_id).await?;
        VolumeParameters::parse(&req.parameters)?;
        let refusal: Vec<String> = req.volume_capabilities.iter().filter_map(validate::unsupported_reason).collect();
        let response = if refusal.is_empty() {
            ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: HashMap::new(),
                }),
                message: String::new(),
            }
        } else {
            ValidateVolumeCapabilitiesResponse { confirmed: None, message: refusal.join("; ") }
        };
        Ok(Response::new(response))
    }

    #[instrument(skip_all)]
    async fn list_volumes(&self, request: Request<ListVolumesRequest>) -> Answer<ListVolumesResponse> {
        let req = request.into_inner();
        let page = self.page(&listing::Window::parse(&req.starting_token, req.max_entries)?).await?;
        let entries = page.entries.iter().map(|v| list_volumes_response::Entry { volume: Some(to_volume(v)), status: None }).collect();
        Ok(Response::new(ListVolumesResponse { entries, next_token: page.next_token }))
    }

    #[instrument(skip_all)]
    async fn get_capacity(&self, request: Request<GetCapacityRequest>) -> Answer<GetCapacityResponse> {
        let req = request.into_inner();
        let unsupported = req.volume_capabilities.iter().any(|c| validate::unsupported_reason(c).is_some());
        let params = VolumeParameters::parse(&req.parameters)?;
        let backend = self.backends.for_new_volume(params.backend.as_deref()).map_err(ControllerError::from)?;
        if unsupported {
            return Ok(Response::new(GetCapacityResponse { available_capacity: 0, ..Default::default() }));
        }
        let room = self.backends.call("read pool capacity", backend.kind(), backend.capacity(&params.placement)).await.map_err(ControllerError::from)?;
        Ok(Response::new(GetCapacityResponse {
            available_capacity: bytes(room.available_bytes),
            maximum_volume_size: Some(bytes(room.available_bytes)),
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(&self, _: Request<ControllerGetCapabilitiesRequest>) -> Answer<ControllerGetCapabilitiesResponse> {
        let capabilities = [
            rpc::Type::CreateDeleteVolume,
            rpc::Type::ListVolumes,
            rpc::Type::GetCapacity,
            rpc::Type::ExpandVolume,
            rpc::Type::GetVolume,
            rpc::Type::VolumeCondition,
            rpc::Type::CreateDeleteSnapshot,
            rpc::Type::ListSnapshots,
            rpc::Type::CloneVolume,
        ]
        .into_iter()
        .map(capability)
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse { capabilities }))
    }

    #[instrument(skip_all, fields(snapshot.name = %request.get_ref().name.escape_debug(), volume.id = %request.get_ref().source_volume_id.escape_debug()))]
    async fn create_snapshot(&self, request: Request<CreateSnapshotRequest>) -> Answer<CreateSnapshotResponse> {
        let req = request.into_inner();
        let info = self.snapshots.create(&req.name, &req.source_volume_id, &req.parameters).await?;
        tracing::info!(snapshot.id = %info.id, bytes = info.size_bytes, ready = info.ready, "snapshot cut");
        Ok(Response::new(CreateSnapshotResponse { snapshot: Some(snapshots::to_snapshot(&info)) }))
    }

    #[instrument(skip_all, fields(snapshot.id = %request.get_ref().snapshot_id.escape_debug()))]
    async fn delete_snapshot(&self, request: Request<DeleteSnapshotRequest>) -> Answer<DeleteSnapshotResponse> {
        self.snapshots.delete(&request.get_ref().snapshot_id).await?;
        tracing::info!("snapshot deleted");
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    #[instrument(skip_all)]
    async fn list_snapshots(&self, request: Request<ListSnapshotsRequest>) -> Answer<ListSnapshotsResponse> {
        Ok(Response::new(self.snapshots.list(request.get_ref()).await?))
    }

    async fn get_snapshot(&self, _: Request<GetSnapshotRequest>) -> Answer<GetSnapshotResponse> {
        Err(ControllerError::Unimplemented("GetSnapshot").into())
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn controller_expand_volume(&self, request: Request<ControllerExpandVolumeRequest>) -> Answer<ControllerExpandVolumeResponse> {
        let req = request.into_inner();
        let id = validate::volume_id(&req.volume_id)?;
        let Some(range) = req.capacity_range.as_ref() else {
            return Err(ControllerError::invalid("capacity_range", "must be set").into());
        };
        let range = validate::size_range(Some(range))?;
        if range.required.is_none() {
            return Err(ControllerError::invalid("capacity_range.required_bytes", "must be set").into());
        }
        if let Some(cap) = &req.volume_capability {
            validate::capability("volume_capability", cap)?;
        }
        let id = id.ok_or_else(|| ControllerError::NotFound(req.volume_id.clone()))?;
        let size = self.expander.expand(&id, range).await?;
        tracing::info!(bytes = size, "volume expanded");
        // Always true: even a raw block volume sits on a loop device (local)
        // or an rbd-fuse file that must re-read its size on the node.
        Ok(Response::new(ControllerExpandVolumeResponse { capacity_bytes: bytes(size), node_expansion_required: true }))
    }

    #[instrument(skip_all, fields(volume.id = %request.get_ref().volume_id.escape_debug()))]
    async fn controller_get_volume(&self, request: Request<ControllerGetVolumeRequest>) -> Answer<ControllerGetVolumeResponse> {
        let info = self.lookup(&request.get_ref().volume_id).await?;
        Ok(Response::new(ControllerGetVolumeResponse {
            volume: Some(to_volume(&info)),
            status: Some(controller_get_volume_response::VolumeStatus { published_node_ids: Vec::new(), volume_condition: Some(self.condition(&info).await) }),
        }))
    }

    async fn controller_modify_volume(&self, _: Request<ControllerModifyVolumeRequest>) -> Answer<ControllerModifyVolumeResponse> {
        Err(ControllerError::Unimplemented("ControllerModifyVolume").into())
    }
}

/// The Identity probe: ready when every backend answers.
pub(crate) struct BackendProbe(pub Arc<Backends>);

#[async_trait::async_trait]
impl csi_endpoint::Probe for BackendProbe {
    async fn check(&self) -> Result<(), csi_endpoint::NotReady> {
        for backend in self.0.all() {
            let checked = self.0.call("health check", backend.kind(), backend.check_health()).await;
            checked.map_err(|e| csi_endpoint::NotReady::new(format!("backend {}", backend.kind()), e))?;
        }
        Ok(())
    }
}
