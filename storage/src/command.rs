//! The one way Swell runs an external program: only a program named in
//! [`PROGRAMS`], no shell, output captured, a deadline enforced, and a
//! non-zero exit turned into an error that names the command and carries its
//! stderr. Programs run with a cleared environment: `PATH` (the operator's)
//! and `LC_ALL=C` (output parsed in one language), nothing else of Swell's.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Every program Swell runs, by its name on `PATH`: the one list the
/// container image is checked against (`swell-node --help` prints it,
/// deploy/image/build.sh finds each in the image). [`run`] refuses any other
/// name, so a new tool cannot be called without being listed here.
pub const PROGRAMS: &[&str] = &[
    "blkid",
    "btrfs",
    "cryptsetup",
    "dumpe2fs",
    "e2fsck",
    "mkfs.btrfs",
    "mkfs.ext4",
    "mkfs.xfs",
    "rados",
    "rbd",
    "rbd-fuse",
    "rbd-nbd",
    "resize2fs",
    "xfs_growfs",
];

/// How long a program killed at its deadline may take to exit: SIGKILL
/// waits for a process blocked in the kernel (a write to a stuck device).
const REAP_DEADLINE: Duration = Duration::from_secs(5);

/// `PATH` when Swell itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program is not in [`PROGRAMS`], so the image may not hold it.
    #[error("`{program}` is not in Swell's list of external programs (swell_storage::command::PROGRAMS)")]
    Unlisted {
        /// The program asked for.
        program: String,
    },
    /// The program could not be started (missing binary, permissions).
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The command line, for the log.
        command: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The program ran past its deadline and was killed.
    #[error("`{command}` did not finish within {after:?} and was killed{}", if *reaped { String::new() } else { format!("; it had not exited {REAP_DEADLINE:?} later (blocked in the kernel)") })]
    Timeout {
        /// The command line.
        command: String,
        /// The deadline it missed.
        after: Duration,
        /// Whether it had exited when the error was made; otherwise it
        /// still runs, blocked in the kernel, until its I/O returns.
        reaped: bool,
    },
    /// The program exited with a failure status.
    #[error("`{command}` failed with exit code {code:?}: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// The exit code, `None` when killed by a signal.
        code: Option<i32>,
        /// What it printed on stderr (trimmed).
        stderr: String,
        /// What it printed on stdout (some tools report errors there).
        stdout: String,
    },
}

impl CommandError {
    /// The exit code of a command that ran and failed.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CommandError::Failed { code, .. } => *code,
            _ => None,
        }
    }

    /// What may be shown outside the log (a CO's events): the program and
    /// how it ended, without its command line or output, which can name
    /// keyrings, Ceph users and host paths.
    pub fn public(&self) -> String {
        let program = |command: &str| command.split(' ').next().unwrap_or_default().to_owned();
        match self {
            CommandError::Unlisted { program } => format!("`{program}` is not one of Swell's external programs"),
            CommandError::Spawn { command, .. } => format!("`{}` could not start (its command line is in the log)", program(command)),
            CommandError::Timeout { command, after, .. } => format!("`{}` did not finish within {after:?} (its command line is in the log)", program(command)),
            CommandError::Failed { command, code, .. } => {
                format!("`{}` failed with exit code {code:?} (its command line and output are in the log)", program(command))
            }
        }
    }

    /// Everything the command printed, for matching on well-known messages.
    pub fn output_text(&self) -> String {
        match self {
            CommandError::Failed { stderr, stdout, .. } => format!("{stderr}\n{stdout}"),
            other => other.to_string(),
        }
    }
}

/// Runs `program` (one of [`PROGRAMS`]) with `args`, killing it if it has
/// not exited within `deadline`.
pub async fn run<I, S>(program: &str, args: I, deadline: Duration) -> Result<Output, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    listed(program)?;
    run_any(program, args, deadline, false).await
}

/// Like [`run`], for a program that leaves a daemon serving what it set up
/// (`rbd-nbd map`): it starts in a process group of its own, so the daemon
/// outlives a kill of the caller's group, as the kernel's own mappings do.
pub async fn run_leaving_daemon<I, S>(program: &str, args: I, deadline: Duration) -> Result<Output, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    listed(program)?;
    run_any(program, args, deadline, true).await
}

/// Like [`run`], with `secret` written to the program's stdin, which is
/// then closed: how a key reaches cryptsetup without being in its
/// arguments, environment or a file. The command line in errors and logs
/// never holds it.
pub async fn run_with_secret<I, S>(program: &str, args: I, secret: &[u8], deadline: Duration) -> Result<Output, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    listed(program)?;
    run_fed(program, args, Some(secret), deadline, false).await
}

fn listed(program: &str) -> Result<(), CommandError> {
    if PROGRAMS.contains(&program) { Ok(()) } else { Err(CommandError::Unlisted { program: program.to_owned() }) }
}

async fn run_any<I, S>(program: &str, args: I, deadline: Duration, own_group: bool) -> Result<Output, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_fed(program, args, None, deadline, own_group).await
}

async fn run_fed<I, S>(program: &str, args: I, input: Option<&[u8]>, deadline: Duration, own_group: bool) -> Result<Output, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    use tokio::io::AsyncWriteExt as _;
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    let command = render(program, &args);
    tracing::debug!(%command, "running");
    let mut builder = Command::new(program);
    builder
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()))
        .env("LC_ALL", "C")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if own_group {
        builder.process_group(0);
    }
    let mut child = builder.spawn().map_err(|source| CommandError::Spawn { command: command.clone(), source })?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let feed = async move {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            // A program that exits without reading all of it is judged by
            // its exit status, not by the broken pipe.
            let _ = stdin.write_all(input).await;
        }
    };
    let ran = async { tokio::join!(feed, read_all(stdout), read_all(stderr), child.wait()) };
    let (_, out, err, status) = match tokio::time::timeout(deadline, ran).await {
        Ok(done) => done,
        Err(_) => {
            // Killed and reaped before the caller hears of it: a retry must
            // never start a second mkfs beside the first.
            let _ = child.start_kill();
            let reaped = tokio::time::timeout(REAP_DEADLINE, child.wait()).await.is_ok_and(|r| r.is_ok());
            return Err(CommandError::Timeout { command, after: deadline, reaped });
        }
    };
    let spawn_error = |source| CommandError::Spawn { command: command.clone(), source };
    let finished = std::process::Output { status: status.map_err(spawn_error)?, stdout: out.map_err(spawn_error)?, stderr: err.map_err(spawn_error)? };
    let stdout = String::from_utf8_lossy(&finished.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&finished.stderr).trim().to_owned();
    if finished.status.success() { Ok(Output { stdout, stderr }) } else { Err(CommandError::Failed { command, code: finished.status.code(), stderr, stdout }) }
}

async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut bytes).await?;
    }
    Ok(bytes)
}

fn render(program: &str, args: &[std::ffi::OsString]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[tokio::test]
    async fn captures_stdout_of_a_successful_command() {
        let out = run_any("echo", ["hello"], Duration::from_secs(5), false).await.expect("echo runs");
        assert_eq!(out.stdout.trim(), "hello");
    }

    #[tokio::test]
    async fn failure_carries_exit_code_and_stderr() {
        let err = run_any("ls", ["/definitely/not/here"], Duration::from_secs(5), false).await.unwrap_err();
        assert_eq!(err.exit_code(), Some(2));
        assert!(err.to_string().contains("/definitely/not/here"), "{err}");
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_and_reaped_before_its_deadline_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let started = std::time::Instant::now();
        let err = run_any("sh", ["-c", script.as_str()], Duration::from_millis(300), false).await.unwrap_err();
        assert!(matches!(err, CommandError::Timeout { reaped: true, .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pid_file).expect("the program wrote its pid");
        // Not running, not even a zombie: a retry cannot meet it.
        let proc_dir = Path::new("/proc").join(pid.trim());
        assert!(!proc_dir.exists(), "pid {} still exists: {:?}", pid.trim(), std::fs::read_to_string(proc_dir.join("stat")));
    }

    #[tokio::test]
    async fn a_secret_reaches_stdin_and_not_the_command_line() {
        let out = run_fed("sha256sum", ["-"], Some(b"abc".as_slice()), Duration::from_secs(5), false).await.expect("sha256sum runs");
        assert!(out.stdout.starts_with("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "{}", out.stdout);
        let err = run_fed("sh", ["-c", "exit 3"], Some(b"hidden-key".as_slice()), Duration::from_secs(5), false).await.unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hidden-key"), "{err:?}");
        let err = run_with_secret("cat", ["-"], b"k", Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, CommandError::Unlisted { .. }), "{err}");
    }

    #[tokio::test]
    async fn only_listed_programs_run() {
        let err = run("echo", ["hello"], Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&err, CommandError::Unlisted { program } if program == "echo"), "{err}");
        assert!(err.to_string().contains("PROGRAMS"), "{err}");
        let listed = run("mkfs.xfs", ["-V"], Duration::from_secs(5)).await;
        assert!(!matches!(listed, Err(CommandError::Unlisted { .. })), "{listed:?}");
    }

    #[test]
    fn the_program_list_is_sorted_and_unique() {
        assert!(PROGRAMS.windows(2).all(|pair| pair[0] < pair[1]), "{PROGRAMS:?}");
    }

    #[tokio::test]
    async fn programs_see_only_path_and_the_c_locale() {
        let out = run_any("env", Vec::<&str>::new(), Duration::from_secs(5), false).await.expect("env runs");
        let mut names: Vec<&str> = out.stdout.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        names.sort_unstable();
        assert_eq!(names, ["LC_ALL", "PATH"], "{}", out.stdout);
        assert!(out.stdout.contains("LC_ALL=C\n"), "{}", out.stdout);
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let err = run_any("swell-no-such-program", ["x"], Duration::from_secs(1), false).await.unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_daemon_starter_runs_in_a_process_group_of_its_own() {
        // Field 5 of /proc/PID/stat is the process group.
        let script = ["-c", "echo $$; cut -d' ' -f5 /proc/$$/stat"];
        let ours = std::fs::read_to_string("/proc/self/stat").unwrap().split(' ').nth(4).unwrap().to_owned();
        let own = run_any("sh", script, Duration::from_secs(5), true).await.expect("sh runs");
        let (pid, group) = own.stdout.trim().split_once('\n').unwrap();
        assert_eq!(pid, group, "the leader of its own group");
        let shared = run_any("sh", script, Duration::from_secs(5), false).await.expect("sh runs");
        assert_eq!(shared.stdout.trim().split_once('\n').unwrap().1, ours, "a plain run stays in the caller's group");
    }
}
