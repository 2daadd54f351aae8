//! The HTTPS server: accepts TCP connections, refuses plain HTTP with a 400
//! that says so, completes the TLS handshake under a deadline, and serves
//! `POST /validate` (AdmissionReview in, AdmissionReview out) and
//! `GET /healthz` over HTTP/2 or HTTP/1.1. Bodies are size- and
//! time-limited; anything that is not a review answers 400 with the reason.
//! On shutdown it stops accepting and lets open requests finish.
//!
//! Any pod may connect, so nothing a client holds is unbounded: a connection
//! beyond `max_connections` is closed at accept, a review beyond
//! `max_reviews_in_flight` answers 503, and a connection with no request in
//! flight for `idle_timeout` is closed, whatever it sends meanwhile (HTTP/1
//! keep-alive, HTTP/2 PINGs, half a header block): idleness is counted in
//! requests, not bytes.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::webhook::Webhook;

/// The path the ValidatingWebhookConfiguration calls.
pub const REVIEW_PATH: &str = "/validate";
/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;
const PLAIN_HTTP_REFUSAL: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 34\r\nConnection: close\r\n\r\nswell-webhook speaks HTTPS only.\r\n";

/// The server's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How long a client may take for its TLS handshake, and for sending its
    /// headers and body.
    pub io_timeout: Duration,
    /// How long open requests may take to finish after shutdown begins.
    pub drain_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// Reviews judged at once; more answer 503.
    pub max_reviews_in_flight: usize,
    /// Reviews need a verified client certificate (the TLS configuration
    /// asks for one, `--client-ca`); /healthz does not, for the kubelet.
    pub require_client_cert: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A PVC review is a few KiB; 1 MiB leaves room for large annotations.
            max_body_bytes: 1 << 20,
            io_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(15),
            // The API server reuses a connection for the next review and
            // reconnects after a close: 60 s keeps it warm, and no more.
            idle_timeout: Duration::from_secs(60),
            // Each replica serves a few API servers; an idle TLS connection
            // costs ~50 KiB, so the cap bounds memory to ~25 MiB.
            max_connections: 512,
            max_reviews_in_flight: 64,
            require_client_cert: false,
        }
    }
}

/// Largest HTTP/1 header block and HTTP/2 header list accepted.
const MAX_HEADER_BYTES: usize = 16 << 10;
/// HTTP/2 streams one connection may have open.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// What the server shares between connections.
#[derive(Clone)]
struct Shared {
    webhook: Arc<Webhook>,
    limits: Limits,
    reviews: Arc<Semaphore>,
}

/// Serves `webhook` on `listener` until `shutdown` resolves, then waits (at
/// most `limits.drain_timeout`) for the requests already received.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, webhook: Arc<Webhook>, limits: Limits, shutdown: impl std::future::Future<Output = ()>) {
    let acceptor = TlsAcceptor::from(tls);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let shared = Shared { webhook, limits, reviews: Arc::new(Semaphore::new(limits.max_reviews_in_flight)) };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = finished {
                    tracing::error!(error = %err, "a connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        // Closed unread: the cap holds however fast clients come.
                        tracing::debug!(%peer, max = limits.max_connections, "connection refused: too many open");
                        drop(tcp);
                        continue;
                    };
                    let (acceptor, shared, stopped) = (acceptor.clone(), shared.clone(), stopped.clone());
                    connections.spawn(async move {
                        if let Err(reason) = connection(tcp, acceptor, shared, stopped).await {
                            tracing::debug!(%peer, reason, "connection ended");
                        }
                        drop(slot);
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop.send(true);
    if tokio::time::timeout(limits.drain_timeout, async { while connections.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(open = connections.len(), "connections still open after the drain timeout; closing them");
    }
}

/// The requests of one connection: how many are in flight, and when the
/// last one started or ended.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

struct Busy(Arc<Activity>);

impl Activity {
    fn start(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        *self.last.lock() = Instant::now();
        Busy(Arc::clone(self))
    }

    /// When the connection turns idle, `None` while a request is in flight.
    fn idle_at(&self, idle_timeout: Duration) -> Option<Instant> {
        let last = *self.last.lock();
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| last + idle_timeout)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last.lock() = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(tcp: TcpStream, acceptor: TlsAcceptor, shared: Shared, mut stopped: tokio::sync::watch::Receiver<bool>) -> Result<(), String> {
    let limits = shared.limits;
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.io_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            let mut tcp = tcp;
            let _ = tokio::time::timeout(limits.io_timeout, tcp.write_all(PLAIN_HTTP_REFUSAL)).await;
            let _ = tcp.shutdown().await;
            return Err("plain HTTP refused".into());
        }
        Ok(Ok(_)) => return Err("closed before sending anything".into()),
        Ok(Err(err)) => return Err(format!("read: {err}")),
        Err(_) => return Err("sent nothing in time".into()),
    }
    let tls = match tokio::time::timeout(limits.io_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => return Err(format!("TLS handshake failed: {err}")),
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    // With --client-ca a presented certificate was verified in the handshake.
    let authenticated = tls.get_ref().1.peer_certificates().is_some_and(|chain| !chain.is_empty());
    let activity = Arc::new(Activity { in_flight: AtomicUsize::new(0), last: Mutex::new(Instant::now()) });
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request| {
            let busy = activity.start();
            let shared = shared.clone();
            async move {
                let response = route(request, &shared, authenticated).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.io_timeout).max_buf_size(MAX_HEADER_BYTES.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        // Our PINGs find peers that vanished; theirs do not keep a connection open.
        .keep_alive_interval(Some(limits.io_timeout))
        .keep_alive_timeout(limits.io_timeout);
    let served = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(served);
    let why = loop {
        // While a request is in flight its own deadlines bound it; look again later.
        let wake = activity.idle_at(limits.idle_timeout).unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        tokio::select! {
            result = served.as_mut() => return result.map_err(|e| e.to_string()),
            _ = stopped.wait_for(|stop| *stop) => break "shutting down",
            () = tokio::time::sleep_until(wake) => {
                if activity.idle_at(limits.idle_timeout).is_some_and(|at| at <= Instant::now()) {
                    break "idle";
                }
            }
        }
    };
    // GOAWAY (HTTP/2) or close (HTTP/1) once what is in flight is answered;
    // a peer that keeps it open past that is cut off.
    served.as_mut().graceful_shutdown();
    match tokio::time::timeout(limits.drain_timeout, served).await {
        Ok(result) => result.map_err(|e| e.to_string()).and(Err(format!("closed: {why}"))),
        Err(_) => Err(format!("closed: {why}; cut off after {:?}", limits.drain_timeout)),
    }
}

async fn route(request: Request<Incoming>, shared: &Shared, authenticated: bool) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::POST, REVIEW_PATH) if shared.limits.require_client_cert && !authenticated => {
            text(StatusCode::FORBIDDEN, "reviews need a client certificate signed by the webhook's --client-ca\n".into())
        }
        (&Method::POST, REVIEW_PATH) => {
            // Taken before the body is read: the cap bounds memory as well as work.
            let Ok(_slot) = Arc::clone(&shared.reviews).try_acquire_owned() else {
                let mut busy = text(StatusCode::SERVICE_UNAVAILABLE, format!("{} reviews in flight already; try again\n", shared.limits.max_reviews_in_flight));
                busy.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
                return busy;
            };
            review(request, &shared.webhook, shared.limits).await
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok".into()),
        (_, REVIEW_PATH) => text(StatusCode::METHOD_NOT_ALLOWED, format!("{REVIEW_PATH} takes POST\n")),
        (_, path) => text(StatusCode::NOT_FOUND, format!("no such path {path:?}: reviews go to POST {REVIEW_PATH}\n")),
    }
}

async fn review(request: Request<Incoming>, webhook: &Webhook, limits: Limits) -> Response<Full<Bytes>> {
    let too_large = || text(StatusCode::BAD_REQUEST, format!("request body larger than {} bytes\n", limits.max_body_bytes));
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return too_large();
    }
    let body = match tokio::time::timeout(limits.io_timeout, Limited::new(request.into_body(), limits.max_body_bytes).collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(err)) if err.is::<LengthLimitError>() => return too_large(),
        Ok(Err(err)) => return text(StatusCode::BAD_REQUEST, format!("reading the request body: {err}\n")),
        Err(_) => return text(StatusCode::BAD_REQUEST, format!("request body not received within {:?}\n", limits.io_timeout)),
    };
    match webhook.review(&body).await {
        Ok(json) => {
            let mut response = Response::new(Full::new(Bytes::from(json)));
            response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
            response
        }
        Err(err) => text(StatusCode::BAD_REQUEST, format!("{err}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
