//! A recording [`System`] for unit tests: a small model of devices, loop
//! devices, filesystems and mounts that answers the calls the node makes
//! (and the few programs it runs) the way the host would, records every
//! call, and fails the operations a test names. Nothing here touches the
//! host beyond reading the size of a test's own backing files.

use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use swell_storage::command::{CommandError, Output};

use super::seam::{LoopDevice, MountCall, System};
use crate::error::NodeError;
use crate::mountinfo::MountEntry;

/// One call the node made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    Mount(MountCall),
    Unmount(PathBuf),
    LoopAttach(PathBuf),
    LoopRefresh(PathBuf),
    LoopDetach(PathBuf),
    /// A program and its arguments, space-joined.
    Run(String),
    /// A mounted filesystem's own size read, at its mount point.
    FilesystemSize(PathBuf),
}

/// A filesystem on a device: its kind, the size it reports and the UUID
/// its format was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fs {
    pub kind: String,
    pub size: u64,
    pub uuid: Option<String>,
}

#[derive(Debug, Default)]
struct Model {
    calls: Vec<Call>,
    /// Block devices and their sizes.
    devices: BTreeMap<PathBuf, u64>,
    /// Attached loop devices and their backing files.
    loops: BTreeMap<PathBuf, PathBuf>,
    filesystems: BTreeMap<PathBuf, Fs>,
    mounts: Vec<MountEntry>,
    /// Operations (`mount`, `bind`, `remount`, `unmount`, a program name)
    /// that fail, with the message.
    failing: BTreeMap<String, String>,
    /// Command lines (by their start) that do their work and then run past
    /// their deadline (a format cut off after writing its superblock).
    cut: Vec<String>,
    /// resize2fs on a mounted ext4 fails with EPERM (no CAP_SYS_RESOURCE).
    ext4_online_eperm: bool,
    /// What sysfs shows as a loop device's backing file, where it is not the
    /// file's path here (attached from a mount namespace that is gone).
    shown: BTreeMap<PathBuf, String>,
}

/// The recording double.
#[derive(Debug, Default)]
pub(crate) struct FakeSystem {
    model: Mutex<Model>,
}

impl FakeSystem {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock()
    }

    /// The size of the filesystem of `kind` mounted at `mount_point`, as
    /// its own ioctl would answer; recorded.
    fn filesystem_size(&self, mount_point: &Path, kind: &str) -> Result<u64, NodeError> {
        let mut model = self.model();
        model.calls.push(Call::FilesystemSize(mount_point.to_owned()));
        let device = model.device_at(mount_point);
        match device.and_then(|d| model.filesystems.get(&d).cloned()) {
            Some(fs) if fs.kind == kind => Ok(fs.size),
            _ => Err(NodeError::io(format!("read the {kind} geometry at {}", mount_point.display()), std::io::Error::from(nix::errno::Errno::ENOTTY))),
        }
    }

    /// How many times a mounted filesystem's size was read.
    pub(crate) fn size_reads(&self) -> usize {
        self.calls().iter().filter(|c| matches!(c, Call::FilesystemSize(_))).count()
    }

    /// Every call so far.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.model().calls.clone()
    }

    /// Forgets the calls so far (after a test's setup).
    pub(crate) fn clear_calls(&self) {
        self.model().calls.clear();
    }

    /// The programs run so far, by name.
    pub(crate) fn programs(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Run(line) => line.split(' ').next().map(str::to_owned),
                _ => None,
            })
            .collect()
    }

    /// Makes `operation` fail with `message` from now on.
    pub(crate) fn fail(&self, operation: &str, message: &str) {
        self.model().failing.insert(operation.to_owned(), message.to_owned());
    }

    /// Lets every operation succeed again.
    pub(crate) fn clear_failures(&self) {
        let mut model = self.model();
        model.failing.clear();
        model.cut.clear();
    }

    /// Makes a command line starting with `start` (`mkfs.xfs`,
    /// `cryptsetup luksFormat`) do its work, then miss its deadline.
    pub(crate) fn cut_off(&self, start: &str) {
        self.model().cut.push(start.to_owned());
    }

    /// Lets ext4's online grow fail with EPERM, as without CAP_SYS_RESOURCE.
    pub(crate) fn deny_online_ext4_grow(&self) {
        self.model().ext4_online_eperm = true;
    }

    /// Puts a filesystem on `device`.
    pub(crate) fn format(&self, device: &Path, kind: &str, size: u64) {
        self.model().filesystems.insert(device.to_owned(), Fs { kind: kind.to_owned(), size, uuid: None });
    }

    /// The filesystem on `device`, if any.
    pub(crate) fn filesystem(&self, device: &Path) -> Option<Fs> {
        self.model().filesystems.get(device).cloned()
    }

    /// The top-most mount at `path`, if any.
    pub(crate) fn mounted(&self, path: &Path) -> Option<MountEntry> {
        self.model().mounts.iter().rev().find(|m| m.mount_point == path).cloned()
    }

    /// Adds a mount the node did not make (another volume, a tmpfs).
    pub(crate) fn add_foreign_mount(&self, path: &Path, fs_type: &str, source: &str) {
        let entry = MountEntry {
            major_minor: "0:99".into(),
            root: "/".into(),
            mount_point: path.to_owned(),
            options: vec!["rw".into()],
            fs_type: fs_type.into(),
            source: source.into(),
        };
        self.model().mounts.push(entry);
    }

    /// The attached loop devices.
    pub(crate) fn loops(&self) -> BTreeMap<PathBuf, PathBuf> {
        self.model().loops.clone()
    }

    /// Detaches a loop device behind the node's back.
    pub(crate) fn lose_loop(&self, device: &Path) {
        self.model().loops.remove(device);
    }

    /// Makes sysfs show `backing` for `device`, as the kernel does for a loop
    /// device attached by a container whose mount namespace is gone.
    pub(crate) fn show_backing(&self, device: &Path, backing: &str) {
        self.model().shown.insert(device.to_owned(), backing.to_owned());
    }
}

/// The failure set for `operation`: "TIMEOUT" is the deadline of a host
/// call that is still running on its thread; anything else an I/O error.
fn failure(model: &Model, operation: &str, step: String) -> Result<(), NodeError> {
    match model.failing.get(operation) {
        Some(message) if message == "TIMEOUT" => Err(NodeError::Timeout { step, after: std::time::Duration::from_secs(30) }),
        Some(message) => Err(NodeError::io(step, std::io::Error::other(message.clone()))),
        None => Ok(()),
    }
}

fn numbers(device: &Path) -> String {
    let n: String = device.to_string_lossy().chars().filter(char::is_ascii_digit).collect();
    format!("7:{}", if n.is_empty() { "0" } else { &n })
}

fn file_size(file: &Path) -> Result<u64, NodeError> {
    std::fs::metadata(file).map(|m| m.len()).map_err(|e| NodeError::io(format!("stat {}", file.display()), e))
}

fn ok(stdout: String) -> Result<Output, CommandError> {
    Ok(Output { stdout, stderr: String::new() })
}

fn failed(line: &str, code: i32, stderr: &str) -> Result<Output, CommandError> {
    Err(CommandError::Failed { command: line.to_owned(), code: Some(code), stderr: stderr.to_owned(), stdout: String::new() })
}

/// The UUID a format's arguments give it (`-U X`, `--uuid X`, `-m uuid=X`).
fn uuid_given(args: &[String]) -> Option<String> {
    args.windows(2).find_map(|pair| match (pair[0].as_str(), pair[1].as_str()) {
        ("-U" | "--uuid", uuid) => Some(uuid.to_owned()),
        ("-m", options) => options.split(',').find_map(|o| o.strip_prefix("uuid=")).map(str::to_owned),
        _ => None,
    })
}

impl Model {
    fn device_at(&self, mount_point: &Path) -> Option<PathBuf> {
        self.mounts.iter().rev().find(|m| m.mount_point == mount_point).map(|m| PathBuf::from(&m.source))
    }

    fn grow(&mut self, device: &Path) {
        let size = self.devices.get(device).copied().unwrap_or(0);
        if let Some(fs) = self.filesystems.get_mut(device) {
            fs.size = size;
        }
    }

    /// The programs the node runs, answered from the model.
    fn run(&mut self, program: &str, args: &[String], line: &str) -> Result<Output, CommandError> {
        let last = args.last().map(PathBuf::from).unwrap_or_default();
        match program {
            "blkid" => match self.filesystems.get(&last) {
                Some(fs) => ok(format!("DEVNAME={}\nUUID={}\nTYPE={}\n", last.display(), fs.uuid.as_deref().unwrap_or_default(), fs.kind)),
                None => failed(line, 2, ""),
            },
            "mkfs.xfs" | "mkfs.btrfs" | "mkfs.ext4" => {
                let size = self.devices.get(&last).copied().unwrap_or(0);
                let kind = program.trim_start_matches("mkfs.").to_owned();
                self.filesystems.insert(last, Fs { kind, size, uuid: uuid_given(args) });
                ok(String::new())
            }
            "xfs_growfs" => {
                let device = self.device_at(&last).unwrap_or_default();
                self.grow(&device);
                ok(String::new())
            }
            "btrfs" if args.first().map(String::as_str) == Some("filesystem") => match args.get(1).map(String::as_str) {
                Some("resize") => {
                    let device = self.device_at(&last).unwrap_or_default();
                    self.grow(&device);
                    ok(String::new())
                }
                _ => failed(line, 127, "not modelled"),
            },
            "resize2fs" => {
                if self.ext4_online_eperm && self.mounts.iter().any(|m| Path::new(&m.source) == last) {
                    return failed(line, 1, "resize2fs: Operation not permitted While checking for on-line resizing support");
                }
                self.grow(&last);
                ok(String::new())
            }
            "dumpe2fs" => match self.filesystems.get(&last) {
                Some(fs) => ok(format!("Block count:              {}\nBlock size:               4096\n", fs.size / 4096)),
                None => failed(line, 1, "Bad magic number in super-block"),
            },
            "e2fsck" => ok(String::new()),
            // No mapping is ever open; luksFormat leaves a LUKS header.
            "cryptsetup" => match args.first().map(String::as_str) {
                Some("status") => failed(line, 4, "inactive"),
                Some("luksFormat") => {
                    let size = self.devices.get(&last).copied().unwrap_or(0);
                    self.filesystems.insert(last, Fs { kind: "crypto_LUKS".into(), size, uuid: uuid_given(args) });
                    ok(String::new())
                }
                Some("open") => ok(String::new()),
                _ => failed(line, 127, "not modelled"),
            },
            _ => failed(line, 127, "not modelled by FakeSystem"),
        }
    }
}

#[async_trait::async_trait]
impl System for FakeSystem {
    async fn mount(&self, call: MountCall) -> Result<(), NodeError> {
        let mut model = self.model();
        model.calls.push(Call::Mount(call.clone()));
        match call {
            MountCall::Filesystem { device, target, fs_type, options } => {
                failure(&model, "mount", format!("mount {}", device.display()))?;
                if model.filesystems.get(&device).map(|fs| fs.kind.as_str()) != Some(fs_type.as_str()) {
                    return Err(NodeError::io(format!("mount {}", device.display()), std::io::Error::from_raw_os_error(22)));
                }
                let read_only = options.iter().flat_map(|o| o.split(',')).any(|o| o == "ro");
                let entry = MountEntry {
                    major_minor: numbers(&device),
                    root: "/".into(),
                    mount_point: target,
                    options: vec![if read_only { "ro" } else { "rw" }.into()],
                    fs_type,
                    source: device.display().to_string(),
                };
                model.mounts.push(entry);
            }
            MountCall::Bind { source, target } => {
                failure(&model, "bind", format!("bind {}", source.display()))?;
                let entry = match model.mounts.iter().rev().find(|m| m.mount_point == source).cloned() {
                    Some(staged) => MountEntry { mount_point: target, ..staged },
                    None => MountEntry {
                        major_minor: "0:5".into(),
                        root: Path::new("/").join(source.file_name().unwrap_or_default()),
                        mount_point: target,
                        options: vec!["rw".into()],
                        fs_type: "devtmpfs".into(),
                        source: "udev".into(),
                    },
                };
                model.mounts.push(entry);
            }
            MountCall::RemountReadOnly { target } => {
                failure(&model, "remount", format!("remount {}", target.display()))?;
                let Some(entry) = model.mounts.iter_mut().rev().find(|m| m.mount_point == target) else {
                    return Err(NodeError::io(format!("remount {}", target.display()), std::io::Error::from_raw_os_error(22)));
                };
                entry.options = vec!["ro".into()];
            }
        }
        Ok(())
    }

    async fn unmount(&self, target: &Path, _lazy: bool) -> Result<(), NodeError> {
        let mut model = self.model();
        model.calls.push(Call::Unmount(target.to_owned()));
        failure(&model, "unmount", format!("unmount {}", target.display()))?;
        match model.mounts.iter().rposition(|m| m.mount_point == target) {
            Some(i) => {
                model.mounts.remove(i);
                Ok(())
            }
            None => Err(NodeError::io(format!("unmount {}", target.display()), std::io::Error::from_raw_os_error(22))),
        }
    }

    async fn mounts(&self) -> Result<Vec<MountEntry>, NodeError> {
        Ok(self.model().mounts.clone())
    }

    async fn loop_attach(&self, file: &Path) -> Result<PathBuf, NodeError> {
        let mut model = self.model();
        model.calls.push(Call::LoopAttach(file.to_owned()));
        failure(&model, "loop_attach", format!("attach {}", file.display()))?;
        let size = file_size(file)?;
        let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
        let device = (0..).map(|n| PathBuf::from(format!("/dev/loop{n}"))).find(|d| !model.loops.contains_key(d)).unwrap_or_default();
        model.loops.insert(device.clone(), file);
        model.devices.insert(device.clone(), size);
        Ok(device)
    }

    async fn loop_refresh(&self, device: &Path) -> Result<(), NodeError> {
        let mut model = self.model();
        model.calls.push(Call::LoopRefresh(device.to_owned()));
        failure(&model, "loop_refresh", format!("refresh {}", device.display()))?;
        let file = model.loops.get(device).cloned().ok_or_else(|| NodeError::io("refresh", std::io::Error::from_raw_os_error(6)))?;
        let size = file_size(&file)?;
        model.devices.insert(device.to_owned(), size);
        Ok(())
    }

    async fn loop_detach(&self, device: &Path) -> Result<(), NodeError> {
        let mut model = self.model();
        model.calls.push(Call::LoopDetach(device.to_owned()));
        failure(&model, "loop_detach", format!("detach {}", device.display()))?;
        model.loops.remove(device);
        model.devices.remove(device);
        model.shown.remove(device);
        Ok(())
    }

    async fn loop_devices(&self) -> Result<Vec<LoopDevice>, NodeError> {
        let model = self.model();
        let shown = |device: &PathBuf, file: &PathBuf| model.shown.get(device).cloned().unwrap_or_else(|| file.display().to_string());
        Ok(model.loops.iter().map(|(device, file)| LoopDevice { device: device.clone(), backing_file: shown(device, file) }).collect())
    }

    async fn device_size(&self, device: &Path) -> Result<u64, NodeError> {
        let model = self.model();
        model.devices.get(device).copied().ok_or_else(|| NodeError::io(format!("size of {}", device.display()), std::io::Error::from_raw_os_error(2)))
    }

    async fn xfs_data_bytes(&self, mount_point: &Path) -> Result<u64, NodeError> {
        self.filesystem_size(mount_point, "xfs")
    }

    async fn btrfs_device_bytes(&self, mount_point: &Path) -> Result<u64, NodeError> {
        self.filesystem_size(mount_point, "btrfs")
    }

    async fn device_numbers(&self, device: &Path) -> Result<String, NodeError> {
        Ok(numbers(device))
    }

    async fn run_with_secret(&self, program: &str, args: Vec<OsString>, _secret: &[u8], deadline: Duration) -> Result<Output, CommandError> {
        self.run(program, args, deadline).await
    }

    async fn run(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output, CommandError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let line = std::iter::once(program.to_owned()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ");
        let mut model = self.model();
        model.calls.push(Call::Run(line.clone()));
        if let Some(message) = model.failing.get(program) {
            return failed(&line, 1, &message.clone());
        }
        let out = model.run(program, &args, &line);
        if model.cut.iter().any(|start| line.starts_with(start.as_str())) {
            return Err(CommandError::Timeout { command: line, after: deadline, reaped: true });
        }
        out
    }
}
