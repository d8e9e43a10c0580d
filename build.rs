//! Generates the gRPC code for `proto/`, the file descriptor set that
//! reflection serves, and serde implementations that follow the proto3 JSON
//! mapping (pbjson), which `ordersctl --output json` prints like grpcurl.
//! The protobuf compiler comes from `protoc-bin-vendored`, so a build needs
//! no system `protoc`.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = out.join("orders_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        // Well-known types from pbjson-types, so Timestamp serializes as RFC 3339.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // The orders proto imports the platform's access option.
        .compile_protos(
            &["proto/orders/v1/orders.proto"],
            &["proto", grpc_platform::PROTO_INCLUDE_DIR],
        )?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .build(&[".orders.v1"])?;
    println!("cargo:rerun-if-changed=proto");
    println!(
        "cargo:rerun-if-changed={}",
        grpc_platform::PROTO_INCLUDE_DIR
    );
    Ok(())
}
