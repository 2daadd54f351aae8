//! What auto-grow asks of the Kubernetes API: read a claim, raise its
//! storage request exactly as `kubectl patch pvc` does (a JSON merge patch
//! of `spec.resources.requests.storage`, so the admission webhook, the
//! external-resizer, kubelet and quota all apply), and post Events on it.
//! Behind a trait so the decisions are tested without an API server; the
//! one implementation speaks to a real one through `kube`.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, ObjectReference, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use swell_storage::auto_grow::ClaimRef;

/// Every API call is given up after this long (and tried at a later pass).
const API_DEADLINE: Duration = Duration::from_secs(15);
/// The field manager our patches are recorded under.
const FIELD_MANAGER: &str = "swell-auto-grow";

/// The parts of a claim auto-grow decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimView {
    /// `metadata.uid`, which its Events name.
    pub uid: Option<String>,
    /// Its annotations (the per-claim policy).
    pub annotations: HashMap<String, String>,
    /// `spec.resources.requests.storage`, in bytes.
    pub request_bytes: Option<u64>,
    /// `status.capacity.storage`, in bytes.
    pub capacity_bytes: Option<u64>,
}

impl ClaimView {
    /// Whether a resize is in flight: the claim asks for more than it has.
    pub(crate) fn resizing(&self) -> bool {
        matches!((self.request_bytes, self.capacity_bytes), (Some(request), Some(capacity)) if request > capacity)
    }
}

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClaimsError {
    /// The API server refused (the admission webhook's denial, quota, RBAC,
    /// a conflict): not retried before the backoff.
    #[error("refused: {0}")]
    Refused(String),
    /// No answer, or a server error.
    #[error("API server unavailable: {0}")]
    Unavailable(String),
}

/// An Event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Normal,
    Warning,
}

/// The claim an Event is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Regarding<'a> {
    pub claim: &'a ClaimRef,
    /// `metadata.uid`: `kubectl describe pvc` lists only the Events naming it.
    pub uid: Option<&'a str>,
}

/// The claims auto-grow acts on.
#[async_trait::async_trait]
pub(crate) trait Claims: Send + Sync + 'static {
    /// The claim, `None` when it does not exist.
    async fn get(&self, claim: &ClaimRef) -> Result<Option<ClaimView>, ClaimsError>;

    /// Sets the claim's storage request to `bytes`.
    async fn request(&self, claim: &ClaimRef, bytes: u64) -> Result<(), ClaimsError>;

    /// Posts an Event on the claim.
    async fn event(&self, about: Regarding<'_>, kind: EventType, reason: &str, message: &str) -> Result<(), ClaimsError>;
}

/// The API server client auto-grow uses: from `kubeconfig`, else the
/// pod's in-cluster service account.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| format!("read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::incluster().map_err(|e| format!("in-cluster Kubernetes config (or pass --kubeconfig): {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

/// The claims of a real API server.
pub(crate) struct KubeClaims {
    client: kube::Client,
}

impl KubeClaims {
    pub(crate) fn new(client: kube::Client) -> Self {
        KubeClaims { client }
    }

    fn claims(&self, namespace: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

async fn deadline<T>(step: &str, call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, ClaimsError> {
    match tokio::time::timeout(API_DEADLINE, call).await {
        Err(_) => Err(ClaimsError::Unavailable(format!("{step}: no answer within {}s", API_DEADLINE.as_secs()))),
        Ok(Ok(value)) => Ok(value),
        Ok(Err(kube::Error::Api(status))) if (400..500).contains(&status.code) => Err(ClaimsError::Refused(format!("{step}: {}", status.message))),
        Ok(Err(e)) => Err(ClaimsError::Unavailable(format!("{step}: {e}"))),
    }
}

fn storage(quantities: Option<&std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>) -> Option<u64> {
    quantities.and_then(|q| q.get("storage")).and_then(|q| swell_k8s::quantity::bytes(q).ok())
}

#[async_trait::async_trait]
impl Claims for KubeClaims {
    async fn get(&self, claim: &ClaimRef) -> Result<Option<ClaimView>, ClaimsError> {
        let Some(pvc) = deadline("read the claim", self.claims(&claim.namespace).get_opt(&claim.name)).await? else { return Ok(None) };
        Ok(Some(ClaimView {
            uid: pvc.metadata.uid,
            annotations: pvc.metadata.annotations.unwrap_or_default().into_iter().collect(),
            request_bytes: storage(pvc.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref())),
            capacity_bytes: storage(pvc.status.as_ref().and_then(|s| s.capacity.as_ref())),
        }))
    }

    async fn request(&self, claim: &ClaimRef, bytes: u64) -> Result<(), ClaimsError> {
        let patch = serde_json::json!({ "spec": { "resources": { "requests": { "storage": bytes.to_string() } } } });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        deadline("patch the claim's storage request", self.claims(&claim.namespace).patch(&claim.name, &params, &Patch::Merge(&patch))).await.map(drop)
    }

    async fn event(&self, about: Regarding<'_>, kind: EventType, reason: &str, message: &str) -> Result<(), ClaimsError> {
        let Regarding { claim, uid } = about;
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta { generate_name: Some(format!("{}.", claim.name)), namespace: Some(claim.namespace.clone()), ..ObjectMeta::default() },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("PersistentVolumeClaim".to_owned()),
                name: Some(claim.name.clone()),
                namespace: Some(claim.namespace.clone()),
                uid: uid.map(str::to_owned),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            reporting_component: Some(FIELD_MANAGER.to_owned()),
            reporting_instance: Some(FIELD_MANAGER.to_owned()),
            action: Some("AutoGrow".to_owned()),
            ..Event::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &claim.namespace);
        deadline("post an event", events.create(&PostParams::default(), &event)).await.map(drop)
    }
}
