//! The cluster as the scenarios see it: `kubectl` (from PATH, with the
//! caller's KUBECONFIG) run without a shell and under a deadline, JSON read
//! back, waits that end, a namespace per scenario that goes away with it,
//! and what the kube lane adds when it runs them (its kubelet's log).

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use swell_e2e::host::{in_ci, note_skip};

/// One kubectl call's deadline; a hung API server must not hang the test.
const KUBECTL_DEADLINE: Duration = Duration::from_secs(90);

/// The outcome of one `kubectl` run.
#[derive(Debug)]
pub(crate) struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kubectl ARGS` (stdin: `input`), bounded by [`KUBECTL_DEADLINE`] through
/// coreutils' `timeout`, and returns what it said, success or not.
pub(crate) fn try_kubectl(args: &[&str], input: Option<&str>) -> Ran {
    try_kubectl_within(KUBECTL_DEADLINE, args, input)
}

/// [`try_kubectl`] bounded by `deadline` instead: for kubectl's own waits,
/// which must end by their `--timeout` and not by ours first.
fn try_kubectl_within(deadline: Duration, args: &[&str], input: Option<&str>) -> Ran {
    let secs = deadline.as_secs().to_string();
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", &secs, "kubectl"]).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run kubectl {}: {e}", args.join(" ")));
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("kubectl {} stdin: {e}", args.join(" ")));
    }
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")));
    Ran { ok: status.success(), stdout: String::from_utf8_lossy(&stdout).into_owned(), stderr: String::from_utf8_lossy(&stderr).into_owned() }
}

/// `kubectl ARGS`, which must succeed; its stdout.
pub(crate) fn kubectl(args: &[&str]) -> String {
    let ran = try_kubectl(args, None);
    assert!(ran.ok, "kubectl {} failed: {}{}", args.join(" "), ran.stderr, ran.stdout);
    ran.stdout
}

/// `kubectl apply -f -` of `objects` (JSON), which must succeed.
pub(crate) fn apply(objects: &Value) {
    let text = objects.to_string();
    let ran = try_kubectl(&["apply", "-f", "-"], Some(&text));
    assert!(ran.ok, "kubectl apply failed: {}\n{text}", ran.stderr);
}

/// `kubectl get ARGS -o json`, parsed; `None` when it is not there.
pub(crate) fn get(args: &[&str]) -> Option<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let ran = try_kubectl(&all, None);
    if !ran.ok {
        assert!(ran.stderr.contains("NotFound") || ran.stderr.contains("not found"), "kubectl {} failed: {}", all.join(" "), ran.stderr);
        return None;
    }
    Some(serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("kubectl {} printed no JSON: {e}", all.join(" "))))
}

/// A string at `pointer` (JSON pointer) of `value`, or "".
pub(crate) fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Polls `check` every `every` until it returns `Some`, at most `deadline`;
/// on expiry fails naming `what` and the last thing `check` saw.
pub(crate) fn wait_for<T>(what: &str, deadline: Duration, every: Duration, mut check: impl FnMut(&mut String) -> Option<T>) -> T {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(found) = check(&mut last) {
            return found;
        }
        assert!(started.elapsed() < deadline, "{what}: not after {deadline:?}; last seen: {last}");
        std::thread::sleep(every);
    }
}

/// The kube lane's extras, from its environment (`e2e/kube/lane.sh`).
pub(crate) struct Lane {
    /// The kubelet's log file, when the lane runs the kubelet.
    pub kubelet_log: Option<String>,
    /// A Ceph admin configuration for the RBD backend's test cluster.
    pub ceph_admin_conf: Option<String>,
    /// The lane's rendered overlays (README's commands use them).
    pub overlays: Option<String>,
    /// The lane's containerd socket (README's image import uses it).
    pub containerd: Option<String>,
    /// Where the lane keeps logs: the logs of pods a scenario deletes go there first.
    pub logs: Option<String>,
}

pub(crate) fn lane() -> &'static Lane {
    static LANE: OnceLock<Lane> = OnceLock::new();
    LANE.get_or_init(|| Lane {
        kubelet_log: std::env::var("SWELL_KUBELET_LOG").ok(),
        ceph_admin_conf: std::env::var("SWELL_KUBE_CEPH_ADMIN_CONF").ok(),
        overlays: std::env::var("SWELL_KUBE_OVERLAYS").ok(),
        containerd: std::env::var("SWELL_KUBE_CONTAINERD").ok(),
        logs: std::env::var("SWELL_KUBE_LOGS").ok(),
    })
}

/// Whether an API server answers; a test without one is skipped (a failure
/// under CI=true, where the lane must have started it).
pub(crate) fn reachable(test: &str) -> bool {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let up = UP.get_or_init(|| {
        if let Ok(reason) = std::env::var("SWELL_KUBE_SKIP") {
            return Err(reason);
        }
        let ran = try_kubectl(&["get", "--raw", "/readyz"], None);
        if ran.ok { Ok(()) } else { Err(format!("no Kubernetes API server answers ({})", ran.stderr.trim())) }
    });
    match up {
        Ok(()) => true,
        Err(reason) => {
            assert!(!in_ci(), "{test}: {reason}; under CI=true the kube lane must run it");
            note_skip(test, reason);
            false
        }
    }
}

/// A namespace of its own for one scenario, deleted (with everything in it,
/// so its volumes too) when the scenario ends, passed or failed.
pub(crate) struct Namespace {
    pub name: String,
}

impl Namespace {
    pub(crate) fn new(name: &str) -> Self {
        if get(&["namespace", name]).is_some() {
            kubectl(&["delete", "namespace", name, "--wait=true", "--timeout=180s"]);
        }
        kubectl(&["create", "namespace", name]);
        Namespace { name: name.to_owned() }
    }

    /// `kubectl -n NS ARGS`, which must succeed.
    pub(crate) fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        kubectl(&all)
    }

    /// `kubectl -n NS ARGS`, success or not.
    pub(crate) fn try_kubectl(&self, args: &[&str]) -> Ran {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        try_kubectl(&all, None)
    }

    /// `kubectl -n NS get ARGS -o json`.
    pub(crate) fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        get(&all)
    }

    /// Runs `command` in `pod`'s first container; stdout, which must succeed.
    pub(crate) fn exec(&self, pod: &str, command: &[&str]) -> String {
        let mut all = vec!["exec", pod, "--"];
        all.extend_from_slice(command);
        self.kubectl(&all)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let ran = try_kubectl(&["delete", "namespace", &self.name, "--wait=true", "--timeout=180s"], None);
        if !ran.ok && !std::thread::panicking() {
            panic!("namespace {} was not deleted: {}", self.name, ran.stderr);
        }
    }
}

/// `kubectl -n swell-system ARGS`.
pub(crate) fn system(args: &[&str]) -> String {
    let mut all = vec!["-n", "swell-system"];
    all.extend_from_slice(args);
    kubectl(&all)
}

/// Waits until `workload` in swell-system (`deployment/NAME`,
/// `daemonset/NAME`) has every replica ready, at most `deadline`; otherwise
/// fails with what a reader needs to see why: the pods, the namespace's
/// events (failed sandboxes, probe answers) and each pod's last log lines.
pub(crate) fn rollout(workload: &str, deadline: Duration) {
    let timeout = format!("--timeout={}s", deadline.as_secs());
    let ran = try_kubectl_within(deadline + Duration::from_secs(30), &["-n", "swell-system", "rollout", "status", workload, &timeout], None);
    if ran.ok {
        return;
    }
    let mut why = format!("kubectl rollout status {workload} failed: {}{}\n", ran.stderr, ran.stdout);
    let pods = try_kubectl(&["-n", "swell-system", "get", "pods", "-o", "wide"], None);
    why += &format!("--- pods\n{}{}", pods.stdout, pods.stderr);
    let events = try_kubectl(&["-n", "swell-system", "get", "events", "--sort-by=.lastTimestamp"], None);
    why += &format!("--- events\n{}{}", events.stdout, events.stderr);
    for pod in pods.stdout.lines().skip(1).filter_map(|line| line.split_whitespace().next()) {
        let logs = try_kubectl(&["-n", "swell-system", "logs", pod, "--all-containers", "--prefix", "--tail=15"], None);
        why += &format!("--- logs of {pod}\n{}{}", strip_ansi(&logs.stdout), logs.stderr);
    }
    panic!("{workload} not ready after {deadline:?}\n{why}");
}

/// Keeps the logs of Swell's pod `pod` in the lane's log directory before a
/// scenario deletes it: kubelet removes a deleted pod's logs.
pub(crate) fn keep_logs(pod: &str) {
    let Some(dir) = &lane().logs else { return };
    let ran = try_kubectl(&["-n", "swell-system", "logs", pod, "--all-containers", "--prefix"], None);
    let dir = std::path::Path::new(dir).join("pods");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{pod}.log")), strip_ansi(&ran.stdout));
    }
}

/// Runs `command` in the node plugin's `swell-node` container (privileged,
/// with the host's /dev and /sys, and the kubelet's mounts): host facts
/// without a shell on the host, on any cluster.
pub(crate) fn on_node(command: &[&str]) -> String {
    let mut all = vec!["exec", "ds/swell-node", "-c", "swell-node", "--"];
    all.extend_from_slice(command);
    system(&all)
}

/// Runs `command` in a controller pod's `swell-controller` container.
pub(crate) fn on_controller(command: &[&str]) -> String {
    let mut all = vec!["exec", "deploy/swell-controller", "-c", "swell-controller", "--"];
    all.extend_from_slice(command);
    system(&all)
}

/// Bytes of a Kubernetes quantity as Swell's claims use them ("2Gi", "1536Mi", "1000000").
pub(crate) fn bytes(quantity: &str) -> u64 {
    let units: [(&str, u64); 8] =
        [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("k", 1000), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000)];
    for (suffix, unit) in units {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return number.parse::<u64>().unwrap_or_else(|e| panic!("quantity {quantity:?}: {e}")) * unit;
        }
    }
    quantity.parse().unwrap_or_else(|e| panic!("quantity {quantity:?}: {e}"))
}

/// Lines of the node plugin's log since it started, which must be plain
/// text: a container's stderr is no terminal, so no colour codes.
pub(crate) fn node_log() -> String {
    let raw = system(&["logs", "ds/swell-node", "-c", "swell-node"]);
    assert!(!raw.contains('\u{1b}'), "swell-node's log holds terminal escape codes");
    raw
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
