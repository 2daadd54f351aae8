//! Compiles `proto/csi.proto` with a vendored `protoc`, so a fresh machine needs
//! no protobuf compiler installed, and lists its RPCs for code that must
//! know every method by name (the metrics' bounded `grpc_method` label).

use std::fmt::Write as _;
use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out_dir.join("csi.descriptors");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().build_client(true).build_server(true).file_descriptor_set_path(&descriptors).compile_with_config(
        config,
        &[PathBuf::from("proto/csi.proto")],
        &[PathBuf::from("proto"), well_known],
    )?;
    let set = prost_types::FileDescriptorSet::decode(std::fs::read(&descriptors)?.as_slice())?;
    let mut rpcs = String::from("/// Every RPC of `csi.proto`: (fully qualified service, method).\npub const RPCS: &[(&str, &str)] = &[\n");
    for file in set.file.iter().filter(|f| f.package() == "csi.v1") {
        for service in &file.service {
            for method in &service.method {
                writeln!(rpcs, "    (\"csi.v1.{}\", \"{}\"),", service.name(), method.name())?;
            }
        }
    }
    rpcs.push_str("];\n");
    std::fs::write(out_dir.join("csi_rpcs.rs"), rpcs)?;
    println!("cargo:rerun-if-changed=proto/csi.proto");
    Ok(())
}
