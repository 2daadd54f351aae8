//! A node over the recording [`FakeSystem`] for the unit tests of stage,
//! publish and expand: a real staging store and real local backing files in
//! a temp dir (their sizes are the backend's truth), everything else faked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use swell_storage::VolumeId;

use crate::filesystem::FsType;
use crate::staging::Access;
use crate::system::fake::FakeSystem;
use crate::validate::{Expand, Publish, Stage, Unpublish, Unstage};
use crate::{NodeConfig, NodeContext};

/// The real host, to run `programs` for real, or `None` (a skip, noted)
/// outside CI when one is missing; under CI=true e2e/install-deps.sh must
/// have installed them.
pub(crate) fn host_with(programs: &[&str]) -> Option<crate::system::HostSystem> {
    let missing: Vec<_> = programs.iter().filter(|p| !crate::attach::rbd::on_path(p)).collect();
    if missing.is_empty() {
        return Some(crate::system::HostSystem::default());
    }
    assert!(std::env::var_os("CI").is_none(), "{missing:?} not installed: e2e/install-deps.sh installs them");
    eprintln!("skipped: {missing:?} not installed");
    None
}

/// A node context over a fake host.
pub(crate) struct Fixture {
    pub ctx: NodeContext,
    pub sys: Arc<FakeSystem>,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = std::fs::canonicalize(dir.path()).expect("resolve temp dir");
        let mut config = NodeConfig::new("unit");
        config.state_dir = root.join("node");
        config.local_state_dir = root.join("local");
        let sys = Arc::new(FakeSystem::default());
        let ctx = NodeContext::with_system(config, sys.clone()).expect("context");
        Fixture { ctx, sys, root, _dir: dir }
    }

    /// A local volume whose backing file holds `bytes`.
    pub(crate) fn volume(&self, n: u8, bytes: u64) -> VolumeId {
        let id: VolumeId = format!("local:{n:032x}").parse().expect("id");
        let file = self.image(&id);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::File::create(&file).and_then(|f| f.set_len(bytes)).expect("backing file");
        id
    }

    pub(crate) fn image(&self, id: &VolumeId) -> PathBuf {
        swell_local::image_path(&self.ctx.config.local_state_dir, id)
    }

    /// The backend grows the volume.
    pub(crate) fn grow(&self, id: &VolumeId, bytes: u64) {
        std::fs::OpenOptions::new().write(true).open(self.image(id)).and_then(|f| f.set_len(bytes)).expect("grow");
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub(crate) fn stage(&self, id: &VolumeId, staging: &str, access: Access) -> Stage {
        let read_only = matches!(&access, Access::Mount { mount_flags, .. } if crate::validate::words(mount_flags).any(|w| w == "ro"));
        Stage { volume: id.clone(), staging_path: self.path(staging), access, read_only, attach: Default::default(), kek: None, key_from: None }
    }

    pub(crate) fn unstage(&self, id: &VolumeId, staging: &str) -> Unstage {
        Unstage { volume: id.clone(), staging_path: self.path(staging) }
    }

    pub(crate) fn publish(&self, id: &VolumeId, staging: &str, target: &str, access: Access, read_only: bool) -> Publish {
        Publish { volume: id.clone(), staging_path: self.path(staging), target_path: self.path(target), access, read_only }
    }

    pub(crate) fn unpublish(&self, id: &VolumeId, target: &str) -> Unpublish {
        Unpublish { volume: id.clone(), target_path: self.path(target) }
    }

    pub(crate) fn expand(&self, id: &VolumeId, path: &str, required_bytes: u64) -> Expand {
        Expand { volume: id.clone(), volume_path: self.path(path), required_bytes, limit_bytes: 0 }
    }

    /// The device the volume is staged on, from its record.
    pub(crate) async fn device(&self, id: &VolumeId) -> PathBuf {
        self.ctx.staging.read(id).await.expect("read record").expect("staged").device
    }

    /// Stages a mount volume and creates its staging directory, as kubelet does.
    pub(crate) async fn staged(&self, id: &VolumeId, fs: FsType) -> PathBuf {
        std::fs::create_dir_all(self.path("staging")).expect("mkdir");
        crate::stage::stage(&self.ctx, self.stage(id, "staging", mount(fs))).await.expect("stage");
        self.device(id).await
    }
}

/// A mount access of `fs` without flags.
pub(crate) fn mount(fs: FsType) -> Access {
    Access::Mount { fs_type: fs, mount_flags: Vec::new() }
}

/// Whether `path` exists on the real filesystem (directories the node made).
pub(crate) fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Root for loop devices and mounts; without it a skip, but never under CI.
pub(crate) fn root_or_skip(test: &str) -> bool {
    // /proc/self belongs to the process's effective user.
    if std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs root, which CI runs as");
    eprintln!("SKIPPED {test}: needs root for loop devices and mounts");
    if let Some(log) = std::env::var_os("SWELL_SKIP_LOG") {
        use std::io::Write as _;
        let appended = std::fs::OpenOptions::new().create(true).append(true).open(log);
        let _ = appended.and_then(|mut l| writeln!(l, "{test}\tneeds root for loop devices and mounts"));
    }
    false
}
