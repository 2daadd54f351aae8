//! The two kernel-backed attach modes, which differ only in the program:
//! krbd (`rbd map` → /dev/rbdN, the kernel's rbd client) and rbd-nbd
//! (`rbd-nbd map` → /dev/nbdN, served by an rbd-nbd daemon). Both devices
//! follow an image resize on their own (krbd through the header watch,
//! rbd-nbd by resizing the nbd device), so a refresh only has to wait,
//! which `expand` does by polling the device size against `rbd info`.
//! rbd-nbd's daemon is started in a process group of its own, so it keeps
//! serving the device when the node is killed with its group.
//! Attachments are found by listing what is mapped (`rbd showmapped` /
//! `rbd-nbd list-mapped`, both JSON), so attach and detach are idempotent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use swell_storage::VolumeId;

use swell_storage::RbdVolume;

use super::cluster::{Cluster, rbd_volume};
use crate::attach::Attacher;
use crate::error::NodeError;
use crate::system::END_OF_OPTIONS;
use swell_storage::rbd_attach::MapOptions;

/// `map` connects and opens the image; `unmap` may flush.
const MAP_DEADLINE: Duration = Duration::from_secs(60);
/// Listing reads sysfs (krbd) or the nbd devices (rbd-nbd), no cluster I/O.
const LIST_DEADLINE: Duration = Duration::from_secs(15);

/// Which program maps images to block devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapper {
    /// `rbd map` / `rbd unmap` / `rbd showmapped`.
    Krbd,
    /// `rbd-nbd map` / `rbd-nbd unmap` / `rbd-nbd list-mapped`.
    Nbd,
}

/// One mapped image, from the mapper's JSON listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub pool: String,
    pub namespace: String,
    pub image: String,
    /// The snapshot, `None` for the image head.
    pub snap: Option<String>,
    pub device: PathBuf,
}

impl Mapper {
    /// The program.
    pub(crate) fn program(self) -> &'static str {
        match self {
            Mapper::Krbd => "rbd",
            Mapper::Nbd => "rbd-nbd",
        }
    }

    /// `map pool/image`, the StorageClass's map options (krbd: `-o` with
    /// the default `ms_mode`; rbd-nbd: `--option value`) and the cluster
    /// arguments. krbd's CLI only sets up the kernel mapping, so its
    /// librados calls get the op timeouts; rbd-nbd stays as the device's
    /// server and gets only a connect timeout. The `rbd` CLI takes the
    /// image after `--`; rbd-nbd (Ceph 16) refuses anything after one, so
    /// there the spec relies on its parts never starting with `-`
    /// (`swell_storage::rbd_volume`).
    pub(crate) fn map_args(self, cluster: &Cluster, image: &RbdVolume, options: &MapOptions) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["map".into()];
        match self {
            Mapper::Krbd => {
                args.extend(["-o".into(), options.krbd().into()]);
                args.extend(cluster.control_args());
                args.extend([END_OF_OPTIONS.into(), image.spec().into()]);
            }
            Mapper::Nbd => {
                args.push(image.spec().into());
                args.extend(options.nbd().into_iter().map(OsString::from));
                args.extend(cluster.data_path_args());
            }
        }
        args
    }

    /// `unmap <device>` (after `--` for the `rbd` CLI, as [`map_args`](Self::map_args)).
    pub(crate) fn unmap_args(self, cluster: &Cluster, device: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["unmap".into()];
        match self {
            Mapper::Krbd => {
                args.extend(cluster.control_args());
                args.extend([END_OF_OPTIONS.into(), device.into()]);
            }
            Mapper::Nbd => {
                args.push(device.into());
                args.extend(cluster.control_args());
            }
        }
        args
    }

    /// The JSON listing of what is mapped.
    pub(crate) fn list_args(self) -> Vec<OsString> {
        let verb = match self {
            Mapper::Krbd => "showmapped",
            Mapper::Nbd => "list-mapped",
        };
        vec![verb.into(), "--format".into(), "json".into()]
    }

    /// Reads the listing: krbd names the image `name` and shows no snapshot
    /// as `-`; rbd-nbd names it `image` and shows no snapshot as "".
    pub(crate) fn parse_mapped(self, json: &str) -> Result<Vec<Mapping>, String> {
        if json.trim().is_empty() {
            return Ok(Vec::new());
        }
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let entries = value.as_array().ok_or("not a JSON array")?;
        let image_key = match self {
            Mapper::Krbd => "name",
            Mapper::Nbd => "image",
        };
        entries
            .iter()
            .map(|entry| {
                let field = |key: &str| entry.get(key).and_then(|v| v.as_str()).map(str::to_owned);
                let required = |key: &str| field(key).ok_or_else(|| format!("entry without {key:?}: {entry}"));
                let snap = field("snap").filter(|s| !s.is_empty() && s != "-");
                Ok(Mapping {
                    pool: required("pool")?,
                    namespace: field("namespace").unwrap_or_default(),
                    image: required(image_key)?,
                    snap,
                    device: PathBuf::from(required("device")?),
                })
            })
            .collect()
    }
}

/// The devices mapping `image`'s head (not a snapshot) in its namespace:
/// another install's image of the same name in another namespace is not it.
pub(super) fn devices_of(mappings: &[Mapping], image: &RbdVolume) -> Vec<PathBuf> {
    mappings
        .iter()
        .filter(|m| m.pool == image.pool && m.namespace == image.namespace && m.image == image.image && m.snap.is_none())
        .map(|m| m.device.clone())
        .collect()
}

/// Attaches RBD images with krbd or rbd-nbd.
#[derive(Debug, Clone)]
pub(crate) struct MappedAttacher {
    mapper: Mapper,
    cluster: Cluster,
}

impl MappedAttacher {
    /// An attacher mapping with `mapper`.
    pub(crate) fn new(mapper: Mapper, cluster: Cluster) -> Self {
        MappedAttacher { mapper, cluster }
    }

    async fn mapped(&self, volume: &VolumeId, image: &RbdVolume) -> Result<Vec<PathBuf>, NodeError> {
        let program = self.mapper.program();
        let out = self
            .cluster
            .run(program, self.mapper.list_args(), LIST_DEADLINE)
            .await
            .map_err(|e| NodeError::command(format!("list {program} mappings for volume {volume}"), e))?;
        let mappings = self.mapper.parse_mapped(&out.stdout).map_err(|detail| NodeError::Parse { step: format!("{program} listing"), detail })?;
        Ok(devices_of(&mappings, image))
    }
}

#[async_trait::async_trait]
impl Attacher for MappedAttacher {
    async fn backing_size(&self, volume: &VolumeId) -> Result<Option<u64>, NodeError> {
        self.cluster.image_size(volume, &rbd_volume(volume)?).await
    }

    async fn attach(&self, volume: &VolumeId, options: &MapOptions) -> Result<PathBuf, NodeError> {
        let image = rbd_volume(volume)?;
        if let Some(device) = self.mapped(volume, &image).await?.into_iter().next() {
            return Ok(device);
        }
        let program = self.mapper.program();
        let args = self.mapper.map_args(&self.cluster, &image, options);
        let mapped = match self.mapper {
            Mapper::Krbd => self.cluster.run(program, args, MAP_DEADLINE).await,
            // The daemon rbd-nbd leaves is the device's server for as long
            // as the volume is staged, whatever becomes of this process.
            Mapper::Nbd => self.cluster.run_leaving_daemon(program, args, MAP_DEADLINE).await,
        };
        let out = mapped.map_err(|e| NodeError::command(format!("{program} map {} for volume {volume}", image.spec()), e))?;
        let device = out.stdout.trim();
        if !device.starts_with("/dev/") {
            return Err(NodeError::Parse { step: format!("{program} map"), detail: out.stdout });
        }
        Ok(PathBuf::from(device))
    }

    async fn find(&self, volume: &VolumeId) -> Result<Option<PathBuf>, NodeError> {
        let image = rbd_volume(volume)?;
        Ok(self.mapped(volume, &image).await?.into_iter().next())
    }

    async fn detach(&self, volume: &VolumeId, _device: Option<&Path>) -> Result<(), NodeError> {
        // The listing is the truth: a recorded device that no longer maps
        // this image is either gone or someone else's now.
        let image = rbd_volume(volume)?;
        let program = self.mapper.program();
        for device in self.mapped(volume, &image).await? {
            self.cluster
                .run(program, self.mapper.unmap_args(&self.cluster, &device), MAP_DEADLINE)
                .await
                .map_err(|e| NodeError::command(format!("{program} unmap {} of volume {volume}", device.display()), e))?;
        }
        Ok(())
    }

    async fn refresh_capacity(&self, _volume: &VolumeId, _device: &Path) -> Result<(), NodeError> {
        // Nothing to do: the device follows the image; the caller waits
        // until the device shows the image's size.
        Ok(())
    }

    async fn condition(&self, volume: &VolumeId, device: &Path) -> Result<Option<String>, NodeError> {
        let image = rbd_volume(volume)?;
        if self.mapped(volume, &image).await?.iter().any(|d| d == device) {
            return Ok(None);
        }
        Ok(Some(format!("{} no longer maps image {} of volume {volume}", device.display(), image.spec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_storage::CephAccess;

    fn cluster() -> Cluster {
        let config =
            CephAccess { cluster_id: "ceph-a".into(), ceph_conf: "/etc/ceph/a.conf".into(), keyring: "/etc/ceph/a.keyring".into(), user: "swell".into() };
        Cluster::new(config, std::sync::Arc::new(crate::system::HostSystem::default()))
    }

    fn image() -> RbdVolume {
        RbdVolume::for_name("ceph-a", "rbd", "pvc-1").unwrap()
    }

    fn line(args: &[OsString]) -> String {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn builds_map_unmap_and_list_command_lines() {
        let auth = "-c /etc/ceph/a.conf --id swell --keyring /etc/ceph/a.keyring";
        let timeouts = "--rados-osd-op-timeout 10 --rados-mon-op-timeout 10 --client-mount-timeout 10";
        assert_eq!(Mapper::Krbd.program(), "rbd");
        let none = MapOptions::default();
        assert_eq!(line(&Mapper::Krbd.map_args(&cluster(), &image(), &none)), format!("map -o ms_mode=prefer-crc {auth} {timeouts} -- {}", image().spec()));
        assert_eq!(Mapper::Nbd.program(), "rbd-nbd");
        assert_eq!(line(&Mapper::Nbd.map_args(&cluster(), &image(), &none)), format!("map {} {auth} --client-mount-timeout 10", image().spec()));
        let given = MapOptions::parse("krbd:ms_mode=secure,queue_depth=64;nbd:io-timeout=30,reattach-timeout=60", None).unwrap();
        assert_eq!(
            line(&Mapper::Krbd.map_args(&cluster(), &image(), &given)),
            format!("map -o ms_mode=secure,queue_depth=64 {auth} {timeouts} -- {}", image().spec())
        );
        assert_eq!(
            line(&Mapper::Nbd.map_args(&cluster(), &image(), &given)),
            format!("map {} --io-timeout 30 --reattach-timeout 60 {auth} --client-mount-timeout 10", image().spec())
        );
        assert_eq!(line(&Mapper::Krbd.unmap_args(&cluster(), Path::new("/dev/rbd3"))), format!("unmap {auth} {timeouts} -- /dev/rbd3"));
        assert_eq!(line(&Mapper::Nbd.unmap_args(&cluster(), Path::new("/dev/nbd0"))), format!("unmap /dev/nbd0 {auth} {timeouts}"));
        assert_eq!(line(&Mapper::Krbd.list_args()), "showmapped --format json");
        assert_eq!(line(&Mapper::Nbd.list_args()), "list-mapped --format json");
    }

    #[test]
    fn a_namespaced_volume_is_mapped_by_its_pool_namespace_image_spec() {
        let spaced = RbdVolume::for_name_in("ceph-a", "rbd", "team-b", "pvc-1").unwrap();
        let none = MapOptions::default();
        for mapper in [Mapper::Krbd, Mapper::Nbd] {
            let args = mapper.map_args(&cluster(), &spaced, &none);
            assert!(args.contains(&OsString::from(format!("rbd/team-b/{}", spaced.image))), "{args:?}");
        }
    }

    #[test]
    fn parses_rbd_showmapped_json() {
        // As Ceph 16.2's `rbd showmapped --format json` prints it.
        let json = r#"[{"id":"0","pool":"rbd","namespace":"","name":"pvc-1","snap":"-","device":"/dev/rbd0"},
            {"id":"1","pool":"rbd","namespace":"","name":"pvc-1","snap":"s1","device":"/dev/rbd1"},
            {"id":"2","pool":"other","namespace":"","name":"pvc-1","snap":"-","device":"/dev/rbd2"},
            {"id":"3","pool":"rbd","namespace":"ns","name":"pvc-1","snap":"-","device":"/dev/rbd3"}]"#
            .replace("pvc-1", &image().image);
        let mappings = Mapper::Krbd.parse_mapped(&json).expect("parses");
        assert_eq!(mappings.len(), 4);
        assert_eq!(mappings[1].snap.as_deref(), Some("s1"));
        assert_eq!(devices_of(&mappings, &image()), vec![PathBuf::from("/dev/rbd0")]);
        // Another install's image of the same name, in namespace ns, is not ours, and the other way round.
        let spaced = RbdVolume::for_name_in("ceph-a", "rbd", "ns", "pvc-1").unwrap();
        assert_eq!(devices_of(&mappings, &spaced), vec![PathBuf::from("/dev/rbd3")]);
        assert!(Mapper::Krbd.parse_mapped("[]").expect("empty").is_empty());
        assert!(Mapper::Krbd.parse_mapped("").expect("nothing mapped").is_empty());
        assert!(Mapper::Krbd.parse_mapped(r#"[{"pool":"rbd"}]"#).is_err());
        assert!(Mapper::Krbd.parse_mapped("id pool image").is_err());
    }

    #[test]
    fn parses_rbd_nbd_list_mapped_json() {
        // As Ceph 16.2's `rbd-nbd list-mapped --format json` prints it: the
        // id is the rbd-nbd pid, the image is under "image".
        let json = r#"[{"id":4242,"pool":"rbd","namespace":"","image":"pvc-1","snap":"","device":"/dev/nbd0","cookie":"abc"},
            {"id":4243,"pool":"rbd","namespace":"","image":"pvc-2","snap":"","device":"/dev/nbd1","cookie":""}]"#
            .replace("pvc-1", &image().image);
        let mappings = Mapper::Nbd.parse_mapped(&json).expect("parses");
        assert_eq!(devices_of(&mappings, &image()), vec![PathBuf::from("/dev/nbd0")]);
        // krbd's key does not fit rbd-nbd's output and vice versa.
        assert!(Mapper::Krbd.parse_mapped(&json).is_err());
    }
}
