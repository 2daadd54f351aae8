//! The rig of the RBD controller tests: one throwaway Ceph cluster per test
//! binary (bring-up takes ~20 s), tests serialised on it by a lock, a Swell
//! controller per test served on its own Unix socket, and the `rbd`/`ceph`
//! CLIs for checking what Swell did.
//!
//! The cluster is torn down (`down --purge`) by the last test to finish, and
//! also by a reaper process that waits for this test binary to exit, so a
//! filtered run or a panic leaves no daemons behind.
//! `SWELL_RBD_TEST_CLUSTER=DIR` reuses a running cluster instead (left running).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use csi_proto::v1::controller_client::ControllerClient;
use swell_controller::rbd::RbdConfig;
use swell_controller::reconciler::ReconcilerConfig;
use swell_controller::server::{BackendOptions, ControllerConfig, build_with};
use swell_e2e::ceph::TestCluster;
use swell_e2e::host;
use tokio::sync::{MutexGuard, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The cluster id in volume ids made by these tests.
pub const CLUSTER_ID: &str = "rig";
const DIR: &str = "/var/tmp/rbd-backend-e2e";
const PORT: u16 = 37300;

/// A reachable cluster.
pub struct ClusterEnv {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub keyring: PathBuf,
}

static ENV: OnceLock<Result<ClusterEnv, String>> = OnceLock::new();
static OWNED: Mutex<Option<TestCluster>> = Mutex::new(None);
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static FINISHED: AtomicUsize = AtomicUsize::new(0);
/// Where the cluster of this binary lives: the first `acquire_on` decides.
static SITE: OnceLock<(&'static str, u16)> = OnceLock::new();

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ceph/cluster.sh")
}

fn bring_up() -> Result<ClusterEnv, String> {
    let &(dir_name, port) = SITE.get_or_init(|| (DIR, PORT));
    if let Some(dir) = std::env::var_os("SWELL_RBD_TEST_CLUSTER") {
        let dir = PathBuf::from(dir);
        return Ok(ClusterEnv { conf: dir.join("ceph.conf"), keyring: dir.join("ceph.client.admin.keyring"), dir });
    }
    if !host::is_root() {
        return Err("needs root (Ceph daemons, /var/tmp cluster)".into());
    }
    for tool in ["ceph-mon", "ceph-osd", "rbd"] {
        if Command::new("which").arg(tool).stdout(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true) {
            return Err(format!("{tool} is not installed (run e2e/ceph/install.sh)"));
        }
    }
    let (dir, port) = swell_e2e::ceph::site(dir_name, port);
    // A cluster left by an earlier run that was killed before its reaper ran.
    let _ = Command::new("bash").arg(script()).arg("down").arg(&dir).arg("--purge").output();
    swell_e2e::ceph::purge_when_this_process_exits(&dir);
    let started = std::time::Instant::now();
    let cluster = TestCluster::up(&dir, port).map_err(|e| format!("cluster bring-up failed: {e}"))?;
    eprintln!("ceph test cluster up in {:.1} s", started.elapsed().as_secs_f64());
    let env = ClusterEnv { dir: cluster.dir.clone(), conf: cluster.conf.clone(), keyring: cluster.keyring.clone() };
    *OWNED.lock().unwrap_or_else(|p| p.into_inner()) = Some(cluster);
    Ok(env)
}

/// One test's exclusive use of the cluster.
pub struct Session {
    pub env: &'static ClusterEnv,
    total_tests: usize,
    _lock: MutexGuard<'static, ()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if FINISHED.fetch_add(1, Ordering::SeqCst) + 1 == self.total_tests
            && let Some(cluster) = OWNED.lock().unwrap_or_else(|p| p.into_inner()).take()
            && let Err(e) = cluster.purge()
        {
            eprintln!("ceph test cluster teardown failed: {e}");
        }
    }
}

/// The shared cluster, locked for `test`; `None` (after noting the skip) when
/// no cluster can run here. `total_tests` is the number of tests in the binary.
pub async fn acquire(test: &str, total_tests: usize) -> Option<Session> {
    acquire_on(test, total_tests, DIR, PORT).await
}

/// Like [`acquire`], with the cluster in `dir` and its monitor on `port`
/// (daemons on `port+1..=port+99`), for binaries that must not meet another
/// binary's cluster. Every test of a binary should pass the same site.
pub async fn acquire_on(test: &str, total_tests: usize, dir: &'static str, port: u16) -> Option<Session> {
    let _ = SITE.set((dir, port));
    let lock = LOCK.lock().await;
    let env = tokio::task::block_in_place(|| ENV.get_or_init(bring_up));
    match env {
        Ok(env) => Some(Session { env, total_tests, _lock: lock }),
        Err(reason) => {
            FINISHED.fetch_add(1, Ordering::SeqCst);
            host::note_skip(test, reason);
            None
        }
    }
}

/// Runs `cluster.sh SUBCOMMAND DIR ARGS`.
pub fn cluster(env: &ClusterEnv, subcommand: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(script())
        .arg(subcommand)
        .arg(&env.dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cluster.sh {subcommand}: {e}"))?;
    if !out.status.success() {
        return Err(format!("cluster.sh {subcommand} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a Ceph CLI (`rbd`, `ceph`) against the cluster, bounded to 30 s.
pub fn cli(env: &ClusterEnv, tool: &str, args: &[&str]) -> Result<String, String> {
    let out =
        Command::new("timeout").arg("30").arg(tool).arg("-c").arg(&env.conf).args(args).stdin(Stdio::null()).output().map_err(|e| format!("{tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{tool} {args:?} ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The image's size as `rbd info` reports it; `None` when it does not exist.
pub fn rbd_size(env: &ClusterEnv, pool: &str, image: &str) -> Result<Option<u64>, String> {
    match cli(env, "rbd", &["info", "--format", "json", &format!("{pool}/{image}")]) {
        Ok(json) => {
            let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("rbd info output: {e}"))?;
            v["size"].as_u64().map(Some).ok_or_else(|| format!("rbd info without size: {json}"))
        }
        Err(e) if e.contains("No such file") || e.contains("error opening image") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until the image of `id` has left the pool (deletes answer first
/// and move the image to the trash in the background); panics after 30 s.
pub async fn wait_gone(env: &ClusterEnv, pool: &str, image: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rbd_size(env, pool, image).expect("rbd info").is_some() {
        assert!(std::time::Instant::now() < deadline, "image {pool}/{image} still in the pool 30 s after its delete");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type Server = (oneshot::Sender<()>, JoinHandle<Result<(), csi_endpoint::EndpointError>>);

/// A Swell controller over the test cluster, on its own socket.
pub struct Swell {
    pub client: ControllerClient<Channel>,
    pub backend_timeout: Duration,
    _dir: tempfile::TempDir,
    server: Option<Server>,
    reconciler: JoinHandle<()>,
}

impl Swell {
    /// Starts a controller whose default backend is RBD on `env`.
    pub async fn start(env: &ClusterEnv, op_timeout: Duration, backend_timeout: Duration) -> Swell {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ControllerConfig {
            driver_name: "swell.csi.storage".into(),
            state_dir: dir.path().join("controller"),
            local_state_dir: dir.path().join("local"),
            local_capacity_bytes: None,
            backend_timeout,
            // As in production, with a pass a second so background work
            // (deferred deletes) shows within a test's patience.
            reconciler: ReconcilerConfig { interval: Duration::from_secs(1), ..Default::default() },
        };
        let mut rbd = RbdConfig::new(CLUSTER_ID, &env.conf, &env.keyring);
        rbd.op_timeout = op_timeout;
        let options = BackendOptions { rbd: Some(rbd), default_backend: Some("rbd".into()) };
        let controller = build_with(&config, &options).expect("controller builds");
        let reconciler = tokio::spawn(controller.reconciler.clone().run(std::future::pending()));
        let socket = dir.path().join("controller.sock");
        let (stop, stopped) = oneshot::channel::<()>();
        let serve_socket = socket.clone();
        let task = tokio::spawn(async move {
            csi_endpoint::serve(&serve_socket, controller.router, async {
                let _ = stopped.await;
            })
            .await
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(std::time::Instant::now() < deadline, "controller socket did not appear");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let channel = csi_endpoint::connect(&socket).await.expect("connect to controller");
        Swell { client: ControllerClient::new(channel), backend_timeout, _dir: dir, server: Some((stop, task)), reconciler }
    }
}

impl Drop for Swell {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            task.abort();
        }
        self.reconciler.abort();
    }
}
