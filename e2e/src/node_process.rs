//! `swell-node` as a real process, for tests that kill it: SIGKILL to its
//! whole process group (the node and the tools it is running, as a
//! container kill takes them; daemons that detached, such as rbd-fuse,
//! survive as they would beside a restarted container), then a restart over
//! the same state directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use csi_proto::v1::node_client::NodeClient;
use swell_node::NodeConfig;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::harness::HarnessError;
use crate::process::{built_binary, stderr_to, wait_until_serving};

/// A running `swell-node` process.
pub struct NodeProcess {
    child: Child,
    binary: PathBuf,
    args: Vec<OsString>,
    log: Option<PathBuf>,
    /// The CSI socket it serves.
    pub socket: PathBuf,
}

impl NodeProcess {
    /// Starts a node serving `config` on `socket`, with `env` added to its
    /// environment (e.g. a PATH with stand-ins for tools); waits until the
    /// socket answers.
    pub async fn start(config: &NodeConfig, socket: PathBuf, env: &[(&str, OsString)]) -> Result<Self, HarnessError> {
        Self::start_with(config, socket, env, &[], None).await
    }

    /// Like [`start`](Self::start), with `extra_args` on its command line
    /// and its stderr (the log) appended to `log` when given.
    pub async fn start_with(
        config: &NodeConfig,
        socket: PathBuf,
        env: &[(&str, OsString)],
        extra_args: &[String],
        log: Option<PathBuf>,
    ) -> Result<Self, HarnessError> {
        let mut args: Vec<OsString> = vec![
            format!("--endpoint=unix://{}", socket.display()).into(),
            format!("--node-id={}", config.node_id).into(),
            format!("--state-dir={}", config.state_dir.display()).into(),
            format!("--local-state-dir={}", config.local_state_dir.display()).into(),
            // Tests keep their paths under temporary directories.
            format!("--kubelet-dir={}", config.kubelet_dir.as_deref().unwrap_or(std::path::Path::new("/")).display()).into(),
            // Off (0) unless the test's configuration turns it on, as in process.
            format!("--grow-on-backend-change-ms={}", config.grow_on_backend_change.map_or(0, |every| every.as_millis())).into(),
        ];
        if let Some(rbd) = &config.rbd {
            args.push(format!("--rbd-cluster-id={}", rbd.cluster_id).into());
            args.push(format!("--rbd-ceph-conf={}", rbd.ceph_conf.display()).into());
            args.push(format!("--rbd-keyring={}", rbd.keyring.display()).into());
            args.push(format!("--rbd-user={}", rbd.user).into());
        }
        args.extend(extra_args.iter().map(OsString::from));
        let binary = built_binary("swell-node")?;
        let child = spawn(&binary, &args, env, log.as_deref())?;
        let mut process = NodeProcess { child, binary, args, log, socket };
        process.wait_ready().await?;
        Ok(process)
    }

    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        wait_until_serving(&mut self.child, &self.socket, "swell-node").await
    }

    /// A fresh client connection.
    pub async fn client(&self) -> Result<NodeClient<Channel>, HarnessError> {
        Ok(NodeClient::new(csi_endpoint::connect(&self.socket).await?))
    }

    /// SIGKILL to the node's process group: no cleanup runs anywhere in it.
    pub async fn kill(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.wait().await;
    }

    /// Starts the node again over the same state, with `env` this time.
    pub async fn restart(&mut self, env: &[(&str, OsString)]) -> Result<(), HarnessError> {
        self.kill().await;
        // The killed process could not remove its socket.
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn(&self.binary, &self.args, env, self.log.as_deref())?;
        self.wait_ready().await
    }
}

fn spawn(binary: &PathBuf, args: &[OsString], env: &[(&str, OsString)], log: Option<&Path>) -> Result<Child, HarnessError> {
    Command::new(binary)
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_to(log)?)
        // Its own group, so a kill takes the tools it runs with it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HarnessError::Process(format!("spawn {}: {e}", binary.display())))
}

/// Where a stand-in grow tool lets a kill land: before the real tool
/// starts, once it has started (the kill takes it too, during or just
/// after its grow: a small grow is quick), or part way: the real tool has
/// grown the filesystem to this many bytes (xfs, btrfs) and the stand-in
/// is still running, so the kill leaves it between its old and new size.
#[derive(Debug, Clone, Copy)]
pub enum KillAt {
    BeforeTheTool,
    AfterTheToolStarted,
    PartWay(u64),
}

/// Writes into `dir` a stand-in for the grow tool of `fs` (`xfs_growfs`,
/// `btrfs` for `filesystem resize`, or `resize2fs`, which grows ext4 offline
/// at stage): it marks that the node reached its grow
/// step by creating the returned file, then holds the step open for a kill
/// to land at `at`. Returns the directory to put first on the node's PATH,
/// and the mark.
pub fn grow_tool_stand_in(dir: &Path, fs: &str, at: KillAt) -> Result<(PathBuf, PathBuf), String> {
    let (tool, is_grow) = match fs {
        "xfs" => ("xfs_growfs", "true"),
        "btrfs" => ("btrfs", r#"[ "$1 $2" = "filesystem resize" ]"#),
        "ext4" => ("resize2fs", "true"),
        other => return Err(format!("no stand-in for {other}'s grow tool")),
    };
    let real = which(tool)?;
    let (bin, mark) = (dir.join("stand-in"), dir.join("grow-reached"));
    std::fs::create_dir_all(&bin).map_err(|e| format!("create {}: {e}", bin.display()))?;
    let (mark_arg, real_arg) = (mark.display(), real.display());
    let hold = match (at, fs) {
        (KillAt::BeforeTheTool, _) => format!(": > {mark_arg}; sleep 60; exec {real_arg} \"$@\""),
        (KillAt::AfterTheToolStarted, _) => format!("{real_arg} \"$@\" & : > {mark_arg}; wait $!; sleep 60"),
        // xfs_growfs [--] MOUNT: -D counts the data blocks (4 KiB). The mount
        // point is the last argument, whether or not `--` precedes it.
        (KillAt::PartWay(bytes), "xfs") => format!("for m; do :; done; {real_arg} -D {} -- \"$m\" && : > {mark_arg}; sleep 60", bytes / 4096),
        // btrfs filesystem resize [--] max MOUNT.
        (KillAt::PartWay(bytes), "btrfs") => format!("for m; do :; done; {real_arg} filesystem resize -- {bytes} \"$m\" && : > {mark_arg}; sleep 60"),
        (KillAt::PartWay(_), other) => return Err(format!("no part-way grow for {other}")),
    };
    let script = format!("#!/bin/sh\nif {is_grow}; then {hold}; fi\nexec {real_arg} \"$@\"\n");
    write_executable(&bin.join(tool), &script)?;
    Ok((bin, mark))
}

/// Writes into `dir/stand-in` a `resize2fs` that refuses to grow a mounted
/// ext4 as the real one does without CAP_SYS_RESOURCE (EPERM from the resize
/// ioctl) and creates the returned mark when it does; on an unmounted device
/// (the node's offline grow at stage) it runs the real tool. Returns the
/// directory to put first on the node's PATH, and the mark. Lets the refusal
/// be provoked where online growth works. The device is the last argument,
/// after the node's `--`.
pub fn online_ext4_refusal_stand_in(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let real = which("resize2fs")?;
    let (bin, mark) = (dir.join("stand-in"), dir.join("online-grow-refused"));
    std::fs::create_dir_all(&bin).map_err(|e| format!("create {}: {e}", bin.display()))?;
    let (mark_arg, real_arg) = (mark.display(), real.display());
    let script = format!(
        "#!/bin/sh\nfor device; do :; done\nif findmnt -rn -S \"$device\" >/dev/null; then\n  : > {mark_arg}\n  \
         echo \"resize2fs: Permission denied to resize filesystem\" >&2\n  exit 1\nfi\nexec {real_arg} \"$@\"\n"
    );
    write_executable(&bin.join("resize2fs"), &script)?;
    Ok((bin, mark))
}

/// A stand-in for a program the node runs (found first on its PATH) that
/// logs each call and, while armed, holds it until released, so a test can
/// send another call while the first is inside that step. A held call runs
/// the real program on release, or after 30 s at the most.
pub struct ToolGate {
    /// The directory to put first on the node's PATH.
    pub bin: PathBuf,
    dir: PathBuf,
}

impl ToolGate {
    /// A gate for `tool` under `dir`.
    pub fn new(dir: &Path, tool: &str) -> Result<Self, String> {
        let real = which(tool)?;
        let bin = dir.join("gated");
        std::fs::create_dir_all(&bin).map_err(|e| format!("create {}: {e}", bin.display()))?;
        let gate = ToolGate { bin, dir: dir.to_owned() };
        let (calls, armed, reached) = (gate.file("calls"), gate.file("armed"), gate.file("reached"));
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> {calls}\nif [ -e {armed} ]; then\n  : > {reached}\n  i=0\n  \
             while [ -e {armed} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done\nfi\nexec {real} \"$@\"\n",
            calls = calls.display(),
            armed = armed.display(),
            reached = reached.display(),
            real = real.display()
        );
        write_executable(&gate.bin.join(tool), &script)?;
        Ok(gate)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("gate-{name}"))
    }

    /// This process's `PATH` with the gate first: the node's, to start it with.
    pub fn path(&self) -> OsString {
        let mut path = OsString::from(&self.bin);
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        path
    }

    /// Holds the next calls until [`release`](Self::release).
    pub fn arm(&self) {
        let _ = std::fs::remove_file(self.file("reached"));
        std::fs::write(self.file("armed"), "").expect("arm the gate");
    }

    /// Waits (at most `deadline`) until a call is held; whether one was.
    pub async fn reached(&self, deadline: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        while !self.file("reached").exists() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    /// Lets the held calls run the real program.
    pub fn release(&self) {
        let _ = std::fs::remove_file(self.file("armed"));
    }

    /// The calls so far, one command line each.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.file("calls")).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

fn write_executable(path: &Path, script: &str) -> Result<(), String> {
    std::fs::write(path, script).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn which(tool: &str) -> Result<PathBuf, String> {
    let out = std::process::Command::new("which").arg(tool).output().map_err(|e| format!("which {tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{tool} is not installed"));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
