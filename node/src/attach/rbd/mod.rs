//! Ceph RBD volumes (`rbd:<cluster-id>:<pool>:<image>`) on this node: the
//! three attach modes, one chosen per volume (the StorageClass's `mounter`,
//! else the one this host supports, detected once at start-up and logged),
//! reading a volume id through the shared RBD id contract, and the one place
//! the `rbd` CLI is asked about an image. The modes live in their own files:
//! `mapped` (krbd `rbd map` and `rbd-nbd map`: the kernel or rbd-nbd gives a
//! block device that follows resizes by itself) and `fuse` (rbd-fuse exposes
//! the image as a file, which a loop device turns into a block device).
//!
//! Every ceph call has a deadline, and short-lived CLI calls also carry
//! librados' own op timeouts, so a cluster with inactive PGs or a frozen
//! monitor answers with an error instead of hanging an RPC.

mod fuse;
mod mapped;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use swell_storage::VolumeId;
use swell_storage::command::{CommandError, Output};
use swell_storage::rbd_volume::{self, RbdVolume};

pub use fuse::FuseAttacher;
pub use mapped::{MappedAttacher, Mapper};
pub use swell_storage::rbd_attach::{AttachMode, MapOptions};

use super::Attacher;
use crate::error::NodeError;
use crate::system::System;
use swell_storage::CephAccess;

/// librados' op timeouts for CLI calls, in seconds (`rbd info` takes ~50 ms).
const OP_TIMEOUT_SECS: &str = "10";
/// The deadline around a whole CLI call: the op timeouts plus start-up.
const CLI_DEADLINE: Duration = Duration::from_secs(25);

/// Picks the attach mode from what the host offers under `root` (`/` in
/// production, a fake tree in tests): krbd when the rbd bus exists (the
/// module is loaded), else rbd-nbd when the nbd driver is there and the
/// `rbd-nbd` program is installed, else rbd-fuse with a loop device, which
/// needs no kernel module beyond fuse and loop.
pub fn detect(root: &Path, has_program: impl Fn(&str) -> bool) -> AttachMode {
    if root.join("sys/bus/rbd").exists() {
        return AttachMode::Krbd;
    }
    let nbd_driver = root.join("sys/module/nbd").exists() || root.join("dev/nbd0").exists();
    if nbd_driver && has_program("rbd-nbd") {
        return AttachMode::Nbd;
    }
    AttachMode::FuseLoop
}

/// Whether `program` is an executable file on `PATH`.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    })
}

/// The RBD volume an id names (the one contract, `swell_storage::rbd_volume`);
/// a well-formed id that names no Swell image is a volume that does not
/// exist, to this node as to the controller.
pub fn rbd_volume(volume: &VolumeId) -> Result<RbdVolume, NodeError> {
    RbdVolume::parse(volume).ok_or_else(|| NodeError::VolumeNotFound {
        volume: volume.to_string(),
        reason: format!("an rbd volume id is rbd:<cluster-id>:<pool>:{}<32 hex digits>", rbd_volume::IMAGE_PREFIX),
    })
}

/// The configured cluster as the `rbd` CLI reaches it, and the host the
/// Ceph tools run on.
#[derive(Debug, Clone)]
pub struct Cluster {
    config: CephAccess,
    sys: Arc<dyn System>,
}

impl Cluster {
    /// A cluster handle for `config`, whose tools run through `sys`.
    pub fn new(config: CephAccess, sys: Arc<dyn System>) -> Self {
        Cluster { config, sys }
    }

    /// The host the attachers act on.
    pub fn sys(&self) -> &dyn System {
        self.sys.as_ref()
    }

    /// Runs a Ceph tool.
    async fn run(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output, CommandError> {
        self.sys.run(program, args, deadline).await
    }

    /// Runs a Ceph tool that leaves a daemon serving a device.
    async fn run_leaving_daemon(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output, CommandError> {
        self.sys.run_leaving_daemon(program, args, deadline).await
    }

    /// Who and where: `-c conf --id user --keyring k`. Every process gets
    /// the same three, so the key never appears on a command line.
    fn auth_args(&self) -> Vec<OsString> {
        vec![
            "-c".into(),
            self.config.ceph_conf.clone().into(),
            "--id".into(),
            self.config.user.clone().into(),
            "--keyring".into(),
            self.config.keyring.clone().into(),
        ]
    }

    /// For short CLI calls: bounded monitor and OSD operations, so an
    /// inactive PG or a frozen monitor gives ETIMEDOUT instead of a hang.
    pub fn control_args(&self) -> Vec<OsString> {
        let mut args = self.auth_args();
        for option in ["--rados-osd-op-timeout", "--rados-mon-op-timeout", "--client-mount-timeout"] {
            args.push(option.into());
            args.push(OP_TIMEOUT_SECS.into());
        }
        args
    }

    /// For long-lived data-path daemons (rbd-fuse, rbd-nbd): only the
    /// connect is bounded. An OSD op timeout there would turn a PG outage
    /// into I/O errors under a mounted filesystem; without it writes wait
    /// in D state and complete once the PGs are active again.
    pub fn data_path_args(&self) -> Vec<OsString> {
        let mut args = self.auth_args();
        args.push("--client-mount-timeout".into());
        args.push(OP_TIMEOUT_SECS.into());
        args
    }

    /// The image's size now, `None` when the image (or its pool) does not
    /// exist.
    pub async fn image_size(&self, volume: &VolumeId, image: &RbdVolume) -> Result<Option<u64>, NodeError> {
        let mut args: Vec<OsString> = vec!["info".into(), image.spec().into(), "--format".into(), "json".into()];
        args.extend(self.control_args());
        match self.run("rbd", args, CLI_DEADLINE).await {
            Ok(out) => parse_info_size(&out.stdout)
                .map(Some)
                .ok_or_else(|| NodeError::Parse { step: format!("rbd info {} for volume {volume}", image.spec()), detail: out.stdout }),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(NodeError::command(format!("read the size of image {} of volume {volume}", image.spec()), e)),
        }
    }
}

/// `size` from `rbd info --format json`.
fn parse_info_size(json: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(json).ok()?.get("size")?.as_u64()
}

/// `rbd` exits 2 (ENOENT) with "(2) No such file or directory" for a
/// missing image or pool.
fn is_not_found(error: &CommandError) -> bool {
    error.exit_code() == Some(2) && error.output_text().contains("(2) No such file or directory")
}

/// The RBD attachers of this node's one cluster, one per attach mode.
#[derive(Debug)]
pub struct RbdAttachers {
    cluster_id: String,
    detected: AttachMode,
    krbd: MappedAttacher,
    nbd: MappedAttacher,
    fuse: FuseAttacher,
}

impl RbdAttachers {
    /// Detects the host's attach mode (the one used when a volume does not
    /// name one) and builds every mode's attacher; rbd-fuse mounts go under
    /// `<state_dir>/rbd-fuse/<cluster-id>`.
    pub fn new(config: &CephAccess, state_dir: &Path, sys: Arc<dyn System>) -> Result<Self, NodeError> {
        let detected = detect(Path::new("/"), on_path);
        tracing::info!(cluster = %config.cluster_id, mode = %detected, "RBD attach mode detected (for volumes whose StorageClass names no mounter)");
        let cluster = Cluster::new(config.clone(), sys);
        Ok(RbdAttachers {
            cluster_id: config.cluster_id.clone(),
            detected,
            krbd: MappedAttacher::new(Mapper::Krbd, cluster.clone()),
            nbd: MappedAttacher::new(Mapper::Nbd, cluster.clone()),
            fuse: FuseAttacher::new(cluster, &fuse_root(state_dir, &config.cluster_id))?,
        })
    }

    /// The detected mode.
    pub fn mode(&self) -> AttachMode {
        self.detected
    }

    /// The attacher of `mode` (the detected one when `None`) for `volume`,
    /// which must name this node's cluster.
    pub fn for_volume(&self, volume: &VolumeId, mode: Option<AttachMode>) -> Result<&dyn Attacher, NodeError> {
        self.check_cluster(volume)?;
        Ok(match mode.unwrap_or(self.detected) {
            AttachMode::Krbd => &self.krbd,
            AttachMode::Nbd => &self.nbd,
            AttachMode::FuseLoop => &self.fuse,
        })
    }

    /// Every attacher that could hold `volume` on this host: for an unstage
    /// without a staging record, which mode staged it is unknown. rbd-nbd's
    /// only where it is installed (its listing is the program itself).
    pub fn all_for(&self, volume: &VolumeId) -> Result<Vec<&dyn Attacher>, NodeError> {
        self.check_cluster(volume)?;
        let mut all: Vec<&dyn Attacher> = vec![&self.krbd, &self.fuse];
        if on_path(Mapper::Nbd.program()) {
            all.push(&self.nbd);
        }
        Ok(all)
    }

    fn check_cluster(&self, volume: &VolumeId) -> Result<(), NodeError> {
        let image = rbd_volume(volume)?;
        // NOT_FOUND, not INVALID_ARGUMENT: the spec keeps INVALID_ARGUMENT
        // for missing or malformed fields, and this id is well-formed; it
        // names a cluster this node cannot reach, so for NodeStageVolume the
        // "volume does not exist" row applies (5 NOT_FOUND). It also matches
        // how an unknown backend is answered.
        if image.cluster != self.cluster_id {
            return Err(NodeError::VolumeNotFound {
                volume: volume.to_string(),
                reason: format!("Ceph cluster {:?} is not configured on this node (it serves {:?})", image.cluster, self.cluster_id),
            });
        }
        Ok(())
    }
}

/// Where a cluster's rbd-fuse mounts live.
pub fn fuse_root(state_dir: &Path, cluster_id: &str) -> PathBuf {
    state_dir.join("rbd-fuse").join(cluster_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(id: &str) -> VolumeId {
        id.parse().expect("valid id")
    }

    #[test]
    fn detection_prefers_krbd_then_nbd_then_fuse() {
        let root = tempfile::tempdir().expect("temp dir");
        let all = |_: &str| true;
        assert_eq!(detect(root.path(), all), AttachMode::FuseLoop, "nothing there");
        std::fs::create_dir_all(root.path().join("dev")).expect("mkdir");
        std::fs::write(root.path().join("dev/nbd0"), "").expect("touch");
        assert_eq!(detect(root.path(), all), AttachMode::Nbd, "/dev/nbd0");
        assert_eq!(detect(root.path(), |p| p != "rbd-nbd"), AttachMode::FuseLoop, "nbd without rbd-nbd installed");
        std::fs::remove_file(root.path().join("dev/nbd0")).expect("rm");
        std::fs::create_dir_all(root.path().join("sys/module/nbd")).expect("mkdir");
        assert_eq!(detect(root.path(), all), AttachMode::Nbd, "nbd module loaded");
        std::fs::create_dir_all(root.path().join("sys/bus/rbd")).expect("mkdir");
        assert_eq!(detect(root.path(), all), AttachMode::Krbd, "rbd bus wins");
    }

    #[test]
    fn short_calls_carry_op_timeouts_and_daemons_only_a_connect_timeout() {
        let config = CephAccess { cluster_id: "c".into(), ceph_conf: "/etc/ceph/c.conf".into(), keyring: "/etc/ceph/c.keyring".into(), user: "swell".into() };
        let cluster = Cluster::new(config, Arc::new(crate::system::HostSystem));
        let control: Vec<String> = cluster.control_args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            control.join(" "),
            "-c /etc/ceph/c.conf --id swell --keyring /etc/ceph/c.keyring --rados-osd-op-timeout 10 \
             --rados-mon-op-timeout 10 --client-mount-timeout 10"
        );
        let daemon: Vec<String> = cluster.data_path_args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(!daemon.iter().any(|a| a == "--rados-osd-op-timeout"), "{daemon:?}");
        assert!(daemon.iter().any(|a| a == "--client-mount-timeout"), "{daemon:?}");
    }

    #[test]
    fn parses_rbd_info_and_recognises_a_missing_image() {
        let json = r#"{"name":"img1","id":"10294dc1dabb","size":536870912,"objects":128,"order":22}"#;
        assert_eq!(parse_info_size(json), Some(536_870_912));
        assert_eq!(parse_info_size("rbd image 'x':"), None);
        let missing = CommandError::Failed {
            command: "rbd info rbd/nope".into(),
            code: Some(2),
            stderr: "rbd: error opening image nope: (2) No such file or directory".into(),
            stdout: String::new(),
        };
        assert!(is_not_found(&missing));
        let timeout = CommandError::Failed {
            command: "rbd info rbd/x".into(),
            code: Some(110),
            stderr: "rbd: error opening image x: (110) Connection timed out".into(),
            stdout: String::new(),
        };
        assert!(!is_not_found(&timeout));
    }

    #[test]
    fn a_volume_of_another_cluster_or_a_foreign_image_is_not_found() {
        let config = CephAccess { cluster_id: "ceph-a".into(), ceph_conf: "/c".into(), keyring: "/k".into(), user: "admin".into() };
        let state = tempfile::tempdir().expect("temp dir");
        let attachers = RbdAttachers::new(&config, state.path(), Arc::new(crate::system::HostSystem)).expect("attachers");
        let ours = RbdVolume::for_name("ceph-a", "rbd", "pvc").expect("volume");
        assert!(attachers.for_volume(&ours.id(), None).is_ok());
        let theirs = RbdVolume::for_name("ceph-b", "rbd", "pvc").expect("volume");
        let err = attachers.for_volume(&theirs.id(), Some(AttachMode::Krbd)).expect_err("other cluster");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.to_string().contains("ceph-b"), "{err}");
        // Which ids name a Swell image is storage's contract (tested there);
        // here: an id it refuses is NOT_FOUND, never attached.
        let err = attachers.for_volume(&volume("rbd:ceph-a:rbd:important"), None).expect_err("foreign image");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(attachers.all_for(&theirs.id()).expect_err("other cluster").code(), tonic::Code::NotFound);
    }
}
