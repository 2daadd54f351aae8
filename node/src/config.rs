//! The node's configuration, shared by the binary's command line and tests.

use std::path::PathBuf;
use std::time::Duration;

use swell_storage::CephAccess;

/// Where the node keeps its state and how it names itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id as reported by NodeGetInfo (the Kubernetes node name).
    pub node_id: String,
    /// The CSI driver name.
    pub driver_name: String,
    /// The node's own records (staging records), e.g. /var/lib/swell/node.
    pub state_dir: PathBuf,
    /// The local backend's state dir, shared with the controller; local
    /// volumes' backing files live under it.
    pub local_state_dir: PathBuf,
    /// The CSI endpoint, e.g. unix:///csi/csi.sock.
    pub endpoint: String,
    /// The Ceph cluster whose RBD images this node attaches; `None` when
    /// the node serves local volumes only.
    pub rbd: Option<CephAccess>,
    /// Where kubelet keeps staging and target paths: every such path must
    /// lie under it, with no symlink below it. `swell-node` sets it
    /// (`--kubelet-dir`, default `/var/lib/kubelet`); `None`, for tests and
    /// embedding, checks nothing.
    pub kubelet_dir: Option<PathBuf>,
    /// How often the node looks for staged volumes whose backend grew, to
    /// grow them without waiting for kubelet's NodeExpandVolume (see
    /// `background_grow`); `None` leaves that to kubelet. `swell-node` sets
    /// it (`--grow-on-backend-change-ms`, default 2 s); tests and embedding
    /// start without it.
    pub grow_on_backend_change: Option<Duration>,
    /// How far apart the node writes each mounted auto-grow volume's usage
    /// into its backend's store at most (see `usage_report`; a crossing of
    /// the volume's threshold is written at once); `None` reports nothing.
    /// `swell-node` sets it (`--usage-report-interval-ms`, default 30 s);
    /// tests and embedding start without it.
    pub usage_report: Option<Duration>,
}

impl NodeConfig {
    /// A configuration with the defaults for everything but the node id.
    pub fn new(node_id: impl Into<String>) -> Self {
        NodeConfig {
            node_id: node_id.into(),
            driver_name: csi_endpoint::identity::DEFAULT_DRIVER_NAME.to_owned(),
            state_dir: PathBuf::from("/var/lib/swell/node"),
            local_state_dir: PathBuf::from("/var/lib/swell/local"),
            endpoint: "unix:///csi/csi.sock".to_owned(),
            rbd: None,
            kubelet_dir: None,
            grow_on_backend_change: None,
            usage_report: None,
        }
    }
}
