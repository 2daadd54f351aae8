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

mod cluster;
mod fuse;
mod mapped;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use swell_storage::VolumeId;

pub(crate) use fuse::FuseAttacher;
pub(crate) use mapped::{MappedAttacher, Mapper};
pub use swell_storage::rbd_attach::AttachMode;

use super::attacher::Attacher;
use crate::error::NodeError;
use crate::system::System;
use cluster::Cluster;
pub(crate) use cluster::rbd_volume;
use swell_storage::CephAccess;
use swell_storage::auto_grow::rbd::{RECORD_META, USAGE_META, WANTED_OBJECT};
use swell_storage::auto_grow::{AutoGrowRecord, Usage};
use swell_storage::rbd_attach::WRAPPED_KEY_META;

/// Picks the attach mode from what the host offers under `root` (`/` in
/// production, a fake tree in tests): krbd when the rbd bus exists (the
/// module is loaded), else rbd-nbd when the nbd driver is there and the
/// `rbd-nbd` program is installed, else rbd-fuse with a loop device, which
/// needs no kernel module beyond fuse and loop.
pub(crate) fn detect(root: &Path, has_program: impl Fn(&str) -> bool) -> AttachMode {
    if root.join("sys/bus/rbd").exists() {
        return AttachMode::Krbd;
    }
    let nbd_driver = root.join("sys/module/nbd").exists() || root.join("dev/nbd0").exists();
    if nbd_driver && has_program("rbd-nbd") {
        return AttachMode::Nbd;
    }
    AttachMode::FuseLoop
}

/// How this host attaches RBD images now (see `detect`).
pub fn host_mode() -> AttachMode {
    detect(Path::new("/"), on_path)
}

/// Whether `program` is an executable file on `PATH`.
pub(crate) fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    })
}

/// The RBD attachers of this node's one cluster, one per attach mode.
#[derive(Debug)]
pub(crate) struct RbdAttachers {
    cluster_id: String,
    cluster: Cluster,
    detected: AttachMode,
    krbd: MappedAttacher,
    nbd: MappedAttacher,
    fuse: FuseAttacher,
}

impl RbdAttachers {
    /// The JSON value at image metadata `key` of `volume`, `None` when unset.
    async fn json_meta<T: serde::de::DeserializeOwned>(&self, volume: &VolumeId, key: &str, what: &str) -> Result<Option<T>, NodeError> {
        self.check_cluster(volume)?;
        let Some(json) = self.cluster.image_meta(volume, &rbd_volume(volume)?, key, what).await? else { return Ok(None) };
        serde_json::from_str(&json).map(Some).map_err(|e| NodeError::Parse { step: format!("{what} of volume {volume}"), detail: e.to_string() })
    }

    /// Detects the host's attach mode (the one used when a volume does not
    /// name one) and builds every mode's attacher; rbd-fuse mounts go under
    /// `<state_dir>/rbd-fuse/<cluster-id>`.
    pub(crate) fn new(config: &CephAccess, state_dir: &Path, sys: Arc<dyn System>) -> Result<Self, NodeError> {
        let detected = host_mode();
        tracing::info!(cluster = %config.cluster_id, mode = %detected, "RBD attach mode detected (for volumes whose StorageClass names no mounter)");
        let cluster = Cluster::new(config.clone(), sys);
        Ok(RbdAttachers {
            cluster_id: config.cluster_id.clone(),
            cluster: cluster.clone(),
            detected,
            krbd: MappedAttacher::new(Mapper::Krbd, cluster.clone()),
            nbd: MappedAttacher::new(Mapper::Nbd, cluster.clone()),
            fuse: FuseAttacher::new(cluster, &fuse_root(state_dir, &config.cluster_id))?,
        })
    }

    /// The detected mode.
    pub(crate) fn mode(&self) -> AttachMode {
        self.detected
    }

    /// The attacher of `mode` (the detected one when `None`) for `volume`,
    /// which must name this node's cluster.
    pub(crate) fn for_volume(&self, volume: &VolumeId, mode: Option<AttachMode>) -> Result<&dyn Attacher, NodeError> {
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
    pub(crate) fn all_for(&self, volume: &VolumeId) -> Result<Vec<&dyn Attacher>, NodeError> {
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

/// An encrypted RBD volume's wrapped data key lives in its image's metadata.
#[async_trait::async_trait]
impl crate::crypt::KeyStore for RbdAttachers {
    async fn wrapped_key(&self, volume: &VolumeId) -> Result<Option<String>, NodeError> {
        self.check_cluster(volume)?;
        self.cluster.image_meta(volume, &rbd_volume(volume)?, WRAPPED_KEY_META, "wrapped data key").await
    }

    async fn store_wrapped_key(&self, volume: &VolumeId, wrapped: &str) -> Result<(), NodeError> {
        self.check_cluster(volume)?;
        // Ciphertext: safe in an argument.
        self.cluster.set_image_meta(volume, &rbd_volume(volume)?, WRAPPED_KEY_META, wrapped, "wrapped data key").await
    }
}

/// An RBD volume's auto-grow policy and usage live in its image's
/// metadata, its mark in its pool's (and namespace's) marks object
/// (docs/auto-grow.md), as the controller's RBD backend reads them.
#[async_trait::async_trait]
impl crate::usage_store::UsageStore for RbdAttachers {
    async fn record(&self, volume: &VolumeId) -> Result<Option<AutoGrowRecord>, NodeError> {
        self.json_meta(volume, RECORD_META, "auto-grow policy").await
    }

    async fn usage(&self, volume: &VolumeId) -> Result<Option<Usage>, NodeError> {
        self.json_meta(volume, USAGE_META, "usage reading").await
    }

    async fn write_usage(&self, volume: &VolumeId, usage: &Usage, mark: bool) -> Result<(), NodeError> {
        self.check_cluster(volume)?;
        let image = rbd_volume(volume)?;
        let json = serde_json::to_string(usage).map_err(|e| NodeError::Parse { step: format!("usage of volume {volume}"), detail: e.to_string() })?;
        self.cluster.set_image_meta(volume, &image, USAGE_META, &json, "usage reading").await?;
        if mark {
            self.cluster.set_omap(volume, &image, WANTED_OBJECT, &image.image, &usage.read_unix.to_string()).await?;
        }
        Ok(())
    }
}

/// Where a cluster's rbd-fuse mounts live.
pub(crate) fn fuse_root(state_dir: &Path, cluster_id: &str) -> PathBuf {
    state_dir.join("rbd-fuse").join(cluster_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_storage::CephAccess;
    use swell_storage::rbd_volume::RbdVolume;

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
    fn a_volume_of_another_cluster_or_a_foreign_image_is_not_found() {
        let config = CephAccess { cluster_id: "ceph-a".into(), ceph_conf: "/c".into(), keyring: "/k".into(), user: "admin".into() };
        let state = tempfile::tempdir().expect("temp dir");
        let attachers = RbdAttachers::new(&config, state.path(), Arc::new(crate::system::HostSystem::default())).expect("attachers");
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
