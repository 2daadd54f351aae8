//! The processes under measurement: `swell-controller` (this build's, or
//! another for a "before" column) and `swell-node`, each on its own socket,
//! with what only a process shows: how long it takes to serve, its resident
//! memory, and (controller) its backend calls by step from `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::{ControllerGetCapabilitiesRequest, GetCapacityRequest, NodeGetCapabilitiesRequest};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::step::{BenchResult, at};

/// How long a process may take to serve before the bench gives up on it.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A process serving CSI on a Unix socket.
pub(crate) struct Served {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// From spawn until it answered a real request (GetCapacity for the
    /// controller: its backends are open; NodeGetCapabilities for the node).
    pub started_in: Duration,
    metrics: Option<SocketAddr>,
}

/// What a controller process is started with.
#[derive(Debug, Clone)]
pub(crate) struct ControllerArgs {
    /// The binary.
    pub binary: PathBuf,
    /// Its sockets and expansion records go here.
    pub root: PathBuf,
    /// The local backend's state directory.
    pub local_state_dir: PathBuf,
    /// Flags beyond the endpoint and state directories (the `--rbd-*` ones).
    pub extra: Vec<String>,
    /// Port of its `/metrics` on 127.0.0.1.
    pub metrics_port: u16,
}

/// The resident set of process `pid`, in bytes (`VmRSS`).
pub(crate) fn rss_bytes(pid: u32) -> BenchResult<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(at(format!("read /proc/{pid}/status")))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

impl Served {
    /// Starts a controller and waits until a GetCapacity answers.
    pub(crate) async fn controller(args: &ControllerArgs) -> BenchResult<Self> {
        let socket = args.root.join("controller.sock");
        let metrics: SocketAddr = ([127, 0, 0, 1], args.metrics_port).into();
        let mut command = Command::new(&args.binary);
        command
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .arg(format!("--state-dir={}", args.root.join("controller").display()))
            .arg(format!("--local-state-dir={}", args.local_state_dir.display()))
            .arg(format!("--metrics-address={metrics}"))
            .args(&args.extra);
        Self::serve(command, &args.binary, socket, Some(metrics), |channel| async move {
            ControllerClient::new(channel).get_capacity(GetCapacityRequest::default()).await.map(drop)
        })
        .await
    }

    /// Starts another driver's controller (`command`, which must serve CSI on
    /// `socket`) and waits until it answers ControllerGetCapabilities.
    #[cfg_attr(not(feature = "rbd"), allow(dead_code))]
    pub(crate) async fn other_controller(command: Command, binary: &Path, socket: PathBuf) -> BenchResult<Self> {
        Self::serve(command, binary, socket, None, |channel| async move {
            ControllerClient::new(channel).controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await.map(drop)
        })
        .await
    }

    /// Starts a node serving `local_state_dir` (and `extra` flags) and
    /// waits until it answers.
    pub(crate) async fn node(binary: &Path, root: &Path, local_state_dir: &Path, extra: &[String]) -> BenchResult<Self> {
        let socket = root.join("node.sock");
        let mut command = Command::new(binary);
        command
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .arg("--node-id=swell-bench")
            .arg(format!("--state-dir={}", root.join("node").display()))
            .arg(format!("--local-state-dir={}", local_state_dir.display()))
            .args(extra);
        Self::serve(command, binary, socket, None, |channel| async move {
            NodeClient::new(channel).node_get_capabilities(NodeGetCapabilitiesRequest {}).await.map(drop)
        })
        .await
    }

    /// Spawns `command` (after removing a stale `socket`) and waits until
    /// `ask` is answered on `socket`.
    async fn serve<F, Fut>(command: Command, binary: &Path, socket: PathBuf, metrics: Option<SocketAddr>, ask: F) -> BenchResult<Self>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<(), tonic::Status>>,
    {
        let _ = std::fs::remove_file(&socket);
        let started = Instant::now();
        let mut child = spawn(command, binary)?;
        let started_in = wait_serving(&mut child, &socket, started, ask).await?;
        Ok(Served { child, socket, started_in, metrics })
    }

    /// A new connection to it.
    pub(crate) async fn channel(&self) -> BenchResult<Channel> {
        csi_endpoint::connect(&self.socket).await.map_err(at(format!("connect {}", self.socket.display())))
    }

    /// Its process id (0 once it has exited).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Its resident memory now.
    pub(crate) fn rss(&self) -> BenchResult<u64> {
        rss_bytes(self.child.id().ok_or("the process has exited")?)
    }

    /// Backend calls made so far, by step: (calls, seconds spent in them),
    /// from `/metrics`.
    pub(crate) async fn backend_calls(&self) -> BenchResult<Calls> {
        let address = self.metrics.ok_or("no metrics endpoint")?;
        let stream = tokio::net::TcpStream::connect(address).await.map_err(at(format!("connect {address}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(at("metrics handshake"))?;
        tokio::spawn(connection);
        let request = hyper::Request::get("/metrics").header("host", address.to_string()).body(Empty::<Bytes>::new()).map_err(at("metrics request"))?;
        let response = sender.send_request(request).await.map_err(at("GET /metrics"))?;
        let body = response.into_body().collect().await.map_err(at("read /metrics"))?.to_bytes();
        Ok(Calls::parse(&String::from_utf8_lossy(&body)))
    }

    /// Stops it (SIGTERM, then SIGKILL after 10 s) and waits.
    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// The largest resident set a process reached while this watched it
/// (sampled every 5 ms until [`PeakRss::stop`] or the process exits).
pub(crate) struct PeakRss {
    peak: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    /// Starts watching `served` (its RSS now is the first sample).
    pub(crate) fn watch(served: &Served) -> BenchResult<Self> {
        let peak = Arc::new(AtomicU64::new(served.rss()?));
        let pid = served.pid();
        let sampler = tokio::spawn({
            let peak = Arc::clone(&peak);
            async move {
                while let Ok(rss) = rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Ok(PeakRss { peak, sampler })
    }

    /// Stops watching; the peak seen.
    pub(crate) fn stop(self) -> u64 {
        self.sampler.abort();
        self.peak.load(Ordering::Relaxed)
    }
}

/// A controller's backend calls by step: how many, and the seconds spent.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Calls(pub BTreeMap<String, (u64, f64)>);

impl Calls {
    /// Reads the count and the sum of `swell_backend_call_duration_seconds`
    /// (every outcome together) from a metrics page, by operation.
    pub(crate) fn parse(text: &str) -> Self {
        const NAME: &str = "swell_backend_call_duration_seconds";
        let mut calls: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(NAME) else { continue };
            let (count, rest) = match (rest.strip_prefix("_count{"), rest.strip_prefix("_sum{")) {
                (Some(rest), _) => (true, rest),
                (_, Some(rest)) => (false, rest),
                _ => continue,
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
            let Some(operation) = labels.split(',').find_map(|l| l.strip_prefix("operation=\"")?.strip_suffix('"')) else { continue };
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            let entry = calls.entry(operation.to_owned()).or_default();
            if count {
                entry.0 += value as u64;
            } else {
                entry.1 += value;
            }
        }
        Calls(calls)
    }

    /// What was called since `before`, step by step.
    pub(crate) fn since(&self, before: &Calls) -> Calls {
        let delta = self.0.iter().map(|(step, (n, s))| {
            let (n0, s0) = before.0.get(step).copied().unwrap_or_default();
            (step.clone(), (n.saturating_sub(n0), (s - s0).max(0.0)))
        });
        Calls(delta.filter(|(_, (n, _))| *n > 0).collect())
    }

    /// Calls of `step`.
    pub(crate) fn count(&self, step: &str) -> u64 {
        self.0.get(step).map_or(0, |(n, _)| *n)
    }
}

fn spawn(mut command: Command, binary: &Path) -> BenchResult<Child> {
    command
        .env("RUST_LOG", std::env::var("SWELL_BENCH_LOG").unwrap_or_else(|_| "error".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(at(format!("spawn {}", binary.display())))
}

async fn wait_serving<F, Fut>(child: &mut Child, socket: &Path, started: Instant, ask: F) -> BenchResult<Duration>
where
    F: Fn(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut last = String::from("no socket yet");
    while started.elapsed() < START_DEADLINE {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{} exited while starting: {status}", socket.display()));
        }
        if socket.exists()
            && let Ok(channel) = csi_endpoint::connect(socket).await
        {
            match ask(channel).await {
                Ok(()) => return Ok(started.elapsed()),
                Err(status) => last = status.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("{} did not serve within {START_DEADLINE:?}: {last}", socket.display()))
}
