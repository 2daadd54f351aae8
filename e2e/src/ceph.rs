//! A throwaway Ceph 16.2 cluster for tests, the demo and benchmarks: one mon, one mgr and three
//! bluestore OSDs on sparse files, all inside one directory. This is a thin wrapper over
//! `e2e/ceph/cluster.sh`, which does the work and bounds every wait; see that script for the
//! settings and why they matter.
//!
//! The calls block (they run the script to completion); from async code use
//! `tokio::task::spawn_blocking`. Dropping a [`TestCluster`] stops its daemons (best effort), so a
//! failing test leaves none behind; the directory stays for the logs unless [`TestCluster::purge`]
//! is called.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a harness step failed: which subcommand, and what the script said.
#[derive(Debug, thiserror::Error)]
pub enum CephHarnessError {
    #[error("could not run {script} {subcommand}: {source}")]
    Spawn {
        script: PathBuf,
        subcommand: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{script} {subcommand} failed ({status}): {stderr}")]
    Failed { script: PathBuf, subcommand: String, status: std::process::ExitStatus, stderr: String },
    #[error("cluster in {dir} has no usable {file}: {reason}")]
    BadClusterDir { dir: PathBuf, file: &'static str, reason: String },
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ceph")
}

/// Runs `bash <script> <args>` with no shell in between, returning stdout.
fn run_script(script: &str, args: &[&str]) -> Result<String, CephHarnessError> {
    let path = script_dir().join(script);
    let subcommand = args.join(" ");
    let output = Command::new("bash").arg(&path).args(args).stdin(Stdio::null()).output().map_err(|source| CephHarnessError::Spawn {
        script: path.clone(),
        subcommand: subcommand.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(CephHarnessError::Failed {
            script: path,
            subcommand,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cluster.sh SUBCOMMAND DIR ARGS` (see the script for the subcommands), returning stdout.
pub fn cluster_command(dir: &Path, subcommand: &str, args: &[&str]) -> Result<String, CephHarnessError> {
    let dir = dir.to_string_lossy();
    let mut all = vec![subcommand, &*dir];
    all.extend_from_slice(args);
    run_script("cluster.sh", &all)
}

/// The last `lines` lines of each daemon log of the cluster in `dir` (and
/// of the daemons' stdio), for a failure message: the directory itself may
/// be purged before anyone reads it.
pub fn log_tail(dir: &Path, lines: usize) -> String {
    let Ok(entries) = std::fs::read_dir(dir.join("log")) else { return format!("(no logs in {})", dir.join("log").display()) };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    let mut out = String::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| format!("unreadable: {e}"));
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        if tail.is_empty() {
            continue;
        }
        out.push_str(&format!("--- {} (last {} lines)\n", file.display(), tail.len()));
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Installs Debian's Ceph packages (mon, mgr, osd, CLIs, rbd-fuse, librbd/librados headers) if
/// they are missing. Idempotent; needs root and a package mirror.
pub fn install() -> Result<(), CephHarnessError> {
    run_script("install.sh", &[]).map(|_| ())
}

/// Where a test binary's cluster lives: `dir` and `port`, moved aside when
/// `SWELL_TEST_SLOT=N` (1-9) is set, so several checkouts can run their Ceph
/// tests on one machine at once (slot N: `dir-slotN`, `port + 100 N`; the
/// sites in the tests are thousands of ports apart).
pub fn site(dir: &str, port: u16) -> (PathBuf, u16) {
    match std::env::var("SWELL_TEST_SLOT").ok().and_then(|s| s.parse::<u16>().ok()).filter(|n| (1..=9).contains(n)) {
        Some(slot) => (PathBuf::from(format!("{dir}-slot{slot}")), port + 100 * slot),
        None => (PathBuf::from(dir), port),
    }
}

/// A running test cluster. Clients reach it with `-c <conf>` (which names the keyring), or with
/// `CEPH_CONF`/`CEPH_KEYRING`/`CEPH_MON_HOST` as written to `<dir>/env`.
#[derive(Debug)]
pub struct TestCluster {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub keyring: PathBuf,
    /// The monitor's address, e.g. `v2:127.0.0.1:16789`.
    pub mon_host: String,
    stopped: bool,
}

impl TestCluster {
    /// Creates a cluster in `dir` (empty or missing) with its monitor on 127.0.0.1:`port`, and
    /// waits until the `rbd` pool's PGs are all active+clean (~20 s). Daemons bind
    /// `port+1..=port+99`, so clusters side by side need ports at least 100 apart; stay below
    /// 32768 to keep clear of ephemeral ports. If `dir` holds a stopped cluster, it is restarted
    /// from disk (and keeps its original port). On failure, whatever started is stopped again.
    pub fn up(dir: &Path, port: u16) -> Result<Self, CephHarnessError> {
        let dir_arg = dir.to_string_lossy();
        let port_arg = port.to_string();
        if let Err(e) = run_script("cluster.sh", &["up", &dir_arg, &port_arg]) {
            let _ = run_script("cluster.sh", &["down", &dir_arg]);
            return Err(e);
        }
        let mut cluster = TestCluster {
            dir: dir.to_path_buf(),
            conf: dir.join("ceph.conf"),
            keyring: dir.join("ceph.client.admin.keyring"),
            mon_host: String::new(),
            stopped: false,
        };
        // From here on, dropping `cluster` on an error stops the daemons.
        cluster.mon_host = cluster.read_mon_host()?;
        Ok(cluster)
    }

    fn read_mon_host(&self) -> Result<String, CephHarnessError> {
        let bad = |reason: String| CephHarnessError::BadClusterDir { dir: self.dir.clone(), file: "env", reason };
        let env = std::fs::read_to_string(self.dir.join("env")).map_err(|e| bad(e.to_string()))?;
        env.lines()
            .find_map(|line| line.strip_prefix("export CEPH_MON_HOST="))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| bad("no CEPH_MON_HOST line".to_owned()))
    }

    fn cluster(&self, subcommand: &str, extra: &[&str]) -> Result<String, CephHarnessError> {
        cluster_command(&self.dir, subcommand, extra)
    }

    /// Leaves the daemons running when this value goes (whoever holds the
    /// directory stops them, e.g. [`purge_when_this_process_exits`]).
    pub fn leave_running(mut self) {
        self.stopped = true;
    }

    /// SIGKILLs osd.`n` (0..=2). Its peers see the refused connection and the monitor marks it
    /// down within a second or two.
    pub fn kill_osd(&self, n: u32) -> Result<(), CephHarnessError> {
        self.cluster("kill-osd", &[&n.to_string()]).map(|_| ())
    }

    /// Starts osd.`n` again from its data (returns once it is initialised, ~3 s).
    pub fn start_osd(&self, n: u32) -> Result<(), CephHarnessError> {
        self.cluster("start-osd", &[&n.to_string()]).map(|_| ())
    }

    /// Stops the monitor (SIGTERM) and starts it again from its data; returns once it answers.
    pub fn restart_mon(&self) -> Result<(), CephHarnessError> {
        self.cluster("stop-mon", &[])?;
        self.cluster("start-mon", &[]).map(|_| ())
    }

    /// Waits up to `secs` until every PG is active+clean. Right after a change the mgr may still
    /// report the old state for a moment, so wait for the change itself first where it matters.
    pub fn wait_clean(&self, secs: u32) -> Result<(), CephHarnessError> {
        self.cluster("wait-clean", &[&secs.to_string()]).map(|_| ())
    }

    /// Waits up to `secs` until some PG is settled inactive (e.g. undersized+peered after two
    /// OSDs are killed); transient peering does not count.
    pub fn wait_pgs_inactive(&self, secs: u32) -> Result<(), CephHarnessError> {
        self.cluster("wait-pgs-inactive", &[&secs.to_string()]).map(|_| ())
    }

    /// `ceph -s`, as text.
    pub fn status(&self) -> Result<String, CephHarnessError> {
        self.cluster("status", &[])
    }

    /// Unmounts rbd-fuse mounts of this cluster (and loop devices and filesystems on them),
    /// then stops every daemon. The directory stays, with the logs.
    pub fn down(mut self) -> Result<(), CephHarnessError> {
        self.stopped = true;
        self.cluster("down", &[]).map(|_| ())
    }

    /// Like [`down`](Self::down), then removes the directory.
    pub fn purge(mut self) -> Result<(), CephHarnessError> {
        self.stopped = true;
        self.cluster("down", &["--purge"]).map(|_| ())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if let Err(e) = self.cluster("down", &[]) {
            eprintln!("ceph test cluster in {}: teardown failed: {e}", self.dir.display());
        }
    }
}

/// The lock file of the cluster site `dir` (beside it: the directory is
/// purged). Whoever starts, uses or purges the cluster there holds it, so a
/// cluster is never started while the last one at that site is still
/// being taken down.
pub fn site_lock(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the site's lock for the rest of this process's life, waiting up to
/// `patience` while another process (a test binary, or a reaper purging its
/// cluster) holds it. Blocks.
pub fn lock_site(dir: &Path, patience: std::time::Duration) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    let until = std::time::Instant::now() + patience;
    let mut file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(site_lock(dir))?;
    loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < until => {
                file = back;
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(std::io::Error::other(format!("{} is still held after {patience:?} by another run on this site", site_lock(dir).display())));
            }
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

/// Purges the cluster in `dir` once this process has exited, however it
/// exits (a filtered or killed test run included): a detached watcher polls
/// for this process, then takes the site's lock and runs
/// `cluster.sh down DIR --purge`.
pub fn purge_when_this_process_exits(dir: &Path) {
    use std::os::unix::process::CommandExt;
    let reaper = r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; exec flock -w 600 "$4" bash "$2" down "$3" --purge"#;
    let spawned = Command::new("bash")
        .args(["-c", reaper, "swell-ceph-reaper"])
        .arg(std::process::id().to_string())
        .arg(script_dir().join("cluster.sh"))
        .arg(dir)
        .arg(site_lock(dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        eprintln!("could not start the cluster reaper: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_held_site_is_waited_for_only_until_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("cluster");
        let held = lock_site(&site, Duration::ZERO).unwrap();
        let asked = Instant::now();
        let err = lock_site(&site, Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("still held"), "{err}");
        assert!(asked.elapsed() >= Duration::from_millis(300), "waited until the deadline");
        drop(held);
        lock_site(&site, Duration::ZERO).expect("free once released");
    }
}
