//! What a process shows Prometheus and kubelet over plain HTTP:
//! `GET /metrics` (its registry, OpenMetrics text) and `GET /healthz` (the
//! same [`Probe`] the CSI Identity service answers with: 200 when ready,
//! 503 with the reason when not). Served with hyper, one HTTP/1.1
//! connection per task, every request and probe under a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::Probe;

/// How long a client may take to send its request line and headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/healthz` waits for the probe: above the backends' own call
/// deadline (8 s by default), below the liveness probes' `timeoutSeconds`.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(10);
/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A process's metrics and its health check, ready to be served.
#[derive(Clone)]
pub struct Observed {
    /// Every metric the process registered.
    pub metrics: Arc<Registry>,
    /// What "healthy" means for it (the Identity Probe's check).
    pub health: Arc<dyn Probe>,
}

impl Observed {
    /// The metrics in OpenMetrics text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; a metric that could not encode
        // would leave a truncated text, which a scrape reports as an error.
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.metrics) {
            tracing::error!(error = %err, "cannot encode the metrics");
        }
        text
    }

    /// Serves `/metrics` and `/healthz` on `listener` until `shutdown`
    /// resolves; connections still open then are dropped.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "serving /metrics and /healthz");
        }
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let observed = self.clone();
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(move |request| {
                                let observed = observed.clone();
                                async move { Ok::<_, Infallible>(observed.answer(&request).await) }
                            });
                            let served = hyper::server::conn::http1::Builder::new()
                                .timer(TokioTimer::new())
                                .header_read_timeout(HEADER_TIMEOUT)
                                .serve_connection(TokioIo::new(tcp), service);
                            if let Err(err) = served.await {
                                tracing::debug!(%peer, error = %err, "metrics connection ended");
                            }
                        });
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %err, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        connections.abort_all();
    }

    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/metrics") => reply(StatusCode::OK, OPENMETRICS, self.render()),
            (&Method::GET, "/healthz") => match tokio::time::timeout(HEALTH_DEADLINE, self.health.check()).await {
                Ok(Ok(())) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
                Ok(Err(reason)) => {
                    tracing::warn!(%reason, "health check failed");
                    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{reason}\n"))
                }
                Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("the health check did not finish within {HEALTH_DEADLINE:?}\n")),
            },
            (_, "/metrics" | "/healthz") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into()),
            (_, path) => reply(StatusCode::NOT_FOUND, "text/plain", format!("no such path {path:?}: GET /metrics or /healthz\n")),
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
