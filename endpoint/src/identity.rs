//! The CSI Identity service, served by both binaries. Both announce the same
//! capabilities (the spec asks for the plugin's, all its instances'); they
//! differ only in what "ready" means (the controller asks its backends, the
//! node reads its state directory), so that comes in as a [`Probe`].

use std::sync::Arc;

use csi_proto::v1::identity_server::Identity;
use csi_proto::v1::plugin_capability::{self, service, volume_expansion};
use csi_proto::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use tonic::{Request, Response, Status};

/// The driver name every binary announces and serves unless
/// `--driver-name` says otherwise.
pub const DEFAULT_DRIVER_NAME: &str = "swell.csi.storage";

/// Answers whether the plugin can serve requests now.
#[async_trait::async_trait]
pub trait Probe: Send + Sync + 'static {
    /// `Err` names the part that is not ready and why.
    async fn check(&self) -> Result<(), NotReady>;
}

/// Why the plugin cannot serve now: the part that failed (a backend, the
/// state directory) and its error, kept whole for the log.
#[derive(Debug, thiserror::Error)]
#[error("{part}: {source}")]
pub struct NotReady {
    /// What was checked.
    pub part: String,
    /// Why it failed.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl NotReady {
    /// A failed check of `part`.
    pub fn new(part: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        NotReady { part: part.into(), source: source.into() }
    }
}

/// The Identity service.
#[derive(Clone)]
pub struct IdentityService {
    name: String,
    version: String,
    capabilities: Vec<PluginCapability>,
    probe: Arc<dyn Probe>,
}

/// A driver name the CSI spec rejects.
#[derive(Debug, thiserror::Error)]
#[error("driver name {0:?} must be 1-63 characters of [a-z0-9.-], starting and ending alphanumeric")]
pub struct InvalidDriverName(pub String);

impl IdentityService {
    /// An Identity service for driver `name` at `version`.
    pub fn new(name: &str, version: &str, capabilities: Vec<PluginCapability>, probe: Arc<dyn Probe>) -> Result<Self, InvalidDriverName> {
        let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
            && alnum(name.chars().next())
            && alnum(name.chars().last());
        if !valid {
            return Err(InvalidDriverName(name.to_owned()));
        }
        Ok(IdentityService { name: name.to_owned(), version: version.to_owned(), capabilities, probe })
    }

    /// Swell's Identity service, the same in every binary: the spec asks for
    /// the plugin's capabilities as a whole (all its instances), so the node
    /// announces the controller service too.
    pub fn swell(name: &str, probe: Arc<dyn Probe>) -> Result<Self, InvalidDriverName> {
        Self::new(name, env!("CARGO_PKG_VERSION"), vec![controller_service_capability(), online_expansion_capability()], probe)
    }
}

/// The capability saying the plugin serves the Controller service.
pub fn controller_service_capability() -> PluginCapability {
    PluginCapability { r#type: Some(plugin_capability::Type::Service(plugin_capability::Service { r#type: service::Type::ControllerService as i32 })) }
}

/// The capability saying volumes grow while in use.
pub fn online_expansion_capability() -> PluginCapability {
    PluginCapability {
        r#type: Some(plugin_capability::Type::VolumeExpansion(plugin_capability::VolumeExpansion { r#type: volume_expansion::Type::Online as i32 })),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(&self, _: Request<GetPluginInfoRequest>) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse { name: self.name.clone(), vendor_version: self.version.clone(), manifest: Default::default() }))
    }

    async fn get_plugin_capabilities(&self, _: Request<GetPluginCapabilitiesRequest>) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities: self.capabilities.clone() }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let ready = match self.probe.check().await {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(%reason, "probe: not ready");
                false
            }
        };
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Never;
    #[async_trait::async_trait]
    impl Probe for Never {
        async fn check(&self) -> Result<(), NotReady> {
            Err(NotReady::new("backend local", "down"))
        }
    }

    #[test]
    fn driver_names_follow_the_spec() {
        for ok in ["swell.csi.storage", "a", "x-1.y"] {
            assert!(IdentityService::new(ok, "0", vec![], Arc::new(Never)).is_ok(), "{ok}");
        }
        for bad in ["", "-swell", "swell.", "Swell", "sw ell", &"a".repeat(64)] {
            assert!(IdentityService::new(bad, "0", vec![], Arc::new(Never)).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn probe_reports_not_ready_instead_of_failing() {
        let svc = IdentityService::new("swell.csi.storage", "0", vec![], Arc::new(Never)).unwrap();
        let ready = svc.probe(Request::new(ProbeRequest {})).await.unwrap().into_inner().ready;
        assert_eq!(ready, Some(false));
    }
}
