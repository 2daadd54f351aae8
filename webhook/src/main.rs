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
    let tls = cert.server_config()?;
    let backends = swell_backends::open(&args.backend.config())?;
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
    let limits = Limits { max_body_bytes: args.max_body_bytes, ..Limits::default() };
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
