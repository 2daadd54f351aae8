//! The one place tests read expansion state: from outside the controller,
//! as the external-resizer and an operator see it, through
//! ControllerGetVolume's size and volume condition, and the metrics as
//! Prometheus scrapes them. How the controller keeps its state (files, the
//! Ceph pool) is its own business; if a public signal moves, re-point these
//! functions and nothing else.

use csi_proto::v1::ControllerGetVolumeRequest;
use csi_proto::v1::controller_client::ControllerClient;
use tonic::Status;
use tonic::transport::Channel;

/// What the controller says about one volume now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpansionState {
    /// The size the controller read from the backend.
    pub size: u64,
    /// An expansion is recorded and not yet reached (the condition is abnormal).
    pub pending: bool,
    /// The condition's message (the reason, when pending).
    pub message: String,
}

/// The expansion state of `id`.
pub async fn expansion_state(client: &mut ControllerClient<Channel>, id: &str) -> Result<ExpansionState, Status> {
    let answer = client.controller_get_volume(ControllerGetVolumeRequest { volume_id: id.to_owned() }).await?.into_inner();
    let size = answer.volume.map(|v| v.capacity_bytes).ok_or_else(|| Status::internal(format!("ControllerGetVolume {id}: no volume")))?;
    let condition = answer.status.and_then(|s| s.volume_condition).ok_or_else(|| Status::internal(format!("ControllerGetVolume {id}: no volume condition")))?;
    Ok(ExpansionState { size: u64::try_from(size).unwrap_or(0), pending: condition.abnormal, message: condition.message })
}

/// GET /metrics over real HTTP on loopback, as Prometheus would, from the
/// metrics endpoint of `reconciler`'s controller.
pub async fn scrape_metrics(reconciler: &swell_controller::reconciler::Reconciler) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let address = listener.local_addr().expect("the bound address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(swell_controller::metrics::serve(listener, reconciler.clone(), async {
        let _ = stopped.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect to the metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: swell\r\n\r\n").await.expect("send the request");
    let mut response = String::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_string(&mut response)).await;
    read.expect("the metrics endpoint answers within 10 s").expect("read the answer");
    let _ = stop.send(());
    server.await.expect("the metrics server task").expect("the metrics server");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
}

/// The value of the gauge `name` in scraped `metrics`.
pub fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
