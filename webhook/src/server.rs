//! The HTTPS server: accepts TCP connections, refuses plain HTTP with a 400
//! that says so, completes the TLS handshake under a deadline, and serves
//! `POST /validate` (AdmissionReview in, AdmissionReview out) and
//! `GET /healthz` over HTTP/2 or HTTP/1.1. Bodies are size- and
//! time-limited; anything that is not a review answers 400 with the reason.
//! On shutdown it stops accepting and lets open requests finish.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
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
}

impl Default for Limits {
    fn default() -> Self {
        // A PVC review is a few KiB; 1 MiB leaves room for large annotations.
        Limits { max_body_bytes: 1 << 20, io_timeout: Duration::from_secs(10), drain_timeout: Duration::from_secs(15) }
    }
}

/// Serves `webhook` on `listener` until `shutdown` resolves, then waits (at
/// most `limits.drain_timeout`) for the requests already received.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, webhook: Arc<Webhook>, limits: Limits, shutdown: impl std::future::Future<Output = ()>) {
    let acceptor = TlsAcceptor::from(tls);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
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
                    let (acceptor, webhook, stopped) = (acceptor.clone(), Arc::clone(&webhook), stopped.clone());
                    connections.spawn(async move {
                        if let Err(reason) = connection(tcp, acceptor, webhook, limits, stopped).await {
                            tracing::debug!(%peer, reason, "connection ended");
                        }
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

async fn connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    webhook: Arc<Webhook>,
    limits: Limits,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
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
    let service = hyper::service::service_fn(move |request| {
        let webhook = Arc::clone(&webhook);
        async move { Ok::<_, Infallible>(route(request, &webhook, limits).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.io_timeout);
    let served = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(served);
    tokio::select! {
        result = served.as_mut() => return result.map_err(|e| e.to_string()),
        _ = stopped.wait_for(|stop| *stop) => served.as_mut().graceful_shutdown(),
    }
    served.await.map_err(|e| e.to_string())
}

async fn route(request: Request<Incoming>, webhook: &Webhook, limits: Limits) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::POST, REVIEW_PATH) => review(request, webhook, limits).await,
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
