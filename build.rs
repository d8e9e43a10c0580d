//! Generates the gRPC code for `proto/` and the file descriptor set that
//! reflection serves. The protobuf compiler comes from `protoc-bin-vendored`,
//! so a build needs no system `protoc`.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY of set_var is not a concern in a single-threaded build script;
    // prost-build reads PROTOC from the environment.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe { env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("orders_descriptor.bin"))
        .compile_protos(&["proto/orders/v1/orders.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
