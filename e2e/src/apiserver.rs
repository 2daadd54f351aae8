//! A stand-in Kubernetes API server for auto-grow's tests: just the calls
//! the controller makes (read a claim, merge-patch it, post an Event) over
//! plain HTTP on loopback, and, on a patch that raises a claim's request,
//! what the real cluster does next: ask the admission webhook (the real
//! `swell-webhook` server, over HTTPS, with the review the API server
//! sends) and, once admitted, call ControllerExpandVolume the way the
//! external-resizer does, then record the new capacity in the claim's
//! status. Every request it was patched to is kept, so a test can check
//! that no patch ever asked past a limit.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use csi_proto::v1::controller_client::ControllerClient;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::resizer::expand_like_the_resizer;
use crate::webhook::{HttpsClient, Resize};

/// A claim the stand-in holds, and the volume it is bound to.
#[derive(Debug, Clone)]
struct Stored {
    claim: Value,
    pv: String,
    volume_id: String,
}

#[derive(Default)]
struct State {
    cluster: Cluster,
    claims: BTreeMap<(String, String), Stored>,
    events: Vec<Value>,
    patched_to: Vec<u64>,
    resizes: usize,
}

/// What the stand-in does after admitting a patch.
#[derive(Clone, Default)]
pub struct Cluster {
    /// The admission webhook to ask, as the API server would (`None`: admit all).
    pub webhook: Option<HttpsClient>,
    /// The controller to resize through, as the external-resizer would
    /// (`None`: the claim's status never changes).
    pub resizer: Option<ControllerClient<Channel>>,
}

/// The stand-in, serving until dropped.
pub struct StandInApiServer {
    /// Where it listens (plain HTTP).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: JoinHandle<()>,
}

impl Drop for StandInApiServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl StandInApiServer {
    /// Serves on a free loopback port, admitting every patch and resizing
    /// nothing until [`join`](Self::join) says otherwise.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let cluster = state.lock().cluster.clone();
                        handle(Arc::clone(&state), cluster, request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        StandInApiServer { addr, state, server }
    }

    /// From now on, asks `cluster`'s webhook and resizes through its controller.
    pub fn join(&self, cluster: Cluster) {
        self.state.lock().cluster = cluster;
    }

    /// Raises claim `namespace/name`'s storage request to `bytes` as a user's
    /// `kubectl patch pvc` would: asking the webhook, then resizing.
    pub async fn patch_request(&self, namespace: &str, name: &str, bytes: u64) -> Result<(), String> {
        let cluster = self.state.lock().cluster.clone();
        let body = json!({"spec": {"resources": {"requests": {"storage": bytes.to_string()}}}}).to_string();
        let answer = patch(&self.state, &cluster, namespace, name, body.as_bytes()).await;
        if answer.status() == StatusCode::OK { Ok(()) } else { Err(format!("patching {namespace}/{name} to {bytes} bytes: HTTP {}", answer.status())) }
    }

    /// Writes a kubeconfig naming this server, with no credentials.
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: http://{}\nusers:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: nobody\ncurrent-context: stand-in\n",
            self.addr
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// Adds a bound claim `namespace/name` of `bytes` (request and
    /// capacity) on PV `pv`, which is volume `volume_id`, with `annotations`.
    pub fn add_claim(&self, namespace: &str, name: &str, pv: &str, volume_id: &str, bytes: u64, annotations: &[(&str, &str)]) {
        let annotations: serde_json::Map<String, Value> = annotations.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let claim = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "resourceVersion": "1", "annotations": annotations},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": bytes.to_string()}}, "volumeName": pv},
            "status": {"phase": "Bound", "capacity": {"storage": bytes.to_string()}}
        });
        let stored = Stored { claim, pv: pv.to_owned(), volume_id: volume_id.to_owned() };
        self.state.lock().claims.insert((namespace.to_owned(), name.to_owned()), stored);
    }

    /// The claim as stored now.
    pub fn claim(&self, namespace: &str, name: &str) -> Value {
        self.state.lock().claims[&(namespace.to_owned(), name.to_owned())].claim.clone()
    }

    /// The claim's storage request, in bytes.
    pub fn request_of(&self, namespace: &str, name: &str) -> Option<u64> {
        storage(&self.claim(namespace, name), REQUEST)
    }

    /// A reader of the claim's capacity (its status), in bytes, for a task
    /// of its own.
    pub fn capacity_reader(&self, namespace: &str, name: &str) -> impl Fn() -> u64 + Send + 'static {
        let (state, key) = (self.state.clone(), (namespace.to_owned(), name.to_owned()));
        move || state.lock().claims.get(&key).and_then(|stored| storage(&stored.claim, CAPACITY)).unwrap_or(0)
    }

    /// The Events posted so far: (reason, message) of each.
    pub fn events(&self) -> Vec<(String, String)> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        self.state.lock().events.iter().map(|e| (text(&e["reason"]), text(&e["message"]))).collect()
    }

    /// The `involvedObject.uid` of each Event posted ("" when none): `kubectl
    /// describe` lists a claim's Events by its uid.
    pub fn event_uids(&self) -> Vec<String> {
        self.state.lock().events.iter().map(|e| e["involvedObject"]["uid"].as_str().unwrap_or_default().to_owned()).collect()
    }

    /// Every storage request a patch asked for, admitted or not, in order.
    pub fn patched_to(&self) -> Vec<u64> {
        self.state.lock().patched_to.clone()
    }

    /// How many resizes the stand-in's resizer finished.
    pub fn resizes(&self) -> usize {
        self.state.lock().resizes
    }
}

type Answer = Response<Full<Bytes>>;

fn reply(code: StatusCode, body: &Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

/// A `Status` failure as the API server answers it.
fn failure(code: StatusCode, reason: &str, message: &str) -> Answer {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    reply(code, &body)
}

async fn handle(state: Arc<Mutex<State>>, cluster: Cluster, request: Request<Incoming>) -> Result<Answer, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Ok(failure(StatusCode::BAD_REQUEST, "BadRequest", &format!("body: {e}"))),
    };
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Ok(match (method, parts.as_slice()) {
        (Method::GET, ["api", "v1", "namespaces", ns, "persistentvolumeclaims", name]) => {
            match state.lock().claims.get(&((*ns).to_owned(), (*name).to_owned())) {
                Some(stored) => reply(StatusCode::OK, &stored.claim),
                None => failure(StatusCode::NOT_FOUND, "NotFound", &format!("persistentvolumeclaims \"{name}\" not found")),
            }
        }
        (Method::PATCH, ["api", "v1", "namespaces", ns, "persistentvolumeclaims", name]) => patch(&state, &cluster, ns, name, &body).await,
        (Method::POST, ["api", "v1", "namespaces", _, "events"]) => match serde_json::from_slice::<Value>(&body) {
            Ok(event) => {
                state.lock().events.push(event.clone());
                reply(StatusCode::CREATED, &event)
            }
            Err(e) => failure(StatusCode::BAD_REQUEST, "BadRequest", &format!("event: {e}")),
        },
        _ => failure(StatusCode::NOT_FOUND, "NotFound", &format!("the stand-in serves no {path}")),
    })
}

fn storage(claim: &Value, at: &str) -> Option<u64> {
    claim.pointer(at)?.as_str()?.parse().ok()
}

const REQUEST: &str = "/spec/resources/requests/storage";
const CAPACITY: &str = "/status/capacity/storage";

async fn patch(state: &Arc<Mutex<State>>, cluster: &Cluster, ns: &str, name: &str, body: &[u8]) -> Answer {
    let key = (ns.to_owned(), name.to_owned());
    let Some(stored) = state.lock().claims.get(&key).cloned() else {
        return failure(StatusCode::NOT_FOUND, "NotFound", &format!("persistentvolumeclaims \"{name}\" not found"));
    };
    let Ok(patch) = serde_json::from_slice::<Value>(body) else { return failure(StatusCode::BAD_REQUEST, "BadRequest", "the patch is no JSON") };
    let mut claim = stored.claim.clone();
    merge(&mut claim, &patch);
    let (Some(old), Some(new), Some(capacity)) = (storage(&stored.claim, REQUEST), storage(&claim, REQUEST), storage(&claim, CAPACITY)) else {
        return failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "spec.resources.requests.storage must be a byte count here");
    };
    state.lock().patched_to.push(new);
    if let Some(webhook) = &cluster.webhook {
        let (old_text, new_text, capacity_text) = (old.to_string(), new.to_string(), capacity.to_string());
        let review = Resize { volume: &stored.pv, old: &old_text, new: &new_text, capacity: &capacity_text, status: None }.review();
        let reply = match webhook.review(&review).await {
            Ok(reply) if reply.status == 200 => reply,
            Ok(reply) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &format!("failed calling webhook: HTTP {}", reply.status)),
            Err(e) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &format!("failed calling webhook: {e}")),
        };
        let (allowed, message, _) = reply.verdict();
        if !allowed {
            return failure(StatusCode::FORBIDDEN, "Forbidden", &format!("admission webhook denied the request: {message}"));
        }
    }
    if let Some(stored) = state.lock().claims.get_mut(&key) {
        stored.claim = claim.clone();
    }
    if new > capacity
        && let Some(controller) = cluster.resizer.clone()
    {
        let (state, volume_id) = (Arc::clone(state), stored.volume_id.clone());
        tokio::spawn(async move {
            let resized = expand_like_the_resizer(controller, volume_id, new).await;
            if let Some(size) = resized.size {
                let mut state = state.lock();
                state.resizes += 1;
                if let Some(stored) = state.claims.get_mut(&key) {
                    merge(&mut stored.claim, &json!({"status": {"capacity": {"storage": size.to_string()}}}));
                }
            }
        });
    }
    reply(StatusCode::OK, &claim)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(object) = target {
        for (key, value) in fields {
            if value.is_null() {
                object.remove(key);
            } else {
                merge(object.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_patch_replaces_adds_and_removes_fields_as_rfc_7386_says() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut target, &json!({"a": "z", "c": {"f": null, "h": 1}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e", "h": 1}}));
    }
}
