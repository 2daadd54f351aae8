//! What an operator sees of `swell-controller` and `swell-node`, run as the
//! real binaries on the local backend with `--metrics-address` and
//! `--log-format json`: after a known sequence of RPCs, `/metrics` holds
//! exactly the counts that sequence makes (per RPC and code, backend calls,
//! the reconciler, the node's filesystem grows); `/healthz` fails while the
//! state a process needs cannot be read and recovers with it; and every log
//! line written for an operation names its volume. Needs root (loop devices).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::{ControllerGetVolumeRequest, DeleteVolumeRequest, ProbeRequest};
use swell_e2e::metrics::{free_address, get, sample, scrape, value};
use swell_e2e::node_process::NodeProcess;
use swell_e2e::process::ControllerProcess;
use swell_e2e::requests::{self, mount_capability};
use swell_e2e::{host, logs};
use tonic::Code;

const MIB: i64 = swell_storage::units::MIB as i64;

fn observed_args(metrics: SocketAddr) -> Vec<String> {
    vec![format!("--metrics-address={metrics}"), "--log-format=json".into()]
}

/// The sample `series` of `metrics`, which must be present.
fn exactly(metrics: &str, series: &str, expected: f64) {
    assert_eq!(value(metrics, series), Some(expected), "{series}\n{metrics}");
}

fn rpc(service: &str, method: &str, code: &str) -> String {
    format!(r#"{{grpc_service="csi.v1.{service}",grpc_method="{method}",grpc_code="{code}"}}"#)
}

/// `/healthz` answers 503 naming what is wrong while `state` is moved
/// away, and 200 again once it is back, each within the health cache's
/// age (1 s) and no later.
async fn health_follows(address: SocketAddr, state: &Path, reason: &str) {
    assert_eq!(get(address, "/healthz").await, (200, "ok\n".to_owned()));
    let aside = state.with_extension("aside");
    std::fs::rename(state, &aside).unwrap();
    let (status, body) = health_within(address, 503).await;
    std::fs::rename(&aside, state).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(reason), "the reason: {body}");
    assert_eq!(health_within(address, 200).await.0, 200);
}

/// `/healthz` once it answers `status`, or its last answer after the cache's age.
async fn health_within(address: SocketAddr, status: u16) -> (u16, String) {
    let until = std::time::Instant::now() + csi_endpoint::HEALTH_MAX_AGE + Duration::from_millis(300);
    loop {
        let answer = get(address, "/healthz").await;
        if answer.0 == status || std::time::Instant::now() > until {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_logs_after_a_known_sequence() {
    let test = "observability::metrics_health_and_logs_after_a_known_sequence";
    if host::cannot_run(test, false, &["mkfs.xfs", "xfs_growfs", "losetup"]) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("swell-observe-").tempdir_in("/var/tmp").unwrap();
    let root = dir.path();
    let (controller_log, node_log) = (root.join("controller.log"), root.join("node.log"));
    let (controller_metrics, node_metrics) = (free_address(), free_address());
    let controller = ControllerProcess::start_logging(
        root,
        &root.join("local"),
        observed_args(controller_metrics),
        vec![("RUST_LOG".into(), "info".into())],
        Some(controller_log.clone()),
    )
    .await
    .unwrap();
    let mut node_config = swell_node::NodeConfig::new("observed-node");
    node_config.state_dir = root.join("node");
    node_config.local_state_dir = root.join("local");
    let node =
        NodeProcess::start_with(&node_config, root.join("node.sock"), &[("RUST_LOG", "info".into())], &observed_args(node_metrics), Some(node_log.clone()))
            .await
            .unwrap();
    let mut cc = controller.client().await.unwrap();
    let mut nc = node.client().await.unwrap();

    // The sequence.
    let create = requests::create_volume("observed", 512 * MIB, mount_capability("xfs"));
    let id = cc.create_volume(create.clone()).await.unwrap().into_inner().volume.unwrap().volume_id;
    cc.create_volume(create.clone()).await.unwrap();
    let unnamed = cc.create_volume(requests::create_volume("", 512 * MIB, mount_capability("xfs"))).await.unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    let staging = root.join("staging").display().to_string();
    let target = root.join("pod/vol").display().to_string();
    nc.node_stage_volume(requests::stage(&id, &staging, mount_capability("xfs"))).await.unwrap();
    nc.node_publish_volume(requests::publish(&id, &staging, &target, mount_capability("xfs"), false)).await.unwrap();
    cc.controller_expand_volume(requests::controller_expand(&id, 1024 * MIB, None)).await.unwrap();
    nc.node_expand_volume(requests::node_expand(&id, &target, &staging, 1024 * MIB, mount_capability("xfs"))).await.unwrap();
    cc.controller_get_volume(ControllerGetVolumeRequest { volume_id: id.clone() }).await.unwrap();
    nc.node_unpublish_volume(requests::unpublish(&id, &target)).await.unwrap();
    nc.node_unstage_volume(requests::unstage(&id, &staging)).await.unwrap();
    cc.delete_volume(DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() }).await.unwrap();
    IdentityClient::new(csi_endpoint::connect(&controller.socket).await.unwrap()).probe(ProbeRequest {}).await.unwrap();

    // The controller: RPCs by method and code, with a latency for each;
    // backend calls by operation; the reconciler's (running) passes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut metrics = scrape(controller_metrics).await;
    while sample(&metrics, "swell_reconciler_passes_total") < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no reconciler pass in 10 s:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = scrape(controller_metrics).await;
    }
    for (method, code, count) in [
        ("CreateVolume", "OK", 2.0),
        ("CreateVolume", "InvalidArgument", 1.0),
        ("ControllerExpandVolume", "OK", 1.0),
        ("ControllerGetVolume", "OK", 1.0),
        ("DeleteVolume", "OK", 1.0),
    ] {
        exactly(&metrics, &format!("grpc_server_handled_total{}", rpc("Controller", method, code)), count);
        exactly(&metrics, &format!("grpc_server_handling_seconds_count{}", rpc("Controller", method, code)), count);
    }
    exactly(&metrics, &format!("grpc_server_handled_total{}", rpc("Identity", "Probe", "OK")), 1.0);
    for (operation, count) in [("create volume", 2.0), ("grow volume", 1.0), ("delete volume", 1.0), ("health check", 1.0)] {
        exactly(&metrics, &format!(r#"swell_backend_call_duration_seconds_count{{operation="{operation}",outcome="ok"}}"#), count);
    }
    for gauge in ["swell_expansions_pending", "swell_expansions_stuck", "swell_announcements_owed", "swell_expansion_oldest_pending_seconds"] {
        exactly(&metrics, gauge, 0.0);
    }
    assert!(metrics.ends_with("# EOF\n"), "a whole OpenMetrics exposition");
    assert!(!metrics.contains(&id), "no volume id in any label");

    // The node: its RPCs and the one online grow, of an xfs filesystem.
    let metrics = scrape(node_metrics).await;
    for method in ["NodeStageVolume", "NodePublishVolume", "NodeExpandVolume", "NodeUnpublishVolume", "NodeUnstageVolume"] {
        exactly(&metrics, &format!("grpc_server_handled_total{}", rpc("Node", method, "OK")), 1.0);
    }
    exactly(&metrics, r#"swell_node_filesystem_grow_duration_seconds_count{fs_type="xfs",outcome="ok"}"#, 1.0);
    let grow = sample(&metrics, r#"swell_node_filesystem_grow_duration_seconds_sum{fs_type="xfs",outcome="ok"}"#);
    assert!(grow > 0.0, "{metrics}");
    println!("the xfs grow took {:.1} ms as /metrics reports it", grow * 1000.0);

    // Health: the backend's (local: its state directory), and the node's state.
    health_follows(controller_metrics, &root.join("local/volumes"), "read state directory").await;
    health_follows(node_metrics, &root.join("node"), "state directory").await;
    assert_eq!(get(controller_metrics, "/nope").await.0, 404);

    // Logs: JSON, and every line inside an operation's span names the volume.
    drop((controller, node));
    for (log, spans) in [(&controller_log, ["controller_expand_volume", "delete_volume"]), (&node_log, ["node_stage_volume", "node_expand_volume"])] {
        let lines = logs::read(log);
        for span in spans {
            let inside = logs::within(&lines, span);
            assert!(!inside.is_empty(), "{}: no line inside {span}", log.display());
            println!("{}: {} lines inside {span}, each naming {id}", log.display(), inside.len());
            for line in inside {
                assert_eq!(logs::span_field(line, "volume.id"), Some(id.as_str()), "{}: {line}", log.display());
            }
        }
    }
}
