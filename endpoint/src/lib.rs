//! How Swell's binaries meet the container orchestrator: parsing the CSI
//! endpoint, serving gRPC on a carefully prepared Unix socket with graceful
//! shutdown (to every client, whatever `:authority` it sends), connecting to
//! one as a client (the e2e harness and tools do), the Identity service both
//! binaries expose, and what operators see of them: per-RPC metrics,
//! `/metrics` and `/healthz` over HTTP, the log format, and the level a
//! failed RPC is logged at.

pub mod authority;
pub mod capabilities;
pub mod failures;
pub mod health;
pub mod identity;
pub mod logs;
pub mod observe;
pub mod rpc_metrics;
pub mod socket;

pub use health::{CachedProbe, HEALTH_MAX_AGE};
pub use identity::{IdentityService, NotReady, Probe};
pub use observe::Observed;
pub use rpc_metrics::RpcMetrics;
pub use socket::{EndpointError, SocketAccess, connect, grpc_server, parse_endpoint, serve, serve_with, shutdown_signal};
