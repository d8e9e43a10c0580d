//! For a service's build script (feature `build`): its protos compiled
//! with the platform's access option on the include path, and the encoded
//! file descriptor set the server reads each method's kind and access from
//! (reflection serves it too).
//!
//! ```ignore
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     grpc_platform::build::compile_protos(&["proto/helloworld/helloworld.proto"])
//! }
//! // src/lib.rs
//! pub const FILE_DESCRIPTOR_SET: &[u8] = grpc_platform::descriptor_set!();
//! ```

use std::error::Error;
use std::path::PathBuf;

/// The file, in `OUT_DIR`, that [`descriptor_set!`](crate::descriptor_set)
/// includes.
pub const DESCRIPTOR_SET_FILE: &str = "descriptors.bin";

/// Compiles `protos` (paths from the crate's root; imports are found under
/// `proto/` and the platform's proto folder) into server code and the
/// descriptor set. protoc is `protoc-bin-vendored`'s: a build needs no
/// system protoc. Client code is not generated: the platform's server
/// needs none, and clients are generated in their own languages.
pub fn compile_protos(protos: &[&str]) -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .file_descriptor_set_path(out.join(DESCRIPTOR_SET_FILE))
        .compile_with_config(config, protos, &["proto", crate::PROTO_INCLUDE_DIR])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
