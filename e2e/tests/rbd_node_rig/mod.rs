//! The rig of the RBD node tests: one throwaway Ceph cluster per test binary
//! (bring-up ~20 s) with a non-admin Ceph user for the node, tests
//! serialised on it by a lock, a Swell node service per test on its own Unix
//! socket with `NodeConfig.rbd` set, and the `rbd` CLI for checking what the
//! node did. The cluster is torn down (`down --purge`) by the last test to
//! finish, and by a reaper process waiting for this binary to exit, so a
//! filtered run or a panic leaves no daemons behind.
//!
//! Leftovers are checked from sysfs, mountinfo and /proc only: `losetup -j`
//! stats every loop device's backing file and hangs for good on a loop
//! device over another test's hung rbd-fuse.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use csi_proto::v1::node_client::NodeClient;
use swell_e2e::ceph::TestCluster;
use swell_e2e::harness::NodeUnderTest;
use swell_e2e::host;
use swell_e2e::sweep::{self, sweep};
use swell_node::{NodeConfig, RbdNodeConfig};
use tokio::sync::MutexGuard;
use tonic::transport::Channel;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// The cluster id in these tests' volume ids.
pub const CLUSTER_ID: &str = "node-rig";
/// The Ceph user the node runs as (not admin: proves --id/--keyring reach every tool).
pub const USER: &str = "swell-node";
const DIR: &str = "/var/tmp/rbd-node-e2e";
// Below the ephemeral range (32768+), 100 ports clear of the other test clusters.
const PORT: u16 = 24200;

pub struct ClusterEnv {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub keyring: PathBuf,
    pub user_keyring: PathBuf,
}

static ENV: OnceLock<Result<ClusterEnv, String>> = OnceLock::new();
static OWNED: Mutex<Option<TestCluster>> = Mutex::new(None);
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static FINISHED: AtomicUsize = AtomicUsize::new(0);
/// Where the cluster of this binary lives: the first `rig_on` decides.
static SITE: OnceLock<(&'static str, u16)> = OnceLock::new();

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ceph/cluster.sh")
}

fn bring_up() -> Result<ClusterEnv, String> {
    if !host::is_root() {
        return Err("needs root (Ceph daemons, FUSE, loop devices, mounts)".into());
    }
    for tool in ["ceph-mon", "ceph-osd", "rbd", "rbd-fuse", "fusermount", "mkfs.xfs"] {
        if Command::new("which").arg(tool).stdout(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true) {
            return Err(format!("{tool} is not installed (run e2e/ceph/install.sh)"));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing".into());
    }
    let &(dir_name, port) = SITE.get_or_init(|| (DIR, PORT));
    let (dir, port) = swell_e2e::ceph::site(dir_name, port);
    // A cluster left by an earlier run that was killed before its reaper ran.
    let _ = Command::new("bash").arg(script()).arg("down").arg(&dir).arg("--purge").output();
    swell_e2e::ceph::purge_when_this_process_exits(&dir);
    let started = Instant::now();
    let cluster = TestCluster::up(&dir, port).map_err(|e| format!("cluster bring-up failed: {e}"))?;
    eprintln!("ceph test cluster up in {:.1} s", started.elapsed().as_secs_f64());
    let user_keyring = dir.join(format!("ceph.client.{USER}.keyring"));
    let caps = ["mon", "profile rbd", "osd", "profile rbd pool=rbd", "mgr", "profile rbd pool=rbd"];
    let mut args = vec!["auth", "get-or-create", "client.swell-node"];
    args.extend(caps);
    let user_keyring_arg = user_keyring.display().to_string();
    args.extend(["-o", &user_keyring_arg]);
    let env = ClusterEnv { dir: cluster.dir.clone(), conf: cluster.conf.clone(), keyring: cluster.keyring.clone(), user_keyring };
    *OWNED.lock().unwrap_or_else(|p| p.into_inner()) = Some(cluster);
    cli(&env, "ceph", &args)?;
    Ok(env)
}

/// Runs a Ceph CLI (`rbd`, `ceph`) as admin against the cluster, bounded to 60 s.
pub fn cli(env: &ClusterEnv, tool: &str, args: &[&str]) -> Result<String, String> {
    let out =
        Command::new("timeout").arg("60").arg(tool).arg("-c").arg(&env.conf).args(args).stdin(Stdio::null()).output().map_err(|e| format!("{tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{tool} {args:?} ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The RBD volume (pool `rbd`) the controller would make for `name`.
pub fn volume(name: &str) -> swell_storage::RbdVolume {
    swell_storage::RbdVolume::for_name(CLUSTER_ID, "rbd", name).unwrap()
}

/// One test's exclusive use of the cluster plus a node service on it.
pub struct Rig {
    pub env: &'static ClusterEnv,
    pub node: NodeClient<Channel>,
    pub dir: PathBuf,
    pub config: NodeConfig,
    images: Vec<String>,
    server: Option<NodeUnderTest>,
    total_tests: usize,
    _tmp: tempfile::TempDir,
    _lock: MutexGuard<'static, ()>,
}

/// The shared cluster locked for `test`, with a fresh node service; `None`
/// (after noting the skip) when no cluster can run here. `total_tests` is
/// the number of tests in the binary (the last one tears the cluster down).
pub async fn rig(test: &str, total_tests: usize) -> Option<Rig> {
    rig_on(test, total_tests, DIR, PORT).await
}

/// Like [`rig`], with the cluster in `dir` and its monitor on `port`
/// (daemons on `port+1..=port+99`), for a second binary on this rig: two
/// binaries on one site would meet (the first one's reaper purges the
/// directory while the next one brings its cluster up there).
pub async fn rig_on(test: &str, total_tests: usize, site_dir: &'static str, port: u16) -> Option<Rig> {
    let _ = SITE.set((site_dir, port));
    let lock = LOCK.lock().await;
    let env = match tokio::task::block_in_place(|| ENV.get_or_init(bring_up)) {
        Ok(env) => env,
        Err(reason) => {
            FINISHED.fetch_add(1, Ordering::SeqCst);
            host::note_skip(test, reason);
            return None;
        }
    };
    let tmp = tempfile::Builder::new().prefix("rbd-node-").tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path().to_owned();
    let mut config = NodeConfig::new("node-rbd-test");
    config.state_dir = dir.join("node");
    config.local_state_dir = dir.join("local");
    config.rbd = Some(RbdNodeConfig { cluster_id: CLUSTER_ID.into(), ceph_conf: env.conf.clone(), keyring: env.user_keyring.clone(), user: USER.into() });
    let server = NodeUnderTest::serve(&dir.join("node.sock"), &config).await.unwrap();
    let node = server.client.clone();
    Some(Rig { env, node, dir, config, images: Vec::new(), server: Some(server), total_tests, _tmp: tmp, _lock: lock })
}

impl Rig {
    /// Creates the image of the volume named `name` (a Swell image name, as
    /// the controller would) of `bytes` with the CLI; returns its volume id.
    pub fn image(&mut self, name: &str, bytes: u64) -> String {
        let volume = volume(name);
        let _ = cli(self.env, "rbd", &["rm", &volume.spec()]);
        cli(self.env, "rbd", &["create", &volume.spec(), "--size", &format!("{}M", bytes / MIB)]).unwrap();
        self.images.push(name.to_owned());
        volume.id().to_string()
    }

    pub fn resize(&self, name: &str, bytes: u64) {
        cli(self.env, "rbd", &["resize", &volume(name).spec(), "--size", &format!("{}M", bytes / MIB)]).unwrap();
    }

    /// A path under the rig's directory, as a string for requests.
    pub fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    /// Where the node mounts rbd-fuse for `name`.
    pub fn fuse_dir(&self, name: &str) -> PathBuf {
        std::fs::canonicalize(&self.dir).unwrap().join("node/rbd-fuse").join(CLUSTER_ID).join("rbd").join(volume(name).image)
    }

    /// What the node left behind for image `name`: FUSE mounts, loop
    /// devices, rbd-fuse processes, watchers; empty when nothing.
    pub fn leftovers(&self, name: &str) -> Vec<String> {
        let dir = self.fuse_dir(name);
        let mut found = Vec::new();
        if host::is_mount_point(&dir) {
            found.push(format!("mount at {}", dir.display()));
        }
        for device in sweep::loop_devices_under(&dir) {
            found.push(format!("loop device {device}"));
        }
        for pid in sweep::rbd_fuse_pids_under(&dir) {
            found.push(format!("rbd-fuse pid {pid}"));
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

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.server.take());
        sweep(&self.dir);
        for image in &self.images {
            let _ = cli(self.env, "rbd", &["rm", &volume(image).spec()]);
        }
        if FINISHED.fetch_add(1, Ordering::SeqCst) + 1 == self.total_tests
            && let Some(cluster) = OWNED.lock().unwrap_or_else(|p| p.into_inner()).take()
            && let Err(e) = cluster.purge()
        {
            eprintln!("ceph test cluster teardown failed: {e}");
        }
    }
}

/// Runs `cluster.sh ARGS`, panicking with its stderr on failure.
pub fn cluster_script(args: &[&str]) {
    let out = Command::new("bash").arg(script()).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "cluster.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
