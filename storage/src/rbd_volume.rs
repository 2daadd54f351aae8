//! The RBD volume-id contract, shared by the controller (which makes the
//! ids) and the node (which attaches what they name): an RBD volume is
//! `rbd:<cluster-id>:<pool>:<image>`, or `rbd:<cluster-id>:<pool>:<namespace>:<image>`
//! for an install that keeps its volumes in a RADOS namespace, and its image is always
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
    /// The RADOS namespace in the pool; empty: the pool's default one.
    pub namespace: String,
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

/// The longest RADOS namespace name Swell accepts.
/// A volume id is at most 128 bytes, and the image name takes 38 of them.
pub const MAX_NAMESPACE_LEN: usize = 32;

/// Why `namespace` cannot name a RADOS namespace of Swell's, or `None`
/// when it can. Empty is the pool's default namespace. Otherwise at most
/// [`MAX_NAMESPACE_LEN`] bytes of `[a-z0-9_.-]` (what a volume id may
/// hold), not starting with `-` (the Ceph CLIs would read it as an option)
/// or `.`; the Ceph CLIs split image specs at `/` and `@`.
pub fn namespace_problem(namespace: &str) -> Option<String> {
    if namespace.len() > MAX_NAMESPACE_LEN {
        return Some(format!("is {} bytes long; at most {MAX_NAMESPACE_LEN} are allowed", namespace.len()));
    }
    if namespace.starts_with(['-', '.']) {
        return Some("must not start with '-' or '.'".into());
    }
    if let Some(c) = namespace.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))) {
        return Some(format!("holds {c:?}; only a-z, 0-9, '_', '.' and '-' are allowed"));
    }
    None
}

/// How the key (the id after `rbd:`) of every volume in `pool` and
/// `namespace` of `cluster` starts; listings page by it.
pub fn key_prefix(cluster: &str, pool: &str, namespace: &str) -> String {
    match namespace {
        "" => format!("{cluster}:{pool}:"),
        namespace => format!("{cluster}:{pool}:{namespace}:"),
    }
}

impl RbdVolume {
    /// The volume a CO name gets in `pool` of `cluster`; an error when the
    /// cluster id or pool cannot be part of a volume id.
    pub fn for_name(cluster: &str, pool: &str, name: &str) -> Result<Self, VolumeIdError> {
        Self::at(cluster, pool, &image_name(name))
    }

    /// Like [`for_name`](Self::for_name), in RADOS namespace `namespace` of
    /// the pool (empty: the default one).
    pub fn for_name_in(cluster: &str, pool: &str, namespace: &str, name: &str) -> Result<Self, VolumeIdError> {
        Self::at_in(cluster, pool, namespace, &image_name(name))
    }

    /// The volume of an existing Swell image; an error when the parts
    /// cannot form a volume id or `image` is not a Swell image name.
    pub fn at(cluster: &str, pool: &str, image: &str) -> Result<Self, VolumeIdError> {
        Self::at_in(cluster, pool, "", image)
    }

    /// Like [`at`](Self::at), in RADOS namespace `namespace` of the pool.
    pub fn at_in(cluster: &str, pool: &str, namespace: &str, image: &str) -> Result<Self, VolumeIdError> {
        let volume = RbdVolume { cluster: cluster.to_owned(), pool: pool.to_owned(), namespace: namespace.to_owned(), image: image.to_owned() };
        let id = volume.id_checked()?;
        Self::parse(&id).ok_or(VolumeIdError::Malformed(id.to_string()))
    }

    /// `rbd:<cluster>:<pool>:[<namespace>:]<image>`, or `None` for an id
    /// that names no Swell RBD volume (another backend, a wrong shape, a
    /// foreign image, a namespace Swell would refuse).
    pub fn parse(id: &VolumeId) -> Option<Self> {
        if id.backend() != KIND {
            return None;
        }
        let parts: Vec<&str> = id.key().split(':').collect();
        let (cluster, pool, namespace, image) = match parts[..] {
            [cluster, pool, image] => (cluster, pool, "", image),
            // An empty namespace has one spelling only: none.
            [cluster, pool, namespace, image] if !namespace.is_empty() => (cluster, pool, namespace, image),
            _ => return None,
        };
        if !part_ok(cluster) || !part_ok(pool) || namespace_problem(namespace).is_some() || !is_swell_image(image) {
            return None;
        }
        Some(RbdVolume { cluster: cluster.to_owned(), pool: pool.to_owned(), namespace: namespace.to_owned(), image: image.to_owned() })
    }

    fn id_checked(&self) -> Result<VolumeId, VolumeIdError> {
        if [&self.cluster, &self.pool].iter().any(|part| !part_ok(part)) || namespace_problem(&self.namespace).is_some() {
            return Err(VolumeIdError::Malformed(self.to_string()));
        }
        VolumeId::new(KIND, &self.key())
    }

    /// The id without its `rbd:` prefix.
    fn key(&self) -> String {
        format!("{}{}", key_prefix(&self.cluster, &self.pool, &self.namespace), self.image)
    }

    /// The volume id.
    pub fn id(&self) -> VolumeId {
        self.id_checked().unwrap_or_else(|_| unreachable!("an RbdVolume is only built from valid parts"))
    }

    /// `pool/image` or `pool/namespace/image`, as the Ceph CLIs take it.
    pub fn spec(&self) -> String {
        match self.namespace.as_str() {
            "" => format!("{}/{}", self.pool, self.image),
            namespace => format!("{}/{namespace}/{}", self.pool, self.image),
        }
    }
}

impl fmt::Display for RbdVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KIND}:{}", self.key())
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
    fn a_namespace_is_part_of_the_id_and_the_spec_and_the_default_keeps_the_old_shape() {
        let plain = RbdVolume::for_name("ceph-a", "rbd", "pvc").unwrap();
        assert_eq!(plain, RbdVolume::for_name_in("ceph-a", "rbd", "", "pvc").unwrap(), "the default namespace is today's id");
        let spaced = RbdVolume::for_name_in("ceph-a", "rbd", "team-b", "pvc").unwrap();
        assert_eq!(spaced.id().to_string(), format!("rbd:ceph-a:rbd:team-b:{}", image_name("pvc")));
        assert_eq!(spaced.spec(), format!("rbd/team-b/{}", image_name("pvc")));
        assert_eq!(RbdVolume::parse(&spaced.id()), Some(spaced.clone()));
        assert_ne!(spaced.id(), plain.id(), "one name in two namespaces is two volumes");
        // An empty namespace has one spelling; a refused one names no volume.
        for other in [format!("rbd:ceph-a:rbd::{}", image_name("pvc")), format!("rbd:ceph-a:rbd:-ns:{}", image_name("pvc"))] {
            assert!(other.parse::<VolumeId>().ok().and_then(|id| RbdVolume::parse(&id)).is_none(), "{other}");
        }
    }

    #[test]
    fn namespaces_the_ceph_clis_could_misread_are_refused() {
        for ok in ["", "a", "team-b", "team_b.1", &"n".repeat(MAX_NAMESPACE_LEN)] {
            assert_eq!(namespace_problem(ok), None, "{ok:?}");
        }
        for (bad, why) in [
            ("-n", "start"),
            ("--help", "start"),
            (".hidden", "start"),
            ("a/b", "'/'"),
            ("a@b", "'@'"),
            ("a:b", "':'"),
            ("a b", "' '"),
            ("Team", "'T'"),
            ("ü", "'ü'"),
            (&"n".repeat(MAX_NAMESPACE_LEN + 1), "at most"),
        ] {
            let problem = namespace_problem(bad).unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(problem.contains(why), "{bad:?}: {problem}");
            assert!(RbdVolume::for_name_in("ceph-a", "rbd", bad, "pvc").is_err(), "{bad:?}");
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
