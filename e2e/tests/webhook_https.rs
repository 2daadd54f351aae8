//! The admission webhook over real HTTPS on the local backend: every rule
//! allowed and denied with its message checked, the captured fixtures,
//! racing patches, the deadline policy, certificate rotation under load,
//! bad requests and plain HTTP.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use swell_backends::Backends;
use swell_e2e::state::leave_wish;
use swell_e2e::webhook::{FixedVolumes, Resize, RunningWebhook, TestPki, fixture, latency};
use swell_local::{LocalBackend, LocalConfig};
use swell_storage::{Backend, ExpansionStore, VolumeId};
use swell_webhook::Limits;
use swell_webhook::VolumeState;
use swell_webhook::{BackendFacts, FactsError, VolumeFacts};
use swell_webhook::{Policy, Webhook};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use swell_storage::units::GIB as GI;

/// Counts the backend reads, so "without a backend call" is checked.
struct Counting<F> {
    inner: F,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl<F: VolumeFacts> VolumeFacts for Counting<F> {
    async fn read(&self, id: &VolumeId) -> Result<VolumeState, FactsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.read(id).await
    }
}

/// A backend that never answers.
struct Hung;

#[async_trait::async_trait]
impl VolumeFacts for Hung {
    async fn read(&self, _id: &VolumeId) -> Result<VolumeState, FactsError> {
        std::future::pending().await
    }
}

/// A webhook over a local backend of 10 GiB holding one 1 GiB volume,
/// bound to PV `pvc-local`.
struct LocalRig {
    _dir: tempfile::TempDir,
    pki: TestPki,
    server: RunningWebhook,
    facts: Arc<Counting<BackendFacts>>,
    volumes: Arc<FixedVolumes>,
    records: Arc<dyn ExpansionStore>,
    id: VolumeId,
}

impl LocalRig {
    async fn start(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalConfig { capacity_bytes: Some(10 * GI), ..LocalConfig::new(dir.path().join("local"), dir.path().join("controller")) };
        let local = Arc::new(LocalBackend::open(&config).unwrap());
        let id = local.create_volume("pvc-local", GI, &Default::default()).await.unwrap().info().id.clone();
        let records = local.expansion_store();
        let facts = Arc::new(Counting { inner: BackendFacts::new(Backends::new(local, Duration::from_secs(5))), calls: AtomicUsize::new(0) });
        let volumes = Arc::new(FixedVolumes::default());
        volumes.add("pvc-local", &id.to_string());
        let webhook = Webhook {
            driver_name: swell_e2e::webhook::DRIVER.into(),
            deadline: Duration::from_secs(5),
            policy: Policy::default(),
            volumes: volumes.clone(),
            facts: facts.clone(),
        };
        let pki = TestPki::new();
        let server = RunningWebhook::start(webhook, &pki, limits, Duration::from_secs(1)).await;
        LocalRig { records, _dir: dir, pki, server, facts, volumes, id }
    }

    /// Posts `review`; returns allowed, message, warnings and backend reads made.
    async fn judge(&self, review: &Value) -> (bool, String, Vec<String>, usize) {
        let before = self.facts.calls.load(Ordering::SeqCst);
        let reply = self.server.client(&self.pki).review(review).await.unwrap();
        let (allowed, message, warnings) = reply.verdict();
        let uid = review["request"]["uid"].as_str().unwrap();
        let answered: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(answered["response"]["uid"], uid, "the answer names the request");
        (allowed, message, warnings, self.facts.calls.load(Ordering::SeqCst) - before)
    }
}

fn resize<'a>(old: &'a str, new: &'a str, capacity: &'a str, status: Option<&'a str>) -> Resize<'a> {
    Resize { volume: "pvc-local", old, new, capacity, status }
}

#[tokio::test]
async fn every_rule_allows_and_denies_with_its_message() {
    let rig = LocalRig::start(Limits::default()).await;

    // Rule 1: other provisioners and unchanged sizes pass without a backend call.
    let mut foreign = resize("1Gi", "5Gi", "1Gi", None).review();
    for object in ["object", "oldObject"] {
        foreign["request"][object]["metadata"]["annotations"] = json!({"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"});
    }
    assert_eq!(rig.judge(&foreign).await, (true, String::new(), vec![], 0));
    assert_eq!(rig.judge(&resize("1Gi", "1024Mi", "1Gi", None).review()).await, (true, String::new(), vec![], 0), "1Gi = 1024Mi");
    assert!(rig.judge(&fixture("label-only")).await.0);

    // Rule 2: below capacity is denied. A failed request lowered is KEP-1790's recovery.
    let (allowed, message, _, calls) = rig.judge(&resize("2Gi", "512Mi", "1Gi", None).review()).await;
    assert!(!allowed && calls == 0);
    assert_eq!(message, "volume pvc-local holds 1Gi; 512Mi is below that and volumes never shrink: request 1Gi or more");
    let recovery = resize("20Gi", "2Gi", "1Gi", Some("ControllerResizeInfeasible")).review();
    assert_eq!(rig.judge(&recovery).await, (true, String::new(), vec![], 0));

    // Rule 3: a change while a resize is in flight, from the claim or the backend's record.
    let (allowed, message, _, _) = rig.judge(&resize("2Gi", "3Gi", "1Gi", None).review()).await;
    assert!(!allowed);
    assert_eq!(message, "volume pvc-local is still growing from 1Gi to 2Gi; 3Gi cannot be asked for until that finishes: wait for it");
    let (allowed, message, _, _) = rig.judge(&resize("3Gi", "2Gi", "1Gi", Some("ControllerResizeInProgress")).review()).await;
    assert!(!allowed && message.contains("lowering the request to 2Gi is refused while that runs"), "{message}");
    let (allowed, message, _, _) = rig.judge(&resize("2Gi", "3Gi", "2Gi", Some("NodeResizePending")).review()).await;
    assert!(!allowed && message.contains("from 2Gi to 2Gi (NodeResizePending)"), "{message}");
    leave_wish(&*rig.records, &rig.id, GI, 3 * GI, None).await;
    let (allowed, message, _, calls) = rig.judge(&resize("1Gi", "2Gi", "1Gi", None).review()).await;
    assert!(!allowed && calls == 1);
    assert!(message.starts_with("volume pvc-local is still growing from 1Gi to 3Gi (recorded at the backend); 2Gi cannot"), "{message}");
    // Settled (as if reached) by the test, so the next rules see the volume at rest.
    leave_wish(&*rig.records, &rig.id, GI, 3 * GI, Some(3 * GI)).await;

    // Rule 4: room under the capacity policy, read fresh.
    assert_eq!(rig.judge(&resize("1Gi", "10Gi", "1Gi", None).review()).await, (true, String::new(), vec![], 1));
    let (allowed, message, _, _) = rig.judge(&resize("1Gi", "20Gi", "1Gi", None).review()).await;
    assert!(!allowed);
    assert_eq!(
        message,
        "volume pvc-local holds 1Gi; growing it to 20Gi needs 19Gi more, but its pool can promise only 9Gi more under Swell's capacity policy: \
         request at most 10Gi"
    );
    // A missing backend volume, a missing PV.
    rig.volumes.add("pvc-gone", "local:0123456789abcdef0123456789abcdef");
    let (allowed, message, _, _) = rig.judge(&Resize { volume: "pvc-gone", ..resize("1Gi", "2Gi", "1Gi", None) }.review()).await;
    assert!(!allowed);
    assert_eq!(message, "volume pvc-gone does not exist (local:0123456789abcdef0123456789abcdef is not at the backend); it cannot grow to 2Gi");
    let (allowed, message, _, calls) = rig.judge(&Resize { volume: "pvc-nowhere", ..resize("1Gi", "2Gi", "1Gi", None) }.review()).await;
    assert!(!allowed && calls == 0);
    assert_eq!(message, "volume pvc-nowhere does not exist (there is no PersistentVolume pvc-nowhere); it cannot grow to 2Gi");
    rig.server.stop().await;
}

#[tokio::test]
async fn captured_fixtures_are_judged_as_they_came() {
    let rig = LocalRig::start(Limits::default()).await;
    // The captured claims are bound to their own PV name: point it at the rig's volume.
    let resize = fixture("resize-bound");
    let pv = resize["request"]["object"]["spec"]["volumeName"].as_str().unwrap();
    rig.volumes.add(pv, &rig.id.to_string());
    assert_eq!(rig.judge(&resize).await, (true, String::new(), vec![], 1));
    let (allowed, _, _, calls) = rig.judge(&fixture("recovery")).await;
    assert!(allowed && calls == 0, "a KEP-1790 recovery needs no backend");
    let (allowed, _, _, calls) = rig.judge(&fixture("label-only")).await;
    assert!(allowed && calls == 0);
    rig.server.stop().await;
}

#[tokio::test]
async fn of_two_racing_resizes_exactly_one_is_allowed() {
    let rig = LocalRig::start(Limits::default()).await;
    for (first, second) in [("2Gi", "3Gi"), ("3Gi", "2Gi")] {
        // Both clients read the claim at 1Gi and patched. The API server
        // admits one; the other's patch conflicts and is applied again to
        // the first's result, and reviewed with it as the old object.
        let a = rig.judge(&resize("1Gi", first, "1Gi", None).review()).await;
        let b = rig.judge(&resize(first, second, "1Gi", None).review()).await;
        assert_eq!([a.0, b.0], [true, false], "{first} then {second}: {a:?} {b:?}");
        assert!(b.1.starts_with(&format!("volume pvc-local is still growing from 1Gi to {first}; ")), "{}", b.1);
    }
    rig.server.stop().await;
}

#[tokio::test]
async fn a_backend_that_does_not_answer_gets_the_policy_within_the_deadline() {
    let pki = TestPki::new();
    let volumes = Arc::new(FixedVolumes::default());
    volumes.add("pvc-local", "local:00");
    for allow in [false, true] {
        let webhook = Webhook {
            driver_name: swell_e2e::webhook::DRIVER.into(),
            deadline: Duration::from_millis(500),
            policy: Policy { allow_unchecked: allow },
            volumes: volumes.clone(),
            facts: Arc::new(Hung),
        };
        let server = RunningWebhook::start(webhook, &pki, Limits::default(), Duration::from_secs(1)).await;
        let started = Instant::now();
        let reply = server.client(&pki).review(&resize("1Gi", "2Gi", "1Gi", None).review()).await.unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(3), "answered after {elapsed:?}");
        let (allowed, message, warnings) = reply.verdict();
        assert_eq!(allowed, allow);
        if allow {
            assert!(warnings[0].contains("was not checked before growing to 2Gi"), "{warnings:?}");
        } else {
            assert_eq!(
                message,
                "volume pvc-local cannot be checked now (the PersistentVolume and the backend did not answer within 500ms); growing it from \
                 1Gi to 2Gi is refused until it can: retry in a minute"
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn certificate_rotation_drops_no_request_and_serves_the_new_certificate() {
    let pki = TestPki::new();
    let webhook = Webhook {
        driver_name: swell_e2e::webhook::DRIVER.into(),
        deadline: Duration::from_secs(1),
        policy: Policy::default(),
        volumes: Arc::new(FixedVolumes::default()),
        facts: Arc::new(Hung),
    };
    let server = RunningWebhook::start(webhook, &pki, Limits::default(), Duration::from_millis(50)).await;
    let client = server.client(&pki);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut done = 0;
            let mut kept = client.connect().await.unwrap();
            while !stop.load(Ordering::SeqCst) {
                let review = serde_json::to_vec(&fixture("label-only")).unwrap();
                // Half on fresh connections (new handshakes), half on one kept open.
                let reply = if worker % 2 == 0 { client.post("/validate", review).await } else { kept.post("/validate", review).await };
                let reply = reply.unwrap_or_else(|e| panic!("request {done} of worker {worker} failed: {e}"));
                assert!(reply.verdict().0);
                done += 1;
            }
            done
        }));
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let new_cert = pki.issue();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let reply = client.post("/healthz-is-not-here", vec![]).await.unwrap();
            if reply.served_cert == new_cert {
                break;
            }
            assert!(Instant::now() < deadline, "the new certificate was not served within 5 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for worker in load {
        total += worker.await.unwrap();
    }
    assert!(total > 20, "only {total} requests ran during the rotations");
    server.stop().await;
}

#[tokio::test]
async fn a_rotation_caught_half_way_keeps_the_old_pair_serving() {
    let rig = LocalRig::start(Limits::default()).await;
    let client = rig.server.client(&rig.pki);
    let before = client.post("/healthz", vec![]).await.unwrap().served_cert;
    let half = rig.pki.issue_certificate_only();
    let err = rig.server.cert.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("certificate") && err.to_string().contains("key"), "{err}");
    assert_eq!(client.post("/healthz", vec![]).await.unwrap().served_cert, before, "the old pair still serves");
    half.finish();
    // Loaded now, by this call or by the server's own poll just before it.
    rig.server.cert.reload_if_changed().unwrap();
    assert_eq!(client.post("/healthz", vec![]).await.unwrap().served_cert, half.der);
    rig.server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_400_with_the_reason() {
    let rig = LocalRig::start(Limits { max_body_bytes: 64 << 10, ..Limits::default() }).await;
    let client = rig.server.client(&rig.pki);
    let resize = serde_json::to_vec(&fixture("resize-bound")).unwrap();
    let mut pod = fixture("resize-bound");
    pod["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});
    let mut v1beta1 = fixture("resize-bound");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_old = fixture("resize-bound");
    no_old["request"]["oldObject"] = Value::Null;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", resize[..resize.len() / 2].to_vec(), "malformed AdmissionReview: EOF while parsing"),
        ("empty", vec![], "malformed AdmissionReview: EOF while parsing"),
        ("not JSON", b"\xff\xfe<xml/>".to_vec(), "malformed AdmissionReview"),
        ("oversized", vec![b' '; 100 << 10], "request body larger than 65536 bytes"),
        ("wrong kind", serde_json::to_vec(&pod).unwrap(), "this webhook reviews v1 PersistentVolumeClaims, not v1/Pod"),
        ("old version", serde_json::to_vec(&v1beta1).unwrap(), "expected apiVersion admission.k8s.io/v1 kind AdmissionReview"),
        ("no request", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "the AdmissionReview has no request"),
        ("no old object", serde_json::to_vec(&no_old).unwrap(), "an UPDATE review needs both object and oldObject"),
        ("object of the wrong shape", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"PersistentVolumeClaim"},"resource":{"group":"","version":"v1","resource":"persistentvolumeclaims"},"name":"c","operation":"UPDATE","userInfo":{},"object":{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"c"},"spec":7},"oldObject":{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"c"}}}}"#.to_vec(), "object is not a PersistentVolumeClaim"),
    ];
    for (what, body, expected) in cases {
        let reply = client.post("/validate", body).await.unwrap();
        assert_eq!(reply.status, 400, "{what}: {}", reply.text());
        assert!(reply.text().starts_with(expected), "{what}: {}", reply.text());
    }
    let reply = client.post("/elsewhere", resize.clone()).await.unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(rig.facts.calls.load(Ordering::SeqCst), 0, "no bad request reached the backend");
    // The server is still there for good requests.
    assert!(rig.judge(&fixture("label-only")).await.0);
    rig.server.stop().await;
}

#[tokio::test]
async fn plain_http_is_refused() {
    let rig = LocalRig::start(Limits::default()).await;
    let mut tcp = tokio::net::TcpStream::connect(rig.server.addr).await.unwrap();
    let body = serde_json::to_vec(&fixture("label-only")).unwrap();
    let head = format!("POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(answer.ends_with("swell-webhook speaks HTTPS only.\r\n"), "{answer}");
    assert!(!answer.contains("AdmissionReview"), "nothing was reviewed: {answer}");
    rig.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_on_the_local_backend_is_reported() {
    let rig = LocalRig::start(Limits::default()).await;
    let connection = rig.server.client(&rig.pki).connect().await.unwrap();
    let reviews = [
        ("allow without backend", fixture("label-only"), true),
        ("allow with backend", resize("1Gi", "2Gi", "1Gi", None).review(), true),
        ("deny with backend", resize("1Gi", "20Gi", "1Gi", None).review(), false),
    ];
    for line in latency(connection, &reviews, 200).await {
        eprintln!("webhook latency on the local backend, {line}");
    }
    rig.server.stop().await;
}
