//! The configured Ceph cluster as the `rbd` CLI reaches it, and the one
//! reading of an RBD volume id on this node: what every RBD attach mode
//! shares.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use swell_storage::command::{CommandError, Output};
use swell_storage::rbd_volume::{self, RbdVolume};
use swell_storage::{CephAccess, VolumeId};

use crate::error::NodeError;
use crate::system::{END_OF_OPTIONS, System};

/// librados' op timeouts for CLI calls, in seconds (`rbd info` takes ~50 ms).
const OP_TIMEOUT_SECS: &str = "10";
/// The deadline around a whole CLI call: the op timeouts plus start-up.
const CLI_DEADLINE: Duration = Duration::from_secs(25);

/// The RBD volume an id names (the one contract, `swell_storage::rbd_volume`);
/// a well-formed id that names no Swell image is a volume that does not
/// exist, to this node as to the controller.
pub(crate) fn rbd_volume(volume: &VolumeId) -> Result<RbdVolume, NodeError> {
    RbdVolume::parse(volume).ok_or_else(|| NodeError::VolumeNotFound {
        volume: volume.to_string(),
        reason: format!("an rbd volume id is rbd:<cluster-id>:<pool>:[<namespace>:]{}<32 hex digits>", rbd_volume::IMAGE_PREFIX),
    })
}

/// The configured cluster as the `rbd` CLI reaches it, and the host the
/// Ceph tools run on.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    config: CephAccess,
    sys: Arc<dyn System>,
}

impl Cluster {
    /// A cluster handle for `config`, whose tools run through `sys`.
    pub(crate) fn new(config: CephAccess, sys: Arc<dyn System>) -> Self {
        Cluster { config, sys }
    }

    /// The host the attachers act on.
    pub(crate) fn sys(&self) -> &dyn System {
        self.sys.as_ref()
    }

    /// Runs a Ceph tool.
    pub(super) async fn run(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output, CommandError> {
        self.sys.run(program, args, deadline).await
    }

    /// Runs a Ceph tool that leaves a daemon serving a device.
    pub(super) async fn run_leaving_daemon(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output, CommandError> {
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
    pub(crate) fn control_args(&self) -> Vec<OsString> {
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
    pub(crate) fn data_path_args(&self) -> Vec<OsString> {
        let mut args = self.auth_args();
        args.push("--client-mount-timeout".into());
        args.push(OP_TIMEOUT_SECS.into());
        args
    }

    /// The image's size now, `None` when the image (or its pool) does not
    /// exist.
    pub(crate) async fn image_size(&self, volume: &VolumeId, image: &RbdVolume) -> Result<Option<u64>, NodeError> {
        let mut args: Vec<OsString> = vec!["info".into(), "--format".into(), "json".into()];
        args.extend(self.control_args());
        args.extend([END_OF_OPTIONS.into(), image.spec().into()]);
        match self.run("rbd", args, CLI_DEADLINE).await {
            Ok(out) => parse_info_size(&out.stdout)
                .map(Some)
                .ok_or_else(|| NodeError::Parse { step: format!("rbd info {} for volume {volume}", image.spec()), detail: out.stdout }),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(NodeError::command(format!("read the size of image {} of volume {volume}", image.spec()), e)),
        }
    }
}

impl Cluster {
    fn image_meta_args(&self, verb: &str, image: &RbdVolume, key: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["image-meta".into(), verb.into()];
        args.extend(self.control_args());
        args.extend([END_OF_OPTIONS.into(), image.spec().into(), key.into()]);
        args
    }

    /// The image metadata value of `key` (`what` it holds, for errors),
    /// `None` when unset.
    pub(crate) async fn image_meta(&self, volume: &VolumeId, image: &RbdVolume, key: &str, what: &str) -> Result<Option<String>, NodeError> {
        match self.run("rbd", self.image_meta_args("get", image, key), CLI_DEADLINE).await {
            Ok(out) => Ok(Some(out.stdout.trim().to_owned())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(NodeError::command(format!("read the {what} of image {} of volume {volume}", image.spec()), e)),
        }
    }

    /// Sets the image metadata `key` to `value` (never a secret: it is an
    /// argument).
    pub(crate) async fn set_image_meta(&self, volume: &VolumeId, image: &RbdVolume, key: &str, value: &str, what: &str) -> Result<(), NodeError> {
        let mut args = self.image_meta_args("set", image, key);
        args.push(value.into());
        self.run("rbd", args, CLI_DEADLINE)
            .await
            .map_err(|e| NodeError::command(format!("store the {what} of image {} of volume {volume}", image.spec()), e))?;
        Ok(())
    }

    /// Sets omap `key` of object `oid` in the image's pool and namespace to
    /// `value`, creating the object if needed.
    pub(crate) async fn set_omap(&self, volume: &VolumeId, image: &RbdVolume, oid: &str, key: &str, value: &str) -> Result<(), NodeError> {
        let mut args: Vec<OsString> = vec!["--pool".into(), image.pool.clone().into()];
        if !image.namespace.is_empty() {
            args.extend(["--namespace".into(), image.namespace.clone().into()]);
        }
        args.extend(self.control_args());
        args.extend([END_OF_OPTIONS.into(), "setomapval".into(), oid.into(), key.into(), value.into()]);
        self.run("rados", args, CLI_DEADLINE)
            .await
            .map_err(|e| NodeError::command(format!("set {key} in {oid} of pool {} for volume {volume}", image.pool), e))?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_calls_carry_op_timeouts_and_daemons_only_a_connect_timeout() {
        let config = CephAccess { cluster_id: "c".into(), ceph_conf: "/etc/ceph/c.conf".into(), keyring: "/etc/ceph/c.keyring".into(), user: "swell".into() };
        let cluster = Cluster::new(config, Arc::new(crate::system::HostSystem::default()));
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
}
