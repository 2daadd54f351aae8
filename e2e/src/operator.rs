//! The operator's view, written once for every engine: `swell volumes` and
//! `swell volume ID` (the built binary, as an operator runs it) over the
//! state of a controller that settled one expansion, failed another and was
//! never asked a third, with Kubernetes answered by a stand-in API server
//! serving the claims, then with no Kubernetes at all.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::instrumented::GrowMode;
use crate::never_stuck::{Engine, InProcess, create, expand};
use crate::process::built_binary;

use swell_storage::units::GIB;

/// Runs `swell ARGS` with the flags that point it at `rig`'s state, and
/// `KUBECONFIG` when given.
async fn swell(engine: &dyn Engine, rig: &InProcess, args: &[&str], kubeconfig: Option<&Path>) -> Output {
    let root = rig.dir.path();
    let mut command = tokio::process::Command::new(built_binary("swell").expect("the swell binary (cargo build --bins)"));
    command.args(args).arg(format!("--state-dir={}", root.join("controller").display())).arg(format!("--local-state-dir={}", root.join("local").display()));
    command.args(engine.controller_args(root)).env_remove("KUBECONFIG").env("HOME", root).kill_on_drop(true);
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    tokio::time::timeout(Duration::from_secs(60), command.output()).await.expect("swell answers within 60 s").expect("run swell")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "swell failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("swell -o json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn row<'a>(listing: &'a Value, id: &str) -> &'a Value {
    listing["volumes"].as_array().expect("volumes").iter().find(|v| v["volume_id"] == id).unwrap_or_else(|| panic!("{id} not listed: {listing:#}"))
}

/// A stand-in API server on loopback answering the two lists `swell` asks
/// for, and a kubeconfig pointing at it. Returns the kubeconfig's path.
async fn api_server(dir: &Path, pvs: Value, pvcs: Value) -> std::path::PathBuf {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (pvs, pvcs) = (pvs.clone(), pvcs.clone());
            tokio::spawn(async move {
                let mut request = vec![0u8; 8192];
                let n = tcp.read(&mut request).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&request[..n]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                let (status, body) = if path.starts_with("/api/v1/persistentvolumes") {
                    ("200 OK", pvs.to_string())
                } else if path.starts_with("/api/v1/persistentvolumeclaims") {
                    ("200 OK", pvcs.to_string())
                } else {
                    ("404 Not Found", json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}).to_string())
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    let kubeconfig = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: http://{address}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: operator\ncurrent-context: stand-in\nusers:\n- name: operator\n  user:\n    token: not-a-secret\n"
    );
    std::fs::write(&kubeconfig, text).expect("write the kubeconfig");
    kubeconfig
}

fn pv(name: &str, handle: &str, claim: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"csi": {"driver": "swell.csi.storage", "volumeHandle": handle}, "claimRef": {"namespace": "apps", "name": claim}}})
}

fn pvc(name: &str, requested: &str, capacity: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "apps"}, "spec": {"resources": {"requests": {"storage": requested}}}, "status": {"capacity": {"storage": capacity}, "conditions": [{"type": "FileSystemResizePending", "status": "True", "message": "Waiting for user to (re-)start a pod"}]}})
}

/// The scenario on `engine`.
pub async fn swell_shows_every_expansion(engine: &dyn Engine) {
    let rig = InProcess::start(engine, Duration::ZERO).await;
    // Every controller started from its flags has a local backend, its
    // directory and its records' (the controller's state directory); this
    // one, given its backends, may not.
    for dir in ["local", "controller"] {
        std::fs::create_dir_all(rig.dir.path().join(dir)).expect("the controller's state directories");
    }
    let mut client = rig.client();
    let tag = std::process::id();
    let grown = create(&mut client, &format!("cli-grown-{tag}"), GIB).await;
    let failed = create(&mut client, &format!("cli-failed-{tag}"), GIB).await;
    let untouched = create(&mut client, &format!("cli-untouched-{tag}"), GIB).await;
    assert_eq!(expand(&mut client, &grown, 2 * GIB).await.expect("grow"), 2 * GIB);
    rig.backend.set_grow_mode(GrowMode::Fail);
    expand(&mut client, &failed, 3 * GIB).await.expect_err("the engine is down");

    // No Kubernetes: the backends' and records' view alone.
    let listing = json_of(&swell(engine, &rig, &["volumes", "-o", "json"], None).await);
    assert!(listing["kubernetes"].as_str().unwrap_or_default().starts_with("not asked"), "{listing:#}");
    let g = row(&listing, &grown);
    assert_eq!((g["state"].as_str(), g["desired_bytes"].as_u64(), g["current_bytes"].as_u64()), (Some("settled"), Some(2 * GIB), Some(2 * GIB)), "{g:#}");
    let f = row(&listing, &failed);
    assert_eq!((f["state"].as_str(), f["desired_bytes"].as_u64(), f["current_bytes"].as_u64()), (Some("growing"), Some(3 * GIB), Some(GIB)), "{f:#}");
    assert!(f["last_error"].as_str().unwrap_or_default().contains("injected outage") && f["pending_secs"].is_u64(), "{f:#}");
    let u = row(&listing, &untouched);
    // RBD keeps a record from the create on; the local backend from the first grow.
    assert_eq!((u["state"].as_str(), u["desired_bytes"].as_u64().unwrap_or(GIB), u["current_bytes"].as_u64()), (Some("settled"), GIB, Some(GIB)), "{u:#}");
    let stuck = json_of(&swell(engine, &rig, &["volumes", "-o", "json", "--stuck-after-secs=0"], None).await);
    assert_eq!(row(&stuck, &failed)["state"], "stuck");

    let table = swell(engine, &rig, &["volumes"], None).await;
    let text = String::from_utf8_lossy(&table.stdout);
    println!("swell volumes on {}:\n{text}", engine.name());
    let line = text.lines().find(|l| l.contains(&failed)).unwrap_or_else(|| panic!("{failed} not in the table:\n{text}"));
    for cell in [engine.name(), "3Gi", "1Gi", "growing", "injected outage"] {
        assert!(line.contains(cell), "{cell} in {line:?}");
    }
    assert!(text.lines().next().is_some_and(|h| h.contains("VOLUME") && h.contains("PENDING FOR")), "{text}");

    // Kubernetes: a claim asking more than Swell was asked for, and one
    // whose filesystem the node has not grown yet.
    let kubeconfig = api_server(
        rig.dir.path(),
        json!({"kind": "PersistentVolumeList", "apiVersion": "v1", "metadata": {}, "items": [pv("pv-grown", &grown, "db"), pv("pv-untouched", &untouched, "cache")]}),
        json!({"kind": "PersistentVolumeClaimList", "apiVersion": "v1", "metadata": {}, "items": [pvc("db", "2Gi", "1Gi"), pvc("cache", "4Gi", "1Gi")]}),
    )
    .await;
    let listing = json_of(&swell(engine, &rig, &["volumes", "-o", "json"], Some(&kubeconfig)).await);
    assert_eq!(listing["kubernetes"], "asked", "{listing:#}");
    let g = row(&listing, &grown);
    assert_eq!((g["state"].as_str(), g["kubernetes"]["claim"].as_str()), (Some("node-expanding"), Some("apps/db")), "{g:#}");
    let u = row(&listing, &untouched);
    assert_eq!((u["state"].as_str(), u["requested_bytes"].as_u64()), (Some("waiting-for-resizer"), Some(4 * GIB)), "{u:#}");
    let detail = swell(engine, &rig, &["volume", &grown], Some(&kubeconfig)).await;
    let text = String::from_utf8_lossy(&detail.stdout);
    println!("swell volume {grown}:\n{text}");
    assert!(detail.status.success(), "{}", String::from_utf8_lossy(&detail.stderr));
    for field in ["State:", "node expanding", "Node reported:", "1Gi", "FileSystemResizePending: Waiting for user", "pv-grown", "apps/db"] {
        assert!(text.contains(field), "{field} in\n{text}");
    }

    // An unknown volume is an error, not an empty answer.
    let unknown = format!("{}x", &grown[..grown.len() - 1]);
    let missing = swell(engine, &rig, &["volume", &unknown, "--kubernetes=never"], None).await;
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no such volume"), "{missing:?}");

    // The engine is back: the reconciler finishes the wish, and swell says so.
    rig.backend.set_grow_mode(GrowMode::Normal);
    rig.controller.reconciler.pass().await;
    let detail = json_of(&swell(engine, &rig, &["volume", &failed, "-o", "json"], None).await);
    assert_eq!((detail["volume"]["state"].as_str(), detail["volume"]["current_bytes"].as_u64()), (Some("settled"), Some(3 * GIB)), "{detail:#}");
}
