//! README's commands, run as written: the code blocks of "Deploy on
//! Kubernetes" (README.md) and of "Without cert-manager"
//! (deploy/webhook/README.md), each a bash script, with only the changes
//! listed below (README says the same). Each change must match its README
//! text exactly once, so a README edit that drops or reshapes a command
//! fails here until both agree.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::*;

/// What the kube lane does differently from a reader, and why.
struct Change {
    written: &'static str,
    run: &'static str,
}

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e sits in the workspace").to_owned()
}

/// The indented code blocks of the section that starts at `heading`.
fn blocks(file: &str, heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let start = text.find(heading).unwrap_or_else(|| panic!("{file} has no {heading:?}"));
    let level = heading.chars().take_while(|c| *c == '#').count();
    let body = &text[start + heading.len()..];
    let end = body.lines().position(|l| l.starts_with('#') && l.chars().take_while(|c| *c == '#').count() <= level).unwrap_or(usize::MAX);
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in body.lines().take(end) {
        if let Some(code) = line.strip_prefix("    ") {
            current.get_or_insert_with(String::new).push_str(&format!("{code}\n"));
        } else if line.trim().is_empty() {
            if let Some(block) = current.as_mut() {
                block.push('\n');
            }
        } else if let Some(block) = current.take() {
            blocks.push(block.trim_end().to_owned() + "\n");
        }
    }
    blocks.extend(current.map(|b| b.trim_end().to_owned() + "\n"));
    blocks
}

/// `blocks` with each change made exactly once in all of them together.
fn changed(mut blocks: Vec<String>, changes: &[Change]) -> Vec<String> {
    for change in changes {
        let count: usize = blocks.iter().map(|b| b.matches(change.written).count()).sum();
        assert_eq!(count, 1, "README text {:?} occurs {count} times, not once: README and the kube lane disagree", change.written);
        for block in &mut blocks {
            *block = block.replace(change.written, change.run);
        }
    }
    blocks
}

/// Runs `script` with bash in `dir`, with the lane's environment; must succeed.
fn run(script: &str, dir: &Path) -> String {
    let started = Instant::now();
    let out = Command::new("timeout").args(["600", "bash", "-euo", "pipefail", "-c", script]).current_dir(dir).output().unwrap_or_else(|e| panic!("bash: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "README's commands failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}", String::from_utf8_lossy(&out.stderr));
    println!("ran in {} ms:\n{script}", started.elapsed().as_millis());
    stdout
}

/// A scratch directory holding `target` → the repository's, where README's
/// relative paths (target/image/swell) resolve and its files (swell.tar) land.
fn scratch(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(name).tempdir().expect("scratch dir");
    std::os::unix::fs::symlink(root().join("target"), dir.path().join("target")).expect("link target");
    dir
}

fn lane_value(value: &Option<String>, name: &str) -> String {
    value.clone().unwrap_or_else(|| panic!("{name} is not set: README's commands run only in the kube lane (e2e/kube/lane.sh)"))
}

#[test]
fn deploy_on_kubernetes_runs_as_written() {
    if !reachable("readme::deploy_on_kubernetes_runs_as_written") {
        return;
    }
    // The changed commands read these from the environment.
    lane_value(&lane().overlays, "SWELL_KUBE_OVERLAYS");
    lane_value(&lane().containerd, "SWELL_KUBE_CONTAINERD");
    let changes = [
        // The lane builds the image once, before (dev profile; .ci/run).
        Change { written: "deploy/image/build.sh            # OCI layout in target/image/swell, checked, size printed", run: "test -d target/image/swell" },
        // No kind or k3s: its own containerd, in the namespace the kubelet reads.
        Change {
            written: "kind load image-archive swell.tar            # or: k3s ctr images import swell.tar",
            run: "ctr -a \"$SWELL_KUBE_CONTAINERD\" -n k8s.io images import swell.tar",
        },
        // The overlay with this machine's patches (e2e/kube/README.md lists them).
        Change { written: "kubectl apply -k deploy/overlays/local", run: "kubectl apply -k \"$SWELL_KUBE_OVERLAYS/local\"" },
        // No registry: busybox is preloaded, and `:latest` would always be pulled.
        Change { written: "image: busybox,", run: "image: busybox, imagePullPolicy: Never," },
    ];
    let blocks = changed(blocks("README.md", "## Deploy on Kubernetes"), &changes);
    let dir = scratch("swell-readme-");
    let mut example_header = None;
    for block in &blocks {
        // A block of `$ command` lines and their output: run the commands,
        // and compare the output's header with the example's.
        if block.starts_with("$ ") {
            for (i, line) in block.lines().enumerate() {
                let Some(command) = line.strip_prefix("$ ") else { continue };
                let out = run(command, dir.path());
                let example = block.lines().nth(i + 1).unwrap_or_default();
                example_header = Some((example.split_whitespace().collect::<Vec<_>>().join(" "), out));
            }
            continue;
        }
        run(block, dir.path());
        if block.contains("apply -k") {
            // A reader waits for the pods too; the lane does so before going on.
            rollout("deployment/swell-controller", Duration::from_secs(180));
            rollout("daemonset/swell-node", Duration::from_secs(180));
        }
        if block.contains("kind: Pod") {
            wait_for("pod app Running", Duration::from_secs(180), Duration::from_millis(500), |last| {
                *last = kubectl(&["get", "pod", "app", "-o", "jsonpath={.status.phase}"]);
                (last == "Running").then_some(())
            });
        }
        if block.contains("kubectl patch pvc data") {
            // "`kubectl get pvc data` shows 20Gi once the filesystem has grown."
            wait_for("kubectl get pvc data showing 20Gi", Duration::from_secs(150), Duration::from_millis(500), |last| {
                *last = kubectl(&["get", "pvc", "data"]);
                last.lines().nth(1).is_some_and(|row| row.split_whitespace().nth(3) == Some("20Gi")).then_some(())
            });
        }
    }
    let (example, out) = example_header.expect("README shows `swell volumes` with its output");
    let header = out.lines().next().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(header, example, "swell volumes prints other columns than README shows");
    let row = out.lines().find(|l| l.contains("default/data")).unwrap_or_else(|| panic!("swell volumes shows no default/data:\n{out}"));
    assert!(["waiting for resizer", "growing", "node expanding", "settled"].iter().any(|s| row.contains(s)), "a state README does not name: {row}");
    // README's walk-through leaves nothing behind for the scenarios.
    kubectl(&["delete", "pod", "app", "--grace-period=1", "--wait=true"]);
    kubectl(&["delete", "pvc", "data", "--wait=true"]);
}

#[test]
fn webhook_without_cert_manager_runs_as_written() {
    if !reachable("readme::webhook_without_cert_manager_runs_as_written") {
        return;
    }
    lane_value(&lane().overlays, "SWELL_KUBE_OVERLAYS");
    let changes = [
        // The lane's overlay of deploy/webhook: the same files without
        // cert-manager's, with this machine's patches (e2e/kube/README.md).
        Change {
            written: "kubectl apply -f rbac.yaml -f deployment.yaml -f service.yaml -f validatingwebhookconfiguration.yaml",
            run: "kubectl apply -k \"$SWELL_KUBE_OVERLAYS/webhook\"",
        },
    ];
    let blocks = changed(blocks("deploy/webhook/README.md", "## Without cert-manager"), &changes);
    let dir = scratch("swell-webhook-readme-");
    for block in &blocks {
        run(block, dir.path());
    }
    rollout("deployment/swell-webhook", Duration::from_secs(180));
    let config = get(&["validatingwebhookconfiguration", "swell-resize"]).expect("the webhook's configuration");
    assert!(!text(&config, "/webhooks/0/clientConfig/caBundle").is_empty(), "no caBundle in the configuration");
}
