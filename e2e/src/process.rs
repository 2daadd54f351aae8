//! The controller as a real process, for tests that kill it: SIGKILL at any
//! moment, restart from the same state directories, reconnect.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use csi_proto::v1::controller_client::ControllerClient;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::harness::HarnessError;

/// A running `swell-controller` process.
pub struct ControllerProcess {
    child: Child,
    binary: PathBuf,
    root: PathBuf,
    local_state_dir: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
    /// The CSI socket it serves.
    pub socket: PathBuf,
}

/// Finds the `swell-controller` binary built beside the running test.
pub fn controller_binary() -> Result<PathBuf, HarnessError> {
    built_binary("swell-controller")
}

/// The environment variable naming the failpoints a process honours.
const FAILPOINTS: &str = "FAILPOINTS";

/// Finds the failpoint build of `swell-controller`
/// (`target/failpoints/swell-controller`, made by `e2e/failpoints-build.sh`,
/// which `e2e/test.sh` runs): the only build that honours `FAILPOINTS`.
pub fn failpoints_controller_binary() -> Result<PathBuf, HarnessError> {
    in_target("failpoints/swell-controller")
        .ok_or_else(|| HarnessError::MissingBinary("target/failpoints/swell-controller (run e2e/failpoints-build.sh first; e2e/test.sh does)".into()))
}

/// Finds a workspace binary built beside the running test
/// (`target/<profile>/`); `e2e/test.sh` builds them before the tests run.
pub fn built_binary(name: &str) -> Result<PathBuf, HarnessError> {
    in_target(name).ok_or_else(|| HarnessError::MissingBinary(format!("{name} (run `cargo build --bins` first; e2e/test.sh does)")))
}

/// `relative` in the directory of the running test or one of the two above
/// it (`target/<profile>/deps/` → `target/`), if it is a file there.
fn in_target(relative: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().skip(1).take(3).map(|dir| dir.join(relative)).find(|candidate| candidate.is_file())
}

impl ControllerProcess {
    /// Starts a controller whose state lives under `root` and whose local
    /// backend uses `local_state_dir`; waits until its socket answers.
    pub async fn start(root: &Path, local_state_dir: &Path) -> Result<Self, HarnessError> {
        Self::start_with(root, local_state_dir, Vec::new()).await
    }

    /// Like [`start`](Self::start), with `extra_args` appended to the command
    /// line (e.g. the `--rbd-*` flags and `--default-backend rbd`); every
    /// restart passes them again.
    pub async fn start_with(root: &Path, local_state_dir: &Path, extra_args: Vec<String>) -> Result<Self, HarnessError> {
        Self::start_with_env(root, local_state_dir, extra_args, Vec::new()).await
    }

    /// Like [`start_with`](Self::start_with), with environment variables
    /// set for this process and every restart. With `FAILPOINTS` among
    /// them, the failpoint build runs ([`failpoints_controller_binary`]).
    pub async fn start_with_env(root: &Path, local_state_dir: &Path, extra_args: Vec<String>, env: Vec<(String, String)>) -> Result<Self, HarnessError> {
        Self::start_logging(root, local_state_dir, extra_args, env, None).await
    }

    /// Like [`start_with_env`](Self::start_with_env), its stderr (the log)
    /// appended to `log` when given, across restarts.
    pub async fn start_logging(
        root: &Path,
        local_state_dir: &Path,
        extra_args: Vec<String>,
        env: Vec<(String, String)>,
        log: Option<PathBuf>,
    ) -> Result<Self, HarnessError> {
        let binary = if env.iter().any(|(name, _)| name == FAILPOINTS) { failpoints_controller_binary()? } else { controller_binary()? };
        let mut process = ControllerProcess {
            child: spawn(&binary, root, local_state_dir, &extra_args, &env, log.as_deref())?,
            binary,
            root: root.to_owned(),
            local_state_dir: local_state_dir.to_owned(),
            extra_args,
            env,
            log,
            socket: root.join("controller.sock"),
        };
        process.wait_ready().await?;
        Ok(process)
    }

    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        wait_until_serving(&mut self.child, &self.socket, "swell-controller").await
    }

    /// A fresh client connection.
    pub async fn client(&self) -> Result<ControllerClient<Channel>, HarnessError> {
        Ok(ControllerClient::new(csi_endpoint::connect(&self.socket).await?))
    }

    /// SIGKILL, as a node failure or OOM kill would: no cleanup runs.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Freezes the process (SIGSTOP), as a paused VM or a stalled node would:
    /// it keeps what it holds but does nothing, renews nothing.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Starts the process again over the same state.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill().await;
        // The killed process could not remove its socket; the next one would,
        // but waiting for "the socket exists" must not see the stale one.
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn(&self.binary, &self.root, &self.local_state_dir, &self.extra_args, &self.env, self.log.as_deref())?;
        self.wait_ready().await
    }
}

/// Waits until the process `child` (named `what`) answers on `socket`; an
/// error when it exits first or takes more than 20 s.
pub async fn wait_until_serving(child: &mut Child, socket: &Path, what: &str) -> Result<(), HarnessError> {
    crate::harness::connect_when_serving(socket, Duration::from_secs(20), || match child.try_wait() {
        Ok(Some(status)) => Err(HarnessError::Process(format!("{what} exited at start: {status}"))),
        _ => Ok(()),
    })
    .await
    .map(drop)
}

/// Where a process's stderr goes: appended to `log`, else the test's own.
pub fn stderr_to(log: Option<&Path>) -> Result<Stdio, HarnessError> {
    let Some(log) = log else { return Ok(Stdio::inherit()) };
    let file =
        std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| HarnessError::Process(format!("open log {}: {e}", log.display())))?;
    Ok(Stdio::from(file))
}

fn spawn(
    binary: &Path,
    root: &Path,
    local_state_dir: &Path,
    extra_args: &[String],
    env: &[(String, String)],
    log: Option<&Path>,
) -> Result<Child, HarnessError> {
    Command::new(binary)
        .arg(format!("--endpoint=unix://{}", root.join("controller.sock").display()))
        .arg(format!("--state-dir={}", root.join("controller").display()))
        .arg(format!("--local-state-dir={}", local_state_dir.display()))
        .arg("--reconcile-interval-secs=1")
        .args(extra_args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_to(log)?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HarnessError::Process(format!("spawn {}: {e}", binary.display())))
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
