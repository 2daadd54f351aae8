//! The rig of every Ceph RBD test: one throwaway cluster per test binary,
//! owned by the process. The first test to [`acquire`] it brings it up
//! (~25 s); tests then take turns on it; a reaper started with it purges it
//! when the test binary exits, however it exits (no test counts: a filtered
//! run, a panic or a kill leaves no daemons behind). All binaries share one
//! site (`/var/tmp/swell-rbd-e2e`, monitor on 24200, both moved aside by
//! `SWELL_TEST_SLOT`, see [`crate::ceph::site`]); the site's lock makes the
//! next binary wait until the last one's cluster is gone.
//!
//! A machine that cannot run a cluster (not root), or outside CI one without
//! Ceph installed, skips the tests; a cluster that does not come up fails
//! every test of the binary, with the cluster's log.
//! `SWELL_RBD_TEST_CLUSTER=DIR` uses a running cluster instead (left running).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::{NodeStageVolumeRequest, VolumeCapability};
use swell_backends::BackendConfig;
use swell_controller::ReconcilerConfig;
use swell_controller::{ControllerConfig, build};
use swell_local::LocalConfig;
use swell_node::NodeConfig;
use swell_rbd::test_util::OtherClient;
use swell_rbd::{RbdBackend, RbdConfig};
use swell_storage::CephAccess;
use swell_storage::rbd_attach::{self, AttachMode};
use swell_storage::{Backend, RbdVolume, VolumeId};
use tokio::sync::MutexGuard;
use tonic::transport::Channel;

use crate::ceph::{self, TestCluster};
use crate::harness::{ControllerUnderTest, NodeUnderTest};
use crate::host;
use crate::never_stuck::Engine;
use crate::requests;
use crate::sweep;

/// The cluster id in volume ids made by these tests.
pub const CLUSTER_ID: &str = "rig";
const DIR: &str = "/var/tmp/swell-rbd-e2e";
/// Below the ephemeral range (32768+) even with a slot's offset.
const PORT: u16 = 24200;
use swell_storage::units::MIB;

/// A reachable cluster.
#[derive(Debug)]
pub struct ClusterEnv {
    /// Its directory (config, keyrings, data, logs).
    pub dir: PathBuf,
    /// Its ceph.conf.
    pub conf: PathBuf,
    /// The `client.admin` keyring.
    pub keyring: PathBuf,
}

impl ClusterEnv {
    /// How to reach it as `client.admin`, under the tests' cluster id.
    pub fn access(&self) -> CephAccess {
        CephAccess::new(CLUSTER_ID, &self.conf, &self.keyring)
    }
}

enum BringUp {
    Ready(ClusterEnv),
    Skip(String),
    Failed(String),
}

static CLUSTER: OnceLock<BringUp> = OnceLock::new();
/// Held for the life of the process once this process owns the site.
static SITE: OnceLock<nix::fcntl::Flock<std::fs::File>> = OnceLock::new();
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bring_up(test: &str) -> BringUp {
    if let Some(dir) = std::env::var_os("SWELL_RBD_TEST_CLUSTER") {
        let dir = PathBuf::from(dir);
        return BringUp::Ready(ClusterEnv { conf: dir.join("ceph.conf"), keyring: dir.join("ceph.client.admin.keyring"), dir });
    }
    if !host::is_root() {
        return BringUp::Skip("needs root (Ceph daemons, a cluster under /var/tmp)".into());
    }
    if let Some(reason) = host::missing_program(test, &["ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "rbd", "rados", "flock"]) {
        return BringUp::Skip(reason);
    }
    let (dir, port) = ceph::site(DIR, PORT);
    // A purge takes seconds; a binary of another run on this slot, its whole run.
    match ceph::lock_site(&dir, Duration::from_secs(600)) {
        Ok(lock) => {
            let _ = SITE.set(lock);
        }
        Err(e) => return BringUp::Failed(format!("lock {}: {e}", ceph::site_lock(&dir).display())),
    }
    // A cluster left by a run killed before its reaper ran.
    if let Err(e) = ceph::cluster_command(&dir, "down", &["--purge"]) {
        return BringUp::Failed(format!("clearing the site {}: {e}", dir.display()));
    }
    ceph::purge_when_this_process_exits(&dir);
    let started = Instant::now();
    match TestCluster::up(&dir, port) {
        Ok(cluster) => {
            eprintln!("ceph test cluster up in {:.1} s at {}", started.elapsed().as_secs_f64(), dir.display());
            let env = ClusterEnv { dir: cluster.dir.clone(), conf: cluster.conf.clone(), keyring: cluster.keyring.clone() };
            cluster.leave_running();
            BringUp::Ready(env)
        }
        Err(e) => BringUp::Failed(format!("{}\n{}", e.to_string().replace('\n', " "), ceph::log_tail(&dir, 20))),
    }
}

/// One test's exclusive use of the cluster.
pub struct Session {
    /// The cluster.
    pub env: &'static ClusterEnv,
    _turn: MutexGuard<'static, ()>,
}

/// The cluster of this test binary, locked for `test`; `None` (after noting
/// the skip) when this machine cannot run one. Panics, with the cluster's
/// log, when the cluster does not come up.
pub async fn acquire(test: &str) -> Option<Session> {
    let turn = TURN.lock().await;
    match tokio::task::block_in_place(|| CLUSTER.get_or_init(|| bring_up(test))) {
        BringUp::Ready(env) => Some(Session { env, _turn: turn }),
        BringUp::Skip(reason) => {
            host::note_skip(test, reason);
            None
        }
        BringUp::Failed(report) => {
            // The daemons' logs once, with the first failure; the reason with every one.
            static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            let (reason, logs) = report.split_once('\n').unwrap_or((report, ""));
            if LOGGED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("{test}: the Ceph test cluster did not come up: {reason} (its logs are printed with the first failure)");
            }
            panic!("{test}: the Ceph test cluster did not come up: {reason}\n{logs}");
        }
    }
}

/// Runs `cluster.sh SUBCOMMAND DIR ARGS` on the cluster.
pub fn cluster(env: &ClusterEnv, subcommand: &str, args: &[&str]) -> Result<String, String> {
    ceph::cluster_command(&env.dir, subcommand, args).map_err(|e| e.to_string())
}

/// Runs a Ceph CLI (`rbd`, `ceph`, `rados`) as admin against the cluster, bounded to 60 s.
pub fn cli(env: &ClusterEnv, tool: &str, args: &[&str]) -> Result<String, String> {
    let out =
        Command::new("timeout").arg("60").arg(tool).arg("-c").arg(&env.conf).args(args).stdin(Stdio::null()).output().map_err(|e| format!("{tool}: {e}"))?;
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

/// Waits until `pool/image` has left the pool (a delete answers first and
/// moves the image to the trash in the background); panics after 30 s.
pub async fn wait_gone(env: &ClusterEnv, pool: &str, image: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::task::block_in_place(|| rbd_size(env, pool, image)).unwrap_or_else(|e| panic!("{e}")).is_some() {
        assert!(Instant::now() < deadline, "image {pool}/{image} still in the pool 30 s after its delete");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where the RBD volume `id` lives (pool and image).
pub fn location_of(id: &str) -> RbdVolume {
    let id: VolumeId = id.parse().unwrap_or_else(|e| panic!("volume id {id}: {e}"));
    RbdVolume::parse(&id).unwrap_or_else(|| panic!("{id} is not an RBD volume id"))
}

/// The driver's RBD settings for this cluster.
pub fn rbd_config(env: &ClusterEnv) -> RbdConfig {
    RbdConfig::with_access(env.access())
}

/// The flags that point a `swell-controller` process at `env`'s cluster,
/// with RBD as its default backend, named `instance` in the locks it holds
/// (a restarted process keeps its name and takes its locks back at once).
pub fn process_args(env: &ClusterEnv, instance: &str) -> Vec<String> {
    vec![
        format!("--rbd-cluster-id={CLUSTER_ID}"),
        format!("--rbd-ceph-conf={}", env.conf.display()),
        format!("--rbd-keyring={}", env.keyring.display()),
        "--default-backend=rbd".to_owned(),
        format!("--instance-name={instance}"),
    ]
}

/// A librados client of the test's own on `pool` (another client, as
/// ceph-csi or a person with the `rbd` CLI would be).
pub fn other_client(env: &ClusterEnv, pool: &str) -> OtherClient {
    OtherClient::connect(&env.access(), pool).unwrap_or_else(|e| panic!("connect to pool {pool} of the test cluster: {e}"))
}

/// The volume (pool `rbd`) the controller makes for the CO name `name`.
pub fn volume(name: &str) -> RbdVolume {
    RbdVolume::for_name(CLUSTER_ID, "rbd", name).unwrap_or_else(|e| panic!("volume {name}: {e}"))
}

/// A node configuration attaching this cluster's volumes as `user` with
/// `keyring`, its state under `root`.
pub fn node_config(env: &ClusterEnv, root: &Path, user: &str, keyring: &Path) -> NodeConfig {
    let mut config = NodeConfig::new("swell-rbd-test-node");
    config.state_dir = root.join("node");
    config.local_state_dir = root.join("local");
    config.rbd = Some(CephAccess { cluster_id: CLUSTER_ID.into(), ceph_conf: env.conf.clone(), keyring: keyring.to_owned(), user: user.into() });
    config
}

/// A Swell controller over the test cluster (RBD by default), on its own
/// socket, its reconciler running a pass a second.
pub struct Swell {
    /// Controller service client.
    pub client: ControllerClient<Channel>,
    /// The deadline of every backend call.
    pub backend_timeout: Duration,
    /// The served controller and its reconciler.
    pub controller: ControllerUnderTest,
    _dir: tempfile::TempDir,
}

impl Swell {
    /// Starts a controller whose default backend is RBD on `env`.
    pub async fn start(env: &ClusterEnv, op_timeout: Duration, backend_timeout: Duration) -> Swell {
        Self::start_with(RbdConfig { op_timeout, ..rbd_config(env) }, backend_timeout).await
    }

    /// Starts a controller whose default backend is RBD as `rbd` says.
    pub async fn start_with(rbd: RbdConfig, backend_timeout: Duration) -> Swell {
        crate::logs::log_when_asked();
        let dir = tempfile::Builder::new().prefix("swell-rbd-").tempdir_in("/var/tmp").expect("temp dir under /var/tmp");
        let config = ControllerConfig {
            driver_name: crate::harness::DRIVER_NAME.into(),
            backends: BackendConfig {
                local: LocalConfig::new(dir.path().join("local"), dir.path().join("controller")),
                rbd: Some(rbd),
                default_backend: "rbd".into(),
                call_deadline: backend_timeout,
            },
            // As in production, with a pass a second so background work
            // (deferred deletes) shows within a test's patience.
            reconciler: ReconcilerConfig { interval: Duration::from_secs(1), ..Default::default() },
        };
        let built = build(&config).expect("controller builds");
        let mut controller = ControllerUnderTest::serve(dir.path(), built).await.expect("serve the controller");
        controller.run_reconciler();
        Swell { client: controller.client.clone(), backend_timeout, controller, _dir: dir }
    }
}

/// The engine the never-stuck scenarios run on: this cluster's `rbd` pool.
pub struct Rbd(pub &'static ClusterEnv);

#[async_trait::async_trait]
impl Engine for Rbd {
    fn name(&self) -> &'static str {
        "rbd"
    }

    fn backend(&self, _root: &Path) -> Arc<dyn Backend> {
        Arc::new(RbdBackend::new(rbd_config(self.0)).expect("RBD backend"))
    }

    fn backend_deadline(&self) -> Duration {
        // Just above the RBD backend's own (2 x op timeout 3 s + 1 s).
        Duration::from_secs(8)
    }

    fn controller_args(&self, _root: &Path) -> Vec<String> {
        process_args(self.0, "never-stuck")
    }

    fn node_config(&self, root: &Path) -> NodeConfig {
        node_config(self.0, root, "admin", &self.0.keyring)
    }

    async fn size_outside_swell(&self, _root: &Path, id: &VolumeId) -> Option<u64> {
        let location = location_of(&id.to_string());
        let env = self.0;
        tokio::task::block_in_place(|| rbd_size(env, &location.pool, &location.image)).unwrap_or_else(|e| panic!("rbd info of {id}: {e}"))
    }

    fn stand_in_latency(&self) -> Duration {
        Duration::ZERO
    }

    fn min_parallel_speedup(&self) -> f64 {
        // Two cores also run three OSDs and a monitor: measured 2.8-4.6x
        // here; a global lock gives ~1.
        1.5
    }

    fn settle_bound(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// The Ceph user RBD node tests attach as (not admin: proves the user and
/// keyring reach every tool).
pub const NODE_USER: &str = "swell-node";

/// Names the attach mode the RBD node tests drive, as a StorageClass's
/// `mounter` (rbd, rbd-nbd, fuse). The VM lane runs them once per kernel
/// mode; unset, the tests leave the choice to the node's detection (rbd-fuse
/// on a host without the rbd and nbd modules).
pub const MOUNTER_ENV: &str = "SWELL_RBD_MOUNTER";

/// The mode under test and whether the tests name it to the node: the one
/// [`MOUNTER_ENV`] names (named), else the one this host supports (left to
/// the node's detection).
pub fn mode_under_test() -> (AttachMode, bool) {
    match std::env::var(MOUNTER_ENV) {
        Ok(value) => (AttachMode::from_mounter(&value).unwrap_or_else(|| panic!("{MOUNTER_ENV}={value:?}: not rbd, rbd-nbd or fuse")), true),
        Err(_) => (swell_node::rbd_attach_mode(), false),
    }
}

/// The StorageClass parameters (and so the volume context) the tests use:
/// the mounter when named, and map options a test can see in the mapping
/// (krbd keeps its default `ms_mode` beside them).
pub fn attach_parameters(mode: AttachMode, named: bool) -> HashMap<String, String> {
    let mut parameters = HashMap::new();
    if named {
        parameters.insert(rbd_attach::MOUNTER_KEY.to_owned(), mode.mounter().to_owned());
        let options = match mode {
            AttachMode::Krbd => Some(KRBD_TEST_OPTIONS),
            AttachMode::Nbd => Some(NBD_TEST_OPTIONS),
            AttachMode::FuseLoop => None,
        };
        if let Some(options) = options {
            parameters.insert(rbd_attach::MAP_OPTIONS_KEY.to_owned(), options.to_owned());
        }
    }
    parameters
}

/// krbd's test map options: visible in the mapping's sysfs `config_info`.
pub const KRBD_TEST_OPTIONS: &str = "krbd:queue_depth=64";
/// rbd-nbd's test map options: visible on the daemon's command line.
pub const NBD_TEST_OPTIONS: &str = "nbd:io-timeout=60,reattach-timeout=45";

/// One node test's exclusive use of the cluster, with a node service on it
/// attaching as [`NODE_USER`], and the images it created (removed on drop).
pub struct NodeRig {
    /// The cluster.
    pub env: &'static ClusterEnv,
    /// Node service client.
    pub node: NodeClient<Channel>,
    /// The rig's directory (node state, staging and target paths).
    pub dir: PathBuf,
    /// The node's configuration.
    pub config: NodeConfig,
    /// The attach mode the test drives.
    pub mode: AttachMode,
    /// The StorageClass parameters that choose it (empty: detection).
    pub parameters: HashMap<String, String>,
    images: Vec<String>,
    server: Option<NodeUnderTest>,
    _tmp: tempfile::TempDir,
    _session: Session,
}

/// The keyring of [`NODE_USER`], whose caps are `profile rbd` on pool
/// `rbd` (deploy/README.md's node user's), made once per cluster (the
/// `ceph` CLI takes seconds to start under emulation).
pub fn node_user_keyring(env: &ClusterEnv) -> PathBuf {
    let keyring = env.dir.join(format!("ceph.client.{NODE_USER}.keyring"));
    if !keyring.exists() {
        let keyring_arg = keyring.display().to_string();
        let user = format!("client.{NODE_USER}");
        let caps = ["mon", "profile rbd", "osd", "profile rbd pool=rbd", "mgr", "profile rbd pool=rbd"];
        let mut args = vec!["auth", "get-or-create", &user];
        args.extend(caps);
        args.extend(["-o", &keyring_arg]);
        cli(env, "ceph", &args).unwrap_or_else(|e| panic!("create the node's Ceph user: {e}"));
    }
    keyring
}

/// The cluster locked for `test`, with a fresh node service; `None` (after
/// noting the skip) when this machine cannot run it.
pub async fn node_rig(test: &str) -> Option<NodeRig> {
    if host::cannot_run(test, true, &["rbd-fuse", "fusermount", "mkfs.xfs", "xfs_growfs"]) {
        return None;
    }
    let session = acquire(test).await?;
    let env = session.env;
    let keyring = node_user_keyring(env);
    let tmp = tempfile::Builder::new().prefix("rbd-node-").tempdir_in("/var/tmp").expect("temp dir under /var/tmp");
    let dir = tmp.path().to_owned();
    let config = node_config(env, &dir, NODE_USER, &keyring);
    crate::logs::log_when_asked();
    let server = NodeUnderTest::serve(&dir.join("node.sock"), &config).await.expect("serve the node");
    let node = server.client.clone();
    let (mode, named) = mode_under_test();
    println!("{test}: RBD attach mode {mode} ({})", if named { "named by the StorageClass" } else { "the node's detection" });
    let parameters = attach_parameters(mode, named);
    Some(NodeRig { env, node, dir, config, mode, parameters, images: Vec::new(), server: Some(server), _tmp: tmp, _session: session })
}

impl NodeRig {
    /// Creates the image of the volume named `name` (a Swell image name, as
    /// the controller would) of `bytes` with the CLI; returns its volume id.
    pub fn image(&mut self, name: &str, bytes: u64) -> String {
        let volume = volume(name);
        let _ = cli(self.env, "rbd", &["rm", &volume.spec()]);
        cli(self.env, "rbd", &["create", &volume.spec(), "--size", &format!("{}M", bytes / MIB)]).unwrap_or_else(|e| panic!("{e}"));
        self.images.push(name.to_owned());
        volume.id().to_string()
    }

    /// Makes the image of the volume named `name` as the controller makes a
    /// restore: an RBD snapshot of `source`'s image, a format-2 clone of it,
    /// grown to `bytes`. Returns its volume id; removed (before its source)
    /// on drop.
    pub fn restore_of(&mut self, source: &str, name: &str, bytes: u64) -> String {
        let (source, volume) = (volume(source), volume(name));
        let snapshot = format!("{}@copy-{}", source.spec(), volume.image);
        let _ = cli(self.env, "rbd", &["rm", &volume.spec()]);
        for args in [
            &["snap", "create", &snapshot][..],
            &["clone", "--rbd-default-clone-format", "2", &snapshot, &volume.spec()],
            &["resize", &volume.spec(), "--size", &format!("{}M", bytes / MIB)],
        ] {
            cli(self.env, "rbd", args).unwrap_or_else(|e| panic!("{e}"));
        }
        self.images.insert(0, name.to_owned());
        volume.id().to_string()
    }

    /// Resizes the image of the volume named `name` with the CLI.
    pub fn resize(&self, name: &str, bytes: u64) {
        cli(self.env, "rbd", &["resize", &volume(name).spec(), "--size", &format!("{}M", bytes / MIB)]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A path under the rig's directory, as a string for requests.
    pub fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    /// NodeStageVolume with the volume context a StorageClass of the mode
    /// under test gives (the controller copies these parameters into it).
    pub fn stage(&self, id: &str, staging: &str, capability: VolumeCapability) -> NodeStageVolumeRequest {
        NodeStageVolumeRequest { volume_context: self.parameters.clone(), ..requests::stage(id, staging, capability) }
    }

    /// What attaches the image of volume `name` in the mode under test:
    /// rbd-fuse: its loop devices and rbd-fuse processes; krbd: its
    /// /dev/rbdN mappings; rbd-nbd: its /dev/nbdN mappings and rbd-nbd
    /// processes.
    pub fn attachments(&self, name: &str) -> Vec<String> {
        attachments(self.mode, &self.fuse_dir(name), &volume(name))
    }

    /// Where the node mounts rbd-fuse for the volume named `name`.
    pub fn fuse_dir(&self, name: &str) -> PathBuf {
        std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone()).join("node/rbd-fuse").join(CLUSTER_ID).join("rbd").join(volume(name).image)
    }

    /// What the node left behind for image `name`: FUSE mounts, loop
    /// devices, rbd-fuse processes, watchers; empty when nothing.
    pub fn leftovers(&self, name: &str) -> Vec<String> {
        let dir = self.fuse_dir(name);
        let mut found = Vec::new();
        if host::is_mount_point(&dir) {
            found.push(format!("mount at {}", dir.display()));
        }
        // Every mode, not only the one under test: nothing may be attached.
        for mode in AttachMode::ALL {
            found.extend(attachments(mode, &dir, &volume(name)));
        }
        match cli(self.env, "rbd", &["status", "--format", "json", &volume(name).spec()]) {
            Ok(json) if json.contains("\"watchers\":[]") => {}
            Ok(json) => found.push(format!("watchers: {}", json.trim())),
            Err(e) => found.push(format!("rbd status failed: {e}")),
        }
        found
    }

    /// Removes the image; fails while anything still watches it.
    pub fn remove(&mut self, name: &str) -> Result<(), String> {
        cli(self.env, "rbd", &["rm", &volume(name).spec()])?;
        self.images.retain(|i| i != name);
        Ok(())
    }
}

impl Drop for NodeRig {
    fn drop(&mut self) {
        drop(self.server.take());
        sweep::sweep(&self.dir);
        for name in &self.images {
            // A failed test may leave its image mapped.
            for (mode, program) in [(AttachMode::Krbd, "rbd"), (AttachMode::Nbd, "rbd-nbd")] {
                for device in mapped_devices(mode, &volume(name)) {
                    let _ = Command::new("timeout").args(["30", program, "unmap", &device]).stdin(Stdio::null()).output();
                }
            }
            // A restore's source keeps the snapshot it was cloned from.
            let _ = cli(self.env, "rbd", &["snap", "purge", &volume(name).spec()]);
            let _ = cli(self.env, "rbd", &["rm", &volume(name).spec()]);
        }
    }
}

/// What attaches `image` in `mode` (see [`NodeRig::attachments`]); `fuse_dir`
/// is where the node mounts rbd-fuse for it.
pub fn attachments(mode: AttachMode, fuse_dir: &Path, image: &RbdVolume) -> Vec<String> {
    match mode {
        AttachMode::FuseLoop => {
            let mut found: Vec<String> = sweep::loop_devices_under(fuse_dir).into_iter().map(|d| format!("loop device {d}")).collect();
            found.extend(sweep::rbd_fuse_pids_under(fuse_dir).into_iter().map(|p| format!("rbd-fuse pid {p}")));
            found
        }
        AttachMode::Krbd => mapped_devices(mode, image).into_iter().map(|d| format!("krbd mapping {d}")).collect(),
        AttachMode::Nbd => {
            let mut found: Vec<String> = mapped_devices(mode, image).into_iter().map(|d| format!("rbd-nbd mapping {d}")).collect();
            found.extend(rbd_nbd_pids(image).into_iter().map(|p| format!("rbd-nbd pid {p}")));
            found
        }
    }
}

/// The devices mapping `image` with krbd (`rbd showmapped`) or rbd-nbd
/// (`rbd-nbd list-mapped`), read here without the node's own parser.
pub fn mapped_devices(mode: AttachMode, image: &RbdVolume) -> Vec<String> {
    let key = match mode {
        AttachMode::Krbd => "name",
        AttachMode::Nbd => "image",
        AttachMode::FuseLoop => return Vec::new(),
    };
    mappings(mode)
        .iter()
        .filter(|e| e["pool"] == image.pool.as_str() && e[key] == image.image.as_str())
        .filter_map(|e| e["device"].as_str().map(str::to_owned))
        .collect()
}

/// Every krbd and rbd-nbd mapping on this machine, of any image.
pub fn all_mappings() -> Vec<String> {
    [AttachMode::Krbd, AttachMode::Nbd].into_iter().flat_map(mappings).map(|e| e.to_string()).collect()
}

/// The JSON listing of what `mode`'s mapper has mapped; empty where it is
/// not installed.
fn mappings(mode: AttachMode) -> Vec<serde_json::Value> {
    let (program, verb) = match mode {
        AttachMode::Krbd => ("rbd", "showmapped"),
        AttachMode::Nbd => ("rbd-nbd", "list-mapped"),
        AttachMode::FuseLoop => return Vec::new(),
    };
    if !host::on_path(program) {
        return Vec::new();
    }
    let out = Command::new("timeout")
        .args(["30", program, verb, "--format", "json"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} {verb}: {e}"));
    assert!(out.status.success(), "{program} {verb}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{program} {verb}: {e}: {text}"))
}

/// rbd-nbd processes serving `image` (its spec on their command line).
pub fn rbd_nbd_pids(image: &RbdVolume) -> Vec<u32> {
    processes_with("rbd-nbd", &image.spec()).into_iter().map(|(pid, _)| pid).collect()
}

/// Processes whose program ends with `program` and that have `arg` on
/// their command line: (pid, command line).
pub fn processes_with(program: &str, arg: &str) -> Vec<(u32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            (args.first().is_some_and(|a| a.ends_with(program)) && args.iter().any(|a| a == arg)).then_some((pid, args))
        })
        .collect()
}

/// The options a krbd mapping was made with, from sysfs (`config_info`).
pub fn krbd_config_info(device: &str) -> String {
    let id = device.trim_start_matches("/dev/rbd");
    std::fs::read_to_string(format!("/sys/bus/rbd/devices/{id}/config_info")).unwrap_or_else(|e| panic!("config_info of {device}: {e}"))
}
