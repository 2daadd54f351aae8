//! What Kubernetes knows of Swell's volumes, read through kube's client where
//! a configuration is found (a kubeconfig, or the pod's service account):
//! each PersistentVolume of the driver, by CSI volume handle, with its claim's
//! requested size and what kubelet reported after growing the filesystem.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;
use swell_k8s::{quantity, volume_handle};

use crate::error::KubernetesError;
use crate::view::Claim;

/// What asking Kubernetes gave.
#[derive(Debug)]
pub(crate) enum Answer {
    /// No configuration found: Kubernetes was not asked.
    NotConfigured(String),
    /// The claims of the driver's volumes, by volume handle.
    Claims(HashMap<String, Claim>),
}

/// The claims of `driver`'s volumes, read within `deadline`; an error when
/// a configuration was found but the API server did not answer.
pub(crate) async fn claims(driver: &str, deadline: Duration) -> Result<Answer, KubernetesError> {
    let config = match tokio::time::timeout(deadline, kube::Config::infer()).await {
        Ok(Ok(config)) => config,
        Ok(Err(err)) => return Ok(Answer::NotConfigured(err.to_string())),
        Err(_) => return Err(KubernetesError::ConfigTimeout(deadline)),
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|source| KubernetesError::Client { server: server.clone(), source })?;
    let (pvs, pvcs) = (Api::<PersistentVolume>::all(client.clone()), Api::<PersistentVolumeClaim>::all(client));
    let all = kube::api::ListParams::default();
    let listed = tokio::time::timeout(deadline, async { tokio::try_join!(pvs.list(&all), pvcs.list(&all)) }).await;
    let (pvs, pvcs) = match listed {
        Ok(Ok(lists)) => lists,
        Ok(Err(source)) => return Err(KubernetesError::List { server, source }),
        Err(_) => return Err(KubernetesError::ListTimeout { server, deadline }),
    };
    let by_name: HashMap<(String, String), &PersistentVolumeClaim> =
        pvcs.items.iter().filter_map(|pvc| Some(((pvc.metadata.namespace.clone()?, pvc.metadata.name.clone()?), pvc))).collect();
    let mut claims = HashMap::new();
    for pv in &pvs.items {
        let Ok(handle) = volume_handle(pv, driver) else { continue };
        let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let key = claim_ref.and_then(|r| Some((r.namespace.clone()?, r.name.clone()?)));
        let pvc = key.as_ref().and_then(|k| by_name.get(k).copied());
        claims.insert(handle.to_owned(), claim(pv, key.map(|(ns, name)| format!("{ns}/{name}")), pvc));
    }
    Ok(Answer::Claims(claims))
}

fn claim(pv: &PersistentVolume, name: Option<String>, pvc: Option<&PersistentVolumeClaim>) -> Claim {
    let storage = |list: Option<&std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
        list.and_then(|l| l.get("storage")).and_then(|q| quantity::bytes(q).ok())
    };
    let status = pvc.and_then(|c| c.status.as_ref());
    Claim {
        pv: pv.metadata.name.clone().unwrap_or_default(),
        claim: name,
        requested_bytes: storage(pvc.and_then(|c| c.spec.as_ref()).and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref())),
        capacity_bytes: storage(status.and_then(|s| s.capacity.as_ref())),
        resize_status: status.and_then(|s| s.allocated_resource_statuses.as_ref()).and_then(|a| a.get("storage")).cloned(),
        conditions: status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| match c.message.as_deref() {
                Some(message) if !message.is_empty() => format!("{}: {message}", c.type_),
                _ => c.type_.clone(),
            })
            .collect(),
    }
}
