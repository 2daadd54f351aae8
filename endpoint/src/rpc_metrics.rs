//! Per-RPC Prometheus metrics for every gRPC service Swell serves: a counter
//! and a latency histogram by service, method and status code. A service is
//! wrapped once where the router is assembled ([`RpcMetrics::meter`]), so the
//! controller and the node count the same way. Labels stay bounded: a
//! method `csi.proto` does not define is counted as `unknown`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::server::NamedService;

/// Upper bounds, in seconds, of the latency buckets of a call that may take
/// from a fraction of a millisecond (Identity) to a backend deadline.
pub const LATENCY_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

/// The RPC counters and histograms of one process.
#[derive(Clone)]
pub struct RpcMetrics {
    handled: Family<RpcLabels, Counter>,
    seconds: Family<RpcLabels, Histogram, fn() -> Histogram>,
}

impl RpcMetrics {
    /// Registers `grpc_server_handled_total` and `grpc_server_handling_seconds`
    /// (the names go-grpc-prometheus made common) in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = RpcMetrics { handled: Family::default(), seconds: Family::new_with_constructor(latency_histogram) };
        registry.register("grpc_server_handled", "RPCs completed, by service, method and gRPC status code.", metrics.handled.clone());
        registry.register("grpc_server_handling_seconds", "Time to answer an RPC, by service, method and gRPC status code.", metrics.seconds.clone());
        metrics
    }

    /// `service`, counted and timed.
    pub fn meter<S>(&self, service: S) -> Metered<S> {
        Metered { inner: service, metrics: self.clone() }
    }

    fn observe(&self, service: &'static str, path: &str, code: tonic::Code, took: std::time::Duration) {
        let labels = RpcLabels { grpc_service: service, grpc_method: known_method(service, path), grpc_code: code_name(code) };
        self.handled.get_or_create(&labels).inc();
        self.seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }
}

/// The method of `/service/Method` when `csi.proto` defines it, else `unknown`.
fn known_method(service: &str, path: &str) -> &'static str {
    let method = path.strip_prefix('/').and_then(|p| p.strip_prefix(service)).and_then(|p| p.strip_prefix('/')).unwrap_or_default();
    csi_proto::v1::RPCS.iter().find(|(s, m)| *s == service && *m == method).map_or("unknown", |(_, m)| m)
}

/// The status code's name as gRPC's own libraries print it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The status of a unary answer: tonic sends an error as a trailers-only
/// response, its `grpc-status` in the headers; a success carries it in the
/// trailers, so headers without one are a success.
fn status_of<B>(response: &http::Response<B>) -> tonic::Code {
    match response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()) {
        Some(code) => tonic::Code::from_i32(code),
        None => tonic::Code::Ok,
    }
}

/// A gRPC service whose calls are counted and timed.
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S: NamedService> NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>, Error = Infallible> + NamedService,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = answer.await?;
            metrics.observe(S::NAME, &path, status_of(&response), started.elapsed());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_csi_proto_are_unknown() {
        assert_eq!(known_method("csi.v1.Controller", "/csi.v1.Controller/CreateVolume"), "CreateVolume");
        assert_eq!(known_method("csi.v1.Node", "/csi.v1.Node/NodeExpandVolume"), "NodeExpandVolume");
        for odd in ["/csi.v1.Controller/Nope", "/csi.v1.Node/CreateVolume", "/csi.v1.Controller", "", "/csi.v1.ControllerX/CreateVolume"] {
            assert_eq!(known_method("csi.v1.Controller", odd), "unknown", "{odd}");
        }
    }

    #[test]
    fn a_status_in_the_headers_is_the_answer_and_none_is_ok() {
        let ok = http::Response::new(());
        assert_eq!(status_of(&ok), tonic::Code::Ok);
        let refused = tonic::Status::aborted("busy").into_http::<()>();
        assert_eq!(status_of(&refused), tonic::Code::Aborted);
        assert_eq!(code_name(status_of(&refused)), "Aborted");
    }
}
