//! The CSI v1 protocol types (package `csi.v1`) and their tonic clients and
//! servers. Nothing here but generated code: behaviour lives in the controller
//! and node crates.

/// Everything in the `csi.v1` protobuf package.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("csi.v1");
    include!(concat!(env!("OUT_DIR"), "/csi_rpcs.rs"));
}
