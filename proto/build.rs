//! Compiles `proto/csi.proto` with a vendored `protoc`, so a fresh machine needs
//! no protobuf compiler installed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // prost-build finds protoc through PROTOC; a build script is single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[PathBuf::from("proto/csi.proto")], &[PathBuf::from("proto"), well_known])?;
    println!("cargo:rerun-if-changed=proto/csi.proto");
    Ok(())
}
