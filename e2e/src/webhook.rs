//! The admission webhook's harness: a throwaway CA and serving certificate
//! (re-issued on demand, for rotation), the real `swell-webhook` HTTPS
//! server on a loopback port, an HTTPS client that records which
//! certificate it was served, PVs for the webhook to look up, and
//! AdmissionReviews made from the fixtures captured from a real
//! kube-apiserver (`webhook/testdata/`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::PersistentVolume;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use swell_webhook::ReloadingCert;
use swell_webhook::Webhook;
use swell_webhook::{Limits, REVIEW_PATH, serve};
use swell_webhook::{PersistentVolumes, PvError};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// The driver name the fixtures' claims carry.
pub const DRIVER: &str = csi_endpoint::identity::DEFAULT_DRIVER_NAME;

/// A CA and the serving certificate it signed, as files the server reads.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// The serving certificate (PEM).
    pub cert_path: PathBuf,
    /// Its key (PEM).
    pub key_path: PathBuf,
}

impl TestPki {
    /// A new CA with a first certificate for `localhost` and 127.0.0.1.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "swell-webhook test CA");
        let key = KeyPair::generate().expect("CA key");
        let ca_der = params.self_signed(&key).expect("CA certificate").der().clone();
        let pki = TestPki { cert_path: dir.path().join("tls.crt"), key_path: dir.path().join("tls.key"), dir, ca: Issuer::new(params, key), ca_der };
        pki.issue();
        pki
    }

    /// Issues a new serving certificate with a new key, replaces the files
    /// (certificate first, then key, each by rename, as a rotation does)
    /// and returns the certificate's DER.
    pub fn issue(&self) -> Vec<u8> {
        let half = self.issue_certificate_only();
        half.finish();
        half.der
    }

    /// The first half of [`issue`](Self::issue): the new certificate is in
    /// place, its key not yet (a rotation caught in the middle).
    pub fn issue_certificate_only(&self) -> HalfRotation<'_> {
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        replace(&self.cert_path, cert.pem().as_bytes());
        HalfRotation { pki: self, key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA into the root store");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Full handshakes only: a resumed session shows the certificate of
        // the session it resumes, not the one served now.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// A new certificate written without its key yet.
pub struct HalfRotation<'a> {
    pki: &'a TestPki,
    key_pem: String,
    /// The new certificate (DER).
    pub der: Vec<u8>,
}

impl HalfRotation<'_> {
    /// Writes the key too.
    pub fn finish(&self) {
        replace(&self.pki.key_path, self.key_pem.as_bytes());
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn replace(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write certificate file");
    std::fs::rename(&tmp, path).expect("rename certificate file");
}

/// The webhook's HTTPS server running in this process.
pub struct RunningWebhook {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate, to force a reload check.
    pub cert: Arc<ReloadingCert>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: JoinHandle<()>,
    watcher: JoinHandle<()>,
}

impl RunningWebhook {
    /// Serves `webhook` with `pki`'s files on 127.0.0.1, polling them for
    /// changes every `reload_every`.
    pub async fn start(webhook: Webhook, pki: &TestPki, limits: Limits, reload_every: Duration) -> Self {
        let cert = ReloadingCert::load(&pki.cert_path, &pki.key_path).expect("load the test certificate");
        let tls = cert.server_config().expect("TLS config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (stop_watch, watch_stopped) = tokio::sync::watch::channel(());
        let server = tokio::spawn(async move {
            serve(listener, tls, Arc::new(webhook), limits, async {
                let _ = stopped.await;
            })
            .await;
            let _ = stop_watch.send(());
        });
        let watcher = tokio::spawn(Arc::clone(&cert).watch(reload_every, async move {
            let mut watch_stopped = watch_stopped;
            let _ = watch_stopped.changed().await;
        }));
        RunningWebhook { addr, cert, stop: Some(stop), server, watcher }
    }

    /// A client trusting `pki`'s CA.
    pub fn client(&self, pki: &TestPki) -> HttpsClient {
        HttpsClient { connector: TlsConnector::from(pki.client_config()), addr: self.addr }
    }

    /// Stops accepting, lets open requests finish, and waits.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.server).await;
        let _ = (&mut self.watcher).await;
    }
}

/// An HTTPS client of the webhook.
#[derive(Clone)]
pub struct HttpsClient {
    connector: TlsConnector,
    addr: SocketAddr,
}

/// One HTTP answer, with the certificate the server presented.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
    /// The server's certificate (DER) on this connection.
    pub served_cert: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The AdmissionReview answer: allowed, the denial message, warnings.
    pub fn verdict(&self) -> (bool, String, Vec<String>) {
        assert_eq!(self.status, 200, "not a review answer: {}", self.text());
        let review: Value = serde_json::from_slice(&self.body).expect("AdmissionReview JSON");
        assert_eq!((review["apiVersion"].as_str(), review["kind"].as_str()), (Some("admission.k8s.io/v1"), Some("AdmissionReview")), "{review}");
        let response = &review["response"];
        let warnings = response["warnings"].as_array().map(|w| w.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default();
        (response["allowed"].as_bool().expect("allowed"), response["status"]["message"].as_str().unwrap_or_default().to_owned(), warnings)
    }
}

/// An open HTTPS connection (requests on it reuse the TLS session).
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    served_cert: Vec<u8>,
    _driver: JoinHandle<()>,
}

impl HttpsClient {
    /// Opens a connection: TCP, TLS for `localhost`, HTTP/1.1.
    pub async fn connect(&self) -> Result<Connection, String> {
        let tcp = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = self.connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        let served_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection { sender, served_cert, _driver: driver })
    }

    /// POSTs `body` to `path` on a new connection.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<Reply, String> {
        self.connect().await?.post(path, body).await
    }

    /// POSTs a review to the webhook's path on a new connection.
    pub async fn review(&self, body: &Value) -> Result<Reply, String> {
        self.post(REVIEW_PATH, serde_json::to_vec(body).map_err(|e| e.to_string())?).await
    }
}

impl Connection {
    /// POSTs `body` to `path` on this connection.
    pub async fn post(&mut self, path: &str, body: Vec<u8>) -> Result<Reply, String> {
        let request = hyper::Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        // The previous exchange may still be finishing in the connection task.
        self.sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let response = self.sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("response body: {e}"))?.to_bytes().to_vec();
        Ok(Reply { status, body, served_cert: self.served_cert.clone() })
    }
}

/// PVs the webhook looks up, set by the test.
#[derive(Default)]
pub struct FixedVolumes(Mutex<BTreeMap<String, PersistentVolume>>);

impl FixedVolumes {
    /// Adds a Swell CSI PV `name` whose volume handle is `handle`.
    pub fn add(&self, name: &str, handle: &str) {
        let pv = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "csi": {"driver": DRIVER, "volumeHandle": handle}, "accessModes": ["ReadWriteOnce"]}
        }))
        .expect("a PersistentVolume");
        self.0.lock().insert(name.to_owned(), pv);
    }
}

#[async_trait::async_trait]
impl PersistentVolumes for FixedVolumes {
    async fn get(&self, name: &str) -> Result<Option<PersistentVolume>, PvError> {
        Ok(self.0.lock().get(name).cloned())
    }
}

/// A fixture captured from kube-apiserver, by file stem.
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../webhook/testdata").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A resize of a bound Swell claim, shaped like the captured one.
#[derive(Debug, Clone)]
pub struct Resize<'a> {
    /// The PV the claim is bound to.
    pub volume: &'a str,
    /// The old request.
    pub old: &'a str,
    /// The new request.
    pub new: &'a str,
    /// `status.capacity.storage`.
    pub capacity: &'a str,
    /// `status.allocatedResourceStatuses.storage`, if any.
    pub status: Option<&'a str>,
}

impl Resize<'_> {
    /// The AdmissionReview the API server sends for this resize: the
    /// captured resize of a bound claim with these sizes and a fresh uid.
    pub fn review(&self) -> Value {
        let mut review = fixture("resize-bound");
        let request = &mut review["request"];
        request["uid"] = json!(format!("test-{:016x}", rand_u64()));
        for (object, request_size) in [("oldObject", self.old), ("object", self.new)] {
            let claim = &mut request[object];
            claim["spec"]["volumeName"] = json!(self.volume);
            claim["spec"]["resources"]["requests"]["storage"] = json!(request_size);
            claim["status"]["capacity"]["storage"] = json!(self.capacity);
            match self.status {
                Some(status) => claim["status"]["allocatedResourceStatuses"] = json!({"storage": status}),
                None => {
                    if let Some(status) = claim["status"].as_object_mut() {
                        status.remove("allocatedResourceStatuses");
                    }
                }
            }
        }
        review
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Posts each review `rounds` times on `connection`, round-robin, checking
/// each verdict, and returns one line per review: its name, p50 and p99.
pub async fn latency(mut connection: Connection, reviews: &[(&str, Value, bool)], rounds: usize) -> Vec<String> {
    let mut samples = vec![Vec::with_capacity(rounds); reviews.len()];
    for _ in 0..rounds {
        for ((name, review, allowed), samples) in reviews.iter().zip(&mut samples) {
            let body = serde_json::to_vec(review).expect("review JSON");
            let started = std::time::Instant::now();
            let reply = connection.post(REVIEW_PATH, body).await.unwrap_or_else(|e| panic!("{name} after {} rounds: {e}", samples.len()));
            samples.push(started.elapsed());
            assert_eq!(reply.verdict().0, *allowed, "{name}: {}", reply.text());
        }
    }
    reviews
        .iter()
        .zip(&mut samples)
        .map(|((name, _, _), samples)| {
            samples.sort();
            let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
            format!("{name}: p50 {:?} p99 {:?} (n={})", at(0.50), at(0.99), samples.len())
        })
        .collect()
}
