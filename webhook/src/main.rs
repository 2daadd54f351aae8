//! `swell-webhook`: serves the resize admission webhook over HTTPS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use csi_endpoint::identity::DEFAULT_DRIVER_NAME;
use csi_endpoint::logs::LogArgs;
use swell_backends::BackendArgs;
use swell_webhook::ApiVolumes;
use swell_webhook::BackendFacts;
use swell_webhook::ReloadingCert;
use swell_webhook::{Limits, serve};
use swell_webhook::{Policy, Webhook};

/// Swell's resize admission webhook.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, env = "SWELL_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain served (reloaded when it changes).
    #[arg(long, env = "SWELL_WEBHOOK_TLS_CERT", default_value = "/etc/swell-webhook/tls/tls.crt")]
    tls_cert: PathBuf,
    /// PEM private key of the certificate (reloaded when it changes).
    #[arg(long, env = "SWELL_WEBHOOK_TLS_KEY", default_value = "/etc/swell-webhook/tls/tls.key")]
    tls_key: PathBuf,
    /// Seconds between checks of the certificate files for changes.
    #[arg(long, env = "SWELL_WEBHOOK_TLS_RELOAD_SECS", default_value_t = 10)]
    tls_reload_secs: u64,
    /// CSI driver name whose claims are judged.
    #[arg(long, env = "SWELL_DRIVER_NAME", default_value = DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Milliseconds the PV and backend reads of one review may take in all;
    /// keep it well under the configuration's timeoutSeconds.
    #[arg(long, env = "SWELL_WEBHOOK_DEADLINE_MS", default_value_t = 5000)]
    deadline_ms: u64,
    /// Allow (with a warning) a resize whose backend did not answer in time,
    /// instead of denying it.
    #[arg(long, env = "SWELL_WEBHOOK_ALLOW_ON_BACKEND_TIMEOUT")]
    allow_on_backend_timeout: bool,
    /// Seconds to keep serving after SIGTERM before closing the listener:
    /// the API server keeps sending to a terminating pod until the
    /// Service's endpoints drop it.
    #[arg(long, env = "SWELL_WEBHOOK_SHUTDOWN_DELAY_SECS", default_value_t = 5)]
    shutdown_delay_secs: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SWELL_WEBHOOK_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds a connection may stay open with no request in flight
    /// (HTTP/1 keep-alive and HTTP/2 alike, PINGs or not).
    #[arg(long, env = "SWELL_WEBHOOK_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
    /// Connections open at once; more are closed as they are accepted.
    #[arg(long, env = "SWELL_WEBHOOK_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Reviews judged at once; more answer 503 (the API server then applies
    /// the configuration's failurePolicy).
    #[arg(long, env = "SWELL_WEBHOOK_MAX_REVIEWS_IN_FLIGHT", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    max_reviews_in_flight: u64,
    /// PEM file of CAs whose client certificates may send reviews; without
    /// it any client that reaches the port may (docs/security.md).
    #[arg(long, env = "SWELL_WEBHOOK_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    logs: LogArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    args.logs.init();
    let cert = ReloadingCert::load(&args.tls_cert, &args.tls_key)?;
    let tls = match &args.client_ca {
        Some(ca) => cert.server_config_with_client_ca(ca)?,
        None => cert.server_config()?,
    };
    let mut config = args.backend.config();
    // The webhook only reads the controller's state (deploy/ mounts it read-only).
    config.local.read_only = true;
    let backends = swell_backends::open(&config)?;
    let client = kube::Client::try_default().await.map_err(|e| format!("Kubernetes client: {e}"))?;
    let webhook = Webhook {
        driver_name: args.driver_name,
        deadline: Duration::from_millis(args.deadline_ms),
        policy: Policy { allow_unchecked: args.allow_on_backend_timeout },
        volumes: Arc::new(ApiVolumes::new(client)),
        facts: Arc::new(BackendFacts::new(backends)),
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| format!("bind {}: {e}", args.listen))?;
    tracing::info!(listen = %args.listen, deadline = ?webhook.deadline, policy = ?webhook.policy, "swell-webhook serving");
    let (stop, stopped) = tokio::sync::watch::channel(());
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<()>| async move {
        let _ = stopped.changed().await;
    };
    let watcher = tokio::spawn(Arc::clone(&cert).watch(Duration::from_secs(args.tls_reload_secs.max(1)), until_stopped(stopped)));
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        max_connections: count(args.max_connections),
        max_reviews_in_flight: count(args.max_reviews_in_flight),
        require_client_cert: args.client_ca.is_some(),
        ..Limits::default()
    };
    let shutdown_delay = Duration::from_secs(args.shutdown_delay_secs);
    let shutdown = async move {
        csi_endpoint::shutdown_signal().await;
        tracing::info!(delay = ?shutdown_delay, "stopping: serving on until the endpoints drop this pod");
        tokio::time::sleep(shutdown_delay).await;
    };
    serve(listener, tls, Arc::new(webhook), limits, shutdown).await;
    let _ = stop.send(());
    let _ = watcher.await;
    Ok(())
}
