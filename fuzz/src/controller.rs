//! The controller's RPCs, each answered by the real service over a local
//! backend in a scratch directory, as the gRPC server would call them.

use std::sync::OnceLock;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::*;
use parking_lot::Mutex;
use swell_backends::BackendConfig;
use swell_controller::ControllerService;
use swell_local::LocalConfig;
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tonic::{Code, Request};

use crate::grpc::{precise, request};

/// What a request may be refused with: each names what is wrong with it or
/// with the state it meets. UNKNOWN, INTERNAL or a timeout would say that
/// Swell itself failed on it.
const REFUSALS: &[Code] = &[
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::OutOfRange,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::Unimplemented,
];

/// Bytes the scratch backend may promise: every input may create volumes,
/// and the directory stays small.
const CAPACITY: u64 = 1 << 30;

struct Harness {
    runtime: Runtime,
    service: ControllerService,
}

static SCRATCH: Mutex<Option<TempDir>> = Mutex::new(None);

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let scratch = tempfile::Builder::new().prefix("swell-fuzz-").tempdir().expect("a scratch directory for the local backend");
        let local = LocalConfig { capacity_bytes: Some(CAPACITY), ..LocalConfig::new(scratch.path().join("volumes"), scratch.path().join("records")) };
        let backends = swell_backends::open(&BackendConfig::local(local)).expect("the local backend opens in a fresh directory");
        *SCRATCH.lock() = Some(scratch);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        Harness { runtime, service: ControllerService::new(backends) }
    })
}

/// Removes the scratch directory of the controller target (at the end of a
/// test; libFuzzer's exit leaves it to e2e/fuzz.sh's own scratch directory).
pub fn remove_scratch() {
    SCRATCH.lock().take();
}

macro_rules! rpc {
    ($service:expr, $bytes:expr, $method:ident, $message:ty) => {
        match request::<$message>($bytes) {
            Some(message) => Some($service.$method(Request::new(message)).await.map(drop)),
            None => None,
        }
    };
}

/// Every Controller RPC (the first byte picks it, the rest is its protobuf
/// message), answered by the real service: accepted, or refused with a
/// code of [`REFUSALS`] and a message.
pub(crate) fn csi_controller(data: &[u8]) {
    let Some((&rpc, bytes)) = data.split_first() else { return };
    let Harness { runtime, service } = harness();
    let (name, answer) = runtime.block_on(async {
        match rpc % 15 {
            0 => ("CreateVolume", rpc!(service, bytes, create_volume, CreateVolumeRequest)),
            1 => ("DeleteVolume", rpc!(service, bytes, delete_volume, DeleteVolumeRequest)),
            2 => ("ControllerPublishVolume", rpc!(service, bytes, controller_publish_volume, ControllerPublishVolumeRequest)),
            3 => ("ControllerUnpublishVolume", rpc!(service, bytes, controller_unpublish_volume, ControllerUnpublishVolumeRequest)),
            4 => ("ValidateVolumeCapabilities", rpc!(service, bytes, validate_volume_capabilities, ValidateVolumeCapabilitiesRequest)),
            5 => ("ListVolumes", rpc!(service, bytes, list_volumes, ListVolumesRequest)),
            6 => ("GetCapacity", rpc!(service, bytes, get_capacity, GetCapacityRequest)),
            7 => ("ControllerGetCapabilities", rpc!(service, bytes, controller_get_capabilities, ControllerGetCapabilitiesRequest)),
            8 => ("CreateSnapshot", rpc!(service, bytes, create_snapshot, CreateSnapshotRequest)),
            9 => ("DeleteSnapshot", rpc!(service, bytes, delete_snapshot, DeleteSnapshotRequest)),
            10 => ("ListSnapshots", rpc!(service, bytes, list_snapshots, ListSnapshotsRequest)),
            11 => ("GetSnapshot", rpc!(service, bytes, get_snapshot, GetSnapshotRequest)),
            12 => ("ControllerExpandVolume", rpc!(service, bytes, controller_expand_volume, ControllerExpandVolumeRequest)),
            13 => ("ControllerGetVolume", rpc!(service, bytes, controller_get_volume, ControllerGetVolumeRequest)),
            _ => ("ControllerModifyVolume", rpc!(service, bytes, controller_modify_volume, ControllerModifyVolumeRequest)),
        }
    });
    if let Some(answer) = answer {
        precise(&name, answer, REFUSALS);
    }
}
