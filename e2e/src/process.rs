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
    /// The CSI socket it serves.
    pub socket: PathBuf,
}

/// Finds the `swell-controller` binary built beside the running test
/// (`target/<profile>/`); `e2e/test.sh` builds it before the tests run.
pub fn controller_binary() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(|e| HarnessError::Process(format!("current_exe: {e}")))?;
    let candidates = exe.ancestors().skip(1).take(3).map(|dir| dir.join("swell-controller"));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(HarnessError::MissingBinary("swell-controller (run `cargo build --bins` first; e2e/test.sh does)".into()))
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
        let binary = controller_binary()?;
        let mut process = ControllerProcess {
            child: spawn(&binary, root, local_state_dir, &extra_args)?,
            binary,
            root: root.to_owned(),
            local_state_dir: local_state_dir.to_owned(),
            extra_args,
            socket: root.join("controller.sock"),
        };
        process.wait_ready().await?;
        Ok(process)
    }

    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let child = &mut self.child;
        crate::harness::connect_when_serving(&self.socket, Duration::from_secs(20), || match child.try_wait() {
            Ok(Some(status)) => Err(HarnessError::Process(format!("swell-controller exited at start: {status}"))),
            _ => Ok(()),
        })
        .await
        .map(drop)
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

    /// Starts the process again over the same state.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill().await;
        // The killed process could not remove its socket; the next one would,
        // but waiting for "the socket exists" must not see the stale one.
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn(&self.binary, &self.root, &self.local_state_dir, &self.extra_args)?;
        self.wait_ready().await
    }
}

fn spawn(binary: &Path, root: &Path, local_state_dir: &Path, extra_args: &[String]) -> Result<Child, HarnessError> {
    Command::new(binary)
        .arg(format!("--endpoint=unix://{}", root.join("controller.sock").display()))
        .arg(format!("--state-dir={}", root.join("controller").display()))
        .arg(format!("--local-state-dir={}", local_state_dir.display()))
        .arg("--reconcile-interval-secs=1")
        .args(extra_args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HarnessError::Process(format!("spawn {}: {e}", binary.display())))
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
