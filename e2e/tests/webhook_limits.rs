//! The admission webhook against a hostile neighbour, over real TLS on
//! loopback: idle connections (bare TLS, HTTP/1 keep-alive, HTTP/2 with
//! the client's PINGs) are closed after the idle timeout while a slow
//! request is not cut; a connection beyond the cap is closed at accept and
//! a freed slot serves again; reviews beyond the cap answer 503; with a
//! client CA, reviews need a certificate it signed.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use swell_e2e::webhook::{FixedVolumes, Resize, Review, RunningWebhook, TestPki};
use swell_storage::VolumeId;
use swell_webhook::{FactsError, Limits, Policy, VolumeFacts, VolumeState, Webhook};
use tokio::io::AsyncReadExt;

/// A backend that answers after `delay` (never, as far as a review's
/// deadline is concerned, when it is longer).
struct Slow(Duration);

#[async_trait::async_trait]
impl VolumeFacts for Slow {
    async fn read(&self, _id: &VolumeId) -> Result<VolumeState, FactsError> {
        tokio::time::sleep(self.0).await;
        std::future::pending().await
    }
}

/// A webhook whose backend reads take `facts_delay`, with reviews
/// deadlined at `deadline`, bound to PV `pv-a`.
fn webhook(facts_delay: Duration, deadline: Duration) -> Webhook {
    let volumes = Arc::new(FixedVolumes::default());
    volumes.add("pv-a", "local:0123456789abcdef0123456789abcdef");
    Webhook { driver_name: swell_e2e::webhook::DRIVER.into(), deadline, policy: Policy::default(), volumes, facts: Arc::new(Slow(facts_delay)) }
}

fn review() -> Review {
    Resize { volume: "pv-a", old: "1Gi", new: "2Gi", capacity: "1Gi", status: None }.review()
}

/// Waits until `closed` holds, polling; how long it took, `None` past `limit`.
async fn closed_within(limit: Duration, closed: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if closed() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_connections_are_closed_after_the_idle_timeout_and_a_slow_review_is_not() {
    let idle = Duration::from_secs(2);
    let limits = Limits { idle_timeout: idle, max_connections: 1000, ..Limits::default() };
    let pki = TestPki::new();
    // The review's backend read outlasts the idle timeout: in flight is not idle.
    let server = RunningWebhook::start(webhook(Duration::from_secs(3), Duration::from_secs(4)), &pki, limits, Duration::from_secs(60)).await;
    let client = server.client(&pki);
    let opened = Instant::now();
    let mut bare = Vec::new();
    for _ in 0..150 {
        bare.push(client.tls().await.unwrap());
    }
    let mut http1 = Vec::new();
    for _ in 0..25 {
        let mut connection = client.connect().await.unwrap();
        assert_eq!(connection.get("/healthz").await.unwrap(), 200);
        http1.push(connection);
    }
    let mut http2 = Vec::new();
    for _ in 0..25 {
        // PINGs every 200 ms: traffic, but no request.
        let mut connection = client.connect_h2(Some(Duration::from_millis(200))).await.unwrap();
        assert_eq!(connection.get("/healthz").await.unwrap(), 200);
        http2.push(connection);
    }
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.review(&review()).await }
    });
    assert!(opened.elapsed() < idle, "opening took {:?}, longer than the idle timeout", opened.elapsed());
    assert!(http1.iter().all(|c| !c.is_closed()) && http2.iter().all(|c| !c.is_closed()), "closed before the idle timeout");

    let limit = idle + Duration::from_secs(5);
    let mut bare_closed = Vec::new();
    for mut tls in bare {
        bare_closed.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            // EOF or a reset: the server closed it.
            match tokio::time::timeout(limit, tls.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => Some(Instant::now()),
                Ok(Ok(n)) => panic!("the server sent {n} bytes unasked"),
                Err(_) => None,
            }
        }));
    }
    for connection in &http1 {
        closed_within(limit, || connection.is_closed()).await.expect("an idle HTTP/1 keep-alive connection stayed open");
    }
    for connection in &http2 {
        closed_within(limit, || connection.is_closed()).await.expect("an idle HTTP/2 connection sending PINGs stayed open");
    }
    let mut last = opened;
    for closed in bare_closed {
        let at = closed.await.unwrap().expect("an idle TLS connection stayed open");
        last = last.max(at);
    }
    let all_closed = last - opened;
    assert!(
        all_closed >= idle && all_closed < idle + Duration::from_secs(3),
        "200 idle connections closed {all_closed:?} after opening (idle timeout {idle:?})"
    );
    eprintln!("200 idle connections all closed {all_closed:?} after opening, idle timeout {idle:?}");

    let reply = slow.await.unwrap().unwrap();
    assert_eq!(reply.status, 200, "a review in flight longer than the idle timeout is answered: {}", reply.text());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_the_cap_is_closed_and_a_freed_slot_serves_again() {
    let limits = Limits { max_connections: 8, ..Limits::default() };
    let pki = TestPki::new();
    let server = RunningWebhook::start(webhook(Duration::ZERO, Duration::from_secs(1)), &pki, limits, Duration::from_secs(60)).await;
    let client = server.client(&pki);
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(client.tls().await.unwrap());
    }
    let refused = tokio::time::timeout(Duration::from_secs(5), client.connect()).await.expect("the ninth connection hung instead of being closed");
    assert!(refused.is_err(), "connection 9 of a cap of 8 was served");
    drop(held.pop());
    // The server sees the close and frees its slot.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut connection) = client.connect().await
            && connection.get("/healthz").await == Ok(200)
        {
            break;
        }
        assert!(Instant::now() < until, "a freed slot was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_beyond_the_cap_answer_503_and_those_within_are_judged() {
    let limits = Limits { max_reviews_in_flight: 2, ..Limits::default() };
    let pki = TestPki::new();
    // Each review waits out its 1 s deadline on a backend that does not answer.
    let server = RunningWebhook::start(webhook(Duration::from_secs(10), Duration::from_secs(1)), &pki, limits, Duration::from_secs(60)).await;
    let client = server.client(&pki);
    let mut connections = Vec::new();
    for _ in 0..6 {
        connections.push(client.connect().await.unwrap());
    }
    let body = review().bytes();
    let replies: Vec<_> = connections
        .into_iter()
        .map(|mut c| {
            let body = body.clone();
            tokio::spawn(async move { c.post(swell_webhook::REVIEW_PATH, body).await.unwrap() })
        })
        .collect();
    let mut statuses = Vec::new();
    for reply in replies {
        let reply = reply.await.unwrap();
        if reply.status == 503 {
            assert!(reply.text().contains("2 reviews in flight"), "{}", reply.text());
        } else {
            let (allowed, message, _) = reply.verdict();
            assert!(!allowed, "a backend that does not answer denies: {message}");
        }
        statuses.push(reply.status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503]);
    // Once they are answered, the slots are free again.
    let (allowed, _, _) = client.review(&review()).await.unwrap().verdict();
    assert!(!allowed);
    server.stop().await;
}

#[tokio::test]
async fn with_a_client_ca_reviews_need_a_certificate_it_signed_and_probes_do_not() {
    let pki = TestPki::new();
    let server = RunningWebhook::start_with_client_ca(webhook(Duration::ZERO, Duration::from_secs(1)), &pki, Limits::default(), &pki.ca_path).await;
    let body = review().bytes();

    let anonymous = server.client(&pki);
    let reply = anonymous.post(swell_webhook::REVIEW_PATH, body.clone()).await.unwrap();
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("--client-ca"), "{}", reply.text());
    assert_eq!(anonymous.connect().await.unwrap().get("/healthz").await.unwrap(), 200, "the kubelet's probe has no certificate");

    let signed = server.client_with_cert(&pki, pki.issue_client());
    let reply = signed.post(swell_webhook::REVIEW_PATH, body.clone()).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.verdict();

    // A certificate from another CA fails the handshake (or its first request).
    let stranger = TestPki::new();
    let foreign = server.client_with_cert(&pki, stranger.issue_client());
    match foreign.post(swell_webhook::REVIEW_PATH, body).await {
        Err(_) => {}
        Ok(reply) => panic!("a certificate of another CA was served: {} {}", reply.status, reply.text()),
    }
    server.stop().await;
}
