//! The RBD volume-id contract, shared by the controller (which makes the
//! ids) and the node (which attaches what they name): an RBD volume is
//! `rbd:<cluster-id>:<pool>:<image>`, and its image is always
//! `swell-<32 hex>`, the first 16 bytes of sha256 of the CO's volume name, so
//! a retried create lands on the same image. Nothing else is ever read,
//! grown, attached or removed through a volume id: an id naming any other
//! image names no volume.

use std::fmt;
use std::path::PathBuf;

use crate::volume_id::{VolumeId, VolumeIdError, is_name_digest, name_digest};

/// The id prefix of RBD volumes.
pub const KIND: &str = "rbd";
/// Every Swell image name starts with this.
pub const IMAGE_PREFIX: &str = "swell-";

/// How a process reaches one Ceph cluster, and the id its volume ids carry:
/// one shape for the controller, the node and every tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CephAccess {
    /// Names the cluster in volume ids; lowercase `[a-z0-9._-]`. Changing
    /// it orphans existing volumes.
    pub cluster_id: String,
    /// The cluster's `ceph.conf` (monitor addresses).
    pub ceph_conf: PathBuf,
    /// The keyring holding `client.<user>`'s key.
    pub keyring: PathBuf,
    /// The cephx user, without `client.`.
    pub user: String,
}

impl CephAccess {
    /// Access as `client.admin`.
    pub fn new(cluster_id: impl Into<String>, ceph_conf: impl Into<PathBuf>, keyring: impl Into<PathBuf>) -> Self {
        CephAccess { cluster_id: cluster_id.into(), ceph_conf: ceph_conf.into(), keyring: keyring.into(), user: "admin".into() }
    }
}

/// Where an RBD volume lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RbdVolume {
    /// The cluster id from the volume id.
    pub cluster: String,
    /// The pool.
    pub pool: String,
    /// The image name (`swell-<32 hex>`).
    pub image: String,
}

/// The image a volume named `name` gets.
pub fn image_name(name: &str) -> String {
    format!("{IMAGE_PREFIX}{}", name_digest(name))
}

/// Whether `image` has the shape of a Swell image name.
pub fn is_swell_image(image: &str) -> bool {
    image.strip_prefix(IMAGE_PREFIX).is_some_and(is_name_digest)
}

/// Whether a cluster id or pool may be part of a volume id: not empty, no
/// `:`, and not starting with `-`, which the Ceph CLIs would read as an
/// option.
fn part_ok(part: &str) -> bool {
    !part.is_empty() && !part.contains(':') && !part.starts_with('-')
}

impl RbdVolume {
    /// The volume a CO name gets in `pool` of `cluster`; an error when the
    /// cluster id or pool cannot be part of a volume id.
    pub fn for_name(cluster: &str, pool: &str, name: &str) -> Result<Self, VolumeIdError> {
        Self::at(cluster, pool, &image_name(name))
    }

    /// The volume of an existing Swell image; an error when the parts
    /// cannot form a volume id or `image` is not a Swell image name.
    pub fn at(cluster: &str, pool: &str, image: &str) -> Result<Self, VolumeIdError> {
        let volume = RbdVolume { cluster: cluster.to_owned(), pool: pool.to_owned(), image: image.to_owned() };
        let id = volume.id_checked()?;
        Self::parse(&id).ok_or(VolumeIdError::Malformed(id.to_string()))
    }

    /// `rbd:<cluster>:<pool>:<image>`, or `None` for an id that names no
    /// Swell RBD volume (another backend, a wrong shape, a foreign image).
    pub fn parse(id: &VolumeId) -> Option<Self> {
        if id.backend() != KIND {
            return None;
        }
        let mut parts = id.key().split(':');
        let (cluster, pool, image) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !part_ok(cluster) || !part_ok(pool) || !is_swell_image(image) {
            return None;
        }
        Some(RbdVolume { cluster: cluster.to_owned(), pool: pool.to_owned(), image: image.to_owned() })
    }

    fn id_checked(&self) -> Result<VolumeId, VolumeIdError> {
        if [&self.cluster, &self.pool].iter().any(|part| !part_ok(part)) {
            return Err(VolumeIdError::Malformed(format!("{KIND}:{}:{}:{}", self.cluster, self.pool, self.image)));
        }
        VolumeId::new(KIND, &format!("{}:{}:{}", self.cluster, self.pool, self.image))
    }

    /// The volume id.
    pub fn id(&self) -> VolumeId {
        self.id_checked().unwrap_or_else(|_| unreachable!("an RbdVolume is only built from valid parts"))
    }

    /// `pool/image`, as the Ceph CLIs take it.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }
}

impl fmt::Display for RbdVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KIND}:{}:{}:{}", self.cluster, self.pool, self.image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_or_cluster_that_reads_as_an_option_names_no_volume() {
        let image = image_name("pvc");
        for id in [format!("rbd:c:-p:{image}"), format!("rbd:-c:p:{image}"), format!("rbd:c:--help:{image}")] {
            let id: VolumeId = id.parse().expect("a well-formed id");
            assert_eq!(RbdVolume::parse(&id), None, "{id}");
        }
        assert!(RbdVolume::for_name("c", "-p", "pvc").is_err());
        assert!(RbdVolume::for_name("c", "p-1", "pvc").is_ok());
    }

    #[test]
    fn image_names_are_stable_digests() {
        let a = image_name("pvc-1");
        assert_eq!(a, image_name("pvc-1"));
        assert_ne!(a, image_name("pvc-2"));
        assert!(is_swell_image(&a), "{a}");
        assert_eq!(a.len(), IMAGE_PREFIX.len() + 32);
        for other in ["swell-", "swell-0123", "swell-0123456789ABCDEF0123456789abcdef", "csi-vol-1", &format!("x{a}")] {
            assert!(!is_swell_image(other), "{other}");
        }
    }

    #[test]
    fn ids_round_trip_and_name_only_swell_images() {
        let volume = RbdVolume::for_name("ceph-a", "rbd", "pvc").unwrap();
        let id = volume.id();
        assert_eq!(id.to_string(), format!("rbd:ceph-a:rbd:{}", image_name("pvc")));
        assert_eq!(volume.to_string(), id.to_string());
        assert_eq!(RbdVolume::parse(&id), Some(volume.clone()));
        assert_eq!(volume.spec(), format!("rbd/{}", volume.image));
        for other in ["rbd:ceph-a:rbd:important", "rbd:ceph-a:rbd", "local:abc", "rbd:a:b:swell-00:x", &format!("local:a:b:{}", volume.image)] {
            assert_eq!(RbdVolume::parse(&other.parse().unwrap()), None, "{other}");
        }
    }

    #[test]
    fn parts_that_cannot_be_in_an_id_are_refused() {
        assert!(RbdVolume::for_name("ceph-a", "Bad Pool", "pvc").is_err());
        assert!(RbdVolume::for_name("ceph-a", "a:b", "pvc").is_err());
        assert!(RbdVolume::for_name("", "rbd", "pvc").is_err());
        assert!(RbdVolume::at("ceph-a", "rbd", "important").is_err());
    }
}
