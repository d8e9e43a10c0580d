//! The test service's proto and the compiling of protos into descriptor
//! sets, shared by the platform's unit tests (`src/testing.rs`) and its
//! integration tests, which cannot see `cfg(test)` code of the library.

use std::path::Path;
use std::process::Command;

/// The test service: every streaming kind, several scopes, one public method.
pub(crate) const THINGS_PROTO: &str = r#"
    syntax = "proto3";
    package things.v1;
    import "grpc_platform/v1/access.proto";
    message Thing { string id = 1; }
    service ThingService {
      rpc GetThing(Thing) returns (Thing) { option (grpc_platform.v1.access) = { scopes: "things:read" }; }
      rpc PutThings(stream Thing) returns (Thing) { option (grpc_platform.v1.access) = { scopes: "things:write" }; }
      rpc WatchThing(Thing) returns (stream Thing) { option (grpc_platform.v1.access) = { scopes: "things:read" }; }
      rpc SyncThings(stream Thing) returns (stream Thing) { option (grpc_platform.v1.access) = { scopes: "things:read" }; }
      rpc RemoveThing(Thing) returns (Thing) { option (grpc_platform.v1.access) = { scopes: ["things:write", "things:admin"] }; }
      rpc Ping(Thing) returns (Thing) { option (grpc_platform.v1.access).public = true; }
    }
"#;

/// Compiles `proto` (as the file `test/v1/svc.proto`) into an encoded
/// descriptor set with imports.
pub(crate) fn descriptors(proto: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("test/v1/svc.proto");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, proto).unwrap();
    let out = dir.path().join("set.bin");
    let status = Command::new(protoc_bin_vendored::protoc_bin_path().unwrap())
        .arg("-I")
        .arg(dir.path())
        .arg("-I")
        .arg(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/proto")))
        .arg("-I")
        .arg(protoc_bin_vendored::include_path().unwrap())
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("test/v1/svc.proto")
        .status()
        .unwrap();
    assert!(status.success(), "protoc failed on:\n{proto}");
    std::fs::read(out).unwrap()
}
