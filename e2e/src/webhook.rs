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
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// The driver name the fixtures' claims carry.
pub const DRIVER: &str = csi_endpoint::identity::DEFAULT_DRIVER_NAME;

/// A CA and the serving certificate it signed, as files the server reads.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// The CA's certificate (PEM), for `--client-ca`.
    pub ca_path: PathBuf,
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
        let ca = params.self_signed(&key).expect("CA certificate");
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca.pem()).expect("write the CA file");
        let ca_der = ca.der().clone();
        let pki = TestPki { cert_path: dir.path().join("tls.crt"), key_path: dir.path().join("tls.key"), dir, ca: Issuer::new(params, key), ca_der, ca_path };
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

    /// A client certificate (DER) and its key signed by this CA.
    pub fn issue_client(&self) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let params = CertificateParams::new(vec!["kube-apiserver".to_owned()]).expect("client params");
        let key = KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &self.ca).expect("client certificate");
        (cert.der().clone(), PrivateKeyDer::try_from(key.serialize_der()).expect("client key DER"))
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config_with(None)
    }

    fn client_config_with(&self, client_cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA into the root store");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().expect("TLS versions").with_root_certificates(roots);
        let mut config = match client_cert {
            Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
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
        Self::start_with(webhook, pki, limits, reload_every, None).await
    }

    /// Like [`start`](Self::start), asking clients for certificates signed
    /// by `client_ca` (and refusing reviews without one).
    pub async fn start_with_client_ca(webhook: Webhook, pki: &TestPki, limits: Limits, client_ca: &Path) -> Self {
        Self::start_with(webhook, pki, Limits { require_client_cert: true, ..limits }, Duration::from_secs(60), Some(client_ca)).await
    }

    async fn start_with(webhook: Webhook, pki: &TestPki, limits: Limits, reload_every: Duration, client_ca: Option<&Path>) -> Self {
        let cert = ReloadingCert::load(&pki.cert_path, &pki.key_path).expect("load the test certificate");
        let tls = match client_ca {
            Some(ca) => cert.server_config_with_client_ca(ca).expect("TLS config with a client CA"),
            None => cert.server_config().expect("TLS config"),
        };
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

    /// A client trusting `pki`'s CA that presents `client_cert`.
    pub fn client_with_cert(&self, pki: &TestPki, client_cert: (CertificateDer<'static>, PrivateKeyDer<'static>)) -> HttpsClient {
        HttpsClient { connector: TlsConnector::from(pki.client_config_with(Some(client_cert))), addr: self.addr }
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

/// An open HTTP/2 connection.
pub struct H2Connection {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    _driver: JoinHandle<()>,
}

impl HttpsClient {
    /// TCP and a TLS handshake for `localhost`, nothing sent after it.
    pub async fn tls(&self) -> Result<TlsStream<TcpStream>, String> {
        let tcp = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        self.connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))
    }

    /// Opens an HTTP/2 connection; with `ping_every`, the client sends
    /// keep-alive PINGs at that interval, idle or not.
    pub async fn connect_h2(&self, ping_every: Option<Duration>) -> Result<H2Connection, String> {
        let tls = self.tls().await?;
        let mut builder = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder.timer(hyper_util::rt::TokioTimer::new());
        if let Some(every) = ping_every {
            builder.keep_alive_interval(every).keep_alive_timeout(Duration::from_secs(5)).keep_alive_while_idle(true);
        }
        let (sender, conn) = builder.handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2Connection { sender, _driver: driver })
    }

    /// Opens a connection: TCP, TLS for `localhost`, HTTP/1.1.
    pub async fn connect(&self) -> Result<Connection, String> {
        let tls = self.tls().await?;
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
    pub async fn review(&self, review: &Review) -> Result<Reply, String> {
        self.post(REVIEW_PATH, review.bytes()).await
    }
}

impl H2Connection {
    /// GETs `path`; the status.
    pub async fn get(&mut self, path: &str) -> Result<u16, String> {
        let request = hyper::Request::get(format!("https://localhost{path}")).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let response = self.sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        Ok(response.status().as_u16())
    }

    /// Whether the server closed it (GOAWAY or the socket).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Connection {
    /// Whether the server closed it.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// GETs `path`; the status.
    pub async fn get(&mut self, path: &str) -> Result<u16, String> {
        let request = hyper::Request::get(path).header("host", "localhost").body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let response = self.sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        response.into_body().collect().await.map_err(|e| format!("response body: {e}"))?;
        Ok(status)
    }

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

/// An AdmissionReview as the bytes posted: a captured fixture, or one with
/// values edited in its text. Nothing is re-serialized, so every review
/// keeps the API server's key order and layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review(String);

impl Review {
    /// The body to post.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.clone().into_bytes()
    }

    /// The body as text.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// `request.uid`, which the answer must name.
    pub fn uid(&self) -> String {
        let review: Value = serde_json::from_str(&self.0).expect("a review is JSON");
        review["request"]["uid"].as_str().expect("request.uid").to_owned()
    }

    /// Replaces `from` with `to`, which must occur exactly `times` times.
    pub fn edit(self, from: &str, to: &str, times: usize) -> Self {
        assert_eq!(self.0.matches(from).count(), times, "{from:?} in the review");
        Review(self.0.replace(from, to))
    }
}

/// A fixture captured from kube-apiserver, by file stem: its bytes.
pub fn fixture(name: &str) -> Review {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../webhook/testdata").join(format!("{name}.json"));
    Review(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// The PV the captured claims are bound to.
pub const CAPTURED_VOLUME: &str = "pvc-8d3f2b6a-4c1e-4f7a-9b2d-6e5c4a3b2f10";

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
    /// captured resize of a bound claim (or, with a status, the captured
    /// recovery, which has one) with its sizes, status and PV name changed
    /// in the text.
    pub fn review(&self) -> Review {
        let base = fixture(if self.status.is_some() { "recovery" } else { "resize-bound" });
        let at = base.0.find(r#""oldObject":"#).expect("the review has an oldObject");
        let (object, old_object) = base.0.split_at(at);
        let edit = |claim: &str, request: &str| {
            let mut claim = set(claim, r#""resources":{"requests":{"storage":""#, request);
            claim = set(&claim, r#""capacity":{"storage":""#, self.capacity);
            claim = set(&claim, r#""volumeName":""#, self.volume);
            if let Some(status) = self.status {
                claim = set(&claim, r#""allocatedResources":{"storage":""#, self.old);
                claim = set(&claim, r#""allocatedResourceStatuses":{"storage":""#, status);
            }
            claim
        };
        Review(edit(object, self.new) + &edit(old_object, self.old))
    }
}

/// `text` with the string value that follows `key` (once in `text`) set to `value`.
fn set(text: &str, key: &str, value: &str) -> String {
    assert_eq!(text.matches(key).count(), 1, "{key} in one claim");
    let start = text.find(key).expect("counted") + key.len();
    let end = start + text[start..].find('"').expect("a closed string");
    format!("{}{value}{}", &text[..start], &text[end..])
}

/// Posts each review `rounds` times on `connection`, round-robin, checking
/// each verdict, and returns one line per review: its name, p50 and p99.
pub async fn latency(mut connection: Connection, reviews: &[(&str, Review, bool)], rounds: usize) -> Vec<String> {
    let mut samples = vec![Vec::with_capacity(rounds); reviews.len()];
    for _ in 0..rounds {
        for ((name, review, allowed), samples) in reviews.iter().zip(&mut samples) {
            let body = review.bytes();
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
