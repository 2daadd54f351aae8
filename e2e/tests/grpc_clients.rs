//! Every gRPC client can talk to Swell's sockets, not only grpc-go's (which
//! sends `localhost` as the HTTP/2 `:authority`). grpc-python since 1.57
//! sends the socket path, %-encoded; the h2 crate under tonic refuses that
//! with RST_STREAM PROTOCOL_ERROR unless the connection shim in
//! `csi_endpoint::authority` repairs it. The Python client here is grpcio
//! from PyPI with default options (e2e/install-deps.sh installs it), making
//! generic unary calls with request bytes serialized by prost: Identity,
//! Controller and Node RPCs, OK answers and error codes alike. A server
//! without the shim is called too, to show the client really sends what h2
//! refuses (else this test could pass by accident).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use csi_proto::v1::*;
use prost::Message;
use serde_json::{Value, json};
use swell_e2e::host;
use tokio_stream::wrappers::UnixListenerStream;

/// Where e2e/install-test-tools.sh puts the tests' Python, with grpcio.
const DEFAULT_PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-venv/bin/python");

const CLIENT: &str = r#"
import json, sys
import grpc

calls = json.load(sys.stdin)
results = []
for call in calls:
    # Default options: the channel sends its own :authority for the socket.
    with grpc.insecure_channel("unix:" + call["socket"]) as channel:
        method = channel.unary_unary(call["method"])
        try:
            response = method(bytes.fromhex(call["request"]), timeout=20)
            results.append({"code": "OK", "response": response.hex()})
        except grpc.RpcError as error:
            results.append({"code": error.code().name, "details": error.details() or ""})
print(json.dumps({"version": grpc.__version__, "results": results}))
"#;

/// The Python with grpcio, or `None` (noted) where it is not installed; under
/// CI (as [`host::in_ci`] tells it) the install step provides it, so there
/// its absence fails the test.
fn python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("SWELL_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_PYTHON));
    let works = Command::new(&python).args(["-c", "import grpc"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if works {
        return Some(python);
    }
    let reason = format!("{} with grpcio is not installed (e2e/install-deps.sh installs it)", python.display());
    host::assert_not_ci(test, &reason);
    host::note_skip(test, &reason);
    None
}

struct Call {
    socket: PathBuf,
    method: &'static str,
    request: Vec<u8>,
}

fn call(socket: &Path, method: &'static str, request: impl Message) -> Call {
    Call { socket: socket.to_owned(), method, request: request.encode_to_vec() }
}

/// What Python answered for each call: `(code, response bytes or details)`,
/// and the grpcio version.
async fn python_calls(python: &Path, calls: &[Call]) -> (String, Vec<(String, Vec<u8>, String)>) {
    let input: Vec<Value> = calls.iter().map(|c| json!({"socket": c.socket.display().to_string(), "method": c.method, "request": hex(&c.request)})).collect();
    let mut child = tokio::process::Command::new(python)
        .args(["-c", CLIENT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(serde_json::to_string(&input).unwrap().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait_with_output()).await.expect("python client hung").unwrap();
    assert!(out.status.success(), "python client failed: {}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let code = r["code"].as_str().unwrap().to_owned();
            let response = r["response"].as_str().map(unhex).unwrap_or_default();
            let details = r["details"].as_str().unwrap_or_default().to_owned();
            (code, response, details)
        })
        .collect();
    (answer["version"].as_str().unwrap().to_owned(), results)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

#[track_caller]
fn ok<T: Message + Default>(result: &(String, Vec<u8>, String), what: &str) -> T {
    assert_eq!(result.0, "OK", "{what}: {}", result.2);
    T::decode(result.1.as_slice()).unwrap()
}

/// 1.57 is the first grpcio to send the socket path as the authority.
fn at_least_1_57(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (1, 57)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_python_calls_identity_controller_and_node() {
    let Some(python) = python("grpc_clients::grpc_python_calls_identity_controller_and_node") else { return };
    let drv = driver().await;
    let (controller, node) = (drv.controller_socket.clone(), drv.node_socket.clone());
    let name = unique_name("python");
    let calls = [
        call(&controller, "/csi.v1.Identity/GetPluginInfo", GetPluginInfoRequest {}),
        call(&node, "/csi.v1.Identity/Probe", ProbeRequest {}),
        call(&controller, "/csi.v1.Controller/CreateVolume", swell_e2e::requests::create_volume(&name, 64 * MIB, default_capability())),
        call(&node, "/csi.v1.Node/NodeGetInfo", NodeGetInfoRequest {}),
        call(&node, "/csi.v1.Node/NodeStageVolume", NodeStageVolumeRequest::default()),
    ];
    let (version, results) = python_calls(&python, &calls).await;
    println!("grpcio {version}: {:?}", results.iter().map(|r| r.0.as_str()).collect::<Vec<_>>());
    assert!(at_least_1_57(&version), "grpcio {version} sends localhost; this test needs one that sends the socket path");
    let info: GetPluginInfoResponse = ok(&results[0], "GetPluginInfo");
    assert_eq!(info.name, "swell.csi.storage");
    let probe: ProbeResponse = ok(&results[1], "Probe");
    assert_eq!(probe.ready, Some(true));
    let created: CreateVolumeResponse = ok(&results[2], "CreateVolume");
    let volume = created.volume.unwrap();
    assert!(volume.capacity_bytes >= 64 * MIB);
    // Above what was made: an xfs volume is made at xfs's minimum, past 64 MiB.
    let grown_to = volume.capacity_bytes + 64 * MIB;
    let node_info: NodeGetInfoResponse = ok(&results[3], "NodeGetInfo");
    assert_eq!(node_info.node_id, "swell-e2e-node");
    assert_eq!(results[4].0, "INVALID_ARGUMENT", "error statuses reach the client too: {}", results[4].2);

    let id = volume.volume_id;
    let calls = [
        call(&controller, "/csi.v1.Controller/ControllerExpandVolume", swell_e2e::requests::controller_expand(&id, grown_to, None)),
        call(&node, "/csi.v1.Node/NodeExpandVolume", swell_e2e::requests::node_expand_bare(&id, "/nowhere", grown_to)),
        call(&controller, "/csi.v1.Controller/DeleteVolume", DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() }),
    ];
    let (_, results) = python_calls(&python, &calls).await;
    let grown: ControllerExpandVolumeResponse = ok(&results[0], "ControllerExpandVolume");
    assert_eq!(grown.capacity_bytes, grown_to);
    assert_eq!(results[1].0, "NOT_FOUND", "{}", results[1].2);
    let _: DeleteVolumeResponse = ok(&results[2], "DeleteVolume");
    let mut d = drv;
    assert!(list_ids(&mut d).await.is_empty(), "the volume Python created and deleted is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_shim_grpc_python_is_refused() {
    let Some(python) = python("grpc_clients::without_the_shim_grpc_python_is_refused") else { return };
    let dir = tempfile::Builder::new().prefix("swell-grpc-").tempdir_in("/var/tmp").unwrap();
    let socket = dir.path().join("plain.sock");
    let mut config = swell_node::NodeConfig::new("plain");
    config.state_dir = dir.path().join("node");
    config.local_state_dir = dir.path().join("local");
    let router = swell_node::build(&config).unwrap().router;
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    // tonic as it comes: no AuthorityFix on the connections.
    let server = tokio::spawn(router.serve_with_incoming(UnixListenerStream::new(listener)));
    let (version, results) = python_calls(&python, &[call(&socket, "/csi.v1.Identity/Probe", ProbeRequest {})]).await;
    server.abort();
    println!("grpcio {version} against a plain tonic server: {} {}", results[0].0, results[0].2);
    assert!(at_least_1_57(&version));
    assert_eq!(results[0].0, "INTERNAL", "{}", results[0].2);
    assert!(results[0].2.contains("RST_STREAM"), "{}", results[0].2);
}
